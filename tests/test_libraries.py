"""The user's own torchvision and timm models, loaded as ``--model torchvision:NAME`` / ``timm:NAME``
load them, with ``--weights FILE``.

Neither library imports on this project's CI machine (their compiled ops need CUDA torch), so these
tests skip there; they run where the libraries import (a CUDA-torch machine such as the lent GPU:
``benchmarks/gpu/run.sh``). Each case is a real architecture from the library, with seeded weights
saved to a file (no weights can be downloaded offline): the CLI exports it into the cache with the
target layer chosen automatically and explains a real photo, the exported gradients match
autograd, and the runtime's explanation matches the eager reference.
"""
import importlib
import json

import numpy as np
import pytest
import torch

from unioncam import UnionCAM
from unioncam.cli import main
from unioncam.image_io import read_rgb, sample_image_path, to_model_input

SIZE = 128
# (library, architecture, the layer the automatic choice must name: the last feature map before
# global pooling, as a person would pick it). Distinct block types: residual, inverted residual with
# SE and hardswish, timm's EfficientNet (its BatchNormAct2d head) and ConvNeXt (LayerNorm2d, GELU).
CASES = [
    ("torchvision", "resnet18", "layer4"),
    ("torchvision", "mobilenet_v3_small", "features"),
    ("timm", "efficientnet_b0", "bn2"),
    ("timm", "convnext_atto", None),
]


def _library(name: str):
    try:
        return importlib.import_module(name if name == "timm" else "torchvision.models")
    except Exception as e:  # their compiled ops fail to load on CPU-only torch with more than ImportError
        pytest.skip(f"{name} does not import here ({type(e).__name__}); runs where it does (benchmarks/gpu/run.sh)")


def _weights_file(library: str, arch: str, lib, path):
    torch.manual_seed(0)
    net = lib.create_model(arch, pretrained=False) if library == "timm" else lib.get_model(arch, weights=None)
    torch.save(net.state_dict(), path)
    return path


@pytest.mark.slow
@pytest.mark.parametrize("library, arch, layer", CASES, ids=[f"{c[0]}-{c[1]}" for c in CASES])
def test_library_model_exports_and_explains_like_eager(library, arch, layer, tmp_path, monkeypatch, capsys):
    from unioncam.export.verify import gradient_agreement
    from unioncam.models.factory import load_factory
    from unioncam.runtime import Explainer

    lib = _library(library)
    weights = _weights_file(library, arch, lib, tmp_path / f"{arch}.pt")
    monkeypatch.setenv("UNIONCAM_CACHE", str(tmp_path / "cache"))
    photo = sample_image_path("chelsea")
    rc = main(["explain", str(photo), "--model", f"{library}:{arch}", "--weights", str(weights),
               "--input-size", str(SIZE), "--out", str(tmp_path / "out"), "--no-progress"])
    err = capsys.readouterr().err
    assert rc == 0, err
    report = json.loads((tmp_path / "out" / "chelsea.json").read_text())
    chosen = report["layer"]
    assert f"target layer {chosen}" in err  # the automatic choice is printed
    if layer is not None:
        assert chosen == layer, err
    cam = np.load(tmp_path / "out" / "chelsea_cam.npy")
    assert cam.shape == (SIZE, SIZE) and np.isfinite(cam).all() and cam.max() > 0

    # The artifacts the CLI cached, against autograd and the eager reference on the same model.
    (manifest,) = (tmp_path / "cache").rglob("manifest.json")
    art = manifest.parent
    model, _ = load_factory(f"{library}:{arch}", weights)
    x = np.stack([to_model_input(read_rgb(sample_image_path(p)), (SIZE, SIZE)) for p in ("chelsea", "coffee")])
    agreement = gradient_agreement(model, chosen, art, x, np.array([281, 967]))
    assert agreement["gradients_rel"] <= 1e-4 and agreement["logits_rel"] <= 1e-4, agreement
    ref = UnionCAM(model, chosen)(torch.from_numpy(x))
    assert np.abs(ref.beta_region).max() > 1e-6, "the seeded network does not respond to its input"
    with Explainer(art) as ex:
        got = ex(x)
    assert (got.class_idx == ref.class_idx).all()
    for key in ("cam", "region", "denoising"):
        assert np.abs(getattr(got, key) - getattr(ref, key)).max() <= 1e-3, key
    assert np.abs(got.beta_region - ref.beta_region).max() <= 1e-4
    assert report["class_idx"] == int(ref.class_idx[0])
    assert np.abs(cam - ref.cam[0]).max() <= 1e-3
    # One line per model for the GPU run's log (benchmarks/gpu/run.sh keeps it).
    print("LIBRARY-RESULT", json.dumps({"model": f"{library}:{arch}", "layer": chosen, **agreement,
                                        "max_abs_cam_vs_eager": float(np.abs(got.cam - ref.cam).max()),
                                        "selected": list(ref.selected), "masked_passes": got.stats["masked_passes"]}))
