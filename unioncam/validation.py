"""Checks shared by every path (eager, runtime, CLI). Torch-free."""
from __future__ import annotations

import math

from .errors import InvalidInputError


def check_theta(theta: float) -> float:
    """AMD's percentile must be a finite number in [0, 100]."""
    theta = float(theta)
    if not math.isfinite(theta) or not 0.0 <= theta <= 100.0:
        raise InvalidInputError(f"theta is a percentile and must lie in [0, 100], got {theta}")
    return theta
