"""Channel weights and weighted maps: the region map (step 3) and the baselines' weights."""
from __future__ import annotations

from .namespace import namespace


def safe_divide(num, den):
    """``num / den`` where ``den != 0``, else 0 (never NaN or Inf)."""
    xp = namespace(num, den)
    nz = den != 0
    return xp.where(nz, num / xp.where(nz, den, xp.ones_like(den)), xp.zeros_like(num / xp.ones_like(den)))


def softmax(logits, axis: int = -1):
    """Softmax over ``axis``, shifted by the max (no overflow)."""
    xp = namespace(logits)
    e = xp.exp(logits - xp.max(logits, axis=axis, keepdims=True))
    return e / xp.sum(e, axis=axis, keepdims=True)


def weighted_map(activations, weights):
    """``relu(sum_k w_k A_k)``: (B, K, h, w), (B, K) -> (B, h, w) in the activations' dtype.

    A batched (1, K) @ (K, h*w) matrix product: the array API has no einsum, and BLAS is fastest.
    """
    xp = namespace(activations)
    B, K, h, w = activations.shape
    wts = xp.astype(weights, activations.dtype)
    L = xp.reshape(xp.matmul(wts[:, None, :], xp.reshape(activations, (B, K, h * w))), (B, h, w))
    return xp.where(L > 0, L, xp.zeros_like(L))


def region_map(activations, channel_scores):
    """Score-CAM region map, step 3: ``L_reg = relu(sum_k s_k A_k)``. (B, K, h, w), (B, K) -> (B, h, w)."""
    return weighted_map(activations, channel_scores)


def gradcam_weights(activations, gradients):
    """Grad-CAM (Selvaraju et al., 2017): ``w_k = mean_ij G_kij``. (B, K, h, w) -> (B, K)."""
    return namespace(gradients).mean(gradients, axis=(-2, -1))


def gradcampp_weights(activations, gradients):
    """Grad-CAM++ (Chattopadhay et al., 2018, eq. 19 with the logit's gradient, as its reference code):
    ``a_kij = G^2 / (2 G^2 + sum_ab A_kab G^3)`` (0 where the denominator is 0),
    ``w_k = sum_ij a_kij relu(G_kij)``. (B, K, h, w) -> (B, K)."""
    xp = namespace(activations, gradients)
    g2 = gradients * gradients
    denom = 2.0 * g2 + xp.sum(activations, axis=(-2, -1), keepdims=True) * g2 * gradients
    relu_g = xp.where(gradients > 0, gradients, xp.zeros_like(gradients))
    return xp.sum(safe_divide(g2, denom) * relu_g, axis=(-2, -1))


def xgradcam_weights(activations, gradients):
    """XGrad-CAM (Fu et al., 2020): ``w_k = sum_ij (A_kij / sum_ab A_kab) G_kij`` (0 where sum A = 0)."""
    xp = namespace(activations, gradients)
    return safe_divide(xp.sum(activations * gradients, axis=(-2, -1)), xp.sum(activations, axis=(-2, -1)))


#: method name -> ``weights(activations, gradients) -> (B, K)``.
