"""SHA-256 of files and bytes, the lowest floor of the house (no unioncam import).

A file is read only if it is a regular file reached without a symlink at its last component: a
FIFO or a device with an output's name would block or never end, and is no file we wrote."""
from __future__ import annotations

import hashlib
import os
import stat
from pathlib import Path

_CHUNK = 1 << 20


def sha256_bytes(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def sha256_file(path: str | Path, chunk: int = _CHUNK) -> str:
    """The SHA-256 of a file's bytes (any file the caller names, symlinks followed)."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while True:
            b = f.read(chunk)
            if not b:
                break
            h.update(b)
    return h.hexdigest()


def sha256_regular(path: str | Path) -> str | None:
    """The SHA-256 of ``path`` if it is a regular file and not a symlink, else None (never blocks)."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | getattr(os, "O_CLOEXEC", 0))
    except OSError:
        return None
    try:
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            return None
        h = hashlib.sha256()
        while True:
            b = os.read(fd, _CHUNK)
            if not b:
                return h.hexdigest()
            h.update(b)
    except OSError:
        return None
    finally:
        os.close(fd)
