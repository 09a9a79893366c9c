"""Backends of the runtime: ``make_runners(backend, device, artifact_dir, manifest)``."""
from __future__ import annotations

from pathlib import Path

from unioncam.artifacts import GRADIENT_ONNX, MASKED_ONNX, Manifest
from unioncam.errors import BackendUnavailableError

from .base import Runner

BACKENDS = ("onnxruntime", "tensorrt")


def make_runners(backend: str, device: str, directory: Path, manifest: Manifest, *, threads: int | None = None
                 ) -> tuple[Runner, Runner]:
    """(gradient runner, masked-forward runner), not yet activated. Fails here, never at the first call."""
    if backend == "onnxruntime":
        from .onnxruntime_runner import OnnxRuntimeRunner

        return (OnnxRuntimeRunner(directory / GRADIENT_ONNX, device=device, threads=threads),
                OnnxRuntimeRunner(directory / MASKED_ONNX, device=device, threads=threads))
    if backend == "tensorrt":
        if device != "cuda":
            raise BackendUnavailableError("backend 'tensorrt' runs on device 'cuda' only; use backend 'onnxruntime' on the CPU")
        from .tensorrt_runner import TensorRTRunner

        return (TensorRTRunner(directory / GRADIENT_ONNX.replace(".onnx", ".engine"), manifest),
                TensorRTRunner(directory / MASKED_ONNX.replace(".onnx", ".engine"), manifest))
    raise BackendUnavailableError(f"unknown backend {backend!r}; available: {', '.join(available_backends())}")


def available_backends() -> list[str]:
    """Backends that can run on this machine."""
    out = []
    try:
        import onnxruntime  # noqa: F401

        out.append("onnxruntime")
    except ImportError:
        pass
    from unioncam.engine_file import import_tensorrt

    if import_tensorrt()[0] is not None:
        out.append("tensorrt (CUDA only)")
    return out


__all__ = ["BACKENDS", "Runner", "available_backends", "make_runners"]
