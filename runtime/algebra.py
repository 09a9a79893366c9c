"""The spec's map algebra in NumPy, vectorised over images and channels (no per-channel loops).

Mirrors ``unioncam.methods.maps`` (the PyTorch reference) operation for operation.
"""
from __future__ import annotations

from functools import lru_cache

import numpy as np


@lru_cache(maxsize=32)
def _bilinear_matrix(n_in: int, n_out: int) -> np.ndarray:
    """(n_out, n_in) weights of 1-D linear resizing with half-pixel centres, edges clamped
    (PyTorch ``align_corners=False``, ONNX Resize ``half_pixel``, OpenCV ``INTER_LINEAR``)."""
    scale = n_in / n_out
    src = np.maximum((np.arange(n_out, dtype=np.float64) + 0.5) * scale - 0.5, 0.0)
    i0 = np.minimum(np.floor(src).astype(np.int64), n_in - 1)
    i1 = np.minimum(i0 + 1, n_in - 1)
    lam = src - i0
    R = np.zeros((n_out, n_in), dtype=np.float64)
    np.add.at(R, (np.arange(n_out), i0), 1.0 - lam)
    np.add.at(R, (np.arange(n_out), i1), lam)
    return R.astype(np.float32)


def upsample(maps: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """``up``: (..., h, w) -> (..., H, W) bilinear, half-pixel; the identity at the same size."""
    h, w = maps.shape[-2:]
    H, W = size
    if (h, w) == (H, W):
        return maps
    return _bilinear_matrix(h, H) @ maps @ _bilinear_matrix(w, W).T


def minmax(z: np.ndarray) -> np.ndarray:
    """``minmax`` over the last two dims; exactly 0 for a constant map, never NaN."""
    lo = z.min(axis=(-2, -1), keepdims=True)
    hi = z.max(axis=(-2, -1), keepdims=True)
    rng = hi - lo
    nonconst = rng > 0
    return np.where(nonconst, (z - lo) / np.where(nonconst, rng, 1), 0).astype(z.dtype, copy=False)


def constant_channels(activations: np.ndarray) -> np.ndarray:
    """(B, K) bool: channels whose (h, w) map is constant (their masked pass is skipped)."""
    flat = activations.reshape(*activations.shape[:-2], -1)
    return flat.max(axis=-1) == flat.min(axis=-1)


def denoised_map(activations: np.ndarray, gradients: np.ndarray, theta: float) -> np.ndarray:
    """AMD (eqs. 1-3), (B, K, h, w) -> (B, h, w): percentile threshold, alpha = 1/S_k, sum over k."""
    B, K, h, w = gradients.shape
    t = np.percentile(gradients.reshape(B, K, h * w), theta, axis=-1).astype(gradients.dtype)[..., None, None]
    W = np.where(gradients >= t, gradients, 0).astype(gradients.dtype)
    Wp = np.maximum(W, 0)
    S = Wp.sum(axis=(-2, -1), keepdims=True)
    positive = W > 0
    inv = np.where(positive, 1.0 / np.where(positive, S, 1), 0).astype(gradients.dtype)
    return (inv * Wp * activations).sum(axis=1)


def region_map(activations: np.ndarray, channel_scores: np.ndarray) -> np.ndarray:
    """``L_reg = relu(sum_k s_k A_k)``: (B, K, h, w), (B, K) -> (B, h, w)."""
    return np.maximum(np.einsum("bk,bkhw->bhw", channel_scores.astype(activations.dtype), activations), 0)


def softmax(logits: np.ndarray) -> np.ndarray:
    z = logits - logits.max(axis=-1, keepdims=True)
    e = np.exp(z)
    return e / e.sum(axis=-1, keepdims=True)


def _safe_div(num: np.ndarray, den: np.ndarray) -> np.ndarray:
    nz = den != 0
    return np.where(nz, num / np.where(nz, den, 1), 0).astype(num.dtype, copy=False)


def gradcam_weights(activations: np.ndarray, gradients: np.ndarray) -> np.ndarray:
    """Grad-CAM: ``w_k = mean_ij G_kij``. (B, K, h, w) -> (B, K)."""
    return gradients.mean(axis=(-2, -1))


def gradcampp_weights(activations: np.ndarray, gradients: np.ndarray) -> np.ndarray:
    """Grad-CAM++: ``a = G^2 / (2 G^2 + sum A * G^3)`` (0 where 0/0), ``w_k = sum a relu(G)``."""
    g2 = gradients * gradients
    denom = 2 * g2 + activations.sum(axis=(-2, -1), keepdims=True) * g2 * gradients
    return (_safe_div(g2, denom) * np.maximum(gradients, 0)).sum(axis=(-2, -1))


def xgradcam_weights(activations: np.ndarray, gradients: np.ndarray) -> np.ndarray:
    """XGrad-CAM: ``w_k = sum (A / sum A) G`` (0 where sum A = 0)."""
    return _safe_div((activations * gradients).sum(axis=(-2, -1)), activations.sum(axis=(-2, -1)))


def weighted_map(activations: np.ndarray, weights: np.ndarray) -> np.ndarray:
    """``relu(sum_k w_k A_k)``: (B, K, h, w), (B, K) -> (B, h, w)."""
    return np.maximum(np.einsum("bk,bkhw->bhw", weights.astype(activations.dtype), activations), 0)


GRADIENT_WEIGHTS = {"gradcam": gradcam_weights, "gradcampp": gradcampp_weights, "xgradcam": xgradcam_weights}
