"""UnionCAM written again, independently of the package: one image, per-channel Python loops,
NumPy's percentile, OpenCV's bilinear resize, autograd through retain_grad. Slow but obvious."""
from __future__ import annotations

import cv2
import numpy as np
import torch


def _up(z: np.ndarray, size) -> np.ndarray:
    H, W = size
    if z.shape == (H, W):
        return z
    return cv2.resize(z, (W, H), interpolation=cv2.INTER_LINEAR)


def _minmax(z: np.ndarray) -> np.ndarray:
    lo, hi = z.min(), z.max()
    return (z - lo) / (hi - lo) if hi > lo else np.zeros_like(z)


def independent_unioncam(model, layer, image: torch.Tensor, theta: float = 10.0, cls: int | None = None,
                         layout=None) -> dict:
    """image: (1, 3, H, W) tensor in the model's dtype. ``layout``: for a transformer, a NumPy
    function from the layer's raw output (tokens) to (B, K, h, w) maps, applied to the activations
    and their gradients alike."""
    store = {}

    def hook(_m, _i, out):
        out.retain_grad()
        store["a"] = out

    h = layer.register_forward_hook(hook)
    try:
        logits = model(image)
    finally:
        h.remove()
    c = int(logits[0].argmax()) if cls is None else cls
    logits[0, c].backward()
    A, G = store["a"].detach().numpy(), store["a"].grad.numpy()
    if layout is not None:
        A, G = layout(A), layout(G)
    A, G = A[0], G[0]
    H, W = image.shape[-2:]
    x0 = image[0].detach()

    def p(mask: np.ndarray) -> float:
        with torch.no_grad():
            out = model((x0 * torch.from_numpy(mask).to(x0.dtype))[None])
        return float(torch.softmax(out, 1)[0, c])

    b = p(np.zeros((H, W)))
    K = A.shape[0]
    L_den = np.zeros(A.shape[1:])
    for k in range(K):
        t = np.percentile(G[k], theta)
        Wk = np.where(G[k] >= t, G[k], 0.0)
        S = Wk[Wk > 0].sum()
        if S > 0:
            alpha = np.where(Wk > 0, 1.0 / S, 0.0)
            L_den += alpha * np.maximum(Wk, 0) * A[k]
    s = np.empty(K)
    for k in range(K):
        s[k] = b if A[k].max() == A[k].min() else p(_minmax(_up(A[k], (H, W))))
    L_reg = np.maximum((s[:, None, None] * A).sum(0), 0)
    D = _minmax(_up(L_den, (H, W)))
    R = _minmax(_up(L_reg, (H, W)))
    beta_den, beta_reg = p(D) - b, p(R) - b
    DR = _minmax(beta_den * D + beta_reg * R)
    beta_dr = p(DR) - b
    sel = "de_region" if beta_dr > beta_reg else "region"
    return dict(
        cam=DR if sel == "de_region" else R, denoising=D, region=R, de_region=DR, beta_denoising=beta_den,
        beta_region=beta_reg, beta_de_region=beta_dr, selected=sel, class_idx=c, channel_scores=s, base=b,
    )
