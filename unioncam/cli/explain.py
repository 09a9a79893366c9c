"""``unioncam explain``: heatmap PNG, map .npy and a JSON report per image."""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

from ..classes import parse_class
from ..errors import UnionCAMError, UsageError
from ..explain_files import LazyExplainer, explain_file, failure_message
from ..export_cache import choose_layer
from ..image_io import approximate
from ..outputs import (
    claim_outputs,
    collect_images,
    finished_report,
    output_stems,
    own_outputs,
)
from ..settings import RunSettings
from ..registry import METHODS, method_info
from ..runtime.backends import BACKENDS, devices
from ..validation import check_class_option
from .common import (
    add_model_options,
    check_model_options,
    check_out_folder,
    ensure_out,
    open_runtime,
    positive_int,
    report_settings,
    resolve_model_spec,
)

#: From this many images on, ``explain`` runs on Ray when Ray is installed (docs/ray.md, "Whole data sets").
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
    p.add_argument("--plain", action="store_true",
                   help="write the overlay alone, pixel-aligned with the photo (for pipelines); default: with a "
                        "caption (class, score, method, approximate or not) and a colour bar")
    p.add_argument("--overwrite", action="store_true",
                   help="explain every image again (default: images whose outputs an earlier run completed with the "
                        "same settings are skipped); replaces only files unioncam wrote")
    p.add_argument("--class", dest="class_text", metavar="CLASS",
                   help="class to explain: an index (281) or an ImageNet name, any synonym, any case (\"tabby\"); "
                        "default: the predicted class")
    p.add_argument("--backend", choices=list(BACKENDS), default="onnxruntime",
                   help="onnxruntime (default; exports the model into the cache on first use), tensorrt, "
                        "or torch (the eager reference)")
    p.add_argument("--device", choices=devices(), default="cpu",
                   help="cpu (default), cuda, or tensorrt (ONNX Runtime's TensorRT provider)")
    p.add_argument("--method", choices=METHODS,
                   help="unioncam (default) or a baseline: gradcam, gradcampp, xgradcam, scorecam")
    ray = p.add_argument_group("whole data sets on Ray (pip install \"unioncam[ray]\"); used from "
                               f"{RAY_THRESHOLD} images on when Ray is installed, or with these options")
    ray.add_argument("--workers", type=positive_int, help="explainer actors (default: one per 2 cores, at least 1)")
    ray.add_argument("--ray-address", help="join a cluster: auto, ray://HOST:10001 or HOST:6379 (default: start a "
                                           "local Ray on this machine)")
    ray.add_argument("--gpus-per-worker", type=float, default=None,
                     help="GPUs each actor reserves with --device cuda (default 1)")
    served = p.add_argument_group("on a running server (`unioncam serve`)")
    served.add_argument("--server", metavar="URL",
                        help="explain on a running `unioncam serve` at http://HOST:PORT (its model and settings; "
                             "--method, --theta, --max-passes and --class go with each request); writes the same files")
    served.add_argument("--served-model", default="unioncam", metavar="NAME",
                        help="the server's model name (its --model-name; default unioncam)")
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
        if args.threads is not None:
            torch.set_num_threads(args.threads)
        model, default_layer = load(args.model, args.weights)
        if args.class_idx is not None:
            from ..models.target_layer import output_classes

            check_class_option(args.class_idx, output_classes(model, model_spec.input_size), by_name=args.class_by_name)
        layer, reshape = choose_layer(args.layer or default_layer, args.model, model, model_spec.input_size,
                                      args.reshape)  # on the CPU
        model.to(device)
        options = method_info(args.method).options(batch_size=args.batch_size or BACKENDS["torch"].default_batch[args.device],
                                                   progress=not args.no_progress, max_passes=args.max_passes,
                                                   theta=args.theta)
        explainer = method_class(args.method)(model, layer, reshape=reshape, **options)
        return (lambda x: explainer(torch.from_numpy(x).to(device), args.class_idx)), layer

    runtime, layer = open_runtime(args, model_spec, backend=args.backend, device=args.device,
                                  batch_size=args.batch_size, theta=args.theta, progress=not args.no_progress,
                                  max_passes=args.max_passes, precision=args.precision or "fp32",
                                  method=args.method, provider_options=args.provider_options, threads=args.threads)
    check_class_option(args.class_idx, runtime.manifest.num_classes, by_name=args.class_by_name)
    return (lambda x: runtime(x, args.class_idx)), layer


def run(args: argparse.Namespace) -> int:
    from ..image_io import sample_image_path

    if args.server:
        return run_remote(args)
    model_spec = resolve_model_spec(args)
    check_model_options(args, model_spec)  # before any image is read or model exported
    args.class_idx, args.class_by_name = parse_class(args.class_text)
    check_class_option(args.class_idx, model_spec.num_classes, by_name=args.class_by_name)
    images = collect_images(args.images) if args.images else [sample_image_path("chelsea")]
    own = own_outputs(images)
    if own:
        print(f"unioncam: skipping {len(own)} overlays an earlier run wrote (a <stem>.png beside its "
              "_cam.npy and .json)", file=sys.stderr)
        images = [p for p in images if Path(p) not in own]
    if not images:
        raise UsageError("no image files found in the given folders")
    check_out_folder(args.out)
    if args.workers or args.ray_address or len(images) >= RAY_THRESHOLD and ray_available():
        from .explain_ray import run_distributed

        return run_distributed(args, model_spec, images)
    stems = output_stems([Path(p) for p in images], args.out)
    claim_outputs(args.out, stems, replace_user_files=args.replace_user_files)  # before any work
    ensure_out(args.out)
    # One image at a time: read, explain, write. The model is loaded (or exported) at the first
    # image that reads, so a run whose every image is bad loads nothing; a bad image is reported
    # and the others are still explained.
    explain = LazyExplainer(lambda: _explainer(args, model_spec))
    todo = list(zip(images, stems))
    if not args.overwrite:
        # Resume as the Ray path does: complete outputs of this photo with these settings are kept.
        # A factory's layer is chosen at load; the reports of an earlier run name it, so it is not compared.
        known = report_settings(args, model_spec, args.layer or model_spec.default_layer)
        if not known["layer"]:
            known.pop("layer")
        todo = [(p, s) for p, s in todo if finished_report(args.out, s, p, known) is None]
        done = len(images) - len(todo)
        if done:
            print(f"unioncam: {done} of {len(images)} images already explained in {args.out} (same settings); "
                  f"explaining the other {len(todo)} (--overwrite redoes them)", file=sys.stderr)
    return _explain_each(args, todo, explain, model_spec.input_size,
                         lambda: report_settings(args, model_spec, explain.layer))


def _explain_each(args, todo, explain, size, settings) -> int:
    """Explains each (path, stem) into ``args.out``, one line per image; a bad image is reported and
    the others go on. Returns the exit code (1 if any image failed)."""
    failures = 0
    for path, stem in todo:
        try:
            rep, _, _ = explain_file(path, stem, args.out, explain=explain, size=size,
                                     settings=settings, lenient=args.lenient,
                                     timings=lambda: {"load": explain.load_ms})
        except Exception as e:  # one image never stops the others; --debug shows the traceback
            if explain.load_error is not None:
                raise  # the model did not load: a fault of the run, reported once
            if getattr(args, "debug", False) and not isinstance(e, (UnionCAMError, OSError)):
                raise
            print(f"unioncam: error: {path}: {failure_message(e)}", file=sys.stderr)
            failures += 1
            continue
        explain.load_ms = 0.0  # counted in the first report only
        selected = f", selected {rep['selected']}" if rep["selected"] is not None else ""
        if approximate(rep):
            selected += f", approximate ({rep['max_passes']} passes)"
        ms = rep["timings_ms"]["total"]
        took = f"{ms / 1e3:.1f} s" if ms >= 1000 else f"{ms:.3g} ms"
        print(f"{path}: {rep['class_name']} (class {rep['class_idx']}, p={rep['score']:.3f}){selected}, {took} -> "
              f"{args.out / (stem + '.png')}")
    return 1 if failures else 0


#: Options a server's own settings fix: refused with --server (docs/serve.md, "Call it").
SERVER_FIXES = {"artifacts": None, "layer": None, "weights": None, "reshape": None, "input_size": None,
                "batch_size": None, "threads": None, "precision": None, "provider_options": None,
                "backend": "onnxruntime", "device": "cpu", "workers": None, "ray_address": None,
                "gpus_per_worker": None}


def run_remote(args: argparse.Namespace) -> int:
    """``explain --server URL``: the images explained by a running ``unioncam serve``, written as a
    local run writes them. The model is the server's; the method, theta and budget are the server's
    unless given here."""
    from ..image_io import sample_image_path
    from ..serve.client import RemoteExplainer, check_server_url
    from .common import as_usage_error

    given = [k for k, default in SERVER_FIXES.items() if getattr(args, k, default) != default]
    if given:
        raise UsageError(f"--server explains with the server's model and settings; leave out "
                         f"{', '.join('--' + k.replace('_', '-') for k in given)}")
    args.class_idx, args.class_by_name = parse_class(args.class_text)
    images = collect_images(args.images) if args.images else [sample_image_path("chelsea")]
    own = own_outputs(images)
    images = [p for p in images if Path(p) not in own]
    if not images:
        raise UsageError("no image files found in the given folders")
    check_out_folder(args.out)
    with as_usage_error():
        check_server_url(args.server)
    remote = RemoteExplainer(args.server, args.served_model)
    check_class_option(args.class_idx, remote.num_classes if remote.num_classes > 0 else None,
                       by_name=args.class_by_name)
    stems = output_stems([Path(p) for p in images], args.out)
    claim_outputs(args.out, stems, replace_user_files=args.replace_user_files)
    ensure_out(args.out)
    # Only what was given: the server's own settings hold for the rest.
    overrides = {"theta": args.theta if "theta" in args.given else None}
    if args.max_passes is not None:
        overrides["max_passes"] = args.max_passes
    method = args.method if "method" in args.given else None
    explain = LazyExplainer(lambda: ((lambda x: remote(x, args.class_idx, method, **overrides)), None))

    def settings() -> dict:
        s = remote.settings
        return RunSettings(model=s.get("model"), weights=f"served by {remote.url}",
                           weights_sha256=s.get("weights_sha256"), layer=s.get("layer"),
                           theta=float(s["theta"]) if "theta" in s else None, method=s.get("method"),
                           max_passes=s.get("max_passes"), precision=s.get("precision"),
                           class_requested=args.class_idx, input_size=list(remote.input_size),
                           backend=s.get("backend"), device=s.get("device"), lenient=bool(args.lenient),
                           plain=bool(args.plain)).as_dict()

    return _explain_each(args, [(p, s) for p, s in zip(images, stems)], explain, remote.input_size, settings)
