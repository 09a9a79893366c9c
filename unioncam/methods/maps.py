"""The spec's map helpers in PyTorch: ``up``, ``minmax``, the masks of masked passes, and AMD.

Every other path (exported graphs, NumPy runtime) implements exactly these; see docs in README.md.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F


def upsample(maps: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """``up``: bilinear resize of (..., h, w) maps to (..., H, W), half-pixel centres (align_corners=False).

    Resizing to the same size is the identity (returned as is).
    """
    h, w = maps.shape[-2:]
    if (h, w) == tuple(size):
        return maps
    lead = maps.shape[:-2]
    out = F.interpolate(maps.reshape(-1, 1, h, w), size=tuple(size), mode="bilinear", align_corners=False)
    return out.reshape(*lead, *size)


def minmax(z: torch.Tensor) -> torch.Tensor:
    """``minmax`` over the last two dims: ``(z - min) / (max - min)``, all zeros for a constant map.

    No epsilon: a non-constant map reaches exactly 0 and 1, a constant one is exactly 0, never NaN.
    """
    lo = z.amin(dim=(-2, -1), keepdim=True)
    hi = z.amax(dim=(-2, -1), keepdim=True)
    rng = hi - lo
    nonconst = rng > 0
    return torch.where(nonconst, (z - lo) / torch.where(nonconst, rng, torch.ones_like(rng)), torch.zeros_like(z))


def is_constant(maps: torch.Tensor) -> torch.Tensor:
    """(...) bool: whether each (h, w) map is constant."""
    return maps.amax(dim=(-2, -1)) == maps.amin(dim=(-2, -1))


def saliency_masks(maps: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """Masks of the masked passes: ``N(Z) = minmax(up(Z))``, and exactly 0 where ``Z`` is constant.

    A constant map upsamples to a constant map mathematically, but bilinear weights that do not sum
    to exactly 1 in float can leave ulp-level ripples that minmax would stretch to [0, 1]; testing
    constancy on ``Z`` itself keeps the spec's rule exact (``M_k = 0``) on every path.

    Args:
        maps: (..., h, w) float.
        size: (H, W).

    Returns:
        (..., H, W) same dtype, in [0, 1].
    """
    masks = minmax(upsample(maps, size))
    return torch.where(is_constant(maps)[..., None, None], torch.zeros_like(masks), masks)


def percentile(x: torch.Tensor, q: float) -> torch.Tensor:
    """Percentile ``q`` in [0, 100] over the last dim, linear interpolation (NumPy's default).

    Computed by sorting, as the exported graphs do, instead of ``torch.quantile``, which refuses
    inputs above 16M elements.
    """
    n = x.shape[-1]
    s, _ = torch.sort(x, dim=-1)
    pos = (q / 100.0) * (n - 1)
    lo = int(pos // 1)
    hi = min(lo + 1, n - 1)
    frac = pos - lo
    if frac == 0.0:
        return s[..., lo]
    # NumPy's 'linear' method: lerp, with the weight's complement used for frac >= 0.5.
    a, b = s[..., lo], s[..., hi]
    diff = b - a
    return b - diff * (1.0 - frac) if frac >= 0.5 else a + diff * frac


def denoised_map(activations: torch.Tensor, gradients: torch.Tensor, theta: float) -> torch.Tensor:
    """AMD (eqs. 1-3): ``L_den = sum_k alpha_k * relu(W_k) * A_k``.

    ``t_k`` = percentile ``theta`` of ``G_k``; ``W_k = G_k`` where ``G_k >= t_k`` else 0;
    ``S_k`` = sum of positive ``W_k``; ``alpha_k = 1/S_k`` where ``W_k > 0`` else 0.

    Args:
        activations, gradients: (B, K, h, w) float.
        theta: percentile in [0, 100].

    Returns:
        (B, h, w), same dtype.
    """
    B, K, h, w = gradients.shape
    t = percentile(gradients.reshape(B, K, h * w), theta)[..., None, None]
    W = torch.where(gradients >= t, gradients, torch.zeros_like(gradients))
    Wp = torch.relu(W)
    S = Wp.sum(dim=(-2, -1), keepdim=True)
    positive = W > 0
    inv = torch.where(positive, 1.0 / torch.where(positive, S, torch.ones_like(S)), torch.zeros_like(W))
    return (inv * Wp * activations).sum(dim=1)


def region_map(activations: torch.Tensor, channel_scores: torch.Tensor) -> torch.Tensor:
    """Score-CAM region map: ``L_reg = relu(sum_k s_k * A_k)``.

    Args:
        activations: (B, K, h, w); channel_scores: (B, K) softmax scores ``s_k``.

    Returns:
        (B, h, w).
    """
    return torch.relu(torch.einsum("bk,bkhw->bhw", channel_scores.to(activations.dtype), activations))


def gradcam_weights(activations: torch.Tensor, gradients: torch.Tensor) -> torch.Tensor:
    """Grad-CAM (Selvaraju et al., 2017): ``w_k = mean_ij G_kij``. (B, K, h, w) -> (B, K)."""
    return gradients.mean(dim=(-2, -1))


def gradcampp_weights(activations: torch.Tensor, gradients: torch.Tensor) -> torch.Tensor:
    """Grad-CAM++ (Chattopadhay et al., 2018, eq. 19 with the logit's gradient, as its reference code):
    ``a_kij = G^2 / (2 G^2 + sum_ab A_kab G^3)`` (0 where the denominator is 0),
    ``w_k = sum_ij a_kij relu(G_kij)``."""
    g2 = gradients * gradients
    denom = 2.0 * g2 + activations.sum(dim=(-2, -1), keepdim=True) * g2 * gradients
    nz = denom != 0
    alpha = torch.where(nz, g2 / torch.where(nz, denom, torch.ones_like(denom)), torch.zeros_like(denom))
    return (alpha * torch.relu(gradients)).sum(dim=(-2, -1))


def xgradcam_weights(activations: torch.Tensor, gradients: torch.Tensor) -> torch.Tensor:
    """XGrad-CAM (Fu et al., 2020): ``w_k = sum_ij (A_kij / sum_ab A_kab) G_kij`` (0 where sum A = 0)."""
    total = activations.sum(dim=(-2, -1))
    num = (activations * gradients).sum(dim=(-2, -1))
    nz = total != 0
    return torch.where(nz, num / torch.where(nz, total, torch.ones_like(total)), torch.zeros_like(total))


def weighted_map(activations: torch.Tensor, weights: torch.Tensor) -> torch.Tensor:
    """``relu(sum_k w_k A_k)``: (B, K, h, w), (B, K) -> (B, h, w)."""
    return torch.relu(torch.einsum("bk,bkhw->bhw", weights.to(activations.dtype), activations))


GRADIENT_WEIGHTS = {"gradcam": gradcam_weights, "gradcampp": gradcampp_weights, "xgradcam": xgradcam_weights}
