"""Which files in an output folder unioncam wrote, so that a run replaces only those. Torch-free.

Every output file (overlays, maps, reports, indexes, metrics, the one graph, bench reports) is
recorded in a ledger in its folder, ``.unioncam-written``: one JSON line per write, the file's name
and the SHA-256 of the bytes written. A file is ours while its bytes still hash to a digest the
ledger records under its name; a file the user wrote, or edited after we wrote it, is not.

The line is appended *before* the temporary file is renamed into place: a run killed between the
two leaves a ledger line whose digest matches no file under that name, which claims nothing. A torn
last line (a kill mid-append) is skipped when read. Appends are single ``write`` calls on an
``O_APPEND`` descriptor, so the Ray workers writing one folder do not interleave lines.

Symlinks are never ours (we write regular files only): a symlink with one of our names is the
user's, whatever it points to. The ledger lives in the folder's real path, so a symlinked output
folder follows the same rule as the folder itself.
"""
from __future__ import annotations

import json
import os
from pathlib import Path

from .errors import OutputPathError

LEDGER = ".unioncam-written"
#: The flag that lets a run replace files with our names that unioncam did not write.
REPLACE_FLAG = "--replace-user-files"


def _ledger(folder: Path) -> Path:
    return Path(os.path.realpath(folder)) / LEDGER


def _digest_file(path: Path) -> str | None:
    from .artifacts import sha256_file

    try:
        return sha256_file(path)
    except OSError:
        return None


class Ledger:
    """The written-files record of one folder, read once (a run checks many names against it)."""

    def __init__(self, folder: str | Path):
        self.folder = Path(folder)
        self.digests: dict[str, set[str]] = {}
        try:
            text = _ledger(self.folder).read_text(errors="replace")
        except OSError:
            return
        for line in text.splitlines():
            if not line.strip():
                continue
            try:
                entry = json.loads(line)
                name, digest = entry["name"], entry["sha256"]
            except (ValueError, KeyError, TypeError):
                continue  # a torn line from a killed run, or noise: it claims nothing
            if isinstance(name, str) and isinstance(digest, str):
                self.digests.setdefault(name, set()).add(digest)

    def owns(self, path: str | Path) -> bool:
        """True if ``path`` is absent (nothing to lose) or is a regular file whose bytes we wrote."""
        path = Path(path)
        if path.is_symlink():
            return False
        if not path.exists():
            return True
        if not path.is_file():
            return False
        known = self.digests.get(path.name)
        return bool(known) and _digest_file(path) in known


def owns(path: str | Path) -> bool:
    """Whether unioncam wrote the file at ``path`` as it is now (absent counts as ours)."""
    return Ledger(Path(path).parent).owns(path)


def record(path: str | Path, digest: str) -> None:
    """Record that ``path`` is about to hold bytes with SHA-256 ``digest`` (call before the rename)."""
    path = Path(path)
    # A newline first as well: a line torn by a killed writer ends there, and this one stays whole.
    line = ("\n" + json.dumps({"name": path.name, "sha256": digest}, ensure_ascii=True) + "\n").encode()
    fd = os.open(_ledger(path.parent), os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o666)
    try:
        os.write(fd, line)
    finally:
        os.close(fd)


def claim(paths, *, replace_user_files: bool = False, flag: str = REPLACE_FLAG, elsewhere: str = "choose another --out") -> None:
    """Refuse, before any work, to write over a file unioncam did not write.

    Args:
        paths: every output path the run may write.
        replace_user_files: the user's explicit consent (``--replace-user-files``): foreign files
            with our names are replaced. Folders and symlinks are never replaced even then.
        flag: the option named in the message; elsewhere: the other way out it names.

    Raises:
        OutputPathError (the CLI exits 2): naming the first foreign file and what to do.
    """
    ledgers: dict[Path, Ledger] = {}
    for p in paths:
        p = Path(p)
        ledger = ledgers.setdefault(p.parent, Ledger(p.parent))
        if ledger.owns(p):
            continue
        if p.is_dir() and not p.is_symlink():
            raise OutputPathError(f"{p} is a folder, where unioncam would write a file of that name; "
                                  f"{elsewhere}")
        if replace_user_files and not p.is_symlink():
            continue
        what = "is a symlink" if p.is_symlink() else "exists and unioncam did not write it"
        hint = f"move it or {elsewhere}" if p.is_symlink() else f"move it, {elsewhere}, or pass {flag} to replace it"
        raise OutputPathError(f"{p} {what}; it is never replaced: {hint}")
