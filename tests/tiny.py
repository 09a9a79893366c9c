"""Tiny CNNs for fast tests: max-pooling and BatchNorm after the target layer, several classes."""
from __future__ import annotations

import torch
from torch import nn


class TinyCNN(nn.Module):
    """(B, 3, 32, 32) in [0, 1] -> (B, 5) logits. Target layer ``features.3``: (B, 6, 8, 8)."""

    def __init__(self, num_classes: int = 5, seed: int = 0):
        super().__init__()
        g = torch.Generator().manual_seed(seed)
        self.features = nn.Sequential(
            nn.Conv2d(3, 8, 3, stride=2, padding=1),
            nn.ReLU(),
            nn.Conv2d(8, 6, 3, stride=2, padding=1),
            nn.ReLU(),
        )
        self.head = nn.Sequential(
            nn.MaxPool2d(2),
            nn.BatchNorm2d(6),
            nn.Conv2d(6, 12, 3, padding=1),
            nn.ReLU(),
            nn.AdaptiveAvgPool2d(1),
            nn.Flatten(),
            nn.Linear(12, num_classes),
        )
        with torch.no_grad():
            for p in self.parameters():
                p.copy_(torch.randn(p.shape, generator=g) * 0.5)
            bn = self.head[1]
            bn.running_mean.copy_(torch.rand(6, generator=g) * 0.2)
            bn.running_var.copy_(torch.rand(6, generator=g) + 0.5)
        self.eval()

    def forward(self, x):
        return self.head(self.features(x))


def tiny_images(n: int = 3, size: int = 32, seed: int = 1, dtype=torch.float32) -> torch.Tensor:
    """Smooth random images in [0, 1] (B, 3, size, size)."""
    g = torch.Generator().manual_seed(seed)
    low = torch.rand(n, 3, size // 4, size // 4, generator=g, dtype=torch.float64)
    x = nn.functional.interpolate(low, size=(size, size), mode="bilinear", align_corners=False)
    return x.clamp(0, 1).to(dtype)


class Plant(nn.Module):
    """(B, 6, h, w) -> (B, 8, h, w): channels 0-3 as they are, then 2 x channel 0 (the same mask:
    doubling is exact in float), a constant, a copy of channel 0, a constant."""

    def forward(self, z):
        c0 = z[:, :1]
        return torch.cat([z[:, :4], c0 * 2.0, torch.full_like(c0, 0.3), c0 + 0.0, torch.zeros_like(c0)], dim=1)


class PlantedCNN(nn.Module):
    """TinyCNN with planted duplicate and constant channels at the target layer ``plant`` (8 channels)."""

    def __init__(self, seed: int = 0):
        super().__init__()
        base = TinyCNN(seed=seed)
        self.features = base.features
        self.plant = Plant()
        g = torch.Generator().manual_seed(seed + 1)
        self.head = nn.Sequential(nn.Conv2d(8, 12, 3, padding=1), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(),
                                  nn.Linear(12, 5))
        with torch.no_grad():
            for p in self.head.parameters():
                p.copy_(torch.randn(p.shape, generator=g) * 0.5)
        self.eval()

    def forward(self, x):
        return self.head(self.plant(self.features(x)))


class TinyGAP(nn.Module):
    """(B, 3, 32, 32) -> (B, 5) logits with a global-average-pooling head right after the target
    layer ``features.3`` (B, 6, 8, 8), as EfficientNet-Lite0's: every channel's gradient is then
    constant over the map, so AMD's threshold ties at every pixel (``G >= t`` keeps them all)."""

    def __init__(self, num_classes: int = 5, seed: int = 0):
        super().__init__()
        g = torch.Generator().manual_seed(seed + 7)
        self.features = nn.Sequential(nn.Conv2d(3, 8, 3, stride=2, padding=1), nn.ReLU(),
                                      nn.Conv2d(8, 6, 3, stride=2, padding=1), nn.ReLU())
        self.head = nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(6, num_classes))
        with torch.no_grad():
            for p in self.parameters():
                p.copy_(torch.randn(p.shape, generator=g) * 0.5)
        self.eval()

    def forward(self, x):
        return self.head(self.features(x))


class NearConstant(nn.Module):
    """(B, 6, h, w) -> (B, 6, h, w): channel 5 becomes ``0.3 + 1e-6 * z_0``, a map whose range is
    about 1e-6 but not 0 (so not constant: its mask is a full [0, 1] mask)."""

    def forward(self, z):
        return torch.cat([z[:, :5], 0.3 + 1e-6 * z[:, :1]], dim=1)


class NearConstantCNN(nn.Module):
    """TinyCNN's features, then :class:`NearConstant` at the target layer ``plant``."""

    def __init__(self, seed: int = 0):
        super().__init__()
        base = TinyCNN(seed=seed)
        self.features, self.plant, self.head = base.features, NearConstant(), base.head

    def forward(self, x):
        return self.head(self.plant(self.features(x)))


def close_call_cnn(scale: float = 8.0) -> TinyCNN:
    """TinyCNN whose logits are ``scale`` times larger and whose classes 2 and 4 tie on the black
    image (p = 0.5 each): softmax there is as steep as it gets, so INT8 quantisation moves the
    black image's score for the last class by 0.18 (measured), ten times the old load check's 2e-2."""
    net = TinyCNN(seed=0)
    with torch.no_grad():
        net.head[-1].weight.mul_(scale)
        net.head[-1].bias.mul_(scale)
        logits = net(torch.zeros(1, 3, 32, 32))[0]
        net.head[-1].bias[4] += logits[2] - logits[4]
    return net
