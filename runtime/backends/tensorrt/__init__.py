"""The TensorRT backend: engines built ahead of time from the exported graphs (``builder.py``), files
with a header that refuses a stale or foreign engine (``engine_file.py``), a lazy loader, a runner,
and device memory from cuda-python or torch. This module registers it. Imports no torch."""
from __future__ import annotations

from pathlib import Path

from unioncam.artifacts import Manifest
from unioncam.errors import BackendUnavailableError

from ...devices import DEFAULT_BATCH, ENGINE_DEVICES
from ..base import Runner
from ..registry import BackendInfo, register_backend
from .engine_file import import_tensorrt


def make_runner(directory: Path, graph: str, *, device: str, manifest: Manifest, threads=None, buffers: str = "auto",
                session_options=None, provider_options=None, tf32: bool = False) -> Runner:
    """The engine built from ``graph`` (``<graph>.engine``), checked against the ONNX it came from."""
    if session_options or provider_options:
        raise BackendUnavailableError("session and provider options are ONNX Runtime's; backend 'tensorrt' takes none")
    if tf32:
        raise BackendUnavailableError("a TensorRT engine's precision is fixed when it is built (`unioncam export "
                                      "--engine [--fp16]`); run backend 'tensorrt' with precision fp32")
    # Imported here: the runner needs the TensorRT module, which the registry must not require.
    from .loader import EngineFromFile
    from .runner import TensorRTRunner

    return TensorRTRunner(EngineFromFile(directory / graph.replace(".onnx", ".engine"),
                                         onnx_sha256=manifest.files.get(graph, "")), buffers=buffers)


def _available() -> str | None:
    try:
        if import_tensorrt()[0] is None:
            return "needs NVIDIA's tensorrt package on a CUDA machine"
    except BackendUnavailableError as e:
        return f"broken install: {e}"
    return None


INFO = register_backend(BackendInfo(
    "tensorrt", ENGINE_DEVICES, default_batch=DEFAULT_BATCH, needs_engines=True, runner=make_runner,
    available=_available, summary="TensorRT engines from `unioncam export --engine` (CUDA)"))

__all__ = ["INFO", "make_runner"]
