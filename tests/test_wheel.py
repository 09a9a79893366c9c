"""What users install: a wheel built from this tree, imported from its install folder (not the
checkout), runs the torch-free runtime with torch blocked and matches the checkout's results."""
import os
import subprocess
import sys
import textwrap
import zipfile

import numpy as np
import pytest

from test_runners import BLOCK_TORCH
from tiny import tiny_images

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.fixture(scope="module")
def installed_wheel(tmp_path_factory):
    out = tmp_path_factory.mktemp("wheel")
    try:  # the venv's own setuptools when it is new enough: no download
        import setuptools

        no_iso = ["--no-build-isolation"] if int(setuptools.__version__.split(".")[0]) >= 68 else []
    except ImportError:
        no_iso = []
    build = subprocess.run([sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", *no_iso, "-w", str(out / "dist"),
                            ROOT], capture_output=True, text=True, timeout=600)
    assert build.returncode == 0, build.stderr[-2000:]
    (wheel,) = (out / "dist").glob("unioncam-*.whl")
    target = out / "site"
    inst = subprocess.run([sys.executable, "-m", "pip", "install", "-q", "--no-deps", "--target", str(target), str(wheel)],
                          capture_output=True, text=True, timeout=300)
    assert inst.returncode == 0, inst.stderr[-2000:]
    return wheel, target


def test_wheel_holds_every_package(installed_wheel):
    wheel, _ = installed_wheel
    names = set(zipfile.ZipFile(wheel).namelist())
    from pathlib import Path

    root = Path(__file__).resolve().parent.parent
    # Every source module of the tree, under its installed name: a package left out of
    # pyproject.toml's list (as unioncam.bench once was) fails here.
    expected = {"unioncam/data/chelsea.png", "unioncam/data/coffee.png", "unioncam/data/gemm.onnx"}
    for folder, prefix in (("unioncam", "unioncam"), ("export", "unioncam/export"), ("runtime", "unioncam/runtime")):
        for f in (root / folder).rglob("*.py"):
            expected.add(f"{prefix}/{f.relative_to(root / folder).as_posix()}")
    missing = sorted(expected - names)
    assert not missing, missing
    assert not any(n.startswith(("tests/", "benchmarks/", "export/", "runtime/")) for n in names)


def test_installed_runtime_runs_without_torch_and_matches_the_checkout(installed_wheel, tiny_art, tmp_path):
    _, target = installed_wheel
    _, art = tiny_art
    x = tiny_images(2, seed=5).numpy()
    np.save(tmp_path / "x.npy", x)
    code = BLOCK_TORCH + textwrap.dedent(f"""
        import importlib, pkgutil
        import numpy as np
        import unioncam, unioncam.runtime
        assert unioncam.__file__.startswith({str(target)!r}), unioncam.__file__
        for info in pkgutil.walk_packages(unioncam.runtime.__path__, "unioncam.runtime."):
            importlib.import_module(info.name)
        from unioncam.runtime import Explainer
        exp = Explainer({str(art)!r})(np.load({str(tmp_path / 'x.npy')!r}))
        np.save({str(tmp_path / 'cam.npy')!r}, exp.cam)
        assert not any(m == "torch" or m.startswith("torch.") for m in sys.modules)
        print("ok")
    """)
    env = {**os.environ, "PYTHONPATH": str(target)}
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300, env=env, cwd=tmp_path)
    assert proc.returncode == 0 and proc.stdout.strip() == "ok", proc.stderr[-3000:]
    from unioncam.runtime import Explainer

    np.testing.assert_array_equal(np.load(tmp_path / "cam.npy"), Explainer(art)(x).cam)


@pytest.mark.slow
def test_fresh_venv_without_torch_runs_the_cli_on_an_exported_folder(installed_wheel, lite0_artifacts, tmp_path):
    """The release path: `pip install unioncam-*.whl` into a new virtual environment that has no torch,
    then `unioncam explain --artifacts DIR` on a folder exported in the torch environment."""
    wheel, _ = installed_wheel
    venv = tmp_path / "fresh"
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True, timeout=300)
    py = venv / "bin" / "python"
    inst = subprocess.run([str(py), "-m", "pip", "install", "-q", str(wheel)], capture_output=True, text=True, timeout=900)
    assert inst.returncode == 0, inst.stderr[-3000:]
    probe = subprocess.run([str(py), "-c", "import importlib.util as u; print(u.find_spec('torch') is None)"],
                           capture_output=True, text=True, timeout=60)
    assert probe.stdout.strip() == "True"  # torch is really absent, not just blocked
    out = tmp_path / "out"
    proc = subprocess.run([str(venv / "bin" / "unioncam"), "explain", "--artifacts", str(lite0_artifacts),
                           "--out", str(out), "--no-progress"], capture_output=True, text=True, timeout=600,
                          cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    import json

    report = json.loads((out / "chelsea.json").read_text())
    assert report["class_name"] in ("Egyptian cat", "tabby", "tiger cat") and report["layer"] == "head"
    cam = np.load(out / "chelsea_cam.npy")
    assert cam.shape == (224, 224) and np.isfinite(cam).all() and cam.max() == 1.0
    # The bench's ceiling in the same torch-free, onnx-free environment: ONNX Runtime's GEMM comes
    # from the graph shipped in the wheel.
    ceiling = subprocess.run([str(py), "-m", "unioncam.bench.ceiling", "1"], capture_output=True, text=True,
                             timeout=120, cwd=tmp_path)
    assert ceiling.returncode == 0, ceiling.stderr[-3000:]
    rates = json.loads(ceiling.stdout.strip().splitlines()[-1])
    assert rates["onnxruntime"]["sustained"] > 0 and rates["ceiling"] >= rates["blas"]["sustained"] > 0
