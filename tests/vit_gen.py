"""Small transformer classifiers built from a layout, for the generated tests of the automatic layer
(tests/test_generated_layer.py). Each layout knows, by its own construction, which module outputs the
last block's input (docs/models.md): the oracle does not follow tensors.

A layout: where attention runs (``inline_sdpa``/``inline_softmax`` in the block's own forward,
``child_sdpa``/``child_softmax`` in a module of its own, ``mha`` through nn.MultiheadAttention), fused
or separate q/k/v, the norm (``layer``, torch's ``rms``, a hand-written ``own_rms``, ``none``), pre- or
post-norm, the leading tokens (0 none, 1 class, 2 class + distillation, 5 class + 4 registers), the
patch grid (square or not) and the depth.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

D, HEADS, PATCH = 24, 3, 4
ATTENTION = ("inline_sdpa", "inline_softmax", "child_sdpa", "child_softmax", "mha")
NORMS = ("layer", "rms", "own_rms", "none")


@dataclass(frozen=True)
class Layout:
    attention: str = "inline_sdpa"
    fused_qkv: bool = True
    norm: str = "layer"
    pre_norm: bool = True
    extra_tokens: int = 1
    grid: tuple[int, int] = (4, 4)
    depth: int = 2

    @property
    def input_size(self) -> tuple[int, int]:
        return self.grid[0] * PATCH, self.grid[1] * PATCH

    @property
    def tokens(self) -> int:
        return self.extra_tokens + self.grid[0] * self.grid[1]

    def expected_layer(self) -> str:
        """The module whose output is the last block's input, by construction."""
        last = self.depth - 1
        if self.pre_norm and self.norm != "none":
            return f"blocks.{last}.norm1"
        return f"blocks.{last - 1}" if last else "embed"


class OwnRMSNorm(nn.Module):
    """RMSNorm as people write it by hand."""

    def __init__(self, dim: int, eps: float = 1e-6):
        super().__init__()
        self.eps, self.weight = eps, nn.Parameter(torch.ones(dim))

    def forward(self, x):
        return x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + self.eps) * self.weight


def make_norm(kind: str) -> nn.Module | None:
    return {"layer": lambda: nn.LayerNorm(D), "rms": lambda: nn.RMSNorm(D), "own_rms": lambda: OwnRMSNorm(D),
            "none": lambda: None}[kind]()


def attend(q, k, v, softmax: bool):
    if not softmax:
        return F.scaled_dot_product_attention(q, k, v)
    return torch.softmax(q @ k.transpose(-2, -1) * (q.shape[-1] ** -0.5), dim=-1) @ v


class QKV(nn.Module):
    """Projections and heads: fused (one linear) or separate."""

    def __init__(self, fused: bool):
        super().__init__()
        self.fused = fused
        if fused:
            self.qkv = nn.Linear(D, 3 * D)
        else:
            self.q, self.k, self.v = nn.Linear(D, D), nn.Linear(D, D), nn.Linear(D, D)

    def forward(self, x):
        B, N, _ = x.shape
        if self.fused:
            return self.qkv(x).reshape(B, N, 3, HEADS, D // HEADS).permute(2, 0, 3, 1, 4).unbind(0)
        return tuple(p(x).reshape(B, N, HEADS, D // HEADS).transpose(1, 2) for p in (self.q, self.k, self.v))


class ChildAttention(nn.Module):
    def __init__(self, fused: bool, softmax: bool):
        super().__init__()
        self.heads, self.proj, self.softmax = QKV(fused), nn.Linear(D, D), softmax

    def forward(self, x):
        B, N, _ = x.shape
        return self.proj(attend(*self.heads(x), self.softmax).transpose(1, 2).reshape(B, N, D))


class Block(nn.Module):
    def __init__(self, layout: Layout):
        super().__init__()
        self.layout = layout
        self.norm1, self.norm2 = make_norm(layout.norm), make_norm(layout.norm)
        kind = layout.attention
        if kind == "mha":
            self.attn = nn.MultiheadAttention(D, HEADS, batch_first=True)
        elif kind.startswith("child"):
            self.attn = ChildAttention(layout.fused_qkv, kind.endswith("softmax"))
        else:  # inline: the projections are the block's own, attention runs in this forward
            self.heads, self.proj = QKV(layout.fused_qkv), nn.Linear(D, D)
        self.mlp = nn.Sequential(nn.Linear(D, 2 * D), nn.GELU(), nn.Linear(2 * D, D))

    def mix(self, x):
        kind = self.layout.attention
        if kind == "mha":
            return self.attn(x, x, x, need_weights=False)[0]
        if kind.startswith("child"):
            return self.attn(x)
        B, N, _ = x.shape
        return self.proj(attend(*self.heads(x), kind.endswith("softmax")).transpose(1, 2).reshape(B, N, D))

    def forward(self, x):
        n1 = self.norm1 or (lambda t: t)
        n2 = self.norm2 or (lambda t: t)
        if self.layout.pre_norm:
            x = x + self.mix(n1(x))
            return x + self.mlp(n2(x))
        x = n1(x + self.mix(x))
        return n2(x + self.mlp(x))


class Embed(nn.Module):
    """Patches, leading tokens, positions: the tokens the first block takes."""

    def __init__(self, layout: Layout):
        super().__init__()
        self.patch = nn.Conv2d(3, D, PATCH, stride=PATCH)
        self.extra = nn.Parameter(torch.randn(1, layout.extra_tokens, D) * 0.5) if layout.extra_tokens else None
        self.pos = nn.Parameter(torch.randn(1, layout.tokens, D) * 0.5)

    def forward(self, x):
        t = self.patch(x).flatten(2).transpose(1, 2)
        if self.extra is not None:
            t = torch.cat([self.extra.expand(x.shape[0], -1, -1), t], dim=1)
        return t + self.pos


class Net(nn.Module):
    def __init__(self, layout: Layout, classes: int = 5):
        super().__init__()
        self.layout = layout
        self.embed = Embed(layout)
        self.blocks = nn.Sequential(*(Block(layout) for _ in range(layout.depth)))
        self.norm = nn.LayerNorm(D)
        self.head = nn.Linear(D, classes)

    def forward(self, x):
        t = self.norm(self.blocks(self.embed(x)))
        # The class token where there is one, else the mean of the patch tokens.
        return self.head(t[:, 0] if self.layout.extra_tokens else t.mean(1))


def build(layout: Layout, seed: int = 0) -> Net:
    torch.manual_seed(seed)
    return Net(layout).eval()


def hand_written_vit() -> Net:
    """The issue's hand-written ViT: pre-norm, scaled_dot_product_attention inline, a class token."""
    return build(Layout(attention="inline_sdpa", fused_qkv=True, norm="layer", pre_norm=True, extra_tokens=1,
                        grid=(8, 8), depth=2))


@dataclass(frozen=True)
class WindowLayout:
    """A Swin-style stage: channels-last (1, h, w, D) maps, attention inside k x k windows, every
    other block's windows shifted by k // 2."""

    grid: tuple[int, int] = (8, 8)
    window: int = 4
    depth: int = 2

    @property
    def input_size(self) -> tuple[int, int]:
        return self.grid[0] * PATCH, self.grid[1] * PATCH


class WindowBlock(nn.Module):
    def __init__(self, window: int, shift: int):
        super().__init__()
        self.norm1, self.heads, self.proj = nn.LayerNorm(D), QKV(True), nn.Linear(D, D)
        self.norm2, self.mlp = nn.LayerNorm(D), nn.Sequential(nn.Linear(D, 2 * D), nn.GELU(), nn.Linear(2 * D, D))
        self.k, self.shift = window, shift

    def forward(self, x):
        B, h, w, _ = x.shape
        k, s = self.k, self.shift
        y = torch.roll(self.norm1(x), (-s, -s), dims=(1, 2)) if s else self.norm1(x)
        win = y.reshape(B, h // k, k, w // k, k, D).permute(0, 1, 3, 2, 4, 5).reshape(-1, k * k, D)
        win = self.proj(attend(*self.heads(win), False).transpose(1, 2).reshape(-1, k * k, D))
        y = win.reshape(B, h // k, w // k, k, k, D).permute(0, 1, 3, 2, 4, 5).reshape(B, h, w, D)
        x = x + (torch.roll(y, (s, s), dims=(1, 2)) if s else y)
        return x + self.mlp(self.norm2(x))


class WindowNet(nn.Module):
    def __init__(self, layout: WindowLayout, classes: int = 5):
        super().__init__()
        self.patch = nn.Conv2d(3, D, PATCH, stride=PATCH)
        k = layout.window
        self.blocks = nn.Sequential(*(WindowBlock(k, (k // 2) * (i % 2)) for i in range(layout.depth)))
        self.norm, self.head = nn.LayerNorm(D), nn.Linear(D, classes)

    def forward(self, x):
        t = self.blocks(self.patch(x).permute(0, 2, 3, 1))
        return self.head(self.norm(t).mean(dim=(1, 2)))


def build_windows(layout: WindowLayout, seed: int = 0) -> WindowNet:
    torch.manual_seed(seed)
    return WindowNet(layout).eval()
