"""UnionCAM, eager PyTorch: the ground truth every other path is checked against."""
from __future__ import annotations

from torch import nn

from .. import pipeline
from ..validation import check_theta
from .cam_method import RegionMapMethod


class UnionCAM(RegionMapMethod):
    """UnionCAM (Hu et al., 2024): AMD + Score-CAM region map, fused by AMU, selected by AMS.

    With ``A`` the target layer's activations (B, K, h, w), ``G = d logit_c / dA``,
    ``N = minmax(up(.))`` and ``b = p_c(Ib)`` (a black image):

    - AMD: ``L_den = relu(sum_k mean(G_k * [G_k >= P_theta(G_k)]) A_k)``;
    - region map: ``L_reg = relu(sum_k p_c(N(A_k) * I0) A_k)``;
    - AMU: ``DR = minmax(beta_den N(L_den) + beta_reg N(L_reg))``, ``beta_x = p_c(N(L_x) * I0) - b``;
    - AMS: the map is ``DR`` if ``beta_dr > beta_reg``, else ``N(L_reg)``.

    The README ("The method") states it exactly; the algebra is :mod:`unioncam.algebra`, the
    sequence :func:`unioncam.pipeline.explain`.

    Example::

        >>> import torch
        >>> from unioncam import UnionCAM
        >>> from unioncam.models import load
        >>> model = load("efficientnet_lite0")
        >>> cam = UnionCAM(model, "features.16")
        >>> out = cam(torch.rand(1, 3, 224, 224))
        >>> out.cam.shape, out.selected
        ((1, 224, 224), [...])

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

    def __init__(self, model: nn.Module, target_layer: str | nn.Module, *, theta: float = 10.0,
                 batch_size: int = 64, skip_constant: bool = True, skip_duplicates: bool = False,
                 max_passes: int | None = None, progress: bool = False, reshape: str | None = None):
        super().__init__(model, target_layer, batch_size=batch_size, skip_constant=skip_constant,
                         skip_duplicates=skip_duplicates, max_passes=max_passes, progress=progress, reshape=reshape)
        self.theta = check_theta(theta)

    def options(self) -> pipeline.PassOptions:
        return pipeline.PassOptions(theta=self.theta, skip_constant=self.skip_constant,
                                    skip_duplicates=self.skip_duplicates, max_passes=self.max_passes,
                                    progress=self.progress)
