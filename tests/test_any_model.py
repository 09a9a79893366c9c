"""Any model from the command line (``--model pkg.module:factory``) and the three real bundled
EfficientNet-Lite models."""
import json
import textwrap

import numpy as np
import pytest
import torch

from unioncam.cli import main
from unioncam.image_io import read_rgb, sample_image_path, to_model_input

FACTORY = textwrap.dedent('''
    import torch
    from torch import nn

    def build():
        torch.manual_seed(0)
        net = nn.Sequential(nn.Conv2d(3, 8, 3, stride=2, padding=1), nn.ReLU(),
                            nn.Conv2d(8, 6, 3, stride=2, padding=1), nn.ReLU(),
                            nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(6, 4))
        return net

    def build_with_layer():
        return build(), "3"

    not_callable = 3
''')


@pytest.fixture
def factory_module(tmp_path, monkeypatch):
    (tmp_path / "my_cnns.py").write_text(FACTORY)
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.setenv("UNIONCAM_CACHE", str(tmp_path / "cache"))
    return tmp_path


def test_factory_model_explains_on_both_backends_and_agrees(factory_module, tmp_path, capsys):
    reports = {}
    for backend in ("onnxruntime", "torch"):
        out = tmp_path / backend
        rc = main(["explain", str(sample_image_path("coffee")), "--model", "my_cnns:build", "--layer", "3",
                   "--input-size", "32", "--backend", backend, "--out", str(out), "--no-progress"])
        assert rc == 0, capsys.readouterr().err
        reports[backend] = (json.loads((out / "coffee.json").read_text()), np.load(out / "coffee_cam.npy"))
    (r_ort, cam_ort), (r_torch, cam_torch) = reports["onnxruntime"], reports["torch"]
    assert cam_ort.shape == (32, 32) and r_ort["layer"] == "3" and r_ort["class_name"].startswith("class ")
    assert r_ort["class_idx"] == r_torch["class_idx"] and np.abs(cam_ort - cam_torch).max() <= 1e-3
    # the factory's own layer choice, and the cache reused (keyed by the built model's weights)
    rc = main(["explain", str(sample_image_path("coffee")), "--model", "my_cnns:build_with_layer",
               "--input-size", "32", "--out", str(tmp_path / "own"), "--no-progress"])
    assert rc == 0 and "exporting" in capsys.readouterr().err
    assert np.abs(np.load(tmp_path / "own" / "coffee_cam.npy") - cam_ort).max() <= 1e-6


@pytest.mark.parametrize("model, match", [
    ("my_cnns:nope", "has no attribute"), ("no_such_module:build", "cannot import"),
    ("my_cnns:not_callable", "not callable"),
])
def test_bad_factories_say_what_is_wrong(factory_module, tmp_path, capsys, model, match):
    rc = main(["explain", str(sample_image_path("coffee")), "--model", model, "--input-size", "32",
               "--out", str(tmp_path), "--no-progress"])
    err = capsys.readouterr().err
    assert rc in (1, 2) and match in err and "unexpected" not in err


def test_a_factory_without_a_layer_gets_the_last_feature_map_and_says_so(factory_module, tmp_path, capsys):
    rc = main(["explain", str(sample_image_path("coffee")), "--model", "my_cnns:build", "--input-size", "32",
               "--out", str(tmp_path / "auto"), "--no-progress"])
    err = capsys.readouterr().err
    assert rc == 0, err
    assert "target layer 3 (output 6x8x8" in err and "--layer" in err
    assert json.loads((tmp_path / "auto" / "coffee.json").read_text())["layer"] == "3"


def test_last_feature_map_is_the_registered_default_of_every_model():
    """The automatic choice agrees with the layer chosen by hand for each registered model (pools
    skipped: VGG's last ReLU, not its max pool or 7x7 adaptive pool; a block's name, not its ReLU's)."""
    import warnings

    from tiny import TinyCNN

    from unioncam.model_specs import spec
    from unioncam.models import load
    from unioncam.models.target_layer import last_feature_map

    for name in ("efficientnet_lite0", "vgg16", "resnet50"):
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            model, layer = load(name)
        assert last_feature_map(model, spec(name).input_size)[0] == layer == spec(name).default_layer, name
    assert last_feature_map(TinyCNN(), (32, 32)) == ("head.3", (1, 12, 4, 4))


@pytest.mark.parametrize("library", ["timm", "torchvision"])
def test_library_shorthands_say_when_the_library_is_missing(library, tmp_path, capsys):
    import importlib

    try:
        importlib.import_module(library if library == "timm" else "torchvision.models")
        pytest.skip(f"{library} imports here; building its models needs their weights online")
    except Exception:
        pass
    rc = main(["explain", str(sample_image_path("coffee")), "--model", f"{library}:resnet18", "--out", str(tmp_path),
               "--no-progress"])
    err = capsys.readouterr().err
    assert rc == 1 and f"{library} does not import here" in err and "Traceback" not in err


@pytest.mark.parametrize("name, size", [("efficientnet_lite1", 240), ("efficientnet_lite2", 260)])
def test_bundled_lite1_and_lite2_are_real_imagenet_models(name, size):
    from unioncam.classes import class_name
    from unioncam.model_specs import spec
    from unioncam.models import load

    assert spec(name).input_size == (size, size)
    model, layer = load(name)
    x = torch.from_numpy(np.stack([to_model_input(read_rgb(sample_image_path(p)), (size, size))
                                   for p in ("chelsea", "coffee")]))
    with torch.no_grad():
        probs = torch.softmax(model(x), dim=1)
    assert class_name(int(probs[0].argmax())) == "Egyptian cat" and float(probs[0].max()) > 0.5
    assert class_name(int(probs[1].argmax())) == "espresso" and float(probs[1].max()) > 0.5
    assert layer == "head"


def test_bench_takes_a_factory_model(factory_module, tmp_path, capsys):
    """``bench --model pkg.module:factory --layer --input-size``: exported into the cache, timed, and
    its map equal to what ``explain`` writes for the same photo."""
    photo = str(sample_image_path("coffee"))
    out = tmp_path / "bench.json"
    rc = main(["bench", "--model", "my_cnns:build", "--layer", "3", "--input-size", "32", "--images", photo,
               "--iterations", "1", "--warmup", "0", "--no-ceiling", "--no-progress", "--json", str(out)])
    assert rc == 0, capsys.readouterr().err
    report = json.loads(out.read_text())
    assert report["model"] == "my_cnns:build" and report["layer"] == "3"
    (cell,) = report["cells"]
    assert cell["status"] == "ok" and cell["gflops_per_s"] > 0 and cell["masked_passes"] > 3
    assert "exporting my_cnns:build" in capsys.readouterr().err
    rc = main(["explain", photo, "--model", "my_cnns:build", "--layer", "3", "--input-size", "32",
               "--out", str(tmp_path / "x"), "--no-progress"])
    assert rc == 0 and "exporting" not in capsys.readouterr().err  # the bench's export was reused
