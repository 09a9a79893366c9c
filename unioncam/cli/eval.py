"""``unioncam eval``: every method on every image; faithfulness metrics as CSV, Markdown and a grid PNG."""
from __future__ import annotations

import argparse
import csv
import io
import sys
from pathlib import Path

import cv2
import numpy as np

from .. import atomic
from ..classes import class_name
from ..errors import InvalidInputError, UnionCAMError
from ..image_io import overlay, read_rgb, to_model_input, write_image
from ..metrics import average_drop, average_increase, format_interval, insertion_deletion, mean_ci95
from ..outputs import collect_images, own_outputs
from ..ownership import claim
from ..progress import progress_bar
from ..registry import METHODS
from ..validation import check_steps
from .common import (add_model_options, as_usage_error, check_model_options, ensure_out, open_runtime,
                     resolve_model_spec)

#: What eval writes into --out.
OUTPUTS = ("metrics.csv", "metrics.md", "grid.png")

#: Side of a grid tile in pixels.
TILE = 160


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
    bar = np.full((22, img.shape[1], 3), 255, np.uint8)
    cv2.putText(bar, text[:28], (4, 16), cv2.FONT_HERSHEY_SIMPLEX, 0.45, (0, 0, 0), 1, cv2.LINE_AA)
    return np.vstack([bar, img])


def _tile(bgr: np.ndarray, side: int = TILE) -> np.ndarray:
    """``bgr`` fitted into a ``side`` x ``side`` tile, its aspect kept (white bars), as a thumbnail is."""
    h, w = bgr.shape[:2]
    scale = side / max(h, w)
    nh, nw = max(1, round(h * scale)), max(1, round(w * scale))
    tile = np.full((side, side, 3), 255, np.uint8)
    top, left = (side - nh) // 2, (side - nw) // 2
    tile[top:top + nh, left:left + nw] = cv2.resize(bgr, (nw, nh), interpolation=cv2.INTER_AREA)
    return tile


def run(args: argparse.Namespace) -> int:
    model_spec = resolve_model_spec(args)
    check_model_options(args, model_spec)  # before any image is read or model exported
    with as_usage_error("--steps"):
        check_steps(args.steps, model_spec.input_size)
    files = collect_images(args.paths)
    own = own_outputs(files)  # explain's overlays and our grids are not photos
    files = [f for f in files if Path(f) not in own]
    if not files:
        raise InvalidInputError("no image files found in the given paths")
    outputs = [args.out / name for name in OUTPUTS]
    claim(outputs, replace_user_files=args.replace_user_files)  # before any work
    ensure_out(args.out)
    rows, grid_rows, layer, failures = _evaluate(args, model_spec, files)
    if not rows:
        return 1
    claim(outputs, replace_user_files=args.replace_user_files)  # files the user put there while it ran
    text = io.StringIO()
    w = csv.DictWriter(text, fieldnames=list(rows[0]))
    w.writeheader()
    w.writerows(rows)
    atomic.write_text(args.out / "metrics.csv", text.getvalue(), own=True)
    write_image(args.out / "grid.png", np.vstack(grid_rows), own=True)
    lines = _summary(args, layer, rows, len(grid_rows))
    atomic.write_text(args.out / "metrics.md", "\n".join(lines), own=True)
    print("\n".join(lines))
    print(f"wrote {args.out / 'metrics.csv'}, {args.out / 'metrics.md'}, {args.out / 'grid.png'}")
    return 1 if failures else 0


def _evaluate(args: argparse.Namespace, model_spec, files) -> tuple[list, list, str | None, int]:
    """One image at a time: read, explain with every method from one set of passes, score, draw.
    (rows, grid rows, the layer, failures)."""
    ex = layer = progress = None
    rows, grid_rows, failures = [], [], 0
    for path in files:
        try:
            rgb = read_rgb(path, lenient=args.lenient)
        except UnionCAMError as e:
            print(f"unioncam: error: {e}", file=sys.stderr)
            failures += 1
            continue
        x = to_model_input(rgb, model_spec.input_size)[None]
        if ex is None:
            ex, layer = open_runtime(args, model_spec, batch_size=args.batch_size, theta=args.theta,
                                     max_passes=args.max_passes, precision=args.precision or "fp32",
                                     threads=args.threads)
            if not args.no_progress:
                progress = progress_bar(total=len(files) * len(args.methods), desc="eval", unit="map")
        tiles = []
        for method, exp in ex.explain_methods(x, args.methods).items():
            rows.append(_row(ex, path, x, method, exp, args.steps))
            tiles.append(_label(_tile(overlay(rgb, exp.cam[0])), method))
            if progress is not None:
                progress.update(1)
        grid_rows.append(np.hstack([_label(_tile(cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR)),
                                           f"{path.stem}: {class_name(rows[-1]['class_idx'])}")] + tiles))
    if progress is not None:
        progress.close()
    return rows, grid_rows, layer, failures


def _row(ex, path, x, method: str, exp, steps: int) -> dict:
    """One image's scores under one method: the class score with the map as a mask (Average
    Drop / Increase) and the insertion / deletion curves."""
    c = int(exp.class_idx[0])
    y = float(exp.score[0])
    o = float(ex.class_scores(x, exp.cam, [c])[0, 0])
    ins, dele = insertion_deletion(ex.probabilities, x[0], exp.cam[0], c, steps=steps)
    return {"image": str(path), "method": method, "class_idx": c, "class_name": class_name(c), "y": y, "o": o,
            "drop_pct": max(0.0, y - o) / y * 100.0, "increase": int(o > y), "insertion_auc": ins,
            "deletion_auc": dele, "time_ms": exp.timings_ms["total"]}


def _summary(args: argparse.Namespace, layer, rows: list[dict], n_images: int) -> list[str]:
    """metrics.md: each method's means with their 95% intervals."""
    def fmt(values):
        return format_interval(*mean_ci95(values))

    lines = [f"# unioncam eval: {args.model} ({layer}), {n_images} images, {args.steps} steps\n",
             "| method | Average Drop % (lower better) | Average Increase % (higher better) | insertion AUC (higher better) "
             "| deletion AUC (lower better) | median ms / map |", "|---|---|---|---|---|---|"]
    for method in args.methods:
        r = [row for row in rows if row["method"] == method]
        y = np.array([row["y"] for row in r])
        o = np.array([row["o"] for row in r])
        drop = format_interval(average_drop(y, o), mean_ci95([row["drop_pct"] for row in r])[1])
        lines.append(f"| {method} | {drop} | {format_interval(average_increase(y, o), None)} | "
                     f"{fmt([row['insertion_auc'] for row in r])} | {fmt([row['deletion_auc'] for row in r])} | "
                     f"{np.median([row['time_ms'] for row in r]):.0f} |")
    lines.append("\nmean ± half-width of a 95% t-interval over images (the half-width to 2 significant figures, the "
                 "mean to the same place; 3 significant figures without an interval). ms / map: what the method costs "
                 "alone; the methods share one gradient pass and one set of masked passes (Score-CAM's map is "
                 "UnionCAM's region map).\n")
    return lines
