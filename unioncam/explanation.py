"""The result of an explanation. Torch-free: the runtime returns the same object as the eager reference."""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np

SELECTED_DE_REGION = "de_region"
SELECTED_REGION = "region"
#: Methods every path implements: UnionCAM and the baselines that fall out of its pipeline.
METHODS = ("unioncam", "gradcam", "gradcampp", "xgradcam", "scorecam")


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
