"""One small interface for every backend, after Polygraphy's ``BaseRunner``.

A runner is created from a loader (cheap), ``activate()`` loads, ``infer(feeds)`` checks state and
feeds then runs, ``deactivate()`` frees. The base owns these three and their checks; a backend
implements ``activate_impl``, ``infer_impl``, ``deactivate_impl`` (and ``to_device_impl`` where it
keeps inputs on a device).
"""
from __future__ import annotations

import numpy as np

from unioncam.errors import InvalidInputError, RunnerStateError

_DTYPES = {"float32": np.float32, "int64": np.int64}


class Runner:
    """Runs one graph. ``activate_impl`` fills ``inputs``: name -> (dtype name, shape with None)."""

    name = "runner"
    #: Largest first dimension (gradient: batch; masked forward: maps per call) one call accepts.
    max_batch: int | None = None

    def __init__(self):
        self.inputs: dict[str, tuple[str, tuple]] = {}
        self.is_active = False

    # -- the interface ----------------------------------------------------------------------
    def activate(self) -> "Runner":
        """Load the session or engine. Activating an active runner does nothing."""
        if not self.is_active:
            self.activate_impl()
            self.is_active = True
        return self

    def infer(self, feeds: dict) -> dict[str, np.ndarray]:
        """Run on ``feeds`` (name -> array or a handle from ``to_device``); returns name -> array."""
        self._check_active("infer")
        self.check_feeds(feeds)
        return self.infer_impl(feeds)

    def to_device(self, array: np.ndarray):
        """A handle for an input reused across calls (kept on the device by GPU backends)."""
        self._check_active("to_device")
        return self.to_device_impl(array)

    def deactivate(self) -> None:
        """Free the session or engine and every device buffer. Idempotent."""
        if self.is_active:
            try:
                self.deactivate_impl()
            finally:
                self.is_active = False

    # -- what a backend implements -----------------------------------------------------------
    def activate_impl(self) -> None:
        raise NotImplementedError

    def infer_impl(self, feeds: dict) -> dict[str, np.ndarray]:
        raise NotImplementedError

    def deactivate_impl(self) -> None:
        raise NotImplementedError

    def to_device_impl(self, array: np.ndarray):
        return array

    # -- checks ------------------------------------------------------------------------------
    def _check_active(self, what: str) -> None:
        if not self.is_active:
            raise RunnerStateError(
                f"{self.name}: {what}() on an inactive runner; call activate() first (or use it in a `with` block), "
                "and do not use it after deactivate() or Explainer.close()"
            )

    def check_feeds(self, feeds: dict) -> None:
        """Input metadata checked before inference: names, dtypes, ranks, static dimensions."""
        if set(feeds) != set(self.inputs):
            raise InvalidInputError(f"{self.name}: expected inputs {sorted(self.inputs)}, got {sorted(feeds)}")
        for key, value in feeds.items():
            if not isinstance(value, np.ndarray):
                continue  # a handle made by to_device from an array the explainer checked
            dtype, shape = self.inputs[key]
            if value.dtype != _DTYPES[dtype]:
                raise InvalidInputError(f"{self.name}: input {key!r} must be {dtype}, got {value.dtype}")
            if value.ndim != len(shape) or any(s is not None and s != v for s, v in zip(shape, value.shape)):
                raise InvalidInputError(f"{self.name}: input {key!r} must have shape {shape}, got {value.shape}")

    def __enter__(self):
        return self.activate()

    def __exit__(self, *exc):
        self.deactivate()
