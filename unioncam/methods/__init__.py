"""Eager PyTorch CAM methods (the reference implementation)."""
from .base import CAMMethod
from .unioncam import UnionCAM

__all__ = ["CAMMethod", "UnionCAM"]
