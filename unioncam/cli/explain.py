"""``unioncam explain``: heatmap PNG, map .npy and a JSON report per image."""
from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path


from ..errors import UnionCAMError, UsageError
from ..registry import METHODS, method_info
from ..runtime.backends import BACKENDS, devices
from ..outputs import collect_images, output_stems, report, write_outputs
from .common import (add_model_options, check_model_options, ensure_out, open_runtime, positive_int, require_layer,
                     resolve_model_spec)

#: From this many images on, ``explain`` runs on Ray when Ray is installed (README, "Whole data sets").
RAY_THRESHOLD = 256


def ray_available() -> bool:
    import importlib.util

    return importlib.util.find_spec("ray") is not None


def add_parser(sub) -> None:
    p = sub.add_parser(
        "explain",
        help="explain images (default: a bundled photo of a cat)",
        description="Explain why the model predicts a class: writes OUT/<stem>.png (heatmap over the image), "
        "OUT/<stem>_cam.npy (float32 (H, W) map at the model's input resolution) and OUT/<stem>.json.",
    )
    p.add_argument("images", nargs="*", type=Path,
                   help="image files (any format OpenCV reads), folders, or quoted globs; default: bundled chelsea.png")
    add_model_options(p, out_default="unioncam_out")
    p.add_argument("--class", dest="class_idx", type=int, help="class to explain (default: the predicted class)")
    p.add_argument("--backend", choices=list(BACKENDS), default="onnxruntime",
                   help="onnxruntime (default; exports the model into the cache on first use), tensorrt, "
                        "or torch (the eager reference)")
    p.add_argument("--device", choices=devices(), default="cpu",
                   help="cpu (default), cuda, or tensorrt (ONNX Runtime's TensorRT provider)")
    p.add_argument("--method", choices=METHODS, default="unioncam",
                   help="unioncam (default) or a baseline: gradcam, gradcampp, xgradcam, scorecam")
    ray = p.add_argument_group("whole data sets on Ray (pip install \"unioncam[ray]\"); used from "
                               f"{RAY_THRESHOLD} images on when Ray is installed, or with these options")
    ray.add_argument("--workers", type=positive_int, help="explainer actors (default: one per 2 cores, at least 1)")
    ray.add_argument("--ray-address", help="join a cluster: auto, ray://HOST:10001 or HOST:6379 (default: start a "
                                           "local Ray on this machine)")
    ray.add_argument("--gpus-per-worker", type=float, default=None,
                     help="GPUs each actor reserves with --device cuda (default 1)")
    p.set_defaults(func=run)


def _explainer(args, model_spec):
    """(explain(x (1,3,H,W) float32) -> Explanation, layer name), for the chosen backend."""
    if args.backend == "torch":
        if args.precision not in (None, "fp32"):
            raise UsageError("--precision picks an exported graph; the eager reference (--backend torch) runs in the "
                             "model's own dtype")
        import torch

        from ..methods import method_class
        from ..models import load
        from ..validation import check_torch_device

        if args.device not in BACKENDS["torch"].devices:
            raise UsageError(f"--device {args.device}: the eager reference runs on {' or '.join(BACKENDS['torch'].devices)}")
        device = check_torch_device(args.device)
        model, default_layer = load(args.model, args.weights)
        layer = require_layer(args.layer or default_layer, args.model, model, model_spec.input_size)  # on the CPU
        model.to(device)
        options = method_info(args.method).options(batch_size=args.batch_size or BACKENDS["torch"].default_batch[args.device],
                                                   progress=not args.no_progress, max_passes=args.max_passes,
                                                   theta=args.theta)
        explainer = method_class(args.method)(model, layer, **options)
        return (lambda x: explainer(torch.from_numpy(x).to(device), args.class_idx)), layer

    runtime, layer = open_runtime(args, model_spec, backend=args.backend, device=args.device,
                                  batch_size=args.batch_size, theta=args.theta, progress=not args.no_progress,
                                  max_passes=args.max_passes, precision=args.precision or "fp32",
                                  method=args.method, provider_options=args.provider_options)
    return (lambda x: runtime(x, args.class_idx)), layer


def settings(args, model_spec, layer: str) -> dict:
    """The run's options as its reports record them (and a resumed run compares them)."""
    weights = (f"exported folder {args.artifacts}" if getattr(args, "artifacts", None) else str(args.weights)
               if args.weights else ("bundled ImageNet" if model_spec.bundled_weights else "random (untrained)"))
    return {"model": args.model, "weights": weights, "layer": layer, "theta": args.theta, "method": args.method,
            "max_passes": args.max_passes, "precision": args.precision or "fp32", "class_requested": args.class_idx,
            "input_size": list(model_spec.input_size), "backend": args.backend, "device": args.device,
            "lenient": bool(args.lenient)}


def run(args: argparse.Namespace) -> int:
    from ..image_io import read_rgb, sample_image_path, to_model_input

    model_spec = resolve_model_spec(args)
    check_model_options(args)  # before any image is read or model exported
    images = collect_images(args.images) if args.images else [sample_image_path("chelsea")]
    if not images:
        raise UsageError("no image files found in the given folders")
    if args.workers or args.ray_address or len(images) >= RAY_THRESHOLD and ray_available():
        from .explain_ray import run_distributed

        return run_distributed(args, model_spec, images)
    ensure_out(args.out)
    # Read every image first: a bad file is reported without loading (or exporting) the model,
    # and the good ones are still explained.
    failures = 0
    inputs = []
    stems = output_stems([Path(p) for p in images], args.out)
    for path, stem in zip(images, stems):
        t_read = time.perf_counter()
        try:
            rgb = read_rgb(path, lenient=args.lenient)
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
            rep = report(settings(args, model_spec, layer), path, rgb, exp, {"load": load_ms, "read": read_ms})
            write_outputs(args.out, stem, rgb, exp.cam[0], rep)
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
            f"{path}: {rep['class_name']} (class {rep['class_idx']}, p={rep['score']:.3f}), "
            f"selected {rep['selected']}, {exp.timings_ms['total'] / 1e3:.1f} s -> {args.out / (stem + '.png')}"
        )
        load_ms = 0.0
    return 1 if failures else 0
