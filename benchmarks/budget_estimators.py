"""Which channels get a pass under a budget, and how the rest are estimated: the candidates compared.

    python benchmarks/budget_estimators.py [--model efficientnet_lite0] [--budgets 32 48 64]

Exact channel scores are computed once per photo (runtime, every non-constant channel); each
candidate then chooses its channels and estimates the other scores offline, and its region map is
compared with the exact one (Pearson r and top-20% IoU of ``N(L_reg)``). Photos: scikit-image's and
matplotlib's, as is, mirrored and centre-cropped (as benchmarks/budgets.py). The package's choice,
``unioncam.algebra.budget`` (k-means medoids with sqrt-mass weights, 4 nearest neighbours), is the
row ``kmeans-sqrtmass+knn4``; ``mass+mean`` is the baseline issue 11 names. Writes
benchmarks/results/<date>-<machine>-budget_estimators.{json,md}.
"""
from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).parent))
from budgets import inputs, top_iou  # noqa: E402
from common import machine, write_results  # noqa: E402


def exact_scores(model_name: str, limit: int):
    from tqdm.auto import tqdm

    from unioncam import algebra, pipeline
    from unioncam.export import export
    from unioncam.model_specs import spec
    from unioncam.models import load
    from unioncam.runtime import Explainer

    size = spec(model_name).input_size
    names, X = inputs(size, limit)
    art = Path(tempfile.mkdtemp(prefix="uc-est-")) / "art"
    model, layer = load(model_name)
    export(model, layer, art, input_size=size, model_name=model_name)
    ex = Explainer(art)
    data = []
    for i in tqdm(range(len(X)), desc="exact scores", unit="photo"):
        gp = pipeline.run_gradient(ex.passes, X[i:i + 1], np.array([-1]))
        A, cls = gp.activations, gp.class_idx
        base = ex.black_probs[cls]
        cs = algebra.channel_scores(A, base, lambda idx, maps: pipeline.score_maps(ex.passes, X[i:i + 1], idx, maps, cls))
        data.append((A[0].astype(np.float64), cs.scores[0].astype(np.float64)))
    return names, size, layer, data


def knn(F, chosen, s, k=4):
    from unioncam.algebra.budget import estimate_scores

    return estimate_scores(F, chosen, s, neighbours=k)[0]


def farthest(F, weight, n, first):
    chosen = [first]
    dmin = ((F - F[first]) ** 2).sum(1)
    while len(chosen) < n:
        j = int(np.argmax(dmin * weight))
        chosen.append(j)
        dmin = np.minimum(dmin, ((F - F[j]) ** 2).sum(1))
    return np.array(chosen)


def candidates(A, s, n):
    """{name: estimated scores} for one photo, or None when the budget covers every channel."""
    from unioncam.algebra import constant_channels
    from unioncam.algebra.budget import choose_channels, mask_features

    run = np.flatnonzero(~np.asarray(constant_channels(A[None]))[0])
    if n >= run.size:
        return None
    F = mask_features(A[run])
    mass = np.abs(A[run]).sum((1, 2))
    out = {}
    top = np.argsort(-mass, kind="stable")[:n]
    rest = np.setdiff1d(np.arange(run.size), top)
    e = s.copy()
    e[run[rest]] = s[run[top]].mean()
    out["mass+mean (baseline)"] = e
    e = s.copy()
    e[run] = knn(F, top, s[run[top]])
    out["mass+knn4"] = e
    ch = farthest(F, np.ones(run.size), n, int(np.argmax(mass)))
    e = s.copy()
    e[run] = knn(F, ch, s[run[ch]])
    out["farthest+knn4"] = e
    ch = choose_channels(F, mass, n)
    for k in (1, 4, 8):
        e = s.copy()
        e[run] = knn(F, ch, s[run[ch]], k)
        out[f"kmeans-sqrtmass+knn{k}"] = e
    return out


def main() -> None:
    from unioncam import algebra

    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model", default="efficientnet_lite0")
    p.add_argument("--budgets", nargs="+", type=int, default=[32, 48, 64])
    p.add_argument("--photos", type=int, default=36)
    args = p.parse_args()
    names, size, layer, data = exact_scores(args.model, args.photos)
    region = lambda A, s: algebra.normalized(algebra.region_map(A[None], s[None]), size)[0]  # noqa: E731
    table = {}
    for n in args.budgets:
        for A, s in data:
            ref = region(A, s)
            for name, est in (candidates(A, s, n) or {}).items():
                R = region(A, est)
                table.setdefault(n, {}).setdefault(name, []).append(
                    (float(np.corrcoef(R.ravel(), ref.ravel())[0, 1]), top_iou(R, ref)))
    summary = {n: {name: {"median_r": float(np.median([v[0] for v in vals])), "min_r": float(min(v[0] for v in vals)),
                          "median_iou20": float(np.median([v[1] for v in vals])),
                          "min_iou20": float(min(v[1] for v in vals)), "photos": len(vals)}
                   for name, vals in rows.items()} for n, rows in table.items()}
    md = [f"# Budget estimators: region map vs exact, {args.model} ({layer}), {len(data)} photos\n",
          "| passes | candidate | Pearson r median / worst | top-20% IoU median / worst |", "|---|---|---|---|"]
    for n, rows in summary.items():
        for name, v in rows.items():
            md.append(f"| {n} | {name} | {v['median_r']:.4f} / {v['min_r']:.4f} | "
                      f"{v['median_iou20']:.3f} / {v['min_iou20']:.3f} |")
    text = "\n".join(md) + "\n"
    j, m = write_results("budget_estimators", {"benchmark": "budget_estimators", "model": args.model, "photos": names,
                                               "machine": machine(), "summary": summary}, text)
    print(text)
    print(f"wrote {j} and {m}")


if __name__ == "__main__":
    main()
