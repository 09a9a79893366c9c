"""Hypothesis settings shared by the generated tests: deterministic (``derandomize``) and sized for
the suite's budget; ``UNIONCAM_HYPOTHESIS=slow`` runs ten times the examples of every generator
(docs/testing.md):

    UNIONCAM_HYPOTHESIS=slow python -m pytest -q -m generated
"""
from __future__ import annotations

import os

from hypothesis import HealthCheck, settings

#: Examples per generator relative to the CI setting: 10 in the slow profile.
SCALE = 10 if os.environ.get("UNIONCAM_HYPOTHESIS") == "slow" else 1


def examples(n: int, **kwargs) -> settings:
    """``@settings`` for a generator with ``n`` examples at the CI setting: derandomized, no deadline
    (a loaded machine is slow, not wrong), no database (the checkout stays clean)."""
    return settings(max_examples=n * SCALE, derandomize=True, deadline=None, database=None,
                    suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture,
                                           HealthCheck.data_too_large], **kwargs)
