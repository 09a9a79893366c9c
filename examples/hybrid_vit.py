"""A vision transformer with trained patch features, for ``unioncam explain --model hybrid_vit:build``.

No trained ViT weights can be downloaded here, so this is the ViT paper's "hybrid" (as timm's
``vit_*_r50_*``): a trained CNN makes the patch embeddings, a transformer runs on them.

- Patches: EfficientNet-Lite0's trained stem, blocks and head (bundled ImageNet weights): 1280
  features on a 7x7 grid, one token per cell.
- A class token and position embeddings, then one pre-norm transformer block (LayerNorm, 8-head
  attention through ``scaled_dot_product_attention``, GELU MLP), residual branches scaled by 0.1
  (LayerScale, as CaiT and DeiT III); weights seeded, not trained.
- Head: Lite0's trained classifier on the mean patch token (timm's ``global_pool="avg"``), so the
  class scores are ImageNet's and an explanation can be checked against the object in a photo.

Its tokens are (B, 1 + 49, 1280): ``unioncam`` finds the block's input norm and ``reshape="tokens"``
(the class token dropped) by itself. Run from this folder, or with it on PYTHONPATH::

    unioncam explain photo.jpg --model hybrid_vit:build

The transformer's weights are random: the maps say what the trained patch features and this
block make of the photo, not what a trained ViT would.
"""
from __future__ import annotations

import torch
from torch import nn

HEADS, SEED, LAYER_SCALE = 8, 0, 0.1


class Attention(nn.Module):
    def __init__(self, dim: int, heads: int):
        super().__init__()
        self.heads, self.qkv, self.proj = heads, nn.Linear(dim, 3 * dim), nn.Linear(dim, dim)

    def forward(self, x):  # (B, N, D)
        B, N, D = x.shape
        q, k, v = self.qkv(x).reshape(B, N, 3, self.heads, D // self.heads).permute(2, 0, 3, 1, 4)
        y = nn.functional.scaled_dot_product_attention(q, k, v)
        return self.proj(y.transpose(1, 2).reshape(B, N, D))


class Block(nn.Module):
    def __init__(self, dim: int, heads: int):
        super().__init__()
        self.norm1, self.attn = nn.LayerNorm(dim), Attention(dim, heads)
        self.norm2, self.mlp = nn.LayerNorm(dim), nn.Sequential(nn.Linear(dim, dim), nn.GELU(), nn.Linear(dim, dim))

    def forward(self, x):
        x = x + LAYER_SCALE * self.attn(self.norm1(x))
        return x + LAYER_SCALE * self.mlp(self.norm2(x))


class HybridViT(nn.Module):
    """(B, 3, 224, 224) RGB in [0, 1] -> (B, 1000) ImageNet logits."""

    def __init__(self):
        super().__init__()
        from unioncam.models import load

        net, _ = load("efficientnet_lite0")  # EfficientNetLite: its own mean/std, stem, blocks, head, fc
        self.register_buffer("mean", net.mean.clone(), persistent=False)
        self.register_buffer("std", net.std.clone(), persistent=False)
        self.patches = nn.Sequential(net.stem, net.blocks, net.head)  # (B, 1280, 7, 7)
        dim = 1280
        g = torch.Generator().manual_seed(SEED)
        self.cls_token = nn.Parameter(torch.randn(1, 1, dim, generator=g) * 0.02)
        self.pos = nn.Parameter(torch.randn(1, 50, dim, generator=g) * 0.02)
        self.blocks = nn.Sequential(Block(dim, HEADS))
        with torch.no_grad():
            for m in self.blocks.modules():
                if isinstance(m, nn.Linear):
                    m.weight.copy_(torch.randn(m.weight.shape, generator=g) * m.in_features ** -0.5)
                    m.bias.zero_()
        self.fc = net.fc

    def forward(self, x):
        t = self.patches((x - self.mean) / self.std).flatten(2).transpose(1, 2)  # (B, 49, 1280)
        t = torch.cat([self.cls_token.expand(x.shape[0], -1, -1), t], dim=1) + self.pos
        t = self.blocks(t)
        return self.fc(t[:, 1:].mean(dim=1))


def build() -> nn.Module:
    """The factory ``--model hybrid_vit:build`` calls: the model in eval mode."""
    return HybridViT().eval()
