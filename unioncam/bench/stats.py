"""Latency statistics over timed iterations."""
from __future__ import annotations

import numpy as np

def summarize(times_ms) -> dict[str, float]:
    """min, mean, std (population), p50, p90, p99 (linear interpolation, NumPy's default) and max.

    Args:
        times_ms: one or more durations in milliseconds.

    Returns:
        {"min_ms", "mean_ms", "std_ms", "p50_ms", "p90_ms", "p99_ms", "max_ms", "n"}.
    """
    t = np.asarray(list(times_ms), dtype=np.float64)
    if t.size == 0:
        from ..errors import InvalidInputError

        raise InvalidInputError("no timings to summarize: time at least one iteration")
    p50, p90, p99 = np.percentile(t, [50, 90, 99])
    return {"min_ms": float(t.min()), "mean_ms": float(t.mean()), "std_ms": float(t.std()), "p50_ms": float(p50),
            "p90_ms": float(p90), "p99_ms": float(p99), "max_ms": float(t.max()), "n": int(t.size)}
