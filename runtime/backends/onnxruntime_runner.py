"""ONNX Runtime backend: CPU provider by default; CUDA (I/O binding, inputs kept on the GPU) and
ONNX Runtime's TensorRT provider where the installed onnxruntime has them.

``InferenceSession.run`` may be called from several threads at once on one session (ONNX Runtime
documents it as thread-safe), so one session per graph serves every thread.
"""
from __future__ import annotations

import numpy as np

from ..loaders import SessionFromOnnx
from .base import Runner

_ORT_TYPES = {"tensor(float)": "float32", "tensor(int64)": "int64"}


class OnnxRuntimeRunner(Runner):
    """One ONNX graph in one ``InferenceSession``, made by ``session_loader`` (a :class:`SessionFromOnnx`)."""

    def __init__(self, session_loader: SessionFromOnnx):
        super().__init__()
        self.loader = session_loader
        self.device = getattr(session_loader, "device", "cpu")
        self.name = f"onnxruntime[{self.device}]:{getattr(session_loader, 'path', 'graph')}"
        self.session = None

    def activate_impl(self) -> None:
        self.session = self.loader()
        self.inputs = {
            i.name: (_ORT_TYPES.get(i.type, i.type), tuple(d if isinstance(d, int) else None for d in i.shape))
            for i in self.session.get_inputs()
        }
        self.outputs = [o.name for o in self.session.get_outputs()]

    def deactivate_impl(self) -> None:
        self.session = None

    def to_device_impl(self, array: np.ndarray):
        if self.device == "cpu":
            return array
        import onnxruntime as ort

        return ort.OrtValue.ortvalue_from_numpy(np.ascontiguousarray(array), "cuda", 0)

    def infer_impl(self, feeds: dict) -> dict[str, np.ndarray]:
        if self.device == "cpu":
            return dict(zip(self.outputs, self.session.run(self.outputs, feeds)))
        # CUDA: bind device-resident inputs without copying; outputs come back to the host, where
        # the map algebra runs.
        binding = self.session.io_binding()
        for key, value in feeds.items():
            if isinstance(value, np.ndarray):
                binding.bind_cpu_input(key, value)
            else:
                binding.bind_ortvalue_input(key, value)
        for out in self.outputs:
            binding.bind_output(out, "cpu")
        self.session.run_with_iobinding(binding)
        return dict(zip(self.outputs, binding.copy_outputs_to_cpu()))
