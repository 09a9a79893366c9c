"""Issue 26, "first use": what a first-time user trips on, each checked against numbers by hand or
against the method run alone (never against the code path under test)."""
from __future__ import annotations

import contextlib
import json
import re
from pathlib import Path

import numpy as np
import pytest

from tiny import PlantedCNN, tiny_images
from unioncam import pipeline
from unioncam.cli import build_parser, main
from unioncam.runtime import Explainer

TINY = ["--model", "factories:tiny", "--input-size", "32", "--no-progress"]
ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def planted_art(tmp_path_factory):
    """PlantedCNN exported at its planted layer: 8 channels, 2 constant, 2 duplicates of channel 0."""
    from unioncam.export import export

    out = tmp_path_factory.mktemp("planted") / "art"
    export(PlantedCNN(), "plant", out, input_size=(32, 32))
    return out


def _varying_base_channels(x: np.ndarray) -> int:
    """How many of the plant's 4 own channels vary over the map, from PlantedCNN's features alone."""
    import torch

    with torch.no_grad():
        z = PlantedCNN().features(torch.from_numpy(x))[0, :4]
    assert (z[0].max() > z[0].min()).item(), "channel 0 must vary for its copies to count as duplicates"
    return int(sum((c.max() > c.min()).item() for c in z))


def _by_hand(x: np.ndarray):
    """(independent UnionCAM of PlantedCNN on x, Grad-CAM by hand: ReLU(sum_k mean(G_k) A_k), resized, min-max)."""
    import torch

    from independent import _minmax, _up, independent_unioncam

    model = PlantedCNN()
    image = torch.from_numpy(x)
    ind = independent_unioncam(model, model.plant, image)
    store = {}

    def keep(_m, _i, out):
        out.retain_grad()
        store["a"] = out

    h = model.plant.register_forward_hook(keep)
    try:
        logits = model(image)
    finally:
        h.remove()
    logits[0, ind["class_idx"]].backward()
    A, G = store["a"].detach().numpy()[0].astype(np.float64), store["a"].grad.numpy()[0].astype(np.float64)
    L = np.maximum((G.mean(axis=(1, 2))[:, None, None] * A).sum(0), 0)
    return ind, _minmax(_up(L, x.shape[-2:]))


class _Counting:
    """Counts the masked passes (maps scored) and gradient calls of a runtime Explainer."""

    def __init__(self, ex: Explainer):
        self.maps = self.gradients = 0
        scores, gradient = ex.passes.scores, ex.passes.gradient

        def counted_scores(image, maps, class_idx, stage):
            self.maps += int(maps.shape[0])
            return scores(image, maps, class_idx, stage)

        def counted_gradient(*a, **k):
            self.gradients += 1
            return gradient(*a, **k)

        ex.passes.scores, ex.passes.gradient = counted_scores, counted_gradient


def test_every_method_from_one_set_of_passes_equals_each_alone(planted_art):
    x = tiny_images(1).numpy()
    methods = ["unioncam", "gradcam", "gradcampp", "xgradcam", "scorecam"]
    with Explainer(planted_art) as ex:
        alone, passes_alone = {}, {}
        for m in methods:
            count = _Counting(ex)
            alone[m] = ex(x, method=m)
            passes_alone[m] = count.maps
        count = _Counting(ex)
        together = ex.explain_methods(x, methods)
    for m in methods:
        np.testing.assert_array_equal(together[m].cam, alone[m].cam)
        assert together[m].stats.get("masked_passes") == alone[m].stats.get("masked_passes")
    # By hand: the plant's channels 4-7 are 2 copies of channel 0 and 2 constants, so the region
    # map needs one pass per non-constant channel among 0-3; UnionCAM adds 3 fusion passes, and
    # Score-CAM's passes are UnionCAM's own: the five methods cost what UnionCAM costs.
    region = _varying_base_channels(x)
    assert passes_alone["scorecam"] == region and passes_alone["unioncam"] == region + 3
    assert passes_alone["gradcam"] == 0
    assert count.maps == region + 3 and count.gradients == 1
    # Against the independent implementation (tests/independent.py) and Grad-CAM by hand: what is
    # shared is what the spec says is the same (Score-CAM's map is UnionCAM's region map).
    ind, gradcam = _by_hand(x)
    np.testing.assert_allclose(together["scorecam"].cam[0], ind["region"], atol=1e-3)
    np.testing.assert_allclose(together["unioncam"].cam[0], ind["cam"], atol=1e-3)
    np.testing.assert_allclose(together["gradcam"].cam[0], gradcam, atol=1e-3)


def test_eval_runs_the_methods_from_one_set_of_passes(tmp_path, capsys, monkeypatch):
    from unioncam.runtime import explainer as runtime_explainer

    calls = []
    original = runtime_explainer.Explainer.explain_methods

    def spy(self, images, methods, class_idx=None):
        calls.append(list(methods))
        return original(self, images, methods, class_idx)

    monkeypatch.setattr(runtime_explainer.Explainer, "explain_methods", spy)
    monkeypatch.setattr(runtime_explainer.Explainer, "__call__", lambda *a, **k: pytest.fail("a method alone"))
    import cv2

    for i in range(2):
        cv2.imwrite(str(tmp_path / f"p{i}.png"), np.full((20, 60, 3), 60 * (i + 1), np.uint8))
    rc = main(["eval", str(tmp_path / "p0.png"), str(tmp_path / "p1.png"), *TINY, "--steps", "2", "--out",
               str(tmp_path / "ev"), "--threads", "1"])
    assert rc == 0, capsys.readouterr().err
    assert calls == [["unioncam", "gradcam", "gradcampp", "xgradcam", "scorecam"]] * 2


def test_the_progress_bar_counts_the_passes_that_run(planted_art, monkeypatch):
    bars = []

    class Bar:
        def __init__(self, total):
            self.total, self.n, self.totals = total, 0, [total]

        def update(self, n):
            self.n += n

        def refresh(self):
            self.totals.append(self.total)

    @contextlib.contextmanager
    def recording(enabled, total):
        bars.append(Bar(total))
        yield bars[-1]

    monkeypatch.setattr(pipeline, "_progress_bar", recording)
    with Explainer(planted_art, progress=True) as ex:
        exp = ex(tiny_images(1).numpy())
    (bar,) = bars
    # The upper bound counts the copies of channel 0 (non-constant, 2 of them); the passes that run
    # do not, and the bar says so before the first pass.
    region = _varying_base_channels(tiny_images(1).numpy())
    assert bar.totals == [region + 2, region] and bar.n == region and exp.stats["duplicate_channels"] == 2


@pytest.mark.usefixtures("lite0_stem_cache")
def test_a_report_holds_scalars_and_one_score(tmp_path, capsys):
    rc = main(["explain", "--layer", "stem", "--no-progress", "--max-passes", "8", "--out", str(tmp_path)])
    out = capsys.readouterr().out
    assert rc == 0
    rep = json.loads((tmp_path / "chelsea.json").read_text())
    for key in ("estimated_channels", "region_error_bound", "region_error_estimate"):
        assert isinstance(rep["stats"][key], (int, float)), (key, rep["stats"][key])
    mine = [t for t in rep["top5"] if t["index"] == rep["class_idx"]]
    assert mine and mine[0]["probability"] == rep["score"]
    # The softmax by hand from the report's own top logits is not available; the printed p agrees.
    assert f"p={rep['score']:.3f}" in out


def test_a_baseline_prints_no_selection(tmp_path, capsys):
    import cv2

    cv2.imwrite(str(tmp_path / "a.png"), np.full((20, 20, 3), 90, np.uint8))
    rc = main(["explain", str(tmp_path / "a.png"), *TINY, "--method", "gradcam", "--out", str(tmp_path / "o")])
    line = capsys.readouterr().out.strip()
    assert rc == 0 and "selected" not in line and re.search(r", [0-9.]+ ms ->", line), line
    assert not re.search(r", 0(\.0+)? m?s ->", line), line


@pytest.mark.parametrize("mean, half, text", [
    (37.32, 82.31, "37 ± 82"),         # the hostile run's Average Drop: 2 significant figures of the half-width
    (0.388, 0.722, "0.39 ± 0.72"),      # its AUC, the same rule
    (123.456, 0.0123, "123.456 ± 0.012"),
    (0.5, None, "0.5"),                 # one image: no interval, 3 significant figures
    (2.0 / 3.0, None, "0.667"),
    (float("nan"), None, "n/a"),
])
def test_one_rounding_rule_and_one_interval_format(mean, half, text):
    from unioncam.metrics import format_interval

    assert format_interval(mean, half) == text


def test_grid_tiles_keep_the_photos_aspect():
    from unioncam.cli.eval import _tile

    wide = np.zeros((40, 160, 3), np.uint8)  # 4:1, black
    tile = _tile(wide, 160)
    dark_rows = np.flatnonzero((tile < 128).all(axis=(1, 2)))
    # By hand: 160 wide -> scale 1, 40 rows high, centred in 160: rows 60..99.
    assert tile.shape == (160, 160, 3) and dark_rows.min() == 60 and dark_rows.max() == 99


def test_bench_shows_n_and_marks_percentiles_from_too_few_samples():
    from unioncam.cli.bench_report import HEADER, render_markdown, render_table

    def cell(n):
        stage = {"p50_ms": 10.0, "p90_ms": 11.0, "p99_ms": 12.0, "n": n}
        return {"backend": "onnxruntime", "device": "cpu", "method": "unioncam", "batch_size": 16, "threads": 2,
                "max_passes": None, "precision": "fp32", "status": "ok", "stages": {"total": stage},
                "explanations_per_s": 100.0, "gflops_per_s": 1.0, "ceiling_gflops_per_s": 2.0,
                "fraction_of_ceiling": 0.5, "peak_rss_mb": 300.0, "peak_device_mb": None}

    report = {"model": "m", "layer": "l", "cells": [cell(5), cell(50), cell(200)], "ceiling_gflops_per_s": 2.0,
              "machine": {"cpu": "x", "cores": 2, "gpu": None, "versions": {}}}
    table = render_table(report).splitlines()
    rows = [ln.split() for ln in table[2:5]]
    n_col = HEADER.index("n")
    assert [r[n_col] for r in rows] == ["5", "50", "200"]
    assert [r[n_col + 2:n_col + 4] for r in rows] == [["11.0*", "12.0*"], ["11.0", "12.0*"], ["11.0", "12.0"]]
    assert "p99 under 100" in table[-1] and "p99 under 100" in render_markdown(report)


def test_help_and_messages_name_readme_sections_that_exist():
    """Every ``(README, "Section")`` or ``(docs/page.md, "Section")`` in help and messages names a
    heading that exists in that file."""
    def headings(page: str) -> list[str]:
        path = ROOT / page
        return [ln.lstrip("#").strip() for ln in path.read_text().splitlines() if ln.startswith("#")] \
            if path.is_file() else []

    parser = build_parser()
    texts = [parser.format_help()] + [a.format_help() for a in parser._subparsers._group_actions[0].choices.values()]
    texts += [p.read_text() for d in ("unioncam", "export", "runtime") for p in (ROOT / d).rglob("*.py")]
    named = {(m.group(1), m.group(2).replace('\\"', '"')) for t in texts
             for m in re.finditer(r'(README|docs/[\w-]+\.md), \\?"((?:[^"\\]|\\")+?)\\?"', t)}
    assert len(named) >= 5, "few sections named anywhere: the pattern is stale"
    missing = [(page, n) for page, n in named
               if not any(h.startswith(n) or n in h for h in headings("README.md" if page == "README" else page))]
    assert missing == [], missing


def test_untrained_weights_are_said_before_any_export(tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("UNIONCAM_CACHE", str(tmp_path / "cache"))
    rc = main(["explain", "--model", "resnet50", "--class", "1000", "--out", str(tmp_path / "o"), "--no-progress"])
    err = capsys.readouterr().err
    assert rc == 2 and err.index("RANDOM weights") < err.index("--class 1000 is out of range"), err
    assert not (tmp_path / "cache").exists()


@pytest.mark.parametrize("extra, cause", [
    (["--precision", "tf32"], "GPU math mode"),
    (["--batch-size", str(10 ** 9)], "masked passes per call"),
    (["--threads", str(10 ** 6)], "per core of this machine"),
    (["--provider-options", "no_such_key=1"], "no_such_key"),
])
def test_usage_errors_come_before_any_export(tmp_path, capsys, monkeypatch, extra, cause):
    monkeypatch.setenv("UNIONCAM_CACHE", str(tmp_path / "cache"))
    rc = main(["explain", *TINY, "--out", str(tmp_path / "o"), *extra])
    err = capsys.readouterr().err
    assert rc == 2 and cause in err and "exporting" not in err, err
    assert not (tmp_path / "cache").exists()


def test_threads_reach_the_sessions(tmp_path, capsys, monkeypatch):
    from unioncam.runtime import explainer as runtime_explainer

    seen = []
    original = runtime_explainer.Explainer.__init__

    def spy(self, *a, **k):
        seen.append(k.get("threads"))
        original(self, *a, **k)

    monkeypatch.setattr(runtime_explainer.Explainer, "__init__", spy)
    import cv2

    cv2.imwrite(str(tmp_path / "a.png"), np.full((20, 20, 3), 90, np.uint8))
    assert main(["explain", str(tmp_path / "a.png"), *TINY, "--threads", "1", "--out", str(tmp_path / "o")]) == 0
    assert main(["eval", str(tmp_path / "a.png"), *TINY, "--threads", "1", "--steps", "2",
                 "--out", str(tmp_path / "e")]) == 0
    assert seen == [1, 1]
