"""What ``unioncam eval`` saves by running every method from one set of passes.

    python benchmarks/eval_shared_passes.py [--model efficientnet_lite0] [--rounds 3]

On each bundled photo, interleaved in one process: the five methods one after another
(``Explainer.__call__`` per method, as ``eval`` ran them before) against ``Explainer.explain_methods``
(one gradient pass, one set of masked passes). Medians over rounds; the maps are compared too.
Writes benchmarks/results/<date>-<machine>-eval_shared_passes.{json,md}.
"""
from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).parent))
from common import machine, write_results  # noqa: E402

METHODS = ["unioncam", "gradcam", "gradcampp", "xgradcam", "scorecam"]


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model", default="efficientnet_lite0")
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--threads", type=int, default=2)
    args = p.parse_args()

    from unioncam.export_cache import ModelRequest, exported
    from unioncam.image_io import read_rgb, sample_image_path, to_model_input
    from unioncam.model_specs import spec
    from unioncam.runtime import Explainer

    s = spec(args.model)
    directory, layer = exported(ModelRequest(args.model, s))
    ex = Explainer(directory, threads=args.threads)
    photos = {name: to_model_input(read_rgb(sample_image_path(name)), s.input_size)[None] for name in ("chelsea", "coffee")}
    ex(photos["chelsea"])  # warm-up
    alone_s, shared_s, max_diff = [], [], 0.0
    for _ in range(args.rounds):
        for x in photos.values():
            t = time.perf_counter()
            alone = {m: ex(x, method=m) for m in METHODS}
            alone_s.append(time.perf_counter() - t)
            t = time.perf_counter()
            shared = ex.explain_methods(x, METHODS)
            shared_s.append(time.perf_counter() - t)
            max_diff = max(max_diff, *(float(np.abs(alone[m].cam - shared[m].cam).max()) for m in METHODS))
    a, b = float(np.median(alone_s)), float(np.median(shared_s))
    payload = {"benchmark": "eval_shared_passes", "model": args.model, "layer": layer, "rounds": args.rounds,
               "threads": args.threads, "machine": machine(), "alone_s": alone_s, "shared_s": shared_s,
               "median_alone_s": a, "median_shared_s": b, "ratio": a / b, "max_abs_map_diff": max_diff}
    m = payload["machine"]
    md = (f"# eval: five methods one by one vs from one set of passes\n\n{args.model} ({layer}), {m['cpu']}, "
          f"{m['cores']} cores, {args.threads} threads; 2 bundled photos x {args.rounds} rounds, interleaved.\n\n"
          "| five methods | median s / photo |\n|---|---|\n"
          f"| one after another (`Explainer(x, method=m)`) | {a:.2f} |\n"
          f"| one set of passes (`Explainer.explain_methods`) | {b:.2f} |\n\n"
          f"{a / b:.2f}x; max |map difference| {max_diff:.1e}.\n")
    j, mdp = write_results("eval_shared_passes", payload, md)
    print(md)
    print(f"wrote {j} and {mdp}")


if __name__ == "__main__":
    main()
