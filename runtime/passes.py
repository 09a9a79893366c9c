"""The pipeline's passes (:class:`unioncam.pipeline.Passes`) on the runtime's runners.

Three runners, each with one fixed call shape for the whole session (a GPU session re-runs its
convolution-algorithm search at every new shape, see :mod:`unioncam.pipeline`):

- ``gradient``: (``gradient_batch``, 3, H, W) images, and the black image at construction;
- ``region``: (1, ``batch_size``, h, w) activation maps of one image (the precision variant);
- ``fusion``: (1, ``fusion_batch``, H, W) full-size maps, on the FP32 graph: the 3 fusion passes
  decide the betas and AMS's selection (measured: INT8 fusion passes flip selections);
- ``tail`` (the CPU): (1, 1, h, w), the region map's last partial chunk of each image, one map a call.
"""
from __future__ import annotations

import numpy as np

from unioncam import algebra
from unioncam.errors import ArtifactError, InvalidInputError, UnionCAMError
from unioncam.pipeline import GradientPass, run_gradient

from .backends.base import Runner

#: Maps per fusion call: AMU's two maps, then AMS's one, per image. One map per call keeps one
#: shape with no padded pass (on the CPU a padded pass costs as much as a real one).
FUSION_BATCH = 1


class RunnerPasses:
    """Passes on a gradient runner and two masked-forward runners (activated by the caller).

    Args:
        gradient, region, fusion: the runners (``region`` may be ``fusion``'s precision variant).
        num_classes, input_size, feature_size: the manifest's.
        batch_size: maps per region call; gradient_batch: images per gradient call.
        pad: pad every call to its fixed size (True in the runtime; see :mod:`unioncam.pipeline`).
        tail: a fourth runner of the region graph for the remainder, one map per call, instead of
            padding it (the CPU: a padded pass costs a real one there, a call little).
        describe: stats entries naming the path.
    """

    fusion_batch = FUSION_BATCH

    def __init__(self, gradient: Runner, region: Runner, fusion: Runner, *, num_classes: int,
                 input_size: tuple[int, int], feature_size: tuple[int, int], batch_size: int, gradient_batch: int,
                 pad: bool = True, tail: Runner | None = None, describe: dict | None = None):
        self.runners = {"gradient": gradient, "region": region, "fusion": fusion}
        if tail is not None:
            self.runners["tail"] = tail
        self.tail = tail is not None
        self.num_classes, self.input_size, self._feature_size = num_classes, tuple(input_size), tuple(feature_size)
        self.batch_size, self.gradient_batch, self.pad = batch_size, gradient_batch, pad
        self._describe = dict(describe or {})
        self._black = None

    def black_probs(self) -> np.ndarray:
        """(C,) float32 ``p_c(Ib)``: one pass on the first call, cached (it does not depend on the input)."""
        if self._black is None:
            H, W = self.input_size
            gp = run_gradient(self, np.zeros((1, 3, H, W), np.float32), np.full(1, -1, np.int64), gradients=False)
            if gp.logits.shape != (1, self.num_classes):
                raise ArtifactError(f"the gradient graph gives {gp.logits.shape[1]} classes, the manifest says "
                                    f"{self.num_classes}; re-export the model")
            self._black = algebra.softmax(gp.logits[0].astype(np.float32))
        return self._black

    def gradient(self, images: np.ndarray, requested: np.ndarray, *, gradients: bool = True) -> GradientPass:
        out = self.runners["gradient"].infer({"image": images, "class_idx": requested})
        logits, A, G = out["logits"], out["activations"], out["gradients"]
        if not (np.isfinite(logits).all() and np.isfinite(A).all() and np.isfinite(G).all()):
            raise InvalidInputError("the model produced NaN or Inf for this input; check the model and its weights")
        classes = np.where(requested < 0, logits.argmax(axis=1), requested).astype(np.int64)
        return GradientPass(logits, A, G, classes)

    def image(self, images: np.ndarray, b: int, stage: str):
        return self.runners[stage].to_device(images[b:b + 1])

    def scores(self, image, maps: np.ndarray, class_idx: int, stage: str) -> np.ndarray:
        feeds = {"image": image, "maps": np.ascontiguousarray(maps[None], dtype=np.float32),
                 "class_idx": np.array([class_idx], np.int64)}
        return self.runners[stage].infer(feeds)["scores"][0]

    def check_masked_graphs(self, *, region_tolerance: float | None) -> None:
        """The masked-forward graphs compute this model's scores, with its classes: the second line
        after the fingerprints (:func:`unioncam.graph_identity.check_export`).

        A black image scores ``p_c(Ib)`` whatever the maps, and the gradient graph gave that for
        every class: each masked graph is run once at its session's shape for the last class (a
        graph with fewer classes cannot gather it) and must agree where a bound holds: the FP32
        graph within 1e-4, a precision variant within ``region_tolerance``
        (:data:`unioncam.validation.BLACK_SCORE_TOLERANCE`; None: the class check only, as for INT8,
        whose quantisation moves scores by more than any sound bound).

        Raises:
            ArtifactError: a graph from another model or with other classes, naming both values.
        """
        H, W = self.input_size
        h, w = self._feature_size
        c = self.num_classes - 1
        want = float(self.black_probs()[c])
        image = np.zeros((1, 3, H, W), np.float32)
        stages = [("fusion", self.fusion_batch, (H, W), 1e-4),
                  ("region", self.batch_size, (h, w), region_tolerance)]
        for stage, size, shape, tol in stages:
            runner = self.runners[stage]
            try:
                got = float(self.scores(self.image(image, 0, stage), np.zeros((size, *shape), np.float32), c, stage)[0])
            except UnionCAMError:
                raise
            except Exception as e:  # the backend's own error (a Gather out of range): the graph is foreign
                first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
                raise ArtifactError(f"{runner.name} cannot score class {c} of {self.num_classes} ({first}): it is "
                                    "not this model's masked-forward graph; re-export the model") from None
            if not np.isfinite(got) or (tol is not None and not abs(got - want) <= tol):
                raise ArtifactError(f"{runner.name} is not this model's masked-forward graph: a black image scores "
                                    f"{got:.6g} for class {c} there and {want:.6g} in the gradient graph; re-export "
                                    "the model")

    def warm_up(self) -> None:
        """One call of each masked-pass session at its fixed shape (the gradient session's ran in
        :meth:`black_probs`): a GPU session searches its convolution algorithms on its first call."""
        H, W = self.input_size
        image = np.zeros((1, 3, H, W), np.float32)
        h, w = self._feature_size
        for stage, size, shape in (("region", self.batch_size, (h, w)), ("fusion", self.fusion_batch, (H, W))):
            self.scores(self.image(image, 0, stage), np.zeros((size, *shape), np.float32), 0, stage)

    def describe(self) -> dict:
        return dict(self._describe)
