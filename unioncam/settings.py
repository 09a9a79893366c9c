"""The settings of a run, each default written once (issue 40). Torch-free, the lowest floor but
errors and digests: every path (the eager reference, the runtime, the one graph, the CLI, serving,
Ray's workers) takes its defaults from :data:`DEFAULTS`.

Example:
    >>> DEFAULTS.theta, DEFAULTS.method, DEFAULTS.max_passes
    (10.0, 'unioncam', None)
"""
from __future__ import annotations

from dataclasses import asdict, dataclass


@dataclass(frozen=True)
class RunSettings:
    """One run's settings. ``max_passes`` None is exact; ``class_requested`` None is each image's
    predicted class."""

    model: str = "efficientnet_lite0"
    layer: str | None = None
    theta: float = 10.0
    method: str = "unioncam"
    max_passes: int | None = None
    precision: str = "fp32"
    backend: str = "onnxruntime"
    device: str = "cpu"
    class_requested: int | None = None
    skip_constant: bool = True

    def as_dict(self) -> dict:
        return asdict(self)


#: The defaults, for signatures and options: ``theta: float = DEFAULTS.theta``.
DEFAULTS = RunSettings()
