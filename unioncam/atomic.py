"""Files and folders that appear whole or not at all, with the permissions the umask gives.

A temporary name in the same folder, then ``os.replace``: a killed run leaves either the previous
file or the new one, never a half-written file under the final name. ``mkstemp``/``mkdtemp`` create
0600/0700 entries; they are widened to what a plain ``open``/``mkdir`` would give under the
process's umask, so a shared export stays readable by the service that loads it.
"""
from __future__ import annotations

import contextlib
import errno
import os
import re
import secrets
import socket
from pathlib import Path
from typing import IO, Iterator

from . import ownership

#: Every temporary file unioncam writes starts so, with the writer's host and process id: the next
#: run over the folder removes those whose writer is gone (:func:`remove_stale_temporaries`).
TMP_PREFIX = ".unioncam-tmp"
_TMP = re.compile(r"^\.unioncam-tmp-(?P<host>[^-]+)-(?P<pid>\d+)-")


def _host() -> str:
    return re.sub(r"[^A-Za-z0-9_.]", "_", socket.gethostname())[:40] or "host"


def temporary_prefix(name: str) -> str:
    return f"{TMP_PREFIX}-{_host()}-{os.getpid()}-{name[:60]}."


def remove_stale_temporaries(folder: str | Path) -> int:
    """Remove the temporary files a killed run of this host left in ``folder``: only names the
    folder's ledger lists as our temporaries (a user's file that looks like one stays), whose writer
    is gone; another host's, or a live run's, are kept. Returns how many were removed."""
    removed = 0
    try:
        entries = list(Path(folder).iterdir())
    except OSError:
        return 0
    for entry in entries:
        m = _TMP.match(entry.name)
        if not m or m["host"] != _host() or not entry.is_file() or entry.is_symlink():
            continue
        if not ownership.is_recorded_temporary(entry):
            continue
        pid = int(m["pid"])
        try:
            os.kill(pid, 0)
            continue  # alive: its writer may still rename it into place
        except ProcessLookupError:
            pass
        except PermissionError:
            continue  # alive, another user's
        entry.unlink(missing_ok=True)
        removed += 1
    return removed


def umask() -> int:
    """The process's umask (read without changing it where /proc allows)."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("Umask:"):
                return int(line.split()[1], 8)
    except OSError:
        pass
    old = os.umask(0o022)
    os.umask(old)
    return old


def default_mode(directory: bool = False) -> int:
    return (0o777 if directory else 0o666) & ~umask()


@contextlib.contextmanager
def atomic_file(path: str | Path, mode: str = "wb", *, own: bool = False, digest: str | None = None) -> Iterator[IO]:
    """Open a temporary sibling of ``path`` for writing; on success it takes ``path``'s place.

    ``own``: an output of a command (:mod:`unioncam.ownership`): the temporary's name is recorded
    before it is created, the bytes' digest before the rename, and ``path`` is taken only if it is
    absent (a link that fails if anything took the name meanwhile) or still replaceable by the rules
    of :func:`unioncam.ownership.check_replaceable`, checked now, not at the run's start.
    ``digest``: the SHA-256 of what is written, where the caller has it (else the file is hashed)."""
    path = Path(path)
    tmp = path.parent / f"{temporary_prefix(path.name)}{secrets.token_hex(6)}.tmp"
    try:
        if own:
            ownership.record_temporary(tmp)
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | getattr(os, "O_CLOEXEC", 0), 0o600)
    except OSError as e:
        raise write_error(e, path) from None
    try:
        with os.fdopen(fd, mode) as f:
            yield f
        os.chmod(tmp, default_mode())
        if not own:
            os.replace(tmp, path)
            return
        replace = ownership.check_replaceable(path)
        ownership.record(path, digest or _sha256(tmp))
        _place(tmp, path, replace)
    except OSError as e:
        Path(tmp).unlink(missing_ok=True)
        raise write_error(e, path) from None
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def _place(tmp: Path, path: Path, replace: bool) -> None:
    """``tmp`` renamed to ``path``: over it where it may be replaced, else only if still absent."""
    if replace:
        ownership.check_replaceable(path)  # the last look before the rename
        os.replace(tmp, path)
        return
    try:
        os.link(tmp, path)  # fails if anything took the name since it was checked
    except FileExistsError:
        if not ownership.check_replaceable(path):
            raise
        os.replace(tmp, path)
        return
    except OSError as e:
        if e.errno not in (errno.EPERM, errno.ENOTSUP, errno.EOPNOTSUPP, errno.EXDEV, errno.EMLINK):
            raise
        ownership.check_replaceable(path)  # a file system without hard links: look, then rename
        os.replace(tmp, path)
        return
    os.unlink(tmp)


#: Errors that say the destination cannot take the bytes, not that the data is wrong.
_FULL = {errno.ENOSPC, errno.EDQUOT, errno.EFBIG}


def write_error(error: OSError, path: str | Path):
    """The typed error for an OSError while writing ``path``: its path, its cause, what to do."""
    from .errors import UnwritableError

    cause = error.strerror or str(error)
    if error.errno in _FULL:
        hint = "the disk (or a quota, or a file-size limit) is full: free space, or write elsewhere"
    else:
        hint = "choose a folder you can write"
    return UnwritableError(f"cannot write {path}: {cause}; {hint}")


def _sha256(path: str | Path) -> str:
    from .digests import sha256_file

    return sha256_file(path)


def write_bytes(path: str | Path, data: bytes, *, own: bool = False) -> None:
    """``data`` at ``path``, whole or not at all; ``own``: recorded as unioncam's output."""
    from .digests import sha256_bytes

    # The bytes are in memory: hashed here rather than read back from disk.
    with atomic_file(path, "wb", own=own, digest=sha256_bytes(data) if own else None) as f:
        f.write(data)


def write_text(path: str | Path, text: str, *, own: bool = False) -> None:
    write_bytes(path, text.encode(), own=own)
