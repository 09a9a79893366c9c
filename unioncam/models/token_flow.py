"""A vision transformer's last block input, found by following tensors through operations.

The definition (docs/models.md, "The automatic layer"): take the last attention the forward pass
runs on the image's own tokens (``scaled_dot_product_attention``, ``nn.MultiheadAttention`` or a
softmax over a (..., N, N) product of two activations). Its target is the **last (1, N, D) tensor
that reaches the attention's q, k and v through per-token operations only, through a projection on
the way** (the q/k/v linear; ``nn.MultiheadAttention`` projects inside), **that a module outputs**
(a CAM hooks a module). Per-token: anything that does not mix tokens (linear maps, norms over the
channels, reshapes, elementwise ops, residual adds); a product of two activations, a softmax, a
convolution, a pooling, a roll or a reduction over any dimension but the last mixes them.

Pre-norm blocks give the norm's output (timm's ``norm1``, torchvision's ``ln_1``, a hand-written
RMSNorm module); post-norm and norm-free blocks give the previous block's output; a fused qkv linear
is not the target (q sees a third of its channels, through no projection). Module names and
nesting play no part: attention inline in a block's ``forward`` and attention in a child module are
the same data flow.

The tokens' layout (class, distillation and register tokens before an h x w grid) is read from the
patch embedding's (1, D, h, w) map where the tokens come from one, else from the input's shape.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from torch import nn
from torch.overrides import TorchFunctionMode
from torch.utils._pytree import tree_flatten

#: The most leading tokens (class, distillation, registers) a token layout may have before its grid.
MAX_EXTRA_TOKENS = 16

_MATMULS = {torch.matmul, torch.Tensor.matmul, torch.Tensor.__matmul__, torch.Tensor.__rmatmul__, torch.bmm,
            torch.Tensor.bmm, torch.einsum, torch.baddbmm, torch.mm, torch.Tensor.mm}
_SOFTMAX = {torch.softmax, F.softmax, torch.Tensor.softmax, torch.log_softmax, F.log_softmax}
_REDUCTIONS = {"mean", "sum", "amax", "amin", "max", "min", "var", "std", "norm", "logsumexp", "prod"}
_MIXING_NAMES = ("conv", "pool", "interpolate", "upsample", "roll", "cumsum", "fft", "unfold", "fold", "sort",
                 "topk", "pad")


@dataclass
class _Op:
    order: int
    name: str
    inputs: list[int]          # ids of activation inputs (tensors that depend on the image)
    mixing: bool               # mixes tokens: the walk back stops here
    projection: bool           # a learned map of the channels (linear, matmul with a weight)


@dataclass
class Attention:
    order: int
    tokens: int                # N
    batch: int                 # the probe's batch of 1, or windows x 1
    qkv: list[int]             # ids of the q, k, v tensors (or those found)
    projected_inside: bool     # nn.MultiheadAttention: q, k, v are projected inside the call


@dataclass
class Trace:
    ops: dict[int, _Op] = field(default_factory=dict)          # tensor id -> the op that made it
    shapes: dict[int, tuple] = field(default_factory=dict)
    module_outputs: dict[int, list[tuple[int, str]]] = field(default_factory=dict)  # id -> [(order, name)]
    attention: list[Attention] = field(default_factory=list)
    consumers: dict[int, list[tuple[object, list[int], list[int]]]] = field(default_factory=dict)
    #: (op order when the module returned, name, type name + "/block" for a module with children, id, shape)
    records: list[tuple[int, str, str, int, tuple]] = field(default_factory=list)
    pending_values: list[tuple[int, int]] = field(default_factory=list)  # (attention index, id of P)
    alive: list = field(default_factory=list)


def _func_name(func) -> str:
    return getattr(func, "__name__", str(func)).strip("_")


class _Tracer(TorchFunctionMode):
    """Records, for every op on a tensor that depends on the image, what it made from what."""

    def __init__(self, trace: Trace, image: torch.Tensor):
        super().__init__()
        self.t, self.alive, self.order = trace, [image], 0
        self.activations = {id(image)}
        trace.shapes[id(image)] = tuple(image.shape)

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        out = func(*args, **kwargs)
        flat_in = [a for a in tree_flatten((args, kwargs))[0] if isinstance(a, torch.Tensor)]
        acts = [id(a) for a in flat_in if id(a) in self.activations]
        if not acts:
            return out
        outs = [o for o in tree_flatten(out)[0] if isinstance(o, torch.Tensor)]
        self.order += 1
        name = _func_name(func)
        op = _Op(self.order, name, acts, self._mixes(func, name, args, kwargs, acts, flat_in),
                 self._projects(func, name, acts, flat_in))
        self.alive.extend(outs)
        for o in outs:
            if id(o) not in self.t.ops:  # an in-place op returns its input: keep the first maker
                self.t.ops[id(o)] = op
            self.t.shapes[id(o)] = tuple(o.shape)
            self.activations.add(id(o))
        for a in acts:
            self.t.consumers.setdefault(a, []).append((func, acts, [id(o) for o in outs]))
        self._attention(func, name, args, kwargs, outs)
        return out

    @staticmethod
    def _mixes(func, name, args, kwargs, acts, flat_in) -> bool:
        if func in _MATMULS:
            return len(acts) >= 2
        if func in _SOFTMAX or func in (F.scaled_dot_product_attention, F.multi_head_attention_forward):
            return True
        if any(k in name for k in _MIXING_NAMES):
            return True
        if name in _REDUCTIONS:
            dim = kwargs.get("dim", args[1] if len(args) > 1 else None)
            dims = dim if isinstance(dim, (tuple, list)) else (dim,)
            nd = flat_in[0].dim() if flat_in else 0
            return not all(isinstance(d, int) and d % max(nd, 1) == nd - 1 for d in dims)
        return False

    @staticmethod
    def _projects(func, name, acts, flat_in) -> bool:
        if func is F.linear or name == "linear":
            return True
        return func in _MATMULS and len(acts) == 1 and len(flat_in) >= 2

    def _attention(self, func, name, args, kwargs, outs) -> None:
        if func is F.scaled_dot_product_attention:
            q, k, v = (list(args) + [kwargs.get(n) for n in ("query", "key", "value")][len(args):])[:3]
            if q is not None and q.dim() >= 3:
                self.t.attention.append(Attention(self.order, int(q.shape[-2]), int(q.shape[0]),
                                                  [id(q), id(k), id(v)], False))
        elif func is F.multi_head_attention_forward:
            q, k, v = args[:3]
            if q.dim() == 3:  # (L, B, E): nn.MultiheadAttention transposes batch-first inputs before the call
                self.t.attention.append(Attention(self.order, int(q.shape[0]), int(q.shape[1]),
                                                  [id(q), id(k), id(v)], True))
        elif func in _SOFTMAX and args and isinstance(args[0], torch.Tensor):
            s = args[0]
            if s.dim() >= 3 and s.shape[-1] == s.shape[-2] > 1:
                qk = self._scores_operands(id(s))
                if qk:
                    if outs:  # v, the other operand of P @ v, is known only after the pass
                        self.t.pending_values.append((len(self.t.attention), id(outs[0])))
                    self.t.attention.append(Attention(self.order, int(s.shape[-1]), int(s.shape[0]), qk, False))

    def _scores_operands(self, sid: int) -> list[int] | None:
        """q and kT of the product that made the scores (through scaling, masking and casts)."""
        for _ in range(6):
            op = self.t.ops.get(sid)
            if op is None:
                return None
            if op.mixing and len(op.inputs) >= 2 and op.name not in ("softmax", "log_softmax"):
                return op.inputs[:2]
            if len(op.inputs) != 1:
                return None
            sid = op.inputs[0]
        return None


def _resolve_values(trace: Trace) -> None:
    """Adds v to each written-out attention: the other operand of the product that consumes P."""
    for index, pid in trace.pending_values:
        v = _value_operand(trace, pid)
        if v is not None:
            trace.attention[index].qkv.append(v)


def _value_operand(trace: Trace, pid: int) -> int | None:
    """v of ``P @ v`` for the probabilities P, through up to 4 one-input ops (dropout, casts)."""
    frontier = [pid]
    for _ in range(5):
        nxt = []
        for t in frontier:
            for func, acts, outs in trace.consumers.get(t, []):
                if func in _MATMULS and len(acts) >= 2 and acts[0] == t:
                    return acts[1]
                if len(acts) == 1:
                    nxt.extend(outs)
        frontier = nxt
    return None


def trace(model: nn.Module, image: torch.Tensor) -> Trace:
    """One forward pass of ``model`` on ``image`` under no_grad, recorded (the caller sets eval mode)."""
    t = Trace()
    hooks = []

    tracer = _Tracer(t, image)

    def hook(name):
        def fn(m, _i, out):
            if isinstance(out, torch.Tensor):
                t.module_outputs.setdefault(id(out), []).append((name.count("."), name))
                kind = type(m).__name__ + ("/block" if any(True for _ in m.children()) else "")
                t.records.append((tracer.order, name, kind, id(out), tuple(out.shape)))
                tracer.alive.append(out)
        return fn

    for name, mod in model.named_modules():
        if name:
            hooks.append(mod.register_forward_hook(hook(name)))
    try:
        with torch.no_grad(), tracer:
            model(image)
    finally:
        for h in hooks:
            h.remove()
    _resolve_values(t)
    t.alive = tracer.alive  # ids stay unique while the tensors live
    return t


def _reach(trace: Trace, start: int, projected: bool) -> set[int]:
    """Tensors from which ``start`` is reached through per-token ops, with a projection on the way
    (``projected``: one is already behind). The mixing op's own output is reached, not crossed."""
    found, seen, stack = set(), set(), [(start, projected)]
    while stack:
        tid, proj = stack.pop()
        if (tid, proj) in seen:
            continue
        seen.add((tid, proj))
        if proj:
            found.add(tid)
        op = trace.ops.get(tid)
        if op is None or op.mixing:
            continue
        stack.extend((i, proj or op.projection) for i in op.inputs)
    return found


def last_block_input(trace: Trace) -> tuple[str, tuple, int] | None:
    """(module name, output shape, tensor id) of the last attention's target (module docstring), or None
    where no attention runs on the image's own tokens or no module outputs its input."""
    own = [a for a in trace.attention if a.batch == 1 and len(a.qkv) >= 2]
    if not own:
        return None
    att = own[-1]
    common = None
    for tid in att.qkv:
        reach = _reach(trace, tid, att.projected_inside)
        common = reach if common is None else common & reach
    cands = []
    for tid in common or ():
        shape = trace.shapes.get(tid, ())
        if len(shape) == 3 and shape[0] == 1 and shape[1] == att.tokens and tid in trace.module_outputs:
            op = trace.ops.get(tid)
            cands.append((op.order if op else 0, tid))
    if not cands:
        return None
    _, tid = max(cands)
    name = min(trace.module_outputs[tid])[1]  # the outermost module of the same tensor
    return name, trace.shapes[tid], tid


def _ancestors(trace: Trace, tid: int) -> set[int]:
    seen, stack = set(), [tid]
    while stack:
        t = stack.pop()
        if t not in seen:
            seen.add(t)
            op = trace.ops.get(t)
            stack.extend(op.inputs if op else ())
    return seen


def token_layout(trace: Trace, tokens: int, input_size, source: int | None = None) -> tuple[int, tuple[int, int]] | None:
    """(leading tokens, (h, w)) of N tokens: the grid of the (1, C, h, w) map the tokens were made
    from (the patch embedding: the latest such ancestor of ``source`` with h * w <= N <= h * w +
    :data:`MAX_EXTRA_TOKENS`, one with C equal to the tokens' width first), else the grid over the
    input (its sides over one stride) with the fewest leading tokens."""
    width = trace.shapes.get(source, (0, 0, 0))[-1] if source is not None else None
    pool = _ancestors(trace, source) if source is not None else ()
    maps = [(trace.shapes[t][1] == width, trace.ops[t].order if t in trace.ops else 0, trace.shapes[t])
            for t in pool if len(trace.shapes.get(t, ())) == 4]
    maps = [m for m in maps if m[2][0] == 1 and m[2][2] * m[2][3] > 1
            and 0 <= tokens - m[2][2] * m[2][3] <= MAX_EXTRA_TOKENS]
    if maps:
        s = max(maps)[2]
        return tokens - s[2] * s[3], (int(s[2]), int(s[3]))
    H, W = int(input_size[0]), int(input_size[1])
    for c in range(0, MAX_EXTRA_TOKENS + 1):
        n = tokens - c
        for stride in range(1, max(H, W) + 1):
            h, w = -(-H // stride), -(-W // stride)
            if h * w < n:
                break
            if h * w == n or (H // stride) * (W // stride) == n:
                return c, ((h, w) if h * w == n else (H // stride, W // stride))
    return None


def reshape_spec(extra: int, grid: tuple[int, int]) -> str:
    """The shortest reshape string (unioncam.reshape) that lays these tokens out."""
    from ..reshape import parse_reshape

    n = extra + grid[0] * grid[1]
    side = math.isqrt(grid[0] * grid[1])
    if grid[0] == grid[1] == side:
        try:
            if parse_reshape("tokens").prefix_and_grid(n) == (extra, grid):
                return "tokens"
        except Exception:  # noqa: BLE001 - not the default layout: spelled out below
            pass
    return f"tokens:{extra}:{grid[0]}x{grid[1]}"
