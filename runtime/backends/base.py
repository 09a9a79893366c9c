"""One small interface for every backend (after Polygraphy's loader/runner split).

A runner is created cheaply, ``activate()`` loads the session or engine, ``infer(feeds)`` checks the
feeds against the graph's input metadata and runs, ``deactivate()`` frees it. Runners are used as
context managers or held for the explainer's lifetime.
"""
from __future__ import annotations

import numpy as np

from unioncam.errors import InvalidInputError

_DTYPES = {"float32": np.float32, "int64": np.int64}


class Runner:
    """Runs one graph. Subclasses fill ``inputs`` at activation: name -> (dtype name, shape with None)."""

    name = "runner"
    #: Largest first dimension (gradient: batch; masked forward: maps per call) one call accepts.
    max_batch: int | None = None

    def __init__(self):
        self.inputs: dict[str, tuple[str, tuple]] = {}
        self.is_active = False

    def activate(self) -> "Runner":
        raise NotImplementedError

    def deactivate(self) -> None:
        self.is_active = False

    def to_device(self, array: np.ndarray):
        """A handle for an input reused across calls (kept on the device by GPU backends)."""
        return array

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

    def infer(self, feeds: dict) -> dict[str, np.ndarray]:
        raise NotImplementedError

    def __enter__(self):
        if not self.is_active:
            self.activate()
        return self

    def __exit__(self, *exc):
        self.deactivate()
