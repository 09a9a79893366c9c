"""``Explainer``: UnionCAM around the exported graphs, torch-free, low latency.

The method's algebra is :mod:`unioncam.algebra` (NumPy arrays here); this module only runs the
graphs: one gradient pass, the masked passes the algebra asks for, in calls of ``batch_size`` maps.
"""
from __future__ import annotations

import time
from pathlib import Path

import numpy as np

from unioncam import algebra
from unioncam.artifacts import MASKED_ONNX, Manifest
from unioncam.explanation import Explanation
from unioncam.errors import ArtifactError, InvalidInputError, RunnerStateError
from unioncam.validation import (check_batch_size, check_classes, check_images, check_max_passes, check_method,
                                 check_ort_options, check_positive_int, check_precision, check_theta)

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
        skip_duplicates: one pass per distinct mask of an image (exact: an equal ``minmax(A_k)`` is an
            equal mask, so an equal score; on by default, as inside ``unioncam.onnx``).
        max_passes: at most this many masked passes per image for the region map, the rest of the
            channels' scores estimated (:mod:`unioncam.algebra.budget`; the error bound and estimate
            are in ``Explanation.stats``). None (default) is exact.
        threads: ONNX Runtime intra-op threads (None: all cores).
        session_options: ONNX Runtime session options, ``{"opt": "extended", "spin": "0", ...}`` or
            ``"opt=extended,spin=0"`` (keys in :data:`unioncam.validation.ORT_OPTIONS`, or ONNX
            Runtime's own ``session.*`` config keys). None: graph optimisation "all", spinning on.
        progress: show a progress bar over masked passes.
        method: default method of calls (``"unioncam"``; baselines: see ``__call__``).
        precision: the masked passes' graph: ``"fp32"`` (default, the export), or ``"fp16"`` /
            ``"int8"`` where ``unioncam export --precision`` added that variant (README, "Latency budgets").
        buffers: TensorRT device buffers, ``"auto"`` (cuda-python; torch only if the process has
            already imported it), ``"cuda-python"`` or ``"torch"``.

    Calls are thread-safe: the state after construction is read-only, ONNX Runtime sessions accept
    concurrent runs, and the TensorRT runner serialises its execution context. ``close()`` (or the
    ``with`` block's end) releases the sessions and device memory; a later call raises
    :class:`unioncam.RunnerStateError` saying so.
    """

    def __init__(self, artifact_dir: str | Path, *, backend: str = "onnxruntime", device: str = "cpu",
                 batch_size: int | None = None, theta: float = 10.0, skip_constant: bool = True,
                 skip_duplicates: bool = True, max_passes: int | None = None, threads: int | None = None,
                 progress: bool = False, method: str = "unioncam", buffers: str = "auto", precision: str = "fp32",
                 session_options=None):
        self.directory = Path(artifact_dir)
        self.theta = check_theta(theta)
        self.method = check_method(method)
        if batch_size is not None:
            check_batch_size(batch_size)
        if threads is not None:
            check_positive_int(threads, "threads")
        self.manifest = Manifest.load(self.directory)
        self.manifest.verify(self.directory)
        self.skip_constant = bool(skip_constant)
        self.skip_duplicates = bool(skip_duplicates)
        self.max_passes = check_max_passes(max_passes, skip_constant=self.skip_constant)
        self.backend, self.device = backend, device
        self.progress = progress
        self.precision = check_precision(precision)
        masked = self.manifest.masked_graph(self.directory, self.precision)
        self.session_options = check_ort_options(session_options)
        self._grad, self._masked = make_runners(backend, device, self.directory, self.manifest, threads=threads,
                                                buffers=buffers, masked=masked, session_options=self.session_options)
        # The 3 fusion passes decide the betas and AMS's selection: they stay on the FP32 graph,
        # whatever the precision of the channel passes (measured: INT8 fusion passes flip selections).
        self._fusion = self._masked
        if masked != MASKED_ONNX:
            _, self._fusion = make_runners(backend, device, self.directory, self.manifest, threads=threads,
                                           buffers=buffers, session_options=self.session_options)
        self._runners = list(dict.fromkeys([self._grad, self._masked, self._fusion]))
        active = []
        try:
            for runner in self._runners:
                runner.activate()
                active.append(runner)
        except BaseException:
            for runner in active:
                runner.deactivate()
            raise
        limit = self._masked.max_batch or 1 << 30
        self.batch_size = min(batch_size or DEFAULT_BATCH.get(device, 16), limit)
        self.grad_batch = self._grad.max_batch or 1 << 30
        H, W = self.manifest.input_size
        # p_c(Ib) for every class at once: the black image's softmax, one pass, cached.
        try:
            self._check_graphs_match_manifest()
            black = self._grad.infer({"image": np.zeros((1, 3, H, W), np.float32), "class_idx": np.zeros(1, np.int64)})
            if black["logits"].shape != (1, self.manifest.num_classes):
                raise ArtifactError(f"{self.directory}: the gradient graph gives {black['logits'].shape[1]} classes, the "
                                    f"manifest says {self.manifest.num_classes}; re-export the model")
        except BaseException:
            self.close()
            raise
        self.black_probs = algebra.softmax(black["logits"][0].astype(np.float32))

    def _check_graphs_match_manifest(self) -> None:
        """The graphs' static input sizes are the manifest's: a manifest edited apart from its graphs
        is refused here, not by an obscure error at the first call."""
        H, W = self.manifest.input_size
        for runner in self._runners:
            _, shape = runner.inputs.get("image", ("float32", (None, 3, H, W)))
            if len(shape) != 4 or any(s is not None and s != v for s, v in zip(shape[1:], (3, H, W))):
                raise ArtifactError(f"{runner.name} takes images of shape {shape}, the manifest says (B, 3, {H}, {W}); "
                                    "re-export the model")

    # -- passes -----------------------------------------------------------------------------
    def _gradient(self, images, classes):
        outs = [self._grad.infer({"image": images[s:s + self.grad_batch], "class_idx": classes[s:s + self.grad_batch]})
                for s in range(0, images.shape[0], self.grad_batch)]
        logits, A, G = (np.concatenate([o[k] for o in outs]) for k in ("logits", "activations", "gradients"))
        if not (np.isfinite(logits).all() and np.isfinite(A).all() and np.isfinite(G).all()):
            raise InvalidInputError("the model produced NaN or Inf for this input; check the model and its weights")
        return logits, A, G

    def _scores(self, image_dev, maps: np.ndarray, cls: int, bar=None, runner=None) -> np.ndarray:
        """p_c(N(map) * image) for (M, h, w) maps of one image, in calls of ``batch_size`` maps, on
        ``runner`` (default: the channel passes' graph)."""
        runner = runner or self._masked
        out = np.empty(maps.shape[0], np.float32)
        c = np.array([cls], np.int64)
        for s in range(0, maps.shape[0], self.batch_size):
            chunk = np.ascontiguousarray(maps[None, s:s + self.batch_size], dtype=np.float32)
            out[s:s + chunk.shape[1]] = runner.infer({"image": image_dev, "maps": chunk, "class_idx": c})["scores"][0]
            if bar is not None:
                bar.update(chunk.shape[1])
        return out

    def _scorer(self, devs, classes, bar=None, runner=None):
        """The algebra's scoring callable: the graph takes one image per call, so pairs are grouped
        by image (each image stays resident on the device across its calls)."""
        def score(image_index: np.ndarray, maps: np.ndarray) -> np.ndarray:
            out = np.empty(image_index.shape[0], np.float32)
            for b in np.unique(image_index):
                pos = np.flatnonzero(image_index == b)
                out[pos] = self._scores(devs[b], maps[pos], int(classes[b]), bar, runner)
            return out

        return score

    def __call__(self, images: np.ndarray, class_idx=None, method: str | None = None) -> Explanation:
        """Explain (B, 3, H, W) float32 images in [0, 1]; same fields and definitions as the eager reference.

        ``method``: ``"unioncam"`` (default: the constructor's), or a baseline from the same passes:
        ``"gradcam"``, ``"gradcampp"``, ``"xgradcam"`` (gradient pass only), ``"scorecam"`` (region map).
        """
        t_all = time.perf_counter()
        method = check_method(method or self.method)
        self._check_open()
        H, W = self.manifest.input_size
        images = check_images(images, library="numpy", size=(H, W))
        B = images.shape[0]
        requested = check_classes(class_idx, B, self.manifest.num_classes)
        requested = np.full(B, -1, np.int64) if requested is None else requested  # -1: the graph's arg-max
        timings = {}

        t = time.perf_counter()
        logits, A, G = self._gradient(images, requested)
        classes = np.where(requested < 0, logits.argmax(axis=1), requested).astype(np.int64)
        timings["gradient"] = (time.perf_counter() - t) * 1e3
        stats = {"channels": int(A.shape[1]), "backend": self.backend, "device": self.device,
                 "precision": self.precision}

        def baseline(L, extra):
            timings["total"] = (time.perf_counter() - t_all) * 1e3
            return Explanation.from_map(method, algebra.normalized(L, (H, W)), logits=logits, class_idx=classes,
                                        timings_ms=timings, stats={**stats, **extra})

        if method in algebra.GRADIENT_WEIGHTS:
            return baseline(algebra.weighted_map(A, algebra.GRADIENT_WEIGHTS[method](A, G)), {})

        t = time.perf_counter()
        base = self.black_probs[classes]
        devs = [self._masked.to_device(images[b:b + 1]) for b in range(B)]
        bar = None
        if self.progress:
            from tqdm.auto import tqdm

            bar = tqdm(total=algebra.passes_needed(A, skip_constant=self.skip_constant, max_passes=self.max_passes),
                       desc="masked passes", unit="pass", delay=1.0, leave=False)
        try:
            cs = algebra.channel_scores(A, base, self._scorer(devs, classes, bar), skip_constant=self.skip_constant,
                                        skip_duplicates=self.skip_duplicates, max_passes=self.max_passes)
        finally:
            if bar is not None:
                bar.close()
        L_reg = algebra.region_map(A, cs.scores)
        timings["region"] = (time.perf_counter() - t) * 1e3
        counts = {"constant_channels": int(cs.constant.sum()), "duplicate_channels": cs.duplicates,
                  **algebra.budget_stats(A, cs)}
        if method == "scorecam":
            return baseline(L_reg, {**counts, "masked_passes": cs.passes})

        t = time.perf_counter()
        L_den = algebra.denoised_map(A, G, self.theta)
        if self._fusion is not self._masked:
            devs = [self._fusion.to_device(images[b:b + 1]) for b in range(B)]
        fusion = algebra.union_select(L_den, L_reg, (H, W), base, self._scorer(devs, classes, runner=self._fusion))
        timings["fusion"] = (time.perf_counter() - t) * 1e3
        timings["total"] = (time.perf_counter() - t_all) * 1e3
        return Explanation.from_fusion(
            fusion, logits=logits, class_idx=classes, timings_ms=timings,
            stats={**stats, **counts, "masked_passes": cs.passes + 3 * B, "batch_size": self.batch_size})

    def probabilities(self, images: np.ndarray) -> np.ndarray:
        """Softmax probabilities (B, C) of (B, 3, H, W) images in [0, 1], in batches (gradient graph)."""
        self._check_open()
        images = check_images(images, library="numpy", size=self.manifest.input_size)
        logits, _, _ = self._gradient(images, np.full(images.shape[0], -1, np.int64))
        return algebra.softmax(logits.astype(np.float32))

    def class_scores(self, images: np.ndarray, maps: np.ndarray, class_idx) -> np.ndarray:
        """``p_c(N(map) * image)`` for (B, M, h', w') maps (or (B, h', w')) of (B, 3, H, W) images: (B, M).

        ``N`` is the spec's minmax(up(.)), the identity on maps already in [0, 1] with min 0 and max 1
        (every CAM this package returns), and 0 for a constant map.
        """
        self._check_open()
        images = check_images(images, library="numpy", size=self.manifest.input_size)
        try:
            maps = np.asarray(maps, dtype=np.float32)
        except (TypeError, ValueError) as e:
            raise InvalidInputError(f"maps must be a float array (B, M, h, w): {e}") from None
        if not np.isfinite(maps).all():
            raise InvalidInputError("maps contain NaN or Inf; give finite maps (every CAM this package returns is)")
        if maps.ndim == 3:
            maps = maps[:, None]
        if maps.ndim != 4 or maps.shape[0] != images.shape[0]:
            raise InvalidInputError(f"maps must be (B, M, h, w) with B={images.shape[0]}, got {maps.shape}")
        classes = check_classes(class_idx, images.shape[0], self.manifest.num_classes)
        if classes is None:
            raise InvalidInputError("class_scores needs the classes to score: pass class_idx")
        return np.stack([self._scores(self._fusion.to_device(images[b:b + 1]), maps[b], int(classes[b]),
                                      runner=self._fusion)
                         for b in range(images.shape[0])])

    def _check_open(self) -> None:
        if not all(r.is_active for r in self._runners):
            raise RunnerStateError(f"this Explainer on {self.directory} was closed; create a new one to explain more images")

    def close(self) -> None:
        """Release the sessions or engines and their device memory. Idempotent."""
        for runner in getattr(self, "_runners", [self._grad, self._masked]):
            runner.deactivate()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()
