"""``Explainer``: UnionCAM around the exported graphs, torch-free, low latency.

The method's algebra is :mod:`unioncam.algebra` (NumPy arrays here); this module only runs the
graphs: one gradient pass, the masked passes the algebra asks for, in calls of ``batch_size`` maps.
"""
from __future__ import annotations

import dataclasses
from pathlib import Path

import numpy as np

from unioncam import algebra, pipeline
from unioncam.artifacts import GRADIENT_ONNX, MASKED_ONNX, Manifest
from unioncam.errors import ArtifactError, InvalidInputError, RunnerStateError
from unioncam.explanation import Explanation
from unioncam.graph_identity import check_export
from unioncam.validation import (
    BLACK_SCORE_TOLERANCE,
    PRECISION_GRAPH,
    check_batch_ceiling,
    check_batch_size,
    check_classes,
    check_images,
    check_max_passes,
    check_method,
    check_ort_options,
    check_precision,
    check_provider_options,
    check_theta,
    check_threads,
)

from .backends import backend_info
from .passes import RunnerPasses
from unioncam.settings import DEFAULTS, UNSET

#: Images per gradient call: one, so that the gradient session sees one shape whatever the batch.
GRADIENT_BATCH = 1


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
        precision: ``"fp32"`` (default: the exported graph; on a GPU with TF32 off, so that the spec's
            tolerances hold), ``"tf32"`` (GPU only: the same graph with TensorFloat-32 convolutions),
            or ``"fp16"`` / ``"int8"`` where ``unioncam export --precision`` added that variant
            (docs/budgets.md, "Latency budgets"). The 3 fusion passes always run the FP32 graph, TF32 off.
        provider_options: ONNX Runtime CUDA provider options, ``{"cudnn_conv_algo_search": "HEURISTIC"}``
            or ``"cudnn_conv_algo_search=HEURISTIC,enable_cuda_graph=1"`` (keys in
            :data:`unioncam.validation.PROVIDER_OPTIONS`); device ``cuda`` or ``tensorrt`` only.
        buffers: TensorRT device buffers, ``"auto"`` (cuda-python; torch only if the process has
            already imported it), ``"cuda-python"`` or ``"torch"``.

    Calls are thread-safe: the state after construction is read-only, ONNX Runtime sessions accept
    concurrent runs, and the TensorRT runner serialises its execution context. ``close()`` (or the
    ``with`` block's end) releases the sessions and device memory; a later call raises
    :class:`unioncam.RunnerStateError` saying so.
    """

    def __init__(self, artifact_dir: str | Path, *, backend: str = "onnxruntime", device: str = "cpu",
                 batch_size: int | None = None, theta: float = DEFAULTS.theta, skip_constant: bool = True,
                 skip_duplicates: bool = True, max_passes: int | None = None, threads: int | None = None,
                 progress: bool = False, method: str = "unioncam", buffers: str = "auto", precision: str = "fp32",
                 session_options=None, provider_options=None):
        self.directory = Path(artifact_dir)
        self.theta = check_theta(theta)
        self.method = check_method(method)
        if batch_size is not None:
            check_batch_size(batch_size)
        if threads is not None:
            check_threads(threads)
        self.manifest = Manifest.load(self.directory)
        if batch_size is not None:
            check_batch_ceiling(batch_size, self.manifest.input_size, device)
        self.manifest.verify(self.directory)
        self.skip_constant = bool(skip_constant)
        self.skip_duplicates = bool(skip_duplicates)
        self.max_passes = check_max_passes(max_passes, skip_constant=self.skip_constant)
        self.backend, self.device = backend, device
        self.progress = progress
        self.precision = check_precision(precision, device)
        masked = self.manifest.masked_graph(self.directory, self.precision)
        try:
            check_export(self.directory, self.manifest, [GRADIENT_ONNX, masked, MASKED_ONNX])
        except ArtifactError as e:
            raise ArtifactError(f"{self.directory}: {e}") from None
        self.session_options = check_ort_options(session_options)
        self.provider_options = check_provider_options(provider_options, device)
        info = backend_info(backend)
        self._runners = self._open_runners(info, masked, threads=threads, buffers=buffers)
        grad, region, fusion = self._runners[:3]
        self.batch_size = min(batch_size or info.default_batch.get(device, 16), region.max_batch or 1 << 30)
        self.passes = RunnerPasses(grad, region, fusion, num_classes=self.manifest.num_classes,
                                   input_size=self.manifest.input_size, feature_size=self.manifest.feature_size,
                                   batch_size=self.batch_size,
                                   gradient_batch=min(GRADIENT_BATCH, grad.max_batch or 1 << 30),
                                   tail=self._runners[3] if len(self._runners) > 3 else None,
                                   describe={"backend": backend, "device": device, "precision": self.precision,
                                             "batch_size": self.batch_size, **({"provider_options": self.provider_options}
                                                                               if self.provider_options else {})})
        try:
            self._check_graphs_match_manifest()
            self.black_probs = self.passes.black_probs()
            self.passes.check_masked_graphs(region_tolerance=BLACK_SCORE_TOLERANCE[PRECISION_GRAPH[self.precision]])
            if device != "cpu":
                # The convolution-algorithm search of each session's one shape runs here, at
                # load time, not inside the first explanation.
                self.passes.warm_up()
        except ArtifactError as e:
            self.close()
            raise ArtifactError(f"{self.directory}: {e}") from None
        except BaseException:
            self.close()
            raise

    def _open_runners(self, info, masked: str, *, threads, buffers) -> list:
        """The sessions, activated: three, each with one call shape (see runtime/passes.py), and on
        the CPU a fourth for the remainder of each image's channel passes, one map a call (no pass
        wasted on padding). The fusion passes decide the betas and AMS's selection: their own
        session of the FP32 graph, TF32 off, whatever the precision of the other passes (measured:
        INT8 fusion passes flip selections)."""
        options = {"threads": threads, "buffers": buffers, "session_options": self.session_options}
        if self.provider_options:
            options["provider_options"] = self.provider_options

        def make(graph: str, tf32: bool):
            extra = {"tf32": True} if tf32 else {}
            return info.make_runner(self.directory, graph, device=self.device, manifest=self.manifest, **options,
                                    **extra)

        tf32 = self.precision == "tf32"
        runners = [make(GRADIENT_ONNX, tf32), make(masked, tf32), make(MASKED_ONNX, False)]
        if self.device == "cpu":
            runners.append(make(masked, False))
        active = []
        try:
            for runner in runners:
                runner.activate()
                active.append(runner)
        except BaseException:
            for runner in active:
                runner.deactivate()
            raise
        return runners

    #: The settings keys :meth:`from_settings` reads (a report's "settings", a bench cell's spec).
    SETTINGS = ("backend", "device", "batch_size", "theta", "max_passes", "method", "precision", "threads",
                "ort_options", "provider_options")

    @classmethod
    def from_settings(cls, artifact_dir: str | Path, settings: dict, **overrides) -> Explainer:
        """An Explainer from a settings dict (the CLI's report settings, a bench cell, a Ray worker's):
        the keys in :data:`SETTINGS` that are present and not None, then ``overrides``."""
        names = {"ort_options": "session_options"}
        kwargs = {names.get(k, k): settings[k] for k in cls.SETTINGS if settings.get(k) is not None}
        kwargs.update(overrides)
        return cls(artifact_dir, **kwargs)

    @property
    def grad_batch(self) -> int:
        """Images per gradient call (a TensorRT engine's profile may allow fewer than a batch)."""
        return self.passes.gradient_batch

    @grad_batch.setter
    def grad_batch(self, value: int) -> None:
        self.passes.gradient_batch = check_batch_size(value)

    @property
    def _masked(self):
        """The channel passes' runner (the precision variant's session)."""
        return self.passes.runners["region"]

    def _check_graphs_match_manifest(self) -> None:
        """The graphs' static input sizes are the manifest's: a manifest edited apart from its graphs
        is refused here, not by an obscure error at the first call."""
        H, W = self.manifest.input_size
        for runner in self._runners:
            _, shape = runner.inputs.get("image", ("float32", (None, 3, H, W)))
            if len(shape) != 4 or any(s is not None and s != v for s, v in zip(shape[1:], (3, H, W))):
                raise ArtifactError(f"{runner.name} takes images of shape {shape}, the manifest says (B, 3, {H}, {W}); "
                                    "re-export the model")

    def __call__(self, images: np.ndarray, class_idx=None, method: str | None = None, *, theta: float | None = None,
                 max_passes=UNSET) -> Explanation:
        """Explain (B, 3, H, W) float32 images in [0, 1]; same fields and definitions as the eager reference.

        ``method``: ``"unioncam"`` (default: the constructor's), or a baseline from the same passes:
        ``"gradcam"``, ``"gradcampp"``, ``"xgradcam"`` (gradient pass only), ``"scorecam"`` (region map).
        ``theta`` and ``max_passes`` override the constructor's for this call (``max_passes=None``:
        exact); the sessions are the same, so a server can honour them per request.
        """
        method = check_method(method or self.method)
        self._check_open()
        images = check_images(images, library="numpy", size=self.manifest.input_size)
        options = self.options
        if theta is not None:
            options = dataclasses.replace(options, theta=check_theta(theta))
        if max_passes is not UNSET:
            options = dataclasses.replace(options, max_passes=check_max_passes(max_passes,
                                                                             skip_constant=self.skip_constant))
        return pipeline.explain(self.passes, images, class_idx, method, options)

    def explain_methods(self, images: np.ndarray, methods, class_idx=None) -> dict[str, Explanation]:
        """Several methods on the same images from one set of passes (:func:`unioncam.pipeline.explain_methods`):
        UnionCAM with every baseline costs one UnionCAM explanation. Returns {method: Explanation},
        each equal to that method run alone; its ``timings_ms["total"]`` is what it costs alone."""
        methods = [check_method(m) for m in methods]
        self._check_open()
        images = check_images(images, library="numpy", size=self.manifest.input_size)
        return pipeline.explain_methods(self.passes, images, class_idx, methods, self.options)

    @property
    def options(self) -> pipeline.PassOptions:
        return pipeline.PassOptions(theta=self.theta, skip_constant=self.skip_constant,
                                    skip_duplicates=self.skip_duplicates, max_passes=self.max_passes,
                                    progress=self.progress)

    def probabilities(self, images: np.ndarray) -> np.ndarray:
        """Softmax probabilities (B, C) of (B, 3, H, W) images in [0, 1], in batches (gradient graph)."""
        self._check_open()
        images = check_images(images, library="numpy", size=self.manifest.input_size)
        gp = pipeline.run_gradient(self.passes, images, np.full(images.shape[0], -1, np.int64), gradients=False)
        return algebra.softmax(gp.logits.astype(np.float32))

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
        B, M = maps.shape[:2]
        index = np.repeat(np.arange(B), M)
        flat = maps.reshape(B * M, *maps.shape[2:])
        return pipeline.score_maps(self.passes, images, index, flat, classes, stage="fusion").reshape(B, M)

    def _check_open(self) -> None:
        if not all(r.is_active for r in self._runners):
            raise RunnerStateError(f"this Explainer on {self.directory} was closed; create a new one to explain more images")

    def close(self) -> None:
        """Release the sessions or engines and their device memory. Idempotent."""
        for runner in getattr(self, "_runners", []):
            runner.deactivate()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()
