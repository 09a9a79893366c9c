"""The eager reference against the spec: hand-computed tensors and an independent implementation."""
import numpy as np
import pytest
import torch
from torch import nn

from independent import independent_unioncam
from tiny import TinyCNN, tiny_images
from unioncam import InvalidInputError, LayerNotFoundError, UnionCAM
from unioncam.algebra import denoised_map, minmax, percentile, region_map, saliency_masks


def test_percentile_matches_numpy_linear():
    g = torch.Generator().manual_seed(0)
    x = torch.randn(4, 5, 49, generator=g, dtype=torch.float64)
    for q in (0, 10, 12.5, 50, 73.3, 100):
        np.testing.assert_allclose(percentile(x, q).numpy(), np.percentile(x.numpy(), q, axis=-1), rtol=0, atol=1e-12)


def test_amd_by_hand():
    # Channel 0: G = [[1, -1], [2, 3]]; 50th percentile of {-1, 1, 2, 3} is 1.5, so W keeps 2 and 3,
    # S = 5, alpha = 1/5 there, L = [[0, 0], [2/5 * A10, 3/5 * A11]].
    # Channel 1: every G < 0, so S = 0 and it contributes nothing.
    # Channel 2: G = [[0, 0], [0, 4]], t = 0: W = G, S = 4, alpha = 1/4 at (1, 1) only (W = 0 elsewhere).
    G = torch.tensor([[[1.0, -1.0], [2.0, 3.0]], [[-1.0, -2.0], [-3.0, -4.0]], [[0.0, 0.0], [0.0, 4.0]]])[None]
    A = torch.tensor([[[1.0, 1.0], [2.0, 4.0]], [[9.0, 9.0], [9.0, 9.0]], [[5.0, 5.0], [5.0, 2.0]]])[None]
    L = denoised_map(A.double(), G.double(), 50.0)[0]
    expected = np.array([[0.0, 0.0], [2 / 5 * 2.0, 3 / 5 * 4.0 + 1.0 * 2.0]])
    np.testing.assert_allclose(L.numpy(), expected, atol=1e-12)


def test_minmax_constant_is_zero_never_nan():
    z = torch.full((2, 3, 3), 7.0)
    assert torch.equal(minmax(z), torch.zeros_like(z))
    y = minmax(torch.tensor([[[1.0, 3.0], [2.0, 5.0]]]))
    assert float(y.min()) == 0.0 and float(y.max()) == 1.0
    np.testing.assert_allclose(y.numpy(), [[[0.0, 0.5], [0.25, 1.0]]])


def test_constant_channel_mask_is_exactly_zero():
    # A constant 0.1 upsampled bilinearly may leave ulp ripples; the mask must still be exactly 0.
    maps = torch.full((1, 7, 7), 0.1, dtype=torch.float32)
    assert torch.count_nonzero(saliency_masks(maps, (224, 224))) == 0


def test_region_map_is_relu_of_weighted_sum():
    A = torch.tensor([[[[1.0, -2.0]], [[3.0, -4.0]]]])
    s = torch.tensor([[0.5, 0.25]])
    np.testing.assert_allclose(region_map(A, s).numpy(), [[[1.25, 0.0]]])


@pytest.mark.parametrize("theta", [0.0, 10.0, 55.0])
def test_matches_independent_implementation(theta):
    model = TinyCNN().double()
    images = tiny_images(3, dtype=torch.float64)
    exp = UnionCAM(model, "features.3", theta=theta, batch_size=5)(images, class_idx=[0, 3, 4])
    for i, c in enumerate([0, 3, 4]):
        ref = independent_unioncam(model, model.features[3], images[i : i + 1], theta, cls=c)
        for key in ("cam", "denoising", "region", "de_region"):
            np.testing.assert_allclose(getattr(exp, key)[i], ref[key], atol=2e-5, err_msg=key)
        for key in ("beta_denoising", "beta_region", "beta_de_region"):
            np.testing.assert_allclose(getattr(exp, key)[i], ref[key], atol=1e-6, err_msg=key)
        assert exp.selected[i] == ref["selected"]
        assert exp.class_idx[i] == c


def test_chunked_and_unchunked_masked_passes_identical():
    model = TinyCNN().double()
    images = tiny_images(2, dtype=torch.float64)
    one = UnionCAM(model, "features.3", batch_size=1)(images)
    many = UnionCAM(model, "features.3", batch_size=64)(images)
    for key in ("cam", "denoising", "region", "de_region", "beta_region", "beta_denoising", "beta_de_region"):
        np.testing.assert_allclose(getattr(one, key), getattr(many, key), rtol=0, atol=1e-12, err_msg=key)
    assert one.selected == many.selected


def test_skipping_constant_channels_changes_nothing():
    model = TinyCNN()
    images = tiny_images(2)
    images[1] = 0.0  # a black image: every activation map of it is constant
    on = UnionCAM(model, "features.3", skip_constant=True)(images)
    off = UnionCAM(model, "features.3", skip_constant=False)(images)
    assert on.stats["constant_channels"] > 0
    assert on.stats["masked_passes"] < off.stats["masked_passes"]
    for key in ("cam", "region", "de_region", "beta_region"):
        np.testing.assert_array_equal(getattr(on, key), getattr(off, key), err_msg=key)


class ConstantHead(nn.Module):
    """Logits ignore the input entirely: every beta is 0, a tie, so AMS must keep R (strict >)."""

    def __init__(self):
        super().__init__()
        self.features = nn.Sequential(nn.Conv2d(3, 4, 3, padding=1), nn.ReLU())
        self.fc = nn.Linear(4, 3)

    def forward(self, x):
        f = self.features(x)
        return self.fc(f.mean((2, 3)) * 0.0)


def test_ams_tie_keeps_region():
    torch.manual_seed(0)
    exp = UnionCAM(ConstantHead(), "features.1")(tiny_images(2))
    assert np.all(exp.beta_de_region == exp.beta_region)
    assert exp.selected == ["region", "region"]
    np.testing.assert_array_equal(exp.cam, exp.region)


def test_outputs_shapes_dtypes_ranges():
    exp = UnionCAM(TinyCNN(), "features.3")(tiny_images(3))
    for key in ("cam", "denoising", "region", "de_region"):
        m = getattr(exp, key)
        assert m.shape == (3, 32, 32) and m.dtype == np.float32
        assert np.isfinite(m).all() and m.min() >= 0 and m.max() <= 1
    for key in ("beta_denoising", "beta_region", "beta_de_region", "score"):
        assert getattr(exp, key).shape == (3,) and getattr(exp, key).dtype == np.float32
    assert exp.class_idx.dtype == np.int64 and len(exp.selected) == 3


def test_layer_given_as_module_and_name_agree():
    model = TinyCNN()
    x = tiny_images(1)
    a = UnionCAM(model, "features.3")(x)
    b = UnionCAM(model, model.features[3])(x)
    np.testing.assert_array_equal(a.cam, b.cam)


def test_hooks_removed_and_train_mode_restored_on_error():
    model = TinyCNN().train()
    model.head[1].eval()  # a mixed state must come back exactly
    explainer = UnionCAM(model, "features.3")
    with pytest.raises(InvalidInputError, match="out of range"):
        explainer(tiny_images(1), class_idx=99)
    assert model.training and not model.head[1].training and model.features.training
    assert all(len(m._forward_hooks) == 0 for m in model.modules())


@pytest.mark.parametrize(
    "images, match",
    [
        (torch.full((1, 3, 32, 32), float("nan")), "NaN"),
        (torch.full((1, 3, 32, 32), 2.0), r"\[0, 1\]"),
        (torch.rand(3, 32, 32), "batch dim"),
        (torch.zeros(1, 3, 32, 32, dtype=torch.uint8), "floating"),
    ],
)
def test_bad_images_raise_typed_errors(images, match):
    with pytest.raises(InvalidInputError, match=match):
        UnionCAM(TinyCNN(), "features.3")(images)


def test_bad_layer_theta_class():
    model = TinyCNN()
    with pytest.raises(LayerNotFoundError, match="not found"):
        UnionCAM(model, "features.9")
    with pytest.raises(InvalidInputError, match=r"\[0, 100\]"):
        UnionCAM(model, "features.3", theta=101)
    with pytest.raises(InvalidInputError, match="out of range"):
        UnionCAM(model, "features.3")(tiny_images(1), class_idx=-1)
    with pytest.raises(InvalidInputError, match="one class per image"):
        UnionCAM(model, "features.3")(tiny_images(2), class_idx=[1])


def test_shared_module_target_is_refused():
    model = TinyCNN()
    shared = nn.ReLU()
    model.features[1] = shared
    model.features[3] = shared
    with pytest.raises(LayerNotFoundError, match="more than once"):
        UnionCAM(model, "features.3")(tiny_images(1))
