"""Nothing the user owns is deleted or replaced by ``export --out`` (issue 26): a file, a folder of
the user's files, the current folder, or an export folder with other files in it is refused with
exit 2 and a one-line message naming the path, before any export; an empty folder or a previous
export is written; no temporary folder is left behind."""
from __future__ import annotations

import hashlib
import os
from pathlib import Path

import pytest

from tiny import TinyCNN
from unioncam import OutputPathError
from unioncam.artifacts import check_replaceable
from unioncam.cli import main
from unioncam.export import export


def tree_digest(folder: Path) -> dict:
    """Every file under ``folder`` (relative name -> SHA-256)."""
    return {str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(folder.rglob("*")) if p.is_file()}


def leftovers(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir() if ".tmp-" in p.name or ".old-" in p.name)


def refused(capsys, out: Path, cwd: Path | None = None) -> str:
    """Run ``unioncam export --out out``; assert exit 2 and one stderr line naming the path."""
    old = os.getcwd()
    if cwd is not None:
        os.chdir(cwd)
    try:
        code = main(["export", "--model", "efficientnet_lite0", "--out", str(out)])
    finally:
        os.chdir(old)
    err = capsys.readouterr().err.strip()
    assert code == 2, err
    assert len(err.splitlines()) == 1 and str(out) in err and "unexpected" not in err, err
    return err


def test_an_existing_file_is_never_replaced(tmp_path, capsys):
    photo = tmp_path / "photo.png"
    photo.write_bytes(b"\x89PNG not really, but the user's")
    before = tree_digest(tmp_path)
    assert "not a folder" in refused(capsys, photo)
    assert tree_digest(tmp_path) == before and leftovers(tmp_path) == []


def test_a_folder_of_user_files_is_never_replaced(tmp_path, capsys):
    photos = tmp_path / "myphotos"
    photos.mkdir()
    for name in ("cat.png", "coffee.png", "notes.txt"):
        (photos / name).write_text(name)
    before = tree_digest(tmp_path)
    err = refused(capsys, photos)
    assert "not a unioncam export" in err and "cat.png" in err
    assert tree_digest(tmp_path) == before and leftovers(tmp_path) == []


def test_the_current_folder_is_never_replaced(tmp_path, capsys):
    (tmp_path / "keep.txt").write_text("mine")
    before = tree_digest(tmp_path)
    assert "current folder" in refused(capsys, Path("."), cwd=tmp_path)
    assert tree_digest(tmp_path) == before and leftovers(tmp_path) == []


def test_an_empty_folder_and_a_previous_export_are_written(tmp_path):
    out = tmp_path / "art"
    out.mkdir()
    model = TinyCNN()
    first = export(model, "features.3", out, input_size=(32, 32))
    assert (out / "manifest.json").is_file()
    (out / "gradient.engine").write_bytes(b"an engine built from this export")
    second = export(model, "features.3", out, input_size=(32, 32))  # a previous export: replaced
    assert set(second.files) == set(first.files) and (out / "manifest.json").is_file()
    assert leftovers(tmp_path) == []


def test_an_export_folder_holding_user_files_is_refused_before_and_after_export(tmp_path, capsys):
    out = tmp_path / "art"
    export(TinyCNN(), "features.3", out, input_size=(32, 32))
    (out / "holiday.jpg").write_bytes(b"the user's photo")
    before = tree_digest(tmp_path)
    err = refused(capsys, out)
    assert "holiday.jpg" in err
    with pytest.raises(OutputPathError, match="holiday.jpg"):
        export(TinyCNN(), "features.3", out, input_size=(32, 32))
    assert tree_digest(tmp_path) == before and leftovers(tmp_path) == []


def test_a_file_put_there_during_the_export_is_kept(tmp_path, monkeypatch):
    """The check runs again just before the swap: a file the user saves meanwhile is not deleted."""
    import unioncam.artifacts as artifacts

    out = tmp_path / "art"
    out.mkdir()
    real = artifacts.check_replaceable
    calls = []

    def check(final):
        calls.append(final)
        if len(calls) == 2:
            (out / "saved-meanwhile.txt").write_text("mine")
        return real(final)

    monkeypatch.setattr(artifacts, "check_replaceable", check)
    with pytest.raises(OutputPathError, match="saved-meanwhile.txt"):
        export(TinyCNN(), "features.3", out, input_size=(32, 32))
    assert (out / "saved-meanwhile.txt").read_text() == "mine" and leftovers(tmp_path) == []


def test_a_symlink_is_not_followed_into_replacement(tmp_path):
    target = tmp_path / "elsewhere"
    target.mkdir()
    link = tmp_path / "link"
    link.symlink_to(target)
    with pytest.raises(OutputPathError, match="not a folder"):
        check_replaceable(link)


@pytest.mark.parametrize("foreign", ["other-classes", "other-weights"])
def test_a_masked_graph_from_another_model_is_refused(tiny_art, tmp_path, foreign):
    """masked_forward.onnx from another model, its SHA-256 written into the manifest: refused at
    load (a 12-class graph, or the same architecture with other weights), never explained."""
    import json
    import shutil

    from unioncam import ArtifactError
    from unioncam.artifacts import sha256_file
    from unioncam.runtime import Explainer

    _, art = tiny_art
    other = TinyCNN(num_classes=12) if foreign == "other-classes" else TinyCNN(seed=3)
    export(other, "features.3", tmp_path / "other", input_size=(32, 32))
    mixed = tmp_path / "mixed"
    shutil.copytree(art, mixed)
    shutil.copy(tmp_path / "other" / "masked_forward.onnx", mixed / "masked_forward.onnx")
    manifest = json.loads((mixed / "manifest.json").read_text())
    manifest["files"]["masked_forward.onnx"] = sha256_file(mixed / "masked_forward.onnx")
    (mixed / "manifest.json").write_text(json.dumps(manifest))
    # Refused by the fingerprints (different weights, different class counts), before any number.
    with pytest.raises(ArtifactError, match="different models") as e:
        Explainer(mixed)
    assert "masked_forward.onnx" in str(e.value)


def test_a_killed_runs_temporaries_are_removed_and_nothing_else(tmp_path):
    """Only unioncam's own temporary files of this host whose process is gone are removed: a live
    run's, a user's hidden ``.notes.tmp``, and a user's file named exactly like a dead run's
    temporary but never recorded in the ledger, are kept."""
    import subprocess
    import sys

    from unioncam.atomic import remove_stale_temporaries, temporary_prefix
    from unioncam.ownership import record_temporary

    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True,
                          text=True).stdout.strip()
    mine = temporary_prefix("cat.png")
    stale = tmp_path / (mine.replace(f"-{os.getpid()}-", f"-{dead}-") + "abc.tmp")
    live = tmp_path / (mine + "def.tmp")
    users = tmp_path / ".notes.tmp"
    lookalike = tmp_path / (mine.replace(f"-{os.getpid()}-", f"-{dead}-") + "xyz.tmp")
    for f in (stale, live, lookalike):
        record_temporary(f) if f is not lookalike else None
    for f in (stale, live, users, lookalike):
        f.write_text("x")
    assert remove_stale_temporaries(tmp_path) == 1
    assert not stale.exists() and live.exists() and users.exists() and lookalike.exists()


def test_explaining_a_folder_into_itself_twice_skips_its_own_outputs(tmp_path, capsys):
    import shutil

    from unioncam.image_io import sample_image_path

    shutil.copy(sample_image_path("coffee"), tmp_path / "coffee.png")
    args = ["explain", str(tmp_path), "--out", str(tmp_path), "--layer", "stem", "--no-progress"]
    assert main(args) == 0
    first = tree_digest(tmp_path)
    # The run wrote coffee.png.png (the overlay cannot replace the input) beside its .json and _cam.npy.
    assert main(args) == 0
    err = capsys.readouterr().err
    assert "skipping 1 overlays" in err
    assert not list(tmp_path.glob("*.png.png.*")) and not (tmp_path / "coffee.png.png.png").exists()
    assert set(tree_digest(tmp_path)) == set(first)


def test_a_resumed_run_redoes_an_image_replaced_in_place(tmp_path):
    """A resume key is the file's content, not only its name: same name, new photo -> explained again."""
    import shutil

    import numpy as np

    from unioncam.explain_files import explain_file
    from unioncam.image_io import sample_image_path
    from unioncam.outputs import finished_report
    from unioncam.runtime import Explainer

    model = TinyCNN()
    export(model, "features.3", tmp_path / "art", input_size=(32, 32))
    ex = Explainer(tmp_path / "art")
    photo = tmp_path / "photo.png"
    shutil.copy(sample_image_path("chelsea"), photo)
    settings = {"model": "tiny", "input_size": [32, 32], "theta": 10.0, "method": "unioncam"}
    out = tmp_path / "out"
    out.mkdir()
    explain_file(photo, "photo", out, explain=ex, settings=settings, size=(32, 32))
    assert finished_report(out, "photo", photo, settings) is not None
    shutil.copy(sample_image_path("coffee"), photo)  # replaced in place, same name
    assert finished_report(out, "photo", photo, settings) is None
    assert np.load(out / "photo_cam.npy").shape == (32, 32)


def test_the_cache_key_is_the_weights_content_and_the_input_size(tmp_path, monkeypatch):
    """A weights file changed in place under the same name is a new cache entry (never the stale
    export of the old weights); so is another input size."""
    from unioncam.cache import artifact_dir

    monkeypatch.setenv("UNIONCAM_CACHE", str(tmp_path / "cache"))
    weights = tmp_path / "w.pt"
    weights.write_bytes(b"first weights")
    a = artifact_dir("vgg16", "features.29", (224, 224), weights, None)
    assert artifact_dir("vgg16", "features.29", (224, 224), weights, None) == a
    weights.write_bytes(b"other weights")
    assert artifact_dir("vgg16", "features.29", (224, 224), weights, None) != a
    assert artifact_dir("vgg16", "features.29", (256, 256), weights, None) != artifact_dir(
        "vgg16", "features.29", (224, 224), weights, None)
