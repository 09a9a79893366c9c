"""What machine a bench ran on, and its measured dense-GEMM ceiling."""
from __future__ import annotations

import os
import platform
import time
from importlib import metadata
from pathlib import Path


#: The installed distributions a bench report records the versions of (pip names, not backends).
DISTRIBUTIONS = ("unioncam", "onnxruntime", "onnxruntime-gpu", "numpy", "torch", "tensorrt", "tensorrt-rtx-cu13")


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
    from ..runtime.backends.tensorrt.engine_file import current_gpu

    return {
        "cpu": cpu_model(),
        "cores": os.cpu_count(),
        "python": platform.python_version(),
        "gpu": current_gpu(),
        "versions": {p: _version(p) for p in DISTRIBUTIONS},
    }


def _rates(fn, flop: float, seconds: float) -> dict:
    """GFLOP/s of ``fn`` called back to back for about ``seconds``: best and sustained (median)."""
    import numpy as np

    fn()  # warm-up: thread pools started, pages touched
    times = []
    end = time.perf_counter() + seconds
    while time.perf_counter() < end or len(times) < 3:
        t = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t)
    return {"best": flop / min(times) / 1e9, "sustained": flop / float(np.median(times)) / 1e9, "calls": len(times)}


def gemm_rates(seconds: float = 1.0, n: int = 1024, threads: int | None = None) -> dict:
    """Measured float32 n x n x n GEMM rates of this machine, GFLOP/s: NumPy's BLAS (``blas``) and
    ONNX Runtime's own MatMul kernel (``onnxruntime``, MLAS on the CPU, where it imports), each
    ``{"best", "sustained", "calls"}``, and ``ceiling``: the higher sustained rate.

    Sustained (the median call) is the ceiling because a bench cell's rate is sustained too (its
    passes over their summed time): a best call catches a moment of boost clock that no minute-long
    run keeps. Run it in its own process with ``OMP_NUM_THREADS``/``OPENBLAS_NUM_THREADS`` set:
    spinning thread pools of other libraries in the same process halve it.
    """
    import numpy as np

    rng = np.random.default_rng(0)
    a = rng.random((n, n), dtype=np.float32)
    b = rng.random((n, n), dtype=np.float32)
    flop = 2.0 * n ** 3
    out = {"n": n, "blas": _rates(lambda: a @ b, flop, seconds)}
    try:
        import onnxruntime as ort
    except ImportError:
        pass
    else:
        # A one-MatMul graph shipped with the package (M, K, N symbolic): the runtime needs no onnx.
        graph = Path(__file__).resolve().parent.parent / "data" / "gemm.onnx"
        so = ort.SessionOptions()
        so.intra_op_num_threads = threads or (os.cpu_count() or 1)
        session = ort.InferenceSession(str(graph), so, providers=["CPUExecutionProvider"])
        out["onnxruntime"] = _rates(lambda: session.run(None, {"A": a, "B": b}), flop, seconds)
    out["ceiling"] = max(v["sustained"] for k, v in out.items() if isinstance(v, dict))
    return out
