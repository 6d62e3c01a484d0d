"""Plain ASGI middleware: request ids, the last-resort 500, API keys, the body size limit and HEAD.

These run before FastAPI parses anything, so an unauthenticated or oversized request is refused without
its body being read or validated (a malformed body from a caller without a key is a 401, not a 400).
"""

from __future__ import annotations

import json
import logging
import secrets
import uuid
from collections.abc import Iterable

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from .errors import INTERNAL_MESSAGE, error_body

log = logging.getLogger("faster_dia.server")

REQUEST_ID_HEADER = b"x-request-id"


class StreamAborted(Exception):
    """Raised by a response body that failed after its headers were sent; already logged. The
    connection is dropped so the client sees a truncated transfer instead of a complete-looking file."""


async def _send_json(send: Send, status: int, body: dict, headers: Iterable[tuple[bytes, bytes]] = ()) -> None:
    data = json.dumps(body).encode()
    await send({
        "type": "http.response.start",
        "status": status,
        "headers": [(b"content-type", b"application/json"), (b"content-length", str(len(data)).encode()),
                    *headers],
    })
    await send({"type": "http.response.body", "body": data, "more_body": False})


def _header(scope: Scope, name: bytes) -> bytes | None:
    for key, value in scope.get("headers", ()):
        if key == name:
            return value
    return None


def _looks_like_untyped_json(scope: Scope, body: bytes) -> bool:
    content_type = (_header(scope, b"content-type") or b"").split(b";")[0].strip().lower()
    return content_type in (b"", b"application/x-www-form-urlencoded", b"text/plain") and \
        body.lstrip().startswith(b"{")


class RequestContext:
    """Gives every request an id (``request.state.request_id``, echoed in ``X-Request-Id``) and turns an
    unhandled exception into a logged 500 with the OpenAI error body, without internals."""

    def __init__(self, app: ASGIApp):
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        request_id = "req_" + uuid.uuid4().hex[:24]
        scope.setdefault("state", {})["request_id"] = request_id
        started = False

        async def send_with_id(message: Message) -> None:
            nonlocal started
            if message["type"] == "http.response.start":
                started = True
                message["headers"] = [*message.get("headers", ()), (REQUEST_ID_HEADER, request_id.encode())]
            await send(message)

        try:
            await self.app(scope, receive, send_with_id)
        except StreamAborted:
            return  # logged where it happened; returning early makes the server drop the connection
        except Exception:
            log.exception("request %s failed: unhandled error", request_id)
            if started:
                return
            await _send_json(send_with_id, 500, error_body(INTERNAL_MESSAGE.format(request_id=request_id),
                                                           "server_error"))


class ApiKeyAuth:
    """Requires ``Authorization: Bearer <key>`` with one of ``keys``, except on the discovery routes, which
    Open WebUI calls without a key."""

    PUBLIC_PATHS = frozenset({
        "/health", "/v1/models", "/v1/audio/models", "/v1/audio/voices", "/docs", "/redoc", "/openapi.json",
    })
    #: ``/docs/`` holds the docs page's own scripts and styles (see docs.py).
    PUBLIC_PREFIXES = ("/v1/models/", "/docs/")

    def __init__(self, app: ASGIApp, keys: Iterable[str], public_paths: Iterable[str] | None = None):
        self.app = app
        self.keys = [k.encode() for k in keys if k]
        self.public_paths = frozenset(self.PUBLIC_PATHS if public_paths is None else public_paths)

    def _is_public(self, scope: Scope) -> bool:
        if scope.get("method") not in ("GET", "HEAD", "OPTIONS"):
            return False
        path = scope.get("path", "")
        return path in self.public_paths or path.startswith(self.PUBLIC_PREFIXES)

    def _authorized(self, scope: Scope) -> bool | None:
        """True for a valid key, False for a wrong one, None for none at all."""
        value = _header(scope, b"authorization")
        if value is None:
            return None
        scheme, _, token = value.strip().partition(b" ")
        if scheme.lower() != b"bearer" or not token.strip():
            return None
        token = token.strip()
        # Compare against every key so the time taken does not tell which key almost matched.
        matched = False
        for key in self.keys:
            matched |= secrets.compare_digest(token, key)
        return matched

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or not self.keys or self._is_public(scope):
            await self.app(scope, receive, send)
            return
        ok = self._authorized(scope)
        if ok:
            await self.app(scope, receive, send)
            return
        message = ("Incorrect API key provided." if ok is False else
                   "No API key provided: send it as 'Authorization: Bearer YOUR_KEY'.")
        await _send_json(send, 401, error_body(message, "invalid_request_error", None, "invalid_api_key"),
                         [(b"www-authenticate", b"Bearer")])


class BodyLimit:
    """Refuses request bodies over ``max_bytes`` (``max_upload_bytes`` on the routes that take audio
    uploads) with 413, whether announced by Content-Length or sent
    chunked. Bodies here are small JSON documents, so the body is read up front and replayed; a JSON
    object sent without a JSON content type is labelled as JSON on the way."""

    def __init__(self, app: ASGIApp, max_bytes: int, upload_paths: Iterable[str] = (), max_upload_bytes: int = 0):
        self.app = app
        self.default_max_bytes = max_bytes
        #: Routes that take audio uploads (multipart) get the larger limit.
        self.upload_paths = tuple(upload_paths)
        self.max_upload_bytes = max(max_upload_bytes, max_bytes)

    def _limit(self, scope: Scope) -> int:
        path = scope.get("path", "")
        return self.max_upload_bytes if path in self.upload_paths else self.default_max_bytes

    async def _too_large(self, send: Send, limit: int) -> None:
        await _send_json(send, 413, error_body(
            f"The request body is larger than {limit} bytes.", "invalid_request_error", None,
            "request_too_large",
        ))

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope.get("method") in ("GET", "HEAD", "OPTIONS"):
            await self.app(scope, receive, send)
            return
        limit = self._limit(scope)
        length = _header(scope, b"content-length")
        if length is not None and length.isdigit() and int(length) > limit:
            await self._too_large(send, limit)
            return
        chunks: list[bytes] = []
        size = 0
        while True:
            message = await receive()
            if message["type"] == "http.disconnect":
                return
            chunk = message.get("body", b"")
            size += len(chunk)
            if size > limit:
                await self._too_large(send, limit)
                return
            chunks.append(chunk)
            if not message.get("more_body", False):
                break
        body = b"".join(chunks)
        if _looks_like_untyped_json(scope, body):
            # curl -d sends form encoding unless told otherwise; a JSON object is what was meant.
            scope = dict(scope)
            scope["headers"] = [(k, v) for k, v in scope.get("headers", ()) if k != b"content-type"]
            scope["headers"].append((b"content-type", b"application/json"))
        replayed = False

        async def replay() -> Message:
            nonlocal replayed
            if not replayed:
                replayed = True
                return {"type": "http.request", "body": body, "more_body": False}
            # Later calls wait for the disconnect, which streaming responses listen for.
            return await receive()

        await self.app(scope, replay, send)


class HeadAsGet:
    """Answers ``HEAD`` on every route that answers ``GET`` (FastAPI routes only match the methods they
    declare, so ``HEAD /health`` would be a 405): the request goes on as a GET and the body is dropped,
    keeping the GET's headers, Content-Length included, as HEAD requires."""

    def __init__(self, app: ASGIApp):
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope.get("method") != "HEAD":
            await self.app(scope, receive, send)
            return

        async def send_headers_only(message: Message) -> None:
            if message["type"] == "http.response.body" and message.get("body"):
                message = {**message, "body": b""}
            await send(message)

        await self.app({**scope, "method": "GET"}, receive, send_headers_only)
