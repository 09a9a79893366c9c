"""What the subcommands share: model options, the output folder, and the export cache (export once,
verify, re-export when the cache entry is refused). Heavy imports (torch, the exporter) happen only
when a command needs them, so ``--help`` is instant."""
from __future__ import annotations

import os
import sys
from pathlib import Path

from ..errors import UnwritableError, UsageError
from ..atomic import remove_stale_temporaries
from ..runtime.backends import backend_info
from ..validation import PRECISION_GRAPH, PRECISIONS, PROVIDER_OPTIONS


def positive_int(text: str) -> int:
    """argparse type: a positive int, else a usage error (exit 2)."""
    import argparse

    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {value}")
    return value


def add_model_options(p, *, out_default: str) -> None:
    """Options shared by ``explain`` and ``eval``: model, weights, layer, theta, batch size, output folder."""
    p.add_argument("--model", default="efficientnet_lite0",
                   help="registered model name (default: efficientnet_lite0), or pkg.module:factory returning an "
                        "nn.Module (RGB in [0, 1], normalisation inside) or (module, layer name)")
    p.add_argument("--input-size", type=positive_int, nargs="+", metavar="N",
                   help="H [W] of the model input (default: the model's; 224 for a factory model)")
    p.add_argument("--weights", type=Path, help="checkpoint file (torchvision state_dict for vgg16/resnet50)")
    p.add_argument("--layer", help="target layer, dotted module name (default: the model's documented default)")
    p.add_argument("--reshape", help="a vision transformer's layer output as maps: tokens (B, N, D; class tokens "
                                     "dropped), tokens:C:HxW, or bhwc (Swin); default: found with the layer")
    p.add_argument("--theta", type=float, default=10.0, help="AMD percentile threshold in [0, 100] (default 10)")
    p.add_argument("--batch-size", type=positive_int, help="masked forward passes per call (default: per backend)")
    add_budget_option(p)
    p.add_argument("--out", type=Path, default=Path(out_default), help=f"output folder (default ./{out_default})")
    p.add_argument("--no-progress", action="store_true", help="hide the progress bar")
    p.add_argument("--lenient", action="store_true",
                   help="explain images whose decoder reports damaged data (default: such an image is an error row)")
    p.add_argument("--artifacts", type=Path,
                   help="an exported folder (`unioncam export --out DIR`): used as is, with no export and no torch "
                        "needed; model, layer and input size come from its manifest")


def add_budget_option(p, *, nargs=None) -> None:
    """``--max-passes``: the region map's pass budget (README, "Latency budgets")."""
    p.add_argument("--max-passes", type=positive_int, nargs=nargs, metavar="N",
                   help="at most N masked passes per image for the region map, the other channels' scores "
                        "estimated from their nearest scored masks (error bound and estimate in the JSON); "
                        "default: exact" + (" (several values make a sweep)" if nargs else ""))
    p.add_argument("--precision", choices=PRECISIONS, nargs=nargs, metavar="P",
                   help="fp32 (default; on a GPU with TF32 off, so the spec's tolerances hold), tf32 (GPU only), "
                        "fp16 or int8 (a graph added to the cached export on first use); the 3 fusion passes stay "
                        "fp32" + (" (several values make a sweep)" if nargs else ""))
    p.add_argument("--provider-options", nargs=nargs, metavar="KEY=VALUE[,KEY=VALUE]",
                   default=["default"] if nargs else None,
                   help="ONNX Runtime CUDA provider options (--device cuda/tensorrt): "
                        + ", ".join(f"{k}={'|'.join(v) if v else 'N'}" for k, v in PROVIDER_OPTIONS.items())
                        + (" (one set per cell; 'default' = none)" if nargs else ""))


def resolve_model_spec(args):
    """The model's facts: the registry's, or with ``--artifacts`` the folder's manifest (torch-free)."""
    import dataclasses

    from ..model_specs import ModelSpec, spec

    if getattr(args, "artifacts", None) is None:
        s = spec(args.model)
        size = getattr(args, "input_size", None)
        if size:
            if len(size) > 2:
                raise UsageError(f"--input-size takes H or H W, got {size}")
            s = dataclasses.replace(s, input_size=(size[0], size[-1]))
        return s
    from ..artifacts import Manifest
    from ..errors import InvalidInputError

    if getattr(args, "backend", "onnxruntime") == "torch":
        raise InvalidInputError("--artifacts runs the exported graphs; it does not go with --backend torch")
    if args.layer is not None or args.weights is not None:
        raise InvalidInputError("--artifacts fixes the model, weights and layer; leave out --layer and --weights")
    m = Manifest.load(args.artifacts)
    args.model = m.model
    return ModelSpec(m.model, m.layer, tuple(m.input_size), tuple(m.mean or ()), tuple(m.std or ()),
                     f"exported folder {args.artifacts}", False)


def require_layer(layer, model: str, net=None, input_size=(224, 224), reshape: str | None = None) -> tuple[str, str | None]:
    """(target layer, reshape) a command will use: the given ones, else (for a factory or library model
    ``net``) the last feature map before pooling, or a vision transformer's last block input with
    its reshape (:func:`unioncam.models.target_layer.default_target`), said on stderr so that the
    choice is never silent."""
    if layer:
        return layer, reshape
    if net is None:
        raise UsageError(f"--model {model}: give --layer (a name from model.named_modules()), or return "
                         "(model, layer) from the factory")
    from ..models.target_layer import default_target

    name, shape, auto = default_target(net, input_size)
    if auto is None:
        print(f"unioncam: target layer {name} (output {shape[1]}x{shape[2]}x{shape[3]}, the last feature map before "
              "pooling; choose another with --layer)", file=sys.stderr)
    else:
        print(f"unioncam: target layer {name} (output {'x'.join(map(str, shape[1:]))}, a vision transformer's "
              f"last block input), reshape {reshape or auto}; choose others with --layer and --reshape",
              file=sys.stderr)
    return name, reshape or auto


def check_model_options(args) -> None:
    """The shared options' values, before any image is read or model exported."""
    from ..errors import InvalidInputError
    from ..validation import check_theta

    check_theta(args.theta)
    if args.layer is not None and not args.layer.strip():
        raise InvalidInputError("--layer is empty; give a dotted module name, or leave it out for the model's default")


def ensure_out(out: Path) -> None:
    """The output folder, created; the temporary files a killed run of ours left there, removed."""
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise UnwritableError(f"cannot create output folder {out}: {e.strerror}") from None
    if not os.access(out, os.W_OK):
        raise UnwritableError(f"output folder {out} is not writable; choose another with --out")
    stale = remove_stale_temporaries(out)
    if stale:
        print(f"unioncam: removed {stale} temporary files an interrupted run left in {out}", file=sys.stderr)


def open_runtime(args, model_spec, **kwargs):
    """(runtime Explainer on the cached export, layer). The Explainer verifies every file's SHA-256;
    a cache entry it refuses (corrupt, tampered, stale engine) is exported again, once."""
    from ..errors import ArtifactError
    from ..runtime import Explainer

    if getattr(args, "artifacts", None) is not None:  # the user's folder: verified, never re-exported
        return Explainer(args.artifacts, **kwargs), model_spec.default_layer
    engines = backend_info(kwargs.get("backend") or "onnxruntime").needs_engines
    if engines:
        from ..runtime.backends.tensorrt.engine_file import current_gpu
        from ..errors import BackendUnavailableError

        if current_gpu() is None:
            raise BackendUnavailableError(
                "--backend tensorrt runs TensorRT engines on an NVIDIA GPU, and none was found here (or cuda-python "
                "is missing); use --backend onnxruntime (the default) or --backend torch on this machine")
    directory, layer = ensure_exported(args, model_spec, engines=engines)
    ensure_precision(directory, kwargs.get("precision") or "fp32")
    try:
        return Explainer(directory, **kwargs), layer
    except ArtifactError as e:
        print(f"unioncam: cached export is unusable ({e}); exporting again", file=sys.stderr)
        ensure_exported(args, model_spec, engines=engines, force=True)
        ensure_precision(directory, kwargs.get("precision") or "fp32")
        return Explainer(directory, **kwargs), layer


def ensure_precision(directory: Path, precision: str) -> None:
    """Add a precision's masked-forward graph to a cached export that lacks it (under the cache lock)."""
    precision = PRECISION_GRAPH[precision]
    if precision == "fp32":
        return
    from ..artifacts import Manifest
    from ..cache import cache_lock

    with cache_lock(directory):
        if precision not in Manifest.load(directory).extra.get("precisions", {}):
            from ..export.precision import add_precision

            print(f"unioncam: adding {precision} masked passes to {directory} (first use)", file=sys.stderr)
            add_precision(directory, precision)


def ensure_exported(args, model_spec, *, engines: bool = False, force: bool = False) -> tuple[Path, str]:
    """The model's artifact folder in the cache, exported (atomically, replacing the folder) on first
    use or when ``force``."""
    from ..artifacts import MANIFEST
    from ..cache import artifact_dir, cache_lock
    from ..errors import WeightsError
    from ..model_specs import bundled_weights_path

    if args.weights is not None and not Path(args.weights).is_file():
        raise WeightsError(f"weights file not found: {args.weights}")
    model = None
    if ":" in args.model:
        # A factory's weights come from anywhere: the cache key is a hash of the built model's state.
        from ..models import load
        from ..models.factory import state_key

        model, factory_layer = load(args.model, args.weights)
        layer, reshape = require_layer(args.layer or factory_layer, args.model, model, model_spec.input_size,
                                       getattr(args, "reshape", None))
        bundled = "factory:" + state_key(model)
    else:
        bundled = bundled_weights_path(args.model) if args.weights is None else None
        layer, reshape = args.layer or model_spec.default_layer, getattr(args, "reshape", None)
    key_layer = layer if reshape is None else f"{layer}@{reshape}"  # another reshape is another export
    directory = artifact_dir(args.model.replace(":", "_"), key_layer, model_spec.input_size, args.weights, bundled)
    with cache_lock(directory):
        # Under the lock: another run may have exported while this one waited.
        if force or not (directory / MANIFEST).is_file():
            from ..export import export
            from ..models import load

            print(f"unioncam: exporting {args.model} (layer {layer}) to {directory} (first use; later runs reuse it)",
                  file=sys.stderr)
            if model is None:
                model, _ = load(args.model, args.weights)
            try:
                export(model, layer, directory, input_size=model_spec.input_size, model_name=args.model,
                       mean=model_spec.mean, std=model_spec.std, reshape=reshape)
            except UnwritableError:
                raise UnwritableError(f"the export cache {directory.parent} is not writable; set UNIONCAM_CACHE "
                                      "to a writable folder") from None
        if engines:
            from ..export import build_engine

            for name in ("gradient", "masked_forward"):
                if not (directory / f"{name}.engine").is_file():
                    build_engine(directory / f"{name}.onnx", max_batch=64)
    return directory, layer


def report_settings(args, model_spec, layer: str) -> dict:
    """The run's options as its reports record them (and a resumed run compares them)."""
    weights = (f"exported folder {args.artifacts}" if getattr(args, "artifacts", None) else str(args.weights)
               if args.weights else ("bundled ImageNet" if model_spec.bundled_weights else "random (untrained)"))
    return {"model": args.model, "weights": weights, "layer": layer, "theta": args.theta, "method": args.method,
            "max_passes": args.max_passes, "precision": args.precision or "fp32", "class_requested": args.class_idx,
            "input_size": list(model_spec.input_size), "backend": args.backend, "device": args.device,
            "lenient": bool(args.lenient)}
