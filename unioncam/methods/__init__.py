"""Eager PyTorch CAM methods (the reference implementation)."""
from .baselines import GradCAM, GradCAMpp, ScoreCAM, XGradCAM
from .cam_method import CAMMethod
from .unioncam import UnionCAM

#: name -> class, for ``--method``.
METHOD_CLASSES = {"unioncam": UnionCAM, "gradcam": GradCAM, "gradcampp": GradCAMpp, "xgradcam": XGradCAM,
                  "scorecam": ScoreCAM}

__all__ = ["CAMMethod", "GradCAM", "GradCAMpp", "METHOD_CLASSES", "ScoreCAM", "UnionCAM", "XGradCAM"]
