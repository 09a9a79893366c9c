"""Base classes of the eager CAM methods: input checks, eval mode and the options a method takes.
The sequence of every method is :func:`unioncam.pipeline.explain`, run on :class:`TorchPasses`; a
method class only names its method and its options (after torchcam's ``methods/core.py``)."""
from __future__ import annotations

import torch
from torch import nn

from .. import pipeline
from ..explanation import Explanation
from ..validation import check_batch_size, check_images, check_max_passes
from .hooks import check_model, eval_mode, resolve_layer
from .passes import TorchPasses
from ..reshape import parse_reshape

# Re-exported: the eager path's gradient pass result is the pipeline's.
GradientPass = pipeline.GradientPass


class CAMMethod:
    """Eager PyTorch CAM method around one target layer of ``model``.

    ``method(images, class_idx=None) -> Explanation``: images (B, 3, H, W) float in [0, 1] (torch);
    class_idx None (arg-max), an int, or one int per image.

    Args:
        model: ``nn.Module`` mapping (B, 3, H, W) images in [0, 1] to (B, C) logits.
        target_layer: dotted module name (``"features.29"``) or the module itself.
        batch_size: forward passes per chunk of masked passes.
        progress: show a progress bar over masked passes (it appears only after one second).
        reshape: a transformer's layer output as (B, D, h, w) maps: ``"tokens"`` ((B, N, D), class
            tokens dropped), ``"tokens:C:HxW"``, or ``"bhwc"`` (Swin); see :mod:`unioncam.reshape`.
    """

    method = ""

    def __init__(self, model: nn.Module, target_layer: str | nn.Module, *, batch_size: int = 64,
                 progress: bool = False, reshape: str | None = None):
        self.model = check_model(model)
        self.layer_name, self.layer = resolve_layer(model, target_layer)
        self.batch_size = check_batch_size(batch_size)
        self.progress = bool(progress)
        self.reshape = parse_reshape(reshape)

    def options(self) -> pipeline.PassOptions:
        """The pipeline options this method runs with."""
        return pipeline.PassOptions(progress=self.progress)

    def passes(self, images: torch.Tensor) -> TorchPasses:
        """The model passes for a batch like ``images`` (the pipeline's seam)."""
        return TorchPasses(self.model, self.layer_name, self.layer, batch_size=self.batch_size, like=images[:1],
                           reshape=self.reshape)

    def _prepare(self, images: torch.Tensor) -> torch.Tensor:
        check_images(images, library="torch")
        param = next(self.model.parameters(), None)
        if param is not None and (param.device != images.device or param.dtype != images.dtype):
            images = images.to(device=param.device, dtype=param.dtype)
        return images

    def __call__(self, images: torch.Tensor, class_idx=None) -> Explanation:
        images = self._prepare(images)
        with eval_mode(self.model):
            return pipeline.explain(self.passes(images), images, class_idx, self.method, self.options())


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
                 progress: bool = False, reshape: str | None = None):
        super().__init__(model, target_layer, batch_size=batch_size, progress=progress, reshape=reshape)
        self.skip_constant = bool(skip_constant)
        self.skip_duplicates = bool(skip_duplicates)
        self.max_passes = check_max_passes(max_passes, skip_constant=self.skip_constant)

    def options(self) -> pipeline.PassOptions:
        return pipeline.PassOptions(skip_constant=self.skip_constant, skip_duplicates=self.skip_duplicates,
                                    max_passes=self.max_passes, progress=self.progress)
