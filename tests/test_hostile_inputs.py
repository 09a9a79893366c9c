"""The defects a hostile-input run found (issue 14), each reproduced: one bad image never stops the
others, outputs never replace inputs, unverified artifacts are never served, NaN never leaves the
library, every deliberate error is typed, and messages say the true cause."""
import hashlib
import json
import os
import shutil
import struct
import subprocess
import sys
import textwrap
import zlib

import numpy as np
import pytest
import torch

from test_end_to_end import run_graph
from tiny import TinyCNN, tiny_images
from unioncam import ArtifactError, ImageReadError, InvalidInputError, UnionCAM
from unioncam.cli import main
from unioncam.outputs import output_stems
from unioncam.image_io import read_rgb, sample_image_path
from unioncam.runtime import Explainer

FAST = ["--layer", "stem", "--no-progress"]  # 32 channels at 112x112: seconds per photo


def huge_png(path, side=40000):
    """A valid PNG header claiming side x side pixels (above OpenCV's 2**30 limit), tiny on disk."""
    def chunk(tag, data):
        return struct.pack(">I", len(data)) + tag + data + struct.pack(">I", zlib.crc32(tag + data) & 0xFFFFFFFF)

    ihdr = struct.pack(">IIBBBBB", side, side, 8, 0, 0, 0, 0)
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(b"\x00" * 1000))
                     + chunk(b"IEND", b""))
    return path


def digest(path):
    return hashlib.sha256(path.read_bytes()).hexdigest()


@pytest.mark.usefixtures("lite0_stem_cache")
def test_huge_image_and_own_outputs_never_stop_or_clobber(tmp_path, capsys):
    import cv2

    out = tmp_path / "out"
    out.mkdir()
    photo = out / "photo.png"  # an input inside --out whose heatmap would be out/photo.png
    shutil.copy(sample_image_path("coffee"), photo)
    bgr = cv2.imread(str(photo))
    cv2.imwrite(str(tmp_path / "photo.tif"), bgr)
    cv2.imwrite(str(tmp_path / "photo.webp"), bgr)
    before = {p: digest(p) for p in (photo, tmp_path / "photo.tif", tmp_path / "photo.webp")}
    big = huge_png(tmp_path / "big.png")
    rc = main(["explain", str(big), str(photo), str(tmp_path / "photo.tif"), str(tmp_path / "photo.webp"),
               "--out", str(out), *FAST])
    err = capsys.readouterr().err
    assert rc == 1  # one image failed
    assert "too large to decode" in err and "unexpected" not in err and "Traceback" not in err
    assert {p: digest(p) for p in before} == before  # no input replaced
    for stem in ("photo.png", "photo.tif", "photo.webp"):  # distinct names, none of them an input
        report = json.loads((out / f"{stem}.json").read_text())
        assert report["class_name"] == "espresso"
        assert (out / f"{stem}_cam.npy").is_file() and (out / f"{stem}.png").is_file()
    assert not list(out.glob(".*.tmp"))  # atomic writes leave no temporaries


def test_output_stems_are_distinct_and_never_an_input(tmp_path):
    a, b = tmp_path / "a", tmp_path / "b"
    a.mkdir(), b.mkdir()
    paths = [a / "x.png", b / "x.png", a / "y.jpg", tmp_path / "out" / "z.png"]
    stems = output_stems(paths, tmp_path / "out")
    assert len(set(stems)) == 4 and stems[2] == "y"
    assert stems[:2] == ["x.png", "x.png-2"] and stems[3] == "z.png"


def test_unverified_or_invalid_manifests_are_refused(tiny_art, tmp_path):
    _, art = tiny_art
    cases = {
        "no hashes": lambda m: m.update(files={}),
        "other input size": lambda m: m.update(input_size=[64, 64]),
        "non-integer size": lambda m: m.update(input_size=[32.5, "32"]),
        "more classes": lambda m: m.update(num_classes=6),
        "bad hash": lambda m: m["files"].update({"gradient.onnx": "zz"}),
    }
    for name, edit in cases.items():
        bad = tmp_path / name.replace(" ", "_")
        shutil.copytree(art, bad)
        man = json.loads((bad / "manifest.json").read_text())
        edit(man)
        (bad / "manifest.json").write_text(json.dumps(man))
        if name == "no hashes":  # the original defect: flipped bytes were served when files was {}
            data = bytearray((bad / "gradient.onnx").read_bytes())
            data[len(data) // 2: len(data) // 2 + 4000] = bytes(4000)
            (bad / "gradient.onnx").write_bytes(bytes(data))
        with pytest.raises(ArtifactError):
            Explainer(bad)


def test_cache_lock_serialises_exports_and_cleans_killed_temporaries(tmp_path):
    entry = tmp_path / "cache" / "model-layer-abc"
    stale = tmp_path / "cache" / f".{entry.name}.tmp-killed"
    stale.mkdir(parents=True)
    code = textwrap.dedent(f"""
        import time, pathlib
        from unioncam.cache import cache_lock
        entry = pathlib.Path({str(entry)!r})
        with cache_lock(entry):
            if not entry.exists():
                time.sleep(0.5)  # an export in progress; the others must wait, then reuse it
                entry.mkdir()
                with open({str(tmp_path / 'exports.log')!r}, "a") as f:
                    f.write("export\\n")
    """)
    procs = [subprocess.Popen([sys.executable, "-c", code]) for _ in range(3)]
    assert all(p.wait(timeout=60) == 0 for p in procs)
    assert (tmp_path / "exports.log").read_text().count("export") == 1
    assert not stale.exists()


def test_exports_respect_the_umask(tiny_art, tmp_path):
    from unioncam.atomic import umask

    _, art = tiny_art  # exported by this process, under its umask
    mask = umask()
    assert art.stat().st_mode & 0o777 == 0o777 & ~mask
    for p in art.iterdir():
        assert p.stat().st_mode & 0o777 == 0o666 & ~mask, p.name
    from unioncam.runtime.backends.tensorrt.engine_file import read_engine, write_engine

    old = os.umask(0o022)
    try:
        write_engine(tmp_path / "x.engine", {"engine_bytes": 3}, b"abc")
    finally:
        os.umask(old)
    assert (tmp_path / "x.engine").stat().st_mode & 0o777 == 0o644  # mkstemp alone would give 0600
    assert read_engine(tmp_path / "x.engine")[1] == b"abc"


@pytest.mark.parametrize("case, status", [("nan", 1), ("0..255", 2), ("class 99", 3), ("class -7", 3), ("ok", 0)])
def test_one_graph_reports_bad_input_through_status(tiny_e2e, case, status):
    model, path = tiny_e2e
    x = tiny_images(1, seed=3).numpy()
    cls = None
    if case == "nan":
        x[0, 0, 3, 3] = np.nan
    elif case == "0..255":
        x = x * 255.0
    elif case.startswith("class"):
        cls = int(case.split()[1])
    out = run_graph(path, x, cls)
    assert int(out["status"][0]) == status
    for key in ("cam", "denoising", "region", "de_region", "betas", "score"):
        assert np.isfinite(out[key]).all(), key
        if status:
            assert not out[key].any(), key
    if status:
        assert int(out["class"][0]) == -1 and int(out["selected"][0]) == 0
    else:
        ref = UnionCAM(model, "features.3")(torch.from_numpy(x))
        assert np.abs(out["cam"][0] - ref.cam[0]).max() <= 1e-3


def test_class_scores_refuse_non_finite_maps(tiny_art):
    _, art = tiny_art
    x = tiny_images(1).numpy()
    maps = np.zeros((1, 1, 32, 32), np.float32)
    maps[0, 0, 0, 0] = np.inf
    with pytest.raises(InvalidInputError, match="NaN or Inf"):
        Explainer(art).class_scores(x, maps, [0])


@pytest.mark.parametrize("extra, match, code", [
    (["--class", "99999999999999999999999"], "out of range", 2),  # usage errors exit 2
    (["--theta", "nan"], "[0, 100]", 2),
    (["--backend", "torch", "--device", "cuda"], "CUDA", 1),  # what this machine lacks exits 1
    (["--backend", "tensorrt"], "NVIDIA GPU", 1),
])
@pytest.mark.usefixtures("lite0_stem_cache")
def test_cli_errors_are_typed_and_say_the_cause(tmp_path, capsys, extra, match, code):
    if "cuda" in extra and torch.cuda.is_available():
        pytest.skip("this machine has CUDA")
    rc = main(["explain", str(sample_image_path("coffee")), "--out", str(tmp_path), *FAST, *extra])
    err = capsys.readouterr().err
    assert rc == code and match in err and "unexpected" not in err, err
    assert "compute_capability" not in err and "exporting" not in err


def test_eval_checks_theta_before_exporting(tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("UNIONCAM_CACHE", str(tmp_path / "empty-cache"))
    rc = main(["eval", str(sample_image_path("coffee")), "--theta", "nan", "--out", str(tmp_path), *FAST])
    err = capsys.readouterr().err
    assert rc == 2 and "[0, 100]" in err and not (tmp_path / "empty-cache").exists()


def test_image_messages_say_the_true_cause(tmp_path):
    os.symlink(tmp_path / "loop", tmp_path / "loop")
    with pytest.raises(ImageReadError, match="is a folder"):
        read_rgb(tmp_path)
    with pytest.raises(ImageReadError, match="symlink loop"):
        read_rgb(tmp_path / "loop")
    with pytest.raises(ImageReadError, match="too large"):
        read_rgb(huge_png(tmp_path / "big.png"))
    (tmp_path / "cut.png").write_bytes(sample_image_path("coffee").read_bytes()[:3000])
    code = f"from unioncam.image_io import read_rgb\ntry:\n    read_rgb({str(tmp_path / 'cut.png')!r})\nexcept Exception as e:\n    print(e)"
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert "cannot decode" in proc.stdout and "libpng" not in proc.stderr and "WARN" not in proc.stderr


def test_wrong_weights_name_the_keys(tmp_path, capsys):
    torch.save(TinyCNN().state_dict(), tmp_path / "tiny.pth")
    rc = main(["explain", str(sample_image_path("coffee")), "--weights", str(tmp_path / "tiny.pth"),
               "--out", str(tmp_path), *FAST])
    err = capsys.readouterr().err
    assert rc == 1 and "missing keys: _conv_stem.weight" in err and "unexpected keys: features.0.weight" in err


def test_unwritable_cache_says_so(tmp_path, capsys, monkeypatch):
    (tmp_path / "file").write_text("not a folder")
    monkeypatch.setenv("UNIONCAM_CACHE", str(tmp_path / "file" / "cache"))
    rc = main(["explain", str(sample_image_path("coffee")), "--out", str(tmp_path / "o"), *FAST])
    err = capsys.readouterr().err
    assert rc == 1 and "UNIONCAM_CACHE" in err and "writable" in err


def test_long_end_to_end_export_reports_progress(tiny_e2e):
    lines = (tiny_e2e[1].parent / "export.log").read_text().splitlines()
    assert lines[0].startswith("tracing the gradient pass") and "nodes" in lines[-1]
    assert any("up to 2 iterations" in line for line in lines)  # 6 channels in chunks of 4
