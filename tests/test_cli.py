"""``unioncam explain`` end to end, and its bad inputs: a message and a non-zero exit, no traceback."""
import json
import subprocess
import sys

import numpy as np
import pytest

from unioncam.cli import main
from unioncam.image_io import sample_image_path

# The default model's --layer stem export, started in the background when the session begins.
pytestmark = pytest.mark.usefixtures("lite0_stem_cache")


def test_explain_real_photo_writes_png_npy_json(tmp_path, capsys):
    # The stem (32 channels at 112x112) keeps this end-to-end run to a few seconds.
    rc = main(["explain", str(sample_image_path("coffee")), "--layer", "stem", "--out", str(tmp_path), "--no-progress"])
    assert rc == 0, capsys.readouterr().err
    report = json.loads((tmp_path / "coffee.json").read_text())
    for key in ("model", "layer", "theta", "class_idx", "class_name", "score", "top5", "selected", "beta_denoising",
                "beta_region", "beta_de_region", "backend", "timings_ms"):
        assert key in report, key
    assert report["class_name"] == "espresso" and report["top5"][0]["name"] == "espresso"
    assert abs(report["top5"][0]["probability"] - report["score"]) < 1e-5
    assert report["layer"] == "stem"
    # AMS's rule, strictly, on the reported betas: a mislabelled selection fails here.
    assert report["selected"] == ("de_region" if report["beta_de_region"] > report["beta_region"] else "region")
    cam = np.load(tmp_path / "coffee_cam.npy")
    assert cam.shape == (224, 224) and cam.dtype == np.float32 and 0 <= cam.min() and cam.max() <= 1
    import cv2

    png = cv2.imread(str(tmp_path / "coffee.png"))
    # The photo's own resolution below a caption strip, a colour bar at its right.
    h, w = png.shape[:2]
    assert h > 400 and w > 600
    # --plain: the overlay alone, pixel-aligned with the photo; the keyed one holds it unchanged.
    plain = tmp_path / "plain"
    assert main(["explain", str(sample_image_path("coffee")), "--layer", "stem", "--out", str(plain), "--no-progress",
                 "--plain"]) == 0
    bare = cv2.imread(str(plain / "coffee.png"))
    assert bare.shape == (400, 600, 3)
    np.testing.assert_array_equal(png[h - 400:, :600], bare)
    # Where the map is 0 the photo shows as it is (heat weighted by the map, not blended everywhere).
    from unioncam.image_io import overlay, read_rgb

    rgb = read_rgb(sample_image_path("coffee"))
    zero = overlay(rgb, np.zeros((224, 224), np.float32))
    np.testing.assert_array_equal(zero, cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR))


def test_explain_grayscale_and_rgba_images(tmp_path, capsys):
    import cv2

    bgr = cv2.imread(str(sample_image_path("coffee")))
    small = cv2.resize(bgr, (90, 60))
    cv2.imwrite(str(tmp_path / "grey.png"), cv2.cvtColor(small, cv2.COLOR_BGR2GRAY))
    cv2.imwrite(str(tmp_path / "rgba.png"), cv2.cvtColor(small, cv2.COLOR_BGR2BGRA))
    out = tmp_path / "out"
    # The same pixels as plain 3-channel files: grey replicated, colour without alpha.
    cv2.imwrite(str(tmp_path / "grey3.png"), cv2.cvtColor(cv2.cvtColor(small, cv2.COLOR_BGR2GRAY), cv2.COLOR_GRAY2BGR))
    cv2.imwrite(str(tmp_path / "rgb.png"), small)
    rc = main(["explain", *(str(tmp_path / f"{n}.png") for n in ("grey", "rgba", "grey3", "rgb")), "--layer", "stem",
               "--out", str(out), "--no-progress"])
    assert rc == 0, capsys.readouterr().err
    np.testing.assert_array_equal(np.load(out / "grey_cam.npy"), np.load(out / "grey3_cam.npy"))
    np.testing.assert_array_equal(np.load(out / "rgba_cam.npy"), np.load(out / "rgb_cam.npy"))
    assert np.abs(np.load(out / "grey_cam.npy") - np.load(out / "rgb_cam.npy")).max() > 1e-2  # colour matters


@pytest.mark.parametrize(
    "extra, match",
    [
        (["--model", "alexnet"], "unknown model"),
        (["--layer", "blocks.99"], "not found"),
        (["--class", "1000"], "out of range"),
        (["--theta", "150"], r"\[0, 100\]"),
        (["--weights", "/nonexistent.pth"], "weights file not found"),
    ],
)
def test_bad_options_exit_nonzero_with_message(tmp_path, capsys, extra, match):
    import re

    rc = main(["explain", str(sample_image_path("coffee")), "--layer", "stem", "--out", str(tmp_path), "--no-progress", *extra])
    err = capsys.readouterr().err
    assert rc != 0 and re.search(match, err), err
    assert "Traceback" not in err


def test_missing_and_corrupt_images_fail_cleanly_others_still_done(tmp_path, capsys):
    bad = tmp_path / "bad.png"
    bad.write_bytes(b"\x89PNG\r\n\x1a\n" + b"\x00garbage" * 10)
    out = tmp_path / "out"
    rc = main(["explain", str(tmp_path / "missing.jpg"), str(bad), str(sample_image_path("coffee")),
               "--layer", "stem", "--out", str(out), "--no-progress"])
    err = capsys.readouterr().err
    assert rc == 1
    assert "image not found" in err and "cannot decode" in err
    assert (out / "coffee.json").exists()  # the good image is not lost


def test_console_script_bad_image_exit_code(tmp_path):
    bad = tmp_path / "x.jpg"
    bad.write_text("not an image")
    proc = subprocess.run([sys.executable, "-m", "unioncam", "explain", str(bad), "--out", str(tmp_path)],
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 1
    assert "cannot decode" in proc.stderr and "Traceback" not in proc.stderr


def test_torch_and_onnxruntime_backends_agree_and_cache_is_reused(tmp_path, capsys):
    photo = str(sample_image_path("coffee"))
    assert main(["explain", photo, "--layer", "stem", "--backend", "torch", "--out", str(tmp_path / "t"), "--no-progress"]) == 0
    assert main(["explain", photo, "--layer", "stem", "--out", str(tmp_path / "o"), "--no-progress"]) == 0
    capsys.readouterr()
    assert main(["explain", photo, "--layer", "stem", "--out", str(tmp_path / "o"), "--no-progress"]) == 0
    assert "exporting" not in capsys.readouterr().err  # the cached export is reused
    a = np.load(tmp_path / "t" / "coffee_cam.npy")
    b = np.load(tmp_path / "o" / "coffee_cam.npy")
    assert np.abs(a - b).max() <= 1e-3
    ja = json.loads((tmp_path / "t" / "coffee.json").read_text())
    jb = json.loads((tmp_path / "o" / "coffee.json").read_text())
    assert ja["backend"] == "torch" and jb["backend"] == "onnxruntime"
    # Every beta: beta_denoising scores the denoising map D, beta_de_region the fused map, so an
    # unselected map that differs between backends shows up here too.
    for key in ("beta_denoising", "beta_region", "beta_de_region", "score"):
        assert abs(ja[key] - jb[key]) <= 1e-4, key
    assert ja["selected"] == jb["selected"] and ja["class_idx"] == jb["class_idx"]


@pytest.mark.parametrize("damage", ["append", "flip"])
def test_corrupt_cache_entry_is_exported_again(tmp_path, capsys, damage):
    """Junk appended to a cached graph, or bytes flipped inside it: refused, exported again, used,
    with the same result (the tiny factory model keeps this to seconds; the check is the manifest's
    SHA-256, the same for every model)."""
    import os
    from pathlib import Path

    photo = str(sample_image_path("coffee"))
    flags = ["--model", "tiny:TinyCNN", "--layer", "features.3", "--input-size", "32", "--no-progress"]
    assert main(["explain", photo, *flags, "--out", str(tmp_path / "a")]) == 0
    entry = next(Path(os.environ["UNIONCAM_CACHE"]).glob("tiny_TinyCNN-features.3-*"))
    graph = entry / "masked_forward.onnx"
    data = bytearray(graph.read_bytes())
    if damage == "append":
        data += b"junk"
    else:
        data[len(data) // 2: len(data) // 2 + 64] = bytes(64)
    graph.write_bytes(bytes(data))
    capsys.readouterr()
    assert main(["explain", photo, *flags, "--out", str(tmp_path / "b")]) == 0
    assert "exporting again" in capsys.readouterr().err
    np.testing.assert_array_equal(np.load(tmp_path / "a" / "coffee_cam.npy"), np.load(tmp_path / "b" / "coffee_cam.npy"))


def test_unavailable_device_is_a_clear_error(tmp_path, capsys):
    rc = main(["explain", str(sample_image_path("coffee")), "--layer", "stem", "--device", "cuda", "--out", str(tmp_path)])
    err = capsys.readouterr().err
    assert rc == 1 and "CUDAExecutionProvider" in err and "Traceback" not in err


def test_explain_baseline_method(tmp_path, capsys):
    rc = main(["explain", str(sample_image_path("coffee")), "--layer", "stem", "--method", "gradcampp",
               "--out", str(tmp_path), "--no-progress"])
    assert rc == 0, capsys.readouterr().err
    report = json.loads((tmp_path / "coffee.json").read_text())
    assert report["method"] == "gradcampp" and report["beta_region"] is None and report["class_name"] == "espresso"
