"""The result of an explanation. Torch-free: the runtime returns the same object as the eager reference."""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np

from .registry import METHODS  # noqa: F401  (re-exported: the names every path implements)

SELECTED_DE_REGION = "de_region"
SELECTED_REGION = "region"


def _f32(x) -> np.ndarray:
    from .algebra import to_numpy

    return np.ascontiguousarray(to_numpy(x), dtype=np.float32)


def _class_scores(logits, class_idx) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(logits (B, C) float32, class_idx (B,) int64, p_c(I0) (B,) float32) on the host."""
    from .algebra import softmax

    logits = _f32(logits)
    classes = np.asarray(_host(class_idx), dtype=np.int64)
    probs = softmax(logits)[np.arange(logits.shape[0]), classes]
    return logits, classes, probs.astype(np.float32)


def _host(x):
    from .algebra import to_numpy

    return to_numpy(x)


@dataclass
class Explanation:
    """UnionCAM maps and scores for a batch of B images of size (H, W).

    For the baselines (``method`` other than ``"unioncam"``) only ``cam``, ``score``, ``class_idx``
    and ``logits`` are set; the UnionCAM-specific fields are None / empty.

    Attributes:
        cam: (B, H, W) float32 in [0, 1], the method's map (for UnionCAM ``de_region`` or ``region``,
            see ``selected``).
        denoising: (B, H, W) float32 in [0, 1], ``D = N(L_den)`` (AMD).
        region: (B, H, W) float32 in [0, 1], ``R = N(L_reg)`` (Score-CAM region map).
        de_region: (B, H, W) float32 in [0, 1], ``DR = minmax(beta_den * D + beta_reg * R)`` (AMU).
        beta_denoising, beta_region, beta_de_region: (B,) float32, class-score gains over the black image.
        score: (B,) float32, ``p_c(I0)``, the softmax probability of the explained class.
        class_idx: (B,) int64, the explained class.
        selected: B strings, ``"de_region"`` or ``"region"`` (AMS).
        logits: (B, C) float32 logits of the unmasked images (used for top-k reports).
        timings_ms: wall-clock time of each stage for the whole batch, milliseconds.
        stats: counters (masked passes run, constant channels skipped, ...).
    """

    cam: np.ndarray
    score: np.ndarray
    class_idx: np.ndarray
    denoising: np.ndarray | None = None
    region: np.ndarray | None = None
    de_region: np.ndarray | None = None
    beta_denoising: np.ndarray | None = None
    beta_region: np.ndarray | None = None
    beta_de_region: np.ndarray | None = None
    selected: list[str] = field(default_factory=list)
    logits: np.ndarray | None = None
    method: str = "unioncam"
    timings_ms: dict[str, float] = field(default_factory=dict)
    stats: dict[str, Any] = field(default_factory=dict)

    @classmethod
    def from_fusion(cls, fusion, *, logits, class_idx, timings_ms: dict, stats: dict) -> "Explanation":
        """UnionCAM's result from :class:`unioncam.algebra.Fusion` arrays of any library and device,
        the logits (B, C) and the explained classes (B,)."""
        logits, classes, probs = _class_scores(logits, class_idx)
        selected = _host(fusion.selected)
        return cls(
            cam=_f32(fusion.cam), denoising=_f32(fusion.denoising), region=_f32(fusion.region),
            de_region=_f32(fusion.de_region), beta_denoising=_f32(fusion.beta_denoising),
            beta_region=_f32(fusion.beta_region), beta_de_region=_f32(fusion.beta_de_region),
            score=probs, class_idx=classes, logits=logits,
            selected=[SELECTED_DE_REGION if bool(p) else SELECTED_REGION for p in selected],
            method="unioncam", timings_ms=timings_ms, stats=stats,
        )

    @classmethod
    def from_map(cls, method: str, cam, *, logits, class_idx, timings_ms: dict, stats: dict) -> "Explanation":
        """A baseline's result: its (B, H, W) map, the logits (B, C) and the explained classes (B,)."""
        logits, classes, probs = _class_scores(logits, class_idx)
        return cls(cam=_f32(cam), score=probs, class_idx=classes, logits=logits, method=method,
                   timings_ms=timings_ms, stats=stats)

    def __len__(self) -> int:
        return int(self.cam.shape[0])

    def __getitem__(self, i: int) -> dict[str, Any]:
        """The i-th image's fields as a dict of NumPy values (maps (H, W), scalars); unset fields are None."""
        def pick(x, cast=lambda v: v):
            return None if x is None or len(x) == 0 else cast(x[i])

        return {
            "method": self.method,
            "cam": self.cam[i],
            "denoising": pick(self.denoising),
            "region": pick(self.region),
            "de_region": pick(self.de_region),
            "beta_denoising": pick(self.beta_denoising, float),
            "beta_region": pick(self.beta_region, float),
            "beta_de_region": pick(self.beta_de_region, float),
            "score": float(self.score[i]),
            "class_idx": int(self.class_idx[i]),
            "selected": pick(self.selected),
        }
