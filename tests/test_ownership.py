"""Outputs own only what they wrote (issue 31): every writer (explain serial and on Ray, eval,
export --end-to-end, bench --json/--md) replaces a file only if unioncam wrote it, as recorded in
the folder's ledger. Anything else with our names stops the run before any work, exit 2, one line
naming the file and ``--replace-user-files``. Each test keeps a decoy tree of user files and
compares its SHA-256 before and after."""
from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path

import cv2
import numpy as np
import pytest

from unioncam import ownership
from unioncam.atomic import write_bytes
from unioncam.cli import main

TINY = ["--model", "factories:tiny", "--input-size", "32", "--no-progress"]


def digests(folder: Path) -> dict:
    """Every file under ``folder`` but the ledger (relative name -> SHA-256)."""
    return {str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(folder.rglob("*")) if p.is_file() and p.name != ownership.LEDGER}


def photo(path: Path, seed: int) -> Path:
    """A small real PNG (noise) of the user's."""
    path.parent.mkdir(parents=True, exist_ok=True)
    rgb = np.random.default_rng(seed).integers(0, 256, (40, 48, 3), dtype=np.uint8)
    cv2.imwrite(str(path), rgb)
    return path


def run(capsys, *argv, cwd: Path | None = None) -> tuple[int, str]:
    old = os.getcwd()
    if cwd is not None:
        os.chdir(cwd)
    try:
        code = main(list(argv))
    finally:
        os.chdir(old)
    return code, capsys.readouterr().err


def refused(capsys, name: str, *argv, cwd: Path | None = None) -> str:
    code, err = run(capsys, *argv, cwd=cwd)
    lines = [ln for ln in err.splitlines() if ln.startswith("unioncam: error")]
    assert code == 2, err
    assert len(lines) == 1 and name in lines[0] and ownership.REPLACE_FLAG in lines[0], err
    assert "unexpected" not in err
    return lines[0]


# --- explain, serial --------------------------------------------------------------------------

def test_out_dot_never_replaces_a_same_named_photo(tmp_path, capsys):
    """``explain ../shots/photo.png --out .`` in a folder holding another photo.png of the user's."""
    shots, work = tmp_path / "shots", tmp_path / "work"
    photo(shots / "photo.png", 1)
    photo(work / "photo.png", 2)  # a different photo with the same name
    before = digests(tmp_path)
    refused(capsys, "photo.png", "explain", "../shots/photo.png", "--out", ".", *TINY, cwd=work)
    assert digests(tmp_path) == before
    assert not (work / ownership.LEDGER).exists()  # refused before any work: nothing written at all


@pytest.mark.parametrize("sidecar, inputs", [("rocket.json", ["rocket.jpg"]),
                                             ("coffee.png.json", ["coffee.png", "coffee.jpg"])])
def test_a_sidecar_beside_an_input_is_never_replaced(tmp_path, capsys, sidecar, inputs):
    """``explain DIR --out DIR``: the user's JSON beside a photo has the report's name."""
    for i, name in enumerate(inputs):
        photo(tmp_path / name, i)
    (tmp_path / sidecar).write_text('{"the user": "labels"}')
    before = digests(tmp_path)
    refused(capsys, sidecar, "explain", str(tmp_path), "--out", str(tmp_path), *TINY)
    assert digests(tmp_path) == before


def user_outputs(folder: Path, stem: str = "x") -> None:
    folder.mkdir(parents=True, exist_ok=True)
    photo(folder / f"{stem}.png", 7)
    (folder / f"{stem}.json").write_text("{}")
    np.save(folder / f"{stem}_cam.npy", np.zeros(3))


@pytest.mark.parametrize("how", ["folder", "symlink", "default"])
def test_a_folder_holding_files_with_our_names(tmp_path, capsys, how):
    """``--out`` onto a folder of the user's with x.png, x.json, x_cam.npy; through a symlink to it;
    and the default output folder."""
    src = photo(tmp_path / "in" / "x.jpg", 3)
    real = tmp_path / ("unioncam_out" if how == "default" else "mine")
    user_outputs(real)
    out = real
    if how == "symlink":
        out = tmp_path / "link"
        out.symlink_to(real, target_is_directory=True)
    before = digests(real)
    argv = ["explain", str(src), *TINY] + ([] if how == "default" else ["--out", str(out)])
    refused(capsys, "x.", *argv, cwd=tmp_path)
    assert digests(real) == before


def test_a_symlink_with_our_name_is_never_followed_or_replaced(tmp_path, capsys):
    src = photo(tmp_path / "in" / "x.jpg", 3)
    target = photo(tmp_path / "elsewhere" / "precious.png", 9)
    out = tmp_path / "out"
    out.mkdir()
    (out / "x.png").symlink_to(target)
    before = digests(tmp_path)
    code, err = run(capsys, "explain", str(src), "--out", str(out), *TINY, "--replace-user-files")
    assert code == 2 and "symlink" in err, err  # not even with the flag
    assert digests(tmp_path) == before and (out / "x.png").is_symlink()


def test_our_own_outputs_are_replaced_and_a_users_edit_makes_a_file_theirs(tmp_path, capsys):
    src = photo(tmp_path / "in" / "x.jpg", 3)
    out = tmp_path / "out"
    code, err = run(capsys, "explain", str(src), "--out", str(out), *TINY)
    assert code == 0, err
    assert {p.name for p in out.iterdir()} == {"x.png", "x.json", "x_cam.npy", ownership.LEDGER}
    # Ours: a second run may replace them (resumed: skipped), --overwrite redoes them.
    code, err = run(capsys, "explain", str(src), "--out", str(out), *TINY)
    assert code == 0 and "1 of 1 images already explained" in err, err
    code, err = run(capsys, "explain", str(src), "--out", str(out), *TINY, "--overwrite")
    assert code == 0 and "already explained" not in err, err
    # The user edits the report: it is theirs now, and never replaced.
    report = out / "x.json"
    report.write_text(report.read_text().replace('"class_idx"', '"my_note": 1, "class_idx"'))
    before = digests(out)
    refused(capsys, "x.json", "explain", str(src), "--out", str(out), *TINY, "--overwrite")
    assert digests(out) == before


def test_replace_user_files_replaces_them_and_then_they_are_ours(tmp_path, capsys):
    """The decision: only ``--replace-user-files`` replaces a user's file; ``--overwrite`` never does."""
    src = photo(tmp_path / "in" / "x.jpg", 3)
    out = tmp_path / "out"
    user_outputs(out)
    refused(capsys, "x.", "explain", str(src), "--out", str(out), *TINY, "--overwrite")
    code, err = run(capsys, "explain", str(src), "--out", str(out), *TINY, "--replace-user-files")
    assert code == 0, err
    assert json.loads((out / "x.json").read_text())["image"] == str(src)
    code, err = run(capsys, "explain", str(src), "--out", str(out), *TINY, "--overwrite")
    assert code == 0, err


def test_an_overlay_of_a_user_is_explained_not_skipped(tmp_path, capsys):
    """A user's PNG beside a JSON and an .npy of its name is an input, not an overlay of ours."""
    folder = tmp_path / "photos"
    user_outputs(folder, "scan")
    out = tmp_path / "out"
    code, err = run(capsys, "explain", str(folder), "--out", str(out), *TINY)
    assert code == 0 and "skipping" not in err, err
    assert (out / "scan.json").is_file()


# --- eval, export --end-to-end, bench, Ray ---------------------------------------------------

@pytest.mark.parametrize("name", ["metrics.csv", "metrics.md", "grid.png"])
def test_eval_never_replaces_a_users_report(tmp_path, capsys, name):
    src = photo(tmp_path / "in" / "a.jpg", 4)
    out = tmp_path / "results"
    out.mkdir()
    (out / name).write_text("the user's own table")
    before = digests(out)
    refused(capsys, name, "eval", str(src), "--out", str(out), *TINY, "--methods", "gradcam", "--steps", "2")
    assert digests(out) == before


def test_eval_replaces_its_own_reports(tmp_path, capsys):
    src = photo(tmp_path / "in" / "a.jpg", 4)
    out = tmp_path / "results"
    for _ in range(2):
        code, err = run(capsys, "eval", str(src), "--out", str(out), *TINY, "--methods", "gradcam", "--steps", "2")
        assert code == 0, err
    ledger = ownership.Ledger(out)
    assert all(ledger.owns(out / n) and (out / n).is_file() for n in ("metrics.csv", "metrics.md", "grid.png"))


@pytest.mark.parametrize("name", ["unioncam.onnx", "unioncam.json"])
def test_export_end_to_end_never_replaces_a_users_graph(tmp_path, capsys, name):
    out = tmp_path / "deploy"
    out.mkdir()
    (out / name).write_bytes(b"the user's own model")
    before = digests(out)
    refused(capsys, name, "export", "--end-to-end", "--model", "efficientnet_lite0", "--out", str(out))
    assert digests(out) == before


@pytest.mark.parametrize("flag", ["--json", "--md"])
def test_bench_report_files(tmp_path, capsys, tiny_art, flag):
    """A file named by --json/--md: ours is replaced, the user's needs the flag (refused before timing)."""
    report = tmp_path / "report.txt"
    report.write_text("the user's notes")
    before = digests(tmp_path)
    argv = ["bench", "--artifacts", str(tiny_art[1]), "--iterations", "1", "--warmup", "0", "--no-ceiling",
            "--no-progress", "--images", str(photo(tmp_path / "img" / "a.png", 5))]
    refused(capsys, "report.txt", *argv, flag, str(report))
    assert digests(tmp_path) == {**before, "img/a.png": digests(tmp_path)["img/a.png"]}
    ours = tmp_path / "ours.out"
    for _ in range(2):
        code, err = run(capsys, *argv, flag, str(ours))
        assert code == 0, err
    assert ownership.owns(ours)


def test_ray_never_replaces_a_users_index_or_outputs(tmp_path, capsys):
    """Refused on the driver before Ray starts or anything is exported."""
    pytest.importorskip("ray")
    src = photo(tmp_path / "in" / "x.jpg", 3)
    for name in ("index.parquet", "x_cam.npy"):
        out = tmp_path / f"out-{name}"
        out.mkdir()
        (out / name).write_bytes(b"the user's")
        before = digests(out)
        refused(capsys, name, "explain", str(src), "--out", str(out), *TINY, "--workers", "1")
        assert digests(out) == before


# --- the ledger itself ------------------------------------------------------------------------

def test_a_kill_between_the_record_and_the_rename_keeps_the_old_file_ours(tmp_path):
    path = tmp_path / "x.json"
    write_bytes(path, b"first", own=True)
    assert ownership.owns(path)
    ownership.record(path, hashlib.sha256(b"second").hexdigest())  # killed before os.replace
    assert ownership.owns(path) and path.read_bytes() == b"first"
    with open(tmp_path / ownership.LEDGER, "ab") as f:
        f.write(b'{"name": "y.json", "sha2')  # killed mid-append: a torn line claims nothing
    (tmp_path / "y.json").write_text("the user's")
    assert ownership.owns(path) and not ownership.owns(tmp_path / "y.json")
    write_bytes(path, b"third", own=True)
    assert ownership.owns(path)


def test_a_file_written_without_ownership_is_not_ours(tmp_path):
    path = tmp_path / "x.json"
    write_bytes(path, b"written by a plain atomic write")
    assert not ownership.owns(path) and ownership.owns(tmp_path / "absent.json")
