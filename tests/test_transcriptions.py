"""``/v1/audio/transcriptions`` and ``/v1/audio/translations`` through a real uvicorn and the openai client,
with Whisper tiny.en and espeak-ng speech."""

from __future__ import annotations

import re
from concurrent.futures import ThreadPoolExecutor

import httpx
import numpy as np
import openai
import pytest
from servers import WAIT, running
from speech_clips import PASSAGE, SENTENCE, speak, whisper_tiny_en

from faster_dia.audio import decode_audio, encode_audio, resample
from faster_dia.server import create_app
from faster_dia.server.routes.transcriptions import MAX_UPLOAD_BYTES


@pytest.fixture(scope="module")
def clip(tmp_path_factory):
    return speak(SENTENCE, tmp_path_factory.mktemp("speech") / "hello.wav")


@pytest.fixture(scope="module")
def base_url(tts):
    app = create_app(tts, asr_model=whisper_tiny_en())
    with running(app) as url:
        yield url


@pytest.fixture(scope="module")
def client(base_url):
    return openai.OpenAI(base_url=f"{base_url}/v1", api_key="unused", max_retries=0, timeout=WAIT * 4)


def transcribe(client, clip, **options):
    with open(clip, "rb") as file:
        return client.audio.transcriptions.create(model="whisper-1", file=file, **options)


def assert_heard(text: str) -> None:
    lowered = text.lower()
    for word in ("hello", "world", "recognition"):
        assert word in lowered, f"{word!r} not in {text!r}"


def clip_seconds(clip) -> float:
    samples, rate = decode_audio(clip)
    return samples.size / rate


def test_json(client, clip):
    result = transcribe(client, clip)
    assert_heard(result.text)
    assert result.usage.type == "duration" and result.usage.seconds == 5  # 4.7 s, billed as whole seconds


def test_the_recognizer_answers_to_its_own_name(client, clip):
    with open(clip, "rb") as file:
        result = client.audio.transcriptions.create(model="model", file=file, language="en")
    assert_heard(result.text)


def test_text(client, clip):
    text = transcribe(client, clip, response_format="text")
    assert isinstance(text, str) and text.endswith("\n")
    assert_heard(text)


def caption_times(text: str, separator: str) -> list[tuple[float, float]]:
    pattern = rf"(\d\d):(\d\d):(\d\d){re.escape(separator)}(\d\d\d) --> (\d\d):(\d\d):(\d\d){re.escape(separator)}(\d\d\d)"
    times = []
    for match in re.finditer(pattern, text):
        h1, m1, s1, ms1, h2, m2, s2, ms2 = map(int, match.groups())
        times.append((h1 * 3600 + m1 * 60 + s1 + ms1 / 1000, h2 * 3600 + m2 * 60 + s2 + ms2 / 1000))
    return times


def test_srt(client, clip):
    text = transcribe(client, clip, response_format="srt")
    assert text.startswith("1\n00:00:00,000 --> 00:00:0")
    assert_heard(text)
    times = caption_times(text, ",")
    assert times and all(0 <= start < end <= clip_seconds(clip) + 0.01 for start, end in times)


def test_vtt(client, clip):
    text = transcribe(client, clip, response_format="vtt")
    assert text.startswith("WEBVTT\n\n00:00:00.000 --> ")
    assert_heard(text)
    assert caption_times(text, ".")


def test_verbose_json_with_words_and_segments(client, clip):
    result = transcribe(client, clip, response_format="verbose_json", timestamp_granularities=["word", "segment"])
    duration = clip_seconds(clip)
    assert_heard(result.text)
    assert result.language == "english" and result.duration == pytest.approx(duration, abs=0.01)
    words = result.words
    assert words and words[0].word.lower().startswith("hello")
    starts = [w.start for w in words]
    assert starts == sorted(starts)
    assert all(0.0 <= w.start <= w.end <= duration + 0.01 for w in words)
    segments = result.segments
    assert [s.id for s in segments] == list(range(len(segments)))
    assert "".join(s.text for s in segments).strip() == result.text
    assert all(s.tokens and s.avg_logprob <= 0 and s.temperature == 0.0 for s in segments)
    assert result.usage.seconds == 5


def test_verbose_json_defaults_to_segments(client, clip):
    result = transcribe(client, clip, response_format="verbose_json")
    assert result.segments and result.words is None
    result = transcribe(client, clip, response_format="verbose_json", timestamp_granularities=["word"])
    assert result.words and result.segments is None


def test_stream(client, tmp_path):
    passage = speak(PASSAGE, tmp_path / "passage.wav")
    with open(passage, "rb") as file:
        events = list(client.audio.transcriptions.create(model="whisper-1", file=file, stream=True))
    types = [event.type for event in events]
    # A delta per decoded segment, then the whole text.
    assert types == ["transcript.text.delta"] * (len(events) - 1) + ["transcript.text.done"]
    assert len(events) >= 3
    done = events[-1].text
    assert "recognition" in done.lower() and "lazy" in done.lower()
    assert "".join(event.delta for event in events[:-1]) == done
    assert not events[0].delta.startswith(" ")
    assert done == transcribe(client, passage).text


def test_stream_as_text(base_url, clip):
    with httpx.stream("POST", f"{base_url}/v1/audio/transcriptions", timeout=WAIT * 4, files=wav_file(clip),
                      data={"model": "whisper-1", "stream": "true", "response_format": "text"}) as response:
        assert response.status_code == 200
        assert response.headers["content-type"].startswith("text/event-stream")
        body = response.read().decode()
    assert body.startswith('data: {"type": "transcript.text.delta", "delta": "Hello')
    assert '"type": "transcript.text.done"' in body


@pytest.mark.filterwarnings("ignore::DeprecationWarning")  # the SDK marks translations deprecated
def test_english_only_model_cannot_translate(client, clip):
    with open(clip, "rb") as file, pytest.raises(openai.BadRequestError) as caught:
        client.audio.translations.create(model="whisper-1", file=file)
    error = caught.value.body
    assert error["param"] == "model" and "English-only" in error["message"]


# ---------------------------------------------------------------------- bad requests


def post(base_url: str, files: dict | None = None, path: str = "/v1/audio/transcriptions", **fields) -> httpx.Response:
    data = {"model": "whisper-1", **fields}
    return httpx.post(f"{base_url}{path}", data=data, files=files, timeout=WAIT * 4)


def assert_openai_error(response: httpx.Response, status: int, param: str | None) -> dict:
    assert response.status_code == status, response.text
    error = response.json()["error"]
    assert set(error) == {"message", "type", "param", "code"}
    assert error["type"] == "invalid_request_error" and error["message"]
    assert error["param"] == param
    return error


def wav_file(clip) -> dict:
    return {"file": ("hello.wav", clip.read_bytes(), "audio/wav")}


@pytest.mark.parametrize(("files", "fields", "status", "param"), [
    ({"file": ("empty.wav", b"", "audio/wav")}, {}, 400, "file"),
    ({"file": ("notes.wav", b"these are not audio samples" * 50, "audio/wav")}, {}, 400, "file"),
    (None, {}, 400, "file"),
    ("wav", {"model": "gpt-4o-transcribe"}, 404, "model"),
    ("wav", {"response_format": "mp3"}, 400, "response_format"),
    ("wav", {"temperature": "1.5"}, 400, "temperature"),
    ("wav", {"temperature": "warm"}, 400, "temperature"),
    ("wav", {"language": "fr"}, 400, "language"),
    ("wav", {"timestamp_granularities[]": "word"}, 400, "timestamp_granularities[]"),
    ("wav", {"timestamp_granularities[]": "sentence", "response_format": "verbose_json"}, 400,
     "timestamp_granularities[]"),
    ("wav", {"stream": "true", "response_format": "srt"}, 400, "stream"),
])
def test_bad_requests(base_url, clip, files, fields, status, param):
    response = post(base_url, wav_file(clip) if files == "wav" else files, **fields)
    assert_openai_error(response, status, param)


def test_translation_errors(base_url, clip):
    assert_openai_error(post(base_url, None, path="/v1/audio/translations"), 400, "file")
    assert_openai_error(post(base_url, wav_file(clip), path="/v1/audio/translations", model="tts-1"), 404, "model")


def test_missing_model_field(base_url, clip):
    response = httpx.post(f"{base_url}/v1/audio/transcriptions", files=wav_file(clip), timeout=WAIT)
    assert_openai_error(response, 400, "model")


def test_too_large(base_url):
    big = {"file": ("big.wav", b"\0" * (MAX_UPLOAD_BYTES + 1), "audio/wav")}
    error = assert_openai_error(post(base_url, big), 413, "file")
    assert "25 MiB" in error["message"]


def test_uploads_over_the_json_body_limit(client, clip):
    # The app limits JSON bodies to 1 MiB; audio uploads get OpenAI's 25 MiB.
    samples, rate = decode_audio(clip)
    padded = np.concatenate([resample(samples, rate, 44_100), np.zeros(10 * 44_100, dtype=np.float32)])
    data = encode_audio(padded, 44_100, "wav")
    assert len(data) > 1 << 20
    result = client.audio.transcriptions.create(model="whisper-1", file=("long.wav", data))
    assert_heard(result.text)


def test_sdk_errors(client, clip):
    with pytest.raises(openai.NotFoundError):
        transcribe_as(client, clip, "whisper-2")
    with pytest.raises(openai.BadRequestError):
        client.audio.transcriptions.create(model="whisper-1", file=("x.wav", b"RIFF....WAVEfmt "))


def transcribe_as(client, clip, model):
    with open(clip, "rb") as file:
        return client.audio.transcriptions.create(model=model, file=file)


@pytest.mark.parametrize("fmt", ["mp3", "flac", "opus"])
def test_compressed_uploads(client, clip, fmt):
    samples, rate = decode_audio(clip)
    data = encode_audio(samples, rate, fmt)
    result = client.audio.transcriptions.create(model="whisper-1", file=(f"hello.{fmt}", data))
    # tiny.en hears "Hello" as "The low" in some encodings; the rest of the sentence comes through.
    assert "world" in result.text.lower() and "speech recognition system" in result.text.lower()


def test_concurrent_requests(client, clip):
    expected = transcribe(client, clip).text
    with ThreadPoolExecutor(3) as pool:
        texts = list(pool.map(lambda _: transcribe(client, clip).text, range(3)))
    assert texts == [expected] * 3


def test_default_recognizer(tts, monkeypatch):
    monkeypatch.delenv("FASTER_DIA_ASR_MODEL", raising=False)
    lazy = create_app(tts).state.server.asr
    assert lazy.model_id == "base.en" and not lazy.loaded
    monkeypatch.setenv("FASTER_DIA_ASR_MODEL", str(whisper_tiny_en()))
    assert create_app(tts).state.server.asr.model_id == "model"


def test_documented(base_url):
    schema = httpx.get(f"{base_url}/openapi.json", timeout=WAIT).json()
    for path in ("/v1/audio/transcriptions", "/v1/audio/translations"):
        assert "multipart/form-data" in schema["paths"][path]["post"]["requestBody"]["content"]
    assert "TranscriptionVerbose" in schema["components"]["schemas"]


def test_a_model_that_is_not_there(tts, clip, tmp_path, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path))
    with running(create_app(tts, asr_model="small.en")) as url:
        response = post(url, wav_file(clip), model="small.en")
    error = assert_openai_error(response, 404, "model")
    assert "hf download Systran/faster-whisper-small.en" in error["message"]
