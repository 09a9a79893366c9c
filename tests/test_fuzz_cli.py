"""Fuzz the CLI with a generated corpus (seeded, so a failure reproduces): broken files, odd but
valid images, bad options, and good photos mixed in. Whatever the corpus, no traceback and no
"unexpected" line, the good photos are explained, every map is finite in [0, 1], and no input file
is modified."""
import hashlib
import json
import subprocess
import sys

import cv2
import numpy as np
import pytest

from unioncam.image_io import sample_image_path

FAST = ["--layer", "stem", "--no-progress"]
pytestmark = pytest.mark.usefixtures("lite0_stem_cache")  # prewarmed (tests/prewarm.py)


def corpus(folder, seed=0):
    """(good photos, odd valid images, broken files) written into ``folder``."""
    rng = np.random.default_rng(seed)
    coffee = cv2.imread(str(sample_image_path("coffee")))
    good = [folder / "cat.png", folder / "coffee.jpg"]
    cv2.imwrite(str(good[0]), cv2.imread(str(sample_image_path("chelsea"))))
    cv2.imwrite(str(good[1]), coffee)
    odd = [folder / "one_pixel.png", folder / "deep16.png", folder / "thin.webp"]
    cv2.imwrite(str(odd[0]), np.array([[128]], np.uint8))
    cv2.imwrite(str(odd[1]), (rng.random((20, 30, 4)) * 65535).astype(np.uint16))
    cv2.imwrite(str(odd[2]), cv2.resize(coffee, (300, 3)))
    broken = []
    jpg = cv2.imencode(".jpg", coffee)[1].tobytes()
    png = sample_image_path("chelsea").read_bytes()
    for name, data in [("random.png", rng.bytes(2000)), ("empty.jpg", b""), ("cut.jpg", jpg[: len(jpg) // 3]),
                       ("cut.png", png[:5000]), ("text.jpg", b"just text\n" * 20),
                       ("flipped.png", bytes(b ^ 0xFF if i > 100 and i % 7 == 0 else b for i, b in enumerate(png[:20000])))]:
        (folder / name).write_bytes(data)
        broken.append(folder / name)
    (folder / "a_folder.png").mkdir()
    broken += [folder / "a_folder.png", folder / "missing.png"]
    return good, odd, broken


def cli(*args, timeout=600):
    proc = subprocess.run([sys.executable, "-m", "unioncam", *map(str, args)], capture_output=True, text=True,
                          timeout=timeout)
    assert "Traceback" not in proc.stderr and "unexpected" not in proc.stderr, proc.stderr[-3000:]
    assert "internal error" not in proc.stderr, proc.stderr[-3000:]
    return proc


@pytest.mark.slow
def test_fuzzed_corpus_never_crashes_and_never_modifies_inputs(tmp_path):
    inputs = tmp_path / "in"
    inputs.mkdir()
    good, odd, broken = corpus(inputs)
    files = sorted(good + odd + broken, key=lambda p: hashlib.sha256(p.name.encode()).hexdigest())  # mixed order
    before = {p: p.read_bytes() for p in inputs.iterdir() if p.is_file()}
    out = tmp_path / "out"
    proc = cli("explain", *files, "--out", out, *FAST)
    assert proc.returncode == 1  # some inputs are broken
    for p in broken:
        assert str(p.name) in proc.stderr, p.name  # each broken file named in its own error line
    for p in good + odd:
        report = json.loads((out / f"{p.stem}.json").read_text())
        cam = np.load(out / f"{p.stem}_cam.npy")
        assert cam.shape == (224, 224) and np.isfinite(cam).all() and 0.0 <= cam.min() and cam.max() <= 1.0
        assert report["class_idx"] >= 0
    assert json.loads((out / "cat.json").read_text())["class_name"] in ("tabby", "tiger cat", "Egyptian cat")
    assert json.loads((out / "coffee.json").read_text())["class_name"] == "espresso"
    assert {p: p.read_bytes() for p in inputs.iterdir() if p.is_file()} == before


@pytest.mark.parametrize("options", [
    ["--theta", "-1"], ["--theta", "inf"], ["--batch-size", "0"], ["--class", "-5"], ["--class", "1e3"],
    ["--method", "lime"], ["--model", "nope"], ["--layer", ""], ["--backend", "openvino"], ["--input-size", "7"],
])
def test_fuzzed_options_fail_cleanly(tmp_path, options):
    proc = cli("explain", sample_image_path("coffee"), "--out", tmp_path, *FAST, *options)
    assert proc.returncode in (1, 2) and proc.stderr.strip(), options
    assert len(proc.stderr.strip().splitlines()) <= 3 or "usage:" in proc.stderr
