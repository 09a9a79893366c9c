"""GPU memory for the TensorRT runner: buffers with ``free()``, on cuda-python or torch.

``cuda_memory(choice)`` picks the allocator: ``"cuda-python"`` (``cuda.bindings.runtime``),
``"torch"`` (CUDA tensors, returned to torch's caching allocator on free), or ``"auto"``:
cuda-python if it imports, else torch only if the process has already imported it. The runtime
never imports torch on its own.
"""
from __future__ import annotations

import sys

import numpy as np

from unioncam.errors import BackendUnavailableError

BUFFER_CHOICES = ("auto", "cuda-python", "torch")


class DeviceBuffer:
    """``nbytes`` of device memory at ``ptr``. ``free()`` releases it (idempotent); a freed buffer
    refuses copies. Subclasses implement ``_alloc``, ``_free``, ``_upload``, ``_download``."""

    def __init__(self, nbytes: int):
        self.nbytes = max(int(nbytes), 1)
        self.ptr = self._alloc(self.nbytes)
        self.freed = False

    def upload(self, host: np.ndarray) -> None:
        """Copy a host array (at most ``nbytes``) to the start of the buffer."""
        self._live()
        host = np.ascontiguousarray(host)
        self._upload(host)

    def download(self, host: np.ndarray) -> None:
        """Fill a contiguous host array from the start of the buffer."""
        self._live()
        self._download(host)

    def free(self) -> None:
        if not self.freed:
            self.freed = True
            self._free()

    def _live(self) -> None:
        if self.freed:
            raise BackendUnavailableError("device buffer used after free(); this is a bug in unioncam, please report it")

    def _alloc(self, nbytes: int) -> int:
        raise NotImplementedError

    def _free(self) -> None:
        raise NotImplementedError

    def _upload(self, host: np.ndarray) -> None:
        raise NotImplementedError

    def _download(self, host: np.ndarray) -> None:
        raise NotImplementedError


def _cudart():
    try:
        from cuda.bindings import runtime as cudart  # cuda-python >= 12.6
    except Exception:
        from cuda import cudart  # older cuda-python; ImportError if absent
    return cudart


def _check(err, what: str) -> None:
    if int(err) != 0:
        raise BackendUnavailableError(f"{what} failed: {err}")


class CudaPythonBuffer(DeviceBuffer):
    """``cudaMalloc`` / ``cudaFree`` through cuda-python."""

    def _alloc(self, nbytes: int) -> int:
        self.cudart = _cudart()
        err, ptr = self.cudart.cudaMalloc(nbytes)
        _check(err, f"cudaMalloc({nbytes})")
        return int(ptr)

    def _free(self) -> None:
        (err,) = self.cudart.cudaFree(self.ptr)
        _check(err, "cudaFree")

    def _upload(self, host: np.ndarray) -> None:
        (err,) = self.cudart.cudaMemcpy(self.ptr, host.ctypes.data, host.nbytes,
                                        self.cudart.cudaMemcpyKind.cudaMemcpyHostToDevice)
        _check(err, "cudaMemcpy (host to device)")

    def _download(self, host: np.ndarray) -> None:
        (err,) = self.cudart.cudaMemcpy(host.ctypes.data, self.ptr, host.nbytes,
                                        self.cudart.cudaMemcpyKind.cudaMemcpyDeviceToHost)
        _check(err, "cudaMemcpy (device to host)")


class TorchBuffer(DeviceBuffer):
    """A CUDA uint8 tensor; ``free()`` drops it (torch's caching allocator reuses the memory)."""

    def _alloc(self, nbytes: int) -> int:
        torch = sys.modules["torch"]
        self.tensor = torch.empty(nbytes, dtype=torch.uint8, device="cuda")
        return int(self.tensor.data_ptr())

    def _free(self) -> None:
        self.tensor = None

    def _upload(self, host: np.ndarray) -> None:
        torch = sys.modules["torch"]
        self.tensor[: host.nbytes].copy_(torch.from_numpy(host.reshape(-1).view(np.uint8)))

    def _download(self, host: np.ndarray) -> None:
        host.reshape(-1).view(np.uint8)[:] = self.tensor[: host.nbytes].cpu().numpy()


class CudaMemory:
    """An allocator choice: ``buffer(nbytes)``, ``synchronize()``, ``stream()`` (a CUDA stream handle)."""

    def __init__(self, name: str, buffer_type: type[DeviceBuffer]):
        self.name = name
        self.buffer_type = buffer_type

    def buffer(self, nbytes: int) -> DeviceBuffer:
        return self.buffer_type(nbytes)

    def synchronize(self) -> None:
        if self.name == "torch":
            sys.modules["torch"].cuda.synchronize()
        else:
            (err,) = _cudart().cudaDeviceSynchronize()
            _check(err, "cudaDeviceSynchronize")

    def stream(self) -> int:
        # The default stream on cuda-python; torch's current stream so its own work is ordered with ours.
        return int(sys.modules["torch"].cuda.current_stream().cuda_stream) if self.name == "torch" else 0


def cuda_memory(choice: str = "auto") -> CudaMemory:
    """The allocator for ``choice`` in :data:`BUFFER_CHOICES`, or BackendUnavailableError saying what to install."""
    if choice not in BUFFER_CHOICES:
        raise BackendUnavailableError(f"unknown buffers {choice!r}; choose one of {', '.join(BUFFER_CHOICES)}")
    if choice in ("auto", "cuda-python"):
        try:
            _cudart()
            return CudaMemory("cuda-python", CudaPythonBuffer)
        except ImportError:
            if choice == "cuda-python":
                raise BackendUnavailableError("buffers='cuda-python' needs cuda-python: pip install cuda-python") from None
    torch = sys.modules.get("torch")
    if choice == "torch" and torch is None:
        try:
            import importlib

            torch = importlib.import_module("torch")  # asked for by name: the user chose torch
        except ImportError:
            raise BackendUnavailableError("buffers='torch' needs torch with CUDA") from None
    if torch is not None and torch.cuda.is_available():
        return CudaMemory("torch", TorchBuffer)
    raise BackendUnavailableError(
        "backend 'tensorrt' needs device buffers: pip install cuda-python (or pass buffers='torch' with CUDA torch)")


class BufferPool:
    """Named device buffers that grow on demand; a replaced buffer is freed at once, and
    ``free_all()`` frees the rest."""

    def __init__(self, memory: CudaMemory):
        self.memory = memory
        self.buffers: dict[str, DeviceBuffer] = {}

    def get(self, name: str, nbytes: int) -> tuple[DeviceBuffer, bool]:
        """(buffer of at least ``nbytes``, whether it is new)."""
        held = self.buffers.get(name)
        if held is not None and held.nbytes >= nbytes:
            return held, False
        if held is not None:
            held.free()
        buf = self.memory.buffer(nbytes)
        self.buffers[name] = buf
        return buf, True

    def free_all(self) -> None:
        buffers, self.buffers = list(self.buffers.values()), {}
        for buf in buffers:
            buf.free()
