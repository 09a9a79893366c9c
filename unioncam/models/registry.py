"""The model registry: name -> builder, default target layer, input size, normalisation."""
from __future__ import annotations

from pathlib import Path
from typing import Callable

import torch
from torch import nn

from ..model_specs import UntrainedWeightsWarning, bundled_weights_path, spec, warn_untrained
from .state_dicts import load_strict, read_state_dict

__all__ = ["UntrainedWeightsWarning", "load"]


def _torchvision_builder(name: str) -> Callable[[], nn.Module] | None:
    """torchvision's own builder when torchvision imports (it needs compiled ops that may be missing)."""
    try:
        import torchvision.models as tvm

        return getattr(tvm, name)
    except Exception:
        return None


def load(name: str, weights: str | Path | None = None) -> tuple[nn.Module, str]:
    """Build a registered model in eval mode, taking (B, 3, H, W) RGB images in [0, 1].

    Args:
        name: one of :func:`available` (``"efficientnet_lite0"``, ``"vgg16"``, ``"resnet50"``).
        weights: a checkpoint file. For vgg16/resnet50, a torchvision state_dict; for
            efficientnet_lite0 the bundled ImageNet weights are used when None.

    Returns:
        (model, default_layer_name).

    Warns:
        UntrainedWeightsWarning: vgg16/resnet50 without weights run with random weights.
    """
    from .factory import is_factory, load_factory

    if is_factory(name):
        return load_factory(name, weights)
    s = spec(name)
    if name.startswith("efficientnet_lite"):
        from .efficientnet import efficientnet_lite

        source = str(weights) if weights is not None else bundled_weights_path(name)
        sd = read_state_dict(source)
        return efficientnet_lite(name, sd, source).eval(), s.default_layer

    from .normalize import Normalized

    builder = _torchvision_builder(name)
    if builder is None:
        from .resnet import resnet50
        from .vgg import vgg16

        builder = {"vgg16": lambda weights=None: vgg16(), "resnet50": lambda weights=None: resnet50()}[name]
    # A fixed seed: untrained models are the same on every load, so their exports can be cached.
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        net = builder(weights=None)
    if weights is not None:
        load_strict(net, read_state_dict(weights), str(weights), name)
    else:
        warn_untrained(name, stacklevel=3)
    return Normalized(net, s.mean, s.std).eval(), s.default_layer
