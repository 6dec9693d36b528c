"""Pure ASGI middleware (nothing buffers the body): request id + access log + metrics,
the API key, and the upload byte limit enforced while the body streams in."""

from __future__ import annotations

import asyncio
import json
import logging
import re
import secrets
import time
import uuid
from collections.abc import Awaitable, Callable

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from . import metrics

access_log = logging.getLogger("app.access")

CLIENT_CLOSED_REQUEST = 499  # nginx's status for a request whose client left before its answer
PROTECTED_PREFIXES = ("/classify", "/embed/", "/v1/", "/metrics")
_REQUEST_ID = re.compile(r"^[A-Za-z0-9._:-]{1,128}$")


def _header(scope: Scope, name: bytes) -> str | None:
    for key, value in scope["headers"]:
        if key == name:
            return value.decode("latin-1")
    return None


def _state(scope: Scope) -> dict:
    return scope.setdefault("state", {})


async def send_error(
    scope: Scope, send: Send, status: int, code: str, message: str, headers: dict[str, str] | None = None
) -> None:
    """An error answer from middleware, in the same JSON shape as app/errors.py."""
    _state(scope)["error_code"] = code
    body = json.dumps(
        {"error": code, "message": message, "status": status, "request_id": _state(scope).get("request_id")}
    ).encode()
    raw = [
        (b"content-type", b"application/json"),
        (b"content-length", str(len(body)).encode()),
        (b"connection", b"close"),
    ]
    raw += [(k.lower().encode(), v.encode()) for k, v in (headers or {}).items()]
    await send({"type": "http.response.start", "status": status, "headers": raw})
    await send({"type": "http.response.body", "body": body})


class RequestContext:
    """X-Request-ID (echoed when the client sent a sane one), one access log line, request metrics."""

    def __init__(self, app: ASGIApp):
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        sent = _header(scope, b"x-request-id")
        request_id = sent if sent and _REQUEST_ID.match(sent) else uuid.uuid4().hex
        _state(scope)["request_id"] = request_id
        started = time.perf_counter()
        status = 500

        async def send_with_id(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
                message["headers"] = list(message.get("headers", [])) + [(b"x-request-id", request_id.encode())]
            await send(message)

        try:
            await self.app(scope, receive, send_with_id)
        finally:
            if _state(scope).get("client_gone"):
                status = CLIENT_CLOSED_REQUEST
            elapsed = time.perf_counter() - started
            route = getattr(scope.get("route"), "path", None) or "other"
            metrics.REQUESTS.labels(route, str(status)).inc()
            metrics.LATENCY.labels(route).observe(elapsed)
            if status >= 400:
                metrics.ERRORS.labels(route, str(status), _state(scope).get("error_code", "http_error")).inc()
            access_log.info("%s %s %s %d %.1fms", request_id, scope["method"], scope["path"], status, elapsed * 1000)


class CancelOnDisconnect:
    """Stops a request's work when its client goes away before the whole answer is sent.

    Once the body has been read, the server's next ``receive()`` returns only when the client
    disconnects (or the answer is complete, and by then the request is over), so a task waits on
    it and cancels the request's handler: its images leave the batch queue (DynamicBatcher
    withdraws them) instead of being classified for no one ahead of the clients still waiting.
    The access log and ``clip_requests_total`` count it as status 499 (nginx's "client closed
    request")."""

    def __init__(self, app: ASGIApp):
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        handler = asyncio.current_task()
        assert handler is not None  # an ASGI app runs in a task
        body_read = asyncio.Event()
        after_body: asyncio.Future[Message] = asyncio.get_running_loop().create_future()
        answered = gone = False

        async def body_receive() -> Message:
            if body_read.is_set():  # the watcher reads from here on; the app gets what it read
                return await asyncio.shield(after_body)
            message = await receive()
            if message["type"] != "http.request" or not message.get("more_body", False):
                body_read.set()
            return message

        async def watched_send(message: Message) -> None:
            nonlocal answered
            answered = answered or (message["type"] == "http.response.body" and not message.get("more_body", False))
            await send(message)

        async def watch() -> None:
            nonlocal gone
            await body_read.wait()
            message = await receive()
            after_body.set_result(message)
            # "complete" reads the same as a disconnect; the app may still be closing its uploads
            # (spooled to disk past 1 MiB) then, and must not be cut off and logged as 499
            if message["type"] == "http.disconnect" and not answered:
                gone = True
                handler.cancel()

        watcher = asyncio.create_task(watch(), name="disconnect-watcher")
        try:
            await self.app(scope, body_receive, watched_send)
        except asyncio.CancelledError:
            if not gone:  # the server's own cancellation (the end of a drain): not ours to absorb
                raise
            _uncancel()
            _state(scope).update(client_gone=True, error_code="client_closed_request")
        finally:
            watcher.cancel()


class ShutdownCutoff:
    """JSON 503 ``shutting_down`` for a request still running when the SIGTERM drain ends.

    uvicorn waits ``drain_seconds`` (its timeout_graceful_shutdown) for requests in flight, then
    cancels their tasks and answers a plain-text 500 for each; the cancellation is caught here
    instead, and a request whose answer has not started gets the service's own error. One whose
    answer has started cannot be answered again: its cancellation goes on to uvicorn, which closes it."""

    def __init__(self, app: ASGIApp, drain_seconds: int):
        self.app = app
        self.drain_seconds = drain_seconds

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        started = False

        async def watched_send(message: Message) -> None:
            nonlocal started
            started = started or message["type"] == "http.response.start"
            await send(message)

        try:
            await self.app(scope, receive, watched_send)
        except asyncio.CancelledError:
            if started:
                raise
            _uncancel()  # answered: the cancellation has done its work
            await send_error(
                scope,
                send,
                503,
                "shutting_down",
                f"the server is shutting down and this request outlasted its drain of {self.drain_seconds} s "
                "(CLIP_DRAIN_SECONDS); retry: another replica or the restarted server will answer",
                {"Retry-After": "2"},
            )


def _uncancel() -> None:
    task = asyncio.current_task()
    if task is not None and hasattr(task, "uncancel"):  # Python 3.11+
        task.uncancel()


class ApiKey:
    """Bearer key on the protected routes, checked before any body is read. The scheme name is
    case-insensitive (RFC 7235: "bearer KEY" is as good as "Bearer KEY"); the key is not."""

    def __init__(self, app: ASGIApp, api_key: str | None):
        self.app = app
        self.expected = api_key.encode() if api_key else None

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if (
            self.expected is None
            or scope["type"] != "http"
            or scope["method"] == "OPTIONS"
            or not scope["path"].startswith(PROTECTED_PREFIXES)
        ):
            return await self.app(scope, receive, send)
        given = _header(scope, b"authorization") or ""
        scheme, _, key = given.partition(" ")
        if scheme.lower() != "bearer" or not secrets.compare_digest(key.strip(" ").encode("latin-1"), self.expected):
            reason = "missing API key" if not given else "wrong API key"
            return await send_error(
                scope,
                send,
                401,
                "unauthorized",
                f"{reason}: send 'Authorization: Bearer <key>' (the server's CLIP_API_KEY)",
                {"WWW-Authenticate": "Bearer"},
            )
        await self.app(scope, receive, send)


class UploadLimit:
    """413 when the body is over ``max_bytes``: at once from Content-Length, else as soon as the
    streamed bytes pass the limit (the app's own answer to the cut-off body is replaced)."""

    def __init__(self, app: ASGIApp, max_bytes: int):
        self.app = app
        self.max_bytes = max_bytes

    def _message(self) -> str:
        return f"request body is over the limit of {self.max_bytes} bytes (CLIP_MAX_UPLOAD_BYTES)"

    async def _refuse(self, scope: Scope, receive: Receive, send: Send) -> None:
        await send_error(scope, send, 413, "upload_too_large", self._message())
        await _linger(receive)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        declared = _header(scope, b"content-length")
        if declared is not None and declared.isdigit() and int(declared) > self.max_bytes:
            return await self._refuse(scope, receive, send)
        received, over = 0, False

        async def counted_receive() -> Message:
            nonlocal received, over
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > self.max_bytes:
                    over = True
                    raise OverflowError("request body over the limit")
            return message

        await _answer_unless(
            self.app,
            scope,
            counted_receive,
            send,
            lambda: over,
            OverflowError,
            lambda: self._refuse(scope, receive, send),
        )


async def _answer_unless(
    app: ASGIApp,
    scope: Scope,
    receive: Receive,
    send: Send,
    refused: Callable[[], bool],
    error: type[Exception],
    refuse: Callable[[], Awaitable[None]],
) -> None:
    """Run ``app``; once ``refused()`` holds (its ``receive`` raised ``error``), the app's own answer
    to the broken-off body is dropped and ``refuse()`` answers instead, once."""
    replaced = False

    async def guarded_send(message: Message) -> None:
        nonlocal replaced
        if not refused():
            return await send(message)
        if not replaced:
            replaced = True
            await refuse()

    try:
        await app(scope, receive, guarded_send)
    except error:
        if not replaced:
            replaced = True
            await refuse()


class BodyTimeout:
    """408 when a request body stalls: no bytes for ``seconds`` while the client still owes some (a
    body shorter than its Content-Length held its connection open for good). The pause between
    reads is what is bounded, as nginx's client_body_timeout does, so slow large uploads still pass.
    The app's own answer to the broken-off body (FastAPI's 400) is replaced."""

    def __init__(self, app: ASGIApp, seconds: float):
        self.app = app
        self.seconds = seconds

    async def _refuse(self, scope: Scope, send: Send) -> None:
        await send_error(
            scope,
            send,
            408,
            "request_timeout",
            f"the request body stalled: no bytes for {self.seconds:g} s while more were due "
            "(CLIP_BODY_TIMEOUT_S); send the whole body, as its Content-Length says",
        )

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        stalled, body_done = False, False

        async def timed_receive() -> Message:
            nonlocal stalled, body_done
            if body_done:  # later reads wait for a disconnect while a response streams: not a body's pause
                return await receive()
            try:
                message = await asyncio.wait_for(receive(), self.seconds)
            except asyncio.TimeoutError:
                stalled = True
                raise BodyStalled from None
            body_done = message["type"] != "http.request" or not message.get("more_body", False)
            return message

        await _answer_unless(
            self.app, scope, timed_receive, send, lambda: stalled, BodyStalled, lambda: self._refuse(scope, send)
        )


class MultipartClosed:
    """400 for a multipart body that ends without its closing delimiter (--boundary--): the parser
    would drop the last part without a word and the request be answered with a label fewer."""

    def __init__(self, app: ASGIApp):
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        boundary = _multipart_boundary(scope)
        if boundary is None:
            return await self.app(scope, receive, send)
        closing = b"--" + boundary + b"--"
        tail, closed, unclosed = b"", False, False

        async def watched_receive() -> Message:
            nonlocal tail, closed, unclosed
            message = await receive()
            if message["type"] == "http.request":
                window = tail + message.get("body", b"")
                closed = closed or closing in window
                tail = window[-len(closing) :]
                if not message.get("more_body", False) and not closed:
                    unclosed = True
                    raise MultipartUnclosed
            return message

        async def refuse() -> None:
            await send_error(
                scope,
                send,
                400,
                "unterminated_multipart",
                f"the multipart body ends without its closing delimiter ('--{boundary.decode('latin-1')}--'): "
                "it was cut short, so its last part would be lost; send the whole body",
            )

        await _answer_unless(self.app, scope, watched_receive, send, lambda: unclosed, MultipartUnclosed, refuse)


def _multipart_boundary(scope: Scope) -> bytes | None:
    if scope["type"] != "http":
        return None
    content_type = _header(scope, b"content-type") or ""
    match = re.match(r'\s*multipart/form-data\s*;.*?boundary="?([^";]+)"?', content_type, re.IGNORECASE)
    return match.group(1).encode("latin-1") if match else None


class MultipartUnclosed(Exception):
    """Raised into the app at the last body read of a multipart body with no closing delimiter."""


class BodyStalled(Exception):
    """Raised into the app when its next body read timed out (BodyTimeout)."""


async def _linger(receive: Receive, max_bytes: int = 4 * 1024 * 1024, seconds: float = 2.0) -> None:
    """After an early 413, read and drop a bounded amount of the body the client is still sending:
    closing a socket with unread data makes the kernel send RST, which can destroy the 413 in
    flight (what nginx calls a lingering close). Nothing is kept."""

    async def drop() -> None:
        dropped = 0
        while dropped < max_bytes:
            message = await receive()
            if message["type"] != "http.request" or not message.get("more_body", False):
                return
            dropped += len(message.get("body", b""))

    try:
        await asyncio.wait_for(drop(), seconds)
    except asyncio.TimeoutError:
        return
