"""``unioncam explain``: heatmap PNG, map .npy and a JSON report per image."""
from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np

from ..errors import UnionCAMError
from ..validation import METHODS
from .common import require_layer, add_model_options, check_model_options, ensure_out, open_runtime, output_stems, resolve_model_spec

BACKENDS = ("onnxruntime", "tensorrt", "torch")
DEVICES = ("cpu", "cuda")


def add_parser(sub) -> None:
    p = sub.add_parser(
        "explain",
        help="explain images (default: a bundled photo of a cat)",
        description="Explain why the model predicts a class: writes OUT/<stem>.png (heatmap over the image), "
        "OUT/<stem>_cam.npy (float32 (H, W) map at the model's input resolution) and OUT/<stem>.json.",
    )
    p.add_argument("images", nargs="*", type=Path, help="image files (any format OpenCV reads); default: bundled chelsea.png")
    add_model_options(p, out_default="unioncam_out")
    p.add_argument("--class", dest="class_idx", type=int, help="class to explain (default: the predicted class)")
    p.add_argument("--backend", choices=BACKENDS, default="onnxruntime",
                   help="onnxruntime (default; exports the model into the cache on first use), tensorrt, "
                        "or torch (the eager reference)")
    p.add_argument("--device", choices=DEVICES, default="cpu", help="cpu (default) or cuda")
    p.add_argument("--method", choices=METHODS, default="unioncam",
                   help="unioncam (default) or a baseline: gradcam, gradcampp, xgradcam, scorecam")
    p.set_defaults(func=run)


def _top5(logits: np.ndarray, names) -> list[dict]:
    z = logits.astype(np.float64)
    p = np.exp(z - z.max())
    p /= p.sum()
    order = np.argsort(-p)[:5]
    return [{"index": int(i), "name": names(int(i)), "probability": float(p[i])} for i in order]


def _explainer(args, model_spec):
    """(explain(x (1,3,H,W) float32) -> Explanation, layer name), for the chosen backend."""
    if args.backend == "torch":
        import torch

        from .. import UnionCAM
        from ..errors import BackendUnavailableError
        from ..models import load

        if args.device == "cuda" and not torch.cuda.is_available():
            raise BackendUnavailableError(
                f"--device cuda needs a CUDA build of torch and a GPU; this is torch {torch.__version__} with no "
                "CUDA device. Use --device cpu here.")
        model, default_layer = load(args.model, args.weights)
        device = torch.device(args.device)
        model.to(device)
        layer = require_layer(args.layer or default_layer, args.model)
        if args.method == "unioncam":
            explainer = UnionCAM(model, layer, theta=args.theta, batch_size=args.batch_size or 64,
                                 max_passes=args.max_passes, progress=not args.no_progress)
        else:
            from ..methods import METHOD_CLASSES

            budget = {"max_passes": args.max_passes} if args.method == "scorecam" else {}
            explainer = METHOD_CLASSES[args.method](model, layer, batch_size=args.batch_size or 64,
                                                    progress=not args.no_progress, **budget)
        return (lambda x: explainer(torch.from_numpy(x).to(device), args.class_idx)), layer

    runtime, layer = open_runtime(args, model_spec, backend=args.backend, device=args.device,
                                  batch_size=args.batch_size, theta=args.theta, progress=not args.no_progress,
                                  max_passes=args.max_passes,
                                  method=args.method)
    return (lambda x: runtime(x, args.class_idx)), layer


def run(args: argparse.Namespace) -> int:
    from ..image_io import overlay, read_rgb, sample_image_path, to_model_input, write_image
    from ..classes import class_name

    images = args.images or [sample_image_path("chelsea")]
    model_spec = resolve_model_spec(args)
    check_model_options(args)  # before any image is read or model exported
    ensure_out(args.out)
    # Read every image first: a bad file is reported without loading (or exporting) the model,
    # and the good ones are still explained.
    failures = 0
    inputs = []
    stems = output_stems([Path(p) for p in images], args.out)
    for path, stem in zip(images, stems):
        t_read = time.perf_counter()
        try:
            rgb = read_rgb(path)
            x = to_model_input(rgb, model_spec.input_size)[None]
        except Exception as e:  # one image never stops the others, whatever its fault
            print(f"unioncam: error: {path}: {e}" if not isinstance(e, UnionCAMError) else f"unioncam: error: {e}",
                  file=sys.stderr)
            failures += 1
            continue
        inputs.append((path, stem, rgb, x, (time.perf_counter() - t_read) * 1e3))
    if not inputs:
        return 1
    t_load = time.perf_counter()
    explain, layer = _explainer(args, model_spec)
    load_ms = (time.perf_counter() - t_load) * 1e3

    for path, stem, rgb, x, read_ms in inputs:
        try:
            exp = explain(x)
            report = _report(args, model_spec, layer, path, rgb, exp, load_ms, read_ms, class_name)
            _write_outputs(args.out, stem, rgb, exp.cam[0], report, overlay, write_image)
        except UnionCAMError as e:
            print(f"unioncam: error: {path}: {e}", file=sys.stderr)
            failures += 1
            continue
        except OSError as e:
            print(f"unioncam: error: {path}: cannot write its outputs into {args.out}: {e.strerror or e}", file=sys.stderr)
            failures += 1
            continue
        except Exception as e:  # one image never stops the others; --debug shows the traceback
            if getattr(args, "debug", False):
                raise
            print(f"unioncam: error: {path}: internal error {type(e).__name__}: {e} (rerun with --debug for a "
                  "traceback and report it)", file=sys.stderr)
            failures += 1
            continue
        print(
            f"{path}: {report['class_name']} (class {report['class_idx']}, p={report['score']:.3f}), "
            f"selected {report['selected']}, {exp.timings_ms['total'] / 1e3:.1f} s -> {args.out / (stem + '.png')}"
        )
        load_ms = 0.0
    return 1 if failures else 0


def _report(args, model_spec, layer, path, rgb, exp, load_ms, read_ms, class_name) -> dict:
    e0 = exp[0]
    num_classes = exp.logits.shape[1]
    return {
        "image": str(path),
        "image_size": [int(rgb.shape[0]), int(rgb.shape[1])],
        "input_size": list(model_spec.input_size),
        "model": args.model,
        "method": args.method,
        "weights": (f"exported folder {args.artifacts}" if getattr(args, "artifacts", None) else str(args.weights)
                    if args.weights else ("bundled ImageNet" if model_spec.bundled_weights else "random (untrained)")),
        "layer": layer,
        "theta": args.theta,
        "max_passes": args.max_passes,
        "class_idx": e0["class_idx"],
        "class_name": class_name(e0["class_idx"], num_classes),
        "score": e0["score"],
        "top5": _top5(exp.logits[0], lambda i: class_name(i, num_classes)),
        "selected": e0["selected"],
        "beta_denoising": e0["beta_denoising"],
        "beta_region": e0["beta_region"],
        "beta_de_region": e0["beta_de_region"],
        "backend": args.backend,
        "device": args.device,
        "stats": exp.stats,
        "timings_ms": {"load": load_ms, "read": read_ms, **exp.timings_ms},
    }


def _write_outputs(out: Path, stem: str, rgb, cam, report: dict, overlay, write_image) -> None:
    """The three outputs of one image, each written atomically; the JSON last, so a report on disk
    means its map and heatmap are complete."""
    import io

    from .. import atomic

    cam = np.asarray(cam, dtype=np.float32)
    if not (np.isfinite(cam).all() and cam.min() >= 0.0 and cam.max() <= 1.0):
        raise UnionCAMError(f"the map is not finite in [0, 1] (range {cam.min()}..{cam.max()}); nothing written")
    buf = io.BytesIO()
    np.save(buf, cam)
    atomic.write_bytes(out / f"{stem}_cam.npy", buf.getvalue())
    write_image(out / f"{stem}.png", overlay(rgb, cam))
    atomic.write_text(out / f"{stem}.json", json.dumps(report, indent=2))
