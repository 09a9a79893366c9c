"""Any model from the command line: ``--model pkg.module:factory`` (as uvicorn's ``module:app``).

The factory is a callable taking no arguments and returning an ``nn.Module`` (taking RGB images in
[0, 1], normalisation inside, and returning (B, C) logits), or ``(module, target_layer_name)``.
"""
from __future__ import annotations

import importlib
import sys

from torch import nn

from ..errors import InvalidInputError, ModelNotFoundError


def is_factory(name: str) -> bool:
    return ":" in name


def load_factory(name: str) -> tuple[nn.Module, str | None]:
    """(model in eval mode, its declared target layer or None) from ``"pkg.module:callable"``."""
    module_name, _, attr = name.partition(":")
    if not module_name or not attr:
        raise ModelNotFoundError(f"--model {name!r}: give pkg.module:factory, e.g. mymodels:build")
    if "" not in sys.path and "." not in sys.path:
        sys.path.insert(0, "")  # the current folder, as `python -m` and uvicorn do
    try:
        module = importlib.import_module(module_name)
    except ImportError as e:
        raise ModelNotFoundError(f"--model {name!r}: cannot import {module_name!r} ({e}); run from the folder "
                                 "that holds it or add it to PYTHONPATH") from None
    factory = module
    for part in attr.split("."):
        factory = getattr(factory, part, None)
        if factory is None:
            raise ModelNotFoundError(f"--model {name!r}: {module_name} has no attribute {attr!r}")
    if not callable(factory):
        raise ModelNotFoundError(f"--model {name!r}: {attr} is not callable")
    out = factory()
    model, layer = (out if isinstance(out, tuple) and len(out) == 2 else (out, None))
    if not isinstance(model, nn.Module) or (layer is not None and not isinstance(layer, str)):
        raise InvalidInputError(f"--model {name!r}: the factory must return an nn.Module or (nn.Module, layer name), "
                                f"got {type(out).__name__}")
    return model.eval(), layer


def state_key(model: nn.Module) -> str:
    """SHA-256 of every parameter and buffer: the export cache's key for a factory model, whose weights
    come from wherever the factory reads them."""
    import hashlib

    h = hashlib.sha256()
    for k, v in model.state_dict().items():
        h.update(k.encode())
        h.update(str(tuple(v.shape)).encode() + str(v.dtype).encode())
        h.update(v.detach().cpu().contiguous().numpy().tobytes())
    return h.hexdigest()
