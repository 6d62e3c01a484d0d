"""Text that arrives while speech plays: the Python API and the WebSocket at /v1/audio/speech/stream.

Orderings are checked by message order (audio received before the rest of the text is sent), never by time."""

from __future__ import annotations

import asyncio
import contextlib
import json
import time

import httpx
import numpy as np
import pytest
from servers import WAIT, running
from websockets.exceptions import ConnectionClosed
from websockets.sync.client import connect

from faster_dia.server import create_app

WORDS = ("[S1] Hello there, how are you doing on this fine and sunny morning, my good old friend? [S2] I am "
         "well, thank you, and glad to see the sun again after all that rain.")


def pieces(text: str, size: int = 7) -> list[str]:
    return [text[i:i + size] for i in range(0, len(text), size)]


# ---------------------------------------------------------------------- Python


def test_dia2_text_in_pieces_gives_the_audio_of_the_whole_script(tts2):
    whole = tts2.generate(WORDS, seed=4)
    stream = tts2.stream_text(iter(pieces(WORDS)), seed=4)
    audio = np.concatenate(list(stream))
    np.testing.assert_allclose(audio, whole.audio, atol=1e-4)
    assert [w for w, _ in stream.words] == [w for w, _ in whole.timestamps]


def test_async_text_pieces(tts2):
    async def writer():
        for piece in pieces(WORDS, 11):
            await asyncio.sleep(0)
            yield piece

    async def run():
        stream = tts2.astream_text(writer(), seed=4)
        return np.concatenate([chunk async for chunk in stream])

    np.testing.assert_allclose(asyncio.run(run()), tts2.generate(WORDS, seed=4).audio, atol=1e-4)


def test_dia1_speaks_each_sentence_once_it_is_complete(tts):
    stream = tts.open_text_stream(seed=1, max_new_tokens=40)
    stream.append("[S1] The first sentence is here. The sec")
    first = next(stream)  # audio of the first sentence, while the second is still being written
    assert first.size and stream._audio.plan.chunks == ["[S1] The first sentence is here."]
    stream.append("ond one follows. [S2] And a reply")
    stream.end()
    rest = list(stream)
    assert rest and stream._audio.plan.chunks == [
        "[S1] The first sentence is here.", "[S1] The second one follows.", "[S2] And a reply"]


def test_a_failing_writer_reaches_the_reader(tts2):
    def broken():
        yield "[S1] Hello there "
        raise RuntimeError("the writer broke")

    with pytest.raises(RuntimeError, match="the writer broke"):
        list(tts2.stream_text(broken(), seed=1))


# ---------------------------------------------------------------------- the WebSocket


@pytest.fixture(scope="module")
def server(tts, tts2):
    with running(create_app([tts2, tts], api_keys=["key"])) as url:
        yield url.replace("http://", "ws://")


@contextlib.contextmanager
def session(url: str, **start):
    with connect(f"{url}/v1/audio/speech/stream?token=key", open_timeout=WAIT, max_size=None) as socket:
        socket.send(json.dumps({"type": "session.start", "seed": 4, **start}))
        yield socket


def receive_all(socket) -> tuple[bytes, list[dict]]:
    audio, events = b"", []
    while True:
        try:
            message = socket.recv(timeout=WAIT)
        except ConnectionClosed:
            return audio, events
        if isinstance(message, bytes):
            audio += message
        else:
            events.append(json.loads(message))


def test_audio_streams_back_before_the_text_is_complete(server, tts2):
    parts = pieces(WORDS)
    with session(server, model="dia2") as socket:
        sent = 0
        for piece in parts[: len(parts) // 2]:
            socket.send(json.dumps({"type": "text.append", "text": piece}))
            sent += 1
        early = b""
        while not early:  # audio arrives while half of the text is still unsent
            message = socket.recv(timeout=WAIT)
            if isinstance(message, bytes):
                early = message
        assert sent < len(parts)
        for piece in parts[sent:]:
            socket.send(json.dumps({"type": "text.append", "text": piece}))
        socket.send(json.dumps({"type": "text.end"}))
        audio, events = receive_all(socket)
    whole = tts2.generate(WORDS, seed=4)
    assert (len(early) + len(audio)) // 2 == round(whole.duration * 24000)  # pcm, 24 kHz 16-bit
    words = [e["word"] for e in events if e["type"] == "word"]
    assert words == [w for w, _ in whole.timestamps]
    assert events[-1]["type"] == "done" and events[-1]["usage"]["input_characters"] == len(WORDS)


def test_text_that_stalls_mid_sentence_then_resumes(server, tts2):
    with session(server, model="dia2") as socket:
        # Audio trails the text by the model's delay and lookahead, so a few words' worth comes back first.
        socket.send(json.dumps({"type": "text.append", "text": "[S1] Hello there, how are you doing on this bright "
                                                               "and breezy day, my good old friend from the"}))
        while not isinstance(socket.recv(timeout=WAIT), bytes):
            pass
        time.sleep(0.5)  # the writer is slow: generation waits, holding its slot
        socket.send(json.dumps({"type": "text.append", "text": " fine morning?"}))
        socket.send(json.dumps({"type": "text.flush"}))
        socket.send(json.dumps({"type": "text.end"}))
        _, events = receive_all(socket)
    words = [e["word"] for e in events if e["type"] == "word"]
    spoken = ("Hello there, how are you doing on this bright and breezy day, my good old friend from the fine "
              "morning?").split()
    assert words == spoken and events[-1]["type"] == "done"  # every word once, in order, across the stall


def test_a_client_that_leaves_frees_its_slot(server, tts2):
    with session(server, model="dia2") as socket:
        socket.send(json.dumps({"type": "text.append", "text": WORDS}))
        while not isinstance(socket.recv(timeout=WAIT), bytes):
            pass
    # The connection is closed mid-speech.
    http = server.replace("ws://", "http://")
    deadline = time.monotonic() + WAIT
    while httpx.get(f"{http}/health").json()["in_flight"] or tts2.engine.busy:
        assert time.monotonic() < deadline, "the session kept its slot"
        time.sleep(0.05)
    assert tts2.engine.generator.free_slots == tts2.engine.max_batch


def test_dia1_sessions_speak_sentence_by_sentence(server):
    with session(server, model="dia", max_new_tokens=60) as socket:
        socket.send(json.dumps({"type": "text.append", "text": "[S1] One whole sentence. And half"}))
        while not isinstance(socket.recv(timeout=WAIT), bytes):
            pass
        socket.send(json.dumps({"type": "text.append", "text": " of another."}))
        socket.send(json.dumps({"type": "text.end"}))
        _, events = receive_all(socket)
    assert events[-1]["type"] == "done"


@pytest.mark.parametrize(("messages", "param_or_code"), [
    (["{not json"], "invalid_json"),
    ([json.dumps({"type": "text.append", "text": "hi"})], "type"),
    ([json.dumps({"type": "session.start", "model": "dia2"}), json.dumps({"type": "dance"})], "type"),
    ([json.dumps({"type": "session.start", "model": "dia2"}), json.dumps({"type": "text.append", "text": 5})],
     "text"),
    ([json.dumps({"type": "session.start", "model": "dia2"}),
      json.dumps({"type": "text.append", "text": "a" * 70000})], "message_too_large"),
    ([json.dumps({"type": "session.start", "model": "nope"})], "model"),
    ([json.dumps({"type": "session.start", "response_format": "flac"})], "response_format"),
    ([json.dumps({"type": "session.start", "voice": "/etc/hostname"})], "voice"),
])
def test_malformed_messages_get_an_error_and_a_clean_close(server, messages, param_or_code):
    with connect(f"{server}/v1/audio/speech/stream?token=key", open_timeout=WAIT, max_size=None) as socket:
        for message in messages:
            socket.send(message)
        _, events = receive_all(socket)
    (error,) = [e for e in events if e["type"] == "error"]
    assert set(error["error"]) == {"message", "type", "param", "code"}
    assert param_or_code in (error["error"]["param"], error["error"]["code"]), error


def test_keys_apply_to_the_websocket(server):
    with connect(f"{server}/v1/audio/speech/stream", open_timeout=WAIT) as socket:
        _, events = receive_all(socket)  # refused before any message
    assert events[0]["type"] == "error" and events[0]["error"]["code"] == "invalid_api_key"
    headers = {"Authorization": "Bearer key"}
    with connect(f"{server}/v1/audio/speech/stream", additional_headers=headers, open_timeout=WAIT) as socket:
        socket.send(json.dumps({"type": "session.start", "model": "dia2", "seed": 1}))
        socket.send(json.dumps({"type": "text.append", "text": "[S1] Hi there."}))
        socket.send(json.dumps({"type": "text.end"}))
        audio, events = receive_all(socket)
    assert audio and events[-1]["type"] == "done"


def test_a_session_outlives_the_time_allowed_to_send_a_request(tts2):
    """The bound on sending an HTTP request stops at the WebSocket upgrade: a session may last any time."""
    with running(create_app(tts2), timeout_request=1.0) as url:
        with connect(f"{url.replace('http://', 'ws://')}/v1/audio/speech/stream", open_timeout=WAIT) as socket:
            socket.send(json.dumps({"type": "session.start", "seed": 1}))
            socket.send(json.dumps({"type": "text.append", "text": "[S1] Hello there, "}))
            time.sleep(2.5)  # past the request deadline of 1 s
            socket.send(json.dumps({"type": "text.append", "text": "my friend."}))
            socket.send(json.dumps({"type": "text.end"}))
            audio, events = receive_all(socket)
    assert audio and events[-1]["type"] == "done"
