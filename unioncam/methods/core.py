"""Machinery shared by the eager methods: target-layer lookup, a one-shot activation tap,
eval-mode and hook hygiene, input validation, and batched masked passes."""
from __future__ import annotations

import contextlib
from typing import Iterator

import torch
from torch import nn

from ..errors import InvalidInputError, LayerNotFoundError
from ..validation import check_theta  # noqa: F401  (re-exported for the methods)
from .maps import saliency_masks


def resolve_layer(model: nn.Module, layer: str | nn.Module) -> tuple[str, nn.Module]:
    """Find the target layer by dotted name (``"features.29"``) or by module.

    For models wrapped by :class:`unioncam.models.Normalized`, names are also looked up inside the
    wrapped network, so torchvision's names work unchanged.

    Returns:
        (name, module).

    Raises:
        LayerNotFoundError: the name or module is not part of ``model``; the message lists close names.
    """
    named = dict(model.named_modules(remove_duplicate=False))
    if isinstance(layer, nn.Module):
        for name, mod in named.items():
            if mod is layer:
                return name, mod
        raise LayerNotFoundError("the target layer module is not a submodule of the model")
    if not isinstance(layer, str):
        raise TypeError(f"target_layer must be a dotted module name or an nn.Module, got {type(layer).__name__}")
    candidates = [layer]
    inner = getattr(model, "unioncam_inner", None)
    if inner is not None:
        candidates.append(f"{inner}.{layer}")
    for cand in candidates:
        if cand in named and cand != "":
            return layer, named[cand]
    tail = layer.split(".")[-1]
    close = [n for n in named if n and (n.endswith(tail) or layer in n)][:8]
    hint = f" Close names: {', '.join(close)}." if close else ""
    raise LayerNotFoundError(
        f"layer {layer!r} not found in {type(model).__name__}.{hint} "
        "List names with `[n for n, _ in model.named_modules()]`."
    )


class ActivationTap:
    """Forward hook that captures one layer's output as a fresh autograd leaf.

    The leaf is what the gradient is taken against, so ``d logit / dA`` needs no backward pass
    through the layers before it. The network continues on a clone, so an in-place op after the
    layer (``out += identity`` in a ResNet block) cannot overwrite the captured activations.
    """

    def __init__(self, name: str, module: nn.Module, *, requires_grad: bool = True):
        self.name = name
        self.module = module
        self.requires_grad = requires_grad
        self.activations: torch.Tensor | None = None
        self.calls = 0
        self._handle = None

    def _hook(self, module, inputs, output):
        self.calls += 1
        if self.calls > 1:
            raise LayerNotFoundError(
                f"layer {self.name!r} runs more than once per forward pass (a shared module such as a "
                "reused ReLU); choose a module that runs once, e.g. its parent block"
            )
        if not isinstance(output, torch.Tensor) or output.dim() != 4:
            got = tuple(output.shape) if isinstance(output, torch.Tensor) else type(output).__name__
            raise LayerNotFoundError(
                f"layer {self.name!r} outputs {got}; a CAM target layer must output a (B, K, h, w) tensor"
            )
        leaf = output.detach().requires_grad_(self.requires_grad)
        self.activations = leaf
        return leaf.clone() if self.requires_grad else leaf

    def __enter__(self) -> "ActivationTap":
        self.calls = 0
        self.activations = None
        self._handle = self.module.register_forward_hook(self._hook)
        return self

    def __exit__(self, *exc) -> None:
        if self._handle is not None:
            self._handle.remove()
            self._handle = None


@contextlib.contextmanager
def eval_mode(model: nn.Module) -> Iterator[nn.Module]:
    """Put every module in eval mode and restore each one's own flag afterwards, even on error."""
    flags = [(m, m.training) for m in model.modules()]
    model.eval()
    try:
        yield model
    finally:
        for m, was_training in flags:
            m.training = was_training


def check_images(images: torch.Tensor) -> torch.Tensor:
    """Validate a (B, C, H, W) floating tensor in [0, 1] with finite values."""
    if not isinstance(images, torch.Tensor):
        raise TypeError(f"images must be a torch.Tensor (B, 3, H, W), got {type(images).__name__}")
    if images.dim() == 3:
        raise InvalidInputError(f"images must be (B, 3, H, W); got {tuple(images.shape)}: add a batch dim with images[None]")
    if images.dim() != 4 or images.shape[0] == 0:
        raise InvalidInputError(f"images must be a non-empty (B, 3, H, W) tensor, got shape {tuple(images.shape)}")
    if not images.is_floating_point():
        raise InvalidInputError(f"images must be floating point in [0, 1], got {images.dtype}; divide uint8 by 255")
    if not bool(torch.isfinite(images).all()):
        raise InvalidInputError("images contain NaN or Inf; clean the input before explaining it")
    lo, hi = float(images.min()), float(images.max())
    if lo < 0.0 or hi > 1.0:
        raise InvalidInputError(
            f"images must lie in [0, 1] (normalisation is part of the model), got range [{lo:.4g}, {hi:.4g}]"
        )
    return images


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
    if class_idx is None:
        return logits.argmax(dim=1)
    if isinstance(class_idx, bool):
        raise TypeError("class_idx must be None, an int or a sequence of ints, not a bool")
    if isinstance(class_idx, int) or (isinstance(class_idx, torch.Tensor) and class_idx.dim() == 0):
        idx = torch.full((B,), int(class_idx), dtype=torch.int64, device=logits.device)
    else:
        try:
            idx = torch.as_tensor(list(class_idx) if not isinstance(class_idx, torch.Tensor) else class_idx)
        except (TypeError, ValueError) as e:
            raise TypeError(f"class_idx must be None, an int or a sequence of ints: {e}") from None
        if idx.dim() != 1 or idx.shape[0] != B:
            raise InvalidInputError(f"class_idx has {tuple(idx.shape)} entries; give one class per image (B={B})")
        if idx.is_floating_point() or idx.dtype == torch.bool:
            raise TypeError(f"class_idx must hold integers, got {idx.dtype}")
        idx = idx.to(device=logits.device, dtype=torch.int64)
    bad = (idx < 0) | (idx >= C)
    if bool(bad.any()):
        raise InvalidInputError(f"class index {int(idx[bad][0])} out of range: the model has {C} classes (0..{C - 1})")
    return idx


def masked_scores(
    model: nn.Module,
    images: torch.Tensor,
    image_index: torch.Tensor,
    maps: torch.Tensor,
    class_idx: torch.Tensor,
    *,
    batch_size: int,
    progress=None,
) -> torch.Tensor:
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
            masks = saliency_masks(maps[sl].to(images.dtype), (H, W))
            logits = check_logits(model(images[idx] * masks[:, None]), masks.shape[0])
            probs = torch.softmax(logits, dim=1)
            out[sl] = probs.gather(1, class_idx[idx][:, None])[:, 0]
            if progress is not None:
                progress.update(masks.shape[0])
    return out


def check_batch_size(batch_size: int) -> int:
    if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
        raise InvalidInputError(f"batch_size must be a positive int, got {batch_size!r}")
    return batch_size


