"""Admission: which requests are worked on, for how long, and when their slot is free again.

The transport admits a request before reading its body (REST: :class:`unioncam.serve.asgi.Admission`;
gRPC: its interceptor) and hands the model a :class:`Ticket` through a context variable; the model's
hooks (``preprocess`` -> ``predict``/``explain`` -> ``postprocess``) run their work under it. A ticket
holds three things a request must give back whatever happens between KServe's hooks:

- its **slot** among ``max_inflight`` (refused at once with 503 / UNAVAILABLE when none is free);
- its **deadline** (``timeout_s`` from admission: the body's arrival counts) and its cancellation
  token (:mod:`unioncam.cancel`), cancelled when the client leaves or the deadline passes;
- a **work permit** among ``concurrency``, taken by its first hook and kept until its answer is
  encoded, so that no more than ``concurrency`` requests hold decoded images at once (what bounds
  the process's memory, :func:`request_pixels`).

The transport closes the ticket when the answer is sent or the request failed; slot and permit come
back only when the work the request started on a thread is done too, so the bounds stay true when
a request is abandoned mid-pass. KServe-free and torch-free.
"""
from __future__ import annotations

import contextlib
import contextvars
import resource
import sys
import threading
import time

from .. import cancel


class Ticket:
    """One admitted request: its deadline, token, permit and the pool work it started."""

    def __init__(self, slots: "Slots | None", timeout_s: float):
        self._slots, self.deadline = slots, time.monotonic() + timeout_s
        self.timeout_s = timeout_s
        self.token = cancel.Token()
        self.permit = False
        self._busy, self._closed, self._released = 0, False, False
        self._lock = threading.Lock()

    def remaining(self) -> float:
        return self.deadline - time.monotonic()

    def has_permit(self) -> bool:
        """Whether this request may work now: a direct call (no transport, no slots) always may."""
        return self._slots is None or self._slots.try_permit(self)

    def hold(self, future) -> None:
        """Keeps the slot until ``future`` (pool work this request started) is done."""
        with self._lock:
            self._busy += 1
        future.add_done_callback(self._done)

    def _done(self, _future=None) -> None:
        with self._lock:
            self._busy -= 1
        self._maybe_release()

    def close(self) -> None:
        """The transport is done with the request (answered, refused or failed): the token is
        cancelled, so work still running stops at its next batch of passes."""
        self.token.cancel("the request ended")
        with self._lock:
            self._closed = True
        self._maybe_release()

    def _maybe_release(self) -> None:
        with self._lock:
            if not self._closed or self._busy or self._released:
                return
            self._released = True
        if self._slots is not None:
            self._slots.release(self)


class Slots:
    """``max_inflight`` slots and ``concurrency`` work permits, shared by every transport."""

    def __init__(self, max_inflight: int, concurrency: int, timeout_s: float):
        self.max_inflight, self.concurrency, self.timeout_s = max_inflight, concurrency, timeout_s
        self.inflight = 0
        self._working = 0
        self._lock = threading.Lock()

    def admit(self) -> Ticket | None:
        """A ticket, or None when every slot is taken (the caller refuses at once)."""
        with self._lock:
            if self.inflight >= self.max_inflight:
                return None
            self.inflight += 1
        return Ticket(self, self.timeout_s)

    def try_permit(self, ticket: Ticket) -> bool:
        """A work permit for ``ticket`` if one is free (the caller waits on the event loop, not a thread)."""
        with self._lock:
            if not ticket.permit and self._working < self.concurrency:
                self._working += 1
                ticket.permit = True
            return ticket.permit

    def release(self, ticket: Ticket) -> None:
        with self._lock:
            self.inflight -= 1
            if ticket.permit:
                ticket.permit = False
                self._working -= 1


_TICKET: contextvars.ContextVar[Ticket | None] = contextvars.ContextVar("unioncam_ticket", default=None)


def current() -> Ticket | None:
    return _TICKET.get()


@contextlib.contextmanager
def admitted(ticket: Ticket):
    """The request's ticket for the hooks below; closed when the transport is done with it."""
    reset = _TICKET.set(ticket)
    try:
        with cancel.cancellable(ticket.token):
            yield ticket
    finally:
        _TICKET.reset(reset)
        ticket.close()


def request_pixels(memory_mb: float, baseline_bytes: int, concurrency: int, bytes_per_pixel: int) -> int:
    """Decoded pixels one request may declare, from the process's memory budget: what the loaded
    model leaves, shared by the requests that work at once, at ``bytes_per_pixel`` each (the
    decoder's measured bound, :data:`unioncam.image_io.BYTES_PER_PIXEL`).

    Example:
        >>> request_pixels(2048, 512 << 20, 1, 32)
        50331648
    """
    free = int(memory_mb * (1 << 20)) - baseline_bytes
    return max(0, free // (bytes_per_pixel * concurrency))


def resident_bytes() -> int:
    """This process's resident memory now (Linux ``VmRSS``; elsewhere its peak, an upper bound)."""
    try:
        with open("/proc/self/status", encoding="ascii") as f:
            for line in f:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return peak if sys.platform == "darwin" else peak * 1024
