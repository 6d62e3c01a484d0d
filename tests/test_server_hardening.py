"""Tests of the server's defences for a public address: bounded request heads and request time (a real
uvicorn on 127.0.0.1 with the project's config), error bodies that survive lone surrogates, HEAD on GET
routes and self-hosted API docs. Around a small app of their own, so no model is loaded. Closing and
ordering are observed (recv() returning b""), never wall-clock thresholds; WAIT only bounds a failure."""

from __future__ import annotations

import contextlib
import json
import re
import select
import socket
import time
from collections.abc import Iterator

import anyio
import httpx
import pytest
from fastapi import FastAPI
from fastapi.testclient import TestClient
from pydantic import BaseModel, field_validator
from servers import running
from starlette.types import ASGIApp

from faster_dia.errors import InvalidInputError
from faster_dia.server.docs import install_docs
from faster_dia.server.errors import error_body, error_response, install_error_handlers, reject_surrogates
from faster_dia.server.middleware import ApiKeyAuth, HeadAsGet, RequestContext
from faster_dia.server.uvicorn_config import MAX_HEADER_BYTES, BoundedH11Protocol, uvicorn_config

TIMEOUT_REQUEST = 1.0  # seconds a client gets to send a request, small so the tests are quick
WAIT = 10.0  # upper bound on any wait for the server; a test that needs it has failed anyway


class Echo(BaseModel):
    input: str

    @field_validator("input")
    @classmethod
    def _valid_text(cls, value: str) -> str:
        return reject_surrogates(value, "input")


def make_app(seen: list[str] | None = None) -> ASGIApp:
    """A small app with the server's error handling, middleware and docs; with ``seen``, every path that
    reaches it is recorded there."""
    app = FastAPI(docs_url=None, redoc_url=None)
    install_error_handlers(app)
    install_docs(app)
    app.add_middleware(HeadAsGet)
    app.add_middleware(RequestContext)

    @app.get("/health")
    async def health() -> dict:
        return {"status": "ok"}

    @app.post("/echo")
    async def echo(body: Echo) -> dict:
        return {"input": body.input}

    @app.get("/slow")
    async def slow() -> dict:
        # The request is in, so the time the app then takes is not the client's to account for.
        await anyio.sleep(2.5 * TIMEOUT_REQUEST)
        return {"status": "done"}

    @app.get("/bad-model")
    async def bad_model() -> dict:
        raise InvalidInputError("The model '\ud800' does not exist on this server.", param="model")

    @app.get("/crash")
    async def crash() -> dict:
        raise RuntimeError("broken \udfff")

    if seen is None:
        return app

    async def recording(scope, receive, send) -> None:
        if scope["type"] == "http":
            seen.append(scope["path"])
        await app(scope, receive, send)

    return recording


@pytest.fixture(scope="module")
def seen() -> list[str]:
    return []


@pytest.fixture(scope="module")
def address(seen) -> Iterator[tuple[str, int]]:
    with running(make_app(seen), timeout_request=TIMEOUT_REQUEST, lifespan="off") as url:
        host, port = url.removeprefix("http://").rsplit(":", 1)
        yield host, int(port)


@pytest.fixture
def http(address) -> Iterator[httpx.Client]:
    host, port = address
    with httpx.Client(base_url=f"http://{host}:{port}", timeout=WAIT) as c:
        yield c


def connect(address: tuple[str, int]) -> socket.socket:
    return socket.create_connection(address, timeout=WAIT)


def read_until_closed(conn: socket.socket) -> bytes:
    """Everything the server sends until it closes; a reset counts as closed. Times out (fails) after WAIT."""
    received = b""
    with contextlib.suppress(ConnectionResetError):
        while chunk := conn.recv(65536):
            received += chunk
    return received


def status_of(response: bytes) -> int:
    return int(response.split(b" ", 2)[1])


def body_of(response: bytes) -> dict:
    return json.loads(response.partition(b"\r\n\r\n")[2])


# ---------------------------------------------------------------------- the config


def test_the_config_selects_the_bounded_protocol():
    config = uvicorn_config(make_app(), timeout_request=3.0)
    config.load()
    assert config.http_protocol_class is BoundedH11Protocol
    assert config.max_header_bytes == MAX_HEADER_BYTES
    assert config.h11_max_incomplete_event_size == MAX_HEADER_BYTES
    assert config.timeout_request == 3.0
    assert config.workers == 1


def test_normal_requests_still_work(http):
    assert http.get("/health").json() == {"status": "ok"}
    # The second request reuses the connection the first left open.
    reply = http.post("/echo", json={"input": "Hello there."})
    assert reply.status_code == 200 and reply.json() == {"input": "Hello there."}
    big_but_allowed = "a" * (MAX_HEADER_BYTES // 2)
    assert http.get("/health", headers={"x-long": big_but_allowed}).status_code == 200


def test_a_slow_app_is_not_cut_off_by_the_request_timeout(http):
    reply = http.get("/slow")
    assert reply.status_code == 200 and reply.json() == {"status": "done"}


# ---------------------------------------------------------------------- request head size


def test_a_head_over_the_limit_gets_431_before_the_app_sees_it(address, seen):
    head = b"GET /over-the-limit HTTP/1.1\r\nHost: x\r\nX-Big: "
    # One byte over the limit and no end of headers: the server must refuse on the last byte it reads, so
    # nothing is left unread when it closes and its answer arrives intact.
    head += b"a" * (MAX_HEADER_BYTES + 1 - len(head))
    with connect(address) as conn:
        conn.sendall(head)
        response = read_until_closed(conn)
    assert status_of(response) == 431
    assert body_of(response)["error"]["code"] == "request_header_fields_too_large"
    assert "/over-the-limit" not in seen


def test_a_one_mib_header_is_refused(address, seen):
    request = b"GET /one-mib HTTP/1.1\r\nHost: x\r\nX-Big: " + b"a" * (1 << 20) + b"\r\n\r\n"
    with connect(address) as conn:
        with contextlib.suppress(ConnectionError):
            conn.sendall(request)  # the server may close before it has all of it
        response = read_until_closed(conn)
    # Either the 431 arrives, or the close reset the connection (the rest of the header was unread).
    assert response == b"" or status_of(response) == 431
    assert "/one-mib" not in seen


# ---------------------------------------------------------------------- time to send a request


def test_a_stalled_request_head_is_closed(address, seen):
    with connect(address) as conn:
        conn.sendall(b"POST /stalled-head HTTP/1.1\r\nHost: x\r\n")
        response = read_until_closed(conn)  # returns once the server closes
    assert response == b"" or status_of(response) == 408
    assert "/stalled-head" not in seen


def test_a_trickled_request_head_is_closed(address):
    """Sending a byte now and then must not keep the connection: the deadline is for the whole request."""
    with connect(address) as conn:
        conn.sendall(b"GET /trickle HTTP/1.1\r\nHost: x\r\nX-Slow: ")
        deadline = time.monotonic() + WAIT
        while True:
            assert time.monotonic() < deadline, "the server kept a trickling connection open"
            readable, _, _ = select.select([conn], [], [], TIMEOUT_REQUEST / 5)
            if readable:
                break
            try:
                conn.sendall(b"a")
            except ConnectionError:
                return
        read_until_closed(conn)


def test_an_idle_connection_is_closed(address):
    with connect(address) as conn:
        assert read_until_closed(conn) == b""


def test_a_stalled_body_gets_408(address, seen):
    with connect(address) as conn:
        conn.sendall(b"POST /echo HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
                     b"Content-Length: 100\r\n\r\n{\"input\": ")
        response = read_until_closed(conn)
    assert status_of(response) == 408
    error = body_of(response)["error"]
    assert error["code"] == "request_timeout" and error["type"] == "invalid_request_error"


def test_the_connection_serves_the_next_request_after_a_timely_one(address):
    request = b"GET /health HTTP/1.1\r\nHost: x\r\n\r\n"
    with connect(address) as conn:
        conn.sendall(request)
        first = conn.recv(65536)
        conn.sendall(request)
        second = conn.recv(65536)
    assert status_of(first) == 200 and status_of(second) == 200


# ---------------------------------------------------------------------- lone surrogates


def test_error_bodies_encode_lone_surrogates():
    body = error_body("no model '\ud800'", "invalid_request_error", "model\udfff", None)
    encoded = json.dumps(body, ensure_ascii=False).encode("utf-8")
    assert json.loads(encoded)["error"]["message"] == "no model '\\ud800'"
    assert error_response(400, "\ud800", "invalid_request_error").status_code == 400


def test_a_library_error_echoing_a_surrogate_is_a_400(http):
    reply = http.get("/bad-model")
    assert reply.status_code == 400
    error = reply.json()["error"]
    assert error["param"] == "model" and "\\ud800" in error["message"]


def test_a_surrogate_in_a_validated_field_is_a_400(http):
    reply = http.post("/echo", content=b'{"input": "Hi \\ud800 there"}', headers={"content-type": "application/json"})
    assert reply.status_code == 400
    error = reply.json()["error"]
    assert error["param"] == "input" and "unpaired UTF-16 surrogate" in error["message"]


def test_an_unhandled_error_mentioning_a_surrogate_is_a_plain_500(http):
    reply = http.get("/crash")
    assert reply.status_code == 500
    assert reply.json()["error"]["type"] == "server_error"
    assert reply.headers["x-request-id"] in reply.json()["error"]["message"]


def test_reject_surrogates():
    assert reject_surrogates("Grüße 👋", "input") == "Grüße 👋"
    with pytest.raises(InvalidInputError) as raised:
        reject_surrogates("ab\ud83d", "voice")
    assert raised.value.param == "voice" and "character 2" in raised.value.message


# ---------------------------------------------------------------------- HEAD


def test_head_answers_like_get_without_a_body():
    # In process, so the middleware itself must drop the body (uvicorn would hide a body it left in).
    with TestClient(make_app()) as client:
        got = client.get("/health")
        head = client.head("/health")
    assert head.status_code == 200 and head.content == b""
    assert head.headers["content-length"] == str(len(got.content))
    assert head.headers["content-type"] == got.headers["content-type"]


def test_head_over_the_server_keeps_the_connection_usable(address):
    with connect(address) as conn:
        conn.sendall(b"HEAD /health HTTP/1.1\r\nHost: x\r\n\r\nGET /health HTTP/1.1\r\nHost: x\r\n\r\n")
        received = b""
        while received.count(b"HTTP/1.1 200") < 2 or not received.endswith(b"}"):
            received += conn.recv(65536)
    head, get = received.split(b"HTTP/1.1 200")[1:]
    assert head.endswith(b"\r\n\r\n")  # headers only
    assert json.loads(get.partition(b"\r\n\r\n")[2]) == {"status": "ok"}


# ---------------------------------------------------------------------- docs


@pytest.mark.parametrize("page", ["/docs", "/redoc"])
def test_docs_load_every_asset_from_the_server(page):
    app = FastAPI(docs_url=None, redoc_url=None)
    install_docs(app)
    # With API keys on, the docs and their files stay public, as /openapi.json is.
    with TestClient(ApiKeyAuth(app, keys=["secret"]), base_url="http://docs.test") as client:
        html = client.get(page)
        assert html.status_code == 200 and html.headers["content-type"].startswith("text/html")
        urls = re.findall(r'<(?:script|link)[^>]*?\s(?:src|href)="([^"]+)"', html.text)
        assert any(u.endswith(".js") for u in urls)
        for url in urls:
            assert url.startswith("/") and not url.startswith("//") or url.startswith("http://docs.test/"), url
            assert client.get(url).status_code == 200, url
        assert client.get("/openapi.json").status_code == 200
    assert "cdn" not in html.text and "fonts.googleapis" not in html.text
