"""Hook hygiene around a torch model: target-layer lookup, a one-shot activation tap, eval mode
restored exactly, even on error."""
from __future__ import annotations

import contextlib
from typing import Iterator

import torch
from torch import nn

from ..errors import InvalidTypeError, LayerNotFoundError
from ..reshape import parse_reshape


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
        raise InvalidTypeError(f"target_layer must be a dotted module name or an nn.Module, got {type(layer).__name__}")
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


def check_model(model) -> nn.Module:
    if not isinstance(model, nn.Module):
        raise InvalidTypeError(f"model must be a torch.nn.Module, got {type(model).__name__}")
    return model


class ActivationTap:
    """Forward hook that captures one layer's output as a fresh autograd leaf.

    The leaf is what the gradient is taken against, so ``d logit / dA`` needs no backward pass
    through the layers before it. The network continues on a clone, so an in-place op after the
    layer (``out += identity`` in a ResNet block) cannot overwrite the captured activations.
    """

    def __init__(self, name: str, module: nn.Module, *, requires_grad: bool = True, reshape=None):
        """``reshape``: a :class:`unioncam.reshape.Reshape` (or its string) that lays a
        transformer's tokens out as (B, D, h, w); the leaf is the laid-out map, and the network
        continues on its inverse."""
        self.name = name
        self.module = module
        self.requires_grad = requires_grad
        self.reshape = parse_reshape(reshape)
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
        if self.reshape is not None and isinstance(output, torch.Tensor):
            leaf = self.reshape.to_maps(output).detach().requires_grad_(self.requires_grad)
            self.activations = leaf
            return self.reshape.to_output(leaf.clone() if self.requires_grad else leaf, output.detach())
        if not isinstance(output, torch.Tensor) or output.dim() != 4:
            got = tuple(output.shape) if isinstance(output, torch.Tensor) else type(output).__name__
            hint = (" (transformer tokens: give reshape='tokens', or 'bhwc' for (B, h, w, D))"
                    if isinstance(output, torch.Tensor) and output.dim() == 3 else "")
            raise LayerNotFoundError(
                f"layer {self.name!r} outputs {got}; a CAM target layer must output a (B, K, h, w) tensor{hint}"
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
