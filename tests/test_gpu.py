"""The eager reference on a CUDA GPU (``--backend torch --device cuda``) against the same reference on
the CPU, with efficientnet_lite0's real weights on two real photos. Skipped without a GPU (as on this
project's CI); run by ``benchmarks/gpu/run.sh`` on the lent GPU.

Tolerance: with TF32 off the GPU computes the same float32 function in another order, so maps agree
to 1e-3 and betas to 1e-4, as the ONNX Runtime paths must. PyTorch's default lets cuDNN convolutions
use TF32 (10-bit mantissa); that looser agreement is measured by ``benchmarks/gpu/agreement.py``, not
asserted.
"""
import json

import numpy as np
import pytest
import torch

from unioncam import UnionCAM
from unioncam.cli import main
from unioncam.image_io import read_rgb, sample_image_path, to_model_input

pytestmark = pytest.mark.gpu


@pytest.fixture(scope="module")
def cuda():
    if not torch.cuda.is_available():
        pytest.skip("no CUDA GPU here")
    return torch.device("cuda")


@pytest.fixture(scope="module")
def lite0_and_photos():
    from unioncam.models import load

    model, layer = load("efficientnet_lite0")
    x = np.stack([to_model_input(read_rgb(sample_image_path(p)), (224, 224)) for p in ("chelsea", "coffee")])
    return model, layer, torch.from_numpy(x)


def test_eager_reference_on_cuda_matches_cpu(cuda, lite0_and_photos):
    model, layer, x = lite0_and_photos
    ref = UnionCAM(model, layer, batch_size=64)(x)
    model.to(cuda)
    try:
        with torch.backends.cudnn.flags(enabled=True, allow_tf32=False):
            got = UnionCAM(model, layer, batch_size=256)(x.to(cuda))
    finally:
        model.to("cpu")
    assert (got.class_idx == ref.class_idx).all() and list(got.selected) == list(ref.selected)
    for key in ("cam", "region", "denoising", "de_region"):
        assert np.abs(getattr(got, key) - getattr(ref, key)).max() <= 1e-3, key
    for key in ("beta_region", "beta_denoising", "beta_de_region"):
        assert np.abs(getattr(got, key) - getattr(ref, key)).max() <= 1e-4, key
    assert got.stats["masked_passes"] == ref.stats["masked_passes"]


def test_cli_explains_on_cuda(cuda, tmp_path, capsys):
    """The user's command: ``explain --backend torch --device cuda`` writes the same map as on the CPU
    (default TF32 settings, so the tolerance is TF32's)."""
    maps = {}
    for device in ("cpu", "cuda"):
        rc = main(["explain", str(sample_image_path("coffee")), "--backend", "torch", "--device", device,
                   "--out", str(tmp_path / device), "--no-progress"])
        assert rc == 0, capsys.readouterr().err
        maps[device] = np.load(tmp_path / device / "coffee_cam.npy")
        report = json.loads((tmp_path / device / "coffee.json").read_text())
        assert report["device"] == device and report["class_name"] == "espresso"
    assert np.abs(maps["cuda"] - maps["cpu"]).max() <= 2e-2


def test_bench_times_the_eager_reference_on_cuda(cuda, tmp_path, capsys):
    out = tmp_path / "bench.json"
    rc = main(["bench", "--model", "efficientnet_lite0", "--backend", "torch", "--device", "cuda",
               "--batch-size", "128", "--iterations", "2", "--no-ceiling", "--no-progress", "--json", str(out)])
    assert rc == 0, capsys.readouterr().err
    (cell,) = json.loads(out.read_text())["cells"]
    assert cell["status"] == "ok" and cell["device"] == "cuda"
    # lite0's weights alone are 18 MB; a cell that never touched the GPU would report ~0
    assert 18 < cell["peak_device_mb"] < 20_000 and cell["gpu"]
