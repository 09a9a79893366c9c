"""UnionCAM, eager PyTorch: the ground truth every other path is checked against."""
from __future__ import annotations

import time

import torch
from torch import nn

from .. import algebra
from ..explanation import Explanation
from ..validation import check_theta
from .cam_method import RegionMapMethod


class UnionCAM(RegionMapMethod):
    """UnionCAM (Hu et al., 2024): AMD + Score-CAM region map, fused by AMU, selected by AMS.

    ``UnionCAM(model, target_layer)(images, class_idx)`` follows the definitions in the README
    ("The method") exactly, in the model's dtype, through :mod:`unioncam.algebra`.

    Args:
        model: ``nn.Module`` mapping (B, 3, H, W) images in [0, 1] to (B, C) logits.
        target_layer: dotted module name or module; its output (B, K, h, w) is ``A``.
        theta: AMD's percentile threshold in [0, 100].
        batch_size: forward passes per chunk of masked passes.
        skip_constant, skip_duplicates, max_passes: the region map's passes, see
            :class:`RegionMapMethod` (``max_passes`` trades exactness for fewer passes).
        progress: show a progress bar over masked passes.
    """

    method = "unioncam"

    def __init__(self, model: nn.Module, target_layer: str | nn.Module, *, theta: float = 10.0,
                 batch_size: int = 64, skip_constant: bool = True, skip_duplicates: bool = False,
                 max_passes: int | None = None, progress: bool = False):
        super().__init__(model, target_layer, batch_size=batch_size, skip_constant=skip_constant,
                         skip_duplicates=skip_duplicates, max_passes=max_passes, progress=progress)
        self.theta = check_theta(theta)

    def _explain(self, images: torch.Tensor, class_idx) -> Explanation:
        timings: dict[str, float] = {}
        B, _, H, W = images.shape
        t = time.perf_counter()
        gp = self._forward(images, class_idx, gradients=True)
        timings["gradient"] = (time.perf_counter() - t) * 1e3

        t = time.perf_counter()
        base = self._black_scores(images, gp.class_idx)
        L_reg, cs, stats = self._region(images, gp, base)
        timings["region"] = (time.perf_counter() - t) * 1e3

        t = time.perf_counter()
        with torch.no_grad():
            L_den = algebra.denoised_map(gp.activations, gp.gradients, self.theta)
            fusion = algebra.union_select(L_den, L_reg, (H, W), base, self._scorer(images, gp.class_idx))
        timings["fusion"] = (time.perf_counter() - t) * 1e3
        return Explanation.from_fusion(
            fusion, logits=gp.logits, class_idx=gp.class_idx, timings_ms=timings,
            stats={**stats, "masked_passes": cs.passes + 3 * B},
        )
