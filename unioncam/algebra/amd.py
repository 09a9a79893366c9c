"""AMD, the spec's step 2 (eqs. 1-3): percentile threshold of the gradients and the denoised map."""
from __future__ import annotations

from .namespace import namespace


def percentile(x, q: float):
    """Percentile ``q`` in [0, 100] over the last dim, linear interpolation (NumPy's default).

    By sorting, on every path: ``torch.quantile`` refuses inputs above 16M elements, and a Sort is
    what the exported graphs can run.

    Args:
        x: (..., n) float. q: a Python float.

    Returns:
        (...) same dtype.
    """
    xp = namespace(x)
    n = x.shape[-1]
    s = xp.sort(x, axis=-1)
    pos = (float(q) / 100.0) * (n - 1)
    lo = int(pos // 1)
    hi = min(lo + 1, n - 1)
    frac = pos - lo
    if frac == 0.0:
        return s[..., lo]
    # NumPy's 'linear' method: lerp, with the weight's complement used for frac >= 0.5.
    a, b = s[..., lo], s[..., hi]
    diff = b - a
    return b - diff * (1.0 - frac) if frac >= 0.5 else a + diff * frac


def denoised_map(activations, gradients, theta: float):
    """AMD (eqs. 1-3): ``L_den = sum_k alpha_k * relu(W_k) * A_k``.

    ``t_k`` = percentile ``theta`` of ``G_k``; ``W_k = G_k`` where ``G_k >= t_k`` else 0;
    ``S_k`` = sum of positive ``W_k``; ``alpha_k = 1/S_k`` where ``W_k > 0`` else 0.

    Args:
        activations, gradients: (B, K, h, w) float.
        theta: percentile in [0, 100].

    Returns:
        (B, h, w), same dtype.
    """
    xp = namespace(activations, gradients)
    B, K, h, w = gradients.shape
    t = percentile(xp.reshape(gradients, (B, K, h * w)), theta)[..., None, None]
    zeros = xp.zeros_like(gradients)
    W = xp.where(gradients >= t, gradients, zeros)
    positive = W > 0
    Wp = xp.where(positive, W, zeros)
    S = xp.sum(Wp, axis=(-2, -1), keepdims=True)
    inv = xp.where(positive, 1.0 / xp.where(positive, S, xp.ones_like(S)), zeros)
    return xp.sum(inv * Wp * activations, axis=1)
