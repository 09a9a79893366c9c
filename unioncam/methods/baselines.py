"""Baseline CAMs that fall out of UnionCAM's pipeline: Grad-CAM, Grad-CAM++, XGrad-CAM (from the
gradient pass) and Score-CAM (the region map). Each returns ``minmax(up(L))``, (B, H, W) in [0, 1]."""
from __future__ import annotations

import time

import torch

from .. import algebra
from ..explanation import Explanation
from .cam_method import CAMMethod, RegionMapMethod


class _GradientWeighted(CAMMethod):
    """``L = relu(sum_k w_k A_k)`` with weights from the activations and gradients."""

    def _explain(self, images, class_idx) -> Explanation:
        t = time.perf_counter()
        gp = self._forward(images, class_idx, gradients=True)
        with torch.no_grad():
            weights = algebra.GRADIENT_WEIGHTS[self.method](gp.activations, gp.gradients)
            cam = algebra.normalized(algebra.weighted_map(gp.activations, weights), tuple(images.shape[-2:]))
        timings = {"gradient": (time.perf_counter() - t) * 1e3}
        return Explanation.from_map(self.method, cam, logits=gp.logits, class_idx=gp.class_idx, timings_ms=timings,
                                    stats={"channels": int(gp.activations.shape[1])})


class GradCAM(_GradientWeighted):
    """Grad-CAM (Selvaraju et al., 2017): ``w_k = mean_ij dy_c/dA_kij``."""

    method = "gradcam"


class GradCAMpp(_GradientWeighted):
    """Grad-CAM++ (Chattopadhay et al., 2018): second-order pixel weights on positive gradients."""

    method = "gradcampp"


class XGradCAM(_GradientWeighted):
    """XGrad-CAM (Fu et al., 2020): activation-normalised gradient weights."""

    method = "xgradcam"


class ScoreCAM(RegionMapMethod):
    """Score-CAM (Wang et al., 2020) as UnionCAM's region map: ``R = N(relu(sum_k s_k A_k))`` with
    ``s_k = p_c(minmax(up(A_k)) * I0)``; constant channels get ``p_c(Ib)`` without a pass. Options:
    :class:`RegionMapMethod`."""

    method = "scorecam"

    def _explain(self, images, class_idx) -> Explanation:
        t = time.perf_counter()
        # Activations and logits in one pass; no gradient is needed, so the tap makes no leaf.
        gp = self._forward(images, class_idx, gradients=False)
        base = self._black_scores(images, gp.class_idx)
        L_reg, _, stats = self._region(images, gp, base)
        with torch.no_grad():
            cam = algebra.normalized(L_reg, tuple(images.shape[-2:]))
        timings = {"region": (time.perf_counter() - t) * 1e3}
        return Explanation.from_map(self.method, cam, logits=gp.logits, class_idx=gp.class_idx,
                                    timings_ms=timings, stats=stats)
