"""The servers around :class:`unioncam.serve.model.UnionCAMModel`: KServe's REST app (uvicorn) and
its gRPC servicer, on one host and two ports, with what a production endpoint needs besides:

- admission, limits and cancellation before KServe's handlers (:mod:`.asgi`; gRPC: the
  interceptors here);
- one access line per request with its status and latency (KServe's and uvicorn's own lines only
  with ``--verbose``);
- readiness false until the model is loaded and warmed, which happens after the ports listen, so
  that liveness answers during a long export;
- SIGTERM (and Ctrl-C): stop accepting, finish the requests in flight, exit 0.

KServe's ``ModelServer`` binds every interface with no option to change it; this module builds
the same servers from KServe's public parts (``RESTServer``'s app and config,
``InferenceServicer``) with ``host`` as given (default ``0.0.0.0``, as KServe). Imported only by
``unioncam serve``, once the serve extra is known to be there.
"""
from __future__ import annotations

import asyncio
import json
import logging
import signal
import sys
import threading
import time
import warnings

from . import admission, import_kserve

import_kserve()
import grpc  # noqa: E402 - KServe's own dependencies, imported after KServe's argv guard
import uvicorn  # noqa: E402
from fastapi.exceptions import FastAPIDeprecationWarning, RequestValidationError  # noqa: E402
from fastapi.responses import JSONResponse  # noqa: E402
from grpc import aio  # noqa: E402
from kserve.errors import InvalidInput  # noqa: E402
from kserve.model_repository import ModelRepository  # noqa: E402
from kserve.protocol.grpc import grpc_predict_v2_pb2_grpc  # noqa: E402
from kserve.protocol.grpc.interceptors import ExceptionToStatusInterceptor  # noqa: E402
from kserve.protocol.grpc.servicer import InferenceServicer  # noqa: E402
from kserve.protocol.model_repository_extension import ModelRepositoryExtension  # noqa: E402
from kserve.protocol.rest.server import RESTServer  # noqa: E402
from starlette.exceptions import HTTPException as StarletteHTTPException  # noqa: E402

from ..errors import UnionCAMError  # noqa: E402
from .asgi import AccessLog, Admission, BodyLimit, Disconnects, busy_message  # noqa: E402
from .model import TimedOut, UnionCAMDataPlane  # noqa: E402

log = logging.getLogger("unioncam.serve")

#: Seconds the requests in flight get to finish after SIGTERM (Kubernetes' default grace is 30 s).
GRACE_S = 30


def configure_logging(verbose: bool) -> None:
    """Our access lines on stderr; KServe's and uvicorn's loggers quiet unless ``verbose``."""
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(logging.Formatter("unioncam serve: %(message)s"))
    log.handlers[:] = [handler]
    log.setLevel(logging.INFO)
    log.propagate = False
    level = logging.INFO if verbose else logging.CRITICAL
    for name in ("kserve", "kserve.trace", "uvicorn", "uvicorn.error", "uvicorn.access"):
        other = logging.getLogger(name)
        other.setLevel(level)
        if not other.handlers:
            other.addHandler(logging.StreamHandler(sys.stderr))
        other.propagate = False
    if not verbose:
        # FastAPI's deprecation notes about KServe's response class, once per request otherwise.
        warnings.simplefilter("ignore", DeprecationWarning)
        warnings.simplefilter("ignore", FastAPIDeprecationWarning)


# -- REST: our error shape for every refusal ---------------------------------------------------------

async def _timed_out(_, exc):
    return JSONResponse(status_code=504, content={"error": str(exc)})


async def _malformed(_, exc):
    """FastAPI's own validation errors: 400 with one line naming the field."""
    first = (exc.errors() or [{}])[0]
    where = ".".join(str(p) for p in first.get("loc", ()) if p != "body")
    if not where:  # the body itself: empty, or not the object the route takes
        return JSONResponse(status_code=400, content={
            "error": 'the request body is empty or not a JSON object; send {"inputs": [...]} (v2) or '
                     '{"instances": [...]} (v1)'})
    return JSONResponse(status_code=400, content={"error": f"malformed request: field {where}: "
                                                           f"{first.get('msg', exc)}"})


async def _http_error(_, exc):
    """KServe's and FastAPI's own refusals (``{"detail": ...}``) in our one shape."""
    detail = exc.detail if isinstance(exc.detail, str) else json.dumps(exc.detail)
    if exc.status_code == 400 and "parsing the body" in detail:
        detail = ("the request body is not JSON, or nests deeper than a JSON parser takes; send v2 JSON "
                  '{"inputs": [...]}')
    return JSONResponse(status_code=exc.status_code, content={"error": " ".join(detail.split())},
                        headers=getattr(exc, "headers", None))


def _rest_server(model, dataplane, extension, host: str, port: int, max_body: int, grace_s: float):
    """KServe's REST app with our handlers and middleware, on our own uvicorn server (KServe's
    public config, its host set)."""
    rest = RESTServer("kserve.model_server:app", dataplane, extension, port, grace_period=int(grace_s))
    rest.config.host = host
    rest.create_application()
    from kserve.model_server import app  # the app create_application just built

    app.add_exception_handler(TimedOut, _timed_out)
    app.add_exception_handler(RequestValidationError, _malformed)
    app.add_exception_handler(StarletteHTTPException, _http_error)
    app.add_middleware(BodyLimit, limit=max_body)
    app.add_middleware(Disconnects)
    app.add_middleware(Admission, model=model)  # before the body limit reads a byte
    app.add_middleware(AccessLog)  # outermost: it also logs the body limit's refusals
    return uvicorn.Server(rest.config)


# -- gRPC: the same admission, codes and access lines ------------------------------------------------

class Statuses(ExceptionToStatusInterceptor):
    """Our errors' gRPC codes, quietly (KServe's logs each with its traceback)."""

    async def handle_exception(self, ex, request_or_iterator, context, method_name):
        if isinstance(ex, TimedOut):
            await context.abort(grpc.StatusCode.DEADLINE_EXCEEDED, str(ex))
        if isinstance(ex, InvalidInput):
            await context.abort(grpc.StatusCode.INVALID_ARGUMENT, ex.reason)
        await super().handle_exception(ex, request_or_iterator, context, method_name)


def _wrapped(handler, wrapper):
    return grpc.unary_unary_rpc_method_handler(wrapper, request_deserializer=handler.request_deserializer,
                                               response_serializer=handler.response_serializer)


class Admit(aio.ServerInterceptor):
    """``ModelInfer`` admitted as REST requests are (:class:`.asgi.Admission`), before KServe
    converts its message: UNAVAILABLE at once when every slot is taken."""

    def __init__(self, model):
        self.model = model

    async def intercept_service(self, continuation, details):
        handler = await continuation(details)
        if handler is None or handler.unary_unary is None or not details.method.endswith("/ModelInfer"):
            return handler
        inner, slots = handler.unary_unary, self.model.slots

        async def admitted(request, context):
            ticket = slots.admit()
            if ticket is None:
                await context.abort(grpc.StatusCode.UNAVAILABLE, busy_message(slots))
            with admission.admitted(ticket):
                return await inner(request, context)

        return _wrapped(handler, admitted)


class Access(aio.ServerInterceptor):
    """One line per RPC: method, status code, latency."""

    async def intercept_service(self, continuation, details):
        handler = await continuation(details)
        if handler is None or handler.unary_unary is None:
            return handler
        inner, method = handler.unary_unary, details.method.rsplit("/", 1)[-1]

        async def timed(request, context):
            start = time.perf_counter()
            try:
                return await inner(request, context)
            finally:
                code = context.code() or grpc.StatusCode.OK
                log.info("%s grpc %s %s %.1f ms", context.peer() or "-", method, getattr(code, "name", code),
                         (time.perf_counter() - start) * 1e3)

        return _wrapped(handler, timed)


def _grpc_server(model, dataplane, extension, host: str, port: int, max_body: int):
    server = aio.server(interceptors=(Access(), Admit(model), Statuses()),
                        options=[("grpc.max_receive_message_length", max_body),
                                 ("grpc.max_send_message_length", max(max_body, 256 << 20))])
    grpc_predict_v2_pb2_grpc.add_GRPCInferenceServiceServicer_to_server(InferenceServicer(dataplane, extension),
                                                                         server)
    server.add_insecure_port(f"{'[::]' if host == '0.0.0.0' else host}:{port}")
    return server


# -- both, until SIGTERM ---------------------------------------------------------------------------

def serve(model, *, host: str = "0.0.0.0", http_port: int = 8080, grpc_port: int = 8081,
          max_body: int = 64 << 20, grace_s: float = GRACE_S, verbose: bool = False) -> int:
    """Runs the servers until SIGTERM or Ctrl-C; loads ``model`` once they listen. Returns 0 after a
    clean stop; raises the load's error (one line) when the model could not load."""
    configure_logging(verbose)
    repository = ModelRepository()
    repository.update(model)
    dataplane = UnionCAMDataPlane(model_registry=repository)
    extension = ModelRepositoryExtension(model_registry=repository)
    rest = _rest_server(model, dataplane, extension, host, http_port, max_body, grace_s)
    failure: list[BaseException] = []

    async def run() -> None:
        grpc_server = _grpc_server(model, dataplane, extension, host, grpc_port, max_body)
        await grpc_server.start()
        log.info("listening: HTTP %s:%d, gRPC %s:%d; loading the model", host, http_port, host, grpc_port)
        threading.Thread(target=_load, args=(model, host, rest, failure), name="unioncam-load", daemon=True).start()
        stopping = asyncio.create_task(_stop_grpc_when(rest, grpc_server, grace_s))
        await rest.serve()  # returns once SIGTERM's requests in flight are answered
        await stopping

    # uvicorn re-raises the signal it handled to the handler it found: a no-op here, so the
    # process ends by returning, exit 0, never by the default action's exit 143.
    previous = {s: signal.signal(s, lambda *_: None) for s in (signal.SIGTERM, signal.SIGINT)}
    try:
        asyncio.run(run())
    finally:
        for s, h in previous.items():
            signal.signal(s, h)
        model.stop()
    if failure:
        e = failure[0]
        raise e if isinstance(e, UnionCAMError) else UnionCAMError(
            f"the model could not load: {type(e).__name__}: {e}") from e
    log.info("stopped")
    return 0


def _load(model, host: str, rest, failure: list) -> None:
    """Loads and warms the model off the event loop; a failure stops the servers."""
    try:
        t = time.perf_counter()
        model.load()
        log.info("ready: model %r on %s, loaded and warmed in %.1f s", model.name, host, time.perf_counter() - t)
    except BaseException as e:  # noqa: BLE001 - reported on one line, and the servers stop
        failure.append(e)
        rest.should_exit = True


async def _stop_grpc_when(rest, grpc_server, grace_s: float) -> None:
    """Stops the gRPC server (refusing new calls, finishing those in flight) as soon as the REST
    server is told to exit, so that both drain at once."""
    while not rest.should_exit:
        await asyncio.sleep(0.05)
    await grpc_server.stop(grace_s)
