"""Baseline CAMs that fall out of UnionCAM's pipeline: Grad-CAM, Grad-CAM++, XGrad-CAM (from the
gradient pass) and Score-CAM (the region map). Each returns ``minmax(up(L))``, (B, H, W) in [0, 1]."""
from __future__ import annotations

import time

import torch

from ..explanation import Explanation
from .base import CAMMethod
from .core import ActivationTap, check_logits, resolve_classes
from .maps import GRADIENT_WEIGHTS, minmax, region_map, upsample, weighted_map


def _result(method, cam, logits, classes, timings, stats) -> Explanation:
    probs = torch.softmax(logits, dim=1).gather(1, classes[:, None])[:, 0]
    return Explanation(
        cam=cam.detach().to("cpu", torch.float32).numpy(),
        score=probs.to("cpu", torch.float32).numpy(),
        class_idx=classes.cpu().numpy().astype("int64"),
        logits=logits.to("cpu", torch.float32).numpy(),
        method=method, timings_ms=timings, stats=stats,
    )


class _GradientWeighted(CAMMethod):
    """``L = relu(sum_k w_k A_k)`` with weights from the activations and gradients."""

    method = ""

    def _explain(self, images, class_idx) -> Explanation:
        t = time.perf_counter()
        gp = self._gradient_pass(images, class_idx)
        with torch.no_grad():
            L = weighted_map(gp.activations, GRADIENT_WEIGHTS[self.method](gp.activations, gp.gradients))
            cam = minmax(upsample(L, tuple(images.shape[-2:])))
        timings = {"gradient": (time.perf_counter() - t) * 1e3}
        return _result(self.method, cam, gp.logits, gp.class_idx, timings, {"channels": int(gp.activations.shape[1])})


class GradCAM(_GradientWeighted):
    """Grad-CAM (Selvaraju et al., 2017): ``w_k = mean_ij dy_c/dA_kij``."""

    method = "gradcam"


class GradCAMpp(_GradientWeighted):
    """Grad-CAM++ (Chattopadhay et al., 2018): second-order pixel weights on positive gradients."""

    method = "gradcampp"


class XGradCAM(_GradientWeighted):
    """XGrad-CAM (Fu et al., 2020): activation-normalised gradient weights."""

    method = "xgradcam"


class ScoreCAM(CAMMethod):
    """Score-CAM (Wang et al., 2020) as UnionCAM's region map: ``R = N(relu(sum_k s_k A_k))`` with
    ``s_k = p_c(minmax(up(A_k)) * I0)``; constant channels get ``p_c(Ib)`` without a pass."""

    method = "scorecam"

    def __init__(self, model, target_layer, batch_size: int = 64, *, skip_constant: bool = True, progress: bool = False):
        super().__init__(model, target_layer, batch_size=batch_size, progress=progress)
        self.skip_constant = bool(skip_constant)

    def _explain(self, images, class_idx) -> Explanation:
        t = time.perf_counter()
        # Activations and logits in one pass; no gradient is needed, so the tap makes no leaf.
        with torch.no_grad(), ActivationTap(self.layer_name, self.layer, requires_grad=False) as tap:
            logits = check_logits(self.model(images), images.shape[0])
        classes = resolve_classes(class_idx, logits)
        A = tap.activations
        base = self._black_scores(images, classes)
        scores, constant, passes = self._channel_scores(images, A, classes, base, self.skip_constant)
        with torch.no_grad():
            cam = minmax(upsample(region_map(A, scores), tuple(images.shape[-2:])))
        timings = {"region": (time.perf_counter() - t) * 1e3}
        stats = {"channels": int(A.shape[1]), "constant_channels": int(constant.sum()), "masked_passes": passes}
        return _result(self.method, cam, logits, classes, timings, stats)
