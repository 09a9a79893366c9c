"""Any model from the command line: ``--model pkg.module:factory`` (as uvicorn's ``module:app``).

The factory is a callable taking no arguments and returning an ``nn.Module`` (taking RGB images in
[0, 1], normalisation inside, and returning (B, C) logits), or ``(module, target_layer_name)``.

Shorthands for the two model libraries users have: ``timm:NAME`` (``timm.create_model(NAME,
pretrained=True)``, normalised with the model's own ``pretrained_cfg`` mean and std) and
``torchvision:NAME`` (``torchvision.models.get_model(NAME, weights="DEFAULT")``, ImageNet mean and
std). With ``--weights FILE`` the library builds the architecture only and the file's state_dict is
loaded into it. Neither library is a dependency: a machine without it gets a clear error.
"""
from __future__ import annotations

import importlib
import sys

from torch import nn

from ..errors import InvalidInputError, ModelLoadError, ModelNotFoundError
from .state_dicts import load_strict, read_state_dict


def is_factory(name: str) -> bool:
    return ":" in name


LIBRARIES = ("timm", "torchvision")
IMAGENET_MEAN, IMAGENET_STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)


def load_library_model(library: str, arch: str, weights=None) -> nn.Module:
    """``timm:NAME`` / ``torchvision:NAME`` as a model taking RGB in [0, 1] (normalisation inside)."""
    from ..errors import WeightsError
    from .normalize import Normalized

    try:
        lib = importlib.import_module(library if library == "timm" else "torchvision.models")
    except Exception as e:  # torchvision/timm raise more than ImportError when their compiled ops are missing
        raise ModelNotFoundError(f"--model {library}:{arch}: {library} does not import here ({type(e).__name__}: "
                                 f"{str(e).splitlines()[0][:200] if str(e) else ''}); pip install {library} with a "
                                 "torch it was built for, or use a registered model / pkg.module:factory") from None
    try:
        if library == "timm":
            net = lib.create_model(arch, pretrained=weights is None)
            cfg = getattr(net, "pretrained_cfg", None) or {}
            mean, std = tuple(cfg.get("mean", IMAGENET_MEAN)), tuple(cfg.get("std", IMAGENET_STD))
        else:
            net = lib.get_model(arch, weights=None if weights is not None else "DEFAULT")
            mean, std = IMAGENET_MEAN, IMAGENET_STD
    except (RuntimeError, ValueError, KeyError, OSError) as e:
        raise WeightsError(f"--model {library}:{arch}: {library} could not build it with pretrained weights "
                           f"({type(e).__name__}: {str(e).splitlines()[0][:200] if str(e) else ''}); with no "
                           "internet, give --weights FILE (a state_dict of this architecture)") from None
    if weights is not None:

        load_strict(net, read_state_dict(weights), str(weights), f"{library}:{arch}")
    return Normalized(net, mean, std).eval()


def _call_factory(factory, name: str):
    """``factory()``, its failures as :class:`ModelLoadError` naming the factory and the cause."""
    import inspect

    try:
        required = [p.name for p in inspect.signature(factory).parameters.values()
                    if p.default is p.empty and p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY)]
    except (TypeError, ValueError):  # a builtin without a signature: call it and see
        required = []
    if required:
        raise ModelLoadError(f"--model {name!r}: the factory needs the argument(s) {', '.join(required)}; give a "
                             "factory that takes none (e.g. def build(): return make_model(...))")
    try:
        return factory()
    except Exception as e:
        first = (str(e).strip().splitlines() or [""])[0][:300]
        raise ModelLoadError(f"--model {name!r}: the factory raised {type(e).__name__}: {first} "
                             "(rerun with --debug for its traceback)") from e


def load_factory(name: str, weights=None) -> tuple[nn.Module, str | None]:
    """(model in eval mode, its declared target layer or None) from ``"pkg.module:callable"`` (the
    state_dict in ``weights`` loaded into it), or from a ``timm:`` / ``torchvision:`` shorthand."""
    module_name, _, attr = name.partition(":")
    if module_name in LIBRARIES and attr:
        return load_library_model(module_name, attr, weights), None
    if not module_name or not attr:
        raise ModelNotFoundError(f"--model {name!r}: give pkg.module:factory, e.g. mymodels:build")
    if "" not in sys.path and "." not in sys.path:
        sys.path.insert(0, "")  # the current folder, as `python -m` and uvicorn do
    if not all(part.isidentifier() for part in module_name.split(".")):
        raise ModelNotFoundError(f"--model {name!r}: {module_name!r} is not a module name (a path?); give the module "
                                 "as Python imports it, pkg.module:factory, run from the folder that holds it or "
                                 "add that folder to PYTHONPATH")
    try:
        module = importlib.import_module(module_name)
    except ImportError as e:
        raise ModelNotFoundError(f"--model {name!r}: cannot import {module_name!r} ({e}); run from the folder "
                                 "that holds it or add it to PYTHONPATH") from None
    except Exception as e:  # the module's own code failed while importing
        first = (str(e).strip().splitlines() or [""])[0][:300]
        raise ModelLoadError(f"--model {name!r}: importing {module_name} raised {type(e).__name__}: {first} "
                             "(rerun with --debug for its traceback)") from e
    factory = module
    for part in attr.split("."):
        factory = getattr(factory, part, None)
        if factory is None:
            raise ModelNotFoundError(f"--model {name!r}: {module_name} has no attribute {attr!r}")
    if not callable(factory):
        raise ModelNotFoundError(f"--model {name!r}: {attr} is not callable")
    out = _call_factory(factory, name)
    model, layer = (out if isinstance(out, tuple) and len(out) == 2 else (out, None))
    if not isinstance(model, nn.Module) or (layer is not None and not isinstance(layer, str)):
        raise InvalidInputError(f"--model {name!r}: the factory must return an nn.Module or (nn.Module, layer name), "
                                f"got {type(out).__name__}")
    if weights is not None:

        load_strict(model, read_state_dict(weights), str(weights), name)
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
