"""The spec's algebra, written once (unioncam.algebra): each function gives the same values on NumPy
and torch inputs, and agrees with independent references (OpenCV, NumPy, torch's own ops)."""
import cv2
import numpy as np
import pytest
import torch
import torch.nn.functional as F

from unioncam import algebra

RNG = np.random.default_rng(0)
A = RNG.standard_normal((2, 6, 7, 7)).astype(np.float32)
G = RNG.standard_normal((2, 6, 7, 7)).astype(np.float32)
A[0, 2] = 0.25  # a constant channel
A[1, 4] = A[1, 1] * 2.0 + 0.0  # an exact duplicate mask (scaling by 2 is exact in float)
A[1, 5] = A[1, 1]
S = RNG.random((2, 6)).astype(np.float32)


def both(fn, *args, atol=2e-6, **kw):
    """Run ``fn`` on NumPy and on torch inputs; assert same library out and same values."""
    out_np = fn(*args, **kw)
    out_t = fn(*[torch.from_numpy(a) if isinstance(a, np.ndarray) else a for a in args], **kw)
    assert isinstance(out_np, np.ndarray) and isinstance(out_t, torch.Tensor), fn.__name__
    assert out_np.dtype == out_t.numpy().dtype
    np.testing.assert_allclose(out_np, out_t.numpy(), rtol=0, atol=atol, err_msg=fn.__name__)
    return out_np


@pytest.mark.parametrize("fn, args", [
    (algebra.upsample, (A, (224, 224))),
    (algebra.upsample, (A, (13, 9))),
    (algebra.upsample, (A, (7, 7))),
    (algebra.minmax, (A,)),
    (algebra.normalized, (A[:, 0], (224, 224))),
    (algebra.constant_channels, (A,)),
    (algebra.saliency_masks, (A, (32, 48))),
    (algebra.denoised_map, (A, G, 10.0)),
    (algebra.denoised_map, (A, G, 55.5)),
    (algebra.region_map, (A, S)),
    (algebra.weighted_map, (A, -S)),
    (algebra.gradcam_weights, (A, G)),
    # float64: Grad-CAM++'s denominators come near 0 on random data, so float32 amplifies rounding.
    (algebra.gradcampp_weights, (A.astype(np.float64), G.astype(np.float64))),
    (algebra.xgradcam_weights, (np.abs(A), G)),  # post-ReLU activations: sums far from 0
    (algebra.softmax, (G[:, :, 0, :],)),
    (algebra.safe_divide, (A[0, 0], np.where(G[0, 0] > 0, G[0, 0], 0).astype(np.float32))),
])
def test_numpy_and_torch_agree(fn, args):
    both(fn, *args)


@pytest.mark.parametrize("size", [(224, 224), (15, 40), (3, 5)])
def test_upsample_is_opencv_and_torch_bilinear(size):
    ref_cv = np.stack([cv2.resize(m, (size[1], size[0]), interpolation=cv2.INTER_LINEAR) for m in A[0]])
    ref_t = F.interpolate(torch.from_numpy(A[:1]), size=size, mode="bilinear", align_corners=False)[0].numpy()
    up = algebra.upsample(A[0], size)
    np.testing.assert_allclose(up, ref_t, atol=2e-6)
    np.testing.assert_allclose(up, ref_cv, atol=1e-3)  # OpenCV rounds its weights to 11 bits


def test_bilinear_matrix_is_exact_identity_at_same_size():
    R = algebra.bilinear_matrix(7, 7, xp=algebra.namespace(A), dtype=np.float32)
    assert np.array_equal(R, np.eye(7, dtype=np.float32))
    R = algebra.bilinear_matrix(7, 224, xp=algebra.namespace(A), dtype=np.float32)
    np.testing.assert_allclose(R.sum(axis=1), 1.0, atol=1e-6)


def test_percentile_matches_numpy_on_both_libraries():
    x = RNG.standard_normal((3, 4, 49))
    for q in (0, 10, 12.5, 50, 73.3, 100):
        got = both(algebra.percentile, x, q, atol=1e-12)
        np.testing.assert_allclose(got, np.percentile(x, q, axis=-1), rtol=0, atol=1e-12)


def test_constant_mask_is_exactly_zero_and_duplicates_are_found():
    masks = algebra.saliency_masks(A[0], (224, 224))
    assert np.count_nonzero(masks[2]) == 0 and masks[0].min() == 0.0 and masks[0].max() == 1.0
    first = algebra.duplicate_masks(A[1])
    assert first.tolist() == [0, 1, 2, 3, 1, 1]
    assert algebra.duplicate_masks(torch.from_numpy(A[1])).tolist() == first.tolist()


def test_duplicate_masks_match_an_exact_row_unique():
    """Against np.unique on the rows' bytes (the exact answer), with many repeats, scaled and shifted
    copies (same minmax), constants and -0.0, on NumPy and torch alike."""
    rng = np.random.default_rng(5)
    base = rng.standard_normal((12, 5, 5)).astype(np.float32)
    maps = np.concatenate([base, base[[0, 3, 3]] * 4.0, base[[7]] + 0.5 - 0.5, np.zeros((2, 5, 5), np.float32),
                           np.full((1, 5, 5), 2.0, np.float32), -np.zeros((1, 5, 5), np.float32), base[[11]]])
    maps = maps[rng.permutation(len(maps))]
    keys = algebra.minmax(maps).reshape(len(maps), -1) + 0.0
    _, first_of_group, group = np.unique(keys, axis=0, return_index=True, return_inverse=True)
    expected = first_of_group[group.reshape(-1)]
    for lib in (np.asarray, torch.from_numpy):
        got = algebra.to_numpy(algebra.duplicate_masks(lib(maps)))
        assert got.tolist() == expected.tolist(), lib
    assert len(np.unique(expected)) < len(maps) - 5  # the repeats were there to find


def _score_np(images):
    """A deterministic stand-in for p_c(N(map) * I0): the mean of the masked image (the algebra
    around the scoring callable is what is tested; the real model passes are tested elsewhere)."""
    def score(index, maps):
        xp = algebra.namespace(maps)
        masks = algebra.saliency_masks(maps, images.shape[-2:])
        img = images[index] if isinstance(images, np.ndarray) else images[xp.asarray(index)]
        return xp.mean(xp.reshape(masks * img, (maps.shape[0], -1)), axis=1)

    return score


def test_channel_scores_skipping_changes_nothing_on_both_libraries():
    images = RNG.random((2, 16, 16)).astype(np.float32)
    base = np.array([0.1, 0.2], np.float32)
    runs = []
    for lib in ("numpy", "torch"):
        a, img, b = (A, images, base) if lib == "numpy" else map(torch.from_numpy, (A, images, base))
        for kw in ({"skip_constant": False}, {"skip_constant": True},
                   {"skip_constant": True, "skip_duplicates": True}):
            cs = algebra.channel_scores(a, b, _score_np(img), **kw)
            runs.append((lib, kw, algebra.to_numpy(cs.scores), cs.passes, cs.duplicates))
    ref = runs[0][2]
    assert ref[0, 2] == np.float32(0.1)  # the constant channel scores p_c(Ib) exactly
    for lib, kw, scores, passes, dups in runs:
        np.testing.assert_allclose(scores, ref, atol=1e-6, err_msg=f"{lib} {kw}")
        expected = 12 if not kw.get("skip_constant") else (11 - dups)
        assert passes == expected, (lib, kw)
        assert dups == (2 if kw.get("skip_duplicates") else 0)


def test_union_select_on_both_libraries_follows_the_spec():
    images = RNG.random((2, 32, 32)).astype(np.float32)
    L_den, L_reg = algebra.denoised_map(A, G, 10.0), algebra.region_map(A, S)
    base = np.array([0.05, 0.3], np.float32)
    f_np = algebra.union_select(L_den, L_reg, (32, 32), base, _score_np(images))
    f_t = algebra.union_select(torch.from_numpy(L_den), torch.from_numpy(L_reg), (32, 32), torch.from_numpy(base),
                               _score_np(torch.from_numpy(images)))
    for key in ("cam", "denoising", "region", "de_region", "beta_denoising", "beta_region", "beta_de_region"):
        np.testing.assert_allclose(getattr(f_np, key), getattr(f_t, key).numpy(), atol=2e-6, err_msg=key)
    # By hand: betas are score gains over the base, DR is the minmax of the beta-weighted sum,
    # and AMS keeps DR only where it scores strictly higher than R.
    D, R = algebra.normalized(L_den, (32, 32)), algebra.normalized(L_reg, (32, 32))
    gain = lambda m: (m * images).mean(axis=(1, 2)) - base  # noqa: E731
    np.testing.assert_allclose(f_np.beta_denoising, gain(D), atol=1e-6)
    np.testing.assert_allclose(f_np.beta_region, gain(R), atol=1e-6)
    DR = algebra.minmax(gain(D)[:, None, None] * D + gain(R)[:, None, None] * R)
    np.testing.assert_allclose(f_np.de_region, DR, atol=1e-6)
    pick = gain(DR) > gain(R)
    assert f_np.selected.tolist() == pick.tolist()
    np.testing.assert_array_equal(f_np.cam, np.where(pick[:, None, None], DR, R))
