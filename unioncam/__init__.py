"""unioncam: UnionCAM explanations for CNN classifiers: eager PyTorch reference, ONNX/TensorRT
exporter (``unioncam.export``) and a torch-free runtime (``unioncam.runtime``).

Importing ``unioncam`` does not import torch: the PyTorch parts load on first use, so the runtime
works where torch is absent.
"""
from __future__ import annotations

from typing import TYPE_CHECKING

from .errors import (
    ArtifactError,
    BackendUnavailableError,
    ExportError,
    ImageReadError,
    InvalidInputError,
    InvalidTypeError,
    LayerNotFoundError,
    ModelLoadError,
    ModelNotFoundError,
    OutputPathError,
    RunnerStateError,
    UnionCAMError,
    UnsupportedOpError,
    UnwritableError,
    UsageError,
    WeightsError,
)
from .explanation import Explanation

__version__ = "0.1.0"

_LAZY = {name: "unioncam.methods" for name in ("UnionCAM", "CAMMethod", "GradCAM", "GradCAMpp", "XGradCAM", "ScoreCAM")}

if TYPE_CHECKING:  # pragma: no cover
    from .methods import CAMMethod, GradCAM, GradCAMpp, ScoreCAM, UnionCAM, XGradCAM


def __getattr__(name: str):
    if name in _LAZY:
        import importlib

        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'unioncam' has no attribute {name!r}")


__all__ = [
    "ArtifactError",
    "BackendUnavailableError",
    "CAMMethod",
    "Explanation",
    "ExportError",
    "GradCAM",
    "GradCAMpp",
    "ScoreCAM",
    "XGradCAM",
    "ImageReadError",
    "InvalidInputError",
    "InvalidTypeError",
    "LayerNotFoundError",
    "ModelLoadError",
    "ModelNotFoundError",
    "OutputPathError",
    "RunnerStateError",
    "UnionCAM",
    "UnionCAMError",
    "UnsupportedOpError",
    "UnwritableError",
    "UsageError",
    "WeightsError",
    "__version__",
]
