"""Helpers shared by the benchmark scripts: machine facts, medians, peak RSS, result files."""
from __future__ import annotations

import datetime
import json
import os
import time
from pathlib import Path

RESULTS = Path(__file__).parent / "results"


def machine() -> dict:
    """The same machine facts as ``unioncam bench`` reports."""
    from unioncam.bench.machine import machine_facts

    return machine_facts()


def peak_rss_mb() -> float:
    """Peak RSS of this process, MB (VmHWM), as ``unioncam bench`` measures it."""
    from unioncam.bench.cell import peak_rss_mb as peak

    return peak()


def timed(fn, repeats: int, warmup: int = 1) -> tuple[float, list[float], object]:
    """(median seconds, all seconds, last result) after ``warmup`` untimed calls."""
    out = None
    for _ in range(warmup):
        out = fn()
    times = []
    for _ in range(repeats):
        t = time.perf_counter()
        out = fn()
        times.append(time.perf_counter() - t)
    from unioncam.bench import summarize

    return summarize(times)["p50_ms"], times, out  # the same percentile code as unioncam bench


def write_results(stem: str, payload: dict, markdown: str) -> tuple[Path, Path]:
    RESULTS.mkdir(parents=True, exist_ok=True)
    date = datetime.date.today().isoformat()
    name = f"{date}-{machine_label()}-{stem}"
    j = RESULTS / f"{name}.json"
    m = RESULTS / f"{name}.md"
    j.write_text(json.dumps(payload, indent=2))
    m.write_text(markdown)
    return j, m


def machine_label() -> str:
    return os.environ.get("UNIONCAM_MACHINE", f"cpu{os.cpu_count()}")


def child_result(cmd: list[str]) -> dict:
    """Run a benchmark child process; its last stdout line is a JSON object."""
    import subprocess

    out = subprocess.run(cmd, check=True, capture_output=True, text=True).stdout
    return json.loads(out.strip().splitlines()[-1])
