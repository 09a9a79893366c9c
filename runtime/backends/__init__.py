"""Backends of the runtime: one folder each, registered in :mod:`.registry` when imported.

- ``onnxruntime/``: CPU, CUDA, and ONNX Runtime's TensorRT provider;
- ``tensorrt/``: native engines on CUDA;
- ``eager/``: the name of the eager PyTorch reference (``--backend torch``).

Adding a backend is one folder with a runner (a :class:`.base.Runner`) and one
:func:`.registry.register_backend` call, imported below (docs/layout.md, "Layout").
"""
from __future__ import annotations

from . import onnxruntime, tensorrt, eager  # noqa: F401, I001  (each registers itself, in this order)
from .base import Runner
from .registry import BACKENDS, BackendInfo, backend_info, devices, register_backend, unregister_backend


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


__all__ = ["BACKENDS", "BackendInfo", "Runner", "available_backends", "backend_info", "devices", "register_backend",
           "unregister_backend"]
