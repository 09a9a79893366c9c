"""ONNX Runtime backend: CPU provider by default; CUDA (I/O binding, inputs kept on the GPU) and
ONNX Runtime's TensorRT provider where the installed onnxruntime has them.

``InferenceSession.run`` may be called from several threads at once on one session (ONNX Runtime
documents it as thread-safe), so one session per graph serves every thread.
"""
from __future__ import annotations

import os
from pathlib import Path

import numpy as np

from unioncam.errors import ArtifactError, BackendUnavailableError

from .base import Runner

_ORT_TYPES = {"tensor(float)": "float32", "tensor(int64)": "int64"}
DEVICES = ("cpu", "cuda", "tensorrt")


def providers_for(device: str) -> list[str]:
    """Execution providers for a device, or BackendUnavailableError listing what this onnxruntime has."""
    import onnxruntime as ort

    available = ort.get_available_providers()
    wanted = {
        "cpu": ["CPUExecutionProvider"],
        "cuda": ["CUDAExecutionProvider", "CPUExecutionProvider"],
        "tensorrt": ["TensorrtExecutionProvider", "CUDAExecutionProvider", "CPUExecutionProvider"],
    }.get(device)
    if wanted is None:
        raise BackendUnavailableError(f"unknown device {device!r} for onnxruntime; choose one of {DEVICES}")
    if wanted[0] not in available:
        raise BackendUnavailableError(
            f"onnxruntime has no {wanted[0]} here (available: {', '.join(available)}); "
            + ("install onnxruntime-gpu on a CUDA machine" if device != "cpu" else "reinstall onnxruntime")
        )
    return [p for p in wanted if p in available]


class OnnxRuntimeRunner(Runner):
    """One ONNX file in one ``InferenceSession``."""

    def __init__(self, onnx_path: str | Path, *, device: str = "cpu", threads: int | None = None):
        super().__init__()
        self.path = Path(onnx_path)
        self.device = device
        self.providers = providers_for(device)  # fails at construction, not at the first call
        self.threads = threads
        self.name = f"onnxruntime[{device}]:{self.path.name}"
        self.session = None

    def activate(self) -> "OnnxRuntimeRunner":
        import onnxruntime as ort

        so = ort.SessionOptions()
        so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        so.intra_op_num_threads = self.threads or (os.cpu_count() or 1)
        so.log_severity_level = 3
        try:
            self.session = ort.InferenceSession(str(self.path), so, providers=self.providers)
        except Exception as e:  # onnxruntime raises its own Fail/InvalidProtobuf types
            raise ArtifactError(f"onnxruntime cannot load {self.path}: {str(e).splitlines()[0]}; re-export the model") from None
        self.inputs = {
            i.name: (_ORT_TYPES.get(i.type, i.type), tuple(d if isinstance(d, int) else None for d in i.shape))
            for i in self.session.get_inputs()
        }
        self.outputs = [o.name for o in self.session.get_outputs()]
        self.is_active = True
        return self

    def deactivate(self) -> None:
        self.session = None
        super().deactivate()

    def to_device(self, array: np.ndarray):
        if self.device == "cpu":
            return array
        import onnxruntime as ort

        return ort.OrtValue.ortvalue_from_numpy(np.ascontiguousarray(array), "cuda", 0)

    def infer(self, feeds: dict) -> dict[str, np.ndarray]:
        self.check_feeds(feeds)
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
