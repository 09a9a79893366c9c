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

import base64
import binascii
import json
from dataclasses import dataclass, field

import cv2
import numpy as np

from ..classes import class_index
from ..errors import InvalidInputError
from ..image_io import decode_rgb, header_size, overlay, to_model_input
from ..settings import UNSET
from ..validation import check_class_option, check_classes, check_images, check_max_passes, check_method, check_theta

#: Input names (:mod:`unioncam.serve`): encoded images, or the model's input tensor; optional classes.
IMAGE, TENSOR, CLASS = "image", "input", "class"


@dataclass(frozen=True)
class Output:
    """One output of an answer: its name, v2 datatype, shape in terms of the batch ``B``, the
    input's ``H`` x ``W`` and the classes ``C``, and when it is sent."""

    name: str
    datatype: str
    dims: tuple[str, ...]
    when: str = "always"  # "unioncam": UnionCAM's own; "logits": when the runtime gives them; "overlay": asked for

    def shape(self, size: tuple[int, int], num_classes: int) -> list[int]:
        """The metadata's shape, -1 for the batch."""
        known = {"B": -1, "H": size[0], "W": size[1], "C": num_classes}
        return [known[d] for d in self.dims]


#: Every output an answer can hold, in the order it lists them: the one table that the server's
#: metadata, its v1 and v2 answers and the client read.
OUTPUTS = (Output("cam", "FP32", ("B", "H", "W")), Output("class_idx", "INT64", ("B",)),
           Output("score", "FP32", ("B",)),
           *(Output(k, "FP32", ("B",), "unioncam") for k in ("beta_denoising", "beta_region", "beta_de_region")),
           Output("selected", "BYTES", ("B",), "unioncam"), Output("logits", "FP32", ("B", "C"), "logits"),
           Output("overlay", "BYTES", ("B",), "overlay"))
#: NumPy dtypes of the v2 datatypes an answer uses.
NUMPY_DTYPES = {"FP32": np.float32, "INT64": np.int64, "BYTES": object}
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
    max_passes: object = UNSET  # an int, None (exact), or UNSET: the server's
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


def check_declared(name: str, shape, max_batch: int, size: tuple[int, int]) -> tuple[int, ...]:
    """An input's declared shape, checked before any element is looked at: positive integers (no -1:
    a request says what it sends), the batch within ``max_batch``, and ``input`` exactly
    (B, 3, H, W) of the model's size, so that no request can make the server look at more elements
    than one full batch holds.

    Example:
        >>> check_declared("image", [2], 4, (224, 224))
        (2,)
        >>> check_declared("class", [5000], 4, (224, 224))
        Traceback (most recent call last):
        ...
        unioncam.errors.InvalidInputError: input 'class': shape [5000] declares 5000 elements, above this server's limit of 4 images a request (one class per image, or one for all)
    """
    dims = list(shape) if isinstance(shape, (list, tuple)) else None
    if (not dims or len(dims) > 4 or any(isinstance(d, bool) or not isinstance(d, (int, np.integer)) or d < 1
                                         for d in dims)):
        raise InvalidInputError(f"input {name!r}: shape must be 1 to 4 positive integers, got {shape!r}")
    dims = [int(d) for d in dims]
    if name == TENSOR:
        if len(dims) != 4 or dims[1:] != [3, *size]:
            raise InvalidInputError(f"input {name!r}: shape {dims} is not (B, 3, {size[0]}, {size[1]}), the model's "
                                    "input")
        count, what = dims[0], "images"
    else:
        count = int(np.prod(dims, dtype=object))
        what = "elements"
    if count > max_batch:
        raise InvalidInputError(f"input {name!r}: shape {dims} declares {count} {what}, above this server's limit of "
                                f"{max_batch} images a request" + (" (one class per image, or one for all)"
                                                                   if name == CLASS else "; split the request"))
    return tuple(dims)


def binary_tensor(name: str, raw: bytes, datatype: str, shape: tuple[int, ...]) -> np.ndarray:
    """A v2 binary tensor's bytes as an array of its declared shape, every length checked: FP32 and
    INT64 exactly ``prod(shape)`` elements; BYTES each a 4-byte little-endian length and that many
    bytes, ``prod(shape)`` of them and nothing after.

    Example:
        >>> binary_tensor("image", b"\\x02\\x00\\x00\\x00hi", "BYTES", (1,)).tolist()
        [b'hi']
        >>> binary_tensor("image", b"\\x09\\x00\\x00\\x00hi", "BYTES", (1,))
        Traceback (most recent call last):
        ...
        unioncam.errors.InvalidInputError: input 'image': element 0's length prefix says 9 bytes, 2 remain; each BYTES element is a 4-byte little-endian length and that many bytes
    """
    count = int(np.prod(shape, dtype=object))
    if datatype != "BYTES":
        if datatype not in NUMPY_DTYPES:
            raise InvalidInputError(f"input {name!r}: datatype {datatype!r} is not one this server reads (FP32, INT64, "
                                    "BYTES)")
        dtype = np.dtype(NUMPY_DTYPES[datatype])
        if len(raw) != count * dtype.itemsize:
            raise InvalidInputError(f"input {name!r}: {len(raw)} bytes of data, but shape {list(shape)} of {datatype} "
                                    f"takes {count * dtype.itemsize}")
        return np.frombuffer(raw, dtype=dtype).reshape(shape)
    items, at = [], 0
    for i in range(count):
        if len(raw) - at < 4:
            raise InvalidInputError(f"input {name!r}: the data ends before element {i} of the {count} its shape "
                                    f"{list(shape)} declares")
        n = int.from_bytes(raw[at:at + 4], "little")
        if n > len(raw) - at - 4:
            raise InvalidInputError(f"input {name!r}: element {i}'s length prefix says {n} bytes, {len(raw) - at - 4} "
                                    "remain; each BYTES element is a 4-byte little-endian length and that many bytes")
        items.append(raw[at + 4:at + 4 + n])
        at += 4 + n
    if at != len(raw):
        raise InvalidInputError(f"input {name!r}: {len(raw) - at} bytes follow the {count} elements its shape "
                                f"{list(shape)} declares")
    out = np.empty(count, dtype=object)
    out[:] = items
    return out.reshape(shape)


def _method(value) -> str:
    if not isinstance(value, str):
        raise InvalidInputError(f"parameter 'method' must be a method's name, got {value!r}")
    return check_method(value.strip().lower())


def _max_passes(value) -> int | None:
    if isinstance(value, str) and value.strip().lower() == "exact":
        return None
    if isinstance(value, str) and value.strip().lstrip("+").isdigit():
        value = int(value)
    if isinstance(value, float) and value.is_integer():
        value = int(value)
    if isinstance(value, bool) or not isinstance(value, int):
        raise InvalidInputError(f"parameter 'max_passes' must be a positive integer or \"exact\", got {value!r}")
    return check_max_passes(value)


def _theta(value) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float, str)):  # JSON true is not a number
        raise InvalidInputError(f"parameter 'theta' must be a number in [0, 100], got {value!r}")
    try:
        return check_theta(float(value))
    except ValueError as e:
        raise InvalidInputError(f"parameter 'theta' must be a number in [0, 100], got {value!r}") from e


#: Request parameters a client may set, each with its one parser: the typed schema of every
#: parameter (a bool is not a number; text that spells a number or a bool is read as one, as the v2
#: protocol's string parameters need).
PARAMETER_TYPES = {"method": _method, "max_passes": _max_passes, "theta": _theta,
                   "overlay": lambda v: _as_bool(v, "overlay"), "class": lambda v: v}


def parse_parameters(parameters: dict | None) -> dict:
    """The request's parameters, each by its parser in :data:`PARAMETER_TYPES` (the library's own
    checks); the v2 protocol's own are passed over, any other is refused.

    Example:
        >>> parse_parameters({"max_passes": "64", "overlay": "true", "method": "unioncam"})
        {'max_passes': 64, 'overlay': True, 'method': 'unioncam'}
    """
    if parameters is not None and not isinstance(parameters, dict):
        raise InvalidInputError(f'"parameters" must be an object of name: value, got {type(parameters).__name__}')
    out: dict = {}
    for key, value in (parameters or {}).items():
        if key in PROTOCOL_PARAMETERS:
            continue
        if key not in PARAMETER_TYPES:
            raise InvalidInputError(f"unknown parameter {key!r}; this server accepts {', '.join(PARAMETER_TYPES)}")
        out[key] = PARAMETER_TYPES[key](value)
    return out


def v1_inputs(body: dict, max_batch: int) -> tuple[dict, dict, dict]:
    """A v1 body as named inputs, their v2 dtypes, and the parameters: ``{"instances": [...]}``, each
    an image ``{"b64": ...}`` (or ``{"image_bytes": {"b64": ...}}``), ``{"input": (3, H, W) lists}``
    or the lists alone, each optionally with ``"class"``; optional top-level ``"parameters"``.

    Example:
        >>> inputs, dtypes, params = v1_inputs({"instances": [{"b64": "iVBO", "class": 281}]}, 4)
        >>> sorted(inputs), dtypes["image"], inputs["class"].tolist(), params
        (['class', 'image'], 'BYTES', [281], {})
    """
    instances = body.get("instances", body.get("inputs"))
    if not isinstance(instances, list) or not instances:
        raise InvalidInputError('send {"instances": [...]}: each an image {"b64": "<base64 JPEG or PNG>"} '
                                "or the model's input as nested lists (3, H, W) in [0, 1]")
    if len(instances) > max_batch:
        raise InvalidInputError(f"{len(instances)} instances in one request, above this server's limit of {max_batch} "
                                "images a request; split the request")
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
    the CLI's decoder and resize. Every image's header is read first and the pixels they declare
    together are checked against ``max_pixels`` (the request's share of the server's memory) before
    a byte is decoded.

    Example:
        >>> import cv2
        >>> png = cv2.imencode(".png", np.zeros((4, 6, 3), np.uint8))[1].tobytes()
        >>> decode_images([png, png], (2, 2), 100)[0].shape
        (2, 3, 2, 2)
        >>> decode_images([png, png], (2, 2), 47)
        Traceback (most recent call last):
        ...
        unioncam.errors.InvalidInputError: input 'image': its 2 images declare 48 pixels in all, above this server's limit of 47 a request; send fewer or smaller images
    """
    blobs = [_image_bytes(b, i) for i, b in enumerate(np.asarray(blobs, dtype=object).reshape(-1).tolist())]
    if not blobs:
        raise InvalidInputError("input 'image' holds no images; send at least one encoded image")
    sizes = [header_size(b) for b in blobs]
    for i, s in enumerate(sizes):
        if s is None:
            raise InvalidInputError(f"input 'image' element {i}: its header gives no picture size (not a JPEG, PNG "
                                    "or other format whose size can be read before decoding); send a JPEG or PNG")
    total = sum(w * h for w, h in sizes)
    if total > max_pixels:
        raise InvalidInputError(f"input 'image': its {len(blobs)} images declare {total:,} pixels in all, above this "
                                f"server's limit of {max_pixels:,} a request; send fewer or smaller images")
    rgbs = [decode_rgb(b, f"image {i} of the request", size=s, max_pixels=max_pixels)
            for i, (b, s) in enumerate(zip(blobs, sizes))]
    return np.stack([to_model_input(rgb, size) for rgb in rgbs]), rgbs


def _image_bytes(blob, i: int) -> bytes:
    """One element of ``image``: raw bytes, or base64 text (JSON carries no raw bytes)."""
    if isinstance(blob, str):
        try:
            return base64.b64decode(blob, validate=True)
        except (binascii.Error, ValueError):
            raise InvalidInputError(f"input 'image' element {i} is text that is not base64; send the encoded "
                                    "image as base64 in JSON, or as raw bytes (binary data, gRPC)") from None
    if not isinstance(blob, (bytes, bytearray)):
        raise InvalidInputError(f"input 'image' element {i} is {type(blob).__name__}; send encoded image bytes")
    return bytes(blob)


def check_tensor(array, datatype: str, size: tuple[int, int]) -> np.ndarray:
    """The ``input`` tensor: FP32 (B, 3, H, W) in [0, 1], finite (the API's own check)."""
    if datatype != "FP32":
        raise InvalidInputError(f"input 'input' must be FP32, got {datatype}; send float32 pixels in [0, 1]")
    return check_images(np.asarray(array), library="numpy", size=size)


def overlay_png(rgb: np.ndarray, cam: np.ndarray) -> bytes:
    """The heatmap over the photo, PNG bytes: the CLI's ``--plain`` overlay, pixel-aligned."""
    ok, buf = cv2.imencode(".png", overlay(rgb, cam))
    if not ok:  # pragma: no cover - OpenCV encodes any uint8 BGR image
        raise InvalidInputError("cannot encode the overlay")
    return buf.tobytes()


def tensor_rgbs(images: np.ndarray) -> list[np.ndarray]:
    """(B, 3, H, W) float32 in [0, 1] as (H, W, 3) uint8 photos, for overlays of tensor inputs."""
    return [np.ascontiguousarray((img.transpose(1, 2, 0) * 255.0).round().astype(np.uint8)) for img in images]


def answer_tensors(exp, rgbs: list | None, overlay: bool) -> list[tuple[str, str, np.ndarray]]:
    """(name, v2 datatype, array) of each output of an :class:`unioncam.Explanation`, by :data:`OUTPUTS`."""
    sent = {"always": True, "unioncam": exp.method == "unioncam", "logits": exp.logits is not None,
            "overlay": overlay}
    out = []
    for o in OUTPUTS:
        if not sent[o.when]:
            continue
        if o.name == "overlay":
            value = [overlay_png(r, c) for r, c in zip(rgbs, exp.cam)]
        elif o.name == "selected":
            value = [s.encode() for s in exp.selected]
        else:
            value = getattr(exp, o.name)
        out.append((o.name, o.datatype, np.ascontiguousarray(np.asarray(value, dtype=NUMPY_DTYPES[o.datatype]))))
    return out


def answer_parameters(exp, settings: dict, request: Request | None = None) -> dict:
    """The answer's parameters: the settings this request ran with (the server's, with the request's
    theta and max_passes where it gave them), the method, and the timings and counters as JSON
    (what a local run's report holds besides the tensors)."""
    stats = {k: (v.tolist() if isinstance(v, np.ndarray) else v) for k, v in exp.stats.items()}
    settings = dict(settings)
    if request is not None and request.theta is not None:
        settings["theta"] = request.theta
    if request is not None and request.max_passes is not UNSET:
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
    outputs = [{"name": o.name, "datatype": o.datatype, "shape": o.shape(size, num_classes)} for o in OUTPUTS]
    return inputs, outputs
