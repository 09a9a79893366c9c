"""Checkpoints in and out of networks: reading a state_dict file, and loading it strictly with an
error that names the mismatched keys. Shared by the registry's models and the factory's."""
from __future__ import annotations

from pathlib import Path

import torch
from torch import nn

from ..errors import WeightsError


def read_state_dict(path: str | Path) -> dict:
    """Load a checkpoint file as a state_dict (plain, or under 'state_dict'/'model'; 'module.' stripped)."""
    from ..validation import check_weights_file

    path = Path(path)
    check_weights_file(path)
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # torch raises several types for corrupt/foreign files
        if "weights_only" in str(e):
            # torch's advice (weights_only=False) would run the file's code: never passed on.
            raise WeightsError(f"{path} is not a plain checkpoint of tensors: it holds pickled objects, which unioncam "
                               "does not unpickle; save it with torch.save(model.state_dict(), PATH)") from None
        first = str(e).strip().splitlines()[0] if str(e).strip() else ""
        raise WeightsError(f"cannot read weights from {path}: not a PyTorch checkpoint ({type(e).__name__}: "
                           f"{first[:200]})") from None
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
