"""The model registry: name -> builder, default target layer, input size, normalisation."""
from __future__ import annotations

import warnings
from pathlib import Path
from typing import Callable

import torch
from torch import nn

from ..errors import WeightsError
from ..model_specs import bundled_weights_path, spec

class UntrainedWeightsWarning(UserWarning):
    """A model runs with random weights: its explanations mean nothing about a trained network."""


def read_state_dict(path: str | Path) -> dict:
    """Load a checkpoint file as a state_dict (plain, or under 'state_dict'/'model'; 'module.' stripped)."""
    path = Path(path)
    if not path.is_file():
        raise WeightsError(f"weights file not found: {path}")
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # torch raises several types for corrupt/foreign files
        raise WeightsError(f"cannot read weights from {path}: {type(e).__name__}: {e}".split("\n")[0]) from None
    for key in ("state_dict", "model"):
        if isinstance(obj, dict) and isinstance(obj.get(key), dict):
            obj = obj[key]
    if not isinstance(obj, dict) or not all(isinstance(v, torch.Tensor) for v in obj.values()):
        raise WeightsError(f"{path} does not hold a state_dict of tensors")
    return {k[7:] if k.startswith("module.") else k: v for k, v in obj.items()}


def state_dict_mismatch(net: nn.Module, state_dict: dict) -> str | None:
    """What keeps ``state_dict`` from loading into ``net`` strictly, naming the first keys, or None."""
    own = net.state_dict()
    missing = [k for k in own if k not in state_dict]
    unexpected = [k for k in state_dict if k not in own]
    shapes = [f"{k} {tuple(state_dict[k].shape)} vs {tuple(own[k].shape)}" for k in own
              if k in state_dict and tuple(state_dict[k].shape) != tuple(own[k].shape)]
    parts = []
    for label, keys in (("missing keys", missing), ("unexpected keys", unexpected), ("wrong shapes", shapes)):
        if keys:
            more = f" (+{len(keys) - 3} more)" if len(keys) > 3 else ""
            parts.append(f"{len(keys)} {label}: {', '.join(keys[:3])}{more}")
    return "; ".join(parts) or None


def load_strict(net: nn.Module, state_dict: dict, source: str, model: str) -> None:
    """``load_state_dict(strict=True)``, with a WeightsError naming the first mismatched keys."""
    problem = state_dict_mismatch(net, state_dict)
    if problem:
        raise WeightsError(f"weights in {source} do not fit {model}: {problem}; give a checkpoint of this architecture")
    try:
        net.load_state_dict(state_dict, strict=True)
    except RuntimeError as e:
        raise WeightsError(f"weights in {source} do not fit {model}: {str(e).splitlines()[0][:300]}") from None


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
        warnings.warn(
            f"{name} has RANDOM weights (no pretrained weights can be downloaded here): its explanations "
            f"say nothing about a trained network. Pass weights=... / --weights FILE.pth with a torchvision checkpoint.",
            UntrainedWeightsWarning,
            stacklevel=2,
        )
    return Normalized(net, s.mean, s.std).eval(), s.default_layer
