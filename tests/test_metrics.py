"""Metrics on hand-made models and maps whose values are known, and ``unioncam eval`` end to end."""
import csv
from pathlib import Path

import numpy as np
import pytest

from unioncam import InvalidInputError
from unioncam.metrics import auc, average_drop, average_increase, insertion_deletion, mean_ci95, perturbation_curve


def test_average_drop_and_increase_by_hand():
    y = np.array([0.5, 0.8])
    o = np.array([0.25, 0.9])
    # (0.5 - 0.25) / 0.5 = 0.5 and max(0, -0.1) = 0: mean 0.25 -> 25 %. One image of two rises: 50 %.
    assert average_drop(y, o) == pytest.approx(25.0)
    assert average_increase(y, o) == pytest.approx(50.0)
    with pytest.raises(InvalidInputError):
        average_drop(np.array([0.0]), np.array([0.1]))


def pixel_model(images):
    """A 'model' whose class-0 score is the red value of pixel (2, 3) and class-1 score its complement."""
    v = images[:, 0, 2, 3]
    return np.stack([v, 1 - v], axis=1)


def test_deletion_and_insertion_by_hand():
    image = np.zeros((3, 4, 4), np.float32)
    image[0, 2, 3] = 1.0
    first = np.zeros((4, 4), np.float32)
    first[2, 3] = 1.0  # the map ranks the decisive pixel first
    # 4 steps over 16 pixels: 0, 4, 8, 12, 16 pixels changed. Deletion removes it at step 1:
    # curve [1, 0, 0, 0, 0], AUC = 0.5 / 4.
    curve = perturbation_curve(pixel_model, image, first, 0, mode="deletion", steps=4)
    np.testing.assert_allclose(curve, [1, 0, 0, 0, 0])
    assert auc(curve) == pytest.approx(0.125)
    # Ranked last (a map that increases towards the top-left): removed only at the end, AUC 3.5 / 4.
    last = -first
    assert auc(perturbation_curve(pixel_model, image, last, 0, mode="deletion", steps=4)) == pytest.approx(0.875)
    # Insertion starts from the blurred image: the pixel's blurred value, then 1 from step 1 on.
    from unioncam.metrics import blurred

    b = blurred(image)[0, 2, 3]
    ins, dele = insertion_deletion(pixel_model, image, first, 0, steps=4)
    assert ins == pytest.approx(((b + 1) / 2 + 3) / 4)
    assert dele == pytest.approx(0.125)


def test_mean_ci95():
    m, h = mean_ci95([1.0, 2.0, 3.0])
    assert m == 2.0 and h == pytest.approx(4.303 * 1.0 / np.sqrt(3))
    assert mean_ci95([5.0]) == (5.0, None)


@pytest.mark.usefixtures("lite0_stem_cache")
def test_eval_cli_on_real_photos(tmp_path, capsys):
    from unioncam.cli import main
    from unioncam.image_io import sample_image_path

    photos = tmp_path / "photos"
    photos.mkdir()
    for name in ("chelsea", "coffee"):
        (photos / f"{name}.png").write_bytes(sample_image_path(name).read_bytes())
    (photos / "notes.txt").write_text("ignored: not an image suffix")
    out = tmp_path / "eval"
    rc = main(["eval", str(photos), "--layer", "stem", "--steps", "4", "--out", str(out), "--no-progress",
               "--methods", "unioncam", "gradcam", "scorecam"])
    assert rc == 0, capsys.readouterr().err
    with open(out / "metrics.csv") as f:
        rows = list(csv.DictReader(f))
    assert len(rows) == 6 and {r["method"] for r in rows} == {"unioncam", "gradcam", "scorecam"}
    assert {r["class_name"] for r in rows} == {"Egyptian cat", "espresso"}
    # y, o and the drop recomputed outside the runtime: the eager model's softmax on the photo and on
    # the photo times the UnionCAM map (which `unioncam explain` writes for the same settings).
    import torch

    from unioncam.image_io import read_rgb, to_model_input
    from unioncam.models import load

    assert main(["explain", str(photos), "--layer", "stem", "--out", str(tmp_path / "maps"), "--no-progress"]) == 0
    model, _ = load("efficientnet_lite0")
    for r in (r for r in rows if r["method"] == "unioncam"):
        stem = Path(r["image"]).stem
        x = torch.from_numpy(to_model_input(read_rgb(r["image"]), (224, 224))[None])
        cam = torch.from_numpy(np.load(tmp_path / "maps" / f"{stem}_cam.npy"))
        c = int(r["class_idx"])
        with torch.no_grad():
            y = torch.softmax(model(x), 1)[0, c].item()
            o = torch.softmax(model(x * cam), 1)[0, c].item()
        assert float(r["y"]) == pytest.approx(y, abs=1e-5) and float(r["o"]) == pytest.approx(o, abs=1e-5)
        assert float(r["drop_pct"]) == pytest.approx(max(0.0, y - o) / y * 100, abs=1e-3)
    md = (out / "metrics.md").read_text()
    assert "| unioncam |" in md and "±" in md
    import cv2

    grid = cv2.imread(str(out / "grid.png"))
    assert grid.shape == (2 * 182, 4 * 160, 3)  # rows: images; columns: photo + 3 methods
