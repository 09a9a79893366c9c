"""Decompositions of the backward ops that ``d logits / d activations`` needs, into ops every ONNX
consumer handles (TensorRT's parser included).

``torch.onnx.export`` has no translation for ``convolution_backward`` or the pooling backwards, and
PyTorch's own decomposition of ``max_pool2d_with_indices_backward`` scatters through MaxPool's
indices, an output TensorRT's parser rejects. Each decomposition here recomputes what it needs from
the forward input instead, with the same semantics as PyTorch's CPU kernels (max-pool ties go to the
first element of a window in row-major order).
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

aten = torch.ops.aten


def _pair(v) -> tuple[int, int]:
    v = list(v) if isinstance(v, (list, tuple)) else [v]
    return (int(v[0]), int(v[-1])) if v else (1, 1)


def convolution_backward(grad_output, input, weight, bias_sizes, stride, padding, dilation, transposed,
                         output_padding, groups, output_mask):
    """Gradient w.r.t. the input of a 2-D convolution: a transposed convolution with the same weights
    (and for a transposed convolution, a plain one).

    Only ``grad_input`` is produced: the weights are constants of the exported graph.
    """
    if weight.dim() != 4:
        raise NotImplementedError("convolution_backward: only 2-D convolutions are supported")
    grad_input = None
    if output_mask[0] and transposed:
        # The adjoint of a transposed convolution is the plain convolution with the same weights,
        # stride, padding, dilation and groups; the transposed weight layout (C_in, C_out/groups, kh,
        # kw) is exactly what that convolution takes. Output padding only added rows the forward
        # computed from nothing, and the strided convolution skips them.
        grad_input = aten.convolution(grad_output, weight, None, list(_pair(stride)), list(_pair(padding)),
                                      list(_pair(dilation)), False, [0, 0], groups)
        return grad_input, None, None
    if output_mask[0]:
        sh, sw = _pair(stride)
        ph, pw = _pair(padding)
        dh, dw = _pair(dilation)
        kh, kw = weight.shape[-2:]
        oh, ow = grad_output.shape[-2:]
        ih, iw = input.shape[-2:]
        # Rows/columns that the forward's stride skipped at the end come back as output padding.
        oph = ih - ((oh - 1) * sh - 2 * ph + dh * (kh - 1) + 1)
        opw = iw - ((ow - 1) * sw - 2 * pw + dw * (kw - 1) + 1)
        grad_input = aten.convolution(grad_output, weight, None, [sh, sw], [ph, pw], [dh, dw], True, [oph, opw], groups)
    return grad_input, None, None


def _place_strided(g: torch.Tensor, sh: int, sw: int) -> torch.Tensor:
    """(B, C, oh, ow) -> (B, C, oh*sh, ow*sw) with g[y, x] at (sh*y, sw*x), zeros elsewhere."""
    B, C, oh, ow = g.shape
    if sh == 1 and sw == 1:
        return g
    g6 = g.reshape(B, C, oh, 1, ow, 1)
    g6 = F.pad(g6, (0, sw - 1, 0, 0, 0, sh - 1))
    return g6.reshape(B, C, oh * sh, ow * sw)


def _tiled_max_backward(grad_output, self, kh: int, kw: int):
    """Max-pool gradient when the windows tile the input: kernel == stride, no padding or dilation,
    ``oh*kh <= H`` and ``ow*kw <= W`` (rows and columns past the last window get no gradient).

    Each window becomes one row of kh*kw values (reshape and transpose, no copies per offset), whose
    first maximum (ArgMax keeps the first, as PyTorch's kernels do) takes the gradient. The graph
    has a fixed handful of ops whatever the kernel, where one strided slice per kernel offset would
    give a global 56x56 max pool ~3,000 slices and a symbolic trace that runs for minutes.
    """
    B, C, H, W = self.shape
    oh, ow = int(grad_output.shape[-2]), int(grad_output.shape[-1])
    x = self[:, :, : oh * kh, : ow * kw].reshape(B, C, oh, kh, ow, kw).permute(0, 1, 2, 4, 3, 5)
    first = x.reshape(B, C, oh, ow, kh * kw).argmax(dim=-1, keepdim=True)
    onehot = (torch.arange(kh * kw, device=self.device) == first).to(grad_output.dtype)
    g = (onehot * grad_output.unsqueeze(-1)).reshape(B, C, oh, ow, kh, kw).permute(0, 1, 2, 4, 3, 5)
    g = g.reshape(B, C, oh * kh, ow * kw)
    return F.pad(g, (0, W - ow * kw, 0, H - oh * kh)) if (oh * kh, ow * kw) != (H, W) else g


def max_pool2d_with_indices_backward(grad_output, self, kernel_size, stride, padding, dilation, ceil_mode, indices):
    """Max-pool gradient without the indices: each window's gradient goes to its first maximum.

    Windows that tile the input take one ArgMax (``_tiled_max_backward``). Otherwise the window
    maxima are recomputed by strided slices of the (padded) input, one per kernel offset; "first"
    follows the kernel's row-major order, as PyTorch's kernels do.
    """
    kh, kw = _pair(kernel_size)
    sh, sw = _pair(stride) if stride else (kh, kw)
    ph, pw = _pair(padding)
    dh, dw = _pair(dilation)
    B, C, H, W = self.shape
    oh, ow = grad_output.shape[-2:]
    if (sh, sw) == (kh, kw) and (ph, pw) == (0, 0) and (dh, dw) == (1, 1) and oh * kh <= H and ow * kw <= W:
        return _tiled_max_backward(grad_output, self, kh, kw)
    # Padded extent that the windows cover (ceil_mode windows may run past the right edge).
    Hp = max(H + 2 * ph, (oh - 1) * sh + dh * (kh - 1) + 1)
    Wp = max(W + 2 * pw, (ow - 1) * sw + dw * (kw - 1) + 1)
    neg = torch.finfo(self.dtype).min
    x = F.pad(self, (pw, Wp - W - pw, ph, Hp - H - ph), value=neg)
    windows = [
        x[:, :, i * dh : i * dh + (oh - 1) * sh + 1 : sh, j * dw : j * dw + (ow - 1) * sw + 1 : sw]
        for i in range(kh)
        for j in range(kw)
    ]
    m = windows[0]
    for w_ in windows[1:]:
        m = torch.maximum(m, w_)
    taken = torch.zeros_like(m, dtype=torch.bool)
    grad = None
    span_h, span_w = oh * sh, ow * sw
    for n, w_ in enumerate(windows):
        i, j = divmod(n, kw)
        hit = (w_ == m) & ~taken
        taken = taken | hit
        placed = _place_strided(torch.where(hit, grad_output, torch.zeros_like(grad_output)), sh, sw)
        # Shift by the kernel offset inside the padded frame, then crop/pad to (Hp, Wp).
        top, left = i * dh, j * dw
        placed = placed[:, :, : max(0, min(span_h, Hp - top)), : max(0, min(span_w, Wp - left))]
        placed = F.pad(placed, (left, Wp - left - placed.shape[-1], top, Hp - top - placed.shape[-2]))
        grad = placed if grad is None else grad + placed
    return grad[:, :, ph : ph + H, pw : pw + W]


def adaptive_max_pool2d_backward(grad_output, self, indices):
    """Adaptive max-pool gradient without the indices.

    Windows that tile the input evenly are plain max pooling. Otherwise the windows differ in size
    (``[floor(i*H/oh), ceil((i+1)*H/oh))``): each is handled on its own, its gradient going to its
    first maximum in row-major order (ArgMax returns the first, as PyTorch's kernel picks), then
    padded back into place. The graph grows with oh*ow, which adaptive pooling keeps small.
    """
    H, W = int(self.shape[-2]), int(self.shape[-1])
    oh, ow = int(grad_output.shape[-2]), int(grad_output.shape[-1])
    if not (H % oh or W % ow):
        k = [H // oh, W // ow]
        return max_pool2d_with_indices_backward(grad_output, self, k, k, [0, 0], [1, 1], False, indices)
    rows, cols = _adaptive_windows(H, oh), _adaptive_windows(W, ow)
    grad = torch.zeros_like(self)
    for i, (h0, h1) in enumerate(rows):
        for j, (w0, w1) in enumerate(cols):
            window = self[:, :, h0:h1, w0:w1].flatten(2)
            first = window.argmax(dim=-1, keepdim=True)
            position = torch.arange((h1 - h0) * (w1 - w0), device=self.device)
            onehot = (position == first).to(grad_output.dtype)
            part = onehot * grad_output[:, :, i:i + 1, j:j + 1].flatten(2)
            part = part.unflatten(2, (h1 - h0, w1 - w0))
            grad = grad + F.pad(part, (w0, W - w1, h0, H - h1))
    return grad


def _adaptive_windows(n_in: int, n_out: int) -> list[tuple[int, int]]:
    """PyTorch's adaptive pooling windows along one axis: ``[floor(i*n/m), ceil((i+1)*n/m))``."""
    return [((i * n_in) // n_out, -((-(i + 1) * n_in) // n_out)) for i in range(n_out)]


def adaptive_max_pool2d(self, output_size):
    """Adaptive max pooling forward with its indices (flat in H*W, as PyTorch's). Even windows are
    max pooling; uneven ones (which ONNX MaxPool cannot express) are reduced one window at a time."""
    H, W = int(self.shape[-2]), int(self.shape[-1])
    oh, ow = (int(v) if v is not None else d for v, d in zip(output_size, (H, W)))
    if not (H % oh or W % ow):
        k = [H // oh, W // ow]
        return aten.max_pool2d_with_indices.default(self, k, k, [0, 0], [1, 1], False)
    values, indices = [], []
    for h0, h1 in _adaptive_windows(H, oh):
        for w0, w1 in _adaptive_windows(W, ow):
            v, a = self[:, :, h0:h1, w0:w1].flatten(2).max(dim=-1)
            values.append(v)
            indices.append((h0 + a // (w1 - w0)) * W + (w0 + a % (w1 - w0)))
    return (torch.stack(values, -1).unflatten(-1, (oh, ow)), torch.stack(indices, -1).unflatten(-1, (oh, ow)))


def _adaptive_matrix(n_in: int, n_out: int, dtype, device) -> torch.Tensor:
    """(n_out, n_in) averaging matrix of adaptive average pooling along one axis.

    Built in Python and turned into one constant: element-wise writes would each become graph ops.
    """
    rows = []
    for i in range(n_out):
        start = (i * n_in) // n_out
        end = -((-(i + 1) * n_in) // n_out)
        rows.append([1.0 / (end - start) if start <= j < end else 0.0 for j in range(n_in)])
    return torch.tensor(rows, dtype=dtype, device=device)


def adaptive_avg_pool2d_backward(grad_output, self):
    """Adaptive average pooling is separable and linear: out = P_h x P_w^T, so grad = P_h^T g P_w."""
    H, W = int(self.shape[-2]), int(self.shape[-1])
    oh, ow = int(grad_output.shape[-2]), int(grad_output.shape[-1])
    if (oh, ow) == (H, W):
        return grad_output
    Ph = _adaptive_matrix(H, oh, grad_output.dtype, grad_output.device)
    Pw = _adaptive_matrix(W, ow, grad_output.dtype, grad_output.device)
    return torch.matmul(torch.matmul(Ph.t(), grad_output), Pw)


def _avg_pool_matrix(n_in: int, n_out: int, k: int, s: int, p: int, count_include_pad: bool, scale_by_count: bool,
                     dtype, device) -> torch.Tensor:
    """(n_out, n_in) matrix of average pooling along one axis, with PyTorch's divisor rule.

    Window i covers [i*s - p, i*s - p + k) clipped to the padded input [-p, n_in + p) (ceil mode can
    add a last window that starts inside and runs past it); with ``count_include_pad`` it divides by
    that clipped length, padding included, else by the number of real inputs it covers. Both rules
    are products of a per-axis length, so the 2-D pool is ``P_h @ x @ P_w^T``.
    """
    rows = []
    for i in range(n_out):
        start = i * s - p
        end = min(start + k, n_in + p)
        lo, hi = max(start, 0), min(end, n_in)
        count = (end - start) if count_include_pad else (hi - lo)
        w = 1.0 / count if scale_by_count and count > 0 else 1.0
        rows.append([w if lo <= j < hi else 0.0 for j in range(n_in)])
    return torch.tensor(rows, dtype=dtype, device=device)


def avg_pool2d_backward(grad_output, self, kernel_size, stride, padding, ceil_mode, count_include_pad, divisor_override):
    """Average-pool gradient for every setting (padding, ceil mode, count_include_pad,
    divisor_override): pooling is linear and separable, ``out = P_h x P_w^T``, so the gradient is
    ``P_h^T g P_w``: two MatMuls with constant matrices, which every ONNX consumer accepts. The output
    size (and with it ceil mode's extra window) is read from ``grad_output``."""
    kh, kw = _pair(kernel_size)
    sh, sw = _pair(stride) if stride else (kh, kw)
    ph, pw = _pair(padding)
    H, W = int(self.shape[-2]), int(self.shape[-1])
    oh, ow = int(grad_output.shape[-2]), int(grad_output.shape[-1])
    dt, dev = grad_output.dtype, grad_output.device
    # divisor_override replaces the whole count: 1/d on one axis, plain sums on the other.
    Ph = _avg_pool_matrix(H, oh, kh, sh, ph, count_include_pad, not divisor_override, dt, dev)
    Pw = _avg_pool_matrix(W, ow, kw, sw, pw, count_include_pad, not divisor_override, dt, dev)
    if divisor_override:
        Ph = Ph / float(divisor_override)
    return torch.matmul(torch.matmul(Ph.t(), grad_output), Pw)


def sort_stable(self, *, stable=None, dim=-1, descending=False):
    """``sort.stable`` (what the array API's ``sort`` calls) as ``sort.default``: ONNX has no stable
    sort, and the algebra uses only the sorted values, which stability does not change."""
    return aten.sort.default(self, dim, descending)


def decomposition_table() -> dict:
    """PyTorch's core ATen decompositions plus the backward ones above (which take precedence)."""
    from torch._decomp import core_aten_decompositions

    table = dict(core_aten_decompositions())
    table[aten.convolution_backward.default] = convolution_backward
    table[aten.max_pool2d_with_indices_backward.default] = max_pool2d_with_indices_backward
    table[aten._adaptive_avg_pool2d_backward.default] = adaptive_avg_pool2d_backward
    table[aten.adaptive_max_pool2d_backward.default] = adaptive_max_pool2d_backward
    table[aten.adaptive_max_pool2d.default] = adaptive_max_pool2d
    table[aten.avg_pool2d_backward.default] = avg_pool2d_backward
    table[aten.sort.stable] = sort_stable
    # LayerNorm as reductions: ONNX's LayerNormalization with its mean and inverse-std outputs (which
    # the backward reads) is rejected by TensorRT ("more than 1 outputs for LayerNormalization").
    from torch._decomp import decomposition_table as torch_decompositions

    table[aten.native_layer_norm.default] = torch_decompositions[aten.native_layer_norm.default]
    return table
