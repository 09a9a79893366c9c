"""One bench cell, run in its own process so that its peak memory and thread pools are its own:
``python -m unioncam.bench.cell '<json spec>'`` prints one JSON line."""
from __future__ import annotations

import json
import sys
import time
from pathlib import Path

import numpy as np

from ..errors import BackendUnavailableError, UnionCAMError
from .stats import summarize

#: Stage names of the report -> key in ``Explanation.timings_ms``. "masked" is the region map's
#: masked passes (with its small algebra); "fusion" holds the 3 AMU/AMS passes.
STAGES = {"total": "total", "gradient": "gradient", "masked": "region", "fusion": "fusion"}


def peak_rss_mb() -> float:
    """This process's peak resident set (VmHWM: its own, unlike ru_maxrss, which survives exec)."""
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) / 1024.0
    except OSError:
        pass
    import resource

    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0


def _inputs(paths: list[str], size) -> list[np.ndarray]:
    from ..image_io import read_rgb, to_model_input

    return [to_model_input(read_rgb(p), size)[None] for p in paths]


def _explainer(spec: dict):
    """(explain(x) -> Explanation, forward GFLOP or None, load ms)."""
    t = time.perf_counter()
    if spec["backend"] == "torch":
        import torch

        from ..methods import method_class
        from ..registry import method_info
        from ..models import load

        from ..validation import check_torch_device

        torch.set_num_threads(spec["threads"] or torch.get_num_threads())
        device = check_torch_device(spec.get("device") or "cpu")
        model, layer = load(spec["model"], spec.get("weights"))
        model.to(device)
        kwargs = method_info(spec["method"]).options(batch_size=spec["batch_size"] or 64, max_passes=spec.get("max_passes"))
        method = method_class(spec["method"])(model, spec.get("layer") or layer, **kwargs)
        # The image is copied to the device inside the timed call, as a user's would be; the
        # Explanation's NumPy fields make the call synchronous, so host clocks time the device.
        fn = lambda x: method(torch.from_numpy(x).to(device))  # noqa: E731
        gflop = None
    elif spec.get("onnx"):
        fn, gflop = _one_graph(spec)
    else:
        from ..runtime import Explainer

        ex = Explainer.from_settings(spec["artifacts"], spec)
        fn = ex
        flops = ex.manifest.extra.get("forward_flops")
        gflop = flops / 1e9 if flops else None
    return fn, gflop, (time.perf_counter() - t) * 1e3


def _one_graph(spec: dict):
    """``unioncam.onnx`` (the whole method in one graph) in one ONNX Runtime session: (explain, GFLOP
    of one forward pass from the ``unioncam.json`` written beside it, or None). Only the total is
    timed: the graph's stages run inside one ``session.run``."""
    from types import SimpleNamespace

    from ..errors import UnionCAMError
    from ..runtime.backends.onnxruntime.loader import SessionFromOnnx

    if spec["backend"] != "onnxruntime":
        raise UnionCAMError(f"--onnx runs on backend onnxruntime, not {spec['backend']!r}")
    if spec["method"] != "unioncam":
        raise UnionCAMError("unioncam.onnx computes UnionCAM only")
    session = SessionFromOnnx(spec["onnx"], device=spec["device"], threads=spec["threads"],
                              options=spec.get("ort_options"))()
    names = [o.name for o in session.get_outputs()]

    def explain(x):
        t = time.perf_counter()
        out = dict(zip(names, session.run(None, {"image": x, "class_idx": np.array([-1], np.int64)})))
        total = (time.perf_counter() - t) * 1e3
        return SimpleNamespace(cam=out["cam"], timings_ms={"total": total},
                               stats={"masked_passes": int(out["passes"][0]), "constant_channels": 0})

    info = Path(spec["onnx"]).with_name("unioncam.json")
    flops = json.loads(info.read_text()).get("forward_flops") if info.is_file() else None
    return explain, (flops / 1e9 if flops else None)


def run_cell(spec: dict) -> dict:
    """Warm up, time, summarise. ``spec``: artifacts, model, backend, device, method, batch_size,
    threads, images, warmup, iterations, duration, dump (where the first map is saved)."""
    from ..artifacts import Manifest

    if spec.get("artifacts"):
        size = Manifest.load(spec["artifacts"]).input_size
    else:
        size = tuple(spec.get("input_size") or (224, 224))
    inputs = _inputs(spec["images"], size)
    gpu_before = gpu_used_bytes() if _runtime_on_gpu(spec) else None
    explain, gflop, load_ms = _explainer(spec)
    for i in range(spec["warmup"]):
        explain(inputs[i % len(inputs)])
    records, first = [], None
    deadline = time.perf_counter() + spec["duration"] if spec.get("duration") else None
    i = 0
    while (i < spec["iterations"]) if deadline is None else (time.perf_counter() < deadline or i == 0):
        exp = explain(inputs[i % len(inputs)])
        if first is None:
            first = exp.cam[0]
        records.append((dict(exp.timings_ms), dict(exp.stats)))
        i += 1
    np.save(spec["dump"], first)
    stages = {}
    for name, key in STAGES.items():
        values = [t[key] for t, _ in records if key in t]
        if values:
            stages[name] = summarize(values)
    stages["load"] = summarize([load_ms])
    region_passes = [s.get("masked_passes", 0) - (3 if spec["method"] == "unioncam" else 0) for _, s in records]
    # The one graph times no stage of its own: its passes/s are over the whole explanation (a lower bound).
    region_ms = [t.get("region", 0.0) if not spec.get("onnx") else t["total"] for t, _ in records]
    passes_per_s = sum(region_passes) / (sum(region_ms) / 1e3) if sum(region_ms) > 0 else None
    last = records[-1][1]
    return {
        "status": "ok",
        "iterations": len(records),
        "times_ms": [t["total"] for t, _ in records],
        "stages": stages,
        "explanations_per_s": 1e3 / stages["total"]["mean_ms"],
        "masked_passes_per_s": passes_per_s,
        "masked_passes": int(last.get("masked_passes", 0)),
        "skipped_channels": int(last.get("constant_channels", 0)),
        "gflops_per_s": passes_per_s * gflop if (passes_per_s and gflop) else None,
        "peak_rss_mb": peak_rss_mb(),
        **_device_memory(spec, gpu_before),
    }


def _runtime_on_gpu(spec: dict) -> bool:
    return spec["backend"] != "torch" and spec.get("device") not in (None, "cpu")


def gpu_used_bytes() -> int | None:
    """Bytes in use on the current GPU (total - free, the whole device), or None without a way to
    ask. Through CuPy or cuda-python, whichever imports (both use the runtime's primary context,
    the one ONNX Runtime's CUDA provider and TensorRT use, so no second context is counted)."""
    try:
        import cupy

        free, total = cupy.cuda.runtime.memGetInfo()
        return int(total - free)
    except Exception:  # not installed, or no usable GPU: try the next way
        pass
    try:
        from cuda.bindings import runtime as cudart
    except ImportError:
        try:
            from cuda import cudart
        except ImportError:
            return None
    err, free, total = cudart.cudaMemGetInfo()
    return int(total - free) if int(err) == 0 else None


def _device_memory(spec: dict, gpu_before: int | None = None) -> dict:
    """Peak GPU memory of a cell. Eager CUDA: torch's allocator (tensors, weights included; the
    CUDA context is not counted), and whether convolutions and matmuls ran in TF32. Runtime on a
    GPU: the growth of the device's used memory over the cell (ONNX Runtime's arena keeps its peak,
    so this is the peak of sessions, weights and buffers; the CUDA context made before the cell is
    not counted)."""
    if _runtime_on_gpu(spec):
        after = gpu_used_bytes()
        grown = (after - gpu_before) / 2**20 if (after is not None and gpu_before is not None) else None
        return {"peak_device_mb": grown, "peak_device_method": "device used memory, after minus before"}
    if spec["backend"] != "torch" or spec.get("device") != "cuda":
        return {"peak_device_mb": None}
    import torch

    return {"peak_device_mb": torch.cuda.max_memory_allocated() / 2**20,
            "peak_device_reserved_mb": torch.cuda.max_memory_reserved() / 2**20,
            "gpu": torch.cuda.get_device_name(),
            "tf32": {"cudnn": bool(torch.backends.cudnn.allow_tf32),
                     "matmul": bool(torch.backends.cuda.matmul.allow_tf32)}}


def main() -> None:
    spec = json.loads(sys.argv[1])
    try:
        result = run_cell(spec)
    except BackendUnavailableError as e:
        result = {"status": f"unavailable: {e}"}
    except UnionCAMError as e:
        result = {"status": f"error: {e}"}
    print(json.dumps(result))


if __name__ == "__main__":
    main()
