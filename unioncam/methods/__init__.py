"""Eager PyTorch CAM methods (the reference implementation)."""
from ..registry import METHODS, method_info
from .baselines import GradCAM, GradCAMpp, ScoreCAM, XGradCAM
from .cam_method import CAMMethod
from .unioncam import UnionCAM


def method_class(name: str) -> type[CAMMethod]:
    """The eager class of a registered method (:data:`unioncam.registry.METHODS`)."""
    return method_info(name).eager_class()


__all__ = ["CAMMethod", "GradCAM", "GradCAMpp", "METHODS", "ScoreCAM", "UnionCAM", "XGradCAM", "method_class"]
