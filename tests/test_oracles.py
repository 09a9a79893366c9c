"""Values the code under test did not compute: the independent implementation on both kinds of
head, AMD and the masks by hand, batches against images one at a time, near-constant channels,
and the budget estimator against simpler estimators on a score it cannot fake (issue 25)."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from independent import independent_unioncam
from tiny import NearConstantCNN, TinyCNN, TinyGAP, tiny_images
from unioncam import UnionCAM, algebra, pipeline
from unioncam.algebra.budget import choose_channels, estimate_scores, mask_features


# -- the independent implementation, on a max-pooling head and a global-average-pooling head -----
@pytest.mark.parametrize("theta", [0.0, 10.0, 50.0, 100.0])
@pytest.mark.parametrize("head", ["maxpool", "gap"])
def test_reference_matches_the_independent_implementation(head, theta):
    model = (TinyCNN() if head == "maxpool" else TinyGAP()).double()
    images = tiny_images(2, seed=11, dtype=torch.float64)
    exp = UnionCAM(model, "features.3", theta=theta, batch_size=4)(images)
    for i in range(2):
        ref = independent_unioncam(model, model.features[3], images[i:i + 1], theta, cls=int(exp.class_idx[i]))
        for key in ("denoising", "region", "de_region", "cam"):
            np.testing.assert_allclose(getattr(exp, key)[i], ref[key], atol=2e-5, err_msg=key)
        for key in ("beta_denoising", "beta_region", "beta_de_region"):
            np.testing.assert_allclose(getattr(exp, key)[i], ref[key], atol=1e-6, err_msg=key)
        assert exp.selected[i] == ref["selected"]
    if head == "gap":  # the case that needs ``G >= t``: every gradient ties with its percentile
        assert np.ptp(exp.denoising) > 0.5


# -- AMD and the masks, by hand --------------------------------------------------------------------
LIBS = [np.asarray, torch.as_tensor]


@pytest.mark.parametrize("lib", LIBS)
def test_amd_keeps_a_tie_at_a_positive_threshold(lib):
    """Constant positive gradients (a GAP head): t_k = G_k, every pixel kept, so
    L_den = sum_k (1 / (c_k * 4)) * c_k * A_k = (A_0 + A_1) / 4, at any theta."""
    A = np.array([[[[1.0, 2.0], [3.0, 4.0]], [[0.5, -1.0], [2.0, 0.0]]]])
    G = np.array([[np.full((2, 2), 0.5), np.full((2, 2), 2.0)]])
    want = np.array([[[1.5 / 4, 1.0 / 4], [5.0 / 4, 4.0 / 4]]])
    for theta in (0.0, 37.0, 100.0):
        got = algebra.to_numpy(algebra.denoised_map(lib(A), lib(G), theta))
        np.testing.assert_allclose(got, want, rtol=0, atol=1e-15, err_msg=str(theta))


@pytest.mark.parametrize("lib", LIBS)
def test_amd_with_mixed_sign_gradients(lib):
    """G = [[-1, 2], [3, -4]], theta 50: sorted (-4, -1, 2, 3), t = -1 + 0.5 * 3 = 0.5; W keeps 2 and 3
    (the negatives are below t); S = 5; L_den = (2 * A[0, 1] + 3 * A[1, 0]) / 5. A second channel
    with only negative gradients contributes nothing (S = 0)."""
    A = np.array([[[[10.0, 20.0], [30.0, 40.0]], [[7.0, 7.0], [7.0, 7.0]]]])
    G = np.array([[[[-1.0, 2.0], [3.0, -4.0]], [[-1.0, -2.0], [-3.0, -4.0]]]])
    want = np.array([[[0.0, 2 * 20.0 / 5], [3 * 30.0 / 5, 0.0]]])
    got = algebra.to_numpy(algebra.denoised_map(lib(A), lib(G), 50.0))
    np.testing.assert_allclose(got, want, rtol=0, atol=1e-12)


@pytest.mark.parametrize("lib", LIBS)
def test_minmax_and_masks_by_hand(lib):
    z = np.array([[[2.0, 4.0], [6.0, 10.0]], [[3.0, 3.0], [3.0, 3.0]]])
    np.testing.assert_allclose(algebra.to_numpy(algebra.minmax(lib(z))),
                               [[[0.0, 0.25], [0.5, 1.0]], [[0.0, 0.0], [0.0, 0.0]]], rtol=0, atol=0)
    # Same size: no resize, so the mask is minmax itself; a constant map's mask is 0.
    np.testing.assert_allclose(algebra.to_numpy(algebra.saliency_masks(lib(z), (2, 2))),
                               [[[0.0, 0.25], [0.5, 1.0]], [[0.0, 0.0], [0.0, 0.0]]], rtol=0, atol=0)


# -- near-constant channels -------------------------------------------------------------------------
@pytest.mark.parametrize("lib", LIBS)
def test_a_channel_with_a_tiny_range_is_not_constant(lib):
    z = 0.3 + 1e-6 * np.array([[[0.0, 1.0], [2.0, 4.0]]])
    assert not bool(algebra.to_numpy(algebra.constant_channels(lib(z)))[0])
    mask = algebra.to_numpy(algebra.saliency_masks(lib(z), (4, 4)))[0]
    assert mask.min() == 0.0 and mask.max() == pytest.approx(1.0, abs=1e-9)


@pytest.fixture(scope="module")
def near_constant_export(tmp_path_factory):
    from unioncam.export import export
    from unioncam.export.end_to_end import export_end_to_end

    model = NearConstantCNN()
    out = tmp_path_factory.mktemp("nearconst")
    export(model, "plant", out / "art", input_size=(32, 32))
    export_end_to_end(model, "plant", out / "e2e", input_size=(32, 32), chunk=3)
    return model, out


def test_near_constant_channels_are_scored_in_every_path(near_constant_export):
    """Channel 5's range is ~1e-6: one masked pass each in the eager reference, the runtime and
    the one graph (counted from the channels by hand, not by the code under test), and its mask
    scores as the same map stretched to range 1 (an equal mask), not as the black image."""
    from test_end_to_end import run_graph

    from unioncam.runtime import Explainer

    model, out = near_constant_export
    x = tiny_images(1, seed=3)
    with torch.no_grad():
        A = model.plant(model.features(x))[0].numpy()
    assert 0 < np.ptp(A[5]) < 1e-5
    nonconstant = sum(int(A[k].max() > A[k].min()) for k in range(6))
    eager = UnionCAM(model, "plant", skip_duplicates=True)(x)
    runtime = Explainer(out / "art")(x.numpy())
    graph = run_graph(out / "e2e" / "unioncam.onnx", x.numpy())
    assert nonconstant == 6 - eager.stats["constant_channels"]
    distinct = len({algebra.minmax(A[k]).tobytes() for k in range(6) if A[k].max() > A[k].min()})
    assert eager.stats["masked_passes"] == runtime.stats["masked_passes"] == int(graph["passes"][0]) == distinct + 3
    ex = Explainer(out / "art")
    c = int(runtime.class_idx[0])
    tiny_range = ex.class_scores(x.numpy(), A[None, 5:6], c)
    stretched = ex.class_scores(x.numpy(), ((A[5] - A[5].min()) / np.ptp(A[5]))[None, None], c)
    black = ex.class_scores(x.numpy(), np.zeros((1, 1, 8, 8), np.float32), c)
    # float32 resolves a 1e-6 range around 0.3 in ~30 steps, so the masks agree to a few per cent:
    # far nearer the stretched map's score than the black image's.
    t, s, b = float(tiny_range[0, 0]), float(stretched[0, 0]), float(black[0, 0])
    assert abs(t - s) < abs(s - b) / 10, (t, s, b)


# -- batches are independent --------------------------------------------------------------------------
class PlantedPasses:
    """Passes whose activations are planted per image and whose score depends on the image as well
    as the mask: image b's score of mask M is ``(b + 1) / 4 * mean(M)``, a value written here."""

    num_classes, fusion_batch, gradient_batch, pad = 3, 3, None, False

    def __init__(self, A: np.ndarray, batch_size: int = 4):
        self.A, self.batch_size = A, batch_size

    def gradient(self, images, requested, *, gradients=True):
        idx = [int(i) for i in images[:, 0, 0, 0]]  # each image carries its index in a pixel
        A = self.A[idx]
        return pipeline.GradientPass(np.zeros((len(idx), 3)), A, np.ones_like(A), np.zeros(len(idx), np.int64))

    def black_probs(self):
        return np.array([0.1, 0.2, 0.3])

    def image(self, images, b, stage):
        return int(images[b, 0, 0, 0])

    def scores(self, image, maps, class_idx, stage):
        masks = algebra.saliency_masks(maps, (4, 4))
        return (image + 1) / 4 * masks.reshape(masks.shape[0], -1).mean(1)

    def describe(self):
        return {}


def _batch_of(indices):
    x = np.zeros((len(indices), 3, 4, 4))
    x[:, 0, 0, 0] = indices
    return x


@pytest.mark.parametrize("skip_duplicates", [False, True])
@pytest.mark.parametrize("max_passes", [None, 2])
def test_two_images_sharing_a_one_hot_mask_equal_each_alone(skip_duplicates, max_passes):
    """Image 0 and image 1 both have a channel with the same one-hot mask (at different channel
    positions): each keeps its own score, in a batch as alone, with and without the duplicate skip
    and the budget."""
    g = np.random.default_rng(5)
    A = g.random((2, 5, 4, 4))
    onehot = np.zeros((4, 4))
    onehot[1, 2] = 1.0
    A[0, 1], A[1, 3] = onehot, onehot * 4.0
    A[1, 0] = A[1, 3]  # and a duplicate inside image 1
    passes = PlantedPasses(A)
    options = pipeline.PassOptions(skip_duplicates=skip_duplicates, max_passes=max_passes)
    both = pipeline.explain(passes, _batch_of([0, 1]), None, "scorecam", options)
    for b in range(2):
        alone = pipeline.explain(passes, _batch_of([b]), None, "scorecam", options)
        np.testing.assert_allclose(both.cam[b], alone.cam[0], rtol=0, atol=1e-7)
    if max_passes is None:
        # The one-hot channel's score by hand: mean of the one-hot mask upsampled to 4x4 is 1/16.
        cs = algebra.channel_scores(A, np.array([0.1, 0.1]), lambda i, m: np.array(
            [passes.scores(int(b), m[j:j + 1], 0, "region")[0] for j, b in enumerate(i)]),
            skip_duplicates=skip_duplicates)
        assert cs.scores[0, 1] == pytest.approx(1 / 4 / 16) and cs.scores[1, 3] == pytest.approx(2 / 4 / 16)


# -- the budget estimator, on a score it cannot fake -----------------------------------------------
def test_the_estimator_beats_nearest_only_and_mean_on_a_smooth_score():
    """A score that is a smooth function of the mask (a logistic of a fixed linear form): the
    estimator's error is below both the nearest scored mask's score and the mean of the scored."""
    g = np.random.default_rng(8)
    base = g.random((6, 7, 7))
    maps = np.concatenate([base[i % 6] + 0.6 * g.random((7, 7)) for i in range(120)])
    F = mask_features(maps.reshape(120, 7, 7))
    w = g.normal(size=F.shape[1])
    truth = 1 / (1 + np.exp(-(F @ w) / 3))
    chosen = choose_channels(F, np.abs(maps.reshape(120, -1)).sum(1), 24)
    est, _, _ = estimate_scores(F, chosen, truth[chosen])
    rest = np.setdiff1d(np.arange(120), chosen)
    d = ((F[rest, None, :] - F[None, chosen, :]) ** 2).sum(-1)
    nearest = truth[chosen][d.argmin(1)]
    mean = np.full(rest.size, truth[chosen].mean())
    err = lambda p: np.sqrt(np.mean((p - truth[rest]) ** 2))  # noqa: E731
    assert err(est[rest]) < err(nearest) and err(est[rest]) < err(mean), (err(est[rest]), err(nearest), err(mean))


def test_estimates_weigh_near_masks_more():
    """Two scored masks at squared distances 1 and 4 from a third: inverse-distance weights 1 and
    1/4 give (1 * 0.8 + 0.25 * 0.2) / 1.25 = 0.68, by hand."""
    F = np.array([[0.0, 0.0], [1.0, 0.0], [0.0, 2.0]])
    est, exact, _ = estimate_scores(F, np.array([1, 2]), np.array([0.8, 0.2]), neighbours=2)
    assert est[0] == pytest.approx(0.68) and not exact[0] and exact[1] and exact[2]


@pytest.mark.slow
def test_every_mask_scored_means_nothing_estimated_on_real_photos(lite0_artifacts, photos):
    """Real lite0 activations of two photos, each channel doubled (an exact copy of its mask): a
    budget of one pass per distinct mask scores every mask, so no channel counts as estimated and
    the error bound is 0."""
    from unioncam.runtime import Explainer

    ex = Explainer(lite0_artifacts)
    for i in range(2):
        gp = pipeline.run_gradient(ex.passes, photos[i:i + 1], np.array([-1]))
        A = np.concatenate([gp.activations, gp.activations * 2.0], axis=1).astype(np.float64)
        live = A[0][A[0].max(axis=(1, 2)) > A[0].min(axis=(1, 2))]
        distinct = len({algebra.minmax(m).tobytes() for m in live})

        def score(index, maps):
            m = mask_features(np.asarray(maps))
            return 1 / (1 + np.exp(-(m.mean(1) - 0.3) * 8))

        cs = algebra.channel_scores(A, np.array([0.01]), score, max_passes=distinct)
        assert cs.passes == distinct
        assert cs.estimated.sum() == 0, cs.estimated.sum()
        assert algebra.budget_stats(A, cs)["region_error_bound"] == [0.0]
