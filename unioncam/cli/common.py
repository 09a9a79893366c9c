"""What the subcommands share: model options, the output folder, and the export cache (export once,
verify, re-export when the cache entry is refused). Heavy imports (torch, the exporter) happen only
when a command needs them, so ``--help`` is instant."""
from __future__ import annotations

import os
import sys
from pathlib import Path

from ..errors import UnionCAMError


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
    p.add_argument("--model", default="efficientnet_lite0", help="registered model name (default: efficientnet_lite0)")
    p.add_argument("--weights", type=Path, help="checkpoint file (torchvision state_dict for vgg16/resnet50)")
    p.add_argument("--layer", help="target layer, dotted module name (default: the model's documented default)")
    p.add_argument("--theta", type=float, default=10.0, help="AMD percentile threshold in [0, 100] (default 10)")
    p.add_argument("--batch-size", type=positive_int, help="masked forward passes per call (default: per backend)")
    p.add_argument("--out", type=Path, default=Path(out_default), help=f"output folder (default ./{out_default})")
    p.add_argument("--no-progress", action="store_true", help="hide the progress bar")


def ensure_out(out: Path) -> None:
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise UnionCAMError(f"cannot create output folder {out}: {e.strerror}") from None
    if not os.access(out, os.W_OK):
        raise UnionCAMError(f"output folder {out} is not writable; choose another with --out")


def open_runtime(args, model_spec, **kwargs):
    """(runtime Explainer on the cached export, layer). The Explainer verifies every file's SHA-256;
    a cache entry it refuses (corrupt, tampered, stale engine) is exported again, once."""
    from ..errors import ArtifactError
    from ..runtime import Explainer

    engines = kwargs.get("backend") == "tensorrt"
    directory, layer = ensure_exported(args, model_spec, engines=engines)
    try:
        return Explainer(directory, **kwargs), layer
    except ArtifactError as e:
        print(f"unioncam: cached export is unusable ({e}); exporting again", file=sys.stderr)
        ensure_exported(args, model_spec, engines=engines, force=True)
        return Explainer(directory, **kwargs), layer


def ensure_exported(args, model_spec, *, engines: bool = False, force: bool = False) -> tuple[Path, str]:
    """The model's artifact folder in the cache, exported (atomically, replacing the folder) on first
    use or when ``force``."""
    from ..artifacts import MANIFEST
    from ..cache import artifact_dir
    from ..model_specs import bundled_weights_path

    bundled = bundled_weights_path(args.model) if args.weights is None else None
    layer = args.layer or model_spec.default_layer
    if args.weights is not None and not Path(args.weights).is_file():
        from ..errors import WeightsError

        raise WeightsError(f"weights file not found: {args.weights}")
    directory = artifact_dir(args.model, layer, model_spec.input_size, args.weights, bundled)
    if force or not (directory / MANIFEST).is_file():
        from ..export import export
        from ..models import load

        print(f"unioncam: exporting {args.model} (layer {layer}) to {directory} (first use; later runs reuse it)",
              file=sys.stderr)
        model, _ = load(args.model, args.weights)
        export(model, layer, directory, input_size=model_spec.input_size, model_name=args.model,
               mean=model_spec.mean, std=model_spec.std)
    if engines:
        from ..export import build_engine

        for name in ("gradient", "masked_forward"):
            if not (directory / f"{name}.engine").is_file():
                build_engine(directory / f"{name}.onnx", max_batch=64)
    return directory, layer


