"""The KServe model: the runtime's :class:`unioncam.runtime.Explainer` behind v1 ``:predict`` /
``:explain`` and v2 ``/infer`` (REST and gRPC), on KServe's own hooks: ``load``, ``preprocess``
(the request checked and decoded), ``predict`` / ``explain`` (the explanation), ``postprocess``
(the answer encoded). KServe's ``__call__`` runs them, with its metrics and latency lines.

Each hook's work runs on a pool of ``concurrency`` threads, off the event loop, so health checks
and refusals are answered while explanations run, and under the request's
:class:`unioncam.serve.admission.Ticket`: the transport admitted it before reading its body (or
refused it, 503), its deadline bounds every hook (then :class:`TimedOut`, 504), and its token stops
the explanation at the next batch of passes when nobody waits for it any more.
"""
from __future__ import annotations

import asyncio
import base64
import logging
import struct
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

import numpy as np
import orjson

from . import import_kserve

import_kserve()
from kserve import Model
from kserve.errors import InferenceError, InvalidInput, ModelNotReady
from kserve.protocol.dataplane import DataPlane
from kserve.protocol.infer_type import (
    InferInput,
    InferOutput,
    InferRequest,
    InferResponse,
    RequestedOutput,
    to_http_parameters,
)

from .. import cancel
from ..classes import class_name
from ..errors import InvalidInputError, UnionCAMError, UsageError
from ..settings import UNSET
from ..image_io import BYTES_PER_PIXEL, read_rgb, sample_image_path, to_model_input
from ..outputs import top5
from . import admission, protocol

log = logging.getLogger("unioncam.serve")


class TimedOut(Exception):
    """A request unanswered by its deadline: answered 504 (gRPC DEADLINE_EXCEEDED)."""


@dataclass
class Work:
    """What passes from one hook to the next: the checked request, how it came (v1 or v2, REST or
    gRPC, the outputs it asked for), and once explained, the explanation."""

    request: protocol.Request
    v2: InferRequest | None = None
    explanation: object = None
    predictions: list | None = None


class UnionCAMModel(Model):
    """``unioncam`` as a KServe model.

    Args:
        name: the model name in the routes (``/v2/models/<name>/infer``).
        load: called once, off the request path: returns (Explainer, settings dict).
        max_inflight: requests admitted at once (running or waiting); more are refused (503).
        concurrency: explanations running at once (threads).
        timeout_s: each request's time limit from its admission, its body's arrival included.
        max_batch: images per request.
        memory_mb: the process's memory budget; after loading, what the model leaves of it (less
            ``reserved_mb``, the bodies' share) is shared by the ``concurrency`` requests that work at
            once, at ``BYTES_PER_PIXEL`` a decoded pixel: that is the pixels a request may declare,
            all its images together.
        max_pixels: a stricter per-request pixel limit than the budget's (None: the budget's).
    """

    def __init__(self, name: str, load, *, max_inflight: int = 32, concurrency: int = 1, timeout_s: float = 120.0,
                 max_batch: int = 16, memory_mb: float = 2048.0, reserved_mb: float = 0.0,
                 max_pixels: int | None = None):
        super().__init__(name)
        self._load = load
        self.slots = admission.Slots(max_inflight, concurrency, timeout_s)
        self.max_batch, self.memory_mb, self.reserved_mb, self.pixel_cap = max_batch, memory_mb, reserved_mb, max_pixels
        self.max_pixels = 0  # set by load(), from what the loaded model leaves of the budget
        self._pool = ThreadPoolExecutor(concurrency, thread_name_prefix="unioncam-explain")
        self.explainer = None
        self.settings: dict = {}

    @property
    def inflight(self) -> int:
        return self.slots.inflight

    @property
    def max_inflight(self) -> int:
        return self.slots.max_inflight

    @property
    def timeout_s(self) -> float:
        return self.slots.timeout_s

    # -- life cycle ---------------------------------------------------------------------------
    def load(self) -> bool:
        """Loads (exports on a cache miss) and warms the explainer: one explanation of the bundled
        photo, so that no request pays the first call's allocations (on a GPU, the algorithm search).
        Then the per-request pixel limit from what is left of the memory budget. Readiness turns
        true only after both."""
        self.explainer, self.settings = self._load()
        size = tuple(self.explainer.manifest.input_size)
        self.explainer(to_model_input(read_rgb(sample_image_path("chelsea")), size)[None])
        self.max_pixels = self._pixel_limit(size)
        self.ready = True
        return True

    def _pixel_limit(self, size: tuple[int, int]) -> int:
        used = admission.resident_bytes()
        budget = admission.request_pixels(self.memory_mb - self.reserved_mb, used, self.slots.concurrency,
                                          BYTES_PER_PIXEL)
        # One image of the model's own input size, in every working request, is the least that serves.
        if budget < size[0] * size[1]:
            raise UsageError(f"--memory-mb {self.memory_mb:g}: the loaded model uses {used / (1 << 20):,.0f} MiB, which "
                             f"leaves no room for one {size[0]}x{size[1]} image in each of --concurrency "
                             f"{self.slots.concurrency} requests; give more --memory-mb or less --concurrency")
        limit = budget if self.pixel_cap is None else min(budget, self.pixel_cap)
        log.info("memory: %.0f MiB loaded of %g MiB; a request may declare %s decoded pixels", used / (1 << 20),
                 self.memory_mb, f"{limit:,}")
        return limit

    def stop(self):
        self.ready = False
        self._pool.shutdown(wait=True, cancel_futures=False)

    # -- KServe's hooks ---------------------------------------------------------------------------
    def validate(self, payload):
        """Our requests are checked in :meth:`preprocess`, by the rules the CLI uses."""
        return payload

    async def preprocess(self, body, headers=None) -> Work:
        if not self.ready:
            raise ModelNotReady(self.name, "the model is loading; /v2/health/ready turns true when it can answer")
        return await self._run(self._checked, self._request_of, body)

    async def predict(self, work: Work, headers=None) -> Work:
        if work.v2 is None:  # v1 :predict: the classes, no map
            work.predictions = await self._run(self._checked, self._predictions, work.request)
            return work
        return await self.explain(work, headers)

    async def explain(self, work: Work, headers=None) -> Work:
        work.explanation = await self._run(self._checked, self._explain, work.request)
        return work

    async def postprocess(self, work: Work, headers=None):
        if work.predictions is not None:
            return {"predictions": work.predictions}
        encode = self._v2_answer if work.v2 is not None else self._v1_answer
        return await self._run(self._checked, encode, work)

    # -- the ticket: a slot, a deadline, a permit to work ------------------------------------------
    async def _run(self, fn, *args):
        """``fn(*args)`` on the pool under the request's ticket, within its deadline."""
        ticket = admission.current() or admission.Ticket(None, self.timeout_s)
        if ticket.remaining() <= 0:
            raise self._timed_out(ticket)
        # A permit to work, kept to the answer: at most `concurrency` requests hold decoded images.
        while not ticket.has_permit():
            if ticket.remaining() <= 0:
                raise self._timed_out(ticket)
            await asyncio.sleep(0.01)
        future = self._pool.submit(self._under, ticket.token, fn, *args)
        ticket.hold(future)
        try:
            return await asyncio.wait_for(asyncio.shield(asyncio.wrap_future(future)), max(ticket.remaining(), 0.0))
        except asyncio.TimeoutError:
            raise self._timed_out(ticket, future) from None
        except asyncio.CancelledError:
            ticket.token.cancel("the client went away")
            raise

    def _timed_out(self, ticket, future=None) -> TimedOut:
        if future is not None:
            future.cancel()  # still waiting for a thread: it never runs
        ticket.token.cancel("past the request's time limit")  # running: it stops at its next batch of passes
        return TimedOut(f"no answer within the server's time limit of {ticket.timeout_s:g} s; send fewer images a "
                        "request, or a smaller max_passes")

    @staticmethod
    def _under(token, fn, *args):
        with cancel.cancellable(token):
            cancel.check()  # dropped while it waited for a thread
            return fn(*args)

    @staticmethod
    def _checked(fn, *args):
        """Our errors as KServe's: the client's faults 400, ours 500, each on one line."""
        try:
            return fn(*args)
        except UnionCAMError as e:
            raise InvalidInput(str(e)) from None
        except (InvalidInput, InferenceError):
            raise
        except (ValueError, TypeError, KeyError) as e:  # a malformed tensor KServe's decoder let through
            raise InvalidInput(f"malformed request: {type(e).__name__}: {e}") from None

    # -- preprocess: the request, checked -----------------------------------------------------------
    def _request_of(self, body) -> Work:
        if isinstance(body, InferRequest):
            return Work(self._v2_request(body), v2=body)
        if isinstance(body, (bytes, bytearray)):  # JSON sent without a JSON Content-Type (curl -d)
            body = _json_object(body)
        if isinstance(body, dict):
            return Work(self._request(*protocol.v1_inputs(body, self.max_batch)))
        raise InvalidInputError(f"unrecognised request body ({type(body).__name__}); send v1 JSON "
                                '{"instances": [...]} or a v2 inference request')

    def _v2_request(self, request: InferRequest) -> protocol.Request:
        parameters = request.parameters
        if request.from_grpc and parameters is not None and not isinstance(parameters, dict):
            parameters = to_http_parameters(parameters)
        size = tuple(self.explainer.manifest.input_size)
        inputs, datatypes = {}, {}
        for tensor in request.inputs:
            if tensor.name in inputs:
                raise InvalidInputError(f"input {tensor.name!r} is given twice")
            datatypes[tensor.name] = tensor.datatype
            protocol.check_declared(tensor.name, tensor.shape, self.max_batch, size)
            try:
                inputs[tensor.name] = tensor.as_numpy()
            except (struct.error, ValueError, TypeError) as e:  # a count that differs from the shape
                raise InvalidInputError(f"input {tensor.name!r}: its data does not hold the {tensor.datatype} "
                                        f"elements its shape {list(tensor.shape)} declares ({type(e).__name__})") from None
        if "overlay" in [o.name for o in (request.request_outputs or [])]:
            protocol.parse_parameters(parameters)  # an object, each parameter valid, before one is added
            parameters = {**(parameters or {}), "overlay": True}
        return self._request(inputs, datatypes, parameters)

    def _request(self, inputs: dict, datatypes: dict, parameters: dict) -> protocol.Request:
        """The checked request from named inputs (arrays), the inputs' v2 dtypes and parameters."""
        manifest = self.explainer.manifest
        size = tuple(manifest.input_size)
        params = protocol.parse_parameters(parameters)
        unknown = sorted(set(inputs) - {protocol.IMAGE, protocol.TENSOR, protocol.CLASS})
        if unknown:
            raise InvalidInputError(f"unknown input {unknown[0]!r}; send {protocol.IMAGE!r} (encoded images) or "
                                    f"{protocol.TENSOR!r} (FP32 (B, 3, {size[0]}, {size[1]})), and optionally "
                                    f"{protocol.CLASS!r}")
        if (protocol.IMAGE in inputs) == (protocol.TENSOR in inputs):
            raise InvalidInputError(f"send exactly one of the inputs {protocol.IMAGE!r} (encoded images) and "
                                    f"{protocol.TENSOR!r} (FP32 (B, 3, {size[0]}, {size[1]}) in [0, 1])")
        if protocol.CLASS in inputs and "class" in params:
            raise InvalidInputError("give the class as the input 'class' or as the parameter 'class', not both")
        rgbs = None
        if protocol.IMAGE in inputs:
            if datatypes.get(protocol.IMAGE, "BYTES") != "BYTES":
                raise InvalidInputError(f"input 'image' must be BYTES (encoded images), got {datatypes[protocol.IMAGE]}")
            images, rgbs = protocol.decode_images(inputs[protocol.IMAGE], size, self.max_pixels)
        else:
            images = protocol.check_tensor(inputs[protocol.TENSOR], datatypes.get(protocol.TENSOR, "FP32"), size)
        classes = inputs.get(protocol.CLASS, params.get("class"))
        return protocol.Request(images=images, rgbs=rgbs,
                                class_idx=protocol.parse_classes(classes, images.shape[0], manifest.num_classes),
                                method=params.get("method"), max_passes=params.get("max_passes", UNSET),
                                theta=params.get("theta"), overlay=params.get("overlay", False))

    # -- predict / explain ------------------------------------------------------------------------
    def _explain(self, req: protocol.Request):
        exp = self.explainer(req.images, req.class_idx, req.method, theta=req.theta, max_passes=req.max_passes)
        if not np.isfinite(exp.cam).all():  # never a NaN heatmap: the API's guarantee, checked again here
            raise InferenceError("the explanation is not finite; report this with the input")
        return exp

    def _predictions(self, req: protocol.Request) -> list[dict]:
        probs = self.explainer.probabilities(req.images)
        out = []
        for i, p in enumerate(probs):
            c = int(req.class_idx[i]) if req.class_idx is not None else int(np.argmax(p))
            out.append({"class_idx": c, "class_name": self._name(c), "score": float(p[c]),
                        "top5": [{"index": int(j), "name": self._name(int(j)), "probability": float(p[j])}
                                 for j in np.argsort(-p, kind="stable")[:5]]})
        return out

    def _name(self, i: int) -> str:
        return class_name(i, self.explainer.manifest.num_classes)

    # -- postprocess: the answer, encoded ------------------------------------------------------------
    def _tensors(self, work: Work) -> list[tuple[str, str, np.ndarray]]:
        req, exp = work.request, work.explanation
        rgbs = req.rgbs if req.rgbs is not None else protocol.tensor_rgbs(req.images)
        return protocol.answer_tensors(exp, rgbs, req.overlay)

    def _v2_answer(self, work: Work) -> InferResponse:
        request = work.v2
        binary = {o.name: bool(o.binary_data) for o in request.request_outputs or []}
        outputs = []
        for name, dtype, array in self._tensors(work):
            tensor = InferOutput(name=name, shape=list(array.shape), datatype=dtype)
            if request.from_grpc:
                # Raw contents for every output: KServe's own conversion fails on NumPy data there.
                tensor.set_data_from_numpy(array, binary_data=True)
            else:
                if dtype == "BYTES" and name == "overlay" and not binary.get(name, request.use_binary_outputs):
                    # JSON holds text only: the PNG travels as base64, as images in requests do.
                    array = np.array([base64.b64encode(b).decode() for b in array], dtype=object)
                tensor.data = array
            outputs.append(tensor)
        return InferResponse(response_id=request.id or "", model_name=self.name, infer_outputs=outputs,
                             parameters=protocol.answer_parameters(work.explanation, self.settings, work.request),
                             use_binary_outputs=request.use_binary_outputs, requested_outputs=request.request_outputs)

    def _v1_answer(self, work: Work) -> dict:
        exp = work.explanation
        tensors = {name: array for name, _, array in self._tensors(work)}
        explanations = []
        for i in range(exp.cam.shape[0]):
            item = {"class_idx": int(exp.class_idx[i]), "class_name": self._name(int(exp.class_idx[i])),
                    "score": float(exp.score[i]), "method": exp.method, "cam": tensors["cam"][i].tolist()}
            for o in protocol.OUTPUTS:
                if o.when == "unioncam" and o.name in tensors:
                    v = tensors[o.name][i]
                    item[o.name] = v.decode() if isinstance(v, bytes) else float(v)
            if exp.logits is not None:
                item["top5"] = top5(np.asarray(exp.logits[i]), self._name)
            if "overlay" in tensors:
                item["overlay_png_b64"] = base64.b64encode(tensors["overlay"][i]).decode()
            explanations.append(item)
        return {"explanations": explanations,
                "parameters": protocol.answer_parameters(exp, self.settings, work.request)}

    # -- metadata -------------------------------------------------------------------------------
    def get_input_types(self) -> list[dict]:
        return protocol.metadata(self._size(), self._classes())[0]

    def get_output_types(self) -> list[dict]:
        return protocol.metadata(self._size(), self._classes())[1]

    def _size(self):
        return tuple(self.explainer.manifest.input_size) if self.explainer else (-1, -1)

    def _classes(self):
        return self.explainer.manifest.num_classes if self.explainer else -1


def _json_object(body: bytes) -> dict:
    try:
        value = orjson.loads(body)
    except orjson.JSONDecodeError as e:
        raise InvalidInputError(f"the body is not JSON ({e}); send v1 JSON {{\"instances\": [...]}}") from None
    if not isinstance(value, dict):
        raise InvalidInputError('the body is JSON but not an object; send {"instances": [...]}')
    return value


class UnionCAMDataPlane(DataPlane):
    """KServe's data plane with two corrections for a server of images:

    - readiness (REST ``/v2/health/ready``, gRPC ``ServerReady``) is the model's: KServe's is true
      once the process runs, before a model could answer;
    - a v2 REST body with binary tensors keeps their bytes: KServe's decoder turns each into JSON
      text, which fails on any encoded image (not UTF-8), so ``tritonclient.http`` could not send one.
      Each tensor is read by :func:`unioncam.serve.protocol.binary_tensor` (every length checked)
      and handed to KServe through its public ``set_data_from_numpy``.
    """

    async def ready(self) -> bool:
        models = list(self.model_registry.get_models().values())
        return bool(models) and all([await m.healthy() for m in models])

    def decode_inference_request(self, body, headers, model_name):
        if not isinstance(body, bytes):
            return super().decode_inference_request(body, headers, model_name)
        try:
            return self._binary_request(body, headers or {}, model_name)
        except UnionCAMError as e:
            raise InvalidInput(str(e)) from None

    def _binary_request(self, body: bytes, headers, model_name) -> InferRequest:
        # No Inference-Header-Content-Length: the body is JSON alone, whatever its Content-Type says
        # (curl -d sends form-urlencoded unless told otherwise).
        length = str(headers.get("inference-header-content-length", len(body)))
        if not length.isdigit() or int(length) > len(body):
            raise InvalidInputError("the Inference-Header-Content-Length header must be the JSON header's length, "
                                    "at most the body's")
        try:
            head = orjson.loads(body[:int(length)])
        except orjson.JSONDecodeError as e:
            raise InvalidInputError(f"the request's JSON header is not JSON: {e}") from None
        if not isinstance(head, dict) or not isinstance(head.get("inputs"), list):
            raise InvalidInputError('the request\'s JSON header needs "inputs": [...]')
        for key, kind in (("parameters", dict), ("outputs", list), ("id", str)):
            if head.get(key) is not None and not isinstance(head[key], kind):
                raise InvalidInputError(f'the request\'s JSON header: "{key}" must be a JSON '
                                        f'{ {dict: "object", list: "array", str: "string"}[kind] }')
        model = self.model_registry.get_model(model_name)
        if model is None or not getattr(model, "ready", False):
            raise ModelNotReady(model_name, "the model is loading; /v2/health/ready turns true when it can answer")
        size = tuple(model.explainer.manifest.input_size)
        start, inputs = int(length), []
        for spec in head["inputs"]:
            if not isinstance(spec, dict) or not {"name", "shape", "datatype"} <= set(spec):
                raise InvalidInputError("each input needs name, shape and datatype")
            shape = protocol.check_declared(str(spec["name"]), spec["shape"], model.max_batch, size)
            tensor = InferInput(name=spec["name"], shape=list(shape), datatype=spec["datatype"],
                                parameters=spec.get("parameters"))
            size_bytes = (spec.get("parameters") or {}).get("binary_data_size")
            if spec.get("data") is not None:
                tensor.data = spec["data"]
            elif isinstance(size_bytes, int) and not isinstance(size_bytes, bool) and 0 <= size_bytes <= len(body) - start:
                raw = body[start:start + size_bytes]
                tensor.set_data_from_numpy(protocol.binary_tensor(tensor.name, raw, tensor.datatype, shape),
                                           binary_data=True)
                start += size_bytes
            else:
                raise InvalidInputError(f"input {spec['name']!r} has no data, or a binary_data_size beyond the body")
            inputs.append(tensor)
        outputs = [RequestedOutput(name=o["name"], parameters=o.get("parameters"))
                   for o in head.get("outputs") or [] if isinstance(o, dict) and "name" in o]
        return InferRequest(model_name=model_name, request_id=head.get("id"), parameters=head.get("parameters"),
                            infer_inputs=inputs, request_outputs=outputs or None)
