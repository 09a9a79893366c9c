"""What a served request holds and what its answer holds: the tensors, their names, dtypes and
shapes, checked by the same rules as the CLI and the Python API. Torch-free and KServe-free: the
server (:mod:`unioncam.serve.model`) and the client (:mod:`unioncam.serve.client`) share it.

Inputs (one of ``image`` / ``input``; ``class`` optional):

=========  =======  ================  ==================================================
name       dtype    shape             holds
=========  =======  ================  ==================================================
image      BYTES    [B]               encoded images (JPEG, PNG; the CLI's decoder)
input      FP32     [B, 3, H, W]      the model's input in [0, 1]
class      INT64    [B] or [1]        class indices; or BYTES, ImageNet names
=========  =======  ================  ==================================================

Outputs: ``cam`` FP32 [B, H, W] in [0, 1]; ``class_idx`` INT64 [B]; ``score`` FP32 [B];
``beta_denoising``, ``beta_region``, ``beta_de_region`` FP32 [B] and ``selected`` BYTES [B]
(UnionCAM only); ``logits`` FP32 [B, C]; ``overlay`` BYTES [B] (PNG; with ``overlay=true``).
The answer's parameters carry the server's settings and, as JSON, the timings and counters.

Request parameters: ``method``, ``max_passes`` (a positive int, or ``"exact"``), ``theta``,
``overlay`` (bool), ``class`` (one class for every image). Nothing in a request names a file, a
path, a module or a factory: any other parameter is refused.
"""
from __future__ import annotations

import json
from dataclasses import dataclass, field

import numpy as np

from ..errors import InvalidInputError

#: Input names (:mod:`unioncam.serve`): encoded images, or the model's input tensor; optional classes.
IMAGE, TENSOR, CLASS = "image", "input", "class"
#: Outputs in the order an answer lists them.
OUTPUTS = ("cam", "class_idx", "score", "beta_denoising", "beta_region", "beta_de_region", "selected", "logits",
           "overlay")
UNIONCAM_ONLY = ("beta_denoising", "beta_region", "beta_de_region", "selected")
#: Request parameters a client may set.
PARAMETERS = ("method", "max_passes", "theta", "overlay", "class")
#: Parameters that the v2 protocol's clients (tritonclient, KServe's) set themselves: accepted, not used.
PROTOCOL_PARAMETERS = ("binary_data_output", "binary_data", "binary_data_size", "sequence_id", "sequence_start",
                       "sequence_end", "priority", "timeout", "headers", "content_type")


@dataclass
class Request:
    """One request, checked: images (B, 3, H, W) float32 in [0, 1], the photos for overlays, the
    classes (None: predicted) and the per-request options."""

    images: np.ndarray
    rgbs: list | None = None
    class_idx: np.ndarray | None = None
    method: str | None = None
    max_passes: int | None | str = "default"
    theta: float | None = None
    overlay: bool = False
    names: list = field(default_factory=list)


def _as_bool(value, name: str) -> bool:
    if isinstance(value, bool):
        return value
    if isinstance(value, str) and value.strip().lower() in ("true", "false", "1", "0"):
        return value.strip().lower() in ("true", "1")
    if isinstance(value, (int, np.integer)) and value in (0, 1):
        return bool(value)
    raise InvalidInputError(f"parameter {name!r} must be true or false, got {value!r}")


#: The most elements one input may declare (a photo's bytes travel as one element).
MAX_ELEMENTS = 1 << 28


def check_shape(name: str, shape) -> tuple[int, ...]:
    """An input's declared shape: a list of positive integers (no -1: a request says what it sends),
    checked before any element is looked at.

    Example:
        >>> check_shape("image", [1])
        (1,)
    """
    dims = list(shape) if isinstance(shape, (list, tuple)) else None
    if (not dims or len(dims) > 4 or any(isinstance(d, bool) or not isinstance(d, (int, np.integer)) or d < 1
                                         for d in dims)):
        raise InvalidInputError(f"input {name!r}: shape must be 1 to 4 positive integers, got {shape!r}")
    if int(np.prod([int(d) for d in dims], dtype=object)) > MAX_ELEMENTS:
        raise InvalidInputError(f"input {name!r}: shape {list(dims)} declares more than {MAX_ELEMENTS} elements")
    return tuple(int(d) for d in dims)


def parse_parameters(parameters: dict | None) -> dict:
    """The request's parameters, checked by the library's own validation.

    Example:
        >>> parse_parameters({"max_passes": "64", "overlay": "true", "method": "unioncam"})
        {'max_passes': 64, 'overlay': True, 'method': 'unioncam'}
    """
    from ..validation import check_max_passes, check_method, check_theta

    out: dict = {}
    for key, value in (parameters or {}).items():
        if key in PROTOCOL_PARAMETERS:
            continue
        if key not in PARAMETERS:
            raise InvalidInputError(f"unknown parameter {key!r}; this server accepts {', '.join(PARAMETERS)}")
        if key == "method":
            if not isinstance(value, str):
                raise InvalidInputError(f"parameter 'method' must be a method's name, got {value!r}")
            out["method"] = check_method(value.strip().lower())
        elif key == "max_passes":
            if isinstance(value, str) and value.strip().lower() == "exact":
                out["max_passes"] = None
            else:
                if isinstance(value, str) and value.strip().lstrip("+").isdigit():
                    value = int(value)
                if isinstance(value, float) and value.is_integer():
                    value = int(value)
                out["max_passes"] = check_max_passes(value)
        elif key == "theta":
            if isinstance(value, bool):  # JSON true is not a number
                raise InvalidInputError(f"parameter 'theta' must be a number in [0, 100], got {value!r}")
            try:
                out["theta"] = check_theta(float(value))
            except (TypeError, ValueError) as e:
                raise InvalidInputError(f"parameter 'theta' must be a number in [0, 100], got {value!r}") from e
        elif key == "overlay":
            out["overlay"] = _as_bool(value, "overlay")
        elif key == "class":
            out["class"] = value
    return out


def v1_inputs(body: dict) -> tuple[dict, dict, dict]:
    """A v1 body as named inputs, their v2 dtypes, and the parameters: ``{"instances": [...]}``, each
    an image ``{"b64": ...}`` (or ``{"image_bytes": {"b64": ...}}``), ``{"input": (3, H, W) lists}``
    or the lists alone, each optionally with ``"class"``; optional top-level ``"parameters"``.

    Example:
        >>> inputs, dtypes, params = v1_inputs({"instances": [{"b64": "iVBO", "class": 281}]})
        >>> sorted(inputs), dtypes["image"], inputs["class"].tolist(), params
        (['class', 'image'], 'BYTES', [281], {})
    """
    import base64
    import binascii

    instances = body.get("instances", body.get("inputs"))
    if not isinstance(instances, list) or not instances:
        raise InvalidInputError('send {"instances": [...]}: each an image {"b64": "<base64 JPEG or PNG>"} '
                                "or the model's input as nested lists (3, H, W) in [0, 1]")
    blobs, tensors, classes = [], [], []
    for i, inst in enumerate(instances):
        cls = None
        if isinstance(inst, dict):
            cls = inst.get("class")
            extra = sorted(set(inst) - {"b64", "image_bytes", "class", "input"})
            if extra:
                raise InvalidInputError(f"instance {i} has the unknown key {extra[0]!r}; use b64 (or "
                                        "image_bytes.b64), input, class")
            blob = inst.get("image_bytes", inst)
            if isinstance(blob, dict) and "b64" in blob:
                try:
                    blobs.append(base64.b64decode(blob["b64"], validate=True))
                except (binascii.Error, ValueError, TypeError):
                    raise InvalidInputError(f"instance {i}: 'b64' is not valid base64") from None
            elif "input" in inst:
                tensors.append(inst["input"])
            else:
                raise InvalidInputError(f"instance {i} holds no image: give b64 or input")
        else:
            tensors.append(inst)
        classes.append(cls)
    if blobs and tensors:
        raise InvalidInputError("mix of encoded images and tensors in one request; send one kind")
    if blobs:
        inputs, datatypes = {IMAGE: np.array(blobs, dtype=object)}, {IMAGE: "BYTES"}
    else:
        try:
            array = np.asarray(tensors, dtype=np.float32)
        except (ValueError, TypeError):
            raise InvalidInputError("the instances are not arrays of numbers of one shape (3, H, W)") from None
        inputs, datatypes = {TENSOR: array}, {TENSOR: "FP32"}
    if any(c is not None for c in classes):
        if any(c is None for c in classes):
            raise InvalidInputError("give 'class' in every instance or in none")
        inputs[CLASS] = np.array(classes, dtype=object)
    parameters = body.get("parameters") or {}
    if not isinstance(parameters, dict):
        raise InvalidInputError('"parameters" must be an object')
    return inputs, datatypes, parameters


def parse_classes(value, batch: int, num_classes: int) -> np.ndarray | None:
    """Classes for ``batch`` images from a tensor or a parameter: indices, ImageNet names, or one for all.

    Example:
        >>> parse_classes(["tabby", 281], 2, 1000).tolist()
        [281, 281]
    """
    from ..classes import class_index
    from ..validation import check_class_option, check_classes

    if value is None:
        return None
    values = np.asarray(value, dtype=object).reshape(-1).tolist()
    if len(values) == 1 and batch > 1:
        values = values * batch
    classes = []
    for v in values:
        if isinstance(v, (bytes, bytearray)):
            v = v.decode("utf-8", "replace")
        if isinstance(v, str):
            by_name = not v.strip().lstrip("+-").isdigit()
            v = class_index(v)
            check_class_option(v, num_classes, by_name=by_name)
        elif isinstance(v, (float, np.floating)) and float(v).is_integer():
            v = int(v)
        classes.append(v)
    return check_classes(classes, batch, num_classes)


def decode_images(blobs, size: tuple[int, int], max_pixels: int) -> tuple[np.ndarray, list[np.ndarray]]:
    """Encoded images (a BYTES tensor) as the model's input (B, 3, H, W) float32 and their RGB photos:
    the CLI's decoder and resize, each image's declared size checked before a byte is decoded."""
    from ..image_io import decode_rgb, to_model_input

    blobs = np.asarray(blobs, dtype=object).reshape(-1)
    if blobs.size == 0:
        raise InvalidInputError("input 'image' holds no images; send at least one encoded image")
    rgbs, inputs = [], []
    for i, blob in enumerate(blobs.tolist()):
        if isinstance(blob, str):  # JSON carries no raw bytes: an image there is base64 text
            import base64
            import binascii

            try:
                blob = base64.b64decode(blob, validate=True)
            except (binascii.Error, ValueError):
                raise InvalidInputError(f"input 'image' element {i} is text that is not base64; send the encoded "
                                        "image as base64 in JSON, or as raw bytes (binary data, gRPC)") from None
        if not isinstance(blob, (bytes, bytearray)):
            raise InvalidInputError(f"input 'image' element {i} is {type(blob).__name__}; send encoded image bytes")
        rgb = decode_rgb(bytes(blob), f"image {i} of the request", max_pixels=max_pixels)
        rgbs.append(rgb)
        inputs.append(to_model_input(rgb, size))
    return np.stack(inputs), rgbs


def check_tensor(array, datatype: str, size: tuple[int, int]) -> np.ndarray:
    """The ``input`` tensor: FP32 (B, 3, H, W) in [0, 1], finite (the API's own check)."""
    from ..validation import check_images

    if datatype != "FP32":
        raise InvalidInputError(f"input 'input' must be FP32, got {datatype}; send float32 pixels in [0, 1]")
    return check_images(np.asarray(array), library="numpy", size=size)


def overlay_png(rgb: np.ndarray, cam: np.ndarray) -> bytes:
    """The heatmap over the photo, PNG bytes: the CLI's ``--plain`` overlay, pixel-aligned."""
    import cv2

    from ..image_io import overlay

    ok, buf = cv2.imencode(".png", overlay(rgb, cam))
    if not ok:  # pragma: no cover - OpenCV encodes any uint8 BGR image
        raise InvalidInputError("cannot encode the overlay")
    return buf.tobytes()


def tensor_rgbs(images: np.ndarray) -> list[np.ndarray]:
    """(B, 3, H, W) float32 in [0, 1] as (H, W, 3) uint8 photos, for overlays of tensor inputs."""
    return [np.ascontiguousarray((img.transpose(1, 2, 0) * 255.0).round().astype(np.uint8)) for img in images]


def answer_tensors(exp, rgbs: list | None, overlay: bool) -> list[tuple[str, str, np.ndarray]]:
    """(name, v2 datatype, array) of each output of an :class:`unioncam.Explanation`."""
    out = [("cam", "FP32", np.ascontiguousarray(exp.cam, dtype=np.float32)),
           ("class_idx", "INT64", np.asarray(exp.class_idx, dtype=np.int64)),
           ("score", "FP32", np.asarray(exp.score, dtype=np.float32))]
    if exp.method == "unioncam":
        out += [(k, "FP32", np.asarray(getattr(exp, k), dtype=np.float32))
                for k in ("beta_denoising", "beta_region", "beta_de_region")]
        out.append(("selected", "BYTES", np.array([s.encode() for s in exp.selected], dtype=object)))
    if exp.logits is not None:
        out.append(("logits", "FP32", np.asarray(exp.logits, dtype=np.float32)))
    if overlay:
        out.append(("overlay", "BYTES", np.array([overlay_png(r, c) for r, c in zip(rgbs, exp.cam)], dtype=object)))
    return out


def answer_parameters(exp, settings: dict, request: Request | None = None) -> dict:
    """The answer's parameters: the settings this request ran with (the server's, with the request's
    theta and max_passes where it gave them), the method, and the timings and counters as JSON
    (what a local run's report holds besides the tensors)."""
    stats = {k: (v.tolist() if isinstance(v, np.ndarray) else v) for k, v in exp.stats.items()}
    settings = dict(settings)
    if request is not None and request.theta is not None:
        settings["theta"] = request.theta
    if request is not None and request.max_passes != "default":
        settings["max_passes"] = request.max_passes
    out = {**{k: v for k, v in settings.items() if v is not None}, "method": exp.method,
           "timings_ms": json.dumps(exp.timings_ms), "stats": json.dumps(stats, default=str)}
    # The v2 protocol's parameters are bool, int64 or string: a float travels as its shortest repr.
    return {k: v if isinstance(v, (bool, int, str)) else repr(float(v)) for k, v in out.items()}


def metadata(size: tuple[int, int], num_classes: int) -> tuple[list[dict], list[dict]]:
    """v2 model metadata: (inputs, outputs), each ``{"name", "datatype", "shape"}``; -1 is the batch."""
    H, W = size
    inputs = [{"name": IMAGE, "datatype": "BYTES", "shape": [-1]},
              {"name": TENSOR, "datatype": "FP32", "shape": [-1, 3, H, W]},
              {"name": CLASS, "datatype": "INT64", "shape": [-1]}]
    outputs = [{"name": "cam", "datatype": "FP32", "shape": [-1, H, W]},
               {"name": "class_idx", "datatype": "INT64", "shape": [-1]},
               {"name": "score", "datatype": "FP32", "shape": [-1]},
               *({"name": k, "datatype": "FP32", "shape": [-1]} for k in ("beta_denoising", "beta_region",
                                                                          "beta_de_region")),
               {"name": "selected", "datatype": "BYTES", "shape": [-1]},
               {"name": "logits", "datatype": "FP32", "shape": [-1, num_classes]},
               {"name": "overlay", "datatype": "BYTES", "shape": [-1]}]
    return inputs, outputs
