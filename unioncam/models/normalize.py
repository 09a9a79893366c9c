"""Wrapping a classifier so it takes RGB images in [0, 1]: mean/std normalisation is part of ``f``."""
from __future__ import annotations

from typing import Sequence

import torch
from torch import nn


class Normalized(nn.Module):
    """``Normalized(net, mean, std)(x) = net((x - mean) / std)`` for x (B, 3, H, W) in [0, 1].

    The wrapped network keeps its own module and state_dict names under ``model.``; target layers
    can be named either way (``"features.29"`` or ``"model.features.29"``).
    """

    unioncam_inner = "model"

    def __init__(self, model: nn.Module, mean: Sequence[float], std: Sequence[float]):
        super().__init__()
        self.model = model
        # Not persistent: a user's torchvision checkpoint loads into ``model`` without extra keys.
        self.register_buffer("mean", torch.tensor(mean, dtype=torch.float32).view(1, -1, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(std, dtype=torch.float32).view(1, -1, 1, 1), persistent=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.model((x - self.mean) / self.std)
