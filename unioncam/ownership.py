"""Which files in an output folder unioncam wrote, so that a run replaces only those. Torch-free.

Every output file (overlays, maps, reports, indexes, metrics, the one graph, bench reports) is
recorded in a ledger in its folder, ``.unioncam-written``: one JSON line per write, the file's name,
the SHA-256 of the bytes written and the command that wrote them, and one line per temporary file
before it is created. The rules (docs/guarantees.md, tested by tests/test_generated_writers.py):

- A file is ours while it is a regular file (not a symlink) whose bytes hash to a digest the ledger
  records under its name, written by the same command (``explain`` never replaces ``eval``'s
  ``grid.png``). Library calls outside a command may replace any command's files.
- The check holds at every write, not once per run: a file, symlink or folder that appears with one
  of our names while a run works is never replaced (:func:`check_replaceable`, just before the
  rename; an absent name is filled by a link that fails if anything took it meanwhile).
- ``--replace-user-files`` is consent for the regular files the run saw at its start, as they were
  then; never for a symlink, folder, FIFO or device, nor for a file that appears later.
- The ledger itself is a regular file of this user's, opened without following a symlink and
  without blocking on a FIFO; anything else under its name stops the run with its path.
- Only temporaries the ledger lists are removed as stale; a user's file that looks like one stays.
- The ledger is read once per process and then only its new lines; :func:`compact` rewrites it
  with the entries that still describe a file, at the start of a run.

The line is appended *before* the temporary file is renamed into place: a run killed between the
two leaves a ledger line whose digest matches no file under that name, which claims nothing. A torn
last line is skipped when read. Appends are single ``write`` calls on an ``O_APPEND`` descriptor
under a shared lock (compaction takes it exclusively), so Ray workers writing one folder do not
interleave or lose lines.
"""
from __future__ import annotations

import contextlib
import contextvars
import errno
import fcntl
import json
import os
import stat
from pathlib import Path

from .digests import sha256_regular
from .errors import OutputPathError

LEDGER = ".unioncam-written"
#: The flag that lets a run replace files with our names that unioncam did not write.
REPLACE_FLAG = "--replace-user-files"
#: A ledger is compacted at a run's start when it has this many lines more than live entries.
COMPACT_SLACK = 4096

_COMMAND: contextvars.ContextVar[str | None] = contextvars.ContextVar("unioncam_command", default=None)
#: realpath -> (dev, inode, size, mtime) of the user's files a run was allowed to replace.
_CONSENT: dict[str, tuple] = {}
_LEDGERS: dict[str, "Ledger"] = {}


@contextlib.contextmanager
def writing_as(command: str):
    """The command whose outputs the writes inside are (``explain``, ``eval``, ``bench``, ``export``)."""
    token = _COMMAND.set(command)
    try:
        yield
    finally:
        _COMMAND.reset(token)


def _kind(mode: int) -> str:
    for test, name in ((stat.S_ISLNK, "a symlink"), (stat.S_ISDIR, "a folder"), (stat.S_ISFIFO, "a FIFO"),
                       (stat.S_ISCHR, "a device"), (stat.S_ISBLK, "a device"), (stat.S_ISSOCK, "a socket")):
        if test(mode):
            return name
    return "a file"


def ledger_path(folder: str | Path) -> Path:
    return Path(os.path.realpath(folder)) / LEDGER


def _open_ledger(path: Path, write: bool) -> int | None:
    """A descriptor of the ledger at ``path``, checked to be a regular file of this user's (None:
    reading an absent ledger). Never follows a symlink, never blocks on a FIFO.

    Raises:
        OutputPathError: the ledger's name holds something else, or it cannot be opened.
    """
    flags = os.O_NOFOLLOW | os.O_NONBLOCK | getattr(os, "O_CLOEXEC", 0)
    flags |= (os.O_WRONLY | os.O_APPEND | os.O_CREAT) if write else os.O_RDONLY
    try:
        fd = os.open(path, flags, 0o666)
    except FileNotFoundError:
        if write:
            raise OutputPathError(f"cannot write {path}: its folder is gone; choose another --out") from None
        return None
    except OSError as e:
        try:
            kind = _kind(os.lstat(path).st_mode)
        except OSError:
            kind = None
        if e.errno in (errno.ELOOP, errno.EISDIR, errno.ENXIO) and kind not in (None, "a file"):
            raise _not_a_ledger(path, kind) from None
        doing = "write" if write else "read"
        raise OutputPathError(f"cannot {doing} {path}, where unioncam records the files it wrote "
                              f"({e.strerror or e}); choose a folder you can write with --out") from None
    st = os.fstat(fd)
    if not stat.S_ISREG(st.st_mode) or st.st_uid != os.geteuid():
        os.close(fd)
        if not stat.S_ISREG(st.st_mode):
            raise _not_a_ledger(path, _kind(st.st_mode))
        raise OutputPathError(f"{path}, where unioncam records the files it wrote, belongs to another user "
                              f"(uid {st.st_uid}); their outputs are theirs: choose a folder of your own with --out")
    return fd


def _not_a_ledger(path: Path, kind: str) -> OutputPathError:
    return OutputPathError(f"{path} is {kind}, where unioncam keeps its record of the files it wrote; it is never "
                           "followed or replaced: move it away, or choose another --out")


class Ledger:
    """The written-files record of one folder: read once, then only the lines appended since."""

    def __init__(self, folder: str | Path):
        self.folder = Path(folder)
        self.path = ledger_path(folder)
        self.digests: dict[str, dict[str, str | None]] = {}  # name -> {sha256: command}
        self.temporaries: set[str] = set()
        self.lines = 0
        self._offset, self._inode = 0, None
        self.refresh()

    def refresh(self) -> "Ledger":
        fd = _open_ledger(self.path, write=False)
        if fd is None:
            self.digests, self.temporaries, self.lines, self._offset, self._inode = {}, set(), 0, 0, None
            return self
        try:
            st = os.fstat(fd)
            if st.st_ino != self._inode or st.st_size < self._offset:  # a new (compacted) ledger
                self.digests, self.temporaries, self.lines, self._offset = {}, set(), 0, 0
                self._inode = st.st_ino
            if st.st_size > self._offset:
                os.lseek(fd, self._offset, os.SEEK_SET)
                data = b"".join(iter(lambda: os.read(fd, 1 << 20), b""))
                whole = data[: data.rfind(b"\n") + 1]  # a torn last line waits for its end
                self._offset += len(whole)
                self._parse(whole.decode(errors="replace"))
        finally:
            os.close(fd)
        return self

    def _parse(self, text: str) -> None:
        for line in text.splitlines():
            if not line.strip():
                continue
            self.lines += 1
            try:
                entry = json.loads(line)
            except ValueError:
                continue  # a torn line from a killed run, or noise: it claims nothing
            if not isinstance(entry, dict):
                continue
            name, digest, tmp = entry.get("name"), entry.get("sha256"), entry.get("tmp")
            if isinstance(name, str) and isinstance(digest, str):
                by = entry.get("by")
                self.digests.setdefault(name, {})[digest] = by if isinstance(by, str) else None
            elif isinstance(tmp, str):
                self.temporaries.add(tmp)

    def writer(self, path: str | Path) -> tuple[bool, str | None]:
        """(ours, the command that wrote it) for the file at ``path`` as it is now; absent is ours."""
        path = Path(path)
        try:
            st = os.lstat(path)
        except FileNotFoundError:
            return True, None
        except OSError:
            return False, None
        if not stat.S_ISREG(st.st_mode):
            return False, None
        known = self.digests.get(path.name)
        if not known:
            return False, None
        digest = sha256_regular(path)
        if digest not in known:
            return False, None
        by = known[digest]
        mine = _COMMAND.get()
        return (mine is None or by is None or by == mine), by

    def recorded(self, path: str | Path) -> bool:
        """A regular file whose bytes some command of ours wrote under this name."""
        known = self.digests.get(Path(path).name)
        return bool(known) and sha256_regular(path) in known

    def owns(self, path: str | Path) -> bool:
        """True if ``path`` is absent (nothing to lose) or a regular file whose bytes this command wrote."""
        return self.writer(path)[0]


def ledger(folder: str | Path) -> Ledger:
    """The folder's ledger, read once per process and brought up to date on each call."""
    key = str(ledger_path(folder))
    cached = _LEDGERS.get(key)
    if cached is None:
        cached = _LEDGERS[key] = Ledger(folder)
        return cached
    return cached.refresh()


def owns(path: str | Path) -> bool:
    """Whether unioncam wrote the file at ``path`` as it is now (absent counts as ours)."""
    return ledger(Path(path).parent).owns(path)


def _append(folder: Path, entry: dict) -> None:
    # A newline first as well: a line torn by a killed writer ends there, and this one stays whole.
    line = ("\n" + json.dumps(entry, ensure_ascii=True) + "\n").encode()
    path = ledger_path(folder)
    for _ in range(5):
        fd = _open_ledger(path, write=True)
        try:
            fcntl.flock(fd, fcntl.LOCK_SH)
            try:
                current = os.stat(path, follow_symlinks=False).st_ino
            except OSError:
                current = None
            if current != os.fstat(fd).st_ino:
                continue  # compacted under us: append to the new ledger
            os.write(fd, line)
            return
        finally:
            os.close(fd)
    raise OutputPathError(f"cannot append to {path}: it is replaced as fast as it is opened; stop the other "
                          "process that writes this folder")


def record(path: str | Path, digest: str) -> None:
    """Record that ``path`` is about to hold bytes with SHA-256 ``digest`` (call before the rename)."""
    path = Path(path)
    _append(path.parent, {"name": path.name, "sha256": digest, "by": _COMMAND.get()})
    cached = _LEDGERS.get(str(ledger_path(path.parent)))
    if cached is not None:
        cached.refresh()


def record_temporary(path: str | Path) -> None:
    """Record that a temporary file of this name is about to be created (only those are ever removed)."""
    path = Path(path)
    _append(path.parent, {"tmp": path.name})


def is_recorded_temporary(path: str | Path) -> bool:
    path = Path(path)
    try:
        return path.name in ledger(path.parent).temporaries
    except OutputPathError:
        return False


def check_replaceable(path: str | Path) -> bool:
    """At write time: whether ``path`` may be replaced (True), is absent (False), or else refuse.

    Raises:
        OutputPathError: a symlink, folder, FIFO, device, or a file this command did not write and
            the user did not let the run replace, at ``path`` now.
    """
    path = Path(path)
    try:
        st = os.lstat(path)
    except FileNotFoundError:
        return False
    ours, by = ledger(path.parent).writer(path)
    if ours:
        return True
    if stat.S_ISREG(st.st_mode) and _CONSENT.get(os.path.realpath(path)) == _identity(st):
        return True
    raise _refusal(path, st, by, during=True)


def _identity(st: os.stat_result) -> tuple:
    return st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns


def _refusal(path: Path, st: os.stat_result, by: str | None, *, during: bool = False, flag: str = REPLACE_FLAG,
             elsewhere: str = "choose another --out") -> OutputPathError:
    when = " appeared while this run worked and" if during else ""
    kind = _kind(st.st_mode)
    if kind != "a file":
        return OutputPathError(f"{path}{when} is {kind}, where unioncam would write a file of that name; it is never "
                               f"replaced: move it, or {elsewhere}")
    if by is not None:
        return OutputPathError(f"{path}{when} was written by `unioncam {by}`, whose outputs this command never "
                               f"replaces: {elsewhere}")
    consent = "" if during else f", or pass {flag} to replace it"
    return OutputPathError(f"{path}{when} exists and unioncam did not write it; it is never replaced: move it, "
                           f"{elsewhere}{consent}")


def claim(paths, *, replace_user_files: bool = False, flag: str = REPLACE_FLAG,
          elsewhere: str = "choose another --out") -> None:
    """Refuse, before any work, to write over anything unioncam did not write.

    Args:
        paths: every output path the run may write.
        replace_user_files: the user's explicit consent (``--replace-user-files``): the regular files
            with our names that are there now, as they are now, may be replaced. Never a symlink,
            folder, FIFO or device, nor another command's outputs.
        flag: the option named in the message; elsewhere: the other way out it names.

    Raises:
        OutputPathError (the CLI exits 2): naming the first file it will not replace and what to do.
    """
    for p in paths:
        p = Path(p)
        folder = p.parent
        while not os.path.lexists(folder) and folder != folder.parent:
            folder = folder.parent
        if not folder.is_dir():
            raise OutputPathError(f"{folder} is {_kind(os.lstat(folder).st_mode)}, where unioncam would make a folder "
                                  f"for {p}; it is never replaced: move it, or {elsewhere}")
        if not p.parent.exists():
            continue  # made by this run: nothing there to lose
        ours, by = ledger(p.parent).writer(p)
        if ours:
            continue
        st = os.lstat(p)
        if replace_user_files and stat.S_ISREG(st.st_mode) and by is None:
            _CONSENT[os.path.realpath(p)] = _identity(st)
            continue
        raise _refusal(p, st, by, flag=flag, elsewhere=elsewhere)


def check_locations(outputs: dict) -> None:
    """Before any work: every output (``{option: path}``) has a place of its own, and its folder
    exists, or can be made, and can be written.

    Raises:
        UsageError: two options name one file; OutputPathError: a folder on the way is a file;
            UnwritableError: the folder cannot be written.
    """
    from .errors import UnwritableError, UsageError

    seen: dict[str, str] = {}
    for option, path in outputs.items():
        if path is None:
            continue
        real = os.path.realpath(path)
        if real in seen:
            raise UsageError(f"{seen[real]} and {option} both name {path}; give each its own file")
        seen[real] = option
        folder = Path(real).parent
        while not folder.exists() and folder != folder.parent:
            folder = folder.parent
        if not folder.is_dir():
            raise OutputPathError(f"{option} {path}: {folder} is not a folder; choose another path")
        if not os.access(folder, os.W_OK | os.X_OK):
            raise UnwritableError(f"{option} {path}: the folder {folder} is not writable; choose another path")


def consents() -> dict:
    """The user's files this process may replace (``--replace-user-files``), for the Ray workers."""
    return dict(_CONSENT)


def grant(given: dict) -> None:
    """Take the driver's :func:`consents` in a worker process."""
    _CONSENT.update({k: tuple(v) for k, v in (given or {}).items()})


def compact(folder: str | Path) -> int:
    """Rewrite the folder's ledger with only the entries that describe a file there now, where it
    has :data:`COMPACT_SLACK` lines more than those; returns the lines dropped. Taken under the
    exclusive lock, so no append is lost."""
    path = ledger_path(folder)
    led = ledger(folder)
    if led.lines - len(led.digests) < COMPACT_SLACK:  # live entries are at most one a name
        return 0
    fd = _open_ledger(path, write=True)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        led.refresh()  # lines appended before the lock are kept if they describe a file
        live = {}
        for name, digests in led.digests.items():
            digest = sha256_regular(led.path.parent / name)
            if digest in digests:
                live[name] = (digest, digests[digest])
        text = "".join(json.dumps({"name": n, "sha256": d, "by": b}, ensure_ascii=True) + "\n"
                       for n, (d, b) in sorted(live.items()))
        tmp = path.with_name(f"{LEDGER}.compact-{os.getpid()}")
        tfd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o666)
        try:
            with os.fdopen(os.dup(tfd), "wb") as f:
                f.write(text.encode())
            os.fsync(tfd)
        finally:
            os.close(tfd)
        dropped = led.lines - len(live)
        os.replace(tmp, path)
    finally:
        os.close(fd)
    led.refresh()
    return dropped
