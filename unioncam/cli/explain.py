"""``unioncam explain``: heatmap PNG, map .npy and a JSON report per image."""
from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

import numpy as np

from ..errors import UnionCAMError
from ..image_io import overlay, read_rgb, sample_image_path, to_model_input, write_image

BACKENDS = ("torch",)


def add_parser(sub) -> None:
    p = sub.add_parser(
        "explain",
        help="explain images (default: a bundled photo of a cat)",
        description="Explain why the model predicts a class: writes OUT/<stem>.png (heatmap over the image), "
        "OUT/<stem>_cam.npy (float32 (H, W) map at the model's input resolution) and OUT/<stem>.json.",
    )
    p.add_argument("images", nargs="*", type=Path, help="image files (any format OpenCV reads); default: bundled chelsea.png")
    p.add_argument("--model", default="efficientnet_lite0", help="registered model name (default: efficientnet_lite0)")
    p.add_argument("--weights", type=Path, help="checkpoint file (torchvision state_dict for vgg16/resnet50)")
    p.add_argument("--layer", help="target layer, dotted module name (default: the model's documented default)")
    p.add_argument("--class", dest="class_idx", type=int, help="class to explain (default: the predicted class)")
    p.add_argument("--theta", type=float, default=10.0, help="AMD percentile threshold in [0, 100] (default 10)")
    p.add_argument("--out", type=Path, default=Path("unioncam_out"), help="output folder (default ./unioncam_out)")
    p.add_argument("--batch-size", type=int, default=64, help="masked forward passes per batch (default 64)")
    p.add_argument("--backend", choices=BACKENDS, default="torch", help="execution backend (default: torch)")
    p.add_argument("--no-progress", action="store_true", help="hide the progress bar")
    p.set_defaults(func=run)


def _top5(logits: np.ndarray, names) -> list[dict]:
    z = logits.astype(np.float64)
    p = np.exp(z - z.max())
    p /= p.sum()
    order = np.argsort(-p)[:5]
    return [{"index": int(i), "name": names(int(i)), "probability": float(p[i])} for i in order]


def _ensure_out(out: Path) -> None:
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise UnionCAMError(f"cannot create output folder {out}: {e.strerror}") from None
    if not os.access(out, os.W_OK):
        raise UnionCAMError(f"output folder {out} is not writable; choose another with --out")


def run(args: argparse.Namespace) -> int:
    import torch

    from .. import UnionCAM
    from ..classes import class_name
    from ..models import load, spec

    images = args.images or [sample_image_path("chelsea")]
    model_spec = spec(args.model)
    _ensure_out(args.out)
    t_load = time.perf_counter()
    model, default_layer = load(args.model, args.weights)
    layer = args.layer or default_layer
    explainer = UnionCAM(model, layer, theta=args.theta, batch_size=args.batch_size, progress=not args.no_progress)
    load_ms = (time.perf_counter() - t_load) * 1e3

    failures = 0
    for path in images:
        try:
            t_read = time.perf_counter()
            rgb = read_rgb(path)
            x = torch.from_numpy(to_model_input(rgb, model_spec.input_size))[None]
            read_ms = (time.perf_counter() - t_read) * 1e3
            exp = explainer(x, args.class_idx)
        except UnionCAMError as e:
            print(f"unioncam: error: {path}: {e}", file=sys.stderr)
            failures += 1
            continue
        e0 = exp[0]
        stem = Path(path).stem
        np.save(args.out / f"{stem}_cam.npy", exp.cam[0].astype(np.float32))
        write_image(args.out / f"{stem}.png", overlay(rgb, exp.cam[0]))
        report = {
            "image": str(path),
            "image_size": [int(rgb.shape[0]), int(rgb.shape[1])],
            "input_size": list(model_spec.input_size),
            "model": args.model,
            "weights": str(args.weights) if args.weights else ("bundled ImageNet" if model_spec.bundled_weights else "random (untrained)"),
            "layer": layer,
            "theta": explainer.theta,
            "class_idx": e0["class_idx"],
            "class_name": class_name(e0["class_idx"], exp.logits.shape[1]),
            "score": e0["score"],
            "top5": _top5(exp.logits[0], lambda i: class_name(i, exp.logits.shape[1])),
            "selected": e0["selected"],
            "beta_denoising": e0["beta_denoising"],
            "beta_region": e0["beta_region"],
            "beta_de_region": e0["beta_de_region"],
            "backend": args.backend,
            "device": "cpu",
            "stats": exp.stats,
            "timings_ms": {"load": load_ms, "read": read_ms, **exp.timings_ms},
        }
        (args.out / f"{stem}.json").write_text(json.dumps(report, indent=2))
        print(
            f"{path}: {report['class_name']} (class {report['class_idx']}, p={report['score']:.3f}), "
            f"selected {report['selected']}, {exp.timings_ms['total'] / 1e3:.1f} s -> {args.out / (stem + '.png')}"
        )
        load_ms = 0.0
    return 1 if failures else 0
