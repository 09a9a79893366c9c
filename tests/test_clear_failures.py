"""Issue 26, what was left: each cause a hostile run found gets its own typed error, one line that
names the cause (and the path where there is one), the exact exit code, no user file changed and
no temporary file left; one bad input never stops the others.

Models come from ``tests/factories.py`` (``--model factories:NAME``), so nothing here waits for a
real export.
"""
from __future__ import annotations

import hashlib
import json
import os
import resource
import signal
import subprocess
import sys
from pathlib import Path

import cv2
import numpy as np
import pytest

from unioncam.artifacts import Manifest
from unioncam.cli import main
from unioncam.image_io import pixel_ceiling, read_rgb, sample_image_path
from unioncam.errors import ArtifactError, ImageReadError

TINY = ["--model", "factories:tiny", "--input-size", "32", "--no-progress"]
TESTS = Path(__file__).parent


def tree(folder: Path) -> dict:
    """Every file under ``folder``: relative name -> SHA-256."""
    return {str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(folder.rglob("*")) if p.is_file()}


def temporaries(folder: Path) -> list[str]:
    return sorted(str(p) for p in folder.rglob("*") if p.name.startswith(".") and "tmp" in p.name)


def one_line(err: str) -> str:
    lines = [ln for ln in err.strip().splitlines() if ln.startswith("unioncam: error")]
    assert len(lines) == 1 and "unexpected" not in err and "Traceback" not in err, err
    return lines[0]


def photo(path: Path, w: int = 48, h: int = 40) -> Path:
    rng = np.random.default_rng(len(path.name))
    # Encoded here and written by Python: OpenCV's imwrite crashes on a name that is not UTF-8.
    path.write_bytes(cv2.imencode(".png", rng.integers(0, 256, (h, w, 3), dtype=np.uint8))[1].tobytes())
    return path


# ---- fail fast, keep going ------------------------------------------------------------------


@pytest.mark.parametrize("factory, cause, code", [
    ("raises", "the factory raised RuntimeError: the weights server is down", 1),
    ("needs_arguments", "the factory needs the argument(s) depth", 1),
    ("one_logit", "the model returns one logit", 1),
])
def test_a_factory_that_cannot_build_says_why(tmp_path, capsys, factory, cause, code):
    img = photo(tmp_path / "a.png")
    before = tree(tmp_path)
    rc = main(["explain", str(img), "--model", f"factories:{factory}", "--input-size", "32", "--out",
               str(tmp_path / "out"), "--no-progress"])
    line = one_line(capsys.readouterr().err)
    assert rc == code and cause in line and f"factories:{factory}" in line or "one logit" in line, line
    assert {k: v for k, v in tree(tmp_path).items() if not k.startswith("out")} == before
    assert temporaries(tmp_path) == []


@pytest.mark.parametrize("value, cause", [
    ("5", "--class 5 is out of range: the model has 5 classes (0..4)"),
    ("tabby", "--class by name means an ImageNet class; this model has 5 classes"),
    ("tabbby", "did you mean 'tabby'"),
    ("-1", "a class index is 0 or more"),
])
def test_a_bad_class_is_a_usage_error_before_any_export(tmp_path, capsys, monkeypatch, value, cause):
    cache = tmp_path / "cache"
    monkeypatch.setenv("UNIONCAM_CACHE", str(cache))
    rc = main(["explain", str(photo(tmp_path / "a.png")), *TINY, "--out", str(tmp_path / "out"), "--class", value])
    line = one_line(capsys.readouterr().err)
    assert rc == 2 and cause in line, line
    assert not cache.exists() or not any(cache.iterdir())  # nothing was exported


@pytest.mark.usefixtures("lite0_stem_cache")
def test_a_class_by_name_is_the_imagenet_index(tmp_path, capsys):
    from unioncam.classes import class_index

    # By hand, from the ImageNet-1k list: 281 tabby, 285 Egyptian cat, 967 espresso.
    assert class_index("tabby") == 281 and class_index("Tabby Cat") == 281
    assert class_index("egyptian cat") == 285 and class_index("espresso") == 967 and class_index("42") == 42
    rc = main(["explain", "--layer", "stem", "--out", str(tmp_path), "--no-progress", "--class", "espresso"])
    out = capsys.readouterr().out
    assert rc == 0 and "espresso (class 967" in out, out
    assert json.loads((tmp_path / "chelsea.json").read_text())["class_requested"] == 967


@pytest.mark.parametrize("opset", ["99", "0", "17"])
def test_an_opset_the_exporter_cannot_write_is_refused_before_loading(tmp_path, capsys, opset):
    out = tmp_path / "art"
    rc = main(["export", "--model", "factories:raises", "--out", str(out), "--opset", opset])
    line = one_line(capsys.readouterr().err)
    # factories:raises would raise if it were built: the opset is refused first.
    assert rc == 2 and f"--opset {opset}" in line and "choose 18 to" in line, line
    assert not out.exists() and temporaries(tmp_path) == []


def test_a_full_disk_names_the_path(tmp_path):
    """A file-size limit makes every write past 64 KB fail (EFBIG), as a full disk does (ENOSPC)."""
    out = tmp_path / "art"

    def limit():
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
        resource.setrlimit(resource.RLIMIT_FSIZE, (64 << 10, 64 << 10))

    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(TESTS), os.environ.get("PYTHONPATH", "")])}
    code = ("import sys; from unioncam.cli import main; sys.exit(main(['export', '--model', 'factories:tiny', "
            f"'--input-size', '32', '--out', {str(out)!r}]))")
    r = subprocess.run([sys.executable, "-c", code], preexec_fn=limit, capture_output=True, text=True, env=env,
                       cwd=tmp_path, timeout=300)
    line = one_line(r.stderr)
    assert r.returncode == 1 and f"cannot write {out}" in line and "full" in line, r.stderr
    assert not out.exists() and temporaries(tmp_path) == []


def test_a_name_that_is_not_utf8_prints_and_the_next_image_is_explained(tmp_path, tiny_art):
    folder = tmp_path / "in"
    folder.mkdir()
    photo(Path(os.fsdecode(bytes(folder) + b"/caf\xe9.png")))
    photo(folder / "z.png")
    before = tree(folder)
    env = {**os.environ, "PYTHONIOENCODING": "ascii:strict", "LC_ALL": "C",
           "PYTHONPATH": os.pathsep.join([str(TESTS), os.environ.get("PYTHONPATH", "")])}
    # --artifacts: the torch-free CLI, as quick to start as a user's.
    code = ("import sys; from unioncam.cli import main; sys.exit(main(['explain', 'in', '--artifacts', "
            f"{str(tiny_art[1])!r}, '--no-progress', '--out', 'out']))")
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, cwd=tmp_path, timeout=300)
    assert r.returncode == 0 and "Traceback" not in r.stderr, r.stderr
    assert "caf\\udce9.png" in r.stdout and "z.png" in r.stdout, r.stdout
    assert len(list((tmp_path / "out").glob("*.json"))) == 2
    assert tree(folder) == before and temporaries(tmp_path) == []


def test_an_unreadable_folder_is_an_error_row_and_the_others_are_explained(tmp_path, capsys, monkeypatch):
    good, locked = tmp_path / "good", tmp_path / "locked"
    good.mkdir()
    locked.mkdir()
    photo(good / "a.png")
    real_iterdir, real_scandir = Path.iterdir, os.scandir

    # This suite runs as root, whom permissions do not stop: the folder's listing fails as EACCES does.
    def iterdir(self):
        if self == locked:
            raise PermissionError(13, "Permission denied", str(self))
        return real_iterdir(self)

    def scandir(path="."):
        if Path(path) == locked:
            raise PermissionError(13, "Permission denied", str(path))
        return real_scandir(path)

    monkeypatch.setattr(Path, "iterdir", iterdir)
    monkeypatch.setattr(os, "scandir", scandir)
    rc = main(["explain", str(locked), str(good), *TINY, "--out", str(tmp_path / "out")])
    captured = capsys.readouterr()
    line = one_line(captured.err)
    assert rc == 1 and f"cannot list the folder {locked}: Permission denied" in line, line
    assert "a.png" in captured.out and (tmp_path / "out" / "a.json").is_file()


def test_an_output_name_too_long_for_the_file_system_is_shortened(tmp_path, capsys):
    long = photo(tmp_path / ("y" * 250 + ".png"))
    rc = main(["explain", str(long), *TINY, "--out", str(tmp_path / "out")])
    assert rc == 0, capsys.readouterr().err
    names = sorted(p.name for p in (tmp_path / "out").iterdir() if p.name != ".unioncam-written")
    assert len(names) == 3 and all(len(os.fsencode(n)) <= 255 for n in names), names
    assert json.loads((tmp_path / "out" / names[0]).read_text())["image"] == str(long)
    rc = main(["explain", str(long), *TINY, "--out", str(tmp_path / "out")])  # the same names again
    assert rc == 0 and sorted(p.name for p in (tmp_path / "out").iterdir() if p.name != ".unioncam-written") == names


# ---- never decode what memory cannot hold ----------------------------------------------------


def huge_header(path: Path, w: int, h: int) -> Path:
    """A tiny file whose header claims w x h pixels: a BMP (width, height in its header)."""
    ok, buf = cv2.imencode(".bmp", np.zeros((2, 2, 3), np.uint8))
    b = bytearray(buf.tobytes())
    b[18:22] = w.to_bytes(4, "little")
    b[22:26] = h.to_bytes(4, "little")
    path.write_bytes(bytes(b))
    return path


def test_a_picture_above_the_memory_ceiling_is_refused_from_its_header(tmp_path):
    limit = pixel_ceiling()
    side = int(limit ** 0.5) + 2  # just above: decoding it would take more than half the memory
    big = huge_header(tmp_path / "big.bmp", side, side)
    with pytest.raises(ImageReadError, match=f"{side}x{side} = {side * side:,} pixels, above this machine's limit"):
        read_rgb(big)
    below = huge_header(tmp_path / "below.bmp", 4, 4)  # within the ceiling: decoded (and refused as truncated)
    with pytest.raises(ImageReadError, match="cannot decode"):
        read_rgb(below)


def test_a_huge_jpeg_is_decoded_at_an_eighth(tmp_path):
    ok, buf = cv2.imencode(".jpg", np.full((64, 64, 3), 128, np.uint8))
    b = bytearray(buf.tobytes())
    sof = b.find(b"\xff\xc0")
    side = 8 * int((pixel_ceiling() ** 0.5)) // 8 + 64  # above the ceiling, an eighth of it below
    b[sof + 5:sof + 7] = side.to_bytes(2, "big")
    b[sof + 7:sof + 9] = side.to_bytes(2, "big")
    (tmp_path / "big.jpg").write_bytes(bytes(b))
    if side * side <= pixel_ceiling() or side > 65535:
        pytest.skip("this machine's ceiling is outside what a JPEG header can state")
    rgb = read_rgb(tmp_path / "big.jpg", lenient=True)  # the data is truncated: lenient decodes what is there
    assert rgb.shape == (-(-side // 8), -(-side // 8), 3)  # libjpeg rounds an eighth up


# ---- corrupt manifests of every kind are refused, and a cache entry re-exported once --------


@pytest.mark.parametrize("edit, cause", [
    (lambda d: {**d, "extra": {"precisions": "fp16"}}, "field 'extra' has an invalid value"),
    (lambda d: {**d, "input_size": [100000, 100000]}, "field 'input_size' has an invalid value"),
    (lambda d: "[" * 200000 + "]" * 200000, "RecursionError"),
])
def test_a_corrupt_manifest_is_refused_with_its_field(tiny_art, tmp_path, edit, cause):
    import shutil

    art = tmp_path / "art"
    shutil.copytree(tiny_art[1], art)
    d = json.loads((art / "manifest.json").read_text())
    new = edit(d)
    (art / "manifest.json").write_text(new if isinstance(new, str) else json.dumps(new))
    with pytest.raises(ArtifactError, match=cause):
        Manifest.load(art)


def test_a_corrupt_cache_entry_is_exported_again_once(tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("UNIONCAM_CACHE", str(tmp_path / "cache"))
    img = photo(tmp_path / "a.png")
    assert main(["explain", str(img), *TINY, "--out", str(tmp_path / "o1")]) == 0
    (manifest,) = (tmp_path / "cache").rglob("manifest.json")
    manifest.write_text("[" * 200000 + "]" * 200000)  # nested too deep for the JSON parser
    capsys.readouterr()
    assert main(["explain", str(img), *TINY, "--out", str(tmp_path / "o2")]) == 0
    err = capsys.readouterr().err
    assert err.count("exporting again") == 1 and "unexpected" not in err, err
    assert Manifest.load(manifest.parent).num_classes == 5


# ---- log hygiene ----------------------------------------------------------------------------


def test_codec_lines_are_quiet_unless_verbose(tmp_path, capfd, monkeypatch):
    monkeypatch.setenv("UNIONCAM_VERBOSE", "")  # restored after the test, whatever --verbose set
    ok, buf = cv2.imencode(".jpg", cv2.imread(str(sample_image_path("coffee"))))
    bad = bytearray(buf.tobytes())
    bad[len(bad) // 2: len(bad) // 2 + 64] = b"\xff\xd9" * 32  # an early end-of-image marker mid-scan
    (tmp_path / "bad.jpg").write_bytes(bytes(bad))
    rc = main(["explain", str(tmp_path / "bad.jpg"), *TINY, "--lenient", "--out", str(tmp_path / "q")])
    quiet = capfd.readouterr().err
    rc_v = main(["--verbose", "explain", str(tmp_path / "bad.jpg"), *TINY, "--lenient", "--out", str(tmp_path / "v")])
    loud = capfd.readouterr().err
    assert rc == rc_v == 0
    assert "decoder:" not in quiet and "Corrupt JPEG" not in quiet and "warning" not in quiet.lower(), quiet
    assert "decoder:" in loud, loud
