"""Base class of the eager CAM methods: input checks, the gradient pass, the black image's scores
and batched masked passes. A method supplies ``_explain``; the algebra comes from
:mod:`unioncam.algebra`."""
from __future__ import annotations

import contextlib
import time
from dataclasses import dataclass

import torch
from torch import nn

from .. import algebra
from ..errors import InvalidInputError
from ..validation import check_batch_size, check_images, check_max_passes
from .hooks import ActivationTap, check_model, eval_mode, resolve_layer
from .passes import check_logits, masked_scores, resolve_classes


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

    ``method(images, class_idx=None) -> Explanation``: images (B, 3, H, W) float in [0, 1] (torch);
    class_idx None (arg-max), an int, or one int per image.

    Args:
        model: ``nn.Module`` mapping (B, 3, H, W) images in [0, 1] to (B, C) logits.
        target_layer: dotted module name (``"features.29"``) or the module itself.
        batch_size: forward passes per chunk of masked passes.
        progress: show a progress bar over masked passes (it appears only after one second).
    """

    method = ""

    def __init__(self, model: nn.Module, target_layer: str | nn.Module, *, batch_size: int = 64,
                 progress: bool = False):
        self.model = check_model(model)
        self.layer_name, self.layer = resolve_layer(model, target_layer)
        self.batch_size = check_batch_size(batch_size)
        self.progress = bool(progress)

    def _forward(self, images: torch.Tensor, class_idx, *, gradients: bool) -> GradientPass:
        """Logits, activations, classes and (with ``gradients``) ``G = d logit_c / dA``."""
        grad_ctx = torch.enable_grad() if gradients else torch.no_grad()
        with grad_ctx, ActivationTap(self.layer_name, self.layer, requires_grad=gradients) as tap:
            logits = check_logits(self.model(images), images.shape[0])
            if tap.activations is None:
                raise InvalidInputError(
                    f"layer {self.layer_name!r} did not run during the forward pass; choose a layer on the path to the logits"
                )
            classes = resolve_classes(class_idx, logits)
            grads = None
            if gradients:
                selected = logits.gather(1, classes[:, None]).sum()
                (grads,) = torch.autograd.grad(selected, tap.activations, allow_unused=True)
                if grads is None:
                    raise InvalidInputError(
                        f"the logits do not depend on layer {self.layer_name!r}; choose a layer before the classifier")
        acts = tap.activations.detach()
        finite = torch.isfinite(acts).all() & (torch.isfinite(grads).all() if grads is not None else True)
        if not bool(finite):
            raise InvalidInputError(
                "the model produced NaN or Inf activations or gradients for this input; check the model and its weights"
            )
        return GradientPass(logits.detach(), acts, grads.detach() if grads is not None else None, classes)

    def _black_scores(self, images: torch.Tensor, classes: torch.Tensor) -> torch.Tensor:
        """``p_c(Ib)`` for each image's class: (B,). One pass on a black image serves all classes."""
        with torch.no_grad():
            probs = torch.softmax(check_logits(self.model(torch.zeros_like(images[:1])), 1), dim=1)[0]
        return probs[classes]

    def _scorer(self, images: torch.Tensor, classes: torch.Tensor, bar=None):
        """The scoring callable the algebra calls: ``(image_index, maps) -> p_c(N(map) * I0)``."""
        return lambda index, maps: masked_scores(self.model, images, index, maps, classes,
                                                 batch_size=self.batch_size, progress=bar)

    def _progress_bar(self, total: int, desc: str):
        if not self.progress or total == 0:
            return contextlib.nullcontext(None)
        from tqdm.auto import tqdm

        return tqdm(total=total, desc=desc, unit="pass", delay=1.0, leave=False)

    def _prepare(self, images: torch.Tensor) -> torch.Tensor:
        check_images(images, library="torch")
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


class RegionMapMethod(CAMMethod):
    """A method with Score-CAM's region map (UnionCAM, Score-CAM): owns the masked-pass options.

    Args (beyond :class:`CAMMethod`'s):
        skip_constant: skip the forward pass of channels whose map is constant (their score is
            ``p_c(Ib)`` exactly); turning it off changes no value, only the time.
        skip_duplicates: run one pass per distinct mask of an image (exact; off by default).
        max_passes: at most this many masked passes per image for the region map, the other
            channels' scores estimated (:mod:`unioncam.algebra.budget`); None (default) is exact.
    """

    def __init__(self, model: nn.Module, target_layer: str | nn.Module, *, batch_size: int = 64,
                 skip_constant: bool = True, skip_duplicates: bool = False, max_passes: int | None = None,
                 progress: bool = False):
        super().__init__(model, target_layer, batch_size=batch_size, progress=progress)
        self.skip_constant = bool(skip_constant)
        self.skip_duplicates = bool(skip_duplicates)
        self.max_passes = check_max_passes(max_passes, skip_constant=self.skip_constant)

    def _region(self, images, gp: GradientPass, base):
        """(``L_reg`` (B, h, w), :class:`unioncam.algebra.fusion.ChannelScores`, stats dict)."""
        A = gp.activations
        total = algebra.passes_needed(A, skip_constant=self.skip_constant, max_passes=self.max_passes)
        with torch.no_grad(), self._progress_bar(total, "masked passes") as bar:
            cs = algebra.channel_scores(A, base, self._scorer(images, gp.class_idx, bar),
                                        skip_constant=self.skip_constant, skip_duplicates=self.skip_duplicates,
                                        max_passes=self.max_passes)
            L_reg = algebra.region_map(A, cs.scores)
        stats = {"channels": int(A.shape[1]), "constant_channels": int(cs.constant.sum()),
                 "duplicate_channels": cs.duplicates, "masked_passes": cs.passes, **algebra.budget_stats(A, cs)}
        return L_reg, cs, stats
