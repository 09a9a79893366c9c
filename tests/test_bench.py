"""``unioncam bench``: its statistics on known timings, the JSON schema of a real (tiny) bench run,
an unavailable cell that does not stop the sweep, and bad flags."""
import json

import numpy as np
import pytest

from unioncam.bench import summarize
from unioncam.cli import main


def test_summarize_known_timings():
    s = summarize([10.0, 20.0, 30.0, 40.0, 100.0])
    assert s["min_ms"] == 10.0 and s["max_ms"] == 100.0 and s["n"] == 5
    assert s["mean_ms"] == pytest.approx(40.0)
    assert s["std_ms"] == pytest.approx(np.sqrt(((np.array([10, 20, 30, 40, 100]) - 40.0) ** 2).mean()))
    assert s["p50_ms"] == 30.0
    assert s["p90_ms"] == pytest.approx(40.0 + 0.6 * 60.0)  # rank 3.6 between 40 and 100
    assert s["p99_ms"] == pytest.approx(40.0 + 0.96 * 60.0)
    one = summarize([7.0])
    assert one["p99_ms"] == one["min_ms"] == 7.0 and one["std_ms"] == 0.0


def test_bench_json_schema_on_a_tiny_export(tiny_art, tmp_path, capsys):
    _, art = tiny_art
    out = tmp_path / "bench.json"
    rc = main(["bench", "--artifacts", str(art), "--batch-size", "2", "4", "--iterations", "2", "--warmup", "0",
               "--backend", "onnxruntime", "tensorrt", "--json", str(out), "--md", str(tmp_path / "b.md"),
               "--plot", str(tmp_path / "b.png"), "--no-progress"])
    table = capsys.readouterr().out
    assert rc == 0 and "p90 ms" in table
    report = json.loads(out.read_text())
    assert set(report) >= {"machine", "ceiling_gflops_per_s", "cells"} and report["ceiling_gflops_per_s"] > 0
    assert len(report["cells"]) == 4
    ok = [c for c in report["cells"] if c["status"] == "ok"]
    bad = [c for c in report["cells"] if c["status"] != "ok"]
    assert [c["batch_size"] for c in ok] == [2, 4] and all(c["backend"] == "onnxruntime" for c in ok)
    assert all(c["backend"] == "tensorrt" and c["status"].startswith("unavailable:") for c in bad)
    for c in ok:
        for key in ("backend", "device", "method", "batch_size", "threads", "explanations_per_s",
                    "masked_passes_per_s", "gflops_per_s", "fraction_of_ceiling", "peak_rss_mb", "peak_device_mb",
                    "max_abs_diff_vs_first", "masked_passes", "skipped_channels"):
            assert key in c, key
        for stage in ("total", "gradient", "masked", "fusion", "load"):
            st = c["stages"][stage]
            assert st["min_ms"] <= st["p50_ms"] <= st["p90_ms"] <= st["p99_ms"] <= st["max_ms"], stage
        assert c["stages"]["total"]["n"] == 2
        assert c["stages"]["total"]["p50_ms"] >= c["stages"]["masked"]["p50_ms"] > 0
        assert 0 < c["fraction_of_ceiling"] < 5 and c["gflops_per_s"] > 0
        gemm = c["gemm"]  # the cell's own ceiling: the faster sustained GEMM of the two measured before it
        assert gemm["blas"]["best"] >= gemm["blas"]["sustained"] > 0 and gemm["onnxruntime"]["sustained"] > 0
        assert c["ceiling_gflops_per_s"] == max(gemm["blas"]["sustained"], gemm["onnxruntime"]["sustained"])
        assert c["fraction_of_ceiling"] == pytest.approx(c["gflops_per_s"] / c["ceiling_gflops_per_s"])
        assert c["max_abs_diff_vs_first"] <= 1e-5  # batch size changes no value
    assert "| onnxruntime | cpu | unioncam | 2 |" in (tmp_path / "b.md").read_text()
    import cv2

    png = cv2.imread(str(tmp_path / "b.png"))
    assert png is not None and png.shape[0] > 200  # a real picture was drawn
    assert all(len(c["times_ms"]) == 2 for c in ok)


@pytest.mark.parametrize("flags, match", [
    (["--warmup", "-1"], "--warmup"), (["--duration", "0"], "--duration"), (["--backend", "openvino"], "openvino"),
    (["--images", "/nonexistent.png"], "not a file"),
])
def test_bad_bench_flags_exit_2_with_one_line(tiny_art, capsys, flags, match):
    rc = main(["bench", "--artifacts", str(tiny_art[1]), "--no-progress", "--no-ceiling", *flags])
    err = capsys.readouterr().err.strip().splitlines()
    assert rc == 2 and len(err) == 1 and match in err[0]


def test_bench_list_names_what_runs_here(capsys):
    assert main(["bench", "--list"]) == 0
    out = capsys.readouterr().out
    assert "onnxruntime" in out and "CPUExecutionProvider" in out and "GPU:" in out


def test_ort_options_reach_the_session_and_change_no_value(tiny_art):
    """Each option is applied to the real InferenceSession (read back from it); the maps do not move."""
    from unioncam.runtime import Explainer

    _, art = tiny_art
    x = np.random.default_rng(3).random((2, 3, 32, 32), dtype=np.float32)
    with Explainer(art) as ex:
        ref = ex(x)
    options = "opt=basic,spin=0,mem_pattern=0,session.use_device_allocator_for_initializers=1"
    with Explainer(art, session_options=options) as ex:
        so = ex._masked.session.get_session_options()
        import onnxruntime as ort

        assert so.graph_optimization_level == ort.GraphOptimizationLevel.ORT_ENABLE_BASIC
        assert so.get_session_config_entry("session.intra_op.allow_spinning") == "0"
        assert so.get_session_config_entry("session.use_device_allocator_for_initializers") == "1"
        assert so.enable_mem_pattern is False
        got = ex(x)
    assert np.abs(got.cam - ref.cam).max() <= 1e-5 and np.abs(got.beta_region - ref.beta_region).max() <= 1e-6


@pytest.mark.parametrize("options, match", [
    ("spin=2", "spin"), ("opt=fast", "opt"), ("threads", "KEY=VALUE"), ("cuda.foo=1", "unknown ONNX Runtime option")])
def test_bad_ort_options(tiny_art, capsys, options, match):
    from unioncam import UnionCAMError
    from unioncam.runtime import Explainer

    with pytest.raises(UnionCAMError, match=match):
        Explainer(tiny_art[1], session_options=options)
    rc = main(["bench", "--artifacts", str(tiny_art[1]), "--no-progress", "--no-ceiling", "--ort-options", options])
    err = capsys.readouterr().err.strip().splitlines()
    assert rc == 2 and len(err) == 1 and match in err[0]


def test_bench_of_the_one_graph(tiny_e2e, tmp_path, capsys):
    """``--onnx unioncam.onnx``: total latency, the graph's own pass count, GFLOP/s from the
    unioncam.json beside it; an ONNX Runtime option sweep changes no value."""
    _, graph = tiny_e2e
    out = tmp_path / "bench.json"
    rc = main(["bench", "--onnx", str(graph), "--iterations", "2", "--warmup", "0", "--no-progress", "--no-ceiling",
               "--ort-options", "default", "opt=basic,spin=0", "--json", str(out)])
    assert rc == 0, capsys.readouterr().err
    report = json.loads(out.read_text())
    assert report["graph"] == "unioncam.onnx" and report["layer"] == "features.3"
    cells = report["cells"]
    assert [c["status"] for c in cells] == ["ok", "ok"]
    assert [c["ort_options"] for c in cells] == ["default", "opt=basic,spin=0"]
    info = json.loads(graph.with_name("unioncam.json").read_text())
    assert info["forward_flops"] > 0
    for c in cells:
        assert 3 < c["masked_passes"] <= info["channels"] + 3 and c["stages"]["total"]["n"] == 2
        assert c["gflops_per_s"] > 0 and "masked" not in c["stages"]
    assert cells[1]["max_abs_diff_vs_first"] <= 1e-6
    rc = main(["bench", "--onnx", str(graph), "--method", "gradcam", "--iterations", "1", "--no-progress",
               "--no-ceiling"])
    assert rc == 1 and "UnionCAM only" in capsys.readouterr().out


def test_eager_bench_exports_nothing_and_says_when_cuda_is_missing(tmp_path, monkeypatch, capsys):
    """``bench --backend torch`` with a registered model times the eager reference, which needs no
    export; on a machine without CUDA its ``--device cuda`` cell says why it cannot run (on a GPU,
    ``tests/test_gpu.py`` runs it)."""
    import torch

    if torch.cuda.is_available():
        pytest.skip("a CUDA GPU is here: tests/test_gpu.py times this cell")
    cache = tmp_path / "cache"
    monkeypatch.setenv("UNIONCAM_CACHE", str(cache))
    out = tmp_path / "b.json"
    rc = main(["bench", "--model", "efficientnet_lite0", "--backend", "torch", "--device", "cuda",
               "--iterations", "1", "--warmup", "0", "--no-ceiling", "--no-progress", "--json", str(out)])
    assert rc == 1, capsys.readouterr().err
    report = json.loads(out.read_text())
    (cell,) = report["cells"]
    assert report["graph"] == "eager" and report["layer"] == "head"
    assert cell["status"].startswith("unavailable:") and "needs a CUDA build of torch" in cell["status"]
    assert not cache.exists() or not any(cache.iterdir())  # nothing was exported
