"""Steps 3-5 of the spec around a scoring callable: the region map's channel scores (Score-CAM),
AMU (eqs. 4-6) and AMS (eqs. 7-8).

Each path supplies only ``score(image_index, maps) -> scores``, ``p_c(N(map) * I0)`` for N
(image, map) pairs: the eager reference runs the model in torch, the runtime calls ONNX Runtime or
TensorRT, the end-to-end export traces the model into the graph. Everything else is here, once.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable

import numpy as np

from .budget import choose_channels, estimate_scores, mask_features
from .maps import constant_channels, duplicate_masks, minmax, normalized
from .namespace import namespace, to_numpy

#: ``score(image_index (N,) int64, maps (N, h', w') float) -> (N,) float``: ``p_c(N(map) * I0)``
#: of image ``image_index[i]`` for its class. Maps are activations (h, w) or full-size (H, W).
ScoreFn = Callable[[Any, Any], Any]


@dataclass
class ChannelScores:
    """Score-CAM channel scores of a batch.

    scores: (B, K) ``s_k``; constant: (B, K) bool; passes: masked passes run; duplicates: passes
    saved because a map's mask equals an earlier channel's; estimated: (B, K) bool, scores estimated
    under a pass budget (None without one); score_error: (B,) float64 leave-one-out RMS error of the
    estimator (0 where nothing was estimated; None without a budget).
    """

    scores: Any
    constant: Any
    passes: int
    duplicates: int = 0
    estimated: Any = None
    score_error: Any = None


def passes_needed(activations, *, skip_constant: bool = True, max_passes: int | None = None) -> int:
    """An upper bound of the passes :func:`channel_scores` runs (exact without duplicate skipping),
    for progress bars."""
    if not skip_constant:
        return int(activations.shape[0] * activations.shape[1])
    per_image = (~to_numpy(constant_channels(activations))).sum(1)
    if max_passes is not None:
        per_image = np.minimum(per_image, max_passes)
    return int(per_image.sum())


def channel_scores(activations, base, score: ScoreFn, *, skip_constant: bool = True,
                   skip_duplicates: bool = False, max_passes: int | None = None) -> ChannelScores:
    """``s_k = p_c(minmax(up(A_k)) * I0)`` for every (image, channel), step 3 of the spec.

    A constant channel's mask is exactly 0, so its score is ``p_c(Ib)`` = ``base``: it is set to
    ``base`` exactly whether or not its pass runs, so skipping changes no value.

    Args:
        activations: (B, K, h, w) float ``A``.
        base: (B,) ``p_c(Ib)`` for each image's class.
        score: the path's scoring callable (see ``ScoreFn``).
        skip_constant: run no pass for constant channels (needs data-dependent indexing; a traced
            graph passes False and runs every channel, replacing the constant ones by ``base``).
        skip_duplicates: also run one pass per distinct mask within an image (exact: an equal mask
            gives an equal score).
        max_passes: at most this many passes per image; the other channels' scores are estimated
            (:mod:`unioncam.algebra.budget`). None (default) is exact. Needs ``skip_constant``.

    Returns:
        :class:`ChannelScores`, arrays in the activations' library.
    """
    xp = namespace(activations)
    B, K, h, w = activations.shape
    dev = getattr(activations, "device", None)
    constant = constant_channels(activations)
    base_bk = xp.broadcast_to(xp.astype(base, activations.dtype)[:, None], (B, K))
    if not skip_constant:
        image_index = xp.reshape(xp.broadcast_to(xp.arange(B, device=dev)[:, None], (B, K)), (B * K,))
        s = xp.reshape(score(image_index, xp.reshape(activations, (B * K, h, w))), (B, K))
        return ChannelScores(xp.where(constant, base_bk, xp.astype(s, activations.dtype)), constant, B * K)

    # Gather the channels that need a pass, score them, scatter back. Integer-array indexing and
    # item assignment are not in the array API standard, but NumPy, torch and CuPy all have them.
    b_idx, k_idx = np.nonzero(~to_numpy(constant))
    # source[i]: the run position whose score position i takes (itself unless its mask is a duplicate).
    source = _duplicate_sources(activations, b_idx, k_idx) if skip_duplicates else np.arange(b_idx.size)
    unique = source == np.arange(b_idx.size)
    scored, budget = _within_budget(activations, b_idx, k_idx, unique, max_passes)
    done = np.flatnonzero(scored)
    scores = xp.asarray(base_bk, copy=True)
    estimated = np.zeros((B, K), bool) if max_passes is not None else None
    error = np.zeros(B) if max_passes is not None else None
    if done.size:
        s_all = _scored(activations, score, b_idx, k_idx, done, source, budget, estimated, error)
        scores[xp.asarray(b_idx, device=dev), xp.asarray(k_idx, device=dev)] = s_all
    return ChannelScores(scores, constant, int(done.size), int(b_idx.size - unique.sum()), estimated, error)


def _scored(activations, score: ScoreFn, b_idx, k_idx, done, source, budget: dict, estimated, error):
    """The scores of every run position: the passes of ``done``, estimates for the rest of an
    image over budget (``estimated`` and ``error`` filled in), duplicates copied from their source."""
    xp, dev = namespace(activations), getattr(activations, "device", None)
    bi = xp.asarray(b_idx[done], device=dev)
    ki = xp.asarray(k_idx[done], device=dev)
    s_done = xp.astype(score(bi, activations[bi, ki]), activations.dtype)
    if not budget:
        slot = np.empty(b_idx.size, np.int64)
        slot[done] = np.arange(done.size)
        return s_done[xp.asarray(slot[source], device=dev)]
    # Estimates are host work on a few hundred floats, whatever the device.
    s_run = np.zeros(b_idx.size)
    s_run[done] = to_numpy(s_done)
    est_run = np.zeros(b_idx.size, bool)
    for b, (pos, feats, chosen) in budget.items():
        s_run[pos], exact, error[b] = estimate_scores(feats, chosen, s_run[pos[chosen]])
        est_run[pos] = ~exact
    estimated[b_idx, k_idx] = est_run[source]  # a duplicate of an estimated mask is estimated too
    return xp.asarray(s_run[source], dtype=activations.dtype, device=dev)


def _duplicate_sources(activations, b_idx: np.ndarray, k_idx: np.ndarray) -> np.ndarray:
    """For each run position, the first position of its image whose mask equals its own."""
    xp, dev = namespace(activations), getattr(activations, "device", None)
    source = np.arange(b_idx.size)
    for b in np.unique(b_idx):
        pos = np.flatnonzero(b_idx == b)
        source[pos] = pos[to_numpy(duplicate_masks(activations[b, xp.asarray(k_idx[pos], device=dev)]))]
    return source


def _within_budget(activations, b_idx: np.ndarray, k_idx: np.ndarray, unique: np.ndarray,
                   max_passes: int | None) -> tuple[np.ndarray, dict]:
    """(which run positions get a pass, ``{image: (positions, features, chosen)}`` of the images
    whose distinct masks exceed ``max_passes``)."""
    scored = unique.copy()
    budget = {}
    if max_passes is None:
        return scored, budget
    A_host = to_numpy(activations)
    for b in np.unique(b_idx):
        pos = np.flatnonzero((b_idx == b) & unique)
        if pos.size <= max_passes:
            continue
        maps = A_host[b, k_idx[pos]]
        feats = mask_features(maps)
        chosen = choose_channels(feats, np.abs(maps).sum(axis=(1, 2)), max_passes)
        scored[pos] = False
        scored[pos[chosen]] = True
        budget[int(b)] = (pos, feats, chosen)
    return scored, budget


@dataclass
class Fusion:
    """AMU + AMS results for B images, arrays of the inputs' library.

    denoising ``D``, region ``R``, de_region ``DR``, cam: (B, H, W) in [0, 1];
    beta_denoising, beta_region, beta_de_region: (B,); selected: (B,) bool, True = ``DR``.
    """

    cam: Any
    denoising: Any
    region: Any
    de_region: Any
    beta_denoising: Any
    beta_region: Any
    beta_de_region: Any
    selected: Any


def union_select(L_den, L_reg, size, base, score: ScoreFn) -> Fusion:
    """AMU (eqs. 4-6) and AMS (eqs. 7-8): three masked passes per image.

    ``D = N(L_den)``, ``R = N(L_reg)``; ``beta_den = p_c(D*I0) - b``, ``beta_reg = p_c(R*I0) - b``;
    ``DR = minmax(beta_den*D + beta_reg*R)``; ``beta_dr = p_c(DR*I0) - b``; the map is ``DR`` if
    ``beta_dr > beta_reg`` (strictly: a tie keeps ``R``), else ``R``.

    Args:
        L_den, L_reg: (B, h, w) denoised and region maps.
        size: (H, W) of the images.
        base: (B,) ``b = p_c(Ib)``.
        score: the path's scoring callable; it receives (H, W) maps in [0, 1], on which its ``N``
            is the identity.

    Returns:
        :class:`Fusion`.
    """
    xp = namespace(L_den, L_reg)
    B = L_den.shape[0]
    dev = getattr(L_den, "device", None)
    D = normalized(L_den, size)
    R = normalized(L_reg, size)
    rows = xp.arange(B, device=dev)
    base = xp.astype(base, D.dtype)
    s = xp.astype(score(xp.concat([rows, rows]), xp.concat([D, R])), D.dtype)
    beta_den, beta_reg = s[:B] - base, s[B:] - base
    DR = minmax(beta_den[:, None, None] * D + beta_reg[:, None, None] * R)
    beta_dr = xp.astype(score(rows, DR), D.dtype) - base
    pick = beta_dr > beta_reg  # strict: a tie keeps R
    cam = xp.where(pick[:, None, None], DR, R)
    return Fusion(cam, D, R, DR, beta_den, beta_reg, beta_dr, pick)
