"""TensorRT backend: runs the engines ``unioncam export --engine`` built, through the standard
``tensorrt`` Python API (``tensorrt_rtx`` where that is the module installed).

Device buffers: torch CUDA tensors when torch with CUDA imports (no copy of torch itself is needed
otherwise), else ``cuda-python`` (``cuda.bindings.runtime``). The engine header is checked before
deserialising: a stale engine (other ONNX), or one built by another TensorRT version or for another
GPU, is refused with the command that rebuilds it. An execution context is not thread-safe: calls
are serialised with a lock.
"""
from __future__ import annotations

import importlib
import threading
from pathlib import Path

import numpy as np

from unioncam.artifacts import Manifest
from unioncam.engine_file import check_header, import_tensorrt, read_engine
from unioncam.errors import BackendUnavailableError, InvalidInputError

from .base import Runner


def _cuda_memory():
    """(alloc(nbytes) -> (handle, ptr), h2d(ptr, array), d2h(array, ptr), sync()) with torch or cuda-python."""
    try:
        # Looked up by name: the runtime never needs torch, it only uses it when it is there.
        torch = importlib.import_module("torch")
        if torch.cuda.is_available():
            def alloc(n):
                t = torch.empty(max(n, 1), dtype=torch.uint8, device="cuda")
                return t, t.data_ptr()

            def h2d(ptr_owner, arr):
                ptr_owner[: arr.nbytes].copy_(torch.from_numpy(np.ascontiguousarray(arr)).view(torch.uint8).reshape(-1))

            def d2h(arr, ptr_owner):
                arr.reshape(-1).view(np.uint8)[:] = ptr_owner[: arr.nbytes].cpu().numpy()

            return "torch", alloc, h2d, d2h, torch.cuda.synchronize, lambda: torch.cuda.current_stream().cuda_stream
    except Exception:
        pass
    try:
        from cuda.bindings import runtime as cudart
    except Exception:
        try:
            from cuda import cudart
        except Exception:
            return None

    def alloc(n):
        err, ptr = cudart.cudaMalloc(max(n, 1))
        if int(err) != 0:
            raise BackendUnavailableError(f"cudaMalloc({n}) failed: {err}")
        return ptr, int(ptr)

    def h2d(ptr, arr):
        arr = np.ascontiguousarray(arr)
        cudart.cudaMemcpy(ptr, arr.ctypes.data, arr.nbytes, cudart.cudaMemcpyKind.cudaMemcpyHostToDevice)

    def d2h(arr, ptr):
        cudart.cudaMemcpy(arr.ctypes.data, ptr, arr.nbytes, cudart.cudaMemcpyKind.cudaMemcpyDeviceToHost)

    return "cuda-python", alloc, h2d, d2h, lambda: cudart.cudaDeviceSynchronize(), lambda: 0


class _Resident:
    """An input the explainer reuses across calls (the image of all its masked passes)."""

    def __init__(self, array: np.ndarray):
        self.array = np.ascontiguousarray(array)
        self.shape, self.dtype, self.nbytes = self.array.shape, self.array.dtype, self.array.nbytes


class TensorRTRunner(Runner):
    """One engine file (``gradient.engine`` or ``masked_forward.engine``) beside its ONNX."""

    def __init__(self, engine_path: str | Path, manifest: Manifest):
        super().__init__()
        self.path = Path(engine_path)
        self.name = f"tensorrt:{self.path.name}"
        self.trt, self.flavour = import_tensorrt()
        if self.trt is None:
            raise BackendUnavailableError(
                "backend 'tensorrt' needs NVIDIA's tensorrt Python package on a CUDA machine; available here: onnxruntime"
            )
        self.memory = _cuda_memory()
        if self.memory is None:
            raise BackendUnavailableError("backend 'tensorrt' needs torch with CUDA or cuda-python for device buffers")
        from unioncam.export.tensorrt_engine import current_gpu

        header, _ = read_engine(self.path, header_only=True)
        onnx_name = header.get("onnx_file", "")
        check_header(self.path, header, onnx_sha256=manifest.files.get(onnx_name, ""),
                     trt_version=str(self.trt.__version__), gpu=current_gpu())
        self.header = header
        self.max_batch = int(header.get("max_batch", 1))
        self._lock = threading.Lock()

    def activate(self) -> "TensorRTRunner":
        trt = self.trt
        _, blob = read_engine(self.path)
        self.logger = trt.Logger(trt.Logger.WARNING)
        self.runtime = trt.Runtime(self.logger)
        self.engine = self.runtime.deserialize_cuda_engine(blob)
        if self.engine is None:
            raise BackendUnavailableError(f"TensorRT could not deserialize {self.path}; rebuild it with `unioncam export ... --engine`")
        self.context = self.engine.create_execution_context()
        names = [self.engine.get_tensor_name(i) for i in range(self.engine.num_io_tensors)]
        self.input_names = [n for n in names if self.engine.get_tensor_mode(n) == trt.TensorIOMode.INPUT]
        self.output_names = [n for n in names if self.engine.get_tensor_mode(n) == trt.TensorIOMode.OUTPUT]
        self.inputs = {}
        for n in self.input_names:
            dt = "int64" if self.engine.get_tensor_dtype(n) == trt.DataType.INT64 else "float32"
            self.inputs[n] = (dt, tuple(None if d < 0 else d for d in self.engine.get_tensor_shape(n)))
        self._buffers: dict[str, tuple[object, int, int]] = {}
        self._resident: dict[str, _Resident | None] = {}
        self.is_active = True
        return self

    def to_device(self, array: np.ndarray):
        return _Resident(array)

    def _buffer(self, name: str, nbytes: int) -> int:
        held = self._buffers.get(name)
        if held is None or held[2] < nbytes:
            handle, ptr = self.memory[1](nbytes)
            held = (handle, ptr, nbytes)
            self._buffers[name] = held
            self._resident.pop(name, None)
        return held[1]

    def deactivate(self) -> None:
        self._buffers, self._resident = {}, {}
        self.context = self.engine = self.runtime = None
        super().deactivate()

    def infer(self, feeds: dict) -> dict[str, np.ndarray]:
        self.check_feeds(feeds)
        # The explainer chunks to max_batch; this guards direct callers.
        n = feeds["maps"].shape[1] if "maps" in feeds else feeds["image"].shape[0]
        if n > self.max_batch:
            raise InvalidInputError(f"{self.name}: {n} exceeds the engine's profile ({self.max_batch}); split the call")
        _, _, h2d, d2h, sync, stream = self.memory
        with self._lock:
            for name, value in feeds.items():
                self.context.set_input_shape(name, tuple(value.shape))
                ptr = self._buffer(name, value.nbytes)
                # A resident input already in this buffer is not copied again.
                if not (isinstance(value, _Resident) and self._resident.get(name) is value):
                    host = value.array if isinstance(value, _Resident) else value
                    h2d(self._buffers[name][0], host) if self.memory[0] == "torch" else h2d(ptr, host)
                    self._resident[name] = value if isinstance(value, _Resident) else None
                self.context.set_tensor_address(name, ptr)
            outs = {}
            for name in self.output_names:
                shape = tuple(self.context.get_tensor_shape(name))
                arr = np.empty(shape, dtype=np.float32)
                outs[name] = arr
                self.context.set_tensor_address(name, self._buffer(name, arr.nbytes))
            if not self.context.execute_async_v3(stream()):
                raise BackendUnavailableError(f"{self.name}: TensorRT execution failed")
            sync()
            for name, arr in outs.items():
                owner, ptr, _ = self._buffers[name]
                d2h(arr, owner) if self.memory[0] == "torch" else d2h(arr, ptr)
        return outs
