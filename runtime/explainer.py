"""``Explainer``: UnionCAM around the exported graphs, torch-free, low latency."""
from __future__ import annotations

import time
from pathlib import Path

import numpy as np

from unioncam.artifacts import Manifest
from unioncam.errors import InvalidInputError
from unioncam.validation import check_theta
from unioncam.explanation import METHODS, SELECTED_DE_REGION, SELECTED_REGION, Explanation

from . import algebra
from .backends import make_runners

#: Masked passes per call when the backend does not say (measured best on a 2-core CPU: 8-16).
DEFAULT_BATCH = {"cpu": 16, "cuda": 64, "tensorrt": 64}


class Explainer:
    """UnionCAM on exported graphs: ``Explainer(dir)(images, class_idx) -> Explanation``.

    Args:
        artifact_dir: folder written by ``unioncam export`` (manifest and ONNX SHA-256 verified).
        backend: ``"onnxruntime"`` (default) or ``"tensorrt"``.
        device: ``"cpu"`` (default), ``"cuda"``, or ``"tensorrt"`` (ONNX Runtime's TensorRT provider).
        batch_size: masked passes per engine call (None: chosen from the device / engine profile).
        theta: AMD percentile in [0, 100].
        skip_constant: skip the passes of constant channels (exact: their score is ``p_c(Ib)``).
        threads: ONNX Runtime intra-op threads (None: all cores).
        progress: show a progress bar over masked passes.
        method: default method of calls (``"unioncam"``; baselines: see ``__call__``).

    Calls are thread-safe: the state after construction is read-only, ONNX Runtime sessions accept
    concurrent runs, and the TensorRT runner serialises its execution context.
    """

    def __init__(self, artifact_dir: str | Path, *, backend: str = "onnxruntime", device: str = "cpu",
                 batch_size: int | None = None, theta: float = 10.0, skip_constant: bool = True,
                 threads: int | None = None, progress: bool = False, method: str = "unioncam"):
        self.directory = Path(artifact_dir)
        self.manifest = Manifest.load(self.directory)
        self.manifest.verify(self.directory)
        self.theta = check_theta(theta)
        self.skip_constant = bool(skip_constant)
        self.backend, self.device = backend, device
        self.progress = progress
        if method not in METHODS:
            raise InvalidInputError(f"unknown method {method!r}; choose one of {', '.join(METHODS)}")
        self.method = method
        self._grad, self._masked = make_runners(backend, device, self.directory, self.manifest, threads=threads)
        self._grad.activate()
        self._masked.activate()
        limit = self._masked.max_batch or 1 << 30
        if batch_size is not None and (isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1):
            raise InvalidInputError(f"batch_size must be a positive int, got {batch_size!r}")
        self.batch_size = min(batch_size or DEFAULT_BATCH.get(device, 16), limit)
        self.grad_batch = self._grad.max_batch or 1 << 30
        H, W = self.manifest.input_size
        # p_c(Ib) for every class at once: the black image's softmax, one pass, cached.
        black = self._grad.infer({"image": np.zeros((1, 3, H, W), np.float32), "class_idx": np.zeros(1, np.int64)})
        self.black_probs = algebra.softmax(black["logits"][0].astype(np.float32))

    # -- validation -------------------------------------------------------------------------
    def _check_images(self, images) -> np.ndarray:
        H, W = self.manifest.input_size
        if not isinstance(images, np.ndarray):
            raise InvalidInputError(f"images must be a NumPy array (B, 3, {H}, {W}), got {type(images).__name__}")
        if images.ndim == 3:
            images = images[None]
        if images.ndim != 4 or images.shape[1:] != (3, H, W) or images.shape[0] == 0:
            raise InvalidInputError(f"images must have shape (B, 3, {H}, {W}) for this export, got {images.shape}")
        if images.dtype != np.float32:
            if images.dtype.kind != "f":
                raise InvalidInputError(f"images must be float32 in [0, 1], got {images.dtype}; divide uint8 by 255")
            images = images.astype(np.float32)
        if not np.isfinite(images).all():
            raise InvalidInputError("images contain NaN or Inf; clean the input before explaining it")
        lo, hi = float(images.min()), float(images.max())
        if lo < 0.0 or hi > 1.0:
            # Refused, never clipped: the eager reference refuses the same input.
            raise InvalidInputError(f"images must lie in [0, 1] (normalisation is inside the graph), got [{lo:.4g}, {hi:.4g}]")
        return np.ascontiguousarray(images)

    def _classes(self, class_idx, B: int) -> np.ndarray:
        C = self.manifest.num_classes
        if class_idx is None:
            return np.full(B, -1, np.int64)  # the graph picks the arg-max
        if isinstance(class_idx, (bool, np.bool_)):
            raise TypeError("class_idx must be None, an int or a sequence of ints, not a bool")
        if isinstance(class_idx, (int, np.integer)):
            idx = np.full(B, int(class_idx), np.int64)
        else:
            idx = np.asarray(class_idx)
            if idx.ndim != 1 or idx.shape[0] != B:
                raise InvalidInputError(f"class_idx has shape {idx.shape}; give one class per image (B={B})")
            if idx.dtype.kind not in "iu":
                raise TypeError(f"class_idx must hold integers, got {idx.dtype}")
            idx = idx.astype(np.int64)
        bad = (idx < 0) | (idx >= C)
        if bad.any():
            raise InvalidInputError(f"class index {int(idx[bad][0])} out of range: the model has {C} classes (0..{C - 1})")
        return idx

    # -- passes -----------------------------------------------------------------------------
    def _gradient(self, images, classes):
        outs = [self._grad.infer({"image": images[s:s + self.grad_batch], "class_idx": classes[s:s + self.grad_batch]})
                for s in range(0, images.shape[0], self.grad_batch)]
        logits, A, G = (np.concatenate([o[k] for o in outs]) for k in ("logits", "activations", "gradients"))
        if not (np.isfinite(logits).all() and np.isfinite(A).all() and np.isfinite(G).all()):
            raise InvalidInputError("the model produced NaN or Inf for this input; check the model and its weights")
        return logits, A, G

    def _scores(self, image_dev, maps: np.ndarray, cls: int, bar=None) -> np.ndarray:
        """p_c(N(map) * image) for (M, h, w) maps of one image, in calls of ``batch_size`` maps."""
        out = np.empty(maps.shape[0], np.float32)
        c = np.array([cls], np.int64)
        for s in range(0, maps.shape[0], self.batch_size):
            chunk = np.ascontiguousarray(maps[None, s:s + self.batch_size])
            out[s:s + chunk.shape[1]] = self._masked.infer({"image": image_dev, "maps": chunk, "class_idx": c})["scores"][0]
            if bar is not None:
                bar.update(chunk.shape[1])
        return out

    def __call__(self, images: np.ndarray, class_idx=None, method: str | None = None) -> Explanation:
        """Explain (B, 3, H, W) float32 images in [0, 1]; same fields and definitions as the eager reference.

        ``method``: ``"unioncam"`` (default: the constructor's), or a baseline from the same passes:
        ``"gradcam"``, ``"gradcampp"``, ``"xgradcam"`` (gradient pass only), ``"scorecam"`` (region map).
        """
        t_all = time.perf_counter()
        method = method or self.method
        if method not in METHODS:
            raise InvalidInputError(f"unknown method {method!r}; choose one of {', '.join(METHODS)}")
        images = self._check_images(images)
        B = images.shape[0]
        H, W = self.manifest.input_size
        requested = self._classes(class_idx, B)
        timings = {}

        t = time.perf_counter()
        logits, A, G = self._gradient(images, requested)
        classes = np.where(requested < 0, logits.argmax(axis=1), requested).astype(np.int64)
        timings["gradient"] = (time.perf_counter() - t) * 1e3
        probs = algebra.softmax(logits.astype(np.float32))[np.arange(B), classes]

        def baseline(L, stats):
            timings["total"] = (time.perf_counter() - t_all) * 1e3
            cam = np.ascontiguousarray(algebra.minmax(algebra.upsample(L, (H, W))), dtype=np.float32)
            return Explanation(cam=cam, score=probs.astype(np.float32), class_idx=classes,
                               logits=logits.astype(np.float32), method=method, timings_ms=timings,
                               stats={"channels": int(A.shape[1]), "backend": self.backend, **stats})

        if method in algebra.GRADIENT_WEIGHTS:
            return baseline(algebra.weighted_map(A, algebra.GRADIENT_WEIGHTS[method](A, G)), {})

        t = time.perf_counter()
        base = self.black_probs[classes]
        constant = algebra.constant_channels(A)
        run = ~constant if self.skip_constant else np.ones_like(constant)
        scores = np.repeat(base[:, None], A.shape[1], axis=1).astype(np.float32)
        devs = [self._masked.to_device(images[b:b + 1]) for b in range(B)]
        bar = None
        if self.progress:
            from tqdm.auto import tqdm

            bar = tqdm(total=int(run.sum()), desc="masked passes", unit="pass", delay=1.0, leave=False)
        try:
            for b in range(B):
                ks = np.flatnonzero(run[b])
                if ks.size:
                    scores[b, ks] = self._scores(devs[b], A[b, ks], int(classes[b]), bar)
        finally:
            if bar is not None:
                bar.close()
        L_reg = algebra.region_map(A, scores)
        timings["region"] = (time.perf_counter() - t) * 1e3
        if method == "scorecam":
            return baseline(L_reg, {"constant_channels": int(constant.sum()), "masked_passes": int(run.sum())})

        t = time.perf_counter()
        L_den = algebra.denoised_map(A, G, self.theta)
        D = algebra.minmax(algebra.upsample(L_den, (H, W)))
        R = algebra.minmax(algebra.upsample(L_reg, (H, W)))
        s_dr = np.stack([self._scores(devs[b], np.stack([D[b], R[b]]), int(classes[b])) for b in range(B)])
        beta_den, beta_reg = s_dr[:, 0] - base, s_dr[:, 1] - base
        DR = algebra.minmax(beta_den[:, None, None] * D + beta_reg[:, None, None] * R)
        beta_dr = np.array([self._scores(devs[b], DR[b:b + 1], int(classes[b]))[0] for b in range(B)]) - base
        pick = beta_dr > beta_reg  # strict: a tie keeps R
        cam = np.where(pick[:, None, None], DR, R)
        timings["fusion"] = (time.perf_counter() - t) * 1e3
        timings["total"] = (time.perf_counter() - t_all) * 1e3

        f32 = lambda x: np.ascontiguousarray(x, dtype=np.float32)  # noqa: E731
        return Explanation(
            cam=f32(cam), denoising=f32(D), region=f32(R), de_region=f32(DR),
            beta_denoising=f32(beta_den), beta_region=f32(beta_reg), beta_de_region=f32(beta_dr),
            score=f32(probs), class_idx=classes, selected=[SELECTED_DE_REGION if p else SELECTED_REGION for p in pick],
            logits=f32(logits), timings_ms=timings,
            stats={"channels": int(A.shape[1]), "constant_channels": int(constant.sum()),
                   "masked_passes": int(run.sum()) + 3 * B, "backend": self.backend, "device": self.device,
                   "batch_size": self.batch_size},
        )

    def probabilities(self, images: np.ndarray) -> np.ndarray:
        """Softmax probabilities (B, C) of (B, 3, H, W) images in [0, 1], in batches (gradient graph)."""
        images = self._check_images(images)
        logits, _, _ = self._gradient(images, np.full(images.shape[0], -1, np.int64))
        return algebra.softmax(logits.astype(np.float32))

    def class_scores(self, images: np.ndarray, maps: np.ndarray, class_idx) -> np.ndarray:
        """``p_c(N(map) * image)`` for (B, M, h', w') maps (or (B, h', w')) of (B, 3, H, W) images: (B, M).

        ``N`` is the spec's minmax(up(.)), the identity on maps already in [0, 1] with min 0 and max 1
        (every CAM this package returns), and 0 for a constant map.
        """
        images = self._check_images(images)
        maps = np.asarray(maps, dtype=np.float32)
        if maps.ndim == 3:
            maps = maps[:, None]
        if maps.ndim != 4 or maps.shape[0] != images.shape[0]:
            raise InvalidInputError(f"maps must be (B, M, h, w) with B={images.shape[0]}, got {maps.shape}")
        classes = self._classes(class_idx, images.shape[0])
        return np.stack([self._scores(self._masked.to_device(images[b:b + 1]), maps[b], int(classes[b]))
                         for b in range(images.shape[0])])

    def close(self) -> None:
        self._grad.deactivate()
        self._masked.deactivate()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()
