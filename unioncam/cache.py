"""Where the CLI keeps exported models: ``$UNIONCAM_CACHE`` or ``~/.cache/unioncam``. Torch-free."""
from __future__ import annotations

import contextlib
import hashlib
import shutil
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


@contextlib.contextmanager
def cache_lock(directory: Path):
    """Hold an exclusive lock on one cache entry: concurrent runs export it once, the others wait.

    Under the lock, temporary folders a killed export left beside the entry are removed: no live
    export can own them, since exports of this entry run only under this lock.
    """
    from .errors import ArtifactError

    try:
        directory.parent.mkdir(parents=True, exist_ok=True)
        handle = open(directory.parent / f".{directory.name}.lock", "a+")
    except OSError as e:
        raise ArtifactError(f"the export cache {directory.parent} is not writable ({e.strerror}); set "
                            "UNIONCAM_CACHE to a writable folder") from None
    try:
        try:
            import fcntl

            fcntl.flock(handle.fileno(), fcntl.LOCK_EX)
        except ImportError:  # no fcntl (Windows): no lock, exports stay atomic
            pass
        for stale in list(directory.parent.glob(f".{directory.name}.tmp-*")) + \
                list(directory.parent.glob(f".{directory.name}.old-*")):
            shutil.rmtree(stale, ignore_errors=True)
        yield
    finally:
        handle.close()  # closing releases the lock
