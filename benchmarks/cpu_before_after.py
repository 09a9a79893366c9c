"""The CPU runtime before and after a change, side by side in one run (issue 24: "the CPU path must
not get slower"), and the cost of the one-shape padding.

    python benchmarks/cpu_before_after.py --before REV --after REV [--repeats 5]

Each revision's package is unpacked from git (``git archive``) and imported in its own subprocess,
alternately, on the same exported lite0 folder and the same two bundled photos; medians over the
repeats. The after revision is also timed with the one-shape discipline off (``passes.pad`` and
``passes.tail`` False: calls of any shape): the difference is that discipline's cost on the CPU.
"""
from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))
from common import machine, write_results  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]

CHILD = r"""
import json, sys, time, resource
# The checkout's editable install would shadow the unpacked revision: drop its finder.
sys.meta_path[:] = [f for f in sys.meta_path if "editable" not in repr(f).lower()]
sys.path.insert(0, sys.argv[1])
import numpy as np
import unioncam
from unioncam.image_io import read_rgb, sample_image_path, to_model_input
from unioncam.runtime import Explainer
art, mode, n = sys.argv[2], sys.argv[3], int(sys.argv[4])
x = [to_model_input(read_rgb(sample_image_path(p)), (224, 224))[None] for p in ("chelsea", "coffee")]
ex = Explainer(art)
if mode == "nopad":  # calls of any shape, as before the one-shape discipline
    ex.passes.pad = ex.passes.tail = False
ex(x[0])  # warm-up
times, cams = [], []
for i in range(n):
    t = time.perf_counter()
    out = ex(x[i % 2])
    times.append((time.perf_counter() - t) * 1e3)
    cams.append(out.cam[0])
print(json.dumps({"file": unioncam.__file__, "times_ms": times, "passes": int(out.stats["masked_passes"]),
                  "batch": int(out.stats.get("batch_size", 0)),
                  "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
                  "cam0": np.asarray(cams[0]).tolist()}))
"""


def unpack(rev: str, into: Path) -> Path:
    """The package of ``rev`` laid out as installed: unioncam/, with export/ and runtime/ inside it."""
    into.mkdir(parents=True)
    archive = subprocess.run(["git", "archive", rev, "unioncam", "export", "runtime"], cwd=ROOT, check=True,
                             capture_output=True).stdout
    subprocess.run(["tar", "-x", "-C", str(into)], input=archive, check=True)
    (into / "export").rename(into / "unioncam" / "export")
    (into / "runtime").rename(into / "unioncam" / "runtime")
    return into


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--before", default="8d3a744")
    ap.add_argument("--after", default="HEAD")
    ap.add_argument("--repeats", type=int, default=5, help="rounds; each round times every variant once")
    ap.add_argument("--per-round", type=int, default=4, help="explanations per variant per round")
    ap.add_argument("--artifacts", type=Path, help="an exported lite0 folder (default: export one now)")
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        art = args.artifacts
        if art is None:
            from unioncam.export import export
            from unioncam.models import load

            model, layer = load("efficientnet_lite0")
            art = tmp / "art"
            export(model, layer, art, input_size=(224, 224), model_name="efficientnet_lite0")
        roots = {"before": unpack(args.before, tmp / "before"), "after": unpack(args.after, tmp / "after")}
        variants = [("before", "pad"), ("after", "pad"), ("after", "nopad")]
        runs = {v: [] for v in variants}
        for _ in range(args.repeats):
            for v in variants:
                out = subprocess.run([sys.executable, "-c", CHILD, str(roots[v[0]]), str(art), v[1],
                                      str(args.per_round)], capture_output=True, text=True, check=True)
                runs[v].append(json.loads(out.stdout.strip().splitlines()[-1]))
    med = {v: statistics.median(t for r in rs for t in r["times_ms"]) for v, rs in runs.items()}
    rss = {v: max(r["peak_rss_mb"] for r in rs) for v, rs in runs.items()}
    import numpy as np

    diff = float(np.abs(np.array(runs[("before", "pad")][0]["cam0"]) - np.array(runs[("after", "pad")][0]["cam0"])).max())
    result = {
        "machine": machine(), "before": args.before, "after": args.after, "repeats": args.repeats,
        "per_round": args.per_round,
        "p50_ms": {"before": med[("before", "pad")], "after": med[("after", "pad")],
                   "after_without_padding": med[("after", "nopad")]},
        "peak_rss_mb": {"before": rss[("before", "pad")], "after": rss[("after", "pad")]},
        "after_over_before": med[("after", "pad")] / med[("before", "pad")],
        "padding_cost": med[("after", "pad")] / med[("after", "nopad")],
        "masked_passes_per_photo": runs[("after", "pad")][0]["passes"],
        "batch_size": runs[("after", "pad")][0]["batch"],
        "max_abs_map_diff_before_after": diff,
    }
    print(json.dumps(result, indent=2))
    p = result["p50_ms"]
    md = "\n".join([
        f"CPU runtime, efficientnet_lite0, two bundled photos alternately; {args.repeats} rounds x "
        f"{args.per_round} explanations per variant, interleaved; medians.", "",
        "| variant | p50 ms | peak RSS MB |", "|---|---|---|",
        f"| before ({args.before}) | {p['before']:.0f} | {rss[('before', 'pad')]:.0f} |",
        f"| after ({args.after}) | {p['after']:.0f} | {rss[('after', 'pad')]:.0f} |",
        f"| after, one-shape discipline off | {p['after_without_padding']:.0f} | {rss[('after', 'nopad')]:.0f} |",
        "", f"after / before: {result['after_over_before']:.3f}; the discipline's cost: {result['padding_cost']:.3f}x; "
        f"maps before vs after: max |diff| {diff:.2e}", ""])
    print(md)
    write_results("cpu-before-after", result, md)


if __name__ == "__main__":
    main()
