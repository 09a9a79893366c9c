"""How ``unioncam bench`` shows its results: a terminal table, Markdown, and ``--list``."""
from __future__ import annotations


def _f(v, fmt="{:.1f}"):
    return "-" if v is None else fmt.format(v)


#: Samples a percentile needs before it means more than the largest samples (trtexec's and MLPerf's
#: habit): p90 below 10 and p99 below 100 are marked with ``*``.
RELIABLE_FROM = {"p90_ms": 10, "p99_ms": 100}


def _pct(stage: dict, key: str) -> str:
    return _f(stage[key]) + ("*" if stage.get("n", 0) < RELIABLE_FROM.get(key, 0) else "")


def _options(c: dict) -> str:
    """A cell's ONNX Runtime session and CUDA provider options, 'default' where neither is set."""
    parts = [c.get(k) for k in ("ort_options", "provider_options") if c.get(k) not in (None, "default")]
    return ",".join(parts) or "default"


def _rows(report: dict) -> list[list[str]]:
    rows = []
    for c in report["cells"]:
        head = [c["backend"], c["device"], c["method"], _f(c["batch_size"], "{}"), _f(c["threads"], "{}"),
                _f(c.get("max_passes"), "{}") if c.get("max_passes") else "exact", c.get("precision") or "fp32",
                _options(c)]
        if c["status"] != "ok":
            rows.append(head + [c["status"]] + [""] * 11)
            continue
        t = c["stages"]["total"]
        m = c["stages"].get("masked")
        rows.append(head + ["ok", _f(t.get("n"), "{}"), _f(t["p50_ms"]), _pct(t, "p90_ms"), _pct(t, "p99_ms"),
                            _f(m["p50_ms"] if m else None),
                            _f(c["explanations_per_s"], "{:.2f}"), _f(c["gflops_per_s"]),
                            _f(c.get("ceiling_gflops_per_s"), "{:.0f}"),
                            _f(c["fraction_of_ceiling"] * 100 if c.get("fraction_of_ceiling") else None, "{:.0f}%"),
                            _f(c["peak_rss_mb"], "{:.0f}"), _f(c.get("peak_device_mb"), "{:.0f}")])
    return rows


HEADER = ["backend", "device", "method", "batch", "threads", "passes", "precision", "options", "status", "n",
          "total p50 ms", "p90 ms", "p99 ms", "masked p50 ms", "expl/s", "GFLOP/s", "ceiling GFLOP/s", "of ceiling",
          "peak RSS MB", "peak GPU MB"]


PERCENTILE_NOTE = ("n: timed explanations per cell; * a percentile from too few of them to mean more than the "
                   "slowest samples (p90 under 10, p99 under 100): raise --iterations or --duration")


def render_table(report: dict) -> str:
    rows = [HEADER] + _rows(report)
    widths = [max(len(r[i]) for r in rows) for i in range(len(HEADER))]
    lines = [f"unioncam bench: {report['model']} ({report['layer']}) on {report['machine']['cpu']}, "
             f"{report['machine']['cores']} cores; GEMM ceiling {_f(report['ceiling_gflops_per_s'])} GFLOP/s "
             "before the "
             "cells (each cell's own, measured just before it, in its row)"]
    for r in rows:
        lines.append("  ".join(v.ljust(w) for v, w in zip(r, widths)).rstrip())
    lines.append(PERCENTILE_NOTE)
    return "\n".join(lines)


def _gpu(gpu) -> str:
    if not gpu:
        return "none"
    return f"{gpu['name']} (compute capability {gpu['compute_capability']})" if isinstance(gpu, dict) else str(gpu)


def render_markdown(report: dict) -> str:
    m = report["machine"]
    lines = [f"# unioncam bench: {report['model']} ({report['layer']})", "",
             f"Machine: {m['cpu']}, {m['cores']} cores, GPU: {_gpu(m['gpu'])}; versions: "
             + ", ".join(f"{k} {v}" for k, v in m["versions"].items() if v) + ".",
             f"GEMM ceiling: {_f(report['ceiling_gflops_per_s'])} GFLOP/s before the cells; each cell's ceiling is "
             "measured just before it (sustained 1024^3 float32 GEMM, the faster of NumPy's BLAS and ONNX Runtime's "
             "MatMul, own process, the cell's thread count) and its fraction is taken against that.", "",
             "| " + " | ".join(HEADER) + " |", "|" + "---|" * len(HEADER)]
    lines += ["| " + " | ".join(r) + " |" for r in _rows(report)]
    lines += ["", PERCENTILE_NOTE]
    return "\n".join(lines) + "\n"


def print_list() -> None:
    """What this machine can run, and the command that enables each missing piece."""
    import os
    import platform

    from ..runtime.backends.tensorrt.engine_file import current_gpu

    print(f"CPU: {platform.machine()}, {os.cpu_count()} cores")
    try:
        import onnxruntime as ort

        print(f"onnxruntime {ort.__version__}: providers {', '.join(ort.get_available_providers())}")
        if "CUDAExecutionProvider" not in ort.get_available_providers():
            print("  for CUDA: pip uninstall -y onnxruntime && pip install onnxruntime-gpu  (exactly one of them)")
    except ImportError:
        print("onnxruntime: not installed (pip install onnxruntime)")
    try:
        from ..runtime.backends.tensorrt.engine_file import import_tensorrt

        trt, flavour = import_tensorrt()
        print(f"TensorRT: {flavour} {trt.__version__}" if trt else "TensorRT: not installed "
              "(pip install tensorrt on a CUDA machine; tensorrt-rtx-cu13 builds engines ahead of time)")
    except Exception as e:
        print(f"TensorRT: broken install ({e})")
    gpu = current_gpu()
    print(f"GPU: {gpu['name']} (compute capability {gpu['compute_capability']})" if gpu else
          "GPU: none found (or cuda-python missing: pip install cuda-python)")
    # torch's version from its metadata: importing torch to print one line took most of 12 s.
    from importlib import metadata

    try:
        version = metadata.version("torch")
        build = "CPU build" if "+cpu" in version else "CUDA build where the wheel is one (torch.cuda.is_available() tells)"
        print(f"torch {version}: {build}")
    except metadata.PackageNotFoundError:
        print("torch: not installed (needed for --model and --compare eager: pip install 'unioncam[torch]')")


def render_plot(report: dict, path) -> None:
    """PNG: each cell's total latency per iteration as a box (median, quartiles, whiskers, points)."""
    import io

    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from .. import atomic

    cells = [c for c in report["cells"] if c["status"] == "ok"]
    labels = [f"{c['backend']}/{c['device']}\n{c['method']} b{c['batch_size'] or '-'} t{c['threads'] or '-'}"
              + (f" n{c['max_passes']}" if c.get("max_passes") else "")
              + (f" {c['precision']}" if c.get("precision") not in (None, "fp32") else "")
              + (f"\n{c['ort_options']}" if c.get("ort_options") not in (None, "default") else "")
              for c in cells]
    fig, ax = plt.subplots(figsize=(max(4.0, 1.6 * len(cells)), 4.0))
    ax.boxplot([c["times_ms"] for c in cells], showfliers=True)
    ax.set_xticks(range(1, len(cells) + 1), labels, fontsize=8)
    ax.set_ylabel("explanation latency (ms)")
    ceiling = report["ceiling_gflops_per_s"]
    ax.set_title(f"unioncam bench: {report['model']} ({report['layer']}), {report['machine']['cpu']}"
                 + (f"; GEMM ceiling {ceiling:.0f} GFLOP/s" if ceiling else ""), fontsize=9)
    for i, c in enumerate(cells, start=1):
        if c.get("fraction_of_ceiling"):
            ax.annotate(f"{c['fraction_of_ceiling'] * 100:.0f}% of ceiling", (i, c["stages"]["total"]["max_ms"]),
                        textcoords="offset points", xytext=(0, 6), ha="center", fontsize=7)
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=120)
    plt.close(fig)
    atomic.write_bytes(path, buf.getvalue(), own=True)
