"""Backends of the runtime, registered in :mod:`.registry`: ``onnxruntime`` (CPU, CUDA, and ONNX
Runtime's TensorRT provider) and ``tensorrt`` (native engines, CUDA)."""
from __future__ import annotations

import importlib.util
from pathlib import Path

from unioncam.artifacts import GRADIENT_ONNX, MASKED_ONNX, Manifest
from unioncam.engine_file import import_tensorrt
from unioncam.errors import BackendUnavailableError

from ..devices import DEFAULT_BATCH, EAGER_BATCH, EAGER_DEVICES, ENGINE_DEVICES, ORT_PROVIDERS
from ..loaders import EngineFromFile, SessionFromOnnx
from .base import Runner
from .registry import BACKENDS, BackendInfo, backend_info, devices, register_backend, unregister_backend


def onnxruntime_runner(directory: Path, graph: str, *, device: str, manifest: Manifest, threads=None,
                       buffers: str = "auto", session_options=None, provider_options=None,
                       tf32: bool = False) -> Runner:
    """One ONNX graph in an ONNX Runtime session on ``device``'s execution providers."""
    from .onnxruntime_runner import OnnxRuntimeRunner

    return OnnxRuntimeRunner(SessionFromOnnx(directory / graph, device=device, threads=threads,
                                             options=session_options, provider_options=provider_options, tf32=tf32))


def tensorrt_runner(directory: Path, graph: str, *, device: str, manifest: Manifest, threads=None,
                    buffers: str = "auto", session_options=None, provider_options=None,
                    tf32: bool = False) -> Runner:
    """The engine built from ``graph`` (``<graph>.engine``), checked against the ONNX it came from."""
    if session_options or provider_options:
        raise BackendUnavailableError("session and provider options are ONNX Runtime's; backend 'tensorrt' takes none")
    if tf32:
        raise BackendUnavailableError("a TensorRT engine's precision is fixed when it is built (`unioncam export "
                                      "--engine [--fp16]`); run backend 'tensorrt' with precision fp32")
    from .tensorrt_runner import TensorRTRunner

    return TensorRTRunner(EngineFromFile(directory / graph.replace(".onnx", ".engine"),
                                         onnx_sha256=manifest.files.get(graph, "")), buffers=buffers)


def _onnxruntime_available() -> str | None:
    try:
        import onnxruntime  # noqa: F401
    except ImportError:
        return "pip install onnxruntime"
    return None


def _tensorrt_available() -> str | None:
    try:
        if import_tensorrt()[0] is None:
            return "needs NVIDIA's tensorrt package on a CUDA machine"
    except BackendUnavailableError as e:
        return f"broken install: {e}"
    return None


register_backend(BackendInfo(
    "onnxruntime", tuple(ORT_PROVIDERS), default_batch=DEFAULT_BATCH,
    runner=onnxruntime_runner, available=_onnxruntime_available,
    summary="ONNX Runtime: cpu, cuda (CUDA provider), tensorrt (ONNX Runtime's TensorRT provider)"))
register_backend(BackendInfo(
    "tensorrt", ENGINE_DEVICES, default_batch=DEFAULT_BATCH, needs_engines=True, runner=tensorrt_runner,
    available=_tensorrt_available, summary="TensorRT engines from `unioncam export --engine` (CUDA)"))
register_backend(BackendInfo(
    "torch", EAGER_DEVICES, default_batch=dict.fromkeys(EAGER_DEVICES, EAGER_BATCH), eager=True,
    available=lambda: None if importlib.util.find_spec("torch") else "pip install \"unioncam[torch]\"",
    summary="the eager PyTorch reference (unioncam.UnionCAM), no export"))


def make_runners(backend: str, device: str, directory: Path, manifest: Manifest, *, threads: int | None = None,
                 buffers: str = "auto", masked: str = MASKED_ONNX, session_options=None) -> tuple[Runner, Runner]:
    """(gradient runner, masked-forward runner), not yet activated. Fails here, never at the first call.

    ``masked``: the masked-forward graph's file (a precision variant from ``unioncam export --precision``).
    ``session_options``: ONNX Runtime options (:func:`unioncam.validation.check_ort_options`)."""
    info = backend_info(backend)
    return tuple(info.make_runner(directory, name, device=device, manifest=manifest, threads=threads,
                                  buffers=buffers, session_options=session_options)
                 for name in (GRADIENT_ONNX, masked))


def available_backends() -> list[str]:
    """Backends that can run on this machine, with the devices they run on."""
    out = []
    for info in BACKENDS.values():
        if info.eager:
            continue
        why = info.available()
        if why is None:
            out.append(info.name if info.devices[0] == "cpu" else f"{info.name} ({'/'.join(info.devices).upper()} only)")
        elif why.startswith("broken"):
            out.append(f"{info.name} ({why})")
    return out


__all__ = ["BACKENDS", "BackendInfo", "Runner", "available_backends", "backend_info", "devices", "make_runners",
           "register_backend", "unregister_backend"]
