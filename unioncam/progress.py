"""The one progress bar: on stderr, and only where stderr is a terminal. Written to a file or a
pipe, tqdm's carriage-return redraws become lines of blanks and stale counts, so there it is off
(tqdm's ``disable=None``); the run's own lines still say what happened."""
from __future__ import annotations

import sys


def progress_bar(**kwargs):
    """``tqdm(**kwargs)`` on stderr, disabled unless stderr is a TTY."""
    from tqdm.auto import tqdm

    return tqdm(file=sys.stderr, disable=None, **kwargs)
