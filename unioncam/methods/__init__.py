"""Eager PyTorch CAM methods (the reference implementation)."""
from .base import CAMMethod
from .baselines import GradCAM, GradCAMpp, ScoreCAM, XGradCAM
from .unioncam import UnionCAM

#: name -> class, for ``--method``.
METHOD_CLASSES = {"unioncam": UnionCAM, "gradcam": GradCAM, "gradcampp": GradCAMpp, "xgradcam": XGradCAM,
                  "scorecam": ScoreCAM}

__all__ = ["CAMMethod", "GradCAM", "GradCAMpp", "METHOD_CLASSES", "ScoreCAM", "UnionCAM", "XGradCAM"]
