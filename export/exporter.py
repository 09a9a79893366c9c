"""``export(model, target_layer, out_dir)``: gradient graph, masked-forward graph and manifest."""
from __future__ import annotations

import time
from pathlib import Path

import torch
from torch import nn

from unioncam import __version__
from unioncam import graph_identity as gid
from unioncam.artifacts import GRADIENT_ONNX, MANIFEST, MASKED_ONNX, Manifest, atomic_directory, sha256_file
from unioncam.errors import ExportError, InvalidInputError, LayerNotFoundError, UnsupportedOpError
from unioncam.methods.hooks import ActivationTap, check_model, eval_mode, resolve_layer
from unioncam.methods.passes import check_logits
from unioncam.reshape import parse_reshape
from unioncam.validation import MAX_GRAPH_BATCH, check_input_size, check_opset

from .graphs import GradientFunction, MaskedForward, trace
from .onnx_export import check_loads, export_onnx

DEFAULT_OPSET = 18
# Upper bounds of the dynamic dimensions declared to the exporter (not a limit of ONNX Runtime).
MAX_BATCH = MAX_GRAPH_BATCH


class _Call(nn.Module):
    """Holds a traced GraphModule as a module the ONNX exporter can take."""

    def __init__(self, gm):
        super().__init__()
        self.gm = gm

    def forward(self, image, class_idx):
        return self.gm(image, class_idx)


class _Call3(nn.Module):
    """A traced masked-forward GraphModule as a module the ONNX exporter can take."""

    def __init__(self, gm):
        super().__init__()
        self.gm = gm

    def forward(self, image, maps, class_idx):
        return self.gm(image, maps, class_idx)


def _probe(model: nn.Module, layer_name: str, layer: nn.Module, input_size: tuple[int, int], reshape=None):
    """One forward pass on a small batch to learn C, K, h, w and catch unusable models early."""
    H, W = input_size
    x = torch.rand(2, 3, H, W, generator=torch.Generator().manual_seed(0))
    raw = []
    hook = layer.register_forward_hook(lambda m, i, out: raw.append(tuple(out.shape)) if torch.is_tensor(out) else None)
    try:
        with torch.no_grad(), ActivationTap(layer_name, layer, requires_grad=False, reshape=reshape) as tap:
            logits = check_logits(model(x), 2)
    except (LayerNotFoundError, InvalidInputError):
        raise
    except RuntimeError as e:
        first = str(e).strip().splitlines()[0]
        raise ExportError(f"the model cannot run on a (2, 3, {H}, {W}) input ({first}); check --input-size") from None
    finally:
        hook.remove()
    if reshape is not None and raw:
        reshape.check_fits(layer_name, raw[0], (H, W))
    if tap.activations is None:
        raise LayerNotFoundError(f"layer {layer_name!r} did not run in the forward pass; choose a layer on the path to the logits")
    _, K, h, w = tap.activations.shape
    return x, int(logits.shape[1]), int(K), (int(h), int(w))


def export(
    model: nn.Module,
    target_layer: str | nn.Module,
    out_dir: str | Path,
    *,
    input_size: tuple[int, int] = (224, 224),
    opset: int = DEFAULT_OPSET,
    model_name: str | None = None,
    mean=None,
    std=None,
    reshape: str | None = None,
    owned: bool = False,
) -> Manifest:
    """Export ``model`` around ``target_layer`` into ``out_dir`` (written atomically).

    ``out_dir`` is replaced only when absent, empty or a previous export, unless ``owned`` (the
    export cache's own entry, whose damaged manifest would otherwise make it look like a user's).

    Writes ``gradient.onnx`` (image (B,3,H,W) float32 in [0,1], class_idx (B,) int64 -> logits (B,C),
    activations (B,K,h,w), gradients (B,K,h,w) = d logits[b, class_idx[b]] / d activations),
    ``masked_forward.onnx`` (image (B,3,H,W), maps (B,M,h',w'), class_idx (B,) -> scores (B,M)) and
    ``manifest.json``.

    Args:
        model: ``nn.Module`` taking RGB in [0, 1] (normalisation inside) and returning (B, C) logits.
        target_layer: dotted name or module; its output must be (B, K, h, w).
        input_size: (H, W) the graphs are specialised to.
        mean, std: recorded in the manifest (the normalisation baked into ``model``), if known.
        reshape: a transformer's layer output as (B, D, h, w) maps (:mod:`unioncam.reshape`);
            part of the gradient graph, so the runtime needs nothing new; recorded in the manifest.

    Returns:
        The written :class:`Manifest`.

    Raises:
        LayerNotFoundError, ExportError (unsupported op, named with its layer; unwritable folder;
        input too small), ArtifactError.
    """
    (H, W), opset, (layer_name, layer), reshape = _checked(model, target_layer, input_size, opset, reshape)
    timings = {}
    with eval_mode(model), atomic_directory(out_dir, owned=owned) as tmp:
        x, C, K, (h, w) = _probe(model, layer_name, layer, (H, W), reshape)
        identity = model_identity(model, layer_name, (H, W), reshape, C)
        c = torch.tensor([0, min(1, C - 1)], dtype=torch.int64)
        common = {"opset": opset, "model": model, "layer_name": layer_name}
        t = time.perf_counter()
        _export_gradient(GradientFunction(model, layer_name, layer, reshape), (x, c), tmp, identity, common)
        timings["gradient_s"] = time.perf_counter() - t
        t = time.perf_counter()
        _export_masked(MaskedForward(model, (H, W)).eval(), x, c, (h, w), tmp, identity, common)
        timings["masked_forward_s"] = time.perf_counter() - t
        for name in (GRADIENT_ONNX, MASKED_ONNX):
            check_loads(tmp / name)  # an export is done only once ONNX Runtime accepts its graphs
        manifest = _manifest(model, x, tmp, identity, timings, model_name=model_name or type(model).__name__,
                             layer=layer_name, input_size=(H, W), channels=K, feature_size=(h, w), num_classes=C,
                             mean=mean, std=std, opset=opset, reshape=reshape)
        (tmp / MANIFEST).write_text(manifest.to_json())
    return manifest


def _checked(model: nn.Module, target_layer, input_size, opset: int, reshape):
    """The export's arguments, checked: (H, W), opset, (layer name, layer), reshape."""
    check_model(model)
    size = check_input_size(input_size, "input_size")
    param = next(model.parameters(), None)
    if param is not None and param.dtype != torch.float32:
        raise ExportError(f"export needs a float32 model, got {param.dtype}: call model.float()")
    return size, check_opset(opset), resolve_layer(model, target_layer), parse_reshape(reshape)


def _manifest(model, x, tmp: Path, identity: dict, timings: dict, *, model_name, mean, std, reshape,
              **facts) -> Manifest:
    """The manifest of the graphs in ``tmp``: their digests, the model's facts, how they were made."""
    return Manifest(
        model=model_name, **facts, mean=list(mean) if mean is not None else None,
        std=list(std) if std is not None else None,
        files={n: sha256_file(tmp / n) for n in (GRADIENT_ONNX, MASKED_ONNX)}, exporter_version=__version__,
        torch_version=torch.__version__,
        extra={"export_timings_s": timings, "forward_flops": forward_flops(model, x[:1]),
               "fingerprint": {"weights_sha256": identity[gid.WEIGHTS]},
               **({"reshape": reshape.spec} if reshape is not None else {})})


def _batch_dim():
    return torch.export.Dim("batch", min=1, max=MAX_BATCH)


def _export_gradient(grad_fn, args, tmp: Path, identity: dict, common: dict) -> None:
    """``gradient.onnx``: the traced gradient function (below the layer, every op differentiated)."""
    layer_name = common["layer_name"]
    try:
        gm = trace(grad_fn, args)
    except (LayerNotFoundError, InvalidInputError):
        raise
    except NotImplementedError as e:
        raise ExportError(f"cannot differentiate the layers after {layer_name!r}: {e}") from None
    except Exception as e:
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise ExportError(f"tracing the gradient of {layer_name!r} failed: {type(e).__name__}: {first}") from None
    batch = _batch_dim()
    export_onnx(_Call(gm).eval(), args, tmp / GRADIENT_ONNX, input_names=["image", "class_idx"],
                output_names=["logits", "activations", "gradients"], dynamic_shapes=({0: batch}, {0: batch}),
                metadata={**identity, gid.GRAPH: "gradient"}, **common)


def _export_masked(masked: nn.Module, x, c, feature: tuple[int, int], tmp: Path, identity: dict,
                   common: dict) -> None:
    """``masked_forward.onnx``: the batched masked forward, maps of any count and size."""
    (h, w), (H, W) = feature, tuple(x.shape[2:])
    # M differs from every other example size: symbolic tracing gives equal sizes one symbol, and
    # M = 3 would be tied to the image's 3 channels (the traced fallback below would fix M = 3).
    m = next(v for v in range(5, 64) if v not in (2, 3, h, w, H, W))
    maps = torch.rand(2, m, h, w, generator=torch.Generator().manual_seed(1))
    batch = _batch_dim()
    dims = ({0: batch}, {0: batch, 1: torch.export.Dim("maps", min=1, max=MAX_BATCH),
                         2: torch.export.Dim("map_h", min=1, max=max(H, h) + 1),
                         3: torch.export.Dim("map_w", min=1, max=max(W, w) + 1)}, {0: batch})
    kw = {"input_names": ["image", "maps", "class_idx"], "output_names": ["scores"], "dynamic_shapes": dims,
          "metadata": {**identity, gid.GRAPH: "masked_forward"}, **common}
    try:
        export_onnx(masked, (x, maps, c), tmp / MASKED_ONNX, **kw)
    except UnsupportedOpError as e:
        # Forward ops torch.onnx cannot translate (uneven adaptive max pooling) may have one of
        # our decompositions: trace below them, as the gradient graph is, and export that.
        # Only then: the direct export is what every other model gets, measured and tested.
        try:
            gm = trace(masked, (x, maps, c))
        except Exception:
            raise e from None
        export_onnx(_Call3(gm).eval(), (x, maps, c), tmp / MASKED_ONNX, **kw)


def model_identity(model: nn.Module, layer_name: str, input_size, reshape, num_classes: int) -> dict:
    """The fingerprint every graph of this export carries (:mod:`unioncam.graph_identity`)."""
    from unioncam.models.factory import state_key

    H, W = input_size
    return {gid.WEIGHTS: state_key(model), gid.LAYER: layer_name, gid.INPUT_SIZE: f"{H}x{W}",
            gid.RESHAPE: reshape.spec if reshape is not None else "", gid.NUM_CLASSES: str(num_classes)}


def forward_flops(model: nn.Module, x: torch.Tensor) -> int | None:
    """FLOPs of one forward pass on ``x`` (1, 3, H, W), counted by torch's FlopCounterMode (2 per
    multiply-add of convolutions and matrix products). Stored in the manifest so that any artifact
    folder can report achieved GFLOP/s."""
    try:
        from torch.utils.flop_counter import FlopCounterMode

        with torch.no_grad(), FlopCounterMode(display=False) as counter:
            model(x)
        return int(counter.get_total_flops())
    except Exception:  # counting is a report, never a reason to fail an export
        return None


def graph_stats(path: str | Path) -> dict:
    """Size in bytes and op counts of an ONNX file (for reports)."""
    import collections

    import onnx

    m = onnx.load(str(path), load_external_data=False)
    ops = collections.Counter(n.op_type for n in m.graph.node)
    return {"bytes": Path(path).stat().st_size, "nodes": sum(ops.values()), "ops": dict(sorted(ops.items()))}


