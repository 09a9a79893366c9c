"""Exporter: gradient-emitting ONNX graph, batched masked-forward graph, TensorRT engines.

``from unioncam.export import export, build_engine``. The TensorRT part imports no torch.
"""
from __future__ import annotations

_LAZY = {
    "export": "unioncam.export.exporter",
    "graph_stats": "unioncam.export.exporter",
    "build_engine": "unioncam.runtime.backends.tensorrt.builder",
    "add_precision": "unioncam.export.precision",
}


def __getattr__(name: str):
    if name in _LAZY:
        import importlib

        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'unioncam.export' has no attribute {name!r}")


__all__ = sorted(_LAZY)
