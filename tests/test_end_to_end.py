"""The whole of UnionCAM in one ONNX graph: agreement with the eager reference, TensorRT's parser,
and the C example built against the ONNX Runtime C API (real photo, bad files, valgrind)."""
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import onnxruntime as ort
import pytest

from tiny import tiny_images
from unioncam import UnionCAM
from unioncam.runtime.backends.tensorrt.engine_file import import_tensorrt
from unioncam.image_io import read_rgb, sample_image_path, to_model_input

EXAMPLE = Path(__file__).resolve().parent.parent / "examples" / "c"


def run_graph(path, image, cls=None):
    """Run unioncam.onnx; ``cls`` None feeds -1 (the arg-max), as the C example does."""
    s = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    feeds = {"image": image, "class_idx": np.array([-1 if cls is None else cls], np.int64)}
    return dict(zip([o.name for o in s.get_outputs()], s.run(None, feeds)))


def assert_matches(out, ref, i=0):
    for key in ("cam", "denoising", "region", "de_region"):
        assert np.abs(out[key][0] - getattr(ref, key)[i]).max() <= 1e-3, key
    ref_betas = [ref.beta_denoising[i], ref.beta_region[i], ref.beta_de_region[i]]
    assert np.abs(out["betas"] - ref_betas).max() <= 1e-4
    assert int(out["class"][0]) == int(ref.class_idx[i])
    sel = "de_region" if out["selected"][0] == 1 else "region"
    assert sel == ref.selected[i] or abs(ref.beta_de_region[i] - ref.beta_region[i]) < 1e-4
    assert abs(float(out["score"][0]) - float(ref.score[i])) <= 1e-5


def test_tiny_graph_matches_eager(tiny_e2e):
    model, path = tiny_e2e
    for seed in range(3):
        x = tiny_images(1, seed=seed)
        ref = UnionCAM(model, "features.3")(x)
        out = run_graph(path, x.numpy())
        assert_matches(out, ref)
        assert int(out["passes"][0]) == ref.stats["masked_passes"]
        other = (int(ref.class_idx[0]) + 1) % 5  # an explicit class that is not the arg-max
        assert_matches(run_graph(path, x.numpy(), other), UnionCAM(model, "features.3")(x, other))


@pytest.fixture(scope="module")
def planted_e2e(tmp_path_factory):
    from tiny import PlantedCNN

    from unioncam.export.end_to_end import export_end_to_end

    model = PlantedCNN()
    out = tmp_path_factory.mktemp("planted")
    export_end_to_end(model, "plant", out, input_size=(32, 32), chunk=3)
    return model, out / "unioncam.onnx"


def test_skipped_constant_and_duplicate_channels_change_no_value(planted_e2e):
    """Channels 4 and 6 repeat channel 0's mask (x2 and a copy), 5 and 7 are constant: the graph
    runs one pass per distinct non-constant mask (counted here by np.unique), and its maps equal
    the eager reference's that runs all 8 channels."""
    import torch

    from unioncam import algebra

    model, path = planted_e2e
    for seed in range(3):
        x = tiny_images(1, seed=seed)
        everything = UnionCAM(model, "plant", skip_constant=False)(x)
        assert everything.stats["masked_passes"] == 8 + 3
        out = run_graph(path, x.numpy())
        assert_matches(out, everything)
        with torch.no_grad():
            A = model.plant(model.features(x))[0].numpy()
        keys = algebra.minmax(A).reshape(8, -1)
        distinct = len(np.unique(keys[keys.max(axis=1) > 0], axis=0))
        assert distinct + 2 <= int((keys.max(axis=1) > 0).sum())  # 4 and 6 repeat 0, 5 and 7 are constant
        assert int(out["passes"][0]) == distinct + 3
        # The eager reference's own duplicate skip agrees on which passes it needs.
        assert UnionCAM(model, "plant", skip_duplicates=True)(x).stats["masked_passes"] == distinct + 3


def test_onnx_runtime_prints_nothing_on_load_or_run(tiny_e2e):
    """No warning in a user's log: a session at ONNX Runtime's default log level, in its own process."""
    code = ("import numpy as np, onnxruntime as ort, sys\n"
            "s = ort.InferenceSession(sys.argv[1], providers=['CPUExecutionProvider'])\n"
            "s.run(None, {'image': np.full((1, 3, 32, 32), 0.5, np.float32), 'class_idx': np.array([-1])})\n"
            "print('ran')")
    proc = subprocess.run([sys.executable, "-c", code, str(tiny_e2e[1])], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0 and proc.stdout.strip() == "ran"
    assert proc.stderr == "", proc.stderr
    # The graph takes class_idx as a real input (no initializer of the same name to warn about).
    import onnx

    m = onnx.load(str(tiny_e2e[1]), load_external_data=False)
    assert [i.name for i in m.graph.input] == ["image", "class_idx"]
    assert not {i.name for i in m.graph.input} & {t.name for t in m.graph.initializer}


@pytest.mark.skipif(import_tensorrt()[0] is None, reason="no TensorRT module (pip install 'unioncam[tensorrt]')")
def test_graph_parses_and_builds_in_tensorrt(tiny_e2e):
    from unioncam.runtime.backends.tensorrt.builder import parse_check

    assert "built" in parse_check(tiny_e2e[1], compute_capability="SM86")


@pytest.mark.skipif(import_tensorrt()[0] is None, reason="no TensorRT module (pip install 'unioncam[tensorrt]')")
def test_planted_graph_with_skips_builds_in_tensorrt(planted_e2e):
    from unioncam.runtime.backends.tensorrt.builder import parse_check

    assert "built" in parse_check(planted_e2e[1], compute_capability="SM86")


@pytest.mark.slow
def test_real_model_two_photos(lite0_e2e, lite0_eager, photos):
    for i in range(2):
        assert_matches(run_graph(lite0_e2e, photos[i : i + 1]), lite0_eager, i)


@pytest.fixture(scope="session")
def c_binary():
    if shutil.which("cc") is None and shutil.which("gcc") is None:
        pytest.skip("no C compiler")
    env = dict(os.environ, PYTHON=sys.executable)
    # setup.sh downloads the C API headers (Debian's libonnxruntime-dev) on first use: the suite's
    # one network access (README, "Use from C/C++"). Without the network that one test is skipped.
    setup = subprocess.run(["bash", str(EXAMPLE / "setup.sh")], env=env, capture_output=True, text=True, timeout=600)
    if setup.returncode == 3:
        pytest.skip(f"the C example's headers are missing and cannot be fetched: {setup.stderr.strip()}")
    assert setup.returncode == 0, setup.stderr
    subprocess.run(["make", "-C", str(EXAMPLE)], check=True, env=env, capture_output=True, timeout=300)
    return EXAMPLE / "build" / "unioncam_explain"


def write_ppm(path, name="coffee", size=None):
    import cv2

    bgr = cv2.imread(str(sample_image_path(name)))
    if size:
        bgr = cv2.resize(bgr, size)
    cv2.imwrite(str(path), bgr)
    return path


def read_pgm16(path):
    data = Path(path).read_bytes()
    parts = data.split(b"\n", 3)
    assert parts[0] == b"P5" and parts[2] == b"65535"
    w, h = map(int, parts[1].split())
    return np.frombuffer(parts[3], dtype=">u2").reshape(h, w).astype(np.float32) / 65535.0


@pytest.mark.slow
def test_c_example_matches_python_runtime_on_a_real_photo(c_binary, lite0_e2e, lite0_artifacts, tmp_path):
    from unioncam.runtime import Explainer

    ppm = write_ppm(tmp_path / "coffee.ppm")
    proc = subprocess.run([str(c_binary), str(lite0_e2e), str(ppm), str(tmp_path / "cam.pgm")],
                          capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr
    printed = dict(line.split(" ", 1) for line in proc.stdout.strip().splitlines())
    exp = Explainer(lite0_artifacts)(to_model_input(read_rgb(ppm), (224, 224))[None])
    assert int(printed["class"]) == int(exp.class_idx[0]) == 967
    assert int(printed["masked_passes"]) == exp.stats["masked_passes"]  # same constant and duplicate skips
    assert abs(float(printed["score"]) - float(exp.score[0])) <= 1e-5
    assert abs(float(printed["beta_region"]) - float(exp.beta_region[0])) <= 1e-4
    assert printed["selected"] == exp.selected[0]
    cam = read_pgm16(tmp_path / "cam.pgm")
    assert cam.shape == (224, 224)
    assert np.abs(cam - exp.cam[0]).max() <= 1e-3


def test_c_example_bad_files(c_binary, tiny_e2e, tiny_art, tmp_path):
    ppm = write_ppm(tmp_path / "ok.ppm", size=(48, 40))
    not_ppm = tmp_path / "x.ppm"
    not_ppm.write_text("hello")
    truncated = tmp_path / "cut.ppm"
    truncated.write_bytes(ppm.read_bytes()[:200])
    cases = [
        ([str(tiny_e2e[1]), str(not_ppm), str(tmp_path / "o.pgm")], "not a binary PPM", 1),
        ([str(tiny_e2e[1]), str(truncated), str(tmp_path / "o.pgm")], "truncated", 1),
        ([str(tiny_art[1] / "gradient.onnx"), str(ppm), str(tmp_path / "o.pgm")], "not a unioncam end-to-end graph", 1),
        ([str(tmp_path / "missing.onnx"), str(ppm), str(tmp_path / "o.pgm")], "loading the model", 1),
        ([str(tiny_e2e[1]), str(ppm)], "usage", 2),
        ([str(tiny_e2e[1]), str(ppm), str(tmp_path / "o.pgm"), "-4"], "class must be", 2),
        # The tiny model has 5 classes: the graph's status output says so, and nothing is written.
        ([str(tiny_e2e[1]), str(ppm), str(tmp_path / "bad_class.pgm"), "7"], "class is out of range for this model (status 3)", 1),
    ]
    for args, message, code in cases:
        proc = subprocess.run([str(c_binary), *args], capture_output=True, text=True, timeout=120)
        assert proc.returncode == code and message in proc.stderr, (args, proc.returncode, proc.stderr)
    assert not (tmp_path / "bad_class.pgm").exists()
    ok = subprocess.run([str(c_binary), str(tiny_e2e[1]), str(ppm), str(tmp_path / "o.pgm"), "3"],
                        capture_output=True, text=True, timeout=120)
    assert ok.returncode == 0 and "class 3" in ok.stdout
    # The C program matches the tiny graph run from Python on the same resized input.
    x = to_model_input(read_rgb(ppm), (32, 32))[None]
    assert np.abs(read_pgm16(tmp_path / "o.pgm") - run_graph(tiny_e2e[1], x, 3)["cam"][0]).max() <= 1e-4


@pytest.mark.skipif(shutil.which("valgrind") is None, reason="valgrind not installed")
def test_c_example_under_valgrind(c_binary, tiny_e2e, tmp_path):
    ppm = write_ppm(tmp_path / "ok.ppm", size=(48, 40))
    cut = tmp_path / "cut.ppm"
    cut.write_bytes(ppm.read_bytes()[:300])
    for image, code in ((ppm, 0), (cut, 1)):
        proc = subprocess.run(
            ["valgrind", "--leak-check=full", "--errors-for-leak-kinds=definite,indirect", "--error-exitcode=9",
             f"--suppressions={EXAMPLE / 'valgrind.supp'}", "-q", str(c_binary), str(tiny_e2e[1]), str(image),
             str(tmp_path / "v.pgm")], capture_output=True, text=True, timeout=600)
        assert proc.returncode == code, proc.stderr[-3000:]  # 9 would be a memory error or a leak
        assert "Invalid" not in proc.stderr and "definitely lost" not in proc.stderr


def test_theta_is_baked_into_the_graph(tmp_path):
    """The one graph exported at theta 90 denoises at 90: its map is the eager reference's at 90, and
    not the one at the default 10 (TinyCNN's max-pool head leaves 3 of 4 gradients 0, so only a
    threshold above the 75th percentile moves the map)."""
    from tiny import TinyCNN

    from unioncam.export.end_to_end import export_end_to_end

    model = TinyCNN()
    info = export_end_to_end(model, "features.3", tmp_path, input_size=(32, 32), theta=90.0, chunk=3)
    x = tiny_images(1, seed=6)
    out = run_graph(info["path"], x.numpy())
    at90, at10 = UnionCAM(model, "features.3", theta=90.0)(x), UnionCAM(model, "features.3", theta=10.0)(x)
    assert_matches(out, at90)
    assert np.abs(at90.denoising - at10.denoising).max() > 1e-2
