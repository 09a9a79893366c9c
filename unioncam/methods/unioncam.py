"""UnionCAM, eager PyTorch: the ground truth every other path is checked against."""
from __future__ import annotations

from torch import nn

from .. import pipeline
from ..validation import check_theta
from .cam_method import RegionMapMethod
from ..settings import DEFAULTS


class UnionCAM(RegionMapMethod):
    """UnionCAM (Hu et al., 2024): AMD + Score-CAM region map, fused by AMU, selected by AMS.

    The definitions are the README's ("The method") and live once, in :mod:`unioncam.algebra`:
    AMD in :func:`unioncam.algebra.amd.denoised_map`, the region map's channel scores in
    :func:`unioncam.algebra.fusion.channel_scores` (``max_passes``: :mod:`unioncam.algebra.budget`),
    AMU and AMS in :func:`unioncam.algebra.fusion.union_select`; the sequence of passes is
    :func:`unioncam.pipeline.explain`.

    Example (the bundled ImageNet EfficientNet-Lite0 on its bundled photo of a cat; ``max_passes``
    keeps the example fast, leave it out for the exact map)::

        >>> import torch
        >>> from unioncam import UnionCAM
        >>> from unioncam.image_io import read_rgb, sample_image_path, to_model_input
        >>> from unioncam.models import load
        >>> model, layer = load("efficientnet_lite0")
        >>> layer
        'head'
        >>> x = torch.from_numpy(to_model_input(read_rgb(sample_image_path("chelsea")), (224, 224)))[None]
        >>> out = UnionCAM(model, layer, max_passes=16)(x)
        >>> out.cam.shape, out.cam.dtype  # NumPy, (B, H, W) in [0, 1]
        ((1, 224, 224), dtype('float32'))
        >>> out[0]["selected"] in ("de_region", "region"), out[0]["class_idx"]  # AMS's choice; 285 "Egyptian cat"
        (True, 285)

    Args:
        model: ``nn.Module`` mapping (B, 3, H, W) images in [0, 1] to (B, C) logits.
        target_layer: dotted module name or module; its output (B, K, h, w) is ``A``.
        theta: AMD's percentile threshold in [0, 100].
        batch_size: forward passes per chunk of masked passes.
        skip_constant, skip_duplicates, max_passes: the region map's passes, see
            :class:`RegionMapMethod` (``max_passes`` trades exactness for fewer passes).
        progress: show a progress bar over masked passes.
        reshape: a vision transformer's tokens as maps (``"tokens"``, ``"bhwc"``; see :class:`CAMMethod`).
    """

    method = "unioncam"

    def __init__(self, model: nn.Module, target_layer: str | nn.Module, *, theta: float = DEFAULTS.theta,
                 batch_size: int = 64, skip_constant: bool = True, skip_duplicates: bool = False,
                 max_passes: int | None = None, progress: bool = False, reshape: str | None = None):
        super().__init__(model, target_layer, batch_size=batch_size, skip_constant=skip_constant,
                         skip_duplicates=skip_duplicates, max_passes=max_passes, progress=progress, reshape=reshape)
        self.theta = check_theta(theta)

    def options(self) -> pipeline.PassOptions:
        return pipeline.PassOptions(theta=self.theta, skip_constant=self.skip_constant,
                                    skip_duplicates=self.skip_duplicates, max_passes=self.max_passes,
                                    progress=self.progress)
