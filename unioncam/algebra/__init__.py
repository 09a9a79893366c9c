"""The spec's algebra, written once against the Python array API standard.

Every equation of the method (docs/method.md, "The method", after Hu et al., 2024) lives here and
nowhere else. The functions take NumPy, PyTorch or CuPy arrays alike (through ``array-api-compat``)
and return arrays of the same library, on the same device:

- the eager reference (:mod:`unioncam.methods`) calls them with torch tensors,
- the runtime (:mod:`unioncam.runtime`) with NumPy arrays,
- the exporter traces them into the masked-forward and end-to-end ONNX graphs.

Torch-free: importing this package imports neither torch nor CuPy.
"""
from .amd import denoised_map, percentile
from .budget import budget_stats
from .fusion import Fusion, channel_scores, passes_needed, union_select
from .maps import (
    bilinear_matrix,
    constant_channels,
    duplicate_masks,
    minmax,
    normalized,
    saliency_masks,
    upsample,
)
from .namespace import namespace, to_numpy
from .weights import (
    gradcam_weights,
    gradcampp_weights,
    region_map,
    safe_divide,
    softmax,
    weighted_map,
    xgradcam_weights,
)

__all__ = [
    "Fusion",
    "bilinear_matrix",
    "budget_stats",
    "channel_scores",
    "constant_channels",
    "denoised_map",
    "duplicate_masks",
    "gradcam_weights",
    "gradcampp_weights",
    "minmax",
    "namespace",
    "normalized",
    "passes_needed",
    "percentile",
    "region_map",
    "safe_divide",
    "saliency_masks",
    "softmax",
    "to_numpy",
    "union_select",
    "upsample",
    "weighted_map",
    "xgradcam_weights",
]
