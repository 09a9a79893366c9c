"""Grad-CAM, Grad-CAM++, XGrad-CAM and Score-CAM against their published definitions, computed
independently (per-channel loops), and the runtime's baselines against the eager ones."""
import numpy as np
import pytest
import torch

from independent import _minmax, _up
from tiny import TinyCNN, tiny_images
from unioncam import GradCAM, GradCAMpp, ScoreCAM, XGradCAM
from unioncam.algebra import gradcam_weights, gradcampp_weights, xgradcam_weights
from unioncam.runtime import Explainer


def test_weights_by_hand():
    # One channel, 1x2 map: A = [1, 3], G = [2, -1].
    A = torch.tensor([[[[1.0, 3.0]]]], dtype=torch.float64)
    G = torch.tensor([[[[2.0, -1.0]]]], dtype=torch.float64)
    # Grad-CAM: mean G = 0.5.
    assert float(gradcam_weights(A, G)) == pytest.approx(0.5)
    # XGrad-CAM: (1*2 + 3*(-1)) / (1 + 3) = -0.25.
    assert float(xgradcam_weights(A, G)) == pytest.approx(-0.25)
    # Grad-CAM++: sum A = 4; a = G^2 / (2 G^2 + 4 G^3): at G=2: 4 / (8 + 32) = 0.1; at G=-1: 1 / (2 - 4) = -0.5,
    # but relu(G) = 0 there. w = 0.1 * 2 = 0.2.
    assert float(gradcampp_weights(A, G)) == pytest.approx(0.2)
    # A zero denominator (G = 0 everywhere, or sum A = 0) gives 0, never NaN.
    Z = torch.zeros_like(A)
    assert float(gradcampp_weights(A, Z)) == 0.0 and float(xgradcam_weights(Z, G)) == 0.0


def _independent(model, images, method, cls):
    """Loops over channels on one image, NumPy only after autograd."""
    store = {}

    def hook(_m, _i, out):
        out.retain_grad()
        store["a"] = out

    h = model.features[3].register_forward_hook(hook)
    logits = model(images)
    h.remove()
    logits[0, cls].backward()
    A = store["a"][0].detach().numpy()
    G = store["a"].grad[0].numpy()
    H, W = images.shape[-2:]
    K = A.shape[0]
    w = np.zeros(K)
    for k in range(K):
        if method == "gradcam":
            w[k] = G[k].mean()
        elif method == "xgradcam":
            w[k] = (A[k] * G[k]).sum() / A[k].sum() if A[k].sum() != 0 else 0.0
        elif method == "gradcampp":
            tot = 0.0
            for g in G[k].ravel():
                den = 2 * g**2 + A[k].sum() * g**3
                tot += (g**2 / den if den != 0 else 0.0) * max(g, 0.0)
            w[k] = tot
        else:  # scorecam
            if A[k].max() == A[k].min():
                mask = np.zeros((H, W))
            else:
                mask = _minmax(_up(A[k], (H, W)))
            with torch.no_grad():
                w[k] = float(torch.softmax(model(images * torch.from_numpy(mask)), 1)[0, cls])
    L = np.maximum(sum(w[k] * A[k] for k in range(K)), 0)
    return _minmax(_up(L, (H, W)))


@pytest.mark.parametrize("cls_", [GradCAM, GradCAMpp, XGradCAM, ScoreCAM])
def test_eager_baselines_match_independent_definitions(cls_):
    model = TinyCNN().double()
    images = tiny_images(2, dtype=torch.float64)
    exp = cls_(model, "features.3")(images, [1, 3])
    assert exp.method == cls_.method and exp.cam.shape == (2, 32, 32)
    for i, c in enumerate([1, 3]):
        ref = _independent(model, images[i : i + 1].clone(), cls_.method, c)
        np.testing.assert_allclose(exp.cam[i], ref, atol=2e-5)


@pytest.mark.parametrize("method, cls_", [("gradcam", GradCAM), ("gradcampp", GradCAMpp), ("xgradcam", XGradCAM),
                                          ("scorecam", ScoreCAM)])
def test_runtime_baselines_match_eager(tiny_art, method, cls_):
    model, art = tiny_art
    images = tiny_images(3, seed=12)
    ref = cls_(model, "features.3")(images)
    rt = Explainer(art)(images.numpy(), method=method)
    assert rt.method == method and rt.region is None
    assert np.abs(rt.cam - ref.cam).max() <= 1e-3
    np.testing.assert_array_equal(rt.class_idx, ref.class_idx)


def test_scorecam_is_unioncam_region_map(tiny_art):
    _, art = tiny_art
    ex = Explainer(art)
    x = tiny_images(2, seed=2).numpy()
    np.testing.assert_allclose(ex(x, method="scorecam").cam, ex(x).region, atol=1e-6)
