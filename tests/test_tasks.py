"""The task API (/v1/tasks, Runware's shape) on a real server, with real receivers on 127.0.0.1: sync and async
tasks, polling, webhooks with a failed first attempt, uploads, every output type, the audio settings table,
several results per task, negative prompts, voice references, restarts and SSRF refusals."""

from __future__ import annotations

import asyncio
import base64
import threading
import uuid
from pathlib import Path

import httpx
import numpy as np
import pytest
from conftest import EOS_LOGIT_SCALE
from receivers import FakeLazyRecognizer, FakeRecognizer, Receiver, decode, wait_for
from servers import WAIT, running

import faster_dia
from faster_dia.server import create_app
from faster_dia.server.audio_settings import BITRATE_TABLE, bitrate_table_markdown, output_spec
from faster_dia.server.hosted import HostedApiKeyAuth
from faster_dia.server.jobstore import JobStore
from faster_dia.server.outbound import Outbound, OutboundError
from faster_dia.server.pricing import Pricing
from faster_dia.testing import write_tiny_checkpoint

SCRIPT = "[S1] Hello there. [S2] Hi!"
DIA1_TOKENS = 60
DIA2_FRAMES = 20


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    root = tmp_path_factory.mktemp("tasks")
    dia1 = write_tiny_checkpoint("dia-1.6b-0626", root / "dia1", eos_logit_scale=EOS_LOGIT_SCALE)
    dac = write_tiny_checkpoint("dac", root / "dac")
    dia2 = write_tiny_checkpoint("dia2", root / "dia2")
    mimi = write_tiny_checkpoint("mimi", root / "mimi")
    return (faster_dia.load(dia1, codec=dac, device="cpu"), faster_dia.load(dia2, codec=mimi, device="cpu"))


@pytest.fixture(scope="module")
def recognizer():
    return FakeRecognizer()


@pytest.fixture(scope="module")
def receiver():
    receiver = Receiver()
    with running(receiver.app) as url:
        receiver.url = url
        yield receiver


def make_app(models, recognizer, data_dir, **options):
    app = create_app(list(models), data_dir=data_dir, voices=data_dir / "voices",
                     asr_model=FakeLazyRecognizer(recognizer), **{"allow_outbound": ["127.0.0.1/32"], **options})
    app.state.server.hosted.retry_seconds = 0.05
    app.state.server.hosted.sweep_seconds = 0.05
    return app


@pytest.fixture(scope="module")
def server(models, recognizer, tmp_path_factory):
    app = make_app(models, recognizer, tmp_path_factory.mktemp("data"), pricing=Pricing(per_audio_second=0.01))
    with running(app) as url:
        yield url, app.state.server.hosted


def task(**fields) -> dict:
    body = {"taskType": "audioInference", "taskUUID": str(uuid.uuid4()), "model": "dia", "positivePrompt": SCRIPT,
            "seed": 7, "settings": {"maxNewTokens": DIA1_TOKENS}}
    settings = fields.pop("settings", {})
    body.update(fields)
    body["settings"] = {**body["settings"], **settings}
    return body


def post(url: str, *tasks: dict, headers: dict | None = None) -> httpx.Response:
    return httpx.post(f"{url}/v1/tasks", json=list(tasks), headers=headers, timeout=WAIT)


def poll(url: str, task_uuid: str) -> httpx.Response:
    return post(url, {"taskType": "getResponse", "taskUUID": task_uuid})


def only(response: httpx.Response) -> dict:
    assert response.status_code == 200, response.text
    body = response.json()
    assert "errors" not in body, body
    (entry,) = body["data"]
    return entry


def error_of(response: httpx.Response, status: int, code: str | None = None) -> dict:
    assert response.status_code == status, response.text
    (error,) = response.json()["errors"]
    assert set(error) == {"code", "message", "parameter", "type", "taskUUID"}, error
    if code is not None:
        assert error["code"] == code, error
    return error


# ---------------------------------------------------------------------- results and output types


def test_sync_url_result_is_the_models_audio_and_expires_after_its_ttl(server, models):
    url, hosted = server
    dia1, _ = models
    want = dia1.generate(SCRIPT, seed=7, max_new_tokens=DIA1_TOKENS)
    body = task(outputFormat="WAV", ttl=60)
    entry = only(post(url, body))
    assert entry["taskUUID"] == body["taskUUID"] and entry["status"] == "success" and entry["seed"] == 7
    assert entry["outputFormat"] == "WAV" and uuid.UUID(entry["audioUUID"]).version == 4
    assert entry["audioURL"].startswith(f"{url}/v1/files/")
    fetched = httpx.get(entry["audioURL"])  # no key needed, even when keys are set (see the auth test)
    assert fetched.status_code == 200 and fetched.headers["content-type"] == "audio/wav"
    samples, rate, channels = decode(fetched.content)
    assert (rate, channels) == (44100, 1)
    assert np.array_equal(np.round(samples / 32767 * 32767), np.round(np.clip(want.audio, -1, 1) * 32767))
    # After the ttl: 404 at once, and the file is gone from disk at the next sweep.
    path = Path(hosted.files_dir) / entry["audioURL"].rsplit("/", 1)[1]
    assert path.is_file()
    clock = hosted.store.clock
    hosted.store.clock = lambda: clock() + 61
    try:
        assert httpx.get(entry["audioURL"]).status_code == 404
        wait_for(lambda: not path.exists(), "the expired file to be swept")
    finally:
        hosted.store.clock = clock


@pytest.mark.parametrize("output_type", ["base64Data", "dataURI"])
def test_inline_output_types_decode(server, output_type):
    url, _ = server
    entry = only(post(url, task(outputType=output_type, outputFormat="FLAC")))
    if output_type == "base64Data":
        data = base64.b64decode(entry["audioBase64Data"])
    else:
        prefix, payload = entry["audioDataURI"].split(",", 1)
        assert prefix == "data:audio/flac;base64"
        data = base64.b64decode(payload)
    samples, rate, _ = decode(data)
    assert rate == 44100 and abs(len(samples) / rate - entry["duration"]) < 0.01


def test_four_results_have_consecutive_seeds_and_are_the_models_results(server, models):
    url, _ = server
    dia1, _ = models
    response = post(url, task(numberResults=4, seed=100, outputType="base64Data", outputFormat="WAV",
                              includeCost=True))
    assert response.status_code == 200 and "errors" not in response.json()
    entries = response.json()["data"]
    assert sorted(e["seed"] for e in entries) == [100, 101, 102, 103]
    assert len({e["audioUUID"] for e in entries}) == 4
    for entry in entries:
        want = dia1.generate(SCRIPT, seed=entry["seed"], max_new_tokens=DIA1_TOKENS)
        samples, _, _ = decode(base64.b64decode(entry["audioBase64Data"]))
        assert len(samples) == len(want.audio)
        assert entry["cost"] == round(0.01 * want.duration, 6)


def test_dia2_by_its_runware_id_with_dia2_settings(server, models):
    url, _ = server
    _, dia2 = models
    body = task(model="runware:dia2@1", outputType="base64Data", outputFormat="WAV", CFGScale=3.5,
                settings={"maxNewTokens": DIA2_FRAMES, "temperature": 0.5, "audioTemperature": 0.7, "topK": 40})
    entry = only(post(url, body))
    want = dia2.generate(SCRIPT, seed=7, max_new_tokens=DIA2_FRAMES, cfg_scale=3.5, text_temperature=0.5,
                         audio_temperature=0.7, top_k=40)
    samples, rate, _ = decode(base64.b64decode(entry["audioBase64Data"]))
    assert rate == 24000 and len(samples) == len(want.audio)
    error_of(post(url, task(model="runware:dia2@2b")), 404, "invalidModel")


# ---------------------------------------------------------------------- audio settings


def test_audio_settings_table_valid_and_invalid():
    assert output_spec("mp3", {"sampleRate": 24000, "channels": 2, "bitrate": 160}, 24000).kbps == 160
    assert output_spec("MP3", {"sampleRate": 44100, "bitrate": 32}, 24000).channels == 2  # stereo by default
    assert output_spec("OGG", {"sampleRate": 24000, "channels": 1, "bitrate": 16}, 24000).format == "vorbis"
    assert output_spec("ogg", {"sampleRate": 48000, "channels": 2, "bitrate": 256}, 24000).kbps == 256
    default = output_spec("OGG", {"sampleRate": 24000, "channels": 1}, 44100)
    assert default.kbps == 80  # 128 by default, within the range of the rate and channels
    assert output_spec("MP3", None, 44100).sample_rate == 44100 and output_spec("OPUS", None, 24000).sample_rate == 48000
    cases = [
        ("MP3", {"sampleRate": 24000, "bitrate": 320}, "audioSettings.bitrate", "from 8 to 160"),
        ("MP3", {"sampleRate": 44100, "bitrate": 16}, "audioSettings.bitrate", "from 32 to 320"),
        ("OGG", {"sampleRate": 24000, "channels": 1, "bitrate": 96}, "audioSettings.bitrate", "from 16 to 80"),
        ("OGG", {"sampleRate": 48000, "channels": 2, "bitrate": 320}, "audioSettings.bitrate", "from 48 to 256"),
        ("OPUS", {"sampleRate": 24000}, "audioSettings.sampleRate", "48000"),
        ("MP3", {"sampleRate": 22000}, "audioSettings.sampleRate", "22050"),
        ("MP3", {"channels": 3}, "audioSettings.channels", "1 or 2"),
        ("WAV", {"bitrate": 128}, "audioSettings", "lossless"),
        ("FLAC", {}, "audioSettings", "lossless"),
        ("M4A", None, "outputFormat", "MP3"),
    ]
    for fmt, settings, param, words in cases:
        with pytest.raises(faster_dia.InvalidInputError) as caught:
            output_spec(fmt, settings, 24000)
        assert caught.value.param == param and words in caught.value.message, (fmt, settings, caught.value.message)


def test_every_table_edge_encodes_and_decodes():
    """The table's limits are ones the encoders take: the lowest and highest bit rate of every row, mono and
    stereo, at one rate per row."""
    from faster_dia.server.audio_settings import encode_output

    pcm = (0.3 * np.sin(2 * np.pi * 220 * np.arange(12000) / 24000)).astype(np.float32)
    for name, rates, mono, stereo in BITRATE_TABLE:
        for channels, (low, high) in ((1, mono), (2, stereo)):
            for kbps in (low, high):
                spec = output_spec(name, {"sampleRate": rates[-1], "channels": channels, "bitrate": kbps}, 24000)
                _, rate, decoded_channels = decode(encode_output(pcm, 24000, spec))
                assert (rate, decoded_channels) == (rates[-1], channels), (name, rates[-1], channels, kbps)


def test_docs_show_the_bitrate_table():
    docs = (Path(__file__).resolve().parents[1] / "docs" / "server.md").read_text()
    assert bitrate_table_markdown() in docs


def test_audio_settings_over_http(server):
    url, _ = server
    entry = only(post(url, task(outputType="base64Data", outputFormat="OGG",
                                audioSettings={"sampleRate": 24000, "channels": 1, "bitrate": 48})))
    _, rate, channels = decode(base64.b64decode(entry["audioBase64Data"]))
    assert (rate, channels) == (24000, 1)
    entry = only(post(url, task(outputType="base64Data", outputFormat="MP3",
                                audioSettings={"sampleRate": 48000, "bitrate": 192})))
    _, rate, channels = decode(base64.b64decode(entry["audioBase64Data"]))
    assert (rate, channels) == (48000, 2)
    error = error_of(post(url, task(outputFormat="MP3", audioSettings={"sampleRate": 24000, "bitrate": 192})), 400)
    assert error["parameter"] == "audioSettings.bitrate" and "from 8 to 160" in error["message"]
    error_of(post(url, task(outputFormat="WAV", audioSettings={"channels": 2})), 400)


# ---------------------------------------------------------------------- async, polling, webhooks, uploads


def test_async_task_is_polled_to_success_and_webhooked_after_a_failed_attempt(server, receiver):
    url, _ = server
    receiver.failing["async"] = 1
    body = task(deliveryMethod="async", numberResults=2, outputType="base64Data",
                webhookURL=f"{receiver.url}/hook/async")
    ack = only(post(url, body))
    assert ack == {"taskType": "audioInference", "taskUUID": body["taskUUID"]}

    def finished():
        entries = poll(url, body["taskUUID"]).json()["data"]
        assert {e["status"] for e in entries} <= {"processing", "success"}
        return entries if all(e["status"] == "success" for e in entries) else None

    entries = wait_for(finished, "the task to finish")
    assert sorted(e["seed"] for e in entries) == [7, 8]
    hooks = wait_for(lambda: len(receiver.webhooks.get("async", [])) == 2 and receiver.webhooks["async"],
                     "both webhooks")
    assert receiver.attempts["async"] == 3  # the first attempt failed and was retried
    assert sorted((h["data"][0]["seed"], h["data"][0]["audioBase64Data"]) for h in hooks) == \
        sorted((e["seed"], e["audioBase64Data"]) for e in entries)


def test_upload_endpoint_gets_the_file_as_a_put_body(server, receiver):
    url, _ = server
    entry = only(post(url, task(outputFormat="MP3", uploadEndpoint=f"{receiver.url}/upload/one")))
    (content_type, data), = receiver.uploads["one"]
    assert content_type == "audio/mpeg"
    samples, rate, channels = decode(data)
    assert (rate, channels) == (44100, 2) and abs(len(samples) / channels / rate - entry["duration"]) < 0.1
    assert httpx.get(entry["audioURL"]).content == data


def test_getresponse_of_an_unknown_task(server):
    url, _ = server
    error_of(poll(url, str(uuid.uuid4())), 404, "taskNotFound")


# ---------------------------------------------------------------------- errors


def test_a_reused_task_uuid_is_an_error(server):
    url, _ = server
    body = task(outputType="base64Data")
    only(post(url, body))
    error = error_of(post(url, body), 409, "duplicateTaskUUID")
    assert error["taskUUID"] == body["taskUUID"]


def test_a_mixed_array_answers_each_task_by_its_uuid(server):
    url, _ = server
    good = [task(outputType="base64Data", seed=s) for s in (1, 2)]
    bad_cfg = task(CFGScale=31)
    bad_step = task(CFGScale=2.005)
    bad_model = task(model="nope")
    bad_uuid = {**task(), "taskUUID": "1234"}
    response = post(url, bad_cfg, good[0], bad_model, good[1], bad_step, bad_uuid, {"taskType": "imageInference"})
    assert response.status_code == 200
    body = response.json()
    assert sorted((e["taskUUID"], e["seed"]) for e in body["data"]) == sorted((g["taskUUID"], g["seed"]) for g in good)
    errors = {e["taskUUID"]: e for e in body["errors"]}
    assert errors[bad_cfg["taskUUID"]]["parameter"] == "CFGScale"
    assert "steps of 0.01" in errors[bad_step["taskUUID"]]["message"]
    assert errors[bad_model["taskUUID"]]["code"] == "invalidModel"
    assert errors["1234"]["code"] == "invalidTaskUUID"
    assert errors[None]["code"] == "unsupportedTaskType"


@pytest.mark.parametrize("content", [b"{not json", b'{"taskType": "audioInference"}', b"[]"])
def test_malformed_bodies(server, content):
    url, _ = server
    response = httpx.post(f"{url}/v1/tasks", content=content, headers={"content-type": "application/json"})
    assert response.status_code == 400 and response.json()["errors"][0]["code"] in ("invalidJSON", "invalidRequest")


@pytest.mark.parametrize("fields, parameter", [
    ({"positivePrompt": None}, "positivePrompt"),
    ({"seed": 2**31}, "seed"),
    ({"seed": True}, "seed"),
    ({"CFGScale": 0.5}, "CFGScale"),
    ({"negativePrompt": "x"}, "negativePrompt"),
    ({"settings": {"topK": 501}}, "settings.topK"),
    ({"settings": {"temperature": 6}}, "settings.temperature"),
    ({"settings": {"includePrefix": "yes"}}, "settings.includePrefix"),
    ({"numberResults": 5}, "numberResults"),
    ({"outputType": "file"}, "outputType"),
    ({"ttl": 59}, "ttl"),
    ({"ttl": 120, "outputType": "base64Data"}, "ttl"),
    ({"deliveryMethod": "stream"}, "deliveryMethod"),
    ({"webhookURL": "ftp://example.com/x"}, "webhookURL"),
    ({"inputs": {"audios": ["a", "b", "c"]}}, "inputs.audios"),
    ({"inputs": {"audios": ["no-such-voice"]}}, "inputs.audios[0]"),
    ({"settings": {"maxNewTokens": 5}}, "settings.maxNewTokens"),
])
def test_invalid_fields_name_the_parameter(server, fields, parameter):
    url, _ = server
    error = error_of(post(url, task(**fields)), 400)
    assert error["parameter"] == parameter, error


# ---------------------------------------------------------------------- negative prompts


def test_negative_prompt_changes_dia1_output_and_cfg_scale_one_ignores_it(server):
    url, _ = server

    def audio(**fields) -> bytes:
        entry = only(post(url, task(outputType="base64Data", outputFormat="WAV", seed=11, **fields)))
        return base64.b64decode(entry["audioBase64Data"])

    plain = audio()
    assert audio(negativePrompt="[S1] Mumbling, noise and static.") != plain
    unguided = audio(CFGScale=1)
    assert audio(CFGScale=1, negativePrompt="[S1] Mumbling, noise and static.") == unguided


def test_negative_text_requests_replay_like_any_other(models):
    """A request with a negative text (its two rows padded to the longer text) gets its solo eager tokens when
    replayed in a batch next to requests without one, and one without gets the same tokens as before."""
    from dia1_requests import dia1_request
    from test_step_capture import _assert_replays_give_solo_tokens

    from faster_dia.models.dia1.generator import Dia1Generator

    dia1, _ = models
    negative = ["[S1] Mumbling, static and a very long list of things nobody wants to hear in the result.",
                "[S2] No.", None, "[S1] Noise.", None]
    requests = [dia1_request(dia1, i, negative_prompt=n) for i, n in enumerate(negative)]
    assert [r.negative_text is None for r in requests] == [n is None for n in negative]
    _assert_replays_give_solo_tokens(Dia1Generator, dia1.model, requests, slots=3, join_every=9)


def test_negative_prompt_on_dia2_is_refused_unless_unguided(server):
    url, _ = server
    body = task(model="dia2", negativePrompt="[S1] Mumbling.", settings={"maxNewTokens": DIA2_FRAMES})
    error = error_of(post(url, body), 400, "unsupportedParameter")
    assert error["parameter"] == "negativePrompt" and "Dia2" in error["message"]
    only(post(url, task(model="dia2", negativePrompt="[S1] Mumbling.", CFGScale=1, outputType="base64Data",
                        settings={"maxNewTokens": DIA2_FRAMES})))


# ---------------------------------------------------------------------- voices


def test_voice_references_by_url_base64_data_uri_and_library(server, receiver, recognizer, models):
    url, hosted = server
    dia1, _ = models
    clip = receiver.clip
    encoded = base64.b64encode(clip).decode()
    before = recognizer.calls
    for audios in ([f"{receiver.url}/clip.wav"], [encoded], [f"data:audio/wav;base64,{encoded}"],
                   [f"{receiver.url}/clip.wav", encoded]):
        only(post(url, task(outputType="base64Data", inputs={"audios": audios})))
    assert recognizer.calls > before  # clips without transcripts are transcribed
    assert not list(Path(hosted.scratch_dir).iterdir())  # the fetched clips are deleted afterwards

    # A stored voice, for both families; the same clip and words as giving it by hand.
    library = dia1.voices
    library.add("Ada", clip, transcript="Hello there.")
    entry = only(post(url, task(outputType="base64Data", outputFormat="WAV", inputs={"audios": ["ada"]})))
    want = dia1.generate(SCRIPT, seed=7, max_new_tokens=DIA1_TOKENS, voice="ada")
    assert len(decode(base64.b64decode(entry["audioBase64Data"]))[0]) == len(want.audio)
    only(post(url, task(model="dia2", outputType="base64Data", inputs={"audios": ["ada", encoded]},
                        settings={"maxNewTokens": DIA2_FRAMES})))


# ---------------------------------------------------------------------- authentication


def test_bearer_or_a_leading_authentication_task(models, recognizer, tmp_path):
    app = make_app(models, recognizer, tmp_path, api_keys=["sekrit"])
    body = task(outputType="URL")
    with running(app) as url:
        entry = only(post(url, body, headers={"Authorization": "Bearer sekrit"}))
        assert httpx.get(entry["audioURL"]).status_code == 200  # files need no key
        auth = {"taskType": "authentication", "apiKey": "sekrit"}
        only(post(url, auth, {"taskType": "getResponse", "taskUUID": body["taskUUID"]}))
        for tasks, headers in (([auth | {"apiKey": "wrong"}, body], None), ([body], None),
                               ([body], {"Authorization": "Bearer wrong"})):
            error = error_of(post(url, *tasks, headers=headers), 401, "invalidApiKey")
            assert error["type"] == "authentication"
    assert HostedApiKeyAuth.PUBLIC_PREFIXES[-1] == "/v1/files/"


# ---------------------------------------------------------------------- restarts


def test_restart_fails_the_unfinished_task_and_delivers_pending_webhooks(models, recognizer, receiver, tmp_path):
    dia1, _ = models
    receiver.failing["pending"] = None  # refuses until told otherwise
    generator = dia1.engine.generator
    step = generator.step
    release = threading.Event()
    stepping = threading.Event()

    def held_step():
        stepping.set()
        release.wait(WAIT)
        return step()

    first = make_app(models, recognizer, tmp_path)
    delivered = task(deliveryMethod="async", outputType="base64Data", webhookURL=f"{receiver.url}/hook/pending")
    stuck = task(deliveryMethod="async", webhookURL=f"{receiver.url}/hook/stuck", seed=3)
    try:
        with running(first) as url:
            only(post(url, delivered))
            wait_for(lambda: receiver.attempts["pending"] >= 1, "a webhook attempt")
            generator.step = held_step
            only(post(url, stuck))
            wait_for(stepping.is_set, "the second task to start")
            # The server stops here, with one task generating and one webhook not delivered.
    finally:
        generator.step = step
        release.set()
    assert JobStore(tmp_path / "tasks.sqlite3").get_task(stuck["taskUUID"]).status == "processing"

    receiver.failing.pop("pending")
    with running(make_app(models, recognizer, tmp_path)) as url:
        polled = poll(url, stuck["taskUUID"])
        assert polled.status_code == 200
        assert polled.json()["data"] == [{"taskType": "audioInference", "taskUUID": stuck["taskUUID"],
                                          "status": "error"}]
        assert polled.json()["errors"][0]["code"] == "serverRestarted"
        assert only(poll(url, delivered["taskUUID"]))["status"] == "success"  # finished results are kept
        (hook,) = wait_for(lambda: receiver.webhooks.get("pending"), "the pending webhook")
        assert hook["data"][0]["taskUUID"] == delivered["taskUUID"]
        (hook,) = wait_for(lambda: receiver.webhooks.get("stuck"), "the failure's webhook")
        assert hook["errors"][0]["code"] == "serverRestarted"


# ---------------------------------------------------------------------- outbound requests


def test_ssrf_refusals_over_http(server, models, recognizer, receiver, tmp_path):
    url, _ = server
    for field, value in (("webhookURL", "http://10.1.2.3/hook"), ("uploadEndpoint", "http://169.254.169.254/x"),
                         ("webhookURL", "http://[::1]:9/x"), ("webhookURL", "http://[::ffff:192.168.0.1]/x")):
        error = error_of(post(url, task(**{field: value})), 400, "outboundRefused")
        assert error["parameter"] == field
    # A redirect into a forbidden range is not followed.
    redirect = f"{receiver.url}/redirect?to=http://169.254.169.254/latest/meta-data"
    error = error_of(post(url, task(inputs={"audios": [redirect]})), 400, "outboundRefused")
    assert error["parameter"] == "inputs.audios[0]"
    # Without --allow-outbound, loopback is refused too.
    with running(make_app(models, recognizer, tmp_path, allow_outbound=[])) as strict:
        error_of(post(strict, task(webhookURL=f"{receiver.url}/hook/x")), 400, "outboundRefused")


def test_outbound_bounds_addresses_sizes_and_time(receiver):
    import ipaddress

    outbound = Outbound()
    for address in ("127.0.0.1", "10.0.0.1", "172.16.5.4", "192.168.1.1", "169.254.169.254", "100.64.0.1",
                    "0.0.0.0", "224.0.0.1", "::1", "fe80::1", "fc00::1", "::ffff:10.0.0.1", "2002:0a00:0001::1"):
        assert not outbound.allowed(ipaddress.ip_address(address)), address
    assert outbound.allowed(ipaddress.ip_address("93.184.216.34"))
    assert Outbound(["127.0.0.0/8"]).allowed(ipaddress.ip_address("127.0.0.1"))

    async def attempts():
        local = Outbound(["127.0.0.1"], timeout=0.5)
        try:
            assert await local.get(f"{receiver.url}/clip.wav", param="clip", max_bytes=1 << 20) == receiver.clip
            with pytest.raises(OutboundError, match="larger than"):
                await local.get(f"{receiver.url}/big", param="clip", max_bytes=1000)
            with pytest.raises(OutboundError, match="within"):
                await local.get(f"{receiver.url}/slow", param="clip", max_bytes=1000)
            with pytest.raises(OutboundError) as refused:
                await local.get(f"{receiver.url}/redirect?to=http://10.0.0.1/", param="clip", max_bytes=1000)
            assert refused.value.code == "outbound_refused"
        finally:
            await local.aclose()

    asyncio.run(attempts())


# ---------------------------------------------------------------------- command line


def test_serve_options_are_checked_before_any_model_loads(tmp_path, capsys):
    from faster_dia.cli import build_parser, main

    args = build_parser().parse_args(["serve", "--data-dir", str(tmp_path), "--allow-outbound", "10.0.0.0/8",
                                      "--allow-outbound", "127.0.0.1", "--price-per-audio-second", "0.002",
                                      "--price-per-gpu-second", "0.01", "--quota", "100"])
    assert (args.data_dir, args.allow_outbound, args.quota) == (tmp_path, ["10.0.0.0/8", "127.0.0.1"], 100)
    assert (args.price_per_audio_second, args.price_per_gpu_second) == (0.002, 0.01)
    missing = str(tmp_path / "no-model")
    for bad, words in ((["--allow-outbound", "not-a-network"], "CIDR"), (["--price-per-gpu-second", "-1"], "price"),
                       (["--quota", "-3"], "--quota")):
        assert main(["serve", "--model", missing, "--data-dir", str(tmp_path), *bad]) == 2
        assert words in capsys.readouterr().err
