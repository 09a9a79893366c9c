"""What the subcommands share: model options, the output folder, and the export cache (export once,
verify, re-export when the cache entry is refused). Heavy imports (torch, the exporter) happen only
when a command needs them, so ``--help`` is instant."""
from __future__ import annotations

import contextlib
import functools
import os
import sys
from pathlib import Path

from ..errors import UnionCAMError, UnwritableError
from ..atomic import remove_stale_temporaries
from ..export_cache import ModelRequest, open_explainer
from ..validation import PRECISIONS, PROVIDER_OPTIONS
from ..settings import DEFAULTS, RunSettings


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
    add_model_source_options(p)
    p.add_argument("--out", type=Path, default=Path(out_default), help=f"output folder (default ./{out_default})")
    add_replace_option(p)
    p.add_argument("--no-progress", action="store_true", help="hide the progress bar")
    p.add_argument("--lenient", action="store_true",
                   help="explain images whose decoder reports damaged data (default: such an image is an error row)")


def add_model_source_options(p) -> None:
    """Options shared by ``explain``, ``eval`` and ``serve``: the model (or an exported folder), its
    layer and weights, theta, batch size, threads, pass budget and precision."""
    p.add_argument("--model", default="efficientnet_lite0",
                   help="registered model name (default: efficientnet_lite0), or pkg.module:factory returning an "
                        "nn.Module (RGB in [0, 1], normalisation inside) or (module, layer name)")
    p.add_argument("--input-size", type=positive_int, nargs="+", metavar="N",
                   help="H [W] of the model input (default: the model's; 224 for a factory model)")
    p.add_argument("--weights", type=Path, help="checkpoint file (torchvision state_dict for vgg16/resnet50)")
    p.add_argument("--layer", help="target layer, dotted module name (default: the model's documented default)")
    p.add_argument("--reshape", help="a vision transformer's layer output as maps: tokens (B, N, D; class tokens "
                                     "dropped), tokens:C:HxW, or bhwc (Swin); default: found with the layer")
    p.add_argument("--theta", type=float, help=f"AMD percentile threshold in [0, 100] (default {DEFAULTS.theta:g})")
    p.add_argument("--batch-size", type=positive_int, help="masked forward passes per call (default: per backend)")
    p.add_argument("--threads", type=positive_int,
                   help="CPU threads of each session (default: every core; on a busy machine fewer can be faster)")
    add_budget_option(p)
    p.add_argument("--artifacts", type=Path,
                   help="an exported folder (`unioncam export --out DIR`): used as is, with no export and no torch "
                        "needed; model, layer and input size come from its manifest")


def add_replace_option(p) -> None:
    """``--replace-user-files``: the one way to replace a file with our names that unioncam did not
    write (docs/guarantees.md, "Guarantees"); without it such a run stops before any work, exit 2."""
    p.add_argument("--replace-user-files", action="store_true",
                   help="replace files with unioncam's output names that unioncam did not write (default: refuse, "
                        "before any work, naming the file); files unioncam wrote are always replaced")


def add_budget_option(p, *, nargs=None) -> None:
    """``--max-passes``: the region map's pass budget (docs/budgets.md, "Latency budgets")."""
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
        from ..errors import ModelNotFoundError

        try:
            s = spec(args.model)
        except ModelNotFoundError as e:  # a name that is no model is the option's fault: exit 2
            from ..errors import UsageError

            raise UsageError(f"--model: {e}") from None
        if ":" not in args.model and not s.bundled_weights and args.weights is None:
            import warnings

            from ..model_specs import UntrainedWeightsWarning, warn_untrained

            warn_untrained(args.model)  # now, before a minute of export, and once
            warnings.filterwarnings("ignore", category=UntrainedWeightsWarning)
        size = getattr(args, "input_size", None)
        if size:
            from ..validation import check_input_size

            s = dataclasses.replace(s, input_size=check_input_size(size))
        return s
    from ..artifacts import Manifest
    from ..errors import UsageError

    if getattr(args, "backend", "onnxruntime") == "torch":
        raise UsageError("--artifacts runs the exported graphs; it does not go with --backend torch")
    if args.layer is not None or args.weights is not None or getattr(args, "reshape", None) is not None:
        raise UsageError("--artifacts fixes the model, weights, layer and reshape; leave out --layer, --weights "
                         "and --reshape")
    m = Manifest.load(args.artifacts)
    args.model = m.model
    return ModelSpec(m.model, m.layer, tuple(m.input_size), tuple(m.mean or ()), tuple(m.std or ()),
                     f"exported folder {args.artifacts}", False, m.num_classes)


def model_request(args, model_spec) -> ModelRequest:
    """The export cache's typed request from the parsed options."""
    return ModelRequest(args.model, model_spec, args.weights, args.layer, getattr(args, "reshape", None),
                        getattr(args, "class_idx", None), getattr(args, "class_by_name", False))


@contextlib.contextmanager
def as_usage_error(flag: str | None = None):
    """A bad option value found by a shared check (InvalidInputError, BackendUnavailableError) is a
    usage error: exit 2, before any model loads. ``flag`` prefixes the message."""
    from ..errors import BackendUnavailableError, InvalidInputError, UsageError

    try:
        yield
    except UsageError:
        raise
    except (InvalidInputError, BackendUnavailableError) as e:
        raise UsageError(f"{flag}: {e}" if flag else str(e)) from None


def check_model_options(args, model_spec) -> None:
    """The shared options' values, before any image is read or model exported: a bad value is a
    usage error (exit 2) that costs no export."""
    from ..errors import InvalidInputError
    from ..reshape import parse_reshape
    from ..validation import (check_batch_ceiling, check_precision, check_provider_options, check_theta,
                              check_threads)

    device = getattr(args, "device", "cpu")
    with as_usage_error():
        check_theta(args.theta)
        if args.layer is not None and not args.layer.strip():
            raise InvalidInputError("--layer is empty; give a dotted module name, or leave it out for the model's default")
        if args.threads is not None:
            check_threads(args.threads)
        if args.batch_size is not None:
            check_batch_ceiling(args.batch_size, model_spec.input_size, device)
        check_precision(args.precision or "fp32", device)
    with as_usage_error("--provider-options"):
        check_provider_options(args.provider_options, device)
    with as_usage_error("--reshape"):
        if getattr(args, "reshape", None) is not None:
            parse_reshape(args.reshape)


def check_out_folder(out: Path) -> None:
    """``--out`` must be a folder or nothing yet, with no file on its path: a usage error (exit 2)
    found before any model loads."""
    from ..errors import OutputPathError

    for p in [out, *out.parents]:
        if p.exists() and not p.is_dir():
            what = "is a file, not a folder" if p == out else f"is below {p}, which is a file, not a folder"
            raise OutputPathError(f"--out {out} {what}; give --out a folder (a new one, or one of earlier runs)")


def ensure_out(out: Path) -> None:
    """The output folder, created; the temporary files a killed run of ours left there, removed."""
    check_out_folder(out)
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise UnwritableError(f"cannot create output folder {out}: {e.strerror}; choose a writable --out") from None
    if not os.access(out, os.W_OK):
        raise UnwritableError(f"output folder {out} is not writable; choose another with --out")
    stale = remove_stale_temporaries(out)
    if stale:
        print(f"unioncam: removed {stale} temporary files an interrupted run left in {out}", file=sys.stderr)


def open_runtime(args, model_spec, **kwargs):
    """(runtime Explainer, layer) for the parsed options (:func:`unioncam.export_cache.open_explainer`)."""
    return open_explainer(model_request(args, model_spec), artifacts=getattr(args, "artifacts", None), **kwargs)


@functools.lru_cache(maxsize=8)
def _file_digest(path: str, size: int, mtime_ns: int) -> str:
    from ..digests import sha256_file

    return sha256_file(path)


def weights_digest(args) -> str | None:
    """The SHA-256 of the weights a run uses, which a resume compares (a path is not the bytes):
    the exported folder's fingerprint, or the ``--weights`` file's; None for bundled weights (the
    model's name fixes them) and untrained ones."""
    artifacts = getattr(args, "artifacts", None)
    try:
        if artifacts:
            from ..artifacts import Manifest

            return Manifest.load(artifacts).extra.get("fingerprint", {}).get("weights_sha256")
        if getattr(args, "weights", None):
            st = os.stat(args.weights)
            return _file_digest(os.path.realpath(args.weights), st.st_size, st.st_mtime_ns)
    except (OSError, UnionCAMError):
        return None  # the load says why, with the path
    return None


def report_settings(args, model_spec, layer: str) -> dict:
    """The run's options as its reports record them (and a resumed run compares them)."""
    weights = (f"exported folder {args.artifacts}" if getattr(args, "artifacts", None) else str(args.weights)
               if args.weights else ("bundled ImageNet" if model_spec.bundled_weights else "random (untrained)"))
    return RunSettings(model=args.model, weights=weights, weights_sha256=weights_digest(args), layer=layer,
                       theta=args.theta, method=args.method, max_passes=args.max_passes,
                       precision=args.precision or "fp32", class_requested=args.class_idx,
                       input_size=list(model_spec.input_size), backend=args.backend, device=args.device,
                       batch_size=getattr(args, "batch_size", None), threads=getattr(args, "threads", None),
                       lenient=bool(args.lenient), plain=bool(getattr(args, "plain", False))).as_dict()