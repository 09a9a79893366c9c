"""ONNX Runtime backend: CPU provider by default; CUDA (I/O binding, buffers kept on the GPU) and
ONNX Runtime's TensorRT provider where the installed onnxruntime has them.

On the CPU, ``InferenceSession.run`` may be called from several threads at once on one session
(ONNX Runtime documents it as thread-safe), so one session per graph serves every thread. On a GPU
the runner binds device buffers made once per feed shape and reused across calls (the session sees
one shape, see :mod:`unioncam.pipeline`): each call copies the new maps into the maps buffer and
the scores back to the host, nothing else. Bound calls are serialised by a lock (the buffers are
the runner's); this also lets ``enable_cuda_graph=1`` replay the session.
"""
from __future__ import annotations

import threading

import numpy as np

from ..base import Runner
from .loader import SessionFromOnnx

_ORT_TYPES = {"tensor(float)": "float32", "tensor(int64)": "int64"}


class OnnxRuntimeRunner(Runner):
    """One ONNX graph in one ``InferenceSession``, made by ``session_loader`` (a :class:`SessionFromOnnx`)."""

    def __init__(self, session_loader: SessionFromOnnx, *, bind: bool | None = None):
        """``bind``: run through I/O binding with reused buffers (default: on every device but the CPU)."""
        super().__init__()
        self.loader = session_loader
        self.device = getattr(session_loader, "device", "cpu")
        self.name = f"onnxruntime[{self.device}]:{getattr(session_loader, 'path', 'graph')}"
        self.session = None
        self.bind = self.device != "cpu" if bind is None else bool(bind)
        self._lock = threading.Lock()
        self._buffers: dict[str, object] = {}
        self._outputs: list | None = None

    def activate_impl(self) -> None:
        self.session = self.loader()
        self.inputs = {
            i.name: (_ORT_TYPES.get(i.type, i.type), tuple(d if isinstance(d, int) else None for d in i.shape))
            for i in self.session.get_inputs()
        }
        self.outputs = [o.name for o in self.session.get_outputs()]

    def deactivate_impl(self) -> None:
        self.session, self._binding, self._buffers, self._outputs = None, None, {}, None

    @property
    def _ort_device(self) -> str:
        return "cpu" if self.device == "cpu" else "cuda"

    def to_device_impl(self, array: np.ndarray):
        if not self.bind:
            return array
        import onnxruntime as ort

        return ort.OrtValue.ortvalue_from_numpy(np.ascontiguousarray(array), self._ort_device, 0)

    def _buffer(self, key: str, value: np.ndarray):
        """The device buffer of input ``key``, made for the first shape and refilled in place after."""
        import onnxruntime as ort

        value = np.ascontiguousarray(value)
        buf, shape, dtype = self._buffers.get(key, (None, None, None))
        if buf is None or shape != value.shape or dtype != value.dtype:
            # Allocated by ONNX Runtime, never from ``value``: on the CPU an OrtValue made from an
            # array is a view of it, and refilling it would write into the caller's array.
            buf = ort.OrtValue.ortvalue_from_shape_and_type(list(value.shape), value.dtype, self._ort_device, 0)
            self._buffers[key] = (buf, value.shape, value.dtype)
            self._outputs = None  # a new input shape: the outputs' shapes may change too
        buf.update_inplace(value)
        return buf

    def infer_impl(self, feeds: dict) -> dict[str, np.ndarray]:
        if not self.bind:
            return dict(zip(self.outputs, self.session.run(self.outputs, feeds)))
        with self._lock:
            binding = self._binding = getattr(self, "_binding", None) or self.session.io_binding()
            for key, value in feeds.items():
                binding.bind_ortvalue_input(key, self._buffer(key, value) if isinstance(value, np.ndarray) else value)
            if self._outputs is None:
                for out in self.outputs:
                    binding.bind_output(out, self._ort_device)
            else:
                for out, buf in zip(self.outputs, self._outputs):
                    binding.bind_ortvalue_output(out, buf)
            self.session.run_with_iobinding(binding)
            self._outputs = binding.get_outputs()
            # The map algebra runs on the host: one copy of each output per call. A copy, not a view:
            # a CPU OrtValue's numpy() shares the buffer the next call overwrites.
            return {out: np.array(buf.numpy(), copy=True) for out, buf in zip(self.outputs, self._outputs)}
