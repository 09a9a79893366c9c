"""Agreement of exported graphs (under ONNX Runtime) with torch on the same inputs.

Gradients are compared on identical activations: torch's head is run on the activations ONNX
Runtime produced (a forward hook substitutes them), since max-pool gradients flip on near-ties.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from torch import nn

from unioncam.methods.hooks import eval_mode, resolve_layer
from unioncam.methods.passes import masked_scores


def _session(path: Path):
    import onnxruntime as ort

    return ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])


def gradient_agreement(model: nn.Module, layer: str, art: str | Path, images: np.ndarray, classes: np.ndarray) -> dict:
    """Max abs differences, relative to each tensor's scale: logits, activations, gradients.

    Args:
        images: (B, 3, H, W) float32 in [0, 1]; classes: (B,) int64.
    """
    art = Path(art)
    _, module = resolve_layer(model, layer)
    logits, acts, grads = _session(art / "gradient.onnx").run(None, {"image": images, "class_idx": classes})
    store = {}
    with eval_mode(model):
        h = module.register_forward_hook(lambda m, i, o: store.setdefault("a", o.detach().clone()))
        try:
            with torch.no_grad():
                ref_logits = model(torch.from_numpy(images)).numpy()
        finally:
            h.remove()
        leaf = torch.from_numpy(acts).requires_grad_(True)
        h = module.register_forward_hook(lambda m, i, o: leaf * 1.0)
        try:
            out = model(torch.from_numpy(images))
        finally:
            h.remove()
        (ref_grads,) = torch.autograd.grad(out.gather(1, torch.from_numpy(classes)[:, None]).sum(), leaf)
    ref_acts = store["a"].numpy()
    ref_grads = ref_grads.numpy()

    def rel(a, b):
        return float(np.abs(a - b).max() / max(float(np.abs(b).max()), 1e-12))

    return {"logits_rel": rel(logits, ref_logits), "activations_rel": rel(acts, ref_acts),
            "gradients_rel": rel(grads, ref_grads), "logits_abs": float(np.abs(logits - ref_logits).max())}


def masked_agreement(model: nn.Module, art: str | Path, image: np.ndarray, maps: np.ndarray, cls: int) -> float:
    """Max abs difference of masked scores, ONNX Runtime vs eager. image (1,3,H,W), maps (M,h',w')."""
    (scores,) = _session(Path(art) / "masked_forward.onnx").run(
        None, {"image": image, "maps": maps[None], "class_idx": np.array([cls], np.int64)})
    with eval_mode(model):
        ref = masked_scores(model, torch.from_numpy(image), torch.zeros(maps.shape[0], dtype=torch.int64),
                            torch.from_numpy(maps), torch.tensor([cls]), batch_size=64)
    return float(np.abs(scores[0] - ref.numpy()).max())
