"""Helpers shared by the benchmark scripts: machine facts, medians, peak RSS, result files."""
from __future__ import annotations

import datetime
import json
import os
import platform
import resource
import socket
import statistics
import time
from importlib import metadata
from pathlib import Path

RESULTS = Path(__file__).parent / "results"


def machine() -> dict:
    def version(pkg):
        try:
            return metadata.version(pkg)
        except metadata.PackageNotFoundError:
            return None

    return {
        "host": socket.gethostname(),
        "cpu": platform.processor() or platform.machine(),
        "cores": os.cpu_count(),
        "python": platform.python_version(),
        "gpu": None,
        "versions": {p: version(p) for p in ("torch", "onnxruntime", "onnx", "numpy", "unioncam")},
    }


def peak_rss_mb() -> float:
    """Peak resident set size of this process so far, MB.

    Linux's VmHWM belongs to the current address space, so a child started by a benchmark reports
    its own peak; ``ru_maxrss`` survives fork and exec, so a child would report at least its parent's.
    """
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) / 1024.0
    except OSError:
        pass
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0


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
    return statistics.median(times), times, out


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
