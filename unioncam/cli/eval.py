"""``unioncam eval``: every method on every image; faithfulness metrics as CSV, Markdown and a grid PNG."""
from __future__ import annotations

import argparse
import csv
import sys
import time
from pathlib import Path

import numpy as np

from ..errors import InvalidInputError, UnionCAMError
from ..registry import METHODS
from ..outputs import collect_images
from .common import add_model_options

def add_parser(sub) -> None:
    p = sub.add_parser(
        "eval",
        help="faithfulness of each method on images (Average Drop/Increase, insertion/deletion AUC)",
        description="Run each method on each image through the runtime and write OUT/metrics.csv (per image), "
        "OUT/metrics.md (means with 95% intervals) and OUT/grid.png (rows: images; columns: methods).",
    )
    p.add_argument("paths", nargs="+", type=Path, help="image files or folders of images")
    p.add_argument("--methods", nargs="+", default=list(METHODS), choices=METHODS, help="methods (default: all)")
    add_model_options(p, out_default="unioncam_eval")
    p.add_argument("--steps", type=int, default=32, help="insertion/deletion steps (default 32)")
    p.set_defaults(func=run, backend="onnxruntime", device="cpu", class_idx=None)


def _label(img: np.ndarray, text: str) -> np.ndarray:
    import cv2

    bar = np.full((22, img.shape[1], 3), 255, np.uint8)
    cv2.putText(bar, text[:28], (4, 16), cv2.FONT_HERSHEY_SIMPLEX, 0.45, (0, 0, 0), 1, cv2.LINE_AA)
    return np.vstack([bar, img])


def run(args: argparse.Namespace) -> int:
    from ..classes import class_name
    from ..metrics import average_drop, average_increase, insertion_deletion, mean_ci95
    import cv2

    from ..image_io import overlay, read_rgb, to_model_input, write_image
    from .common import check_model_options, ensure_out, open_runtime, resolve_model_spec

    model_spec = resolve_model_spec(args)
    check_model_options(args)  # before any image is read or model exported
    if args.steps < 1:
        raise InvalidInputError(f"--steps must be >= 1, got {args.steps}")
    files = collect_images(args.paths)
    if not files:
        raise InvalidInputError("no image files found in the given paths")
    ensure_out(args.out)
    images, failures = [], 0
    for f in files:
        try:
            rgb = read_rgb(f, lenient=args.lenient)
        except UnionCAMError as e:
            print(f"unioncam: error: {e}", file=sys.stderr)
            failures += 1
            continue
        images.append((f, rgb, to_model_input(rgb, model_spec.input_size)[None]))
    if not images:
        return 1
    ex, layer = open_runtime(args, model_spec, batch_size=args.batch_size, theta=args.theta, max_passes=args.max_passes,
                             precision=args.precision or "fp32")
    progress = None
    if not args.no_progress:
        from tqdm.auto import tqdm

        progress = tqdm(total=len(images) * len(args.methods), desc="eval", unit="map")
    rows, grid_rows = [], []
    for path, rgb, x in images:
        tiles = []
        for method in args.methods:
            t = time.perf_counter()
            exp = ex(x, method=method)
            elapsed = (time.perf_counter() - t) * 1e3
            c = int(exp.class_idx[0])
            y = float(exp.score[0])
            o = float(ex.class_scores(x, exp.cam, [c])[0, 0])
            ins, dele = insertion_deletion(ex.probabilities, x[0], exp.cam[0], c, steps=args.steps)
            rows.append({"image": str(path), "method": method, "class_idx": c, "class_name": class_name(c),
                         "y": y, "o": o, "drop_pct": max(0.0, y - o) / y * 100.0, "increase": int(o > y),
                         "insertion_auc": ins, "deletion_auc": dele, "time_ms": elapsed})
            tiles.append(_label(cv2.resize(overlay(rgb, exp.cam[0]), (160, 160)), method))
            if progress is not None:
                progress.update(1)
        grid_rows.append(np.hstack([_label(cv2.resize(cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR), (160, 160)),
                                           f"{path.stem}: {class_name(c)}")] + tiles))
    if progress is not None:
        progress.close()

    with open(args.out / "metrics.csv", "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=list(rows[0]))
        w.writeheader()
        w.writerows(rows)
    write_image(args.out / "grid.png", np.vstack(grid_rows))

    def fmt(values):
        m, h = mean_ci95(values)
        return f"{m:.3f}" if h is None else f"{m:.3f} ± {h:.3f}"

    lines = [f"# unioncam eval: {args.model} ({layer}), {len(images)} images, {args.steps} steps\n",
             "| method | Average Drop % (lower better) | Average Increase % (higher better) | insertion AUC (higher better) "
             "| deletion AUC (lower better) | median ms / map |", "|---|---|---|---|---|---|"]
    for method in args.methods:
        r = [row for row in rows if row["method"] == method]
        y = np.array([row["y"] for row in r])
        o = np.array([row["o"] for row in r])
        lines.append(f"| {method} | {average_drop(y, o):.2f} (± {mean_ci95([row['drop_pct'] for row in r])[1] or 0:.2f}) | "
                     f"{average_increase(y, o):.1f} | {fmt([row['insertion_auc'] for row in r])} | "
                     f"{fmt([row['deletion_auc'] for row in r])} | {np.median([row['time_ms'] for row in r]):.0f} |")
    lines.append("\n± is the half-width of a 95% t-interval over images (absent with one image).\n")
    (args.out / "metrics.md").write_text("\n".join(lines))
    print("\n".join(lines))
    print(f"wrote {args.out / 'metrics.csv'}, {args.out / 'metrics.md'}, {args.out / 'grid.png'}")
    return 1 if failures else 0
