"""``unioncam bench``: explanation latency per backend, device, method, batch size and thread count,
each cell in its own process; trtexec-style percentiles, the machine's measured GEMM ceiling, JSON
and Markdown reports."""
from __future__ import annotations

import argparse
import itertools
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np

from .. import atomic
from ..bench.machine import machine_facts
from ..errors import UsageError
from ..progress import progress_bar
from ..registry import METHODS
from ..runtime.backends import BACKENDS, devices
from .bench_report import render_markdown, render_plot, render_table
from .common import add_budget_option, add_replace_option, positive_int


def add_parser(sub) -> None:
    p = sub.add_parser(
        "bench", help="time explanations (percentiles per stage, fraction of the measured GEMM ceiling)",
        description="Time UnionCAM and its baselines. A flag with several values makes a sweep: one cell per "
                    "combination, each in its own process. Reports per-stage min/mean/std/p50/p90/p99/max.")
    src = p.add_mutually_exclusive_group()
    src.add_argument("--model", default="efficientnet_lite0",
                     help="registered model, or pkg.module:factory returning an nn.Module (exported into the cache)")
    src.add_argument("--artifacts", type=Path, help="an exported folder (no torch needed)")
    src.add_argument("--onnx", type=Path, metavar="FILE.onnx",
                     help="a unioncam.onnx from `unioncam export --end-to-end` (the whole method in one graph; "
                          "only its total time is measured)")
    p.add_argument("--layer", help="target layer (with --model; default: the model's, or the last feature map)")
    p.add_argument("--input-size", type=positive_int, nargs="+", metavar="N", help="H [W] of a --model's input")
    p.add_argument("--weights", type=Path, help="checkpoint file for --model")
    p.add_argument("--backend", nargs="+", default=["onnxruntime"], help=", ".join(BACKENDS) + " (torch: the eager reference)")
    p.add_argument("--device", nargs="+", default=["cpu"], help="cpu, cuda, tensorrt")
    p.add_argument("--method", nargs="+", default=["unioncam"], choices=METHODS)
    p.add_argument("--batch-size", nargs="+", type=positive_int, default=[None], help="masked passes per call")
    p.add_argument("--threads", nargs="+", type=positive_int, default=[None], help="intra-op threads (default: all)")
    p.add_argument("--ort-options", nargs="+", default=["default"], metavar="KEY=VALUE[,KEY=VALUE]",
                   help="ONNX Runtime session options, one set per cell: opt=disable|basic|extended|layout|all, "
                        "spin=0|1, mem_pattern=0|1, arena=0|1, or ONNX Runtime's session.* keys; 'default' = none")
    add_budget_option(p, nargs="+")
    p.add_argument("--images", nargs="+", type=Path, help="images (default: the bundled photos)")
    p.add_argument("--warmup", type=int, default=1, help="untimed explanations per cell (default 1)")
    p.add_argument("--iterations", type=positive_int, default=5, help="timed explanations per cell (default 5)")
    p.add_argument("--duration", type=float, help="time each cell for this many seconds instead of --iterations")
    p.add_argument("--compare", choices=["eager"], help="also time the eager PyTorch reference (needs torch)")
    p.add_argument("--json", type=Path, help="write the report as JSON (schema in the README)")
    p.add_argument("--md", type=Path, help="write the report as a Markdown table")
    p.add_argument("--plot", type=Path, help="write a PNG: the latency distribution of each cell (needs matplotlib)")
    add_replace_option(p)
    p.add_argument("--no-ceiling", action="store_true", help="skip the GEMM ceiling measurement")
    p.add_argument("--list", action="store_true", help="print what this machine can run, and how to enable the rest")
    p.add_argument("--no-progress", action="store_true")
    p.set_defaults(func=run)


def _child(args: list[str], threads: int | None) -> dict:
    env = dict(os.environ)
    if threads:
        for var in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
            env[var] = str(threads)
    proc = subprocess.run([sys.executable, "-m", *args], capture_output=True, text=True, env=env)
    lines = proc.stdout.strip().splitlines()
    try:
        return json.loads(lines[-1])
    except (IndexError, ValueError):
        tail = (proc.stderr.strip().splitlines() or ["no output"])[-1]
        return {"status": f"error: the cell's process failed ({tail})"}


def ceiling(threads: int | None) -> dict:
    """GEMM rates measured in their own process (:func:`unioncam.bench.machine.gemm_rates`), or
    ``{"ceiling": None, "status": ...}`` if that process failed."""
    out = _child(["unioncam.bench.ceiling", str(threads or "all")], threads)
    return out if "ceiling" in out else {"ceiling": None, **out}


def _validate(args) -> None:
    from ..errors import UnionCAMError
    from ..validation import (MAX_ITERATIONS, check_count, check_duration, check_ort_options, check_provider_options,
                              check_threads)
    from .common import as_usage_error

    with as_usage_error("--warmup"):
        check_count(args.warmup, "--warmup", MAX_ITERATIONS, minimum=0)
    with as_usage_error("--iterations"):
        check_count(args.iterations, "--iterations", MAX_ITERATIONS)
    if args.duration is not None:
        with as_usage_error():
            check_duration(args.duration)

    for t in args.threads:
        if t is not None:
            try:
                check_threads(t)
            except UnionCAMError as e:
                raise UsageError(f"--threads: {e}") from None

    for flag, values, check in (("--ort-options", args.ort_options, check_ort_options),
                                ("--provider-options", args.provider_options, check_provider_options)):
        for text in values:
            try:
                check(text)
            except UnionCAMError as e:
                raise UsageError(f"{flag}: {e}") from None
    known_b, known_d = list(BACKENDS), devices()
    for b in args.backend:
        if b not in known_b:
            raise UsageError(f"unknown --backend {b!r}; choose from {', '.join(known_b)}")
    for d in args.device:
        if d not in known_d:
            raise UsageError(f"unknown --device {d!r}; choose from {', '.join(known_d)}")


def run(args: argparse.Namespace) -> int:
    from ..image_io import sample_image_path
    from .bench_report import print_list

    if args.list:
        print_list()
        return 0
    _validate(args)
    from ..ownership import check_locations, claim

    check_locations({"--json": args.json, "--md": args.md, "--plot": args.plot})
    claim([p for p in (args.json, args.md, args.plot) if p is not None], replace_user_files=args.replace_user_files,
          elsewhere="write the report elsewhere")
    if args.plot:
        import importlib.util

        if importlib.util.find_spec("matplotlib") is None:
            raise UsageError("--plot needs matplotlib: pip install 'unioncam[plot]'")
    images = [str(p) for p in (args.images or [sample_image_path("chelsea"), sample_image_path("coffee")])]
    for p in images:
        if not Path(p).is_file():
            raise UsageError(f"--images: {p} is not a file")
    artifacts = args.artifacts
    if args.onnx is not None:
        return _run(args, images, None, _one_graph_facts(args.onnx))
    if artifacts is None:
        from ..export_cache import ensure_precision, exported
        from .common import model_request, resolve_model_spec

        model_spec = resolve_model_spec(args)
        if set(args.backend) == {"torch"} and ":" not in args.model:
            # The eager reference alone needs no export (a factory model still loads, to pick its layer).
            return _run(args, images, None, {"model": args.model, "layer": args.layer or model_spec.default_layer,
                                             "input_size": list(model_spec.input_size)})
        artifacts, _ = exported(model_request(args, model_spec))
        for precision in args.precision or []:
            ensure_precision(artifacts, precision)
    from ..artifacts import Manifest

    manifest = Manifest.load(artifacts)
    return _run(args, images, artifacts, {"model": manifest.model, "layer": manifest.layer,
                                          "input_size": list(manifest.input_size)})


def _one_graph_facts(path: Path) -> dict:
    """Model, layer and input size of a unioncam.onnx, from the unioncam.json written beside it (or,
    for a renamed file without one, from the graph's input shape)."""
    from ..errors import ArtifactError

    if not path.is_file():
        raise UsageError(f"--onnx: {path} is not a file")
    info = path.with_name("unioncam.json")
    if info.is_file():
        def damaged(what: str):
            return ArtifactError(f"{info}, the report beside {path.name}, {what}; export the one graph again with "
                                 "`unioncam export --end-to-end`, or move the report away")

        try:
            facts = json.loads(info.read_text())
        except (OSError, UnicodeDecodeError, ValueError, RecursionError) as e:
            raise damaged(f"is damaged ({type(e).__name__}: {e})") from None
        size = facts.get("input_size") if isinstance(facts, dict) else None
        if not (isinstance(size, list) and len(size) == 2 and all(type(v) is int and v > 0 for v in size)):
            raise damaged(f"has no input size [H, W] (input_size: {size!r:.40})")
        return {"model": str(facts.get("model") or path.name), "layer": str(facts.get("layer", "?")),
                "input_size": size}
    from ..runtime.backends.onnxruntime.loader import SessionFromOnnx

    shape = next((i.shape for i in SessionFromOnnx(path)().get_inputs() if i.name == "image"), None)
    if not shape or not all(isinstance(d, int) for d in shape[2:]):
        raise ArtifactError(f"{path} has no (1, 3, H, W) input 'image': not a unioncam.onnx")
    return {"model": path.name, "layer": "?", "input_size": list(shape[2:])}


def _run(args, images: list[str], artifacts: Path | None, facts: dict) -> int:
    backends = list(args.backend) + (["torch"] if args.compare == "eager" and "torch" not in args.backend else [])
    combos = list(itertools.product(backends, args.device, args.method, args.batch_size, args.threads,
                                    args.max_passes or [None], args.precision or ["fp32"], args.ort_options,
                                    args.provider_options))
    report = {"machine": machine_facts(), "model": facts["model"], "layer": facts["layer"],
              "graph": "unioncam.onnx" if args.onnx is not None else ("artifacts" if artifacts else "eager"),
              "ceiling_gflops_per_s": None, "cells": []}
    if not args.no_ceiling:
        # One ceiling per thread count of the sweep (a 1-thread cell is judged against 1-thread GEMM),
        # measured before the cells; each cell also gets its own, measured just before it, because
        # a shared machine's speed drifts by tens of percent between minutes (docs/benchmarking.md,
        # "Benchmarking": how to read the fraction of ceiling).
        ceilings = {t: ceiling(t) for t in sorted(set(args.threads), key=lambda v: v or 1 << 30)}
        report["ceiling_gflops_per_s"] = ceilings[max(ceilings, key=lambda v: v or 1 << 30)]["ceiling"]
        report["ceilings_by_threads"] = {str(t) if t else "all": v["ceiling"] for t, v in ceilings.items()}
        report["gemm"] = {str(t) if t else "all": v for t, v in ceilings.items()}
    bar = None if args.no_progress else progress_bar(total=len(combos), desc="bench cells", unit="cell")
    with tempfile.TemporaryDirectory() as tmp:
        first_map = None
        for i, combo in enumerate(combos):
            cell = dict(zip(CELL_KEYS, combo))
            cell.update(_unavailable(cell) or _measure(args, cell, images, artifacts, facts, Path(tmp) / f"cell{i}.npy"))
            if cell["status"] == "ok":
                cam = np.load(Path(tmp) / f"cell{i}.npy")
                first_map = cam if first_map is None else first_map
                cell["max_abs_diff_vs_first"] = float(np.abs(cam - first_map).max())
                gf, ceil = cell.get("gflops_per_s"), cell.get("ceiling_gflops_per_s")
                cell["fraction_of_ceiling"] = gf / ceil if (gf and ceil) else None
            report["cells"].append(cell)
            if bar is not None:
                bar.update(1)
    if bar is not None:
        bar.close()
    return _report(args, report)


#: A cell's settings, in the order of the sweep.
CELL_KEYS = ("backend", "device", "method", "batch_size", "threads", "max_passes", "precision", "ort_options",
             "provider_options")


def _unavailable(cell: dict) -> dict | None:
    """A cell that cannot run, with why; None where it can."""
    backend, device, precision = cell["backend"], cell["device"], cell["precision"]
    if backend == "torch" and (cell["ort_options"] != "default" or cell["provider_options"] != "default"):
        return {"status": "unavailable: ONNX Runtime options do not apply to the eager reference"}
    if device == "cpu" and (cell["provider_options"] != "default" or precision == "tf32"):
        return {"status": "unavailable: CUDA provider options and tf32 apply to a GPU device"}
    if backend == "torch" and device not in BACKENDS["torch"].devices:
        return {"status": f"unavailable: the eager reference runs on cpu or cuda, not {device}"}
    if backend == "torch" and precision != "fp32":
        return {"status": "unavailable: the eager reference runs in the model's dtype (fp32)"}
    return None


def _measure(args, cell: dict, images: list[str], artifacts: Path | None, facts: dict, dump: Path) -> dict:
    """One cell, in a process of its own (its threads and memory its own), its map dumped to ``dump``."""
    spec = {**cell, "artifacts": str(artifacts) if artifacts else None, "model": facts["model"],
            "layer": facts["layer"], "onnx": str(args.onnx) if args.onnx else None,
            "weights": str(args.weights) if getattr(args, "weights", None) else None,
            "input_size": facts["input_size"], "images": images, "warmup": args.warmup,
            "iterations": args.iterations, "duration": args.duration, "dump": str(dump)}
    if not args.no_ceiling:
        cell["gemm"] = ceiling(cell["threads"])
        cell["ceiling_gflops_per_s"] = cell["gemm"]["ceiling"]
    return _child(["unioncam.bench.cell", json.dumps(spec)], cell["threads"])


def _report(args, report: dict) -> int:
    """The comparison with the eager reference, the table on the terminal, and the files asked for."""
    eager = [c for c in report["cells"] if c["backend"] == "torch" and c["status"] == "ok"]
    if eager:
        e = eager[0]["stages"]["total"]["p50_ms"]
        report["compare_eager"] = {"eager_p50_ms": e, "speedup_p50": {
            f"{c['backend']}/{c['device']}/{c['method']}/b{c['batch_size']}/t{c['threads']}"
            + (f"/n{c['max_passes']}" if c.get("max_passes") else "")
            + (f"/{c['precision']}" if c.get("precision") not in (None, "fp32") else "")
            + (f"/{c['ort_options']}" if c.get("ort_options") not in (None, "default") else "")
            + (f"/{c['provider_options']}" if c.get("provider_options") not in (None, "default") else ""):
                e / c["stages"]["total"]["p50_ms"]
            for c in report["cells"] if c["status"] == "ok" and c["backend"] != "torch"}}
    print(render_table(report))
    for label, ratio in report.get("compare_eager", {}).get("speedup_p50", {}).items():
        print(f"  {label}: {ratio:.1f}x faster than the eager PyTorch reference (p50)")
    if args.json:
        atomic.write_text(args.json, json.dumps(report, indent=2), own=True)
    if args.md:
        atomic.write_text(args.md, render_markdown(report), own=True)
    if args.plot:
        render_plot(report, args.plot)
    return 0 if any(c["status"] == "ok" for c in report["cells"]) else 1
