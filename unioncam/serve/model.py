"""The KServe model: the runtime's :class:`unioncam.runtime.Explainer` behind v1 ``:predict`` /
``:explain`` and v2 ``/infer`` (REST and gRPC), with admission control and a time limit per request.

Every request's work (decoding, explaining, encoding) runs on a pool of ``concurrency`` threads, off
the event loop, so health checks and refusals are answered while explanations run. At most
``max_inflight`` requests are admitted (running or waiting for a thread); the next is refused at
once with :class:`Busy` (HTTP 503, gRPC UNAVAILABLE) instead of joining a queue that grows. A
request still unanswered after ``timeout_s`` gets :class:`TimedOut` (HTTP 504, gRPC
DEADLINE_EXCEEDED); its slot is held until its thread is done, so the bound stays true.
"""
from __future__ import annotations

import asyncio
import struct
import base64
import logging
import threading
from concurrent.futures import ThreadPoolExecutor

import numpy as np

from . import import_kserve

import_kserve()
from kserve import Model
from kserve.errors import InferenceError, InvalidInput, ModelNotReady, ServerNotReady
from kserve.model import InferenceVerb
from kserve.protocol.dataplane import DataPlane
from kserve.protocol.infer_type import (
    InferInput,
    InferOutput,
    InferRequest,
    InferResponse,
    RequestedOutput,
    to_http_parameters,
)

from ..errors import InvalidInputError, UnionCAMError
from .. import cancel
from . import protocol

log = logging.getLogger("unioncam.serve")


class Busy(ServerNotReady):
    """More requests in flight than ``--max-inflight``: answered 503 at once."""


class TimedOut(Exception):
    """A request unanswered after ``--request-timeout`` seconds: answered 504 (gRPC DEADLINE_EXCEEDED)."""


class UnionCAMModel(Model):
    """``unioncam`` as a KServe model.

    Args:
        name: the model name in the routes (``/v2/models/<name>/infer``).
        load: called once, off the request path: returns (Explainer, settings dict).
        max_inflight: requests admitted at once (running or waiting); more are refused (503).
        concurrency: explanations running at once (threads).
        timeout_s: each request's time limit, waiting included.
        max_batch: images per request.
        max_pixels: pixels an encoded image may declare in its header.
    """

    def __init__(self, name: str, load, *, max_inflight: int = 32, concurrency: int = 1, timeout_s: float = 120.0,
                 max_batch: int = 16, max_pixels: int = 40_000_000):
        super().__init__(name)
        self._load = load
        self.max_inflight, self.timeout_s = max_inflight, timeout_s
        self.max_batch, self.max_pixels = max_batch, max_pixels
        self._pool = ThreadPoolExecutor(concurrency, thread_name_prefix="unioncam-explain")
        self._inflight = 0
        self._lock = threading.Lock()
        self.explainer = None
        self.settings: dict = {}
        self.load_error: BaseException | None = None

    # -- life cycle ---------------------------------------------------------------------------
    def load(self) -> bool:
        """Loads (exports on a cache miss) and warms the explainer: one explanation of the bundled
        photo, so that no request pays the first call's allocations (on a GPU, the algorithm search).
        Readiness turns true only after it."""
        from ..image_io import read_rgb, sample_image_path, to_model_input

        self.explainer, self.settings = self._load()
        size = tuple(self.explainer.manifest.input_size)
        self.explainer(to_model_input(read_rgb(sample_image_path("chelsea")), size)[None])
        self.ready = True
        return True

    def stop(self):
        self.ready = False
        self._pool.shutdown(wait=True, cancel_futures=False)

    # -- admission ----------------------------------------------------------------------------
    def _admit(self) -> None:
        with self._lock:
            if self._inflight >= self.max_inflight:
                raise Busy(f"{self._inflight} requests in flight, the server's bound (--max-inflight "
                           f"{self.max_inflight}); retry later")
            self._inflight += 1

    def _release(self, _future=None) -> None:
        with self._lock:
            self._inflight -= 1

    @property
    def inflight(self) -> int:
        return self._inflight

    async def __call__(self, body, headers=None, verb: InferenceVerb = InferenceVerb.PREDICT):
        if not self.ready:
            raise ModelNotReady(self.name, "the model is loading; /v2/health/ready turns true when it can answer")
        self._admit()
        # The request's token: its client leaving (server.Disconnects) or its time limit passing
        # stops the work at the next batch of passes, and the slot is free again.
        token = cancel.current() or cancel.Token()
        try:
            future = self._pool.submit(self._answer_while_wanted, token, body, verb)
        except BaseException:
            self._release()
            raise
        future.add_done_callback(self._release)
        try:
            return await asyncio.wait_for(asyncio.shield(asyncio.wrap_future(future)), self.timeout_s), {}
        except asyncio.TimeoutError:
            future.cancel()  # still waiting for a thread: it never runs
            token.cancel("past the request's time limit")  # running: it stops at its next batch of passes
            raise TimedOut(f"no answer within the server's time limit of {self.timeout_s:g} s; send fewer images a "
                           "request, or a smaller max_passes") from None
        except asyncio.CancelledError:
            token.cancel("the client went away")
            raise

    def _answer_while_wanted(self, token, body, verb: InferenceVerb):
        with cancel.cancellable(token):
            cancel.check()  # dropped while it waited for a thread
            return self._answer(body, verb)

    # -- the work, on a pool thread -------------------------------------------------------------
    def _answer(self, body, verb: InferenceVerb):
        try:
            if isinstance(body, InferRequest):
                return self._v2(body)
            if isinstance(body, (bytes, bytearray)):  # JSON sent without a JSON Content-Type (curl -d)
                body = _json_object(body)
            if isinstance(body, dict):
                return self._v1(body, verb)
            raise InvalidInputError(f"unrecognised request body ({type(body).__name__}); send v1 JSON "
                                    '{"instances": [...]} or a v2 inference request')
        except UnionCAMError as e:
            raise InvalidInput(str(e)) from None
        except (InvalidInput, InferenceError):
            raise
        except (ValueError, TypeError, KeyError) as e:  # a malformed tensor KServe's decoder let through
            raise InvalidInput(f"malformed request: {type(e).__name__}: {e}") from None

    def _request(self, inputs: dict, parameters: dict, datatypes: dict) -> protocol.Request:
        """The checked request from named inputs (arrays), parameters and the inputs' v2 dtypes."""
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
        rgbs = None
        if protocol.IMAGE in inputs:
            if datatypes.get(protocol.IMAGE, "BYTES") != "BYTES":
                raise InvalidInputError(f"input 'image' must be BYTES (encoded images), got {datatypes[protocol.IMAGE]}")
            n = np.asarray(inputs[protocol.IMAGE], dtype=object).size
            self._check_batch(n)
            images, rgbs = protocol.decode_images(inputs[protocol.IMAGE], size, self.max_pixels)
        else:
            images = protocol.check_tensor(inputs[protocol.TENSOR], datatypes.get(protocol.TENSOR, "FP32"), size)
            self._check_batch(images.shape[0])
        classes = inputs.get(protocol.CLASS, params.get("class"))
        if protocol.CLASS in inputs and "class" in params:
            raise InvalidInputError("give the class as the input 'class' or as the parameter 'class', not both")
        return protocol.Request(images=images, rgbs=rgbs,
                                class_idx=protocol.parse_classes(classes, images.shape[0], manifest.num_classes),
                                method=params.get("method"), max_passes=params.get("max_passes", "default"),
                                theta=params.get("theta"), overlay=params.get("overlay", False))

    def _check_batch(self, n: int) -> None:
        if n > self.max_batch:
            raise InvalidInputError(f"{n} images in one request, above this server's limit of {self.max_batch} "
                                    "(--max-batch); split the request")
        if n == 0:
            raise InvalidInputError("the request holds no images")

    def _explain(self, req: protocol.Request):
        exp = self.explainer(req.images, req.class_idx, req.method, theta=req.theta, max_passes=req.max_passes)
        if not np.isfinite(exp.cam).all():  # never a NaN heatmap: the API's guarantee, checked again here
            raise InferenceError("the explanation is not finite; report this with the input")
        return exp

    # v2: InferRequest (REST or gRPC) -> InferResponse
    def _v2(self, request: InferRequest) -> InferResponse:
        parameters = request.parameters or {}
        if request.from_grpc and not isinstance(parameters, dict):
            parameters = to_http_parameters(parameters)
        inputs, datatypes = {}, {}
        for tensor in request.inputs:
            if tensor.name in inputs:
                raise InvalidInputError(f"input {tensor.name!r} is given twice")
            datatypes[tensor.name] = tensor.datatype
            protocol.check_shape(tensor.name, tensor.shape)
            try:
                inputs[tensor.name] = tensor.as_numpy()
            except (struct.error, ValueError, TypeError) as e:  # a length prefix that lies, a count that differs
                raise InvalidInputError(f"input {tensor.name!r}: its data does not hold the {tensor.datatype} "
                                        f"elements its shape {list(tensor.shape)} declares ({type(e).__name__}); for "
                                        "binary BYTES, each element is a 4-byte length and that many bytes") from None
        wanted = [o.name for o in (request.request_outputs or [])]
        if "overlay" in wanted:
            parameters = {**parameters, "overlay": True}
        req = self._request(inputs, parameters, datatypes)
        exp = self._explain(req)
        rgbs = req.rgbs if req.rgbs is not None else protocol.tensor_rgbs(req.images)
        binary = {o.name: bool(o.binary_data) for o in request.request_outputs or []}
        outputs = []
        for name, dtype, array in protocol.answer_tensors(exp, rgbs, req.overlay):
            tensor = InferOutput(name=name, shape=list(array.shape), datatype=dtype)
            if request.from_grpc:
                # Raw contents for every output: KServe's own conversion fails on NumPy data there.
                tensor.set_data_from_numpy(array, binary_data=True)
            else:
                if name == "overlay" and not binary.get(name, request.use_binary_outputs):
                    # JSON holds text only: the PNG travels as base64, as images in requests do.
                    array = np.array([base64.b64encode(b).decode() for b in array], dtype=object)
                tensor.data = array
            outputs.append(tensor)
        return InferResponse(response_id=request.id or "", model_name=self.name, infer_outputs=outputs,
                             parameters=protocol.answer_parameters(exp, self.settings, req),
                             use_binary_outputs=request.use_binary_outputs, requested_outputs=request.request_outputs)

    # v1: {"instances": [...]} -> {"predictions": [...]} or {"explanations": [...]}
    def _v1(self, body: dict, verb: InferenceVerb) -> dict:
        inputs, datatypes, parameters = protocol.v1_inputs(body)
        self._check_batch(np.asarray(next(iter(inputs.values()))).shape[0])
        if verb == InferenceVerb.PREDICT:
            parameters = {k: v for k, v in parameters.items() if k not in ("overlay",)}
            req = self._request(inputs, parameters, datatypes)
            return {"predictions": self._predictions(req)}
        req = self._request(inputs, parameters, datatypes)
        exp = self._explain(req)
        rgbs = req.rgbs if req.rgbs is not None else protocol.tensor_rgbs(req.images)
        tensors = {name: array for name, _, array in protocol.answer_tensors(exp, rgbs, req.overlay)}
        names = self._names()
        explanations = []
        for i in range(exp.cam.shape[0]):
            item = {"class_idx": int(exp.class_idx[i]), "class_name": names(int(exp.class_idx[i])),
                    "score": float(exp.score[i]), "method": exp.method, "cam": tensors["cam"][i].tolist()}
            for key in protocol.UNIONCAM_ONLY:
                if key in tensors:
                    v = tensors[key][i]
                    item[key] = v.decode() if isinstance(v, bytes) else float(v)
            if exp.logits is not None:
                item["top5"] = _top5(exp.logits[i], names)
            if "overlay" in tensors:
                item["overlay_png_b64"] = base64.b64encode(tensors["overlay"][i]).decode()
            explanations.append(item)
        return {"explanations": explanations, "parameters": protocol.answer_parameters(exp, self.settings, req)}

    def _predictions(self, req: protocol.Request) -> list[dict]:
        probs = self.explainer.probabilities(req.images)
        names = self._names()
        out = []
        for i, p in enumerate(probs):
            c = int(req.class_idx[i]) if req.class_idx is not None else int(np.argmax(p))
            out.append({"class_idx": c, "class_name": names(c), "score": float(p[c]),
                        "top5": [{"index": int(j), "name": names(int(j)), "probability": float(p[j])}
                                 for j in np.argsort(-p, kind="stable")[:5]]})
        return out

    def _names(self):
        from ..classes import class_name

        n = self.explainer.manifest.num_classes
        return lambda i: class_name(i, n)

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
    import orjson

    try:
        value = orjson.loads(body)
    except orjson.JSONDecodeError as e:
        raise InvalidInputError(f"the body is not JSON ({e}); send v1 JSON {{\"instances\": [...]}}") from None
    if not isinstance(value, dict):
        raise InvalidInputError('the body is JSON but not an object; send {"instances": [...]}')
    return value


def _top5(logits: np.ndarray, names) -> list[dict]:
    from ..outputs import top5

    return top5(np.asarray(logits), names)


class UnionCAMDataPlane(DataPlane):
    """KServe's data plane with two corrections for a server of images:

    - readiness (REST ``/v2/health/ready``, gRPC ``ServerReady``) is the model's: KServe's is true
      once the process runs, before a model could answer;
    - a v2 REST body with binary tensors keeps their bytes: KServe's decoder turns each into JSON
      text, which fails on any encoded image (not UTF-8), so ``tritonclient.http`` could not send one.
    """

    async def ready(self) -> bool:
        models = list(self.model_registry.get_models().values())
        return bool(models) and all([await m.healthy() for m in models])

    def decode_inference_request(self, body, headers, model_name):
        if not isinstance(body, bytes):
            return super().decode_inference_request(body, headers, model_name)
        import orjson

        # No Inference-Header-Content-Length: the body is JSON alone, whatever its Content-Type says
        # (curl -d sends form-urlencoded unless told otherwise).
        length = (headers or {}).get("inference-header-content-length", str(len(body)))
        if not str(length).isdigit() or int(length) > len(body):
            raise InvalidInput("the Inference-Header-Content-Length header must be the JSON header's length, at "
                               "most the body's")
        try:
            head = orjson.loads(body[:int(length)])
        except orjson.JSONDecodeError as e:
            raise InvalidInput(f"the request's JSON header is not JSON: {e}") from None
        if not isinstance(head, dict) or not isinstance(head.get("inputs"), list):
            raise InvalidInput('the request\'s JSON header needs "inputs": [...]')
        start, inputs = int(length), []
        for spec in head["inputs"]:
            if not isinstance(spec, dict) or not {"name", "shape", "datatype"} <= set(spec):
                raise InvalidInput("each input needs name, shape and datatype")
            tensor = InferInput(name=spec["name"], shape=spec["shape"], datatype=spec["datatype"],
                                parameters=spec.get("parameters"))
            size = (spec.get("parameters") or {}).get("binary_data_size")
            if spec.get("data") is not None:
                tensor.data = spec["data"]
            elif isinstance(size, int) and 0 <= size <= len(body) - start:
                tensor._raw_data = body[start:start + size]
                start += size
            else:
                raise InvalidInput(f"input {spec['name']!r} has no data, or a binary_data_size beyond the body")
            inputs.append(tensor)
        outputs = [RequestedOutput(name=o["name"], parameters=o.get("parameters"))
                   for o in head.get("outputs") or [] if isinstance(o, dict) and "name" in o]
        return InferRequest(model_name=model_name, request_id=head.get("id"), parameters=head.get("parameters"),
                            infer_inputs=inputs, request_outputs=outputs or None)
