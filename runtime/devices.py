"""The devices, named once: what each runs on, and the default masked passes per call.

The backend registry (:mod:`.backends`) and the ONNX Runtime loader read these tables.
"""
from __future__ import annotations

#: Devices of the ONNX Runtime backend and their execution providers, best first. ``tensorrt`` is
#: ONNX Runtime's TensorRT provider (the ``tensorrt`` *backend* runs native engines on ``cuda``).
ORT_PROVIDERS = {
    "cpu": ["CPUExecutionProvider"],
    "cuda": ["CUDAExecutionProvider", "CPUExecutionProvider"],
    "tensorrt": ["TensorrtExecutionProvider", "CUDAExecutionProvider", "CPUExecutionProvider"],
}

#: Masked passes per call when the user gives none (measured best on a 2-core CPU: 8-16).
DEFAULT_BATCH = {"cpu": 16, "cuda": 64, "tensorrt": 64}

#: Where native TensorRT engines and the eager PyTorch reference run.
ENGINE_DEVICES = ("cuda",)
EAGER_DEVICES = ("cpu", "cuda")
#: The eager reference's chunk of masked passes.
EAGER_BATCH = 64
