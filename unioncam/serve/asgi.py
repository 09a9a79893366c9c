"""The REST server's ASGI middleware, outermost first: one access line per request
(:class:`AccessLog`); admission before a byte of the body is read, and header limits
(:class:`Admission`); cancellation when the client leaves (:class:`Disconnects`); the body's size,
encoding and pace (:class:`BodyLimit`). Each refusal is ``{"error": "<one line>"}``. KServe-free:
plain ASGI, as Starlette runs it.
"""
from __future__ import annotations

import asyncio
import json
import logging
import os
import time

from . import admission

log = logging.getLogger("unioncam.serve")

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
