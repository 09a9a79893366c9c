"""Model factories for ``--model factories:NAME`` in the CLI tests (tests/ is on sys.path)."""
from __future__ import annotations

from torch import nn

from tiny import TinyCNN


def tiny():
    """TinyCNN (5 classes, seeded) and its layer; use with --input-size 32."""
    return TinyCNN(), "features.3"


def raises():
    raise RuntimeError("the weights server is down")


def needs_arguments(depth, width=4):
    return TinyCNN()


def one_logit():
    net = nn.Sequential(nn.Conv2d(3, 4, 3, padding=1), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(4, 1))
    return net, "1"
