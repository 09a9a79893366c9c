"""Work nobody waits for is dropped: a cancellation token the pipeline checks between its passes.

A server sets one per request (:func:`cancellable`); the client disconnecting or the request's time
limit passing cancels it, and the explanation stops at the next batch of passes with
:class:`Cancelled` instead of running to its end with a slot held. Outside a server no token is
set and :func:`check` costs one context-variable read.
"""
from __future__ import annotations

import contextlib
import contextvars
import threading

from .errors import UnionCAMError


class Cancelled(UnionCAMError):
    """The explanation was stopped because nobody waits for it any more."""


class Token:
    def __init__(self):
        self._event = threading.Event()
        self.reason = ""

    def cancel(self, reason: str) -> None:
        self.reason = self.reason or reason
        self._event.set()

    @property
    def cancelled(self) -> bool:
        return self._event.is_set()


_TOKEN: contextvars.ContextVar[Token | None] = contextvars.ContextVar("unioncam_cancel", default=None)


def current() -> Token | None:
    return _TOKEN.get()


@contextlib.contextmanager
def cancellable(token: Token):
    """Work inside checks ``token`` at each batch of passes."""
    reset = _TOKEN.set(token)
    try:
        yield token
    finally:
        _TOKEN.reset(reset)


def check() -> None:
    """Raises :class:`Cancelled` where the current work's token was cancelled."""
    token = _TOKEN.get()
    if token is not None and token.cancelled:
        raise Cancelled(f"stopped: {token.reason}")
