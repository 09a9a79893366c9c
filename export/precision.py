"""Cheaper masked passes: FP16 and INT8 variants of ``masked_forward.onnx``.

The masked passes are nearly all of UnionCAM's cost (one per channel against one gradient pass),
so only that graph gets variants; the gradient graph stays FP32. Inside the variant, the network
runs in the lower precision while the mask algebra (``up``, ``minmax``, the constant test: every
node that depends on ``maps`` but not on ``image``) and the softmax with what follows stay FP32:
small differences there change which pixels a mask keeps and the scores AMS compares.

- ``fp16``: weights and activations in float16, inputs and outputs float32 (ONNX Runtime's
  ``float16`` converter with those nodes blocked). For ONNX Runtime CUDA and TensorRT, which is
  strongly typed here (TensorRT-RTX), so the precision has to be in the graph.
- ``int8``: ONNX Runtime static quantisation in QDQ format (TensorRT reads QDQ too), per-channel
  weights, calibrated on masked inputs of real photos: each photo's own activation maps as masks.
"""
from __future__ import annotations

import contextlib
from pathlib import Path

import numpy as np

from unioncam.errors import ExportError

from .onnx_export import check_loads

#: File of each precision's masked-forward graph in an artifact folder.
VARIANTS = {"fp16": "masked_forward.fp16.onnx", "int8": "masked_forward.int8.onnx"}


def fp32_nodes(model) -> list[str]:
    """Names of the nodes that stay FP32: the mask algebra, and the softmax and everything after it."""
    deps: dict[str, set] = {i.name: {i.name} for i in model.graph.input}
    producer = {}
    for node in model.graph.node:
        d = set()
        for name in node.input:
            d |= deps.get(name, set())
        for name in node.output:
            deps[name] = d
            producer[name] = node
    keep = []
    tail = set()
    for node in model.graph.node:
        d = set()
        for name in node.input:
            d |= deps.get(name, set())
        if node.op_type == "Softmax" or any(name in tail for name in node.input):
            tail.update(node.output)
            keep.append(node.name)
        elif "maps" in d and "image" not in d:
            keep.append(node.name)
    if not any(model.graph.node[i].op_type == "Softmax" for i in range(len(model.graph.node))):
        raise ExportError("the masked-forward graph has no Softmax node; re-export it with this version")
    return keep


def float16_converter():
    """The installed onnxruntime's ``convert_float_to_float16``: its output differs by version (1.31's
    repeats a Cast node per consumer, with one name and one output), so :func:`repair_graph` follows it."""
    from onnxruntime.transformers.float16 import convert_float_to_float16

    return convert_float_to_float16


def repair_graph(model) -> int:
    """Make a converted graph valid whatever the converter did: drop a node identical to an earlier
    one (same op, inputs, outputs and attributes: the same value computed twice), give every other
    node a unique name, and keep one ``value_info`` per tensor. Returns the nodes dropped or renamed."""
    seen_nodes, names, kept, changed = set(), set(), [], 0
    for node in model.graph.node:
        key = node.SerializeToString(deterministic=True)
        if key in seen_nodes:
            changed += 1
            continue
        seen_nodes.add(key)
        if node.name in names:
            base, i = node.name, 1
            while f"{base}_{i}" in names:
                i += 1
            node.name = f"{base}_{i}"
            changed += 1
        names.add(node.name)
        kept.append(node)
    if changed:
        del model.graph.node[:]
        model.graph.node.extend(kept)
    infos, unique = set(), []
    for vi in model.graph.value_info:
        if vi.name not in infos:
            infos.add(vi.name)
            unique.append(vi)
    if len(unique) != len(model.graph.value_info):
        del model.graph.value_info[:]
        model.graph.value_info.extend(unique)
    return changed


def to_fp16(src: Path, dst: Path) -> None:
    import onnx

    model = onnx.load(str(src))
    half = float16_converter()(model, keep_io_types=True, node_block_list=fp32_nodes(model))
    repair_graph(half)
    onnx.save_model(half, str(dst))


def calibration_feeds(artifact_dir: Path, images: np.ndarray, maps_per_call: int = 16, calls_per_image: int = 4):
    """Feeds of ``masked_forward.onnx`` for calibration: each image with chunks of its own
    activation maps (from the gradient graph), spread over the non-constant channels."""
    import onnxruntime as ort

    from unioncam.algebra import constant_channels

    grad = ort.InferenceSession(str(artifact_dir / "gradient.onnx"), providers=["CPUExecutionProvider"])
    feeds = []
    for x in images:
        x = x[None].astype(np.float32)
        logits, A = grad.run(["logits", "activations"], {"image": x, "class_idx": np.array([-1], np.int64)})
        live = np.flatnonzero(~constant_channels(A)[0])
        picks = live[np.linspace(0, live.size - 1, min(live.size, maps_per_call * calls_per_image)).astype(int)]
        for chunk in np.array_split(picks, max(1, picks.size // maps_per_call)):
            feeds.append({"image": x, "maps": np.ascontiguousarray(A[:, chunk]),
                          "class_idx": logits.argmax(1).astype(np.int64)})
    return feeds


@contextlib.contextmanager
def _quantizer_quiet():
    """ONNX Runtime's quantiser advises pre-processing through the root logger ("WARNING:root:Please
    consider to run pre-processing ...", with URLs): our graphs are already shape-inferred, so the
    advice is noise, shown only with ``--verbose``. A handler on the root logger for the call keeps
    ``logging.warning`` from installing its own (basicConfig), which would print it."""
    import logging

    from unioncam.verbosity import verbose

    if verbose():
        yield
        return
    root = logging.getLogger()
    handler = logging.NullHandler()

    def from_quantizer(record) -> bool:
        return "/onnxruntime/quantization/" not in record.pathname.replace("\\", "/")

    root.addHandler(handler)
    root.addFilter(from_quantizer)
    try:
        yield
    finally:
        root.removeFilter(from_quantizer)
        root.removeHandler(handler)


def to_int8(src: Path, dst: Path, feeds: list[dict]) -> None:
    import onnx
    from onnxruntime.quantization import CalibrationDataReader, QuantFormat, QuantType, quantize_static

    class Reader(CalibrationDataReader):
        def __init__(self):
            self.it = iter(feeds)

        def get_next(self):
            return next(self.it, None)

    model = onnx.load(str(src))
    with _quantizer_quiet():
        quantize_static(str(src), str(dst), Reader(), quant_format=QuantFormat.QDQ, per_channel=True,
                        activation_type=QuantType.QUInt8, weight_type=QuantType.QInt8,
                        nodes_to_exclude=fp32_nodes(model), op_types_to_quantize=["Conv", "MatMul", "Gemm"])


def _stamp_variant(src: Path, dst: Path, precision: str, source_sha256: str) -> None:
    """Give the variant at ``dst`` its source's fingerprint, its precision and the SHA-256 of the FP32
    graph it was made from (converters do not all keep ``metadata_props``)."""
    import onnx

    from unioncam import graph_identity as gid

    from .onnx_export import stamp

    model = onnx.load(str(dst))
    stamp(model, {**gid.fingerprint(src), gid.PRECISION: precision, gid.SOURCE: source_sha256})
    onnx.save_model(model, str(dst))


def add_precision(artifact_dir: str | Path, precision: str, *, calibration_images: np.ndarray | None = None) -> Path:
    """Write ``precision``'s masked-forward graph into an exported folder and record it in the
    manifest (``files`` gets its SHA-256, ``extra["precisions"]`` its name). Atomic per file.

    Args:
        precision: ``"fp16"`` or ``"int8"`` (``"fp32"`` is the export itself: nothing to do).
        calibration_images: (N, 3, H, W) float32 in [0, 1] for INT8 (default: the bundled photos).

    Returns:
        The variant's path.
    """
    import os
    import tempfile

    from unioncam.artifacts import MANIFEST, MASKED_ONNX, Manifest, sha256_file
    from unioncam.atomic import default_mode, write_text
    from unioncam.validation import check_precision

    d = Path(artifact_dir)
    precision = check_precision(precision)
    manifest = Manifest.load(d)
    manifest.verify(d)
    if precision == "fp32":
        return d / MASKED_ONNX
    fd, tmp = tempfile.mkstemp(prefix=f".{VARIANTS[precision]}.", suffix=".tmp", dir=d)
    os.close(fd)
    tmp = Path(tmp)
    try:
        if precision == "fp16":
            to_fp16(d / MASKED_ONNX, tmp)
        else:
            if calibration_images is None:
                from unioncam.image_io import read_rgb, sample_image_path, to_model_input

                calibration_images = np.stack([to_model_input(read_rgb(sample_image_path(n)), manifest.input_size)
                                               for n in ("chelsea", "coffee")])
            to_int8(d / MASKED_ONNX, tmp, calibration_feeds(d, calibration_images))
        _stamp_variant(d / MASKED_ONNX, tmp, precision, manifest.files[MASKED_ONNX])
        check_loads(tmp)  # never written as done unless ONNX Runtime accepts it
        os.chmod(tmp, default_mode())
        os.replace(tmp, d / VARIANTS[precision])
    except ExportError:
        raise
    except Exception as e:
        raise ExportError(f"could not make the {precision} masked-forward graph: {type(e).__name__}: "
                          f"{str(e).strip().splitlines()[0] if str(e).strip() else ''}") from None
    finally:
        tmp.unlink(missing_ok=True)
    manifest.files[VARIANTS[precision]] = sha256_file(d / VARIANTS[precision])
    manifest.extra.setdefault("precisions", {})[precision] = VARIANTS[precision]
    # The load check compares these records with the variant's own (unioncam.graph_identity): a
    # quantised graph's numbers are no identity (INT8 can move a black image's score by 0.4).
    manifest.extra.setdefault("variants", {})[precision] = {
        "source_sha256": manifest.files[MASKED_ONNX], "num_classes": manifest.num_classes,
        "input_size": list(manifest.input_size)}
    write_text(d / MANIFEST, manifest.to_json())
    return d / VARIANTS[precision]
