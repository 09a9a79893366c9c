"""``unioncam explain`` on Ray Data (``--workers``, ``--ray-address``, or many images): the driver
exports once (or takes ``--artifacts``) and hands the folder to :func:`unioncam.distributed.explain_dataset`."""
from __future__ import annotations

import sys

from ..errors import UsageError
from ..runtime.backends import backend_info


def run_distributed(args, model_spec, images) -> int:
    from ..distributed import explain_dataset
    from ..distributed.dataset import import_ray, is_loopback
    from ..export_cache import ensure_precision, exported
    from .common import ensure_out, model_request, report_settings

    from ..distributed.dataset import check_reachable

    # The one-line error naming the extra comes before any export; a loopback cluster is joined on loopback.
    import_ray(local=not args.ray_address or is_loopback(args.ray_address))
    if args.backend == "torch":
        raise UsageError("explaining on Ray runs the exported graphs; use --backend onnxruntime or tensorrt "
                                "(not torch) with --workers or --ray-address")
    if args.gpus_per_worker is not None and args.device == "cpu":
        raise UsageError("--gpus-per-worker goes with --device cuda")
    if args.gpus_per_worker is not None:
        from ..validation import check_gpus_per_worker
        from .common import as_usage_error

        with as_usage_error():
            check_gpus_per_worker(args.gpus_per_worker)
    if args.ray_address:
        check_reachable(args.ray_address)  # a malformed or silent address, before any export
    from ..distributed.dataset import INDEX
    from ..outputs import claim_outputs, output_stems

    claim_outputs(args.out, output_stems(list(images), args.out), replace_user_files=args.replace_user_files,
                  extra=[args.out / INDEX])  # before the export
    ensure_out(args.out)
    if args.artifacts is not None:
        directory, layer = args.artifacts, model_spec.default_layer
    else:
        directory, layer = exported(model_request(args, model_spec), engines=backend_info(args.backend).needs_engines)
        ensure_precision(directory, args.precision or "fp32")
    summary = explain_dataset(images, directory, args.out, workers=args.workers, ray_address=args.ray_address,
                              settings=report_settings(args, model_spec, layer), gpus_per_worker=args.gpus_per_worker,
                              progress=not args.no_progress, overwrite=args.overwrite,
                              replace_user_files=args.replace_user_files)
    rate = f", {summary['images_per_s']:.2f} images/s" if summary["images_per_s"] else ""
    print(f"{summary['ok']} of {summary['images']} images explained ({summary['skipped']} from a previous run, "
          f"{summary['error']} errors) with {summary['workers']} workers in {summary['elapsed_s']:.1f} s "
          f"(Ray start {summary['ray_start_s']:.1f} s){rate}; "
          f"index: {summary['index']}", file=sys.stderr)
    return 1 if summary["error"] else 0
