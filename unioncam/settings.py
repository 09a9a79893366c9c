"""The settings of a run, each default written once (issue 40). Torch-free, the lowest floor but
errors and digests: every path (the eager reference, the runtime, the one graph, the CLI, serving,
Ray's workers) takes its defaults from :data:`DEFAULTS`.

Example:
    >>> DEFAULTS.theta, DEFAULTS.method, DEFAULTS.max_passes
    (10.0, 'unioncam', None)
"""
from __future__ import annotations

from dataclasses import asdict, dataclass, fields


@dataclass(frozen=True)
class RunSettings:
    """One run's settings, as its reports record them and a resumed run, a server's answer and a
    Ray worker read them back. ``max_passes`` None is exact; ``class_requested`` None is each
    image's predicted class; ``batch_size`` and ``threads`` None are the backend's own."""

    model: str = "efficientnet_lite0"
    weights: str | None = None
    weights_sha256: str | None = None
    layer: str | None = None
    theta: float = 10.0
    method: str = "unioncam"
    max_passes: int | None = None
    precision: str = "fp32"
    class_requested: int | None = None
    input_size: list | None = None
    backend: str = "onnxruntime"
    device: str = "cpu"
    batch_size: int | None = None
    threads: int | None = None
    lenient: bool = False
    plain: bool = False
    skip_constant: bool = True

    def as_dict(self) -> dict:
        return asdict(self)


#: The settings that must match for a finished output to be reused by a resumed run (the others,
#: batch size and threads, change how fast, not what).
RESUME_KEYS = ("model", "weights", "weights_sha256", "layer", "theta", "method", "max_passes", "precision",
               "class_requested", "input_size", "plain", "lenient")


#: The defaults, for signatures and options: ``theta: float = DEFAULTS.theta``.
DEFAULTS = RunSettings()


class _Unset:
    """A per-call setting not given: the explainer's own holds (``None`` is a value: exact)."""

    _one = None

    def __new__(cls):
        cls._one = cls._one or super().__new__(cls)
        return cls._one

    def __repr__(self) -> str:
        return "UNSET"

    def __bool__(self) -> bool:
        return False

    def __reduce__(self):  # one object across pickling (Ray's workers, the pool's processes)
        return (_Unset, ())


#: The one marker of a per-call override not given (``max_passes=UNSET``: the explainer's budget).
UNSET = _Unset()


#: Settings whose command-line options default to None, so that a run knows which were given.
OPTIONAL_DEFAULTS = ("theta", "method")


def resolve_options(args) -> None:
    """Parsed options, completed from :data:`DEFAULTS`: each run setting left out (None) takes its
    default here, the one place it is written, and ``args.given`` names the settings given on the
    command line (a client sends only those; a report can say which were chosen).

    Example:
        >>> import argparse
        >>> args = argparse.Namespace(theta=None, method="gradcam", max_passes=None)
        >>> resolve_options(args)
        >>> args.theta, sorted(args.given)
        (10.0, ['method'])
    """
    args.given = {f.name for f in fields(RunSettings) if getattr(args, f.name, None) is not None}
    for name in OPTIONAL_DEFAULTS:
        if hasattr(args, name) and getattr(args, name) is None:
            setattr(args, name, getattr(DEFAULTS, name))
