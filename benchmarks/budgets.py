"""Fidelity and speed of latency budgets (``max_passes``) against exact UnionCAM, on real photos.

    python benchmarks/budgets.py [--models efficientnet_lite0 efficientnet_lite1 efficientnet_lite2]
                                 [--budgets 16 32 64 128] [--precisions fp16 int8] [--photos 36] [--steps 16]
                                 [--tag NAME]

A factory model works too, its layer and reshape found as the CLI finds them: the vision
transformer table is ``--models hybrid_vit:build --budgets 32 64 --precisions --tag vit`` with
examples/ on PYTHONPATH.

Photos: scikit-image's and matplotlib's (benchmarks/faithfulness.py), each as is, mirrored and
centre-cropped (3/4 of each side). For every photo and model the exact explanation and each budget
run in this one process, one after the other on the same input, so the time ratios compare like
with like. Against the exact map of the same photo: Pearson and Spearman r of the final map and of
the region map, top-20% IoU, max |delta beta|, same selection, and the change in Average Drop and
insertion/deletion AUC. Writes benchmarks/results/<date>-<machine>-budgets.{json,md,png}.
"""
from __future__ import annotations

import argparse
import shutil
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).parent))
from common import machine, write_results  # noqa: E402
from faithfulness import photos  # noqa: E402


def inputs(size, limit: int) -> tuple[list[str], np.ndarray]:
    from unioncam.image_io import read_rgb, to_model_input

    tmp = Path(tempfile.mkdtemp(prefix="uc-budget-"))
    names, xs = [], []
    for f in photos(tmp):
        rgb = read_rgb(f)
        h, w = rgb.shape[:2]
        crop = np.ascontiguousarray(rgb[h // 8: h - h // 8, w // 8: w - w // 8])
        for tag, img in (("", rgb), ("flip", np.ascontiguousarray(rgb[:, ::-1])), ("crop", crop)):
            names.append(f.stem + (f"-{tag}" if tag else ""))
            xs.append(to_model_input(img, size))
    shutil.rmtree(tmp, ignore_errors=True)
    order = sorted(range(len(names)), key=lambda i: ("-crop" in names[i], "-flip" in names[i]))  # originals first
    keep = order[:limit]
    return [names[i] for i in keep], np.stack([xs[i] for i in keep])


def top_iou(a: np.ndarray, b: np.ndarray, q: float = 0.8) -> float:
    ma, mb = a >= np.quantile(a, q), b >= np.quantile(b, q)
    return float((ma & mb).sum() / max((ma | mb).sum(), 1))


def compare(exp, ref) -> dict:
    from scipy.stats import spearmanr

    cam, rcam = exp.cam[0].ravel(), ref.cam[0].ravel()
    betas = lambda e: np.array([e.beta_denoising[0], e.beta_region[0], e.beta_de_region[0]])  # noqa: E731
    return {"pearson_cam": float(np.corrcoef(cam, rcam)[0, 1]),
            "spearman_cam": float(spearmanr(cam[::7], rcam[::7]).statistic),
            "pearson_region": float(np.corrcoef(exp.region[0].ravel(), ref.region[0].ravel())[0, 1]),
            "iou20_cam": top_iou(exp.cam[0], ref.cam[0]),
            "max_abs_dbeta": float(np.abs(betas(exp) - betas(ref)).max()),
            "same_selection": exp.selected[0] == ref.selected[0]}


def faithfulness(ex, x, exp, steps: int) -> dict:
    from unioncam.metrics import insertion_deletion

    c = int(exp.class_idx[0])
    o = float(ex.class_scores(x, exp.cam, [c])[0, 0])
    y = float(exp.score[0])
    ins, dele = insertion_deletion(ex.probabilities, x[0], exp.cam[0], c, steps=steps)
    return {"drop_pct": max(0.0, y - o) / y * 100.0, "insertion_auc": ins, "deletion_auc": dele}


def label(mode) -> str:
    n, precision = mode
    return f"{n} passes" if n else ("exact" if precision == "fp32" else precision)


def run_model(model_name: str, budgets: list[int], precisions: list[str], limit: int, steps: int,
              threads: int) -> dict:
    from tqdm.auto import tqdm

    from unioncam.export import export
    from unioncam.model_specs import spec
    from unioncam.models import load
    from unioncam.runtime import Explainer

    size = spec(model_name).input_size
    names, X = inputs(size, limit)
    art = Path(tempfile.mkdtemp(prefix="uc-budget-art-")) / "art"
    model, layer = load(model_name)
    from unioncam.export_cache import choose_layer

    layer, reshape = choose_layer(layer, model_name, model, size)  # a factory's: found as the CLI finds it
    export(model, layer, art, input_size=size, model_name=model_name, reshape=reshape)
    del model
    from unioncam.export import add_precision

    for precision in precisions:  # int8 calibrates on the two bundled photos (also among the 36 here)
        add_precision(art, precision)
    modes = [(None, "fp32")] + [(n, "fp32") for n in budgets] + [(None, p) for p in precisions]
    exs = {m: Explainer(art, threads=threads, max_passes=m[0], precision=m[1]) for m in modes}
    for ex in exs.values():
        ex(X[:1])  # warm-up: first-call allocations are no mode's cost
    exact_mode = modes[0]
    rows = []
    for i in tqdm(range(len(X)), desc=model_name, unit="photo"):
        x = X[i:i + 1]
        ref, t_ref = None, None
        for mode in modes:
            t = time.perf_counter()
            exp = exs[mode](x)
            elapsed = time.perf_counter() - t
            row = {"photo": names[i], "max_passes": mode[0], "precision": mode[1], "mode": label(mode), "time_s": elapsed,
                   "region_passes": exp.stats["masked_passes"] - 3, **faithfulness(exs[exact_mode], x, exp, steps)}
            if mode == exact_mode:
                ref, t_ref = exp, elapsed
                row.update(pearson_cam=1.0, spearman_cam=1.0, pearson_region=1.0, iou20_cam=1.0, max_abs_dbeta=0.0,
                           same_selection=True, speedup=1.0, error_bound=0.0, error_estimate=0.0, region_max_abs=0.0)
            else:
                row.update(compare(exp, ref))
                row.update(speedup=t_ref / elapsed,
                           error_bound=exp.stats["region_error_bound"][0] if mode[0] else 0.0,
                           error_estimate=exp.stats["region_error_estimate"][0] if mode[0] else 0.0,
                           region_max_abs=float(np.abs(exp.region - ref.region).max()))
            rows.append(row)
    shutil.rmtree(art.parent, ignore_errors=True)
    return {"model": model_name, "layer": layer, "photos": names, "rows": rows}


def summarise(result: dict) -> list[dict]:
    rows = result["rows"]
    exact = {r["photo"]: r for r in rows if r["mode"] == "exact"}
    out = []
    for mode in dict.fromkeys(r["mode"] for r in rows):
        rs = [r for r in rows if r["mode"] == mode]
        # None (no relative error: the approximate region map is all zero) and NaN (r of a constant
        # map) are left out of the medians and counted instead.
        col = lambda k: np.array([np.nan if r[k] is None else r[k] for r in rs], dtype=np.float64)  # noqa: E731
        exact_passes = np.array([exact[r["photo"]]["region_passes"] for r in rs], np.float64)
        d = lambda k: float(np.mean(col(k)) - np.mean([exact[r["photo"]][k] for r in rs]))  # noqa: E731
        bound_ok = [r["region_max_abs"] <= r["error_bound"] + 1e-6 for r in rs if r["error_bound"] is not None]
        out.append({
            "mode": mode, "max_passes": rs[0]["max_passes"], "precision": rs[0]["precision"], "photos": len(rs),
            "median_region_passes": float(np.median(col("region_passes"))),
            "median_pass_reduction": float(np.median(exact_passes / np.maximum(col("region_passes"), 1))),
            "median_pearson_cam": float(np.median(col("pearson_cam"))), "min_pearson_cam": float(col("pearson_cam").min()),
            "median_spearman_cam": float(np.median(col("spearman_cam"))),
            "median_pearson_region": float(np.nanmedian(col("pearson_region"))) if np.isfinite(col("pearson_region")).any() else float("nan"),
            "constant_region_maps": int(np.isnan(col("pearson_region")).sum()),
            "median_iou20_cam": float(np.median(col("iou20_cam"))), "min_iou20_cam": float(col("iou20_cam").min()),
            "median_abs_dbeta": float(np.median(col("max_abs_dbeta"))),
            "same_selection_pct": float(np.mean(col("same_selection")) * 100),
            "d_average_drop_pct": d("drop_pct"), "d_insertion_auc": d("insertion_auc"),
            "d_deletion_auc": d("deletion_auc"),
            "median_time_s": float(np.median(col("time_s"))), "median_speedup": float(np.median(col("speedup"))),
            "median_error_estimate": float(np.nanmedian(col("error_estimate"))) if np.isfinite(col("error_estimate")).any() else float("nan"),
            "median_error_bound": float(np.median([r["error_bound"] for r in rs if r["error_bound"] is not None] or [0])),
            "bound_held_pct": float(np.mean(bound_ok) * 100) if bound_ok else 100.0,
        })
    return out


def markdown(payload: dict) -> str:
    m = payload["machine"]
    lines = [f"# Latency budgets: fidelity against exact UnionCAM, {m['cores']} cores, no GPU\n",
             f"{m['cpu']}; onnxruntime {m['versions'].get('onnxruntime')}; {payload['threads']} threads; runtime "
             f"(ONNX Runtime CPU), one process, exact and each budget on the same photo one after the other. "
             f"Insertion/deletion with {payload['steps']} steps. r, IoU: final map vs the exact final map.\n"]
    for res in payload["results"]:
        lines += [f"\n## {res['model']} ({res['layer']}), {len(res['photos'])} photos\n",
                  "| mode | region passes (median) | fewer passes | Pearson r median / worst | Spearman r | "
                  "region r (constant) | top-20% IoU median / worst | |dbeta| | same selection | d AD % | d ins AUC | d del AUC | "
                  "s / photo | speed-up | error estimate / bound (median) |",
                  "|" + "---|" * 15]
        for s in res["summary"]:
            lines.append(
                f"| {s['mode']} | {s['median_region_passes']:.0f} | {s['median_pass_reduction']:.1f}x | "
                f"{s['median_pearson_cam']:.4f} / {s['min_pearson_cam']:.4f} | {s['median_spearman_cam']:.4f} | "
                f"{s['median_pearson_region']:.4f} ({s.get('constant_region_maps', 0)}) | {s['median_iou20_cam']:.3f} / {s['min_iou20_cam']:.3f} | "
                f"{s['median_abs_dbeta']:.4f} | {s['same_selection_pct']:.0f}% | {s['d_average_drop_pct']:+.2f} | "
                f"{s['d_insertion_auc']:+.4f} | {s['d_deletion_auc']:+.4f} | {s['median_time_s']:.2f} | "
                f"{s['median_speedup']:.1f}x | {s['median_error_estimate']:.3f} / {s['median_error_bound']:.2f} |")
    return "\n".join(lines) + "\n"


def plot(payload: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(11, 4))
    for res in payload["results"]:
        sb = [r for r in res["summary"] if r["max_passes"]]
        sp = [r for r in res["summary"] if not r["max_passes"] and r["mode"] != "exact"]
        for ax, key in ((axes[0], "median_pearson_cam"), (axes[1], "median_iou20_cam")):
            line, = ax.plot([r["median_speedup"] for r in sb], [r[key] for r in sb], "o-", label=res["model"])
            ax.plot([r["median_speedup"] for r in sp], [r[key] for r in sp], "s", color=line.get_color())
            for r in sb + sp:
                ax.annotate(str(r["max_passes"] or r["precision"]), (r["median_speedup"], r[key]), fontsize=7)
    axes[0].set_ylabel("median Pearson r vs exact map")
    axes[1].set_ylabel("median top-20% IoU vs exact map")
    for ax in axes:
        ax.set_xlabel("median speed-up over exact (same photo, same run)")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    fig.suptitle("UnionCAM latency budgets (labels: max passes, or the channel passes' precision)")
    fig.tight_layout()
    fig.savefig(path, dpi=110)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--models", nargs="+", default=["efficientnet_lite0", "efficientnet_lite1", "efficientnet_lite2"])
    p.add_argument("--budgets", nargs="+", type=int, default=[16, 32, 64, 128])
    p.add_argument("--precisions", nargs="*", default=["fp16", "int8"])
    p.add_argument("--precisions-on", nargs="*", help="models that get the precision sweep (default: all)")
    p.add_argument("--photos", type=int, default=36)
    p.add_argument("--steps", type=int, default=16)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--tag", help="results file name suffix (budgets-TAG)")
    args = p.parse_args()
    results = []
    for name in args.models:
        precisions = args.precisions if args.precisions_on is None or name in args.precisions_on else []
        res = run_model(name, args.budgets, precisions, args.photos, args.steps, args.threads)
        res["summary"] = summarise(res)
        results.append(res)
    payload = {"benchmark": "budgets", "budgets": args.budgets, "precisions": args.precisions, "steps": args.steps, "threads": args.threads,
               "machine": machine(), "results": results}
    md = markdown(payload)
    j, m = write_results(f"budgets-{args.tag}" if args.tag else "budgets", payload, md)
    plot(payload, m.with_suffix(".png"))
    print(md)
    print(f"wrote {j}, {m} and {m.with_suffix('.png')}")


if __name__ == "__main__":
    main()
