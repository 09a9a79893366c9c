"""Removing the stride bookkeeping that tracing a backward through a non-contiguous tensor leaves.

A model that permutes its features (ConvNeXt's channels-last LayerNorm) and then pools them gives
autograd tensors whose memory layout differs from row-major, and autograd restores layouts with
``as_strided_`` and with writes through ``as_strided`` views of a fresh buffer. ONNX has no strides
(every tensor is logically row-major) and the exporter has no translation for the
``as_strided_scatter`` those writes become. Two exact rewrites, applied only where their conditions
are proven on the traced shapes, turn them into plain reshapes.
"""
from __future__ import annotations

import torch

aten = torch.ops.aten


def _known(expr) -> bool:
    from torch.fx.experimental.symbolic_shapes import statically_known_true

    return bool(statically_known_true(expr)) if not isinstance(expr, bool) else expr


def _same_shape(a, b) -> bool:
    return len(a) == len(b) and all(_known(x == y) for x, y in zip(a, b))


def _row_major(val) -> bool:
    """Strides are row-major for every dimension longer than 1 (the others' strides never matter)."""
    expected = 1
    for size, stride in reversed(list(zip(val.shape, val.stride()))):
        if not _known(size == 1) and not _known(stride == expected):
            return False
        expected = expected * size
    return True


def _val(node):
    return node.meta.get("val") if isinstance(node, torch.fx.Node) else None


def simplify_restrides(gm: torch.fx.GraphModule) -> int:
    """Rewrite in place; returns the number of rewrites.

    1. ``as_strided_(x, size, stride)`` that keeps ``x``'s shape and changes strides only where
       ``x`` is row-major either way: the values do not change, so uses read ``x``.
    2. A fresh ``full`` buffer written whole by one ``copy_`` through a row-major ``as_strided``
       view, and read only through row-major ``as_strided`` views of its whole length: the readers
       read ``reshape(expand(src))`` instead.
    """
    graph, done = gm.graph, 0
    for node in list(graph.nodes):
        if node.op != "call_function" or node.target is not aten.as_strided_.default:
            continue
        x = node.args[0]
        xv, nv = _val(x), _val(node)
        offset = node.args[3] if len(node.args) > 3 else 0
        if xv is None or nv is None or offset not in (0, None):
            continue
        if _same_shape(xv.shape, nv.shape) and _row_major(xv) and _row_major(nv):
            node.replace_all_uses_with(x)
            graph.erase_node(node)
            done += 1
    for buf in list(graph.nodes):
        if buf.op != "call_function" or buf.target is not aten.full.default:
            continue
        bv = _val(buf)
        views = list(buf.users)
        if bv is None or bv.dim() != 1 or not views or any(v.target is not aten.as_strided.default for v in views):
            continue
        if not all((v.args[3] if len(v.args) > 3 else 0) == 0 and _row_major(_val(v))
                   and _known(_val(v).numel() == bv.numel()) for v in views):
            continue
        writers = [v for v in views if any(u.target is aten.copy_.default and u.args[0] is v for u in v.users)]
        if len(writers) != 1 or len(writers[0].users) != 1:
            continue
        view = writers[0]
        copy = next(iter(view.users))
        readers = [v for v in views if v is not view]
        order = {n: i for i, n in enumerate(graph.nodes)}
        if any(order[r] < order[copy] for r in readers):
            continue
        src = copy.args[1]
        with graph.inserting_after(copy):
            expanded = graph.call_function(aten.expand.default, (src, list(view.args[1])))
        with graph.inserting_after(expanded):
            flat = graph.call_function(aten.reshape.default, (expanded, [-1]))
        for r in readers:
            with graph.inserting_before(r):
                new = graph.call_function(aten.reshape.default, (flat, list(r.args[1])))
            new.meta = dict(r.meta)
            r.replace_all_uses_with(new)
            graph.erase_node(r)
        graph.erase_node(copy)
        graph.erase_node(view)
        graph.erase_node(buf)
        done += 1
    if done:
        graph.lint()
        gm.recompile()
    return done
