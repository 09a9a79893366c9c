"""Faithfulness metrics of CAMs, in NumPy (torch-free), with batched model calls.

- Average Drop / Average Increase (Chattopadhay et al., 2018), as the UnionCAM paper uses them:
  ``y_c`` = class score on the image, ``o_c`` = class score on the image multiplied by the map;
  Average Drop = mean over images of ``max(0, y_c - o_c) / y_c * 100``; Average Increase =
  percentage of images with ``o_c > y_c``. Scores are softmax probabilities.
- Insertion / deletion AUC (Petsiuk et al., 2018): pixels are ranked by map value (highest first,
  ties by raster order); deletion sets them to black, insertion copies them from the image onto a
  blurred copy (Gaussian, kernel 11, sigma 5), in ``steps`` equal steps (``steps + 1`` images, from
  nothing changed to all pixels changed); the AUC is the trapezoid area under the class score
  against the changed fraction in [0, 1]. Higher insertion and lower deletion are better.
"""
from __future__ import annotations

from typing import Callable

import cv2
import numpy as np

from .errors import InvalidInputError

#: (N, 3, H, W) float32 images in [0, 1] -> (N, C) softmax probabilities.
Predict = Callable[[np.ndarray], np.ndarray]


def average_drop(y: np.ndarray, o: np.ndarray) -> float:
    """Mean of ``max(0, y - o) / y`` over images, in percent. y, o: (N,) class scores, y > 0."""
    y, o = np.asarray(y, np.float64), np.asarray(o, np.float64)
    if y.shape != o.shape or y.size == 0 or (y <= 0).any():
        raise InvalidInputError("average_drop needs equal-length, non-empty y and o with y > 0")
    return float(np.mean(np.maximum(0.0, y - o) / y) * 100.0)


def average_increase(y: np.ndarray, o: np.ndarray) -> float:
    """Percentage of images whose score rises when only the map's region is kept (``o > y``)."""
    y, o = np.asarray(y, np.float64), np.asarray(o, np.float64)
    if y.shape != o.shape or y.size == 0:
        raise InvalidInputError("average_increase needs equal-length, non-empty y and o")
    return float(np.mean(o > y) * 100.0)


def blurred(image: np.ndarray) -> np.ndarray:
    """The insertion baseline: Gaussian blur (kernel 11, sigma 5) of a (3, H, W) image."""
    hwc = np.ascontiguousarray(image.transpose(1, 2, 0))
    return cv2.GaussianBlur(hwc, (11, 11), 5.0, borderType=cv2.BORDER_REFLECT_101).transpose(2, 0, 1).astype(np.float32)


def perturbation_curve(predict: Predict, image: np.ndarray, cam: np.ndarray, class_idx: int, *, mode: str,
                       steps: int = 32, batch_size: int = 16) -> np.ndarray:
    """Class scores along the insertion or deletion path: (steps + 1,) float.

    Args:
        image: (3, H, W) float32 in [0, 1]; cam: (H, W) map (any range, only its order counts).
        mode: ``"deletion"`` (towards black) or ``"insertion"`` (from the blurred image).
    """
    if mode not in ("insertion", "deletion"):
        raise InvalidInputError(f"mode must be 'insertion' or 'deletion', got {mode!r}")
    if cam.shape != image.shape[1:]:
        raise InvalidInputError(f"cam {cam.shape} and image {image.shape[1:]} differ in size")
    if steps < 1:
        raise InvalidInputError(f"steps must be >= 1, got {steps}")
    n = cam.size
    order = np.argsort(-cam.ravel(), kind="stable")
    rank = np.empty(n, np.int64)
    rank[order] = np.arange(n)
    start, end = (image, np.zeros_like(image)) if mode == "deletion" else (blurred(image), image)
    counts = np.round(np.linspace(0, n, steps + 1)).astype(np.int64)
    scores = []
    for s in range(0, steps + 1, batch_size):
        chunk = counts[s:s + batch_size]
        changed = (rank[None, :] < chunk[:, None]).reshape(len(chunk), 1, *cam.shape)
        batch = np.where(changed, end[None], start[None]).astype(np.float32)
        scores.append(predict(batch)[:, class_idx])
    return np.concatenate(scores)


def auc(curve: np.ndarray) -> float:
    """Trapezoid area under a curve sampled at equal steps over [0, 1]."""
    curve = np.asarray(curve, np.float64)
    if curve.size < 2:
        raise InvalidInputError("a curve needs at least 2 points")
    return float(((curve[1:] + curve[:-1]) / 2.0).sum() / (curve.size - 1))


def insertion_deletion(predict: Predict, image: np.ndarray, cam: np.ndarray, class_idx: int, *, steps: int = 32
                       ) -> tuple[float, float]:
    """(insertion AUC, deletion AUC) of one map."""
    ins = auc(perturbation_curve(predict, image, cam, class_idx, mode="insertion", steps=steps))
    dele = auc(perturbation_curve(predict, image, cam, class_idx, mode="deletion", steps=steps))
    return ins, dele


def mean_ci95(values) -> tuple[float, float | None]:
    """(mean, half-width of the 95% t-interval) of a sample; None for the half-width if n < 2."""
    v = np.asarray(values, np.float64)
    v = v[np.isfinite(v)]
    if v.size == 0:
        return float("nan"), None
    if v.size < 2:
        return float(v.mean()), None
    # Two-sided 97.5% Student-t quantiles for 1..30 degrees of freedom, then the normal's.
    t = [12.706, 4.303, 3.182, 2.776, 2.571, 2.447, 2.365, 2.306, 2.262, 2.228, 2.201, 2.179, 2.160, 2.145,
         2.131, 2.120, 2.110, 2.101, 2.093, 2.086, 2.080, 2.074, 2.069, 2.064, 2.060, 2.056, 2.052, 2.048, 2.045, 2.042]
    df = v.size - 1
    q = t[df - 1] if df <= 30 else 1.96
    return float(v.mean()), float(q * v.std(ddof=1) / np.sqrt(v.size))


def format_interval(mean: float, half_width: float | None) -> str:
    """One rule for every number in ``metrics.md``: the half-width of the 95% interval to 2
    significant figures and the mean to the same decimal place (``37 ± 82``, ``0.39 ± 0.72``);
    without an interval (one image) the mean to 3 significant figures."""
    import math

    if mean != mean:  # NaN: no values
        return "n/a"
    if half_width is None or half_width == 0 or not math.isfinite(half_width):
        return f"{mean:.3g}"
    decimals = max(0, 1 - int(math.floor(math.log10(abs(half_width)))))
    return f"{mean:.{decimals}f} ± {half_width:.{decimals}f}"
