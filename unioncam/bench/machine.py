"""What machine a bench ran on, and its measured dense-GEMM ceiling."""
from __future__ import annotations

import os
import platform
import time
from importlib import metadata


def _version(pkg: str) -> str | None:
    try:
        return metadata.version(pkg)
    except metadata.PackageNotFoundError:
        return None


def cpu_model() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def machine_facts() -> dict:
    """CPU model, cores, GPU (name, compute capability) and package versions."""
    from ..engine_file import current_gpu

    return {
        "cpu": cpu_model(),
        "cores": os.cpu_count(),
        "python": platform.python_version(),
        "gpu": current_gpu(),
        "versions": {p: _version(p) for p in ("unioncam", "onnxruntime", "onnxruntime-gpu", "numpy", "torch",
                                               "tensorrt", "tensorrt-rtx-cu13")},
    }


def sgemm_gflops(seconds: float = 1.0, n: int = 1024) -> float:
    """Measured float32 GEMM rate of this machine's BLAS (NumPy's), GFLOP/s: the best of repeated
    n x n products over about ``seconds``. Run it in its own process with the thread count set by
    ``OMP_NUM_THREADS``/``OPENBLAS_NUM_THREADS``: spinning thread pools of other libraries in the
    same process halve it."""
    import numpy as np

    rng = np.random.default_rng(0)
    a = rng.random((n, n), dtype=np.float32)
    b = rng.random((n, n), dtype=np.float32)
    a @ b  # warm-up
    best = float("inf")
    end = time.perf_counter() + seconds
    while time.perf_counter() < end:
        t = time.perf_counter()
        a @ b
        best = min(best, time.perf_counter() - t)
    return 2.0 * n ** 3 / best / 1e9
