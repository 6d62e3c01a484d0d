"""POST /v1/dia, the hosted Dia API's shape (Segmind): JSON and multipart bodies, a voice by upload or URL, the
page's ranges as clear 400s, x-api-key, binary audio back, and 406 once a quota is spent."""

from __future__ import annotations

import json

import httpx
import numpy as np
import pytest
from conftest import EOS_LOGIT_SCALE
from receivers import FakeLazyRecognizer, FakeRecognizer, Receiver, clip_wav, decode
from servers import WAIT, running

import faster_dia
from faster_dia.server import create_app
from faster_dia.testing import write_tiny_checkpoint

TEXT = "[S1] Hello there. [S2] Hi!"


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    root = tmp_path_factory.mktemp("dia-endpoint")
    dia1 = write_tiny_checkpoint("dia-1.6b-0626", root / "dia1", eos_logit_scale=EOS_LOGIT_SCALE)
    dac = write_tiny_checkpoint("dac", root / "dac")
    dia2 = write_tiny_checkpoint("dia2", root / "dia2")
    mimi = write_tiny_checkpoint("mimi", root / "mimi")
    return (faster_dia.load(dia1, codec=dac, device="cpu"), faster_dia.load(dia2, codec=mimi, device="cpu"))


@pytest.fixture(scope="module")
def recognizer():
    return FakeRecognizer()


def make_app(models, recognizer, data_dir, **options):
    return create_app(list(models), data_dir=data_dir, voices=data_dir / "voices", allow_outbound=["127.0.0.1"],
                      asr_model=FakeLazyRecognizer(recognizer), **options)


@pytest.fixture(scope="module")
def server(models, recognizer, tmp_path_factory):
    with running(make_app(models, recognizer, tmp_path_factory.mktemp("data"))) as url:
        yield url


@pytest.fixture(scope="module")
def receiver():
    receiver = Receiver()
    with running(receiver.app) as url:
        receiver.url = url
        yield receiver


def dia(url: str, headers: dict | None = None, **fields) -> httpx.Response:
    return httpx.post(f"{url}/v1/dia", json={"text": TEXT, "seed": 4, "max_new_tokens": 500, **fields},
                      headers=headers, timeout=WAIT)


def assert_error(response: httpx.Response, status: int, param: str | None = None) -> dict:
    assert response.status_code == status, response.text
    error = response.json()["error"]
    assert set(error) == {"message", "type", "param", "code"}
    if param is not None:
        assert error["param"] == param, error
    return error


def test_json_request_gets_wav_of_the_models_speech_with_the_pages_defaults(server, models):
    dia1, _ = models
    response = dia(server)
    assert response.status_code == 200, response.text
    assert response.headers["content-type"] == "audio/wav" and response.headers["x-seed"] == "4"
    want = dia1.generate(TEXT, seed=4, temperature=1.3, top_p=0.95)
    samples, rate, channels = decode(response.content)
    assert (rate, channels) == (44100, 1)
    assert np.array_equal(samples.astype(np.int32), np.round(np.clip(want.audio, -1, 1) * 32767).astype(np.int32))


def test_sampling_fields_speed_and_formats(server, models):
    dia1, _ = models
    fields = {"temperature": 0.9, "top_p": 0.8, "cfg_scale": 4, "cfg_filter_top_k": 35}
    want = dia1.generate(TEXT, seed=4, temperature=0.9, top_p=0.8, cfg_scale=4.0, top_k=35)
    plain = dia(server, **fields)
    samples, _, _ = decode(plain.content)
    assert len(samples) == len(want.audio)
    slower = dia(server, speed_factor=0.5, **fields)
    assert abs(len(decode(slower.content)[0]) - 2 * len(want.audio)) <= 2
    for fmt, content_type in (("mp3", "audio/mpeg"), ("ogg", "audio/ogg"), ("flac", "audio/flac")):
        response = dia(server, output_format=fmt, **fields)
        assert response.status_code == 200 and response.headers["content-type"] == content_type
        assert abs(len(decode(response.content)[0]) / decode(response.content)[2] - len(want.audio)) < 0.1 * 44100
    # Dia2 by name: the same fields, mapped onto its sampling.
    response = dia(server, model="dia2")
    assert response.status_code == 200 and decode(response.content)[1] == 24000


def test_multipart_with_an_uploaded_voice(server, recognizer):
    before = recognizer.calls
    response = httpx.post(f"{server}/v1/dia", data={"text": TEXT, "seed": "4", "max_new_tokens": "600",
                                                    "temperature": "1.0"},
                          files={"input_audio": ("voice.wav", clip_wav(), "audio/wav")}, timeout=WAIT)
    assert response.status_code == 200, response.text
    assert recognizer.calls == before + 1  # the clip was transcribed
    decode(response.content)
    # With its transcript given, nothing is transcribed.
    response = httpx.post(f"{server}/v1/dia", data={"text": TEXT, "speaker_transcript": "Hello there."},
                          files={"input_audio": ("voice.wav", clip_wav(), "audio/wav")}, timeout=WAIT)
    assert response.status_code == 200 and recognizer.calls == before + 1
    for model in ("dia", "dia2"):
        response = httpx.post(f"{server}/v1/dia", data={"text": TEXT, "model": model, "max_new_tokens": "500"},
                              files={"input_audio": ("voice.wav", clip_wav(), "audio/wav")}, timeout=WAIT)
        assert response.status_code == 200, response.text


def test_a_voice_by_url(server, receiver):
    response = dia(server, input_audio=f"{receiver.url}/clip.wav")
    assert response.status_code == 200, response.text
    refused = dia(server, input_audio="http://169.254.169.254/latest/meta-data")
    assert_error(refused, 400, "input_audio")


@pytest.mark.parametrize("field, value", [
    ("top_p", 0.05), ("top_p", 1.5), ("cfg_scale", 0.5), ("cfg_scale", 6), ("temperature", 0.05),
    ("temperature", 2.5), ("speed_factor", 0.4), ("speed_factor", 1.6), ("max_new_tokens", 499),
    ("max_new_tokens", 4097), ("cfg_filter_top_k", 9), ("cfg_filter_top_k", 101), ("max_new_tokens", 600.5),
    ("seed", "x"), ("seed", -2), ("top_p", True), ("output_format", "m4a"),
])
def test_out_of_range_values_are_400s(server, field, value):
    error = assert_error(dia(server, **{field: value}), 400, field)
    assert field in error["message"]


def test_form_values_that_are_not_numbers(server):
    response = httpx.post(f"{server}/v1/dia", data={"text": TEXT, "top_p": "high"}, timeout=WAIT)
    assert_error(response, 400, "top_p")
    response = httpx.post(f"{server}/v1/dia", data={"text": TEXT, "seed": ""}, timeout=WAIT)  # blank: random
    assert response.status_code == 200 and int(response.headers["x-seed"]) >= 0


def test_missing_text_and_bad_bodies(server):
    assert_error(httpx.post(f"{server}/v1/dia", json={"seed": 1}), 400, "text")
    assert_error(httpx.post(f"{server}/v1/dia", content=b"[1]", headers={"content-type": "application/json"}), 400)
    assert_error(httpx.post(f"{server}/v1/dia", content=b"{no", headers={"content-type": "application/json"}), 400)


def test_x_api_key_or_bearer_and_a_daily_quota(models, recognizer, tmp_path):
    with running(make_app(models, recognizer, tmp_path, api_keys=["k1", "k2"], quota=2)) as url:
        assert dia(url, headers={"x-api-key": "k1"}).status_code == 200
        assert dia(url, headers={"Authorization": "Bearer k1"}).status_code == 200
        error = assert_error(dia(url, headers={"x-api-key": "k1"}), 406)
        assert error["code"] == "insufficient_credits"
        assert dia(url, headers={"x-api-key": "k2"}).status_code == 200  # each key has its own
        assert_error(dia(url, headers={"x-api-key": "wrong"}), 401)
        assert_error(dia(url), 401)


def test_text_with_a_lone_surrogate_and_the_api_description(server):
    body = json.dumps({"text": "[S1] Hi \ud800 there."})  # JSON may escape a lone surrogate
    response = httpx.post(f"{server}/v1/dia", content=body, headers={"content-type": "application/json"})
    assert_error(response, 400, "text")
    paths = httpx.get(f"{server}/openapi.json").json()["paths"]
    assert {"/v1/tasks", "/v1/dia", "/v1/files/{file_id}"} <= set(paths)
    assert "multipart/form-data" in paths["/v1/dia"]["post"]["requestBody"]["content"]
