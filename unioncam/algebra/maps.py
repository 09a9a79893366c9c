"""The spec's map helpers: ``up``, ``minmax``, ``N``, the constant test, the masks of masked passes,
and the duplicate-mask test. Array-API: NumPy, torch and CuPy arrays alike."""
from __future__ import annotations

from .namespace import is_concrete, namespace


def bilinear_matrix(n_in, n_out: int, *, xp, dtype, device=None):
    """(n_out, n_in) weights of 1-D linear resizing with half-pixel centres, edges clamped (PyTorch
    ``align_corners=False``, ONNX Resize ``linear``/``half_pixel``, OpenCV ``INTER_LINEAR``).

    Built from array ops (not a cached NumPy constant) so that the exporter traces it with symbolic
    ``n_in``; it costs microseconds. At ``n_in == n_out`` it is exactly the identity.
    """
    i = xp.arange(n_out, dtype=dtype, device=device)
    # Multiply by the int n_in before dividing: no float scale, so a traced size stays an int.
    src = xp.clip((i + 0.5) * n_in / n_out - 0.5, min=0.0)
    i0 = xp.floor(src)
    lam = src - i0
    i0 = xp.clip(i0, max=n_in - 1)
    i1 = xp.clip(i0 + 1, max=n_in - 1)
    cols = xp.arange(n_in, dtype=dtype, device=device)[None, :]
    w0 = xp.astype(cols == i0[:, None], dtype) * (1.0 - lam)[:, None]
    w1 = xp.astype(cols == i1[:, None], dtype) * lam[:, None]
    return w0 + w1


def upsample(maps, size):
    """``up``: bilinear resize of (..., h, w) maps to (..., H, W), half-pixel centres, as two matrix
    products ``R_h @ Z @ R_w^T``. Same size: the input itself (exactly what the products give).

    Args:
        maps: (..., h, w) float array.
        size: (H, W).

    Returns:
        (..., H, W), same dtype and device.
    """
    xp = namespace(maps)
    h, w = maps.shape[-2:]
    H, W = int(size[0]), int(size[1])
    if is_concrete(h, w) and (h, w) == (H, W):
        return maps
    dev = getattr(maps, "device", None)
    rh = bilinear_matrix(h, H, xp=xp, dtype=maps.dtype, device=dev)
    rw = bilinear_matrix(w, W, xp=xp, dtype=maps.dtype, device=dev)
    return xp.matmul(xp.matmul(rh, maps), xp.matrix_transpose(rw))


def minmax(z):
    """``minmax`` over the last two dims: ``(z - min) / (max - min)``; all zeros for a constant map.

    No epsilon: a non-constant map reaches exactly 0 and 1, a constant one is exactly 0, never NaN.
    (..., h, w) -> same shape and dtype.
    """
    xp = namespace(z)
    lo = xp.min(z, axis=(-2, -1), keepdims=True)
    hi = xp.max(z, axis=(-2, -1), keepdims=True)
    rng = hi - lo
    nonconst = rng > 0
    return xp.where(nonconst, (z - lo) / xp.where(nonconst, rng, xp.ones_like(rng)), xp.zeros_like(z))


def normalized(L, size):
    """``N(L) = minmax(up(L))``: (..., h, w) -> (..., H, W) in [0, 1]."""
    return minmax(upsample(L, size))


def constant_channels(maps):
    """(...) bool: whether each (h, w) map is constant (its mask is 0; its pass can be skipped)."""
    xp = namespace(maps)
    return xp.max(maps, axis=(-2, -1)) == xp.min(maps, axis=(-2, -1))


def saliency_masks(maps, size):
    """Masks of the masked passes: ``M = minmax(up(Z))``, and exactly 0 where ``Z`` is constant.

    A constant map upsamples to a constant map mathematically, but bilinear weights that do not sum
    to exactly 1 in float can leave ulp-level ripples that minmax would stretch to [0, 1]; testing
    constancy on ``Z`` itself keeps the spec's rule exact (``M_k = 0``) on every path.

    Args:
        maps: (..., h, w) float (activations, or full-size maps where ``up`` is the identity).
        size: (H, W).

    Returns:
        (..., H, W), same dtype, in [0, 1].
    """
    xp = namespace(maps)
    masks = normalized(maps, size)
    return xp.where(constant_channels(maps)[..., None, None], xp.zeros_like(masks), masks)


def duplicate_masks(maps):
    """Which maps give the same mask as an earlier one, for skipping their passes exactly.

    ``minmax(Z)`` equal at the layer's resolution means equal masks at any size: ``up`` is linear
    and keeps constants, so ``minmax(up(Z)) = up(minmax(Z))``. Constant maps (mask 0) all match each
    other; callers skip them anyway.

    Array-API ops with static shapes only (no row-wise unique, no data-dependent sizes), so the same
    function runs on the host, on a GPU, and traced into ``unioncam.onnx`` for ONNX Runtime and
    TensorRT. Each row gets two hashes, maxima of its values times fixed weights: a maximum is exact
    whatever order a library reduces in, so equal rows always hash equally. A map is matched to the
    first map with both hashes equal, and only if the two rows are then exactly equal: a hash
    collision costs a pass, never a wrong score.

    Args:
        maps: (N, h, w) float, any array library. Memory: an (N, N) float matrix.

    Returns:
        (N,) int64 in the input's library: for each map, the index of an earlier map with the same
        ``minmax`` (the first one, unless a hash collision hides it), else its own index.
    """
    xp = namespace(maps)
    n = maps.shape[0]
    dev = getattr(maps, "device", None)
    if is_concrete(n) and n == 0:
        return xp.zeros(0, dtype=xp.int64, device=dev)
    keys = xp.reshape(minmax(maps), (n, -1))
    j = xp.arange(keys.shape[1], dtype=keys.dtype, device=dev)
    h1 = xp.max(keys / (j + 1.0), axis=1)
    h2 = xp.max(keys * (xp.cos(j) + 2.0), axis=1)
    match = (h1[:, None] == h1[None, :]) & (h2[:, None] == h2[None, :])
    # argmax gives the first maximum (NumPy, torch, ONNX ArgMax, TensorRT alike); the diagonal
    # is always True, so the first match is at or before the map itself.
    first = xp.astype(xp.argmax(xp.astype(match, keys.dtype), axis=1), xp.int64)
    same = xp.all(xp.take(keys, first, axis=0) == keys, axis=1)
    return xp.where(same, first, xp.arange(n, dtype=xp.int64, device=dev))
