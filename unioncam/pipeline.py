"""Every method's sequence, written once over a :class:`Passes` seam.

A path (the eager reference, ONNX Runtime, TensorRT, a test's own NumPy model) supplies only its
model passes; this module runs the method around them:

1. the gradient pass, in calls of ``passes.gradient_batch`` images;
2. for the region-map methods, the black image's scores and the masked passes the algebra asks
   for (:func:`unioncam.algebra.channel_scores`), in calls of exactly ``passes.batch_size`` maps of
   one image (the last call padded where ``passes.pad``), behind one progress bar;
3. for UnionCAM, AMD, AMU and AMS (:func:`unioncam.algebra.union_select`) on the fusion stage;
4. the :class:`unioncam.Explanation`, its timings and its stats.

Why padding: a GPU session re-runs cuDNN's algorithm search whenever the shape of a call changes
(0.4-1.3 s each on an H100, measured 2026-11-25; docs/runtime.md, "Runtime"), so a session that sees one shape only
searches once. The padding's scores are dropped; ``masked_passes`` counts the real passes. Where a
padded pass costs as much as a real one and a call little (the CPU), a path sets ``passes.tail``
instead: the last partial chunk of an image goes one map per call to a "tail" stage, a session of
its own with the one shape (1 map), so no session changes shape and no pass is wasted.

Torch-free: the arrays are whatever the passes return (NumPy, torch, CuPy), through
:mod:`unioncam.algebra`.
"""
from __future__ import annotations

import contextlib
import time
from dataclasses import dataclass
from typing import Any, Protocol

import numpy as np

from . import algebra, cancel
from .algebra.namespace import namespace
from .explanation import Explanation
from .registry import METHODS, method_info
from .validation import check_classes
from .settings import DEFAULTS

#: The stages a masked pass belongs to. A backend may give each its own session with its own
#: fixed shape: "region" scores activation maps (h, w) of one channel each, "fusion" scores the
#: three full-size (H, W) maps of AMU and AMS, "tail" the region map's remainder one map a call.
STAGES = ("region", "fusion", "tail")


@dataclass
class GradientPass:
    """What one forward + backward pass yields for a batch.

    logits (B, C); activations and gradients (B, K, h, w) (gradients None where the method needs
    none); class_idx (B,) int64, the explained classes.
    """

    logits: Any
    activations: Any
    gradients: Any
    class_idx: Any


class Passes(Protocol):
    """The model passes of one path. Shapes: images (B, 3, H, W) float in [0, 1].

    Attributes:
        num_classes: C where known before the first pass (a checked export), else None.
        batch_size: maps per :meth:`scores` call of the "region" stage.
        fusion_batch: maps per :meth:`scores` call of the "fusion" stage.
        gradient_batch: images per :meth:`gradient` call (None: all at once).
        pad: pad every call to its stage's fixed size (one shape per session), dropping the padding.
        tail: send the last partial chunk of the "region" stage one map per call to the "tail"
            stage instead of padding it (optional; False when absent).
    """

    num_classes: int | None
    batch_size: int
    fusion_batch: int
    gradient_batch: int | None
    pad: bool

    def gradient(self, images, requested: np.ndarray, *, gradients: bool = True) -> GradientPass:
        """Logits, ``A`` and ``G = d logit_c / dA`` for (B,) int64 ``requested`` classes (-1: arg-max)."""

    def black_probs(self):
        """(C,) softmax of the black image ``Ib``: ``p_c(Ib)`` for every class."""

    def image(self, images, b: int, stage: str):
        """Image ``b`` of ``images`` as the stage's :meth:`scores` takes it (kept on a device)."""

    def scores(self, image, maps, class_idx: int, stage: str):
        """``p_c(N(map) * image)`` for (n, h', w') maps of one image: (n,) scores."""

    def describe(self) -> dict:
        """Stats entries naming the path (backend, device, precision...), or {}."""


@dataclass(frozen=True)
class PassOptions:
    """How the method runs its passes (checked by the constructors, :mod:`unioncam.validation`)."""

    theta: float = DEFAULTS.theta
    skip_constant: bool = True
    skip_duplicates: bool = False
    max_passes: int | None = None
    progress: bool = False


def _pad(xp, maps, size: int):
    """``maps`` (n, h, w) with zero maps appended up to ``size`` rows: a zero map's mask is 0."""
    n = maps.shape[0]
    if n == size:
        return maps
    fill = xp.zeros((size - n, *maps.shape[1:]), dtype=maps.dtype, device=getattr(maps, "device", None))
    return xp.concat([maps, fill])


def score_maps(passes: Passes, images, image_index, maps, classes, *, stage: str = "region", bar=None):
    """The algebra's ``ScoreFn`` on ``passes``: ``p_c(N(map) * I0)`` for N (image, map) pairs.

    Pairs are grouped by image (each image is moved to the device once) and sent in calls of the
    stage's batch; an image's last partial chunk goes one map a call to the "tail" stage where
    ``passes.tail``, else is padded where ``passes.pad``.

    Args:
        images: (B, 3, H, W); image_index: (N,) int64; maps: (N, h', w'); classes: (B,) int64.
        bar: an object with ``update(n)`` (a tqdm bar), counting real passes only.

    Returns:
        (N,) scores in the maps' library.
    """
    xp = namespace(maps)
    size = passes.batch_size if stage == "region" else passes.fusion_batch
    index = algebra.to_numpy(image_index)
    cls = algebra.to_numpy(classes)
    parts, order = [], []
    for b in np.unique(index):
        pos = np.flatnonzero(index == b)
        rows = maps[xp.asarray(pos, device=getattr(maps, "device", None))] if pos.size != index.size else maps
        image = passes.image(images, int(b), stage)
        tail = stage == "region" and getattr(passes, "tail", False)
        for s in range(0, pos.size, size):
            cancel.check()  # a batch of passes is the natural point to drop work nobody waits for
            chunk = rows[s:s + size]
            n = chunk.shape[0]
            if n < size and tail:
                last = passes.image(images, int(b), "tail")
                parts += [passes.scores(last, chunk[j:j + 1], int(cls[b]), "tail") for j in range(n)]
            else:
                out = passes.scores(image, _pad(xp, chunk, size) if passes.pad else chunk, int(cls[b]), stage)
                parts.append(out[:n])
            if bar is not None:
                bar.update(n)
        order.append(pos)
    if not parts:
        return xp.zeros(0, dtype=maps.dtype, device=getattr(maps, "device", None))
    scores = xp.concat([xp.astype(p, maps.dtype) for p in parts])
    order = np.concatenate(order)
    if np.array_equal(order, np.arange(order.size)):
        return scores
    inverse = np.empty_like(order)
    inverse[order] = np.arange(order.size)
    return scores[xp.asarray(inverse, device=getattr(maps, "device", None))]


def run_gradient(passes: Passes, images, requested: np.ndarray, *, gradients: bool = True) -> GradientPass:
    """The gradient pass in calls of ``passes.gradient_batch`` images (padded with black images
    where ``passes.pad``); the padding's outputs are dropped."""
    cancel.check()
    B = images.shape[0]
    step = passes.gradient_batch or B
    if step >= B and not (passes.pad and passes.gradient_batch):
        return passes.gradient(images, requested, gradients=gradients)
    xp = namespace(images)
    outs = []
    for s in range(0, B, step):
        cancel.check()
        x, r = images[s:s + step], requested[s:s + step]
        n = x.shape[0]
        if passes.pad and n < step:
            x = xp.concat([x, xp.zeros((step - n, *x.shape[1:]), dtype=x.dtype, device=getattr(x, "device", None))])
            r = np.concatenate([r, np.full(step - n, -1, np.int64)])
        gp = passes.gradient(x, r, gradients=gradients)
        outs.append((gp.logits[:n], gp.activations[:n], None if gp.gradients is None else gp.gradients[:n],
                     gp.class_idx[:n]))
    cat = namespace(outs[0][0]).concat
    return GradientPass(cat([o[0] for o in outs]), cat([o[1] for o in outs]),
                        None if outs[0][2] is None else cat([o[2] for o in outs]), cat([o[3] for o in outs]))


def _progress_bar(enabled: bool, total: int):
    if not enabled or total == 0:
        return contextlib.nullcontext(None)
    from .progress import progress_bar

    return progress_bar(total=total, desc="masked passes", unit="pass", delay=1.0, leave=False)


def explain(passes: Passes, images, class_idx, method: str, options: PassOptions) -> Explanation:
    """Explain (B, 3, H, W) ``images`` (checked by the caller) with ``method`` on ``passes``.

    ``class_idx``: None (arg-max), an int, or one int per image. Returns an
    :class:`unioncam.Explanation`; its ``masked_passes`` counts real passes (padding excluded).
    """
    return explain_methods(passes, images, class_idx, [method], options)[method]


def explain_methods(passes: Passes, images, class_idx, methods, options: PassOptions) -> dict[str, Explanation]:
    """Several methods from one set of passes: one gradient pass serves every gradient method and
    UnionCAM, one set of masked passes serves Score-CAM and UnionCAM (Score-CAM's map is UnionCAM's
    region map, step 3 of the spec). Each explanation equals its method run alone; its timings count
    the stages it uses, so ``total`` is what it would cost alone.

    Returns:
        {method: Explanation}, in the order of ``methods``.
    """
    infos = {m: method_info(m) for m in dict.fromkeys(methods)}
    kinds = {info.kind for info in infos.values()}
    B, _, H, W = images.shape
    requested = check_classes(class_idx, B, passes.num_classes)
    requested = np.full(B, -1, np.int64) if requested is None else requested
    spent: dict[str, float] = {}

    t = time.perf_counter()
    gp = run_gradient(passes, images, requested, gradients=kinds != {"region"})
    A, classes = gp.activations, gp.class_idx
    spent["gradient"] = (time.perf_counter() - t) * 1e3
    stats = {"channels": int(A.shape[1]), **passes.describe()}

    def timings(stages) -> dict[str, float]:
        used = {k: spent[k] for k in stages}
        return {**used, "total": sum(used.values())}

    out = {m: _gradient_explanation(m, info, gp, (H, W), timings(["gradient"]), stats)
           for m, info in infos.items() if info.kind == "gradient"}
    if kinds <= {"gradient"}:
        return {m: out[m] for m in methods}

    t = time.perf_counter()
    xp = namespace(A)
    base = xp.astype(passes.black_probs()[xp.asarray(classes)], A.dtype)
    cs = _region_scores(passes, images, A, classes, base, options)
    L_reg = algebra.region_map(A, cs.scores)
    spent["region"] = (time.perf_counter() - t) * 1e3
    counts = {"constant_channels": int(algebra.to_numpy(cs.constant).sum()), "duplicate_channels": cs.duplicates,
              **algebra.budget_stats(A, cs)}
    for m, info in infos.items():
        if info.kind == "region":
            out[m] = Explanation.from_map(m, algebra.normalized(L_reg, (H, W)), logits=gp.logits, class_idx=classes,
                                          timings_ms=timings(["gradient", "region"]),
                                          stats={**stats, **counts, "masked_passes": cs.passes})
    if "union" in kinds:
        t = time.perf_counter()
        L_den = algebra.denoised_map(A, gp.gradients, options.theta)
        fusion = algebra.union_select(
            L_den, L_reg, (H, W), base,
            lambda index, maps: score_maps(passes, images, index, maps, classes, stage="fusion"))
        spent["fusion"] = (time.perf_counter() - t) * 1e3
        for m, info in infos.items():
            if info.kind == "union":
                out[m] = Explanation.from_fusion(fusion, logits=gp.logits, class_idx=classes,
                                                 timings_ms=timings(["gradient", "region", "fusion"]),
                                                 stats={**stats, **counts, "masked_passes": cs.passes + 3 * B})
    return {m: out[m] for m in methods}


def _gradient_explanation(method: str, info, gp: GradientPass, size, timings_ms: dict, stats: dict) -> Explanation:
    """A gradient method's map (Grad-CAM's family): its channel weights from the one gradient pass."""
    A = gp.activations
    L = algebra.weighted_map(A, getattr(algebra, info.weights)(A, gp.gradients))
    return Explanation.from_map(method, algebra.normalized(L, size), logits=gp.logits, class_idx=gp.class_idx,
                                timings_ms=timings_ms, stats=dict(stats))


def _region_scores(passes: Passes, images, A, classes, base, options: PassOptions):
    """Every channel's score (step 3 of the spec) through the masked passes, with a progress bar."""
    total = algebra.passes_needed(A, skip_constant=options.skip_constant, max_passes=options.max_passes)
    with _progress_bar(options.progress, total) as bar:
        def region_scores(index, maps):
            if bar is not None:  # the exact count, duplicates and budget applied, before any pass runs
                bar.total = int(maps.shape[0])
                bar.refresh()
            return score_maps(passes, images, index, maps, classes, bar=bar)

        return algebra.channel_scores(A, base, region_scores, skip_constant=options.skip_constant,
                                      skip_duplicates=options.skip_duplicates, max_passes=options.max_passes)


__all__ = ["GradientPass", "METHODS", "PassOptions", "Passes", "STAGES", "explain", "explain_methods", "run_gradient",
           "score_maps"]
