"""How uvicorn serves the app: bounded request heads and bounded time to send a request.

Bare uvicorn, meant for a trusted network, accepts request heads of any size (its httptools parser sets
no limit) and waits forever for a client that stops halfway through a request, so a few idle sockets can
hold a server on ``--host 0.0.0.0`` hostage. Every place that starts uvicorn builds its config here:

    uvicorn.Server(uvicorn_config(app, host=host, port=port)).run()     # or .run(sockets=[sock])

It selects h11 with a small protocol subclass, :class:`BoundedH11Protocol`, which adds two bounds:

* a request head (request line and headers) over ``max_header_bytes`` is answered 431 and the connection
  closed, before the app sees anything;
* a client gets ``timeout_request`` seconds, from the moment the server starts waiting for a request, to
  send all of it, head and body; trickling bytes does not extend it. One that does not make it is
  answered 408 (in OpenAI's error shape, so the SDK retries) when an answer is still possible, and the
  connection is closed. The clock stops once the request is in and the app works on it, however long a
  streamed response then takes.

An idle keep-alive connection is closed after ``timeout_keep_alive`` seconds, as uvicorn does.
"""

from __future__ import annotations

import asyncio
import http
import json
import logging
from typing import Any

import h11
import uvicorn
from uvicorn.protocols.http.h11_impl import H11Protocol

from .errors import error_body

log = logging.getLogger("faster_dia.server")

#: Request line plus headers. Browsers send under 8 KiB; 64 KiB leaves room for long cookies and tokens.
MAX_HEADER_BYTES = 64 * 1024
#: Seconds a client has to send a whole request. Bodies are at most a MiB of JSON (BodyLimit), so this
#: still admits a client on a slow link, and bounds how long a stalled one holds a connection.
TIMEOUT_REQUEST = 30.0
#: Seconds an idle keep-alive connection stays open (uvicorn's default).
TIMEOUT_KEEP_ALIVE = 5


class ServerConfig(uvicorn.Config):
    """uvicorn's config plus the two bounds :class:`BoundedH11Protocol` reads."""

    def __init__(self, app: Any, *, max_header_bytes: int = MAX_HEADER_BYTES,
                 timeout_request: float = TIMEOUT_REQUEST, **kwargs: Any):
        super().__init__(app, **kwargs)
        self.max_header_bytes = max_header_bytes
        self.timeout_request = timeout_request


def uvicorn_config(
    app: Any,
    *,
    host: str = "127.0.0.1",
    port: int = 8000,
    log_level: str = "info",
    max_header_bytes: int = MAX_HEADER_BYTES,
    timeout_request: float = TIMEOUT_REQUEST,
    timeout_keep_alive: float = TIMEOUT_KEEP_ALIVE,
    **overrides: Any,
) -> ServerConfig:
    """The config every uvicorn serving ``app`` runs with; ``overrides`` go to :class:`uvicorn.Config`.

    A socket bound beforehand (tests bind 127.0.0.1:0) is passed to ``Server.run(sockets=[sock])``, not here.
    """
    options: dict[str, Any] = {
        "host": host, "port": port, "log_level": log_level,
        "timeout_keep_alive": timeout_keep_alive,
        "http": BoundedH11Protocol,
        # h11's own bound on what it buffers of one incomplete event: covers chunk-size lines and trailers,
        # which the head check below does not see.
        "h11_max_incomplete_event_size": max_header_bytes,
        # One process, one model: several workers would each load their own copy.
        "workers": 1,
        # Audio hardly compresses: deflating WebSocket messages would cost CPU for nothing.
        "ws_per_message_deflate": False,
        **overrides,
    }
    return ServerConfig(app, max_header_bytes=max_header_bytes, timeout_request=timeout_request, **options)


class BoundedH11Protocol(H11Protocol):
    """uvicorn's h11 protocol with a bound on the request head's size and on the time to send a request."""

    def __init__(self, config: uvicorn.Config, *args: Any, **kwargs: Any):
        super().__init__(config, *args, **kwargs)
        self.max_header_bytes: int = getattr(config, "max_header_bytes", MAX_HEADER_BYTES)
        self.timeout_request: float = getattr(config, "timeout_request", TIMEOUT_REQUEST)
        self.request_deadline: asyncio.TimerHandle | None = None
        self.upgraded = False  # the connection was handed to the WebSocket protocol

    # ------------------------------------------------------------------ asyncio.Protocol

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        self._watch_request()

    def connection_lost(self, exc: Exception | None) -> None:
        self._stop_deadline()
        super().connection_lost(exc)

    def data_received(self, data: bytes) -> None:
        if self.transport.is_closing():
            return
        if self.conn.their_state is h11.IDLE and self._head_size(data) > self.max_header_bytes:
            log.info("refused a request whose head is over %d bytes", self.max_header_bytes)
            self._answer_and_close(431, f"The request line and headers are over {self.max_header_bytes} bytes.",
                                   "request_header_fields_too_large")
            return
        super().data_received(data)
        self._watch_request()

    # ------------------------------------------------------------------ H11Protocol hooks

    def on_response_complete(self) -> None:
        super().on_response_complete()
        self._watch_request()

    def handle_websocket_upgrade(self, event: h11.Request) -> None:
        self.upgraded = True  # the connection is the WebSocket protocol's from here on: no deadline, no answers
        self._stop_deadline()
        super().handle_websocket_upgrade(event)

    # ------------------------------------------------------------------ the bounds

    def _head_size(self, data: bytes) -> int:
        """Bytes of the request head received so far, counting ``data``, up to its blank line if it has one."""
        received = self.conn.trailing_data[0] + data
        end = received.find(b"\r\n\r\n")
        return len(received) if end < 0 else end + 4

    def _watch_request(self) -> None:
        """Runs the deadline while the server waits for request bytes; stops it while the app has the whole
        request. A running deadline is left as it is, so a client cannot extend it a byte at a time."""
        cycle = self.cycle
        app_has_request = cycle is not None and not cycle.more_body and not cycle.response_complete
        if app_has_request or self.upgraded or self.transport.is_closing():
            self._stop_deadline()
        elif self.request_deadline is None:
            self.request_deadline = self.loop.call_later(self.timeout_request, self._request_timed_out)

    def _stop_deadline(self) -> None:
        if self.request_deadline is not None:
            self.request_deadline.cancel()
            self.request_deadline = None

    def _request_timed_out(self) -> None:
        self.request_deadline = None
        if self.transport.is_closing():
            return
        cycle = self.cycle
        if cycle is not None and not cycle.response_complete:
            # The app is waiting for the rest of the body: it reads a disconnect, and what it sends is dropped.
            cycle.disconnected = True
            cycle.message_event.set()
        started = bool(self.conn.trailing_data[0]) or self.conn.their_state is h11.SEND_BODY
        can_answer = self.conn.our_state in (h11.IDLE, h11.SEND_RESPONSE)
        if started and can_answer:
            log.debug("closing a connection that did not send its request within %gs", self.timeout_request)
            self._answer_and_close(408, f"The request was not received within {self.timeout_request:g} seconds.",
                                   "request_timeout")
        else:
            self._close()

    def _answer_and_close(self, status: int, message: str, code: str) -> None:
        body = json.dumps(error_body(message, "invalid_request_error", None, code)).encode()
        headers = [
            *self.server_state.default_headers,
            (b"content-type", b"application/json"),
            (b"content-length", str(len(body)).encode()),
            (b"connection", b"close"),
        ]
        try:
            output = self.conn.send(h11.Response(status_code=status, headers=headers,
                                                 reason=http.HTTPStatus(status).phrase.encode()))
            output += self.conn.send(h11.Data(data=body))
            output += self.conn.send(h11.EndOfMessage())
        except h11.LocalProtocolError:  # a HEAD request, or a state h11 cannot answer in: just close
            output = b""
        self.transport.write(output)
        self._close()

    def _close(self) -> None:
        self._stop_deadline()
        if self.conn.our_state is not h11.ERROR:
            try:
                self.conn.send(h11.ConnectionClosed())
            except h11.LocalProtocolError:
                pass
        self.transport.close()
