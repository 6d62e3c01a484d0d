"""/v1/chat/completions (and the Voxtral branch of /v1/audio/transcriptions) through a real uvicorn and the openai
client, on a tiny random Voxtral hosted next to a tiny Dia."""

from __future__ import annotations

import base64
import io

import httpx
import numpy as np
import pytest
from servers import WAIT, running

from faster_dia.testing import write_tiny_voxtral

openai = pytest.importorskip("openai")
pytest.importorskip("mistral_common")


def wav_bytes(seconds: float, seed: int, rate: int = 16000) -> bytes:
    import soundfile

    samples = np.random.default_rng(seed).standard_normal(int(seconds * rate)).astype(np.float32) * 0.1
    buffer = io.BytesIO()
    soundfile.write(buffer, samples, rate, format="WAV")
    return buffer.getvalue()


CLIP = wav_bytes(1.2, 3)
B64 = base64.b64encode(CLIP).decode()
MODEL = "Voxtral-Tiny"


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    root = tmp_path_factory.mktemp("voxtral-server")
    allowed = root / "allowed"
    allowed.mkdir()
    (allowed / "clip.wav").write_bytes(CLIP)
    (root / "secret.wav").write_bytes(CLIP)
    return root


@pytest.fixture(scope="module")
def voxtral(files):
    import faster_dia

    model = faster_dia.load(write_tiny_voxtral(files / MODEL), device="cpu", max_batch=4)
    yield model
    model.close()


@pytest.fixture(scope="module")
def base_url(voxtral, tts, files):
    from faster_dia.server import create_app

    app = create_app([voxtral, tts], allow_file_dir=files / "allowed", data_dir=files / "data")
    with running(app) as url:
        yield url


@pytest.fixture(scope="module")
def client(base_url):
    return openai.OpenAI(base_url=f"{base_url}/v1", api_key="x", max_retries=0, timeout=WAIT)


@pytest.fixture(scope="module")
def http(base_url):
    with httpx.Client(base_url=base_url, timeout=WAIT) as c:
        yield c


def audio_message(part: dict, text: str = "What is said?") -> list[dict]:
    return [{"role": "user", "content": [part, {"type": "text", "text": text}]}]


INPUT_AUDIO = {"type": "input_audio", "input_audio": {"data": B64, "format": "wav"}}
DATA_URI = {"type": "audio_url", "audio_url": {"url": "data:audio/wav;base64," + B64}}


def test_non_streamed_completion_matches_the_library(client, voxtral):
    messages = audio_message(INPUT_AUDIO)
    reply = client.chat.completions.create(model=MODEL, messages=messages, max_tokens=12, seed=1)
    expected = voxtral.chat(messages, max_tokens=12, seed=1)
    assert reply.object == "chat.completion"
    assert reply.model == MODEL
    assert reply.choices[0].message.content == expected.text
    assert reply.choices[0].message.role == "assistant"
    assert reply.choices[0].finish_reason == "length"
    assert reply.usage.prompt_tokens == expected.prompt_tokens
    assert reply.usage.completion_tokens == 12
    assert reply.usage.total_tokens == expected.prompt_tokens + 12


def test_data_uri_audio_equals_base64_audio(client):
    a = client.chat.completions.create(model=MODEL, messages=audio_message(INPUT_AUDIO), max_tokens=8)
    b = client.chat.completions.create(model=MODEL, messages=audio_message(DATA_URI), max_tokens=8)
    assert a.choices[0].message.content == b.choices[0].message.content


def test_streamed_completion(client):
    messages = audio_message(DATA_URI)
    whole = client.chat.completions.create(model=MODEL, messages=messages, max_tokens=16, temperature=0.8, seed=4)
    stream = client.chat.completions.create(model=MODEL, messages=messages, max_tokens=16, temperature=0.8, seed=4,
                                            stream=True, stream_options={"include_usage": True})
    chunks = list(stream)
    assert all(c.object == "chat.completion.chunk" for c in chunks)
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text == whole.choices[0].message.content
    finishes = [c.choices[0].finish_reason for c in chunks if c.choices and c.choices[0].finish_reason]
    assert finishes == ["length"]
    assert chunks[-1].choices == [] and chunks[-1].usage.completion_tokens == 16


def test_stream_ends_with_done(http):
    body = {"model": MODEL, "messages": [{"role": "user", "content": "hi"}], "max_tokens": 4, "stream": True}
    with http.stream("POST", "/v1/chat/completions", json=body) as response:
        lines = [line for line in response.iter_lines() if line]
    assert lines[-1] == "data: [DONE]"


def test_file_url_inside_the_allowed_directory(client, files):
    part = {"type": "audio_url", "audio_url": {"url": (files / "allowed" / "clip.wav").as_uri()}}
    a = client.chat.completions.create(model=MODEL, messages=audio_message(part), max_tokens=8)
    b = client.chat.completions.create(model=MODEL, messages=audio_message(INPUT_AUDIO), max_tokens=8)
    assert a.choices[0].message.content == b.choices[0].message.content


@pytest.mark.parametrize("messages, match", [
    (audio_message({"type": "input_audio", "input_audio": {"data": base64.b64encode(b"noise" * 50).decode(),
                                                           "format": "wav"}}), "audio"),
    (audio_message({"type": "image_url", "image_url": {"url": "data:image/png;base64,AAAA"}}), "image_url"),
    (audio_message({"type": "audio_url", "audio_url": {"url": "file:///etc/passwd"}}), "outside"),
    (audio_message({"type": "audio_url", "audio_url": {"url": "http://127.0.0.1:1/clip.wav"}}), "non-public"),
])
def test_bad_requests_get_openai_errors(client, messages, match):
    with pytest.raises(openai.BadRequestError, match=match) as caught:
        client.chat.completions.create(model=MODEL, messages=messages, max_tokens=4)
    assert caught.value.body["param"] == "messages"


def test_file_url_outside_by_dot_dot_is_refused(client, files):
    url = (files / "allowed").as_uri() + "/../secret.wav"
    with pytest.raises(openai.BadRequestError, match="outside"):
        client.chat.completions.create(model=MODEL, messages=audio_message(
            {"type": "audio_url", "audio_url": {"url": url}}), max_tokens=4)


def test_too_long_audio_is_refused(client, voxtral):
    limit, voxtral.max_audio_seconds = voxtral.max_audio_seconds, 1.0
    try:
        with pytest.raises(openai.BadRequestError, match="second|long"):
            client.chat.completions.create(model=MODEL, messages=audio_message(INPUT_AUDIO), max_tokens=4)
    finally:
        voxtral.max_audio_seconds = limit


def test_models_route_lists_voxtral(client):
    ids = [m.id for m in client.models.list().data]
    assert MODEL in ids


def test_speech_model_in_chat_and_voxtral_in_speech_are_400(client, http, tts):
    with pytest.raises(openai.BadRequestError, match="speech"):
        client.chat.completions.create(model=tts.model_id, messages=[{"role": "user", "content": "hi"}])
    response = http.post("/v1/audio/speech", json={"model": MODEL, "input": "[S1] Hello."})
    assert response.status_code == 400
    assert "chat/completions" in response.json()["error"]["message"]


def test_transcription_with_a_voxtral_model_id(client, http, voxtral):
    expected = voxtral.transcribe(CLIP, language="en")
    result = client.audio.transcriptions.create(model=MODEL, file=("clip.wav", CLIP), language="en")
    assert result.text == expected
    plain = http.post("/v1/audio/transcriptions", data={"model": MODEL, "language": "en", "response_format": "text"},
                      files={"file": ("clip.wav", CLIP)})
    assert plain.text == expected + "\n"
    verbose = http.post("/v1/audio/transcriptions", data={"model": MODEL, "response_format": "verbose_json"},
                        files={"file": ("clip.wav", CLIP)}).json()
    assert verbose["duration"] == pytest.approx(1.2) and len(verbose["segments"]) == 1
    srt = http.post("/v1/audio/transcriptions", data={"model": MODEL, "language": "en", "response_format": "srt"},
                    files={"file": ("clip.wav", CLIP)})
    assert srt.text.startswith("1\n00:00:00,000 --> 00:00:01,200\n")


def test_streamed_transcription_with_a_voxtral_model_id(http, voxtral):
    expected = voxtral.transcribe(CLIP, language="en")
    with http.stream("POST", "/v1/audio/transcriptions", data={"model": MODEL, "language": "en", "stream": "true"},
                     files={"file": ("clip.wav", CLIP)}) as response:
        import json

        events = [json.loads(line[6:]) for line in response.iter_lines() if line.startswith("data: ")]
    assert events[-1] == {"type": "transcript.text.done", "text": expected}
    assert "".join(e["delta"] for e in events if e["type"] == "transcript.text.delta").strip() == expected


def test_undecodable_upload_for_voxtral_transcription(http):
    response = http.post("/v1/audio/transcriptions", data={"model": MODEL}, files={"file": ("x.wav", b"nope" * 10)})
    assert response.status_code == 400


def test_text_session_with_voxtral_is_refused(base_url):
    import json

    from websockets.exceptions import ConnectionClosed
    from websockets.sync.client import connect

    url = base_url.replace("http://", "ws://") + "/v1/audio/speech/stream"
    with connect(url, open_timeout=WAIT) as socket:
        socket.send(json.dumps({"type": "session.start", "model": MODEL}))
        events = []
        while True:
            try:
                events.append(json.loads(socket.recv(timeout=WAIT)))
            except ConnectionClosed:
                break
    (error,) = [e for e in events if e["type"] == "error"]
    assert error["error"]["param"] == "model" and "speech" in error["error"]["message"]


def test_health_and_model_card_tolerate_a_model_without_audio_output(http):
    assert http.get("/health").status_code == 200
    card = http.get(f"/v1/models/{MODEL}").json()
    assert card["family"] == "voxtral" and card["sample_rate"] is None
