"""The ONNX Runtime backend: CPU, CUDA (I/O binding, buffers kept on the GPU) and ONNX Runtime's
TensorRT provider. ``loader.py`` makes sessions, ``runner.py`` runs them; this module registers it."""
from __future__ import annotations

from pathlib import Path

from unioncam.artifacts import Manifest

from ...devices import DEFAULT_BATCH, ORT_PROVIDERS
from ..base import Runner
from ..registry import BackendInfo, register_backend
from .loader import SessionFromOnnx, providers_for
from .runner import OnnxRuntimeRunner


def make_runner(directory: Path, graph: str, *, device: str, manifest: Manifest, threads=None, buffers: str = "auto",
                session_options=None, provider_options=None, tf32: bool = False) -> Runner:
    """One ONNX graph in an ONNX Runtime session on ``device``'s execution providers."""
    return OnnxRuntimeRunner(SessionFromOnnx(directory / graph, device=device, threads=threads,
                                             options=session_options, provider_options=provider_options, tf32=tf32))


def _available() -> str | None:
    try:
        import onnxruntime  # noqa: F401
    except ImportError:
        return "pip install onnxruntime"
    return None


INFO = register_backend(BackendInfo(
    "onnxruntime", tuple(ORT_PROVIDERS), default_batch=DEFAULT_BATCH, runner=make_runner, available=_available,
    summary="ONNX Runtime: cpu, cuda (CUDA provider), tensorrt (ONNX Runtime's TensorRT provider)"))

__all__ = ["INFO", "OnnxRuntimeRunner", "SessionFromOnnx", "make_runner", "providers_for"]
