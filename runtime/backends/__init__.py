"""Backends of the runtime: ``make_runners(backend, device, artifact_dir, manifest)``."""
from __future__ import annotations

from pathlib import Path

from unioncam.artifacts import GRADIENT_ONNX, MASKED_ONNX, Manifest
from unioncam.errors import BackendUnavailableError

from .base import Runner

BACKENDS = ("onnxruntime", "tensorrt")


def make_runners(backend: str, device: str, directory: Path, manifest: Manifest, *, threads: int | None = None,
                 buffers: str = "auto", masked: str = MASKED_ONNX, session_options=None) -> tuple[Runner, Runner]:
    """(gradient runner, masked-forward runner), not yet activated. Fails here, never at the first call.

    ``masked``: the masked-forward graph's file (a precision variant from ``unioncam export --precision``).
    ``session_options``: ONNX Runtime options (:func:`unioncam.validation.check_ort_options`)."""
    from ..loaders import EngineFromFile, SessionFromOnnx

    if backend == "onnxruntime":
        from .onnxruntime_runner import OnnxRuntimeRunner

        return tuple(OnnxRuntimeRunner(SessionFromOnnx(directory / name, device=device, threads=threads,
                                                       options=session_options))
                     for name in (GRADIENT_ONNX, masked))
    if backend == "tensorrt":
        if session_options:
            raise BackendUnavailableError("session options are ONNX Runtime's; backend 'tensorrt' takes none")
        if device != "cuda":
            raise BackendUnavailableError("backend 'tensorrt' runs on device 'cuda' only; use backend 'onnxruntime' on the CPU")
        from .tensorrt_runner import TensorRTRunner

        return tuple(TensorRTRunner(EngineFromFile(directory / name.replace(".onnx", ".engine"),
                                                   onnx_sha256=manifest.files.get(name, "")), buffers=buffers)
                     for name in (GRADIENT_ONNX, masked))
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

    try:
        if import_tensorrt()[0] is not None:
            out.append("tensorrt (CUDA only)")
    except BackendUnavailableError as e:
        out.append(f"tensorrt (broken install: {e})")
    return out


__all__ = ["BACKENDS", "Runner", "available_backends", "make_runners"]
