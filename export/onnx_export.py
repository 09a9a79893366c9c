"""GraphModule / nn.Module -> ONNX file, with clean-ups TensorRT's parser needs and full checks."""
from __future__ import annotations

import logging
import re
import warnings
from pathlib import Path

import torch

from unioncam.errors import ExportError, UnsupportedOpError

# Ops whose trailing outputs are optional in ONNX; an unused one is dropped (TensorRT rejects
# MaxPool's "Indices" output, and the exporter emits it even when nothing reads it).
_OPTIONAL_TRAILING_OUTPUTS = {"MaxPool", "BatchNormalization", "Dropout"}


def strip_unused_optional_outputs(model) -> int:
    """Remove unused trailing outputs of MaxPool/BatchNormalization/Dropout nodes in place.

    Returns:
        The number of outputs removed.
    """
    import onnx  # noqa: F401

    used = {i for n in model.graph.node for i in n.input} | {o.name for o in model.graph.output}
    for f in model.functions:
        used |= {i for n in f.node for i in n.input}
    removed = 0
    for node in model.graph.node:
        if node.op_type not in _OPTIONAL_TRAILING_OUTPUTS:
            continue
        while len(node.output) > 1 and node.output[-1] not in used:
            node.output.pop()
            removed += 1
    return removed


def check(path: Path) -> None:
    """``onnx.checker`` with full checks: the graph, then strict, type-checking shape inference.

    ``full_check`` on a path already runs shape inference with ``check_type`` and strict errors (the
    C++ checker's ``ShapeInferenceOptions{true, 1, false}``); a second ``infer_shapes_path`` re-read
    the file and wrote a copy of it (for VGG16, 550 MB per graph) to find nothing new.
    """
    import onnx

    try:
        onnx.checker.check_model(str(path), full_check=True)
    except Exception as e:
        raise ExportError(f"exported graph {path.name} fails onnx.checker: {e}") from None


def check_loads(path: Path) -> None:
    """Open ``path`` in an ONNX Runtime CPU session: a graph counts as exported only once the runtime
    that users run accepts it (onnx.checker accepts graphs ONNX Runtime refuses, such as two nodes
    with one name)."""
    import onnxruntime as ort

    so = ort.SessionOptions()
    so.log_severity_level = 3
    # Graph optimisation off: the check is that the graph loads; optimising it is the runtime's work.
    so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    try:
        ort.InferenceSession(str(path), so, providers=["CPUExecutionProvider"])
    except Exception as e:  # onnxruntime raises its own Fail / InvalidGraph types
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise ExportError(f"the exported graph {Path(path).name} does not load in ONNX Runtime "
                          f"{ort.__version__}: {first}") from None


def _unsupported_op_message(err: Exception, model=None, layer_name: str | None = None) -> str | None:
    """'unsupported op aten.xxx (layer ...)' from an export error, or None if the error is another one.

    Backward ops run outside any module's forward, so the layer is found by matching the op's name
    to module class names (``fractional_max_pool2d`` -> ``FractionalMaxPool2d``).
    """
    m = re.search(r"OpOverload\(op='([\w.]+)', overload='(\w+)'\)", str(err))
    if not m:
        return None
    op_name = f"{m.group(1)}.{m.group(2)}"
    base = m.group(1).split(".")[-1].removesuffix("_backward").lstrip("_").replace("_", "").lower()
    layers = []
    if model is not None:
        for name, mod in model.named_modules():
            cls = type(mod).__name__.lower()
            if name and (cls == base or cls.replace("2d", "") == base.replace("2d", "")):
                layers.append(name)
    if layers:
        where = f" in layer {', '.join(layers[:5])}"
    else:
        where = f" in the layers after {layer_name!r}" if layer_name else ""
    return f"unsupported op {op_name}{where}: it has no ONNX translation or decomposition in unioncam's exporter"


def stamp(model_proto, metadata: dict | None) -> None:
    """Set ``metadata`` (:mod:`unioncam.graph_identity`'s keys) in an ONNX model's ``metadata_props``,
    replacing earlier values of those keys."""
    if not metadata:
        return
    kept = [p for p in model_proto.metadata_props if p.key not in metadata]
    del model_proto.metadata_props[:]
    model_proto.metadata_props.extend(kept)
    for key, value in metadata.items():
        entry = model_proto.metadata_props.add()
        entry.key, entry.value = key, str(value)


def export_onnx(fn: torch.nn.Module, example_inputs: tuple, path: Path, *, input_names, output_names,
                dynamic_shapes, opset: int, model=None, layer_name=None, metadata: dict | None = None) -> None:
    """Export ``fn`` with the dynamo exporter, strip unusable outputs, stamp ``metadata``, save, check."""
    import onnx

    # The exporter logs a warning per missing torchvision op on every call; none matter here.
    logging.getLogger("torch.onnx._internal.exporter._registration").setLevel(logging.ERROR)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        try:
            program = torch.onnx.export(
                fn, example_inputs, input_names=list(input_names), output_names=list(output_names),
                dynamic_shapes=dynamic_shapes, dynamo=True, opset_version=opset, optimize=True, verbose=False,
            )
        except Exception as e:
            msg = _unsupported_op_message(e, model, layer_name)
            if msg:
                raise UnsupportedOpError(msg) from None
            root = e
            while root.__cause__ is not None:
                root = root.__cause__
            first = str(root).strip().splitlines()[0] if str(root).strip() else type(root).__name__
            raise ExportError(f"torch.onnx.export failed for {path.name}: {type(root).__name__}: {first}") from e
    model = program.model_proto
    strip_unused_optional_outputs(model)
    stamp(model, metadata)
    onnx.save_model(model, str(path))
    check(path)
