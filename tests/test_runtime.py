"""The torch-free runtime (ONNX Runtime, CPU) against the eager reference, and its bad inputs."""
import json
import shutil
import subprocess
import sys
import textwrap
import threading

import numpy as np
import pytest
import torch

from tiny import tiny_images
from unioncam import ArtifactError, BackendUnavailableError, InvalidInputError, UnionCAM
from unioncam.runtime import Explainer

MAPS = ("cam", "denoising", "region", "de_region")
BETAS = ("beta_denoising", "beta_region", "beta_de_region")


def assert_agree(rt, ref):
    """The spec's tolerances: maps 1e-3, betas 1e-4, same selection unless the betas nearly tie."""
    for key in MAPS:
        assert np.abs(getattr(rt, key) - getattr(ref, key)).max() <= 1e-3, key
    for key in BETAS:
        assert np.abs(getattr(rt, key) - getattr(ref, key)).max() <= 1e-4, key
    np.testing.assert_array_equal(rt.class_idx, ref.class_idx)
    for i, (a, b) in enumerate(zip(rt.selected, ref.selected)):
        assert a == b or abs(ref.beta_de_region[i] - ref.beta_region[i]) < 1e-4
    assert np.abs(rt.score - ref.score).max() <= 1e-5


def test_tiny_runtime_matches_eager(tiny_art):
    model, art = tiny_art
    images = tiny_images(5, seed=21)
    with torch.no_grad():
        argmax = model(images).argmax(1).numpy()
    for classes, expected in ((None, argmax), ([0, 1, 2, 3, 4], np.arange(5)), (2, np.full(5, 2))):
        ref = UnionCAM(model, "features.3")(images, classes)
        rt = Explainer(art, batch_size=4)(images.numpy(), classes)
        assert_agree(rt, ref)
        np.testing.assert_array_equal(rt.class_idx, expected)  # each call explains the class it was asked for


def test_both_selections_occur_and_follow_the_rule(tiny_art):
    """AMS really selects: on these inputs some maps are DR and some R (a path that always returned
    the region map would fail), each by the strict rule, the same in eager and runtime."""
    model, art = tiny_art
    images = tiny_images(6, seed=3)
    ref = UnionCAM(model, "features.3")(images)
    rt = Explainer(art)(images.numpy())
    assert_agree(rt, ref)
    assert set(rt.selected) == {"region", "de_region"}
    for i, sel in enumerate(rt.selected):
        assert (sel == "de_region") == (rt.beta_de_region[i] > rt.beta_region[i])
        chosen = rt.de_region[i] if sel == "de_region" else rt.region[i]
        np.testing.assert_array_equal(rt.cam[i], chosen)


@pytest.fixture(scope="module")
def positive_gradients(tmp_path_factory):
    """TinyCNN with average pooling and positive head weights: its gradients at ``features.3`` are
    positive and vary over the map, so every theta thresholds something. (With max pooling most
    gradients are 0 and with a global-average-pooling head they are constant per channel: there a
    percentile up to the share of non-positive entries changes nothing, and a wrong theta would
    pass unnoticed.)"""
    from torch import nn

    from tiny import TinyCNN
    from unioncam.export import export

    model = TinyCNN()
    model.head[0] = nn.AvgPool2d(2)
    with torch.no_grad():
        for m in (model.head[2], model.head[6]):
            m.weight.abs_()
            m.bias.abs_()
        model.head[1].weight.abs_()
    out = tmp_path_factory.mktemp("pos") / "art"
    export(model, "features.3", out, input_size=(32, 32))
    return model, out


def test_runtime_matches_eager_at_any_theta(positive_gradients):
    model, art = positive_gradients
    images = tiny_images(3, seed=9)
    seen = []
    for theta in (0.0, 37.5, 100.0):
        ref = UnionCAM(model, "features.3", theta=theta)(images)
        rt = Explainer(art, theta=theta)(images.numpy())
        assert_agree(rt, ref)
        seen.append(rt.denoising)
    # Each theta gives its own denoising map, so a path that ignored theta would fail above.
    assert min(np.abs(a - b).max() for i, a in enumerate(seen) for b in seen[i + 1:]) > 0.1


def test_per_call_theta_and_budget_equal_the_constructors(positive_gradients):
    """A server honours a request's theta and max_passes on its one Explainer: per call, the same
    maps as an Explainer built with them."""
    _, art = positive_gradients
    images = tiny_images(2, seed=4).numpy()
    shared = Explainer(art)
    for kwargs in ({"theta": 100.0}, {"max_passes": 2}, {"theta": 37.5, "max_passes": None}):
        np.testing.assert_array_equal(shared(images, **kwargs).cam, Explainer(art, **kwargs)(images).cam)
        np.testing.assert_array_equal(shared(images, **kwargs).denoising, Explainer(art, **kwargs)(images).denoising)
    assert not np.array_equal(shared(images, theta=100.0).denoising, shared(images).denoising)


def test_class_scores_and_probabilities_match_eager(tiny_art):
    model, art = tiny_art
    images = tiny_images(3, seed=13)
    ex = Explainer(art)
    with torch.no_grad():
        probs = torch.softmax(model(images), 1).numpy()
    np.testing.assert_allclose(ex.probabilities(images.numpy()), probs, atol=1e-6)
    maps = np.random.default_rng(1).random((3, 2, 32, 32)).astype(np.float32)
    maps[:, 1] = 0.25  # a constant map is the spec's zero mask
    got = ex.class_scores(images.numpy(), maps, [0, 3, 4])
    for b, c in enumerate([0, 3, 4]):
        for m in range(2):
            mask = maps[b, m] if m == 0 else np.zeros((32, 32), np.float32)
            mask = (mask - mask.min()) / (mask.max() - mask.min()) if mask.max() > mask.min() else mask
            with torch.no_grad():
                want = torch.softmax(model(images[b:b + 1] * torch.from_numpy(mask)), 1)[0, c].item()
            assert abs(got[b, m] - want) <= 1e-6


def test_batch_size_and_skipping_change_nothing(tiny_art):
    _, art = tiny_art
    images = tiny_images(3, seed=5).numpy()
    images[2] = 0.0  # every activation map of a black image is constant
    a = Explainer(art, batch_size=1)(images)
    b = Explainer(art, batch_size=64)(images)
    c = Explainer(art, skip_constant=False)(images)
    assert a.stats["constant_channels"] > 0 and c.stats["masked_passes"] > a.stats["masked_passes"]
    for key in MAPS + BETAS:
        np.testing.assert_allclose(getattr(a, key), getattr(b, key), atol=1e-6, err_msg=key)
        np.testing.assert_allclose(getattr(a, key), getattr(c, key), atol=1e-6, err_msg=key)


@pytest.mark.slow
def test_real_model_two_photos_match_eager(lite0_artifacts, lite0_eager, photos):
    ex = Explainer(lite0_artifacts)
    rt = ex(photos)
    assert_agree(rt, lite0_eager)
    assert rt.class_idx.tolist() == [285, 967]  # Egyptian cat, espresso
    skipped = rt.stats["constant_channels"] / (2 * 1280)
    assert 0.3 < skipped < 0.8


def test_batches_larger_than_a_profile_are_chunked(tiny_art):
    model, art = tiny_art
    images = tiny_images(5, seed=9)
    ex = Explainer(art, batch_size=2)
    ex.grad_batch = 2  # as a TensorRT engine whose profile allows 2 images per call
    assert_agree(ex(images.numpy()), UnionCAM(model, "features.3")(images))


def test_threads_give_the_same_maps_as_serial_calls(tiny_art):
    _, art = tiny_art
    ex = Explainer(art, batch_size=3)
    inputs = [tiny_images(2, seed=s).numpy() for s in range(8)]
    serial = [ex(x).cam for x in inputs]
    results = [None] * len(inputs)

    def work(i):
        results[i] = ex(inputs[i]).cam

    for start in range(0, len(inputs), 4):
        threads = [threading.Thread(target=work, args=(i,)) for i in range(start, start + 4)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
    for a, b in zip(serial, results):
        np.testing.assert_array_equal(a, b)


def test_runtime_imports_no_torch(tiny_art, tmp_path):
    _, art = tiny_art
    np.save(tmp_path / "x.npy", tiny_images(1).numpy())
    code = textwrap.dedent(f"""
        import sys, builtins
        real_import = builtins.__import__
        def guard(name, *a, **k):
            if name == "torch" or name.startswith("torch."):
                raise ImportError("torch is blocked in this test")
            return real_import(name, *a, **k)
        builtins.__import__ = guard
        import numpy as np
        from unioncam.runtime import Explainer
        exp = Explainer({str(art)!r})(np.load({str(tmp_path / 'x.npy')!r}))
        assert exp.cam.shape == (1, 32, 32) and np.isfinite(exp.cam).all()
        assert not any(m == "torch" or m.startswith("torch.") for m in sys.modules)
        print("ok")
    """)
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0 and proc.stdout.strip() == "ok", proc.stderr


@pytest.mark.parametrize("bad, match", [
    (np.zeros((1, 3, 16, 16), np.float32), r"shape \(B, 3, 32, 32\)"),
    (np.full((1, 3, 32, 32), np.nan, np.float32), "NaN"),
    (np.full((1, 3, 32, 32), 1.5, np.float32), r"\[0, 1\]"),
    (np.zeros((1, 3, 32, 32), np.uint8), "float32"),
    (torch.zeros(1, 3, 32, 32), "NumPy array"),
])
def test_bad_images(tiny_art, bad, match):
    with pytest.raises(InvalidInputError, match=match):
        Explainer(tiny_art[1])(bad)


def test_bad_classes_and_options(tiny_art):
    _, art = tiny_art
    x = tiny_images(2).numpy()
    ex = Explainer(art)
    with pytest.raises(InvalidInputError, match="out of range"):
        ex(x, 5)
    with pytest.raises(InvalidInputError, match="one class per image"):
        ex(x, [1, 2, 3])
    with pytest.raises(InvalidInputError, match=r"\[0, 100\]"):
        Explainer(art, theta=-1)
    with pytest.raises(BackendUnavailableError, match="available"):
        Explainer(art, device="cuda")
    with pytest.raises(BackendUnavailableError, match="unknown backend"):
        Explainer(art, backend="openvino")


def test_missing_corrupt_and_tampered_artifacts(tiny_art, tmp_path):
    _, art = tiny_art
    with pytest.raises(ArtifactError, match="export the model first"):
        Explainer(tmp_path / "nothing")
    bad = tmp_path / "tampered"
    shutil.copytree(art, bad)
    with open(bad / "masked_forward.onnx", "ab") as f:
        f.write(b"\x00")
    with pytest.raises(ArtifactError, match="does not match its manifest"):
        Explainer(bad)
    missing = tmp_path / "missing"
    shutil.copytree(art, missing)
    (missing / "gradient.onnx").unlink()
    with pytest.raises(ArtifactError, match="missing"):
        Explainer(missing)
    broken = tmp_path / "broken"
    shutil.copytree(art, broken)
    (broken / "manifest.json").write_text("{not json")
    with pytest.raises(ArtifactError, match="corrupt"):
        Explainer(broken)
    garbage = tmp_path / "garbage"
    shutil.copytree(art, garbage)
    (garbage / "gradient.onnx").write_bytes(b"not an onnx file")
    man = json.loads((garbage / "manifest.json").read_text())
    from unioncam.artifacts import sha256_file

    man["files"]["gradient.onnx"] = sha256_file(garbage / "gradient.onnx")
    (garbage / "manifest.json").write_text(json.dumps(man))
    with pytest.raises(ArtifactError, match="not an ONNX file"):
        Explainer(garbage)


def test_tensorrt_backend_needs_cuda(tiny_art):
    with pytest.raises(BackendUnavailableError):
        Explainer(tiny_art[1], backend="tensorrt", device="cpu")
