"""Vision transformers (issue 27): token maps as activation maps, exported and explained like any CNN.
Three small families from ``zoo_vit.py`` (ViT with scaled_dot_product_attention, DeiT with class and
distillation tokens, Swin with windowed attention and (B, h, w, D) outputs): the exported gradients
against autograd laid out by hand, the runtime against the eager reference, the one graph against
the runtime, and the automatic layer and reshape."""
from __future__ import annotations

import numpy as np
import onnxruntime as ort
import pytest
import torch

from independent import independent_unioncam
from test_runtime import assert_agree
from zoo import zoo_images
from zoo_vit import FAMILIES, build
from unioncam import InvalidInputError, UnionCAM
from unioncam.reshape import parse_reshape
from unioncam.runtime import Explainer


@pytest.fixture(scope="module")
def vit_exports(request, _prewarm):
    """{family: (model, layer, reshape, folder, one graph)}: each selected family exported at its block
    input, two at a time in worker processes (``prewarm.py``)."""
    out = _prewarm.for_module(request, "vit_exports")
    for result in out.values():
        if isinstance(result, Exception):
            raise result
    return out


def layout_by_hand(tokens: np.ndarray, reshape: str) -> np.ndarray:
    """(B, N, D) tokens or (B, h, w, D) maps as (B, D, h, w), element by element: the class tokens
    are the first ones, the patch tokens row-major on a square grid."""
    if reshape == "bhwc":
        B, h, w, D = tokens.shape
        out = np.empty((B, D, h, w), tokens.dtype)
        for i in range(h):
            for j in range(w):
                out[:, :, i, j] = tokens[:, i, j, :]
        return out
    B, N, D = tokens.shape
    side = next(s for s in range(1, N + 1) if s * s in (N - 1, N - 2, N))
    prefix = N - side * side
    out = np.empty((B, D, side, side), tokens.dtype)
    for i in range(side):
        for j in range(side):
            out[:, :, i, j] = tokens[:, prefix + i * side + j, :]
    return out


@pytest.mark.parametrize("name", sorted(FAMILIES))
def test_exported_token_gradients_match_autograd(name, vit_exports):
    """The gradient graph through LayerNorm, GELU, (scaled dot product) attention, patch and position
    embeddings: activations and gradients equal autograd's on the raw block output, laid out by hand
    (relative 1e-4)."""
    model, layer, reshape, d, _ = vit_exports[name]
    x = zoo_images(2, seed=7)
    classes = np.array([1, 4])
    acts, grads = ort.InferenceSession(str(d / "gradient.onnx"), providers=["CPUExecutionProvider"]).run(
        ["activations", "gradients"], {"image": x.numpy(), "class_idx": classes})
    store = {}
    module = dict(model.named_modules())[layer]

    def keep(_m, _i, out):
        out.retain_grad()
        store["out"] = out

    h = module.register_forward_hook(keep)
    try:
        logits = model(x)
    finally:
        h.remove()
    logits.gather(1, torch.from_numpy(classes)[:, None]).sum().backward()
    ref_a = layout_by_hand(store["out"].detach().numpy(), reshape)
    ref_g = layout_by_hand(store["out"].grad.numpy(), reshape)
    assert acts.shape == ref_a.shape == (2, 24, 8, 8)
    assert np.abs(acts - ref_a).max() <= 1e-4 * np.abs(ref_a).max()
    assert np.abs(grads - ref_g).max() <= 1e-4 * np.abs(ref_g).max()
    assert np.abs(ref_g).max() > 0  # the target layer reaches the class score


def by_hand(model, layer, reshape, x):
    """The independent implementation (tests/independent.py) on the tokens laid out by hand."""
    module = dict(model.named_modules())[layer]
    return [independent_unioncam(model, module, x[i:i + 1], layout=lambda t: layout_by_hand(t, reshape))
            for i in range(x.shape[0])]


def assert_like(out, refs, i0=0):
    for i, ref in enumerate(refs):
        for key in ("denoising", "region", "de_region", "cam"):
            assert np.abs(np.asarray(out[key])[i0 + i] - ref[key]).max() <= 1e-3, key
        got = [float(np.asarray(out[k])[i0 + i]) for k in ("beta_denoising", "beta_region", "beta_de_region")]
        assert np.abs(np.array(got) - [ref["beta_denoising"], ref["beta_region"], ref["beta_de_region"]]).max() <= 1e-4


@pytest.mark.parametrize("name", sorted(FAMILIES))
def test_runtime_explains_transformers_like_eager(name, vit_exports):
    """The runtime against the eager reference (maps 1e-3, betas 1e-4), and both against the
    independent implementation on tokens laid out by hand (so a fault in the shared reshape fails)."""
    model, layer, reshape, d, _ = vit_exports[name]
    x = zoo_images(2, seed=7)
    ref = UnionCAM(model, layer, reshape=reshape)(x)
    # The seeded network must respond to its input, or the betas compared would be noise.
    assert max(np.abs(ref.beta_denoising).max(), np.abs(ref.beta_region).max()) > 1e-3
    rt = Explainer(d)(x.numpy())
    assert_agree(rt, ref)
    assert_like(vars(rt), by_hand(model, layer, reshape, x))


@pytest.mark.parametrize("name", sorted(FAMILIES))
def test_the_one_graph_explains_a_transformer_like_the_runtime(name, vit_exports):
    from test_end_to_end import run_graph

    model, layer, reshape, d, graph = vit_exports[name]
    x = zoo_images(1, seed=9).numpy()
    rt = Explainer(d)(x)
    out = run_graph(graph, x)
    for key in ("cam", "denoising", "region"):
        assert np.abs(out[key][0] - getattr(rt, key)[0]).max() <= 1e-3, key
    assert np.abs(out["betas"] - [rt.beta_denoising[0], rt.beta_region[0], rt.beta_de_region[0]]).max() <= 1e-4
    betas = dict(zip(("beta_denoising", "beta_region", "beta_de_region"), out["betas"][:, None]))
    assert_like({**out, **betas}, by_hand(model, layer, reshape, torch.from_numpy(x)))


def test_the_layer_and_reshape_are_found_and_said(capsys):
    from tiny import TinyCNN

    from unioncam.export_cache import choose_layer
    from unioncam.models.target_layer import default_target

    for name, (_, layer, reshape) in FAMILIES.items():
        model, _, _ = build(name)
        got = default_target(model, (32, 32))
        # Swin: the outermost module whose output is the last block's (as layer4 for a ResNet).
        want_layer = "blocks.1.norm1" if reshape == "tokens" else "blocks"
        assert got[0] == want_layer and got[2] == reshape, (name, got)
    assert default_target(TinyCNN(), (32, 32)) == ("head.3", (1, 12, 4, 4), None)
    model, _, _ = build("deit")
    assert choose_layer(None, "mod:deit", model, (32, 32)) == ("blocks.1.norm1", "tokens")
    err = capsys.readouterr().err
    assert "target layer blocks.1.norm1" in err and "reshape tokens" in err


def test_reshape_by_hand_and_round_trip():
    g = np.random.default_rng(0)
    for spec, shape in (("tokens", (2, 1 + 16, 5)), ("tokens", (2, 2 + 16, 5)), ("tokens:0", (2, 16, 5)),
                        ("bhwc", (2, 4, 4, 5))):
        x = torch.from_numpy(g.random(shape))
        r = parse_reshape(spec)
        maps = r.to_maps(x)
        np.testing.assert_array_equal(maps.numpy(), layout_by_hand(x.numpy(), "bhwc" if spec == "bhwc" else "tokens"))
        np.testing.assert_array_equal(r.to_output(maps, x).numpy(), x.numpy())
    grid = parse_reshape("tokens:1:2x3")
    x = torch.arange(1 * 7 * 1, dtype=torch.float64).reshape(1, 7, 1)
    np.testing.assert_array_equal(grid.to_maps(x).numpy()[0, 0], [[1, 2, 3], [4, 5, 6]])
    for bad in ("tokens:x", "grid", "tokens:1:2x", "tokens:-1"):
        with pytest.raises(InvalidInputError, match="unknown reshape"):
            parse_reshape(bad)
    with pytest.raises(InvalidInputError, match="no square grid"):
        parse_reshape("tokens:0").to_maps(torch.zeros(1, 15, 4))


@pytest.mark.usefixtures("hybrid_vit_cache")
def test_a_vit_factory_needs_no_layer_and_its_map_sits_on_the_object(tmp_path, capsys, monkeypatch):
    """``unioncam explain --model hybrid_vit:build`` (examples/hybrid_vit.py: trained Lite0 patch
    features under a transformer block, ImageNet head) on scikit-image's coffee photo, at 64 passes
    (r 0.999 to the exact map on this photo, benchmarks/results/2026-11-27-cpu2-budgets-vit.json)."""
    import json
    from pathlib import Path

    from unioncam.cli import main
    from unioncam.image_io import sample_image_path

    monkeypatch.syspath_prepend(str(Path(__file__).resolve().parents[1] / "examples"))
    rc = main(["explain", str(sample_image_path("coffee")), "--model", "hybrid_vit:build", "--out", str(tmp_path),
               "--no-progress", "--max-passes", "64"])
    captured = capsys.readouterr()
    assert rc == 0, captured.err
    assert "target layer blocks.0.norm1" in captured.err and "reshape tokens" in captured.err
    assert "exporting" not in captured.err  # the prewarmed cache entry: the same key as the CLI's
    rep = json.loads((tmp_path / "coffee.json").read_text())
    assert rep["class_name"] == "espresso" and rep["layer"] == "blocks.0.norm1"
    cam = np.load(tmp_path / "coffee_cam.npy")  # (224, 224) over the whole 600x400 photo
    H, W = cam.shape
    # The cup, by hand on the 600x400 photo: x 170-420, y 15-300 (30% of the photo; the saucer,
    # spoon and table outside it).
    ys, xs = np.mgrid[0:H, 0:W] + 0.5
    cup = (xs >= 170 * W / 600) & (xs < 420 * W / 600) & (ys >= 15 * H / 400) & (ys < 300 * H / 400)
    top = cam >= np.quantile(cam, 0.8)
    inside = (top & cup).sum() / top.sum()
    assert cup.mean() < 0.31 and inside > 0.75, (cup.mean(), inside)  # measured 0.92 exact
