"""The serving core: several models behind one server, lazy loading and idle unloading, async streams
without a thread per request, admission with Retry-After, metrics, and the input checks users asked for."""

from __future__ import annotations

import asyncio
import base64
import json
import logging
import os
import shutil
import socket
import subprocess
import sys
import threading
import time

import httpx
import numpy as np
import pytest
from prometheus_client.parser import text_string_to_metric_families
from servers import WAIT, running

import faster_dia
from faster_dia.errors import InvalidInputError
from faster_dia.server import ModelRegistry, ModelSpec, create_app
from faster_dia.testing import write_tiny_checkpoint

SCRIPT = "[S1] Hello there. [S2] Hi!"


@pytest.fixture(scope="module")
def dirs(tmp_path_factory):
    root = tmp_path_factory.mktemp("core")
    return {kind: write_tiny_checkpoint(kind, root / kind) for kind in ("dia-1.6b-0626", "dac", "dia2", "mimi")}


@pytest.fixture(scope="module")
def dia1(dirs):
    return faster_dia.load(dirs["dia-1.6b-0626"], codec=dirs["dac"], device="cpu")


@pytest.fixture(scope="module")
def dia2(dirs):
    return faster_dia.load(dirs["dia2"], codec=dirs["mimi"], device="cpu")


@pytest.fixture(scope="module")
def two_models(dia1, dia2):
    with running(create_app([dia1, dia2])) as url:
        yield url


def speech(url: str, **fields) -> httpx.Response:
    body = {"input": SCRIPT, "voice": "alloy", "seed": 3, "response_format": "pcm", **fields}
    # json.dumps escapes lone surrogates as JSON allows; the server must cope with them.
    return httpx.post(f"{url}/v1/audio/speech", content=json.dumps(body), timeout=WAIT,
                      headers={"content-type": "application/json"})


def pcm_samples(response: httpx.Response) -> int:
    return len(response.content) // 2


def assert_error(response: httpx.Response, status: int, param: str | None = None) -> dict:
    assert response.status_code == status, response.text
    error = response.json()["error"]
    assert set(error) == {"message", "type", "param", "code"}
    if param is not None:
        assert error["param"] == param, error
    return error


# ---------------------------------------------------------------------- several models


def test_two_models_are_listed_and_routed_by_model(two_models, dia1, dia2):
    cards = {m["id"]: m for m in httpx.get(f"{two_models}/v1/models").json()["data"]}
    assert {dia1.model_id, dia2.model_id, "dia", "dia2", "tts-1", "tts-1-hd", "gpt-4o-mini-tts"} <= set(cards)
    # Local models are listed by directory name: the server's paths stay private.
    assert not any("/" in name for name in cards) and str(dia1.model_id) == "dia-1.6b-0626"
    assert (cards["dia"]["family"], cards["dia"]["sample_rate"]) == ("dia1", 44100)
    assert (cards["dia2"]["family"], cards["dia2"]["sample_rate"]) == ("dia2", 24000)
    assert cards["tts-1"]["family"] == "dia1"  # the default model is the first one
    health = httpx.get(f"{two_models}/health").json()
    assert [(m["family"], m["state"], m["device"]) for m in health["models"]] == \
        [("dia1", "loaded", "cpu"), ("dia2", "loaded", "cpu")]

    want2 = dia2.generate(SCRIPT, seed=3, max_new_tokens=20)
    for name in ("dia2", dia2.model_id):
        response = speech(two_models, model=name, max_new_tokens=20)
        assert response.status_code == 200 and pcm_samples(response) == round(want2.duration * 24000)
    want1 = dia1.generate(SCRIPT, seed=3, max_new_tokens=40)
    for name in ("dia", "tts-1", None):
        response = speech(two_models, model=name, max_new_tokens=40)
        assert response.status_code == 200 and pcm_samples(response) == round(want1.duration * 24000)
    assert_error(speech(two_models, model="dia3"), 404, "model")


@pytest.mark.parametrize("fmt", ["mp3", "opus", "aac", "flac", "wav", "pcm"])
def test_dia2_serves_every_format(two_models, dia2, fmt):
    from test_server import decode

    want = dia2.generate(SCRIPT, seed=5, max_new_tokens=20)
    streamed = speech(two_models, model="dia2", seed=5, max_new_tokens=20, response_format=fmt)
    whole = speech(two_models, model="dia2", seed=5, max_new_tokens=20, response_format=fmt, stream=False)
    for response in (streamed, whole):
        assert response.status_code == 200, response.text
        audio, rate = decode(response.content, fmt)
        assert abs(len(audio) / rate - want.duration) <= 0.1


def test_dia2_words_reach_http_clients(two_models, dia2):
    want = dia2.generate(SCRIPT, seed=2, max_new_tokens=40)
    sse = speech(two_models, model="dia2", seed=2, max_new_tokens=40, stream_format="sse")
    events = [json.loads(block.removeprefix("data: ")) for block in sse.text.split("\n\n") if block.strip()]
    words = [(e["word"], e["start"]) for e in events if e["type"] == "speech.word"]
    assert words == [(w, s) for w, s in want.timestamps] and words
    assert events[-1]["type"] == "speech.audio.done"
    audio = b"".join(base64.b64decode(e["audio"]) for e in events if e["type"] == "speech.audio.delta")
    assert len(audio) // 2 == round(want.duration * 24000)

    timed = httpx.post(f"{two_models}/v1/audio/speech/with-timestamps", timeout=WAIT, json={
        "model": "dia2", "input": SCRIPT, "seed": 2, "max_new_tokens": 40, "response_format": "wav", "speed": 2.0})
    assert timed.status_code == 200, timed.text
    body = timed.json()
    assert body["seed"] == 2 and body["content_type"] == "audio/wav" and body["sample_rate"] == 24000
    assert [(w["word"], w["start"]) for w in body["words"]] == [(w, round(s / 2, 3)) for w, s in want.timestamps]
    assert base64.b64decode(body["audio_base64"])[:4] == b"RIFF"
    assert body["duration"] == pytest.approx(want.duration / 2, abs=0.01)


def test_fields_a_family_does_not_use_are_ignored_not_refused(two_models):
    # Dia2 samples with top-k; clients that always send top_p still get audio.
    assert speech(two_models, model="dia2", top_p=0.9, max_new_tokens=10).status_code == 200
    assert_error(speech(two_models, model="dia2", max_new_tokens=5000), 400, "max_new_tokens")


def test_lazy_load_idle_unload_and_reload(dirs, caplog):
    caplog.set_level(logging.INFO, logger="faster_dia.server")
    spec = ModelSpec(str(dirs["dia-1.6b-0626"]), {"codec": str(dirs["dac"]), "device": "cpu"})
    registry = ModelRegistry.from_specs([spec], idle_unload=0.5)
    with running(create_app(registry)) as url:
        assert httpx.get(f"{url}/health").json()["models"][0]["state"] == "unloaded"
        # Requests that arrive while the model loads wait for it; none is refused.
        with httpx.Client(timeout=WAIT) as client:
            from concurrent.futures import ThreadPoolExecutor

            with ThreadPoolExecutor(3) as pool:
                first = list(pool.map(lambda s: client.post(f"{url}/v1/audio/speech", json={
                    "input": SCRIPT, "seed": s, "max_new_tokens": 30, "response_format": "pcm"}), (1, 1, 2)))
        assert [r.status_code for r in first] == [200, 200, 200] and first[0].content == first[1].content
        assert sum(r.getMessage().startswith("loading model") for r in caplog.records) == 1
        deadline = time.monotonic() + WAIT
        while httpx.get(f"{url}/health").json()["models"][0]["state"] != "unloaded":
            assert time.monotonic() < deadline, "the idle model was not unloaded"
            time.sleep(0.05)
        assert any("unloading model" in r.getMessage() for r in caplog.records)  # logged before it is gone
        again = httpx.post(f"{url}/v1/audio/speech", timeout=WAIT, json={
            "input": SCRIPT, "seed": 1, "max_new_tokens": 30, "response_format": "pcm"})
        assert again.status_code == 200 and again.content == first[0].content
        assert sum(r.getMessage().startswith("loading model") for r in caplog.records) == 2


# ---------------------------------------------------------------------- async streams and admission


def test_64_concurrent_streams_hold_a_bounded_number_of_threads(dia1):
    """64 streaming clients, served by one engine thread and a small output pool: no thread per request,
    and a burst this size is queued (default queue), not refused."""
    with running(create_app(dia1)) as url:
        baseline = threading.active_count()
        peak = baseline
        done = threading.Event()

        def sample() -> None:
            nonlocal peak
            while not done.is_set():
                peak = max(peak, threading.active_count())
                time.sleep(0.005)

        async def clients() -> list[tuple[int, int]]:
            async with httpx.AsyncClient(timeout=WAIT * 4) as client:
                async def one(i: int) -> tuple[int, int]:
                    size = 0
                    async with client.stream("POST", f"{url}/v1/audio/speech", json={
                            "input": SCRIPT, "seed": i, "max_new_tokens": 30, "response_format": "pcm"}) as r:
                        async for piece in r.aiter_bytes():
                            size += len(piece)
                        return r.status_code, size
                return await asyncio.gather(*(one(i) for i in range(64)))

        sampler = threading.Thread(target=sample)
        sampler.start()
        results: list = []
        runner = threading.Thread(target=lambda: results.extend(asyncio.run(clients())))
        runner.start()
        runner.join(WAIT * 4)
        done.set()
        sampler.join()
    assert len(results) == 64 and all(status == 200 and size > 0 for status, size in results)
    # The sampler and the client thread, the engine thread and the output pool: far from 64.
    assert peak - baseline <= 2 + 1 + 4 + 4, (baseline, peak)


async def _collect(stream) -> np.ndarray:
    return np.concatenate([chunk async for chunk in stream])


def test_astream_and_agenerate_equal_their_blocking_forms(dia1, dia2):
    for tts, options in ((dia1, {"max_new_tokens": 60}), (dia2, {"max_new_tokens": 20})):
        blocking = np.concatenate(list(tts.stream(SCRIPT, seed=4, **options)))
        streamed = asyncio.run(_collect(tts.astream(SCRIPT, seed=4, chunk_seconds=0.2, **options)))
        whole = asyncio.run(tts.agenerate(SCRIPT, seed=4, **options))
        np.testing.assert_allclose(streamed, blocking, atol=1e-4)
        np.testing.assert_allclose(whole.audio, tts.generate(SCRIPT, seed=4, **options).audio, atol=1e-6)


def test_chunk_seconds_mean_the_same_for_both_families(dia1, dia2):
    for tts in (dia1, dia2):
        stream = tts.stream(SCRIPT, seed=1, chunk_seconds=0.4, max_new_tokens=60 if tts is dia1 else 20)
        assert stream.chunk_frames == round(0.4 * tts.frame_rate)
        stream.close()


def test_retry_after_follows_the_measured_work_and_spreads_refused_clients(dia1):
    from faster_dia.engine import Engine
    from faster_dia.models.dia1.generator import Dia1Generator

    engine = Engine(Dia1Generator(dia1.model, max_batch=2), max_queue=0)
    # 0.05 s per step, 200 steps per request, 2 slots: a slot opens every 5 s.
    engine._step_seconds, engine._request_steps = 0.05, 200.0
    offers = [engine._retry_after() for _ in range(4)]
    assert all(5 * k <= offer <= 5 * k * 1.25 + 1 for k, offer in zip(range(1, 5), offers, strict=True)), offers
    assert offers == sorted(offers) and len(set(offers)) == 4


def test_a_full_queue_answers_503_with_retry_after(dirs, monkeypatch):
    tts = faster_dia.load(dirs["dia-1.6b-0626"], codec=dirs["dac"], device="cpu", max_batch=1, max_queue=1)
    go = threading.Event()
    step = tts.engine.generator.step

    def held_step():
        if tts.engine.steps >= 5:
            go.wait(WAIT)
        return step()

    monkeypatch.setattr(tts.engine.generator, "step", held_step)
    with running(create_app(tts)) as url:
        holders = [threading.Thread(target=speech, args=(url,), kwargs={"max_new_tokens": 30}) for _ in range(2)]
        for thread in holders:
            thread.start()
        deadline = time.monotonic() + WAIT
        while httpx.get(f"{url}/health").json()["models"][0]["waiting"] < 1:
            assert time.monotonic() < deadline
            time.sleep(0.02)
        refused = speech(url, max_new_tokens=30)
        assert_error(refused, 503)
        assert 1 <= int(refused.headers["retry-after"]) <= 300
        go.set()
        for thread in holders:
            thread.join(WAIT)
        assert speech(url, max_new_tokens=30).status_code == 200


# ---------------------------------------------------------------------- metrics


def _metric(url: str, name: str, **labels) -> float:
    text = httpx.get(f"{url}/metrics", headers={"Authorization": "Bearer k"}).text
    total = 0.0
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if sample.name == name and all(sample.labels.get(k) == v for k, v in labels.items()):
                total += sample.value
    return total


def test_metrics_parse_and_move_with_requests(dia1):
    with running(create_app(dia1, api_keys=["k"])) as url:
        assert httpx.get(f"{url}/metrics").status_code == 401  # keys apply unless --metrics-public
        before = _metric(url, "faster_dia_requests_total", route="/v1/audio/speech", status="200")
        response = httpx.post(f"{url}/v1/audio/speech", headers={"Authorization": "Bearer k"}, timeout=WAIT,
                              json={"input": SCRIPT, "max_new_tokens": 40, "response_format": "pcm"})
        assert response.status_code == 200
        assert _metric(url, "faster_dia_requests_total", route="/v1/audio/speech", status="200") == before + 1
        model = dia1.model_id
        assert _metric(url, "faster_dia_audio_seconds_total", model=model) > 0
        assert _metric(url, "faster_dia_time_to_first_audio_seconds_count", model=model) >= 1
        assert _metric(url, "faster_dia_realtime_multiple_count", model=model) >= 1
        assert _metric(url, "faster_dia_model_loaded", model=model) == 1
        assert _metric(url, "faster_dia_batch_slots", model=model) == dia1.engine.max_batch
        assert _metric(url, "faster_dia_decoder_steps_total", model=model) >= 40
        assert _metric(url, "faster_dia_requests_total", route="/v1/audio/speech", status="401") == 0
        httpx.post(f"{url}/v1/audio/speech", json={"input": SCRIPT})
        assert _metric(url, "faster_dia_requests_total", route="unmatched", status="401") >= 1
    with running(create_app(dia1, api_keys=["k"], metrics_public=True)) as url:
        assert httpx.get(f"{url}/metrics").status_code == 200


# ---------------------------------------------------------------------- what users reported


@pytest.mark.parametrize(("model", "fields", "param"), [
    ("dia", {"temperature": 1e39}, "temperature"),
    ("dia", {"cfg_scale": 1e39}, "cfg_scale"),
    ("dia", {"top_k": 10**20}, "top_k"),
    ("dia2", {"temperature": 1e39}, "temperature"),
    ("dia2", {"cfg_scale": 1e39}, "cfg_scale"),
    ("dia2", {"top_k": 10**20}, "top_k"),
    ("dia", {"seed": True}, "seed"),
    ("dia", {"seed": 2**64}, "seed"),
    ("dia", {"stream": "yes"}, "stream"),
    ("dia", {"temperature": True}, "temperature"),
    ("dia", {"input": "[S1] a \ud800 b"}, "input"),
    ("\ud800", {}, "model"),
    ("dia", {"voice": "\udfff"}, "voice"),
    ("dia", {"stream_format": "sse", "stream": False}, "stream_format"),
])
def test_out_of_range_and_loose_values_are_400s(two_models, model, fields, param):
    assert_error(speech(two_models, model=model, max_new_tokens=20, **fields), 400, param)


def test_out_of_range_values_are_clear_errors_in_python(dia1, dia2):
    for tts in (dia1, dia2):
        for options in ({"temperature": 1e39}, {"cfg_scale": 1e39}, {"top_k": 10**20}, {"seed": 2**64}):
            with pytest.raises(InvalidInputError, match=next(iter(options))):
                tts.generate(SCRIPT, max_new_tokens=20, **options)
    # The largest seed is fine, and is not folded onto another one.
    big = dia1.generate(SCRIPT, seed=2**64 - 1, max_new_tokens=30)
    assert big.seed == 2**64 - 1
    assert not np.array_equal(big.codes, dia1.generate(SCRIPT, seed=0, max_new_tokens=30).codes)


def test_a_request_failing_during_admission_leaves_no_trace(dia2, monkeypatch):
    generator = dia2.engine.generator
    expected = dia2.generate(SCRIPT, seed=8, max_new_tokens=15).codes
    fill = generator._fill_slot

    def fill_then_fail(slot, request):
        fill(slot, request)
        raise RuntimeError("admission failed after the slot was set up")

    monkeypatch.setattr(generator, "_fill_slot", fill_then_fail)
    with pytest.raises(RuntimeError):
        dia2.generate(SCRIPT, seed=8, max_new_tokens=15)
    monkeypatch.undo()
    assert not bool(generator.active.any()) and generator.free_slots == generator.max_batch
    assert np.array_equal(dia2.generate(SCRIPT, seed=8, max_new_tokens=15).codes, expected)


def test_plain_text_of_exactly_the_limit_fits_one_request(dia1):
    def request(text):
        return dia1._request(text, seed=1, audio_prompt=None, audio_prompt_transcript=None,
                             audio_prompt_sample_rate=None, max_new_tokens=20, temperature=1.0, top_p=1.0, top_k=45,
                             cfg_scale=3.0)

    # No speaker tag: the [S1] put in front must not push it over.
    assert request("a" * 1024).text.shape[0] == 1024
    with pytest.raises(InvalidInputError, match="1025 bytes"):
        request("a" * 1025)


def test_server_surface_details(two_models):
    assert httpx.head(f"{two_models}/health").status_code == 200
    schema = httpx.get(f"{two_models}/openapi.json").json()["components"]["schemas"]["SpeechRequest"]
    assert "input" in schema["required"]
    page = httpx.get(f"{two_models}/docs")
    assert page.status_code == 200 and "cdn." not in page.text
    models = httpx.get(f"{two_models}/v1/models").text
    assert os.sep + "core" not in models  # no server paths


def test_engine_and_library_import_without_torch_until_needed(tmp_path):
    code = ("import sys, faster_dia\n"
            "try:\n    faster_dia.load('nari-labs/Dia-1.6B-0626')\nexcept faster_dia.ModelNotFoundError as e:\n"
            "    print('missing', 'torch' in sys.modules)\n")
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_HUB_CACHE": str(tmp_path)}
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=60)
    assert result.stdout.strip() == "missing False", result.stderr


# ---------------------------------------------------------------------- command line


def run_cli(*args, cwd=None):
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    return subprocess.run([sys.executable, "-m", "faster_dia.cli", *args], capture_output=True, text=True,
                          env=env, cwd=cwd, timeout=300)


@pytest.fixture(scope="module")
def config_only(dirs, tmp_path_factory):
    """A model directory with its config but no weights: a command that gets past its checks fails loading."""
    directory = tmp_path_factory.mktemp("config-only")
    shutil.copy(dirs["dia-1.6b-0626"] / "config.json", directory / "config.json")
    return directory


@pytest.mark.parametrize(("args", "message"), [
    (["speak", "[S1] hi", "--top-p", "0"], "top_p"),
    (["speak", "[S1] hi", "--temperature", "1e39"], "temperature"),
    (["speak", "[S1] hi", "--seed", "-1"], "seed"),
    (["speak", "[S1] hi", "--text-top-k", "5"], "Dia2 models only"),
    (["serve", "--port", "99999"], "--port"),
])
def test_cli_checks_options_before_loading(config_only, tmp_path, args, message):
    result = run_cli(*args, "--model", str(config_only), cwd=tmp_path)
    assert result.returncode != 0 and message in result.stderr, result.stderr
    assert "Traceback" not in result.stderr and len(result.stderr.strip().splitlines()) == 1


def test_cli_reports_a_busy_port_before_loading(config_only):
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        result = run_cli("serve", "--model", str(config_only), "--port", str(port))
    assert result.returncode != 0 and f"127.0.0.1:{port}" in result.stderr, result.stderr
    assert "Traceback" not in result.stderr


def test_cli_output_directory_and_progress_bar(dirs, tmp_path):
    model = ["--model", str(dirs["dia-1.6b-0626"]), "--codec", str(dirs["dac"]), "--device", "cpu"]
    missing = run_cli("speak", "[S1] hi", "-o", str(tmp_path / "nowhere" / "x.wav"), *model)
    assert missing.returncode != 0 and "does not exist" in missing.stderr
    assert "Traceback" not in missing.stderr and len(missing.stderr.strip().splitlines()) == 1
    ok = run_cli("speak", "[S1] hi", "-o", str(tmp_path / "x.wav"), "--max-new-tokens", "30", *model)
    assert ok.returncode == 0 and "x real time" in ok.stderr and ", ," not in ok.stderr


def test_cli_serves_two_models(dirs):
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    server = subprocess.Popen(
        [sys.executable, "-m", "faster_dia.cli", "serve", "--port", str(port), "--device", "cpu", "--lazy",
         "--model", str(dirs["dia-1.6b-0626"]), "--codec", str(dirs["dac"]), "--model", str(dirs["dia2"]),
         "--codec", str(dirs["mimi"]), "--default-model", "dia2"], env=env, stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.monotonic() + 60
        while True:
            try:
                health = httpx.get(f"http://127.0.0.1:{port}/health").json()
                break
            except httpx.TransportError:
                assert server.poll() is None and time.monotonic() < deadline, "the server did not start"
                time.sleep(0.1)
        assert health["model"] == "dia2" and [m["state"] for m in health["models"]] == ["unloaded", "unloaded"]
        response = speech(f"http://127.0.0.1:{port}", model="tts-1", max_new_tokens=10)
        assert response.status_code == 200 and response.headers["x-seed"] == "3"
    finally:
        server.terminate()
        server.wait(30)


def test_a_model_just_loaded_is_not_idle_and_is_detached_before_it_is_freed(dirs):
    spec = ModelSpec(str(dirs["dia-1.6b-0626"]), {"codec": str(dirs["dac"]), "device": "cpu"})
    (model,) = ModelRegistry.from_specs([spec], idle_unload=0.5).models
    model.last_used = 0.0  # its last request was long ago
    tts = asyncio.run(model.get())
    assert time.monotonic() - model.last_used < 0.5  # the idle timer cannot take it from the caller
    detached = model.detach()
    assert detached is tts and model.tts is None and model.state == "unloaded"  # new requests load it again
    model.free(detached)
    with pytest.raises(faster_dia.CancelledError):
        tts.generate(SCRIPT, max_new_tokens=20)
