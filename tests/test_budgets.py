"""Latency budgets (``max_passes``): exact when the budget covers every channel, the same in the
runtime as in the eager reference, an error bound that holds, clear errors for bad values."""
import numpy as np
import pytest
import torch

from test_runtime import assert_agree
from tiny import tiny_images
from unioncam import InvalidInputError, ScoreCAM, UnionCAM, algebra
from unioncam.algebra.budget import choose_channels, estimate_scores, mask_features
from unioncam.runtime import Explainer


def test_budget_covering_every_channel_is_exact(tiny_art):
    model, art = tiny_art
    images = tiny_images(3, seed=4)
    exact = Explainer(art)(images.numpy())
    for n in (6, 100):  # TinyCNN's layer has 6 channels
        rt = Explainer(art, max_passes=n)(images.numpy())
        ref = UnionCAM(model, "features.3", max_passes=n)(images)
        for key in ("cam", "region", "denoising", "de_region", "beta_region"):
            np.testing.assert_array_equal(getattr(rt, key), getattr(exact, key))
        assert rt.stats["estimated_channels"] == [0, 0, 0] == ref.stats["estimated_channels"]
        assert rt.stats["region_error_bound"] == [0.0, 0.0, 0.0]


def test_runtime_equals_reference_under_a_budget(tiny_art):
    model, art = tiny_art
    images = tiny_images(5, seed=21)
    exact = Explainer(art)(images.numpy())
    rt = Explainer(art, max_passes=2)(images.numpy())
    ref = UnionCAM(model, "features.3", max_passes=2)(images)
    assert_agree(rt, ref)
    assert rt.stats["estimated_channels"] == ref.stats["estimated_channels"]
    assert sum(rt.stats["estimated_channels"]) > 0
    assert rt.stats["masked_passes"] <= 5 * (2 + 3)
    # Approximate, so not the exact map: the budget really changed something.
    assert np.abs(rt.region - exact.region).max() > 1e-3
    sc = ScoreCAM(model, "features.3", max_passes=2)(images)
    np.testing.assert_allclose(sc.cam, rt.region, atol=1e-3)


def _planted(seed: int, distinct: int = 5, copies: int = 6, size: int = 6):
    """(1, K, size, size) activations: ``distinct`` masks, each in ``copies`` copies scaled by powers
    of two. Such a copy has exactly the same minmax in floating point, so an equal mask and an equal
    score; a shifted copy's minmax differs in the last bit, so it is not a planted duplicate."""
    g = np.random.default_rng(seed)
    base = g.random((distinct, size, size)) ** 3
    A = np.concatenate([base * 2.0 ** int(g.integers(-3, 4)) for _ in range(copies)])
    return A[None].astype(np.float64)


def _score_of_mask(table):
    """A scoring callable whose score depends on the mask alone, as the model's does."""
    def score(image_index, maps):
        keys = mask_features(np.asarray(maps))
        return np.array([table(k) for k in keys])
    return score


def test_clustered_channels_are_exact_with_one_pass_per_cluster():
    A = _planted(0)
    score = _score_of_mask(lambda m: float(np.sin(7 * m.sum()) * 0.5 + 0.5))
    base = np.array([0.01])
    exact = algebra.channel_scores(A, base, score)
    budget = algebra.channel_scores(A, base, score, max_passes=5)
    assert budget.passes == 5 and exact.passes == 30
    np.testing.assert_allclose(budget.scores, exact.scores, atol=1e-12)
    # Every unscored channel has a scored channel with its mask: exact, so nothing counts as estimated.
    assert budget.estimated.sum() == 0
    assert algebra.budget_stats(A, budget)["region_error_bound"] == [0.0]


@pytest.mark.parametrize("seed", range(6))
def test_error_bound_holds_for_any_scores(seed):
    """The bound assumes only that true scores lie in [0, 1]: adversarial, mask-independent scores
    (random per channel) must stay inside it."""
    g = np.random.default_rng(seed)
    A = g.random((2, 40, 5, 5)) ** 2 - 0.1 * (seed % 2)
    truth = g.random((2, 40))
    truth[:, ::3] = g.integers(0, 2, truth[:, ::3].shape)  # scores at the ends of [0, 1]

    def score(image_index, maps):
        # Look each map up by identity: the score is whatever was planted for that channel.
        flat = A.reshape(-1, 25)
        return np.array([truth.reshape(-1)[np.flatnonzero((flat == m.reshape(1, -1)).all(1))[0]] for m in maps])

    base = np.array([0.1, 0.2])
    exact = algebra.channel_scores(A, base, score)
    for n in (1, 4, 12):
        cs = algebra.channel_scores(A, base, score, max_passes=n)
        L_hat, L = algebra.region_map(A, cs.scores), algebra.region_map(A, exact.scores)
        bound = algebra.budget_stats(A, cs)["region_error_bound"]
        top = L_hat.reshape(2, -1).max(1)
        for i in range(2):
            if top[i] == 0:  # an all-zero approximate map: no relative bound, reported as None
                assert bound[i] is None
                continue
            assert np.abs(L_hat[i] - L[i]).max() / top[i] <= bound[i] * (1 + 1e-9)
            assert bound[i] > 0
        assert cs.passes <= 2 * n


def test_choice_is_deterministic_and_estimates_interpolate():
    g = np.random.default_rng(3)
    F = mask_features(g.random((50, 4, 4)))
    mass = g.random(50)
    a, b = choose_channels(F, mass, 8), choose_channels(F.copy(), mass.copy(), 8)
    np.testing.assert_array_equal(a, b)
    assert a.size == 8 and len(set(a.tolist())) == 8
    est, exact, loo = estimate_scores(F, a, np.full(8, 0.3))
    np.testing.assert_allclose(est, 0.3)  # constant scores interpolate to the constant
    assert loo < 1e-12 and exact.sum() == 8 and exact[a].all()


def test_budget_on_a_real_photo_is_close_to_exact(lite0_artifacts, lite0_eager, photos):
    """64 passes instead of ~400-900 on the real model: the region map stays close to exact. The
    threshold sits just under the fault-free figures (r 0.99894 and 0.99942, measured 2026-11-27), where
    an estimator with its weighting broken (r 0.9715) fails."""
    ex = Explainer(lite0_artifacts, max_passes=64)
    out = ex(photos)
    for i in range(2):
        r = np.corrcoef(out.region[i].ravel(), lite0_eager.region[i].ravel())[0, 1]
        assert r >= 0.998, r
        assert out.stats["region_error_estimate"][i] < out.stats["region_error_bound"][i]
    assert out.stats["masked_passes"] <= 2 * (64 + 3)
    np.testing.assert_array_equal(out.class_idx, lite0_eager.class_idx)


@pytest.mark.parametrize("bad", [0, -3, 2.5, True, "64"])
def test_bad_budgets_are_refused(tiny_art, bad):
    model, art = tiny_art
    with pytest.raises(InvalidInputError, match="max_passes must be a positive int"):
        Explainer(art, max_passes=bad)
    with pytest.raises(InvalidInputError, match="max_passes must be a positive int"):
        UnionCAM(model, "features.3", max_passes=bad)


def test_budget_needs_constant_skipping(tiny_art):
    model, art = tiny_art
    with pytest.raises(InvalidInputError, match="skip_constant"):
        Explainer(art, max_passes=4, skip_constant=False)
    with pytest.raises(InvalidInputError, match="skip_constant"):
        ScoreCAM(model, "features.3", max_passes=4, skip_constant=False)


def test_cli_budget_flag(tmp_path, capsys):
    from unioncam.cli import main

    for argv in (["explain", "--max-passes", "0"], ["eval", "x.png", "--max-passes", "-1"],
                 ["bench", "--max-passes", "many"]):
        with pytest.raises(SystemExit) as e:
            main(argv + ["--out", str(tmp_path)] if argv[0] != "bench" else argv)
        assert e.value.code == 2
        assert "--max-passes" in capsys.readouterr().err


def test_torch_arrays_take_the_same_budget():
    """The eager path passes torch tensors: same choice and same scores as NumPy."""
    A = _planted(1, distinct=7, copies=4)
    score = _score_of_mask(lambda m: float(m[:8].mean()))
    a = algebra.channel_scores(A, np.array([0.05]), score, max_passes=3)
    t = algebra.channel_scores(torch.from_numpy(A), torch.tensor([0.05], dtype=torch.float64),
                               lambda i, m: torch.from_numpy(score(i, m.numpy())), max_passes=3)
    np.testing.assert_allclose(t.scores.numpy(), a.scores, atol=1e-12)
    np.testing.assert_array_equal(t.estimated, a.estimated)


# -- cheaper passes: precision variants of the masked-forward graph ----------------------------

@pytest.fixture(scope="module")
def tiny_precisions(tiny_art, tmp_path_factory):
    """A copy of the tiny export with its fp16 and int8 masked-forward graphs added."""
    import shutil

    from unioncam.export import add_precision

    model, art = tiny_art
    d = tmp_path_factory.mktemp("prec") / "art"
    shutil.copytree(art, d)
    add_precision(d, "fp16")
    add_precision(d, "int8", calibration_images=tiny_images(4, seed=8).numpy())
    return model, d


def test_precision_variants_load_and_agree(tiny_precisions):
    import onnx

    _, d = tiny_precisions
    images = tiny_images(4, seed=30).numpy()
    exact = Explainer(d)(images)
    half = Explainer(d, precision="fp16")(images)
    int8 = Explainer(d, precision="int8")(images)
    assert half.stats["precision"] == "fp16" and int8.stats["precision"] == "int8"
    # Documented tolerances (docs/budgets.md): fp16 region map within 1e-2 of fp32. INT8 on a seeded
    # toy model only loads, runs and gives finite maps of the right shape: how far quantisation
    # moves a random network depends on the CPU's integer kernels (issue 32); its fidelity is
    # asserted on the real weights (tests/test_real_model.py).
    assert np.abs(half.region - exact.region).max() <= 1e-2
    assert int8.cam.shape == exact.cam.shape and np.isfinite(int8.cam).all() and np.isfinite(int8.region).all()
    assert int8.class_idx.tolist() == exact.class_idx.tolist()  # from the FP32 gradient graph
    # The mask algebra and the softmax stay float32 inside the fp16 graph.
    g = onnx.load(str(d / "masked_forward.fp16.onnx")).graph
    kinds = {init.data_type for init in g.initializer}
    assert onnx.TensorProto.FLOAT16 in kinds and onnx.TensorProto.FLOAT in kinds
    softmax = [n for n in g.node if n.op_type == "Softmax"]
    assert softmax and all(n.name in {m.name for m in g.node} for n in softmax)
    types = {vi.name: vi.type.tensor_type.elem_type for vi in g.value_info}
    assert all(types.get(n.output[0], onnx.TensorProto.FLOAT) == onnx.TensorProto.FLOAT for n in softmax)
    assert {o.type.tensor_type.elem_type for o in g.output} == {onnx.TensorProto.FLOAT}


def test_fusion_passes_stay_fp32(tiny_precisions):
    """The fusion passes and ``class_scores`` (what the metrics use) run on the fp32 graph whatever
    the channel passes' precision: bit-identical to an fp32 Explainer's."""
    _, d = tiny_precisions
    images = tiny_images(2, seed=31).numpy()
    maps = np.random.default_rng(0).random((2, 3, 8, 8)).astype(np.float32)
    a = Explainer(d).class_scores(images, maps, [0, 1])
    b = Explainer(d, precision="int8").class_scores(images, maps, [0, 1])
    np.testing.assert_array_equal(a, b)


def test_precision_errors(tiny_art, tiny_precisions, tmp_path):
    import shutil

    from unioncam import ArtifactError
    from unioncam.export import add_precision

    _, art = tiny_art
    with pytest.raises(InvalidInputError, match="unknown precision 'int4'"):
        Explainer(art, precision="int4")
    with pytest.raises(ArtifactError, match="has no fp16 masked-forward graph.*--precision fp16"):
        Explainer(art, precision="fp16")
    with pytest.raises(InvalidInputError, match="unknown precision"):
        add_precision(art, "bf16")
    _, d = tiny_precisions
    bad = tmp_path / "bad"
    shutil.copytree(d, bad)
    data = bytearray((bad / "masked_forward.int8.onnx").read_bytes())
    data[len(data) // 2] ^= 0xFF
    (bad / "masked_forward.int8.onnx").write_bytes(bytes(data))
    with pytest.raises(ArtifactError, match="does not match its manifest"):
        Explainer(bad, precision="int8")
