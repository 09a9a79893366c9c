"""UnionCAM, eager PyTorch: the ground truth every other path is checked against."""
from __future__ import annotations

import time

import torch
from torch import nn

from ..explanation import SELECTED_DE_REGION, SELECTED_REGION, Explanation
from .base import CAMMethod
from .core import check_theta
from .maps import denoised_map, minmax, region_map, upsample


class UnionCAM(CAMMethod):
    """UnionCAM (Hu et al., 2024): AMD + Score-CAM region map, fused by AMU, selected by AMS.

    ``UnionCAM(model, target_layer)(images, class_idx)`` follows the definitions in the README
    ("The method") exactly, in the model's dtype.

    Args:
        model: ``nn.Module`` mapping (B, 3, H, W) images in [0, 1] to (B, C) logits.
        target_layer: dotted module name or module; its output (B, K, h, w) is ``A``.
        theta: AMD's percentile threshold in [0, 100].
        batch_size: forward passes per chunk of masked passes.
        skip_constant: skip the forward pass of channels whose map is constant (their score is
            ``p_c(Ib)`` exactly); turning it off changes no value, only the time.
        progress: show a progress bar over masked passes.
    """

    def __init__(
        self,
        model: nn.Module,
        target_layer: str | nn.Module,
        theta: float = 10.0,
        batch_size: int = 64,
        *,
        skip_constant: bool = True,
        progress: bool = False,
    ):
        super().__init__(model, target_layer, batch_size=batch_size, progress=progress)
        self.theta = check_theta(theta)
        self.skip_constant = bool(skip_constant)

    def _explain(self, images: torch.Tensor, class_idx) -> Explanation:
        timings: dict[str, float] = {}
        B, _, H, W = images.shape
        t = time.perf_counter()
        gp = self._gradient_pass(images, class_idx)
        A, G, classes = gp.activations, gp.gradients, gp.class_idx
        timings["gradient"] = (time.perf_counter() - t) * 1e3

        t = time.perf_counter()
        base = self._black_scores(images, classes)
        scores, constant, passes = self._channel_scores(images, A, classes, base, self.skip_constant)
        with torch.no_grad():
            L_reg = region_map(A, scores)
        timings["region"] = (time.perf_counter() - t) * 1e3

        t = time.perf_counter()
        with torch.no_grad():
            L_den = denoised_map(A, G, self.theta)
            D = minmax(upsample(L_den, (H, W)))
            R = minmax(upsample(L_reg, (H, W)))
            rows = torch.arange(B, device=images.device)
            s_dr = self._masked(images, torch.cat([rows, rows]), torch.cat([D, R]), classes)
            beta_den, beta_reg = s_dr[:B] - base, s_dr[B:] - base
            DR = minmax(beta_den[:, None, None] * D + beta_reg[:, None, None] * R)
            beta_dr = self._masked(images, rows, DR, classes) - base
            pick = beta_dr > beta_reg  # strict: a tie keeps R
            cam = torch.where(pick[:, None, None], DR, R)
            probs = torch.softmax(gp.logits, dim=1).gather(1, classes[:, None])[:, 0]
        timings["fusion"] = (time.perf_counter() - t) * 1e3

        def f32(x):
            return x.detach().to("cpu", torch.float32).numpy()

        return Explanation(
            cam=f32(cam),
            denoising=f32(D),
            region=f32(R),
            de_region=f32(DR),
            beta_denoising=f32(beta_den),
            beta_region=f32(beta_reg),
            beta_de_region=f32(beta_dr),
            score=f32(probs),
            class_idx=classes.cpu().numpy().astype("int64"),
            selected=[SELECTED_DE_REGION if p else SELECTED_REGION for p in pick.tolist()],
            logits=f32(gp.logits),
            timings_ms=timings,
            stats={
                "channels": int(A.shape[1]),
                "constant_channels": int(constant.sum()),
                "masked_passes": passes + 3 * B,
            },
        )
