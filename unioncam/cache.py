"""Where the CLI keeps exported models: ``$UNIONCAM_CACHE`` or ``~/.cache/unioncam``. Torch-free."""
from __future__ import annotations

import hashlib
import json
import os
from importlib import metadata
from pathlib import Path

from . import __version__
from .artifacts import sha256_file


def cache_root() -> Path:
    return Path(os.environ.get("UNIONCAM_CACHE") or Path.home() / ".cache" / "unioncam")


def artifact_dir(model: str, layer: str, input_size, weights: str | Path | None, bundled_weights: str | None) -> Path:
    """``<root>/<model>-<layer>-<hash>``: the hash covers everything the exported graphs depend on
    (weights file content, input size, unioncam and torch versions)."""
    if weights is not None:
        wkey = sha256_file(weights)
    elif bundled_weights is not None:
        wkey = "bundled:" + Path(bundled_weights).name
    else:
        wkey = "random-seed-0"
    try:
        torch_version = metadata.version("torch")
    except metadata.PackageNotFoundError:
        torch_version = "none"
    key = json.dumps([model, layer, list(input_size), wkey, __version__, torch_version])
    digest = hashlib.sha256(key.encode()).hexdigest()[:12]
    safe_layer = "".join(ch if ch.isalnum() or ch in "._-" else "_" for ch in layer)
    return cache_root() / f"{model}-{safe_layer}-{digest}"
