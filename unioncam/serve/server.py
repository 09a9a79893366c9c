"""The servers around :class:`unioncam.serve.model.UnionCAMModel`: KServe's REST app (uvicorn) and
its gRPC servicer, on one host and two ports, with what a production endpoint needs besides:

- bodies above ``max_body`` bytes refused before they are parsed (REST: 400 with one line; gRPC:
  its own receive limit, RESOURCE_EXHAUSTED);
- one access line per request with its status and latency (KServe's and uvicorn's own lines only
  with ``--verbose``);
- readiness false until the model is loaded and warmed, which happens after the ports listen, so
  that liveness answers during a long export;
- SIGTERM (and Ctrl-C): stop accepting, finish the requests in flight, exit 0.

KServe's ``ModelServer`` binds every interface with no option to change it; this module builds
the same servers from KServe's parts with ``host`` as given (default ``0.0.0.0``, as KServe).
"""
from __future__ import annotations

import asyncio
import logging
import os
import signal
import socket
import sys
import threading
import time

from . import admission, import_kserve

log = logging.getLogger("unioncam.serve")

#: Seconds the requests in flight get to finish after SIGTERM (Kubernetes' default grace is 30 s).
GRACE_S = 30


def check_port_free(host: str, port: int, flag: str) -> None:
    """A port another process listens on is a usage error before anything loads, naming the option.
    Checked by connecting, not only by binding: gRPC listens with SO_REUSEPORT, which lets a second
    server bind the same port and share its connections unseen."""
    from ..errors import UsageError

    target = "127.0.0.1" if host in ("0.0.0.0", "") else "::1" if host in ("::", "[::]") else host.strip("[]")
    family = socket.AF_INET6 if ":" in target else socket.AF_INET
    with socket.socket(family, socket.SOCK_STREAM) as probe:
        probe.settimeout(1.0)
        held = probe.connect_ex((target, port)) == 0
    if not held:
        with socket.socket(family, socket.SOCK_STREAM) as s:
            s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            try:
                s.bind((host.strip("[]") if ":" in target else host, port))
            except OSError as e:
                raise UsageError(f"{flag} {port}: cannot listen on {host}:{port} ({e.strerror or e}); choose another "
                                 f"{flag}") from None
        return
    raise UsageError(f"{flag} {port}: another process listens on {host}:{port}; stop it or choose another {flag}")


#: Seconds a --host name may take to resolve before it is called unresolvable.
RESOLVE_TIMEOUT_S = 5.0


def check_host(host: str) -> None:
    """``--host`` resolves to an address of this machine's, within :data:`RESOLVE_TIMEOUT_S`: else a
    usage error (exit 2) before anything loads, naming the option."""
    from concurrent.futures import ThreadPoolExecutor, TimeoutError as Late

    from ..errors import UsageError

    pool = ThreadPoolExecutor(1, thread_name_prefix="unioncam-resolve")
    try:
        pool.submit(socket.getaddrinfo, host.strip("[]") or "0.0.0.0", None, 0, socket.SOCK_STREAM).result(
            RESOLVE_TIMEOUT_S)
    except Late:
        raise UsageError(f"--host {host}: did not resolve within {RESOLVE_TIMEOUT_S:g} s; give an IP address "
                         "(0.0.0.0: every interface, 127.0.0.1: this machine only)") from None
    except (OSError, UnicodeError) as e:
        raise UsageError(f"--host {host}: does not resolve ({getattr(e, 'strerror', None) or e}); give an IP address "
                         "or a name of this machine (0.0.0.0: every interface, 127.0.0.1: this machine only)") from None
    finally:
        pool.shutdown(wait=False)


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


#: Seconds a request's body may pause before its last byte (a client that stalls holds a connection);
#: ``UNIONCAM_SERVE_BODY_TIMEOUT_S`` overrides it.
BODY_READ_TIMEOUT_S = float(os.environ.get("UNIONCAM_SERVE_BODY_TIMEOUT_S") or 30.0)
#: A request's headers: at most this many, of this many bytes in all; more is answered 431 before any
#: handler sees them.
MAX_HEADER_BYTES = 64 << 10
MAX_HEADERS = 100


class _Stalled(Exception):
    pass


class BodyLimit:
    """ASGI middleware: a POST body above ``limit`` bytes is answered 400 before the app reads it
    (by its Content-Length, else while it arrives), so no handler parses it."""

    def __init__(self, app, limit: int):
        self.app, self.limit = app, limit

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http" or scope.get("method") not in ("POST", "PUT"):
            return await self.app(scope, receive, send)
        headers = dict(scope.get("headers") or [])
        encoding = headers.get(b"content-encoding", b"identity").decode("latin-1").strip().lower()
        if encoding not in ("", "identity"):
            await self._drain(receive, 0)
            return await _refuse(send, 415, f"Content-Encoding {encoding} is not accepted; send the body "
                                            "uncompressed (Content-Encoding: identity)")
        stalled = {"at": None}

        async def timed_receive():
            try:
                return await asyncio.wait_for(receive(), BODY_READ_TIMEOUT_S)
            except asyncio.TimeoutError:
                stalled["at"] = True
                raise _Stalled() from None

        try:
            return await self._limited(scope, timed_receive, send, headers)
        except _Stalled:
            return await _refuse(send, 408, f"the request body stalled: no bytes for {BODY_READ_TIMEOUT_S:g} s "
                                            "before its end; send the whole body")

    async def _limited(self, scope, receive, send, headers):
        length = headers.get(b"content-length")
        if length is not None and length.isdigit() and int(length) > self.limit:
            await self._drain(receive, int(length))
            return await _refuse(send, 400, self._message(int(length)))
        # No length given (chunked): read up to the limit, then hand the app what was read.
        chunks, size, more = [], 0, True
        while more:
            message = await receive()
            if message["type"] == "http.disconnect":
                return
            chunk = message.get("body", b"")
            size += len(chunk)
            more = message.get("more_body", False)
            if size > self.limit:
                if more:
                    await self._drain(receive, 0)
                return await _refuse(send, 400, self._message(size, at_least=True))
            chunks.append(chunk)
        body = b"".join(chunks)
        sent = False

        async def replay():
            nonlocal sent
            if not sent:
                sent = True
                return {"type": "http.request", "body": body, "more_body": False}
            return await receive()

        return await self.app(scope, replay, send)

    async def _drain(self, receive, length: int) -> None:
        """Reads and drops a refused body up to 4 limits, so that the client, still sending, reads
        its 400 instead of a reset connection; a larger body is cut off unread."""
        if length > 4 * self.limit:
            return
        read, more = 0, True
        while more and read <= 4 * self.limit:
            message = await receive()
            if message["type"] == "http.disconnect":
                return
            read += len(message.get("body", b""))
            more = message.get("more_body", False)

    def _message(self, size: int, at_least: bool = False) -> str:
        return (f"the request body is {'at least ' if at_least else ''}{size:,} bytes, above this server's limit of "
                f"{self.limit:,} bytes; send fewer or smaller images a request")


#: Seconds a refused client is told to wait (``Retry-After``), as Triton and Ray Serve answer 503.
RETRY_AFTER_S = 1
_INFERENCE = (b"/infer", b":predict", b":explain")


class Admission:
    """ASGI middleware: each inference request is admitted (:mod:`unioncam.serve.admission`) before
    a byte of its body is read, or answered 503 with ``Retry-After`` at once (then its body read and
    dropped, so that the client, still sending, reads the answer): a refusal costs the bytes, never
    the JSON, base64 or images. Headers past their limits are answered 431 here too."""

    def __init__(self, app, model):
        self.app, self.model = app, model

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        headers = scope.get("headers") or []
        if len(headers) > MAX_HEADERS or sum(len(k) + len(v) for k, v in headers) > MAX_HEADER_BYTES:
            return await _refuse(send, 431, f"the request's headers are above this server's limit ({MAX_HEADERS} "
                                            f"headers, {MAX_HEADER_BYTES // 1024} KiB in all); send fewer or smaller")
        if not _is_inference(scope):
            return await self.app(scope, receive, send)
        ticket = self.model.slots.admit()
        if ticket is None:
            await _refuse(send, 503, busy_message(self.model.slots), retry_after=RETRY_AFTER_S)
            return await _drop_body(receive)
        with admission.admitted(ticket):
            return await self.app(scope, receive, send)


def busy_message(slots) -> str:
    return (f"{slots.inflight} requests in flight, the server's bound ({slots.max_inflight}); retry after "
            f"{RETRY_AFTER_S} s")


def _is_inference(scope) -> bool:
    return scope.get("method") == "POST" and scope.get("path", "").encode().endswith(_INFERENCE)


async def _drop_body(receive) -> None:
    more = True
    while more:
        message = await receive()
        if message["type"] == "http.disconnect":
            return
        more = message.get("more_body", False)


class Disconnects:
    """ASGI middleware: once an inference request's body is read, a watcher waits for its client to
    go away and cancels the request's token, so the explanation stops at its next batch of passes
    and its slot is free again."""

    def __init__(self, app):
        self.app = app

    async def __call__(self, scope, receive, send):
        ticket = admission.current()
        if scope["type"] != "http" or ticket is None:
            return await self.app(scope, receive, send)
        token, watcher = ticket.token, None

        async def watch():
            while True:
                message = await receive()
                if message["type"] == "http.disconnect":
                    token.cancel("the client went away")
                    return

        async def reading():
            nonlocal watcher
            message = await receive()
            if message["type"] == "http.request" and not message.get("more_body", False) and watcher is None:
                watcher = asyncio.ensure_future(watch())
            elif message["type"] == "http.disconnect":
                token.cancel("the client went away")
            return message

        try:
            return await self.app(scope, reading, send)
        finally:
            if watcher is not None:
                watcher.cancel()


async def _refuse(send, status: int, message: str, retry_after: int | None = None) -> None:
    import json

    body = json.dumps({"error": message}).encode()
    extra = [(b"retry-after", str(retry_after).encode())] if retry_after else []
    await send({"type": "http.response.start", "status": status,
                "headers": [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode()),
                            (b"connection", b"close"), *extra]})
    await send({"type": "http.response.body", "body": body})


class AccessLog:
    """ASGI middleware: one line per request, ``client METHOD path status latency``."""

    def __init__(self, app):
        self.app = app

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        start, status = time.perf_counter(), [500]

        async def sending(message):
            if message["type"] == "http.response.start":
                status[0] = message["status"]
            await send(message)

        try:
            await self.app(scope, receive, sending)
        finally:
            client = (scope.get("client") or ("-",))[0]
            log.info("%s %s %s %d %.1f ms", client, scope.get("method"), scope.get("path"), status[0],
                     (time.perf_counter() - start) * 1e3)


def _add_handlers(app) -> None:
    """Our errors' HTTP codes, and FastAPI's own validation errors as 400 with one line."""
    import json

    from fastapi.exceptions import RequestValidationError
    from fastapi.responses import JSONResponse
    from starlette.exceptions import HTTPException as StarletteHTTPException

    from .model import Busy, TimedOut

    async def busy(_, exc):
        return JSONResponse(status_code=503, content={"error": str(exc)},
                            headers={"Retry-After": str(RETRY_AFTER_S)})

    async def timed_out(_, exc):
        return JSONResponse(status_code=504, content={"error": str(exc)})

    async def malformed(_, exc):
        first = (exc.errors() or [{}])[0]
        where = ".".join(str(p) for p in first.get("loc", ()) if p != "body")
        if not where:  # the body itself: empty, or not the object the route takes
            return JSONResponse(status_code=400, content={
                "error": 'the request body is empty or not a JSON object; send {"inputs": [...]} (v2) or '
                         '{"instances": [...]} (v1)'})
        return JSONResponse(status_code=400, content={"error": f"malformed request: field {where}: "
                                                               f"{first.get('msg', exc)}"})

    async def http_error(_, exc):
        # KServe's and FastAPI's own refusals ({"detail": ...}) in our one shape.
        detail = exc.detail if isinstance(exc.detail, str) else json.dumps(exc.detail)
        if exc.status_code == 400 and "parsing the body" in detail:
            detail = ("the request body is not JSON, or nests deeper than a JSON parser takes; send v2 JSON "
                      '{"inputs": [...]}')
        return JSONResponse(status_code=exc.status_code, content={"error": " ".join(detail.split())},
                            headers=getattr(exc, "headers", None))

    app.add_exception_handler(Busy, busy)
    app.add_exception_handler(TimedOut, timed_out)
    app.add_exception_handler(RequestValidationError, malformed)
    app.add_exception_handler(StarletteHTTPException, http_error)


def _grpc_interceptors(model):
    import grpc
    from grpc import aio
    from kserve.errors import InvalidInput
    from kserve.protocol.grpc.interceptors import ExceptionToStatusInterceptor

    from .model import Busy, TimedOut

    class Statuses(ExceptionToStatusInterceptor):
        """Our errors' gRPC codes, quietly (KServe's logs each with its traceback)."""

        async def handle_exception(self, ex, request_or_iterator, context, method_name):
            if isinstance(ex, Busy):
                await context.abort(grpc.StatusCode.UNAVAILABLE, str(ex))
            if isinstance(ex, TimedOut):
                await context.abort(grpc.StatusCode.DEADLINE_EXCEEDED, str(ex))
            if isinstance(ex, InvalidInput):
                await context.abort(grpc.StatusCode.INVALID_ARGUMENT, ex.reason)
            await super().handle_exception(ex, request_or_iterator, context, method_name)

    class Admit(aio.ServerInterceptor):
        """``ModelInfer`` admitted as REST requests are (:class:`Admission`), before KServe converts
        its message: UNAVAILABLE at once when every slot is taken."""

        async def intercept_service(self, continuation, details):
            handler = await continuation(details)
            if handler is None or handler.unary_unary is None or not details.method.endswith("/ModelInfer"):
                return handler
            inner = handler.unary_unary

            async def admitted(request, context):
                ticket = model.slots.admit()
                if ticket is None:
                    await context.abort(grpc.StatusCode.UNAVAILABLE, busy_message(model.slots))
                with admission.admitted(ticket):
                    return await inner(request, context)

            return grpc.unary_unary_rpc_method_handler(admitted, request_deserializer=handler.request_deserializer,
                                                       response_serializer=handler.response_serializer)

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
                    peer = context.peer() or "-"
                    log.info("%s grpc %s %s %.1f ms", peer, method, getattr(code, "name", code),
                             (time.perf_counter() - start) * 1e3)

            return grpc.unary_unary_rpc_method_handler(timed, request_deserializer=handler.request_deserializer,
                                                       response_serializer=handler.response_serializer)

    return (Access(), Admit(), Statuses())


def serve(model, *, host: str = "0.0.0.0", http_port: int = 8080, grpc_port: int = 8081,
          max_body: int = 64 << 20, grace_s: float = GRACE_S, verbose: bool = False) -> int:
    """Runs the servers until SIGTERM or Ctrl-C; loads ``model`` once they listen. Returns the exit
    code: 0 after a clean stop, 1 when the model could not load (its error on one line)."""
    import_kserve()
    from grpc import aio
    from kserve.model_repository import ModelRepository
    from kserve.protocol.grpc import grpc_predict_v2_pb2_grpc
    from kserve.protocol.grpc.servicer import InferenceServicer
    from kserve.protocol.model_repository_extension import ModelRepositoryExtension
    from kserve.protocol.rest.server import RESTServer

    from ..errors import UnionCAMError
    from .model import UnionCAMDataPlane

    configure_logging(verbose)
    if not verbose:
        import warnings

        from fastapi.exceptions import FastAPIDeprecationWarning

        # FastAPI's deprecation notes about KServe's response class, once per request otherwise.
        warnings.simplefilter("ignore", DeprecationWarning)
        warnings.simplefilter("ignore", FastAPIDeprecationWarning)

    repository = ModelRepository()
    repository.update(model)
    dataplane = UnionCAMDataPlane(model_registry=repository)
    extension = ModelRepositoryExtension(model_registry=repository)
    rest = RESTServer("kserve.model_server:app", dataplane, extension, http_port, grace_period=int(grace_s))
    rest.config.host = host
    rest.create_application()
    from kserve.model_server import app

    _add_handlers(app)
    app.add_middleware(BodyLimit, limit=max_body)
    app.add_middleware(Disconnects)
    app.add_middleware(Admission, model=model)  # before the body limit reads a byte
    app.add_middleware(AccessLog)  # outermost: it also logs the body limit's refusals
    failure: list[BaseException] = []
    import uvicorn

    # Our own uvicorn server on KServe's public config (its host set): KServe's ModelServer binds
    # every interface and has no option to change it.
    state = {"rest": uvicorn.Server(rest.config)}

    def load():
        try:
            t = time.perf_counter()
            model.load()
            log.info("ready: model %r on %s, loaded and warmed in %.1f s", model.name, host,
                     time.perf_counter() - t)
        except BaseException as e:  # noqa: BLE001 - reported on one line, and the servers stop
            failure.append(e)
            state["rest"].should_exit = True

    async def run() -> None:
        grpc_server = aio.server(interceptors=_grpc_interceptors(model),
                                 options=[("grpc.max_receive_message_length", max_body),
                                          ("grpc.max_send_message_length", max(max_body, 256 << 20))])
        grpc_predict_v2_pb2_grpc.add_GRPCInferenceServiceServicer_to_server(
            InferenceServicer(dataplane, extension), grpc_server)
        grpc_server.add_insecure_port(f"{'[::]' if host == '0.0.0.0' else host}:{grpc_port}")
        await grpc_server.start()
        log.info("listening: HTTP %s:%d, gRPC %s:%d; loading the model", host, http_port, host, grpc_port)
        threading.Thread(target=load, name="unioncam-load", daemon=True).start()
        stopping = asyncio.create_task(_stop_grpc_when(state["rest"], grpc_server, grace_s))
        await state["rest"].serve()  # returns once SIGTERM's requests in flight are answered
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
        if isinstance(e, UnionCAMError):
            raise e
        raise UnionCAMError(f"the model could not load: {type(e).__name__}: {e}") from e
    log.info("stopped")
    return 0


async def _stop_grpc_when(rest, grpc_server, grace_s: float) -> None:
    """Stops the gRPC server (refusing new calls, finishing those in flight) as soon as the REST
    server is told to exit, so that both drain at once."""
    while not rest.should_exit:
        await asyncio.sleep(0.05)
    await grpc_server.stop(grace_s)
