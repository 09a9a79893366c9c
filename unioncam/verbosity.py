"""``unioncam --verbose``: whether third-party libraries' own messages (the image codecs', Ray's core
worker and token notices) reach stderr. Off by default: a run that succeeds prints only unioncam's
lines. Kept in the environment, so that Ray workers started by this process see it too."""
from __future__ import annotations

import contextlib
import os
import sys
import tempfile
import threading
from typing import Iterator

_ENV = "UNIONCAM_VERBOSE"


def set_verbose(on: bool) -> None:
    if on:
        os.environ[_ENV] = "1"
    else:
        os.environ.pop(_ENV, None)


def verbose() -> bool:
    return os.environ.get(_ENV, "") not in ("", "0")


# File descriptor 2 is the process's: one capture at a time (a re-entrant lock, so a capture
# inside a capture, e.g. a decode during a Ray run, nests).
_LOCK = threading.RLock()


@contextlib.contextmanager
def native_stderr(*, python_to_terminal: bool = False) -> Iterator[list[str]]:
    """Capture what C and C++ code (image codecs, Ray's core worker) writes to file descriptor 2
    meanwhile; yields a list that receives the text at exit. With ``python_to_terminal``, Python's
    own ``sys.stderr`` (unioncam's lines, the progress bar) still reaches the terminal.

    Processes started meanwhile inherit the capture (Ray's raylet): their lines are not shown either.
    Where there is no descriptor 2 (a daemon), nothing is captured.
    """
    out: list[str] = []
    with _LOCK, tempfile.TemporaryFile() as sink:
        try:
            saved = os.dup(2)
        except OSError:
            yield out
            return
        sys.stderr.flush()
        os.dup2(sink.fileno(), 2)
        python_stderr = sys.stderr
        if python_to_terminal:
            sys.stderr = open(saved, "w", closefd=False, errors="backslashreplace", buffering=1)
        try:
            yield out
        finally:
            if python_to_terminal:
                sys.stderr.flush()
                sys.stderr = python_stderr
            os.dup2(saved, 2)
            os.close(saved)
            sink.seek(0)
            out.append(sink.read().decode("utf-8", "replace"))
