"""The export cache: a model's exported folder, made once and reused by every run that asks for
the same model, weights, layer, reshape and input size. Typed arguments (a :class:`ModelRequest`),
so that the CLI, the bench, the Ray driver and the tests call it alike.

Exports go to ``$UNIONCAM_CACHE`` (default ``~/.cache/unioncam``), one folder per key
(:func:`unioncam.cache.artifact_dir`), under a file lock (concurrent runs export once), written
atomically, and exported again when the runtime refuses a cached folder.
"""
from __future__ import annotations

import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

from .artifacts import MANIFEST, Manifest
from .cache import artifact_dir, cache_lock
from .errors import ArtifactError, BackendUnavailableError, UnwritableError, UsageError
from .model_specs import ModelSpec, bundled_weights_path
from .validation import PRECISION_GRAPH


def _stderr(line: str) -> None:
    print(line, file=sys.stderr)


@dataclass(frozen=True)
class ModelRequest:
    """What to export: a registered model name or ``pkg.module:factory`` (``model``), its facts
    (``spec``: input size, default layer, normalisation), a weights file, a target layer and a
    transformer's reshape (None: the spec's layer, or the one found for a factory)."""

    model: str
    spec: ModelSpec
    weights: Path | None = None
    layer: str | None = None
    reshape: str | None = None
    #: ``--class``, checked against the built model's class count before a factory model is exported.
    class_idx: int | None = None
    class_by_name: bool = False


def choose_layer(layer: str | None, model: str, net=None, input_size=(224, 224), reshape: str | None = None,
                 say: Callable[[str], None] = _stderr) -> tuple[str, str | None]:
    """(target layer, reshape): the given ones, else (for a factory or library model ``net``) the last
    feature map before pooling, or a vision transformer's last block input with its reshape
    (:func:`unioncam.models.target_layer.default_target`), said through ``say`` so that the choice
    is never silent."""
    if layer:
        return layer, reshape
    if net is None:
        raise UsageError(f"--model {model}: give --layer (a name from model.named_modules()), or return "
                         "(model, layer) from the factory")
    from .models.target_layer import default_target

    name, shape, auto = default_target(net, input_size)
    if auto is None:
        say(f"unioncam: target layer {name} (output {shape[1]}x{shape[2]}x{shape[3]}, the last feature map before "
            "pooling; choose another with --layer)")
    else:
        say(f"unioncam: target layer {name} (output {'x'.join(map(str, shape[1:]))}, a vision transformer's "
            f"last block input), reshape {reshape or auto}; choose others with --layer and --reshape")
    return name, reshape or auto


def exported(req: ModelRequest, *, engines: bool = False, force: bool = False,
             say: Callable[[str], None] = _stderr) -> tuple[Path, str]:
    """(the model's folder in the cache, its layer), exported on first use or when ``force``."""
    if req.weights is not None:
        from .validation import check_weights_file

        check_weights_file(req.weights)
    model = None
    size = req.spec.input_size
    if ":" in req.model:
        # A factory's weights come from anywhere: the cache key is a hash of the built model's state.
        from .models import load
        from .models.factory import state_key

        model, factory_layer = load(req.model, req.weights)
        if req.class_idx is not None:
            from .models.target_layer import output_classes
            from .validation import check_class_option

            check_class_option(req.class_idx, output_classes(model, size), by_name=req.class_by_name)
        layer, reshape = choose_layer(req.layer or factory_layer, req.model, model, size, req.reshape, say)
        bundled = "factory:" + state_key(model)
    else:
        bundled = bundled_weights_path(req.model) if req.weights is None else None
        layer, reshape = req.layer or req.spec.default_layer, req.reshape
    key_layer = layer if reshape is None else f"{layer}@{reshape}"  # another reshape is another export
    directory = artifact_dir(req.model.replace(":", "_"), key_layer, size, req.weights, bundled)
    with cache_lock(directory):
        # Under the lock: another run may have exported while this one waited.
        if force or not (directory / MANIFEST).is_file():
            from .export import export
            from .models import load

            say(f"unioncam: exporting {req.model} (layer {layer}) to {directory} (first use; later runs reuse it)")
            if model is None:
                model, _ = load(req.model, req.weights)
            try:
                export(model, layer, directory, input_size=size, model_name=req.model, mean=req.spec.mean,
                       std=req.spec.std, reshape=reshape, owned=True)
            except UnwritableError:
                raise UnwritableError(f"the export cache {directory.parent} is not writable; set UNIONCAM_CACHE "
                                      "to a writable folder") from None
        if engines:
            from .export import build_engine

            for name in ("gradient", "masked_forward"):
                if not (directory / f"{name}.engine").is_file():
                    build_engine(directory / f"{name}.onnx", max_batch=64)
    return directory, layer


def ensure_precision(directory: Path, precision: str, say: Callable[[str], None] = _stderr) -> None:
    """Add a precision's masked-forward graph to a cached export that lacks it (under the cache lock)."""
    precision = PRECISION_GRAPH[precision]
    if precision == "fp32":
        return
    with cache_lock(directory):
        if precision not in Manifest.load(directory).extra.get("precisions", {}):
            from .export.precision import add_precision

            say(f"unioncam: adding {precision} masked passes to {directory} (first use)")
            add_precision(directory, precision)


def open_explainer(req: ModelRequest, *, artifacts: Path | None = None, say: Callable[[str], None] = _stderr,
                   **kwargs):
    """(runtime Explainer, layer): on ``artifacts`` as given (verified, never re-exported), else on the
    cached export; a cache entry the Explainer refuses (corrupt, tampered, stale engine) is exported
    again, once. ``kwargs`` go to :class:`unioncam.runtime.Explainer`."""
    from .runtime import Explainer
    from .runtime.backends import backend_info

    if artifacts is not None:
        return Explainer(artifacts, **kwargs), req.spec.default_layer
    engines = backend_info(kwargs.get("backend") or "onnxruntime").needs_engines
    if engines:
        from .runtime.backends.tensorrt.engine_file import current_gpu

        if current_gpu() is None:
            raise BackendUnavailableError(
                "--backend tensorrt runs TensorRT engines on an NVIDIA GPU, and none was found here (or cuda-python "
                "is missing); use --backend onnxruntime (the default) or --backend torch on this machine")
    directory, layer = exported(req, engines=engines, say=say)
    try:
        ensure_precision(directory, kwargs.get("precision") or "fp32", say)
        return Explainer(directory, **kwargs), layer
    except UnwritableError:
        raise  # exporting again would not help
    except ArtifactError as e:
        say(f"unioncam: cached export is unusable ({e}); exporting again")
        exported(req, engines=engines, force=True, say=say)
        ensure_precision(directory, kwargs.get("precision") or "fp32", say)
        return Explainer(directory, **kwargs), layer
