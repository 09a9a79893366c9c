"""Token maps as activation maps: a vision transformer's block output laid out as (B, D, h, w).

In the spirit of pytorch-grad-cam's ``reshape_transform``, but named by a string, so that an export
records it in its manifest and the runtime needs nothing new:

- ``"tokens"``: (B, N, D) tokens, the leading class tokens dropped (as many as make the rest a
  square grid: 1 for ViT's class token, 2 for DeiT's class and distillation tokens, 0 for none);
- ``"tokens:C"``: the first C tokens dropped, the rest a square grid;
- ``"tokens:C:HxW"``: the first C dropped, the rest an H x W grid (row-major, as patch embeddings are);
- ``"bhwc"``: (B, h, w, D), channels last (Swin).

The D embedding channels on the patch grid are UnionCAM's K activation maps. Every op here is a
view, a slice or a concatenation, so the reshape traces into the exported graphs.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import TYPE_CHECKING

from .errors import InvalidInputError

if TYPE_CHECKING:  # parsing and checking a reshape needs no torch (the CLI checks it before loading a model)
    import torch


@dataclass(frozen=True)
class Reshape:
    """A parsed reshape: ``layout`` "tokens" or "bhwc"; ``prefix`` class tokens dropped (None: as
    many as leave a square grid); ``grid`` (h, w) or None (square)."""

    layout: str
    prefix: int | None = None
    grid: tuple[int, int] | None = None

    @property
    def spec(self) -> str:
        """The string that parses back to this reshape."""
        if self.layout == "bhwc":
            return "bhwc"
        if self.grid:
            return f"tokens:{self.prefix or 0}:{self.grid[0]}x{self.grid[1]}"
        return "tokens" if self.prefix is None else f"tokens:{self.prefix}"

    def prefix_and_grid(self, n: int) -> tuple[int, tuple[int, int]]:
        """(class tokens, (h, w)) for N tokens."""
        if self.grid is not None:
            c = self.prefix or 0
            if n - c != self.grid[0] * self.grid[1]:
                raise InvalidInputError(f"reshape {self.spec!r}: {n} tokens minus {c} class tokens is not a "
                                        f"{self.grid[0]}x{self.grid[1]} grid")
            return c, self.grid
        for c in ([self.prefix] if self.prefix is not None else [1, 2, 0]):
            side = math.isqrt(max(n - c, 0))
            if n - c > 0 and side * side == n - c:
                return c, (side, side)
        raise InvalidInputError(f"reshape {self.spec!r}: {n} tokens are no square grid after dropping "
                                f"{self.prefix if self.prefix is not None else '0-2'} class tokens; give the grid "
                                "as 'tokens:C:HxW'")

    def to_maps(self, out: torch.Tensor) -> torch.Tensor:
        """The layer's output -> (B, D, h, w)."""
        if self.layout == "bhwc":
            if out.dim() != 4:
                raise InvalidInputError(f"reshape 'bhwc' takes (B, h, w, D), got {tuple(out.shape)}")
            return out.permute(0, 3, 1, 2)
        if out.dim() != 3:
            raise InvalidInputError(f"reshape {self.spec!r} takes (B, N, D) tokens, got {tuple(out.shape)}")
        c, (h, w) = self.prefix_and_grid(int(out.shape[1]))
        return out[:, c:].transpose(1, 2).reshape(out.shape[0], out.shape[2], h, w)

    def to_output(self, maps: torch.Tensor, out: torch.Tensor) -> torch.Tensor:
        """(B, D, h, w) maps back to the layer's layout, the dropped class tokens taken from ``out``."""
        if self.layout == "bhwc":
            return maps.permute(0, 2, 3, 1)
        import torch

        c, _ = self.prefix_and_grid(int(out.shape[1]))
        tokens = maps.flatten(2).transpose(1, 2)
        return torch.cat([out[:, :c], tokens], dim=1) if c else tokens

    def check_fits(self, layer: str, out_shape, input_size) -> None:
        """The reshaped maps must be a grid over the (H, W) input: both sides the input's divided by
        one stride (rounded either way, as padding leaves them), as a patch grid or a feature map is.
        A CNN's (B, K, h, w) read as ``bhwc`` gives a K x h "grid" and fails here, as does a 1x49
        token grid over a square input.

        Raises:
            InvalidInputError: naming the layer's output shape and the grid the reshape made of it.
        """
        H, W = input_size
        shape = tuple(int(v) for v in out_shape)
        if self.layout == "bhwc":
            if len(shape) != 4:
                raise InvalidInputError(f"reshape 'bhwc' takes a (B, h, w, D) output; layer {layer!r} gives {shape}")
            h, w = shape[1], shape[2]
        else:
            if len(shape) != 3:
                raise InvalidInputError(f"reshape {self.spec!r} takes (B, N, D) tokens; layer {layer!r} gives {shape}"
                                        + ("; a CNN's feature map needs no --reshape" if len(shape) == 4 else ""))
            _, (h, w) = self.prefix_and_grid(shape[1])
        if not any(_downsampled(H, h, stride) and _downsampled(W, w, stride) for stride in range(1, max(H, W) + 1)):
            raise InvalidInputError(
                f"reshape {self.spec!r} makes a {h}x{w} grid of layer {layer!r}'s output {shape}, which is no grid "
                f"over the {H}x{W} input" + ("; a CNN's (B, K, h, w) feature map needs no --reshape"
                                              if self.layout == "bhwc" else "; give the grid as 'tokens:C:HxW'"))


def _downsampled(size: int, cells: int, stride: int) -> bool:
    """``cells`` is ``size`` divided by ``stride``, rounded down or up."""
    return size // stride <= cells <= -(-size // stride)


def parse_reshape(spec: str | None) -> Reshape | None:
    """None, or a :class:`Reshape` from its string (see the module's docstring)."""
    if spec is None or isinstance(spec, Reshape):
        return spec
    if not isinstance(spec, str):
        raise InvalidInputError(f"reshape must be a string such as 'tokens' or 'bhwc', got {type(spec).__name__}")
    parts = spec.strip().lower().split(":")
    if parts == ["bhwc"]:
        return Reshape("bhwc")
    grid_parts = parts[2].split("x") if len(parts) == 3 else []
    numbers = parts[1:2] + grid_parts
    if parts[0] == "tokens" and len(parts) <= 3 and all(n.isdigit() for n in numbers) and len(grid_parts) in (0, 2):
        grid = tuple(int(v) for v in grid_parts) if grid_parts else None
        if grid is None or min(grid) >= 1:
            return Reshape("tokens", int(parts[1]) if len(parts) > 1 else None, grid)
    raise InvalidInputError(f"unknown reshape {spec!r}; use 'tokens', 'tokens:C', 'tokens:C:HxW' or 'bhwc'")
