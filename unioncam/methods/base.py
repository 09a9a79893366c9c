"""Base class of the eager CAM methods: the gradient pass and batched masked passes."""
from __future__ import annotations

import contextlib
import time
from dataclasses import dataclass

import torch
from torch import nn

from ..errors import InvalidInputError
from .maps import is_constant
from .core import (
    ActivationTap,
    check_batch_size,
    check_images,
    check_logits,
    eval_mode,
    masked_scores,
    resolve_classes,
    resolve_layer,
)


@dataclass
class GradientPass:
    """What one forward + backward pass yields for a batch.

    logits (B, C); activations and gradients (B, K, h, w); class_idx (B,) int64.
    """

    logits: torch.Tensor
    activations: torch.Tensor
    gradients: torch.Tensor
    class_idx: torch.Tensor


class CAMMethod:
    """Eager PyTorch CAM method around one target layer of ``model``.

    Args:
        model: ``nn.Module`` mapping (B, 3, H, W) images in [0, 1] to (B, C) logits.
        target_layer: dotted module name (``"features.29"``) or the module itself.
        batch_size: forward passes per chunk of masked passes.
        progress: show a progress bar over masked passes (it appears only after one second).
    """

    def __init__(self, model: nn.Module, target_layer: str | nn.Module, *, batch_size: int = 64, progress: bool = False):
        if not isinstance(model, nn.Module):
            raise TypeError(f"model must be a torch.nn.Module, got {type(model).__name__}")
        self.model = model
        self.layer_name, self.layer = resolve_layer(model, target_layer)
        self.batch_size = check_batch_size(batch_size)
        self.progress = bool(progress)

    def _gradient_pass(self, images: torch.Tensor, class_idx) -> GradientPass:
        with torch.enable_grad(), ActivationTap(self.layer_name, self.layer) as tap:
            logits = check_logits(self.model(images), images.shape[0])
            if tap.activations is None:
                raise InvalidInputError(
                    f"layer {self.layer_name!r} did not run during the forward pass; choose a layer on the path to the logits"
                )
            classes = resolve_classes(class_idx, logits)
            selected = logits.gather(1, classes[:, None]).sum()
            (grads,) = torch.autograd.grad(selected, tap.activations, allow_unused=True)
        if grads is None:
            raise InvalidInputError(f"the logits do not depend on layer {self.layer_name!r}; choose a layer before the classifier")
        acts = tap.activations.detach()
        if not bool(torch.isfinite(acts).all() & torch.isfinite(grads).all()):
            raise InvalidInputError(
                "the model produced NaN or Inf activations or gradients for this input; check the model and its weights"
            )
        return GradientPass(logits.detach(), acts, grads.detach(), classes)

    def _black_scores(self, images: torch.Tensor, classes: torch.Tensor) -> torch.Tensor:
        """``p_c(Ib)`` for each image's class: (B,). One pass on a black image serves all classes."""
        with torch.no_grad():
            probs = torch.softmax(check_logits(self.model(torch.zeros_like(images[:1])), 1), dim=1)[0]
        return probs[classes]

    def _channel_scores(self, images, activations, classes, base, skip_constant=True):
        """Score-CAM's ``s_k = p_c(minmax(up(A_k)) * I0)`` for every (image, channel): (B, K).

        Constant channels get ``p_c(Ib)`` without a pass when ``skip_constant`` (exact).

        Returns:
            (scores (B, K), constant (B, K) bool, passes run).
        """
        B, K = activations.shape[:2]
        with torch.no_grad():
            constant = is_constant(activations)
            run = ~constant if skip_constant else torch.ones_like(constant)
            b_idx, k_idx = torch.nonzero(run, as_tuple=True)
            scores = base[:, None].expand(B, K).clone()
            with self._progress_bar(int(b_idx.numel()), "masked passes") as bar:
                scores[b_idx, k_idx] = self._masked(images, b_idx, activations[b_idx, k_idx], classes, bar)
        return scores, constant, int(b_idx.numel())

    def _masked(self, images, image_index, maps, classes, bar=None) -> torch.Tensor:
        return masked_scores(self.model, images, image_index, maps, classes, batch_size=self.batch_size, progress=bar)

    def _progress_bar(self, total: int, desc: str):
        if not self.progress or total == 0:
            return contextlib.nullcontext(None)
        from tqdm.auto import tqdm

        return tqdm(total=total, desc=desc, unit="pass", delay=1.0, leave=False)

    def _prepare(self, images: torch.Tensor) -> torch.Tensor:
        check_images(images)
        param = next(self.model.parameters(), None)
        if param is not None and (param.device != images.device or param.dtype != images.dtype):
            images = images.to(device=param.device, dtype=param.dtype)
        return images

    def __call__(self, images: torch.Tensor, class_idx=None):
        images = self._prepare(images)
        with eval_mode(self.model):
            t0 = time.perf_counter()
            out = self._explain(images, class_idx)
        out.timings_ms["total"] = (time.perf_counter() - t0) * 1e3
        return out

    def _explain(self, images: torch.Tensor, class_idx):  # pragma: no cover - abstract
        raise NotImplementedError
