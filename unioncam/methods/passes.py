"""The model passes of the eager reference: checked logits, class resolution, and batched masked
passes ``p_c(M * I0)`` whose masks come from :mod:`unioncam.algebra`."""
from __future__ import annotations

import torch
from torch import nn

from .. import algebra
from ..errors import InvalidInputError
from ..validation import check_classes


def check_logits(out, batch: int) -> torch.Tensor:
    """The model's output must be a (B, C) logits tensor."""
    if not isinstance(out, torch.Tensor):
        raise InvalidInputError(
            f"the model returned {type(out).__name__}, not a tensor; wrap it so that it returns (B, C) logits"
        )
    if out.dim() != 2 or out.shape[0] != batch:
        raise InvalidInputError(f"the model must return (B, C) logits with B={batch}, got {tuple(out.shape)}")
    return out


def resolve_classes(class_idx, logits: torch.Tensor) -> torch.Tensor:
    """None -> arg-max per image; an int -> the same class for all; a sequence -> one per image.

    Returns:
        (B,) int64 on the logits' device.
    """
    B, C = logits.shape
    idx = check_classes(class_idx, B, C)
    if idx is None:
        return logits.argmax(dim=1)
    return torch.from_numpy(idx).to(logits.device)


def masked_scores(model: nn.Module, images: torch.Tensor, image_index: torch.Tensor, maps: torch.Tensor,
                  class_idx: torch.Tensor, *, batch_size: int, progress=None) -> torch.Tensor:
    """``p_c(N(Z) * I0)`` for N (image, map) pairs, in chunks of ``batch_size`` forward passes.

    Args:
        images: (B, 3, H, W) in [0, 1].
        image_index: (N,) int64, which image each map masks.
        maps: (N, h, w) maps (activations at any size, or maps already at (H, W)).
        class_idx: (B,) int64, the class scored for each image.
        progress: an object with ``update(n)`` (a tqdm bar) or None.

    Returns:
        (N,) softmax scores, images' dtype.
    """
    H, W = images.shape[-2:]
    n = maps.shape[0]
    out = torch.empty(n, dtype=images.dtype, device=images.device)
    with torch.no_grad():
        for start in range(0, n, batch_size):
            sl = slice(start, min(start + batch_size, n))
            idx = image_index[sl]
            masks = algebra.saliency_masks(maps[sl].to(images.dtype), (H, W))
            masked = images[idx] * masks[:, None]
            if masked.device.type == "cpu":
                # oneDNN's NHWC convolutions: 1.4x faster masked passes for lite0 on this project's
                # CPU (measured), with the model untouched; the values are the same function.
                masked = masked.contiguous(memory_format=torch.channels_last)
            logits = check_logits(model(masked), masks.shape[0])
            probs = torch.softmax(logits, dim=1)
            out[sl] = probs.gather(1, class_idx[idx][:, None])[:, 0]
            if progress is not None:
                progress.update(masks.shape[0])
    return out
