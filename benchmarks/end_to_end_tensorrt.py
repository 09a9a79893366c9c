"""Records TensorRT's parse and build of the real ``unioncam.onnx`` (efficientnet_lite0, default chunk).

    python benchmarks/end_to_end_tensorrt.py [--compute-capability SM86]

With TensorRT-RTX (``pip install 'unioncam[tensorrt]'``) the engine is built ahead of time for the
given compute capability, no GPU needed; with standard TensorRT, for the local GPU. Writes
benchmarks/results/<date>-<machine>-e2e-tensorrt.{json,md}.
"""
from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))
from common import machine, write_results  # noqa: E402


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--compute-capability", default="SM86")
    args = p.parse_args()

    from unioncam.runtime.backends.tensorrt.engine_file import import_tensorrt
    from unioncam.export.end_to_end import export_end_to_end
    from unioncam.runtime.backends.tensorrt.builder import parse_check
    from unioncam.models import load

    trt, flavour = import_tensorrt()
    if trt is None:
        raise SystemExit("no TensorRT module: pip install 'unioncam[tensorrt]'")
    model, layer = load("efficientnet_lite0")
    info = export_end_to_end(model, layer, Path(tempfile.mkdtemp(prefix="uc-trt-")) / "e2e")
    t = time.perf_counter()
    summary = parse_check(info["path"], compute_capability=args.compute_capability)
    seconds = time.perf_counter() - t
    ops = info["ops"]
    lines = ["# TensorRT parse and build of `unioncam.onnx` (efficientnet_lite0, layer head, 224x224)\n",
             f"Graph: {info['bytes'] / 1e6:.1f} MB, {info['nodes']} nodes (Loop: {ops.get('Loop', 0)}, "
             f"ScatterElements: {ops.get('ScatterElements', 0)}, CumSum: {ops.get('CumSum', 0)}), chunk {info['chunk']}, "
             f"sha256 {info['sha256'][:16]}.\n",
             f"{flavour} {trt.__version__}, compute capability {args.compute_capability}, ahead of time on a "
             f"machine without a GPU: {summary} ({seconds:.0f} s including parsing).\n",
             "Not run: executing the engine needs a GPU, which this machine does not have.\n"]
    payload = {"benchmark": "e2e_tensorrt", "machine": machine(), "tensorrt": f"{flavour} {trt.__version__}",
               "compute_capability": args.compute_capability, "summary": summary, "seconds": seconds,
               "graph": {k: v for k, v in info.items() if k != "ops"}, "ops": ops}
    j, m = write_results("e2e-tensorrt", payload, "\n".join(lines))
    print("\n".join(lines))
    print(f"wrote {j} and {m}")


if __name__ == "__main__":
    main()
