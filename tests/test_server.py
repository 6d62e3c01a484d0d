"""Tests of the HTTP server: a real uvicorn on 127.0.0.1 around a tiny random model, driven by the openai
client and by plain httpx. Ordering checks use events, never wall-clock thresholds."""

from __future__ import annotations

import base64
import io
import json
import socket
import threading
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import anyio
import av
import httpx
import numpy as np
import openai
import pytest
from servers import WAIT, running

import faster_dia
from faster_dia.audio import resample
from faster_dia.server import create_app
from faster_dia.testing import write_tiny_checkpoint

SCRIPT = "Hello there, how are you?"
SEED = 7
TOKENS = 80  # decoder steps per request: about 0.75 s of audio, fast on a CPU
LOSSY_SLACK_SECONDS = 0.1  # mp3/aac/opus priming and padding


# ---------------------------------------------------------------------- fixtures


@pytest.fixture(scope="module")
def server_dirs(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    # Its own model rather than the shared one: without the shared model's early EOS, generation runs to
    # max_new_tokens, so the cancellation tests can tell a stopped request from one that ended by itself.
    root = tmp_path_factory.mktemp("server-model")
    return write_tiny_checkpoint("dia-1.6b-0626", root / "model"), write_tiny_checkpoint("dac", root / "codec")


@pytest.fixture(scope="module")
def tts(server_dirs) -> faster_dia.TextToSpeech:
    model, codec = server_dirs
    return faster_dia.load(model, codec=codec, device="cpu")


_references: dict[tuple[int, int], faster_dia.Speech] = {}


def reference(tts: faster_dia.TextToSpeech, seed: int = SEED, tokens: int = TOKENS) -> faster_dia.Speech:
    """What ``generate()`` makes of SCRIPT; the server must stream the same audio."""
    if (seed, tokens) not in _references:
        _references[seed, tokens] = tts.generate(SCRIPT, seed=seed, max_new_tokens=tokens)
    return _references[seed, tokens]


@pytest.fixture(scope="module")
def base_url(tts) -> Iterator[str]:
    # Small chunks so that even short test clips stream in several pieces.
    with running(create_app(tts, chunk_frames=16)) as url:
        yield url


@pytest.fixture(scope="module")
def client(base_url) -> openai.OpenAI:
    return openai.OpenAI(base_url=f"{base_url}/v1", api_key="x", max_retries=0, timeout=WAIT)


@pytest.fixture
def http(base_url) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=base_url, timeout=WAIT) as c:
        yield c


class ProbedStream:
    """Wraps an AsyncSpeechStream to record how the server consumes it; can pause the consumer between
    chunks (``before_chunk`` runs in a worker thread, so it may block)."""

    def __init__(self, inner, probe: Probe):
        self._inner = inner
        self._probe = probe
        self.produced = 0
        self.exhausted = False
        self.closed = threading.Event()

    def __getattr__(self, name: str):
        return getattr(self._inner, name)

    def __aiter__(self):
        return self

    async def __anext__(self) -> np.ndarray:
        if self._probe.before_chunk is not None and self.produced > 0:
            await anyio.to_thread.run_sync(self._probe.before_chunk, self, self.produced)
        try:
            chunk = await self._inner.__anext__()
        except StopAsyncIteration:
            self.exhausted = True
            raise
        self.produced += 1
        return chunk

    async def aclose(self) -> None:
        await self._inner.aclose()
        self.closed.set()


class Probe:
    """Replaces ``tts.astream`` for one test: records the keyword arguments the server passed and the
    streams it got, applies ``defaults`` and runs ``before_chunk(stream, index)`` in a worker thread
    before every chunk after the first."""

    def __init__(self, tts: faster_dia.TextToSpeech, monkeypatch: pytest.MonkeyPatch):
        self.calls: list[dict] = []
        self.streams: list[ProbedStream] = []
        self.defaults: dict = {}
        self.before_chunk: Callable[[ProbedStream, int], None] | None = None
        real = tts.astream

        def stream(script: str, **kwargs):
            self.calls.append(dict(kwargs))
            for key, value in self.defaults.items():
                kwargs.setdefault(key, value)
            probed = ProbedStream(real(script, **kwargs), self)
            self.streams.append(probed)
            return probed

        monkeypatch.setattr(tts, "astream", stream)


@pytest.fixture
def probe(tts, monkeypatch) -> Probe:
    return Probe(tts, monkeypatch)


def pause_after_first_chunk(probe: Probe) -> tuple[threading.Event, list[bool]]:
    """Make generation wait after its first chunk until the returned event is set; the list records
    whether it was set in time (False means the wait timed out)."""
    go = threading.Event()
    released: list[bool] = []

    def before_chunk(stream: ProbedStream, index: int) -> None:
        if index == 1:
            released.append(go.wait(WAIT))

    probe.before_chunk = before_chunk
    return go, released


# ---------------------------------------------------------------------- helpers


def speech_body(**fields) -> dict:
    return {"model": "tts-1", "input": SCRIPT, "voice": "alloy", "seed": SEED, "max_new_tokens": TOKENS, **fields}


def decode(data: bytes, fmt: str) -> tuple[np.ndarray, int]:
    """Mono float32 samples and their rate, decoded with PyAV (pcm is raw 24 kHz s16le)."""
    if fmt == "pcm":
        return np.frombuffer(data, "<i2").astype(np.float32) / 32767.0, 24000
    with av.open(io.BytesIO(data)) as container:
        stream = container.streams.audio[0]
        pieces = []
        for frame in container.decode(stream):
            array = frame.to_ndarray().reshape(-1)
            pieces.append(array.astype(np.float32) / 32767.0 if array.dtype == np.int16 else array)
        return np.concatenate(pieces).astype(np.float32), stream.codec_context.sample_rate


def as_int16(audio: np.ndarray) -> np.ndarray:
    return np.round(np.clip(audio, -1, 1) * 32767).astype(np.int32)


def assert_openai_error(response: httpx.Response, status: int, param: str | None = None) -> dict:
    assert response.status_code == status, response.text
    body = response.json()
    assert set(body) == {"error"}, body
    error = body["error"]
    assert set(error) == {"message", "type", "param", "code"}, error
    assert isinstance(error["message"], str) and error["message"]
    assert error["type"] == ("server_error" if status >= 500 else "invalid_request_error")
    if param is not None:
        assert error["param"] == param, error
    assert response.headers["x-request-id"].startswith("req_")
    return error


def stream_speech(client: openai.OpenAI, **kwargs) -> tuple[bytes, httpx.Headers, int]:
    """A streamed speech request through the openai client: (body, headers, number of pieces received)."""
    extra = {k: kwargs.pop(k) for k in ("seed", "max_new_tokens", "stream") if k in kwargs}
    extra.setdefault("seed", SEED)
    extra.setdefault("max_new_tokens", TOKENS)
    kwargs.setdefault("model", "tts-1")
    kwargs.setdefault("voice", "alloy")
    kwargs.setdefault("input", SCRIPT)
    with client.audio.speech.with_streaming_response.create(extra_body=extra, **kwargs) as response:
        pieces = list(response.iter_bytes())
        return b"".join(pieces), response.headers, len(pieces)


# ---------------------------------------------------------------------- audio


CONTENT_TYPES = {"mp3": "audio/mpeg", "opus": "audio/ogg", "aac": "audio/aac", "flac": "audio/flac",
                 "wav": "audio/wav", "pcm": "audio/pcm"}


@pytest.mark.parametrize("fmt", ["mp3", "opus", "aac", "flac", "wav", "pcm"])
def test_every_format_streams_and_decodes_to_the_generated_audio(tts, client, fmt):
    expected = reference(tts)
    data, headers, pieces = stream_speech(client, response_format=fmt)
    assert headers["content-type"].split(";")[0] == CONTENT_TYPES[fmt]
    assert headers["x-seed"] == str(SEED)
    assert headers["transfer-encoding"] == "chunked"
    audio, rate = decode(data, fmt)
    if fmt == "pcm":
        assert headers["content-type"] == "audio/pcm;rate=24000"
        want = resample(expected.audio, expected.sample_rate, 24000)
        assert len(audio) == len(want) == round(expected.duration * 24000)
        np.testing.assert_allclose(audio, want, atol=2e-3)
    elif fmt in ("wav", "flac"):
        assert rate == expected.sample_rate
        assert np.abs(as_int16(audio) - as_int16(expected.audio)).max() <= 1
    else:
        assert abs(len(audio) / rate - expected.duration) <= LOSSY_SLACK_SECONDS


@pytest.mark.parametrize("fmt", ["wav", "flac"])
def test_whole_file_equals_the_stream(tts, client, fmt):
    streamed, _, _ = stream_speech(client, response_format=fmt)
    whole = client.audio.speech.create(model="dia", voice="alloy", input=SCRIPT, response_format=fmt,
                                       extra_body={"seed": SEED, "max_new_tokens": TOKENS, "stream": False})
    a, _ = decode(streamed, fmt)
    b, _ = decode(whole.content, fmt)
    np.testing.assert_array_equal(a, b)
    # The whole file knows its length, so its header says so.
    if fmt == "wav":
        assert int.from_bytes(whole.content[40:44], "little") == 2 * len(b)


def test_sse_events_reassemble_to_the_same_audio(tts, client):
    expected = reference(tts)
    # Also: the custom-voice form of voice (a built-in name: with a seed given it changes nothing) and
    # instructions are accepted.
    data, headers, _ = stream_speech(client, response_format="wav", stream_format="sse",
                                     voice={"id": "alloy"}, instructions="Speak calmly.")
    assert headers["content-type"].startswith("text/event-stream")
    events = [json.loads(block.removeprefix("data: ")) for block in data.decode().split("\n\n") if block.strip()]
    deltas, done = events[:-1], events[-1]
    assert len(deltas) >= 2 and all(e["type"] == "speech.audio.delta" for e in deltas)
    audio, _ = decode(b"".join(base64.b64decode(e["audio"]) for e in deltas), "wav")
    assert np.abs(as_int16(audio) - as_int16(expected.audio)).max() <= 1
    assert done["type"] == "speech.audio.done"
    usage = done["usage"]
    assert usage["input_tokens"] == len(("[S1] " + SCRIPT).encode()) - 3  # [S1] is one token
    assert usage["output_tokens"] == len(expected.codes)
    assert usage["total_tokens"] == usage["input_tokens"] + usage["output_tokens"]


def test_open_webui_request_gets_mp3_and_a_seed_that_pins_the_voice(tts, http, probe):
    # Open WebUI sends only these three fields; keep the random tiny model from running to its limit.
    probe.defaults = {"max_new_tokens": TOKENS}
    first = http.post("/v1/audio/speech", json={"input": "Hi there.", "voice": "alloy", "model": "tts-1"})
    assert first.status_code == 200
    assert first.headers["content-type"] == "audio/mpeg"
    assert probe.calls[0] == {"chunk_frames": 16, "voice": "alloy"}  # no sampling fields were invented on the way
    decode(first.content, "mp3")
    seed = int(first.headers["x-seed"])
    again = http.post("/v1/audio/speech", json={"input": "Hi there.", "voice": "nova", "model": "tts-1",
                                                "seed": seed, "response_format": "mp3"})
    assert again.headers["x-seed"] == str(seed)
    assert again.content == first.content


def test_speed_changes_duration_and_aliases_are_accepted(tts, http):
    expected = reference(tts)
    for fields in ({"speed": 2.0}, {"speed_factor": 2.0, "cfg_filter_top_k": 45, "text": SCRIPT, "input": None}):
        response = http.post("/v1/audio/speech", json=speech_body(response_format="pcm", **fields))
        assert response.status_code == 200, response.text
        audio, _ = decode(response.content, "pcm")
        assert len(audio) == pytest.approx(expected.duration / 2 * 24000, abs=2)


# ---------------------------------------------------------------------- streaming behaviour


def test_first_bytes_arrive_before_generation_ends_and_health_answers_meanwhile(client, http, probe):
    go, released = pause_after_first_chunk(probe)
    with client.audio.speech.with_streaming_response.create(
        model="tts-1", voice="alloy", input=SCRIPT, response_format="pcm",
        extra_body={"seed": SEED, "max_new_tokens": TOKENS},
    ) as response:
        pieces = response.iter_bytes()
        assert next(pieces)
        stream = probe.streams[0]
        # Generation is held after its first chunk, so these bytes cannot be the whole clip...
        assert stream.produced == 1 and not stream.exhausted
        # ...and the event loop is free while the worker is mid-generation.
        health = http.get("/health", timeout=5)
        assert health.status_code == 200 and health.json()["in_flight"] == 1
        go.set()
        rest = b"".join(pieces)
    assert released == [True]
    assert rest and stream.exhausted and stream.produced >= 3


def test_client_disconnect_cancels_generation(tts, base_url, http, probe):
    go, released = pause_after_first_chunk(probe)
    tokens = 600  # far more than the test lets it make
    with httpx.stream("POST", f"{base_url}/v1/audio/speech", timeout=WAIT,
                      json=speech_body(response_format="pcm", max_new_tokens=tokens)) as response:
        assert response.status_code == 200
        assert next(response.iter_raw())
    # The connection is closed now; let the worker go on and see that it stops early.
    go.set()
    stream = probe.streams[0]
    assert stream.closed.wait(WAIT), "the stream was never closed"
    assert released == [True]
    assert not stream.exhausted and stream.frames < tokens - 20
    deadline = time.monotonic() + WAIT
    while http.get("/health").json()["in_flight"]:
        assert time.monotonic() < deadline
        time.sleep(0.02)
    # The model is free again: a new request runs to the end.
    assert http.post("/v1/audio/speech", json=speech_body(response_format="pcm")).status_code == 200


def test_concurrent_requests_queue_and_both_complete(tts, client):
    seeds = (SEED, SEED + 1)
    expected = [reference(tts, seed) for seed in seeds]
    with ThreadPoolExecutor(2) as pool:
        results = list(pool.map(lambda s: stream_speech(client, response_format="wav", seed=s), seeds))
    for (data, headers, _), want, seed in zip(results, expected, seeds, strict=True):
        assert headers["x-seed"] == str(seed)
        audio, _ = decode(data, "wav")
        assert np.abs(as_int16(audio) - as_int16(want.audio)).max() <= 1


def in_flight(url: str) -> int:
    return httpx.get(f"{url}/health").json()["in_flight"]


def wait_for(condition: Callable[[], bool]) -> None:
    deadline = time.monotonic() + WAIT
    while not condition():
        assert time.monotonic() < deadline, "condition not reached"
        time.sleep(0.02)


def test_full_queue_answers_503_and_a_queued_client_can_leave(server_dirs, monkeypatch):
    # One batch slot and one waiting place; the engine holds after the first request's first chunk, so that
    # request keeps its slot while the test fills the queue.
    tts = faster_dia.load(server_dirs[0], codec=server_dirs[1], device="cpu", max_batch=1, max_queue=1)
    probe = Probe(tts, monkeypatch)
    go, released = pause_after_first_chunk(probe)
    step = tts.engine.generator.step

    def held_step():
        if tts.engine.steps >= 40:  # the first 16-frame chunk is final after 31 steps
            go.wait(WAIT)
        return step()

    monkeypatch.setattr(tts.engine.generator, "step", held_step)
    with running(create_app(tts, chunk_frames=16)) as url:
        with httpx.stream("POST", f"{url}/v1/audio/speech", json=speech_body(response_format="pcm"),
                          timeout=WAIT) as busy:
            pieces = busy.iter_raw()
            assert next(pieces)  # generating, and held after its first chunk
            # A second request waits for its turn; it is sent by hand so that it can hang up.
            body = json.dumps(speech_body(response_format="pcm")).encode()
            port = int(url.rsplit(":", 1)[1])
            queued = socket.create_connection(("127.0.0.1", port))
            queued.sendall(b"POST /v1/audio/speech HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
                           b"Content-Length: %d\r\n\r\n%s" % (len(body), body))
            wait_for(lambda: in_flight(url) == 2)
            refused = httpx.post(f"{url}/v1/audio/speech", json=speech_body(), timeout=WAIT)
            assert_openai_error(refused, 503)
            assert int(refused.headers["retry-after"]) >= 1
            # The queued client leaves: its place is freed while the first request is still held.
            queued.close()
            wait_for(lambda: in_flight(url) == 1)
            assert len(probe.streams) == 2 and probe.streams[1].produced == 0
            go.set()
            assert b"".join(pieces)
        assert released == [True]
        # Once the first request is done there is room again.
        assert httpx.post(f"{url}/v1/audio/speech", json=speech_body(response_format="pcm"),
                          timeout=WAIT).status_code == 200
        assert probe.streams[1].produced == 0


def test_failure_mid_stream_breaks_the_transfer(http, base_url, probe):
    def before_chunk(stream: ProbedStream, index: int) -> None:
        raise RuntimeError("decoder exploded")

    probe.before_chunk = before_chunk
    with pytest.raises(httpx.HTTPError):
        with httpx.stream("POST", f"{base_url}/v1/audio/speech", json=speech_body(response_format="wav"),
                          timeout=WAIT) as response:
            response.read()
    sse = http.post("/v1/audio/speech", json=speech_body(response_format="wav", stream_format="sse"))
    last = json.loads(sse.text.strip().split("\n\n")[-1].removeprefix("data: "))
    assert last["type"] == "speech.audio.error" and "exploded" not in sse.text
    # The worker closes its stream after handing the error over, so the client can be told first.
    assert probe.streams[0].closed.wait(WAIT) and probe.streams[1].closed.wait(WAIT)


# ---------------------------------------------------------------------- errors


@pytest.mark.parametrize(("fields", "status", "param"), [
    ({"model": "gpt-9"}, 404, "model"),
    ({"speed": 5}, 400, "speed"),
    ({"speed_factor": 0.1}, 400, "speed"),
    ({"response_format": "ogg"}, 400, "response_format"),
    ({"stream_format": "xml"}, 400, "stream_format"),
    ({"input": "a" * 4097}, 400, "input"),
    ({"input": None}, 400, "input"),
    ({"input": "[S3] who?"}, 400, "input"),
    ({"temperature": "hot"}, 400, "temperature"),
    ({"top_p": 2}, 400, "top_p"),
    ({"seed": -5}, 400, "seed"),
    ({"max_new_tokens": 3}, 400, "max_new_tokens"),
    ({"max_new_tokens": 100_000}, 400, "max_new_tokens"),
])
def test_invalid_requests_get_openai_errors(http, fields, status, param):
    assert_openai_error(http.post("/v1/audio/speech", json=speech_body(**fields)), status, param)


def test_malformed_bodies_and_unknown_routes(http):
    assert_openai_error(http.post("/v1/audio/speech", content=b"{not json",
                                  headers={"content-type": "application/json"}), 400)
    assert_openai_error(http.post("/v1/audio/speech", json=["a list"]), 400)
    assert_openai_error(http.get("/v1/nothing-here"), 404)
    assert_openai_error(http.get("/v1/audio/speech"), 405)
    too_big = b'{"input": "' + b"a" * (2 << 20) + b'"}'
    assert_openai_error(http.post("/v1/audio/speech", content=too_big,
                                  headers={"content-type": "application/json"}), 413)
    chunked = http.post("/v1/audio/speech", content=iter([too_big[i:i + 65536] for i in range(0, len(too_big), 65536)]),
                        headers={"content-type": "application/json"})
    assert "content-length" not in chunked.request.headers
    assert_openai_error(chunked, 413)


def test_json_without_a_content_type_is_accepted(http):
    # What `curl -d '{...}'` sends.
    response = http.post("/v1/audio/speech", content=json.dumps(speech_body(response_format="pcm")),
                         headers={"content-type": "application/x-www-form-urlencoded"})
    assert response.status_code == 200


def test_openai_client_raises_typed_errors(client):
    with pytest.raises(openai.NotFoundError) as caught:
        client.audio.speech.create(model="gpt-9", voice="alloy", input=SCRIPT)
    assert caught.value.body["param"] == "model"
    with pytest.raises(openai.BadRequestError):
        client.audio.speech.create(model="tts-1", voice="alloy", input=SCRIPT, speed=9)


def test_internal_faults_are_500_without_details(tts, http, monkeypatch, caplog):
    def broken(*args, **kwargs):
        raise RuntimeError("secret /internal/path")

    monkeypatch.setattr(tts, "astream", broken)
    response = http.post("/v1/audio/speech", json=speech_body())
    error = assert_openai_error(response, 500)
    assert "secret" not in response.text
    assert response.headers["x-request-id"] in error["message"]
    assert any(response.headers["x-request-id"] in r.getMessage() and r.exc_info for r in caplog.records)


# ---------------------------------------------------------------------- auth and discovery


def test_api_keys_and_a_default_seed(tts):
    with running(create_app(tts, api_keys=["k1", "k2"], default_seed=1234)) as url:
        for path in ("/health", "/v1/models", "/v1/models/tts-1", "/v1/audio/models", "/v1/audio/voices"):
            assert httpx.get(url + path).status_code == 200, path
        assert_openai_error(httpx.post(f"{url}/v1/audio/speech", json=speech_body()), 401)
        # Refused before the body is looked at.
        assert_openai_error(httpx.post(f"{url}/v1/audio/speech", content=b"{bad"), 401)
        wrong = openai.OpenAI(base_url=f"{url}/v1", api_key="nope", max_retries=0)
        with pytest.raises(openai.AuthenticationError):
            wrong.audio.speech.create(model="tts-1", voice="alloy", input=SCRIPT)
        right = openai.OpenAI(base_url=f"{url}/v1", api_key="k2", max_retries=0)
        data, headers, _ = stream_speech(right, response_format="pcm")
        assert data and headers["x-seed"] == str(SEED)
        # A request without a seed gets the server's default one.
        unseeded = httpx.post(f"{url}/v1/audio/speech", headers={"Authorization": "Bearer k1"},
                              json={"input": SCRIPT, "max_new_tokens": TOKENS, "response_format": "pcm"})
        assert unseeded.status_code == 200 and unseeded.headers["x-seed"] == "1234"


def test_discovery_routes(tts, http, client):
    ids = [m.id for m in client.models.list().data]
    assert ids[0] == tts.model_id and {"dia", "tts-1", "tts-1-hd"} <= set(ids)
    assert client.models.retrieve("tts-1-hd").id == "tts-1-hd"
    assert http.get(f"/v1/models/{tts.model_id}").status_code == 200
    assert_openai_error(http.get("/v1/models/whisper-1"), 404, "model")
    assert http.get("/v1/audio/models").json() == {"models": [{"id": i} for i in ids]}
    voices = http.get("/v1/audio/voices").json()["voices"]
    assert voices and all(set(v) == {"id", "name"} for v in voices)
    health = http.get("/health").json()
    assert health["status"] == "ok" and health["sample_rate"] == tts.sample_rate


def test_serve_command_line():
    from faster_dia.cli import build_parser

    args = build_parser().parse_args(["serve", "--model", str(Path("m")), "--api-key", "a", "--api-key", "b",
                                      "--port", "9000", "--max-queue", "2"])
    assert (args.api_key, args.port, args.max_queue, args.host) == (["a", "b"], 9000, 2, "127.0.0.1")
    assert callable(args.handler)
