"""Small vision transformers for the token-map tests, each family's distinctive layers at 32x32:

- ``vit``: patch embedding (4x4 conv), a class token, learned position embeddings, pre-norm blocks
  (LayerNorm, multi-head attention through ``scaled_dot_product_attention``, GELU MLP), the class
  token's head. Target: the last block, (B, 1 + 64, D) tokens -> ``reshape="tokens"``.
- ``deit``: a class and a distillation token (two heads, averaged), attention written out as
  ``softmax(QK^T / sqrt(d)) V``. (B, 2 + 64, D) -> ``"tokens"`` finds the 2 tokens.
- ``swin``: (B, h, w, D) channels-last stages, attention inside 4x4 windows (the second block's
  windows shifted by 2), mean-pooled head. (B, 8, 8, D) -> ``"bhwc"``.

Seeded, then calibrated like the CNN zoo (the head rescaled so that logits spread across images).
"""
from __future__ import annotations

import torch
from torch import nn

from zoo import calibrate, zoo_images

D, HEADS, GRID = 24, 3, 8


class Attention(nn.Module):
    def __init__(self, sdpa: bool):
        super().__init__()
        self.qkv, self.proj, self.sdpa = nn.Linear(D, 3 * D), nn.Linear(D, D), sdpa

    def forward(self, x):  # (B, N, D)
        B, N, _ = x.shape
        q, k, v = self.qkv(x).reshape(B, N, 3, HEADS, D // HEADS).permute(2, 0, 3, 1, 4)
        if self.sdpa:
            y = nn.functional.scaled_dot_product_attention(q, k, v)
        else:
            y = torch.softmax(q @ k.transpose(-2, -1) / (D // HEADS) ** 0.5, dim=-1) @ v
        return self.proj(y.transpose(1, 2).reshape(B, N, D))


class Block(nn.Module):
    def __init__(self, sdpa: bool = True):
        super().__init__()
        self.norm1, self.attn, self.norm2 = nn.LayerNorm(D), Attention(sdpa), nn.LayerNorm(D)
        self.mlp = nn.Sequential(nn.Linear(D, 2 * D), nn.GELU(), nn.Linear(2 * D, D))

    def forward(self, x):
        x = x + self.attn(self.norm1(x))
        return x + self.mlp(self.norm2(x))


class ViT(nn.Module):
    def __init__(self, tokens: int = 1, sdpa: bool = True, classes: int = 5):
        super().__init__()
        self.patch = nn.Conv2d(3, D, 4, stride=4)
        self.tokens = nn.Parameter(torch.zeros(1, tokens, D))
        self.pos = nn.Parameter(torch.zeros(1, tokens + GRID * GRID, D))
        self.blocks = nn.Sequential(Block(sdpa), Block(sdpa))
        self.norm = nn.LayerNorm(D)
        self.heads = nn.ModuleList(nn.Linear(D, classes) for _ in range(tokens))

    def reset_parameters(self):
        nn.init.normal_(self.tokens, std=0.5)
        nn.init.normal_(self.pos, std=0.5)

    def forward(self, x):
        t = self.patch(x).flatten(2).transpose(1, 2)
        t = torch.cat([self.tokens.expand(x.shape[0], -1, -1), t], dim=1) + self.pos
        t = self.norm(self.blocks(t))
        return sum(head(t[:, i]) for i, head in enumerate(self.heads)) / len(self.heads)


class WindowBlock(nn.Module):
    """A Swin block on (B, h, w, D): attention inside ``win`` x ``win`` windows, optionally shifted."""

    def __init__(self, shift: int, win: int = 4):
        super().__init__()
        self.block, self.shift, self.win = Block(sdpa=False), shift, win

    def forward(self, x):
        B, h, w, _ = x.shape
        s, k = self.shift, self.win
        if s:
            x = torch.roll(x, (-s, -s), dims=(1, 2))
        windows = x.reshape(B, h // k, k, w // k, k, D).permute(0, 1, 3, 2, 4, 5).reshape(-1, k * k, D)
        windows = self.block(windows)
        x = windows.reshape(B, h // k, w // k, k, k, D).permute(0, 1, 3, 2, 4, 5).reshape(B, h, w, D)
        return torch.roll(x, (s, s), dims=(1, 2)) if s else x


class Swin(nn.Module):
    def __init__(self, classes: int = 5):
        super().__init__()
        self.patch = nn.Conv2d(3, D, 4, stride=4)
        self.blocks = nn.Sequential(WindowBlock(0), WindowBlock(2))
        self.norm = nn.LayerNorm(D)
        self.head = nn.Linear(D, classes)

    def forward(self, x):
        t = self.blocks(self.patch(x).permute(0, 2, 3, 1))
        return self.head(self.norm(t).mean(dim=(1, 2)))


def _deit():
    # Without the final norm: with random weights, a LayerNorm on the two tokens leaves their heads
    # nearly blind to masking (betas ~1e-4), and agreement on noise would prove nothing.
    model = ViT(tokens=2, sdpa=False)
    model.norm = nn.Identity()
    return model


#: name -> (builder, target layer, reshape). A ViT's target is its last block's input norm, as
#: pytorch-grad-cam's users pick: the last block's output reaches the class token's head through
#: no attention, so its patch tokens get no gradient.
FAMILIES = {
    "vit": (lambda: ViT(tokens=1, sdpa=True), "blocks.1.norm1", "tokens"),
    "deit": (_deit, "blocks.1.norm1", "tokens"),
    "swin": (Swin, "blocks.1", "bhwc"),
}


def build(name: str, seed: int = 0):
    """(model in eval mode with seeded, calibrated weights, target layer, reshape)."""
    builder, layer, reshape = FAMILIES[name]
    torch.manual_seed(seed)
    model = builder()
    for m in model.modules():
        if hasattr(m, "reset_parameters"):
            m.reset_parameters()
    return calibrate(model, zoo_images(64, seed=seed + 100)), layer, reshape
