"""Per model: export time, the two graphs' sizes and op counts, and ONNX Runtime vs torch agreement.

    python benchmarks/export_report.py [--models efficientnet_lite0 vgg16 resnet50] [--size 224]

Writes benchmarks/results/<date>-<machine>-export_report.{json,md}. vgg16/resnet50 run with their
fixed-seed random weights (no pretrained weights are available offline); agreement is about the
graphs, not the weights.
"""
from __future__ import annotations

import argparse
import sys
import tempfile
import time
import warnings
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))
from common import machine, write_results  # noqa: E402


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--models", nargs="+", default=["efficientnet_lite0", "vgg16", "resnet50"])
    p.add_argument("--size", type=int, default=224)
    args = p.parse_args()

    import numpy as np

    from unioncam.export import export, graph_stats
    from unioncam.export.verify import gradient_agreement, masked_agreement
    from unioncam.image_io import read_rgb, sample_image_path, to_model_input
    from unioncam.models import load

    size = (args.size, args.size)
    photos = np.stack([to_model_input(read_rgb(sample_image_path(n)), size) for n in ("chelsea", "coffee")])
    rows = {}
    for name in args.models:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            model, layer = load(name)
        out = Path(tempfile.mkdtemp(prefix="uc-export-")) / name
        t = time.perf_counter()
        man = export(model, layer, out, input_size=size, model_name=name)
        export_s = time.perf_counter() - t
        classes = np.array([285, 967], np.int64)
        agree = gradient_agreement(model, layer, out, photos, classes)
        maps = np.random.default_rng(0).random((7, *man.feature_size), dtype=np.float32)
        agree["masked_scores_abs_M7"] = masked_agreement(model, out, photos[:1], maps, 285)
        rows[name] = {"layer": layer, "K": man.channels, "feature_size": list(man.feature_size), "export_s": export_s,
                      "export_split_s": man.extra["export_timings_s"],
                      "graphs": {f: graph_stats(out / f) for f in man.files}, "agreement": agree}
        print(name, rows[name]["export_s"], agree, flush=True)
    md = [f"# Export report ({args.size}x{args.size})\n",
          "| model | layer | K x h x w | export s | gradient.onnx MB / nodes | masked_forward.onnx MB / nodes | "
          "logits rel | activations rel | gradients rel (identical activations) | masked scores abs (M=7) |",
          "|---|---|---|---|---|---|---|---|---|---|"]
    for name, r in rows.items():
        g, m, a = r["graphs"]["gradient.onnx"], r["graphs"]["masked_forward.onnx"], r["agreement"]
        md.append(f"| {name} | {r['layer']} | {r['K']}x{r['feature_size'][0]}x{r['feature_size'][1]} | {r['export_s']:.1f} | "
                  f"{g['bytes'] / 1e6:.1f} / {g['nodes']} | {m['bytes'] / 1e6:.1f} / {m['nodes']} | {a['logits_rel']:.1e} | "
                  f"{a['activations_rel']:.1e} | {a['gradients_rel']:.1e} | {a['masked_scores_abs_M7']:.1e} |")
    md.append("\nvgg16 and resnet50 use fixed-seed random weights (no pretrained weights offline). Op counts per graph are in the JSON.\n")
    payload = {"benchmark": "export_report", "size": args.size, "machine": machine(), "results": rows}
    j, m = write_results("export_report", payload, "\n".join(md))
    print("\n".join(md))
    print(f"wrote {j} and {m}")


if __name__ == "__main__":
    main()
