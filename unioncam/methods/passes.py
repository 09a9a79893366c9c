"""The model passes of the eager reference, written once in torch and traced by the exporter:
the gradient pass (:func:`logit_gradient`), the masked score ``p_c(N(map) * I0)``
(:func:`masked_probs`), and :class:`TorchPasses`, the pipeline's seam for an ``nn.Module``."""
from __future__ import annotations

import numpy as np
import torch
from torch import nn

from .. import algebra
from ..errors import InvalidInputError
from ..pipeline import GradientPass
from ..validation import check_classes
from .hooks import ActivationTap


def check_logits(out, batch: int) -> torch.Tensor:
    """The model's output must be a (B, C) logits tensor."""
    if not isinstance(out, torch.Tensor):
        raise InvalidInputError(
            f"the model returned {type(out).__name__}, not a tensor; wrap it so that it returns (B, C) logits"
        )
    if out.dim() != 2 or out.shape[0] != batch:
        raise InvalidInputError(f"the model must return (B, C) logits with B={batch}, got {tuple(out.shape)}")
    if out.shape[1] < 2:
        # A softmax over one logit is 1 whatever the image: every class-score gain would be 0.
        raise InvalidInputError("the model returns one logit; UnionCAM scores a class by its softmax over at least "
                                "2 logits: return two for a binary classifier, e.g. torch.cat([torch.zeros_like(z), z], 1)")
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


def logit_gradient(model: nn.Module, layer_name: str, layer: nn.Module, image: torch.Tensor,
                   class_idx: torch.Tensor, *, gradients: bool = True, reshape=None):
    """The spec's step 1 in traceable ops: (logits (B, C), A (B, K, h, w), G = d logit_c / dA or None,
    classes (B,) int64).

    A negative class index selects the arg-max of the image's logits (first maximum). The caller
    enables autograd (the exporter traces this below it). ``reshape``: a transformer's tokens as
    (B, D, h, w) maps (:mod:`unioncam.reshape`).
    """
    with ActivationTap(layer_name, layer, requires_grad=gradients, reshape=reshape) as tap:
        logits = model(image)
    if tap.activations is None:
        raise InvalidInputError(
            f"layer {layer_name!r} did not run during the forward pass; choose a layer on the path to the logits")
    classes = torch.where(class_idx < 0, logits.argmax(dim=1), class_idx)
    if not gradients:
        return logits, tap.activations, None, classes
    # One-hot weights instead of gather: gather's backward is a ScatterElements, which the exported
    # graph avoids; the gradient is the same.
    onehot = (torch.arange(logits.shape[1], device=logits.device)[None, :] == classes[:, None]).to(logits.dtype)
    (grads,) = torch.autograd.grad((logits * onehot).sum(), tap.activations, allow_unused=True)
    if grads is None:
        raise InvalidInputError(f"the logits do not depend on layer {layer_name!r}; choose a layer before the classifier")
    return logits, tap.activations, grads, classes


def class_probs(model: nn.Module, x: torch.Tensor, classes: torch.Tensor) -> torch.Tensor:
    """``p_c(x)``: the softmax probability of ``classes`` (N,) int64 for (N, 3, H, W) inputs: (N,)."""
    probs = torch.softmax(model(x), dim=1)
    # gather, not probs[:, cls]: indexing by a tensor would need its value at trace time.
    return probs.gather(1, classes.reshape(-1, 1))[:, 0]


def masked_inputs(images: torch.Tensor, maps: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """``N(map) * I0`` for (N, h', w') maps of (N or 1, 3, H, W) images: (N, 3, H, W)."""
    return images * algebra.saliency_masks(maps, size)[:, None]


def masked_probs(model: nn.Module, images: torch.Tensor, maps: torch.Tensor, classes: torch.Tensor) -> torch.Tensor:
    """``p_c(N(map) * I0)`` for (N, h', w') maps of (N or 1, 3, H, W) images and (N,) classes: (N,)."""
    return class_probs(model, masked_inputs(images, maps, tuple(images.shape[-2:])), classes)


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
    n = maps.shape[0]
    out = torch.empty(n, dtype=images.dtype, device=images.device)
    with torch.no_grad():
        for start in range(0, n, batch_size):
            sl = slice(start, min(start + batch_size, n))
            idx = image_index[sl]
            out[sl] = _scores(model, images[idx], maps[sl].to(images.dtype), class_idx[idx])
            if progress is not None:
                progress.update(idx.shape[0])
    return out


def _scores(model: nn.Module, images: torch.Tensor, maps: torch.Tensor, classes: torch.Tensor) -> torch.Tensor:
    """:func:`masked_probs` with the model's output checked, in the fastest layout of the device."""
    masked = masked_inputs(images, maps, tuple(images.shape[-2:]))
    if masked.device.type == "cpu":
        # oneDNN's NHWC convolutions: 1.4x faster masked passes for lite0 on this project's CPU
        # (measured), with the model untouched; the values are the same function.
        masked = masked.contiguous(memory_format=torch.channels_last)
    probs = torch.softmax(check_logits(model(masked), masked.shape[0]), dim=1)
    return probs.gather(1, classes.reshape(-1, 1).expand(masked.shape[0], 1))[:, 0]


class TorchPasses:
    """The pipeline's passes (:class:`unioncam.pipeline.Passes`) on an eager ``nn.Module``.

    No padding: the eager reference runs each call at its own size (PyTorch does not re-search
    convolution algorithms per shape unless ``cudnn.benchmark`` is set).
    """

    num_classes = None
    fusion_batch = 3
    gradient_batch = None
    pad = False

    def __init__(self, model: nn.Module, layer_name: str, layer: nn.Module, *, batch_size: int,
                 like: torch.Tensor, reshape=None):
        """``like``: a (1, 3, H, W) tensor of the images' size, device and dtype (the black image's);
        ``reshape``: how the layer's output becomes (B, K, h, w) maps (None: it is already)."""
        self.model, self.layer_name, self.layer, self.reshape = model, layer_name, layer, reshape
        self.batch_size = batch_size
        self.like = like

    def gradient(self, images: torch.Tensor, requested: np.ndarray, *, gradients: bool = True) -> GradientPass:
        req = torch.from_numpy(requested).to(images.device)
        with torch.enable_grad() if gradients else torch.no_grad():
            # Checked before the classes resolve: a wrong output must not reach argmax.
            logits, A, G, classes = logit_gradient(lambda x: check_logits(self.model(x), x.shape[0]),
                                                   self.layer_name, self.layer, images, req, gradients=gradients,
                                                   reshape=self.reshape)
        check_classes(requested[requested >= 0], int((requested >= 0).sum()), logits.shape[1])
        A = A.detach()
        G = G.detach() if G is not None else None
        finite = torch.isfinite(A).all() & (torch.isfinite(G).all() if G is not None else True)
        if not bool(finite):
            raise InvalidInputError(
                "the model produced NaN or Inf activations or gradients for this input; check the model and its weights"
            )
        return GradientPass(logits.detach(), A, G, classes)

    def black_probs(self) -> torch.Tensor:
        with torch.no_grad():
            return torch.softmax(check_logits(self.model(torch.zeros_like(self.like)), 1), dim=1)[0]

    def image(self, images: torch.Tensor, b: int, stage: str) -> torch.Tensor:
        return images[b:b + 1]

    def scores(self, image: torch.Tensor, maps: torch.Tensor, class_idx: int, stage: str) -> torch.Tensor:
        with torch.no_grad():
            cls = torch.full((maps.shape[0],), class_idx, dtype=torch.int64, device=image.device)
            return _scores(self.model, image, maps.to(image.dtype), cls)

    def describe(self) -> dict:
        return {}

