"""The web page at ``/``: its files and ``/ui/config`` over HTTP, then the page itself in headless Chromium
against a server with tiny checkpoints: typing, streaming playback, seeds, Dia2's words, voices from a clip,
errors next to their fields, API keys, a phone-sized screen, and no request to any host but the server.

Screenshots land in the test's temporary directory (``--basetemp`` to keep them somewhere known).
"""

from __future__ import annotations

import base64
import io
import time
import wave
from pathlib import Path

import httpx
import pytest
from browser import chromium, console_errors, request_hosts
from servers import WAIT, running
from speech_clips import SENTENCE, speak, whisper_tiny_en

from faster_dia.models.dia1.tts import CFG_SCALE_RANGE, TEMPERATURE_RANGE, Dia1TextToSpeech
from faster_dia.models.dia2.tts import Dia2TextToSpeech
from faster_dia.script import NON_VERBAL_TAGS, encode_script, join_prompt_transcript, normalize_script
from faster_dia.server import create_app
from faster_dia.server.routes.ui import ASSETS, CONTENT_SECURITY_POLICY

SCRIPT = "[S1] Hello there. [S2] Hi! (laughs) [S1] How are you?"
KEY = "page-test-key"
#: Small chunks, so that even the tiny models' short results arrive in several pieces.
CHUNK_FRAMES = 8


def _whisper_or_none() -> Path | None:
    try:
        return whisper_tiny_en()
    except pytest.skip.Exception:
        return None


@pytest.fixture(scope="module")
def voices_dir(tmp_path_factory) -> Path:
    """One voice library for every server here: a model shared by two apps uses the library of the last."""
    return tmp_path_factory.mktemp("ui-voices")


@pytest.fixture(scope="module")
def server(tts, tts2, voices_dir):
    app = create_app([tts, tts2], voices=voices_dir, chunk_frames=CHUNK_FRAMES, asr_model=_whisper_or_none())
    with running(app) as url:
        yield url


# ---------------------------------------------------------------------- over HTTP


def test_page_and_assets_are_served_with_a_policy_that_keeps_them_local(server):
    page = httpx.get(server + "/", timeout=WAIT)
    assert page.status_code == 200 and page.headers["content-type"].startswith("text/html")
    assert page.headers["content-security-policy"] == CONTENT_SECURITY_POLICY
    assert "connect-src 'self' blob:;" in CONTENT_SECURITY_POLICY and "default-src 'self'" in CONTENT_SECURITY_POLICY
    for name, media_type in ASSETS.items():
        assert f"/ui/{name}" in page.text
        response = httpx.get(f"{server}/ui/{name}", timeout=WAIT)
        assert response.status_code == 200 and response.headers["content-type"] == media_type
        assert "http://" not in response.text.replace("http://www.w3.org/2000/svg", "")
        assert "https://" not in response.text
    assert httpx.head(server + "/ui/app.js", timeout=WAIT).status_code == 200
    missing = httpx.get(server + "/ui/../app.py", timeout=WAIT)
    assert missing.status_code == 404
    assert httpx.get(server + "/ui/nothing.js", timeout=WAIT).json()["error"]["message"]


def test_config_reads_defaults_and_ranges_from_the_families(server, tts, tts2):
    config = httpx.get(server + "/ui/config", timeout=WAIT).json()
    dia1, dia2 = config["models"]
    assert (dia1["id"], dia1["family"], dia1["default"]) == (tts.model_id, "dia1", True)
    assert (dia2["id"], dia2["family"], dia2["sample_rate"]) == (tts2.model_id, "dia2", 24000)
    options = {o["name"]: o for o in dia1["options"]}
    defaults = Dia1TextToSpeech.option_defaults()
    assert options["temperature"]["default"] == defaults["temperature"]
    assert (options["temperature"]["min"], options["temperature"]["max"]) == TEMPERATURE_RANGE
    assert (options["cfg_scale"]["min"], options["cfg_scale"]["max"]) == CFG_SCALE_RANGE
    assert options["top_p"]["min_exclusive"] and options["max_new_tokens"]["max"] == tts.config.audio_length - 1
    assert dia1["script_limit"] == {"max": tts.config.text_length, "unit": "bytes"}
    assert dia1["sounds"] == list(NON_VERBAL_TAGS) and dia1["voices"] and not dia1["words"]
    options2 = {o["name"]: o for o in dia2["options"]}
    assert "top_p" not in options2 and options2["cfg_scale"]["min_exclusive"]
    assert options2["cfg_filter_top_k"]["default"] == Dia2TextToSpeech.option_defaults()["cfg_filter_k"]
    assert options2["max_new_tokens"]["max"] == tts2.config.max_context_steps
    assert dia2["words"] and dia2["pauses"]
    for model in (dia1, dia2):
        assert model["long_form"] == ("continuity" in (Dia1TextToSpeech if model is dia1 else
                                                        Dia2TextToSpeech).option_defaults())
    assert config["formats"][0] == "wav" and config["speed"] == {"min": 0.25, "max": 4.0, "default": 1.0}


def test_with_keys_the_page_is_public_and_the_api_is_not(tts, voices_dir):
    with running(create_app(tts, api_keys=[KEY], voices=voices_dir)) as url:
        for path in ("/", "/ui/config", *(f"/ui/{name}" for name in ASSETS)):
            assert httpx.get(url + path, timeout=WAIT).status_code == 200, path
        assert httpx.get(url + "/v1/voices", timeout=WAIT).status_code == 401
        assert httpx.post(url + "/", timeout=WAIT).status_code in (401, 405)


def test_ui_command_serves_on_localhost_and_opens_the_page(tts, voices_dir, monkeypatch, capsys):
    from faster_dia import cli

    args = cli.build_parser().parse_args(["ui", "--model", "m", "--port", "8123"])
    assert (args.handler, args.host, args.port, args.open_browser, args.api_key) == (cli._serve, "127.0.0.1",
                                                                                     8123, True, [])
    assert cli.build_parser().parse_args(["ui", "--no-browser"]).open_browser is False
    opened = []
    monkeypatch.setattr("webbrowser.open", opened.append)
    with running(create_app(tts, voices=voices_dir)) as url:
        cli._open_when_ready(url + "/", True)
        deadline = time.monotonic() + WAIT
        while not opened and time.monotonic() < deadline:
            time.sleep(0.05)
    assert opened == [url + "/"]
    assert url in capsys.readouterr().err


# ---------------------------------------------------------------------- in the browser


@pytest.fixture(scope="module")
def driver():
    with chromium() as driver:
        yield driver


@pytest.fixture
def shots(tmp_path):
    def shoot(driver, name: str) -> Path:
        path = tmp_path / f"{name}.png"
        driver.save_screenshot(str(path))
        return path

    return shoot


def wait_for(driver, script: str, timeout: float = WAIT):
    """The first truthy value of the JavaScript expression ``script``."""
    deadline = time.monotonic() + timeout
    while True:
        value = driver.execute_script(f"return ({script});")
        if value:
            return value
        assert time.monotonic() < deadline, f"timed out waiting for {script}"
        time.sleep(0.05)


def open_page(driver, url: str) -> None:
    driver.get(url + "/")
    driver.execute_script("localStorage.clear()")
    driver.get(url + "/")
    wait_for(driver, "document.body.dataset.ready === 'true'")


def only_local(driver, url: str) -> None:
    """Every request since the last check went to 127.0.0.1 (this test's server, or the one before it for a
    late favicon), and some went to this test's server."""
    hosts = set(request_hosts(driver))
    assert url.removeprefix("http://") in hosts and {h.split(":")[0] for h in hosts} == {"127.0.0.1"}, hosts


def el(driver, element_id: str):
    return driver.find_element("id", element_id)


def set_value(driver, element_id: str, value: str) -> None:
    """Types ``value`` into a field as a person would (replacing what is there)."""
    field = el(driver, element_id)
    field.clear()
    if value:
        field.send_keys(value)


def select(driver, element_id: str, value: str) -> None:
    from selenium.webdriver.support.ui import Select

    Select(el(driver, element_id)).select_by_value(value)


def generate(driver) -> str:
    """Clicks Generate and waits for the outcome: the progress line, or the error shown."""
    el(driver, "generate").click()
    wait_for(driver, "document.getElementById('generate').disabled === false && "
                     "(document.getElementById('progress').textContent.startsWith('Done') || "
                     "document.querySelector('.field-error:not([hidden])'))")
    errors = driver.execute_script(
        "return [...document.querySelectorAll('.field-error:not([hidden])')].map((e) => e.id + ': ' + e.textContent)")
    return el(driver, "progress").text or f"errors: {errors}"


def result_wav(driver) -> bytes:
    """The bytes behind the result's <audio> element."""
    data = driver.execute_async_script("""
        const done = arguments[arguments.length - 1];
        fetch(document.getElementById('result-audio').src).then((r) => r.arrayBuffer()).then((b) => {
          let s = ''; for (const x of new Uint8Array(b)) s += String.fromCharCode(x); done(btoa(s));
        }).catch((e) => done('error: ' + e));""")
    assert not data.startswith("error"), data
    return base64.b64decode(data)


def pcm_of(wav_bytes: bytes) -> tuple[bytes, int]:
    with wave.open(io.BytesIO(wav_bytes)) as w:
        return w.readframes(w.getnframes()), w.getframerate()


def server_pcm(url: str, fields: dict) -> bytes:
    response = httpx.post(url + "/v1/audio/speech", json={**fields, "response_format": "pcm"}, timeout=WAIT)
    assert response.status_code == 200, response.text
    return response.content


def visible_error(driver, slot: str) -> str:
    return driver.execute_script(f"const e = document.getElementById('err-{slot}'); return e.hidden ? '' : e.textContent;")


def test_page_loads_offline_with_every_control(driver, server, shots):
    open_page(driver, server)
    assert console_errors(driver) == []
    only_local(driver, server)
    options = driver.execute_script("return [...document.querySelectorAll('#options input')].map((i) => i.dataset.name)")
    assert options == ["temperature", "top_p", "top_k", "cfg_scale", "max_new_tokens"]
    assert el(driver, "opt-temperature").get_attribute("value") == "1.2"
    # Speaker buttons and the sound menu insert at the cursor; an example replaces the script.
    el(driver, "script").send_keys("Hello")
    el(driver, "script").click()
    driver.find_element("css selector", "[data-insert='[S2] ']").click()
    el(driver, "script").send_keys("Hi")
    select(driver, "sound", "(laughs) ")
    assert el(driver, "script").get_attribute("value") == "Hello [S2] Hi (laughs) "
    counted = len(encode_script(normalize_script("Hello [S2] Hi (laughs) ")))  # as the model reads it
    assert el(driver, "script-length").text == f"{counted} / 1024 bytes"
    select(driver, "example", "0")
    assert el(driver, "script").get_attribute("value").startswith("[S1] Did you hear that?")
    assert el(driver, "voice-S1").get_attribute("disabled") is None
    shots(driver, "desktop-start")


def test_generate_streams_plays_and_reuses_the_seed(driver, server, shots):
    open_page(driver, server)
    set_value(driver, "script", SCRIPT)
    # Count the pieces handed to the audio output while the result's <audio> has no source yet.
    driver.execute_script("""
        window.pieces = [];
        const start = AudioBufferSourceNode.prototype.start;
        AudioBufferSourceNode.prototype.start = function (...args) {
          window.pieces.push(document.getElementById('result-audio').getAttribute('src'));
          return start.apply(this, args);
        };""")
    assert generate(driver).startswith("Done:")
    pieces = driver.execute_script("return window.pieces")
    assert len(pieces) > 1 and pieces[0] is None  # playback started before the result was complete
    duration = wait_for(driver, "document.getElementById('result-audio').readyState >= 1 && "
                                "document.getElementById('result-audio').duration")
    first, rate = pcm_of(result_wav(driver))
    seed = int(el(driver, "result-info").text.split()[1])
    assert rate == 24000 and abs(duration - len(first) / 2 / rate) < 1e-3
    assert first == server_pcm(server, {"input": SCRIPT, "seed": seed})  # what the API gives for that seed
    assert driver.execute_script("return document.getElementById('result-audio').play().then(() => true)")
    shots(driver, "desktop-result")

    el(driver, "seed-reuse").click()
    assert el(driver, "seed").get_attribute("value") == str(seed)
    assert generate(driver).startswith("Done:")
    assert pcm_of(result_wav(driver))[0] == first

    set_value(driver, "opt-cfg_scale", "0.5")
    assert generate(driver).startswith("Done:")
    changed = pcm_of(result_wav(driver))[0]
    assert changed != first and changed == server_pcm(server, {"input": SCRIPT, "seed": seed, "cfg_scale": 0.5})
    entries = driver.find_elements("css selector", "#history .entry")
    assert len(entries) == 3 and "cfg_scale 0.5" in entries[0].text and f"seed {seed}" in entries[2].text

    # Re-running the first result restores its settings and gives its audio again.
    entries[2].find_element("xpath", ".//button[text()='Re-run']").click()
    wait_for(driver, "document.querySelectorAll('#history .entry').length === 4 && "
                     "!document.getElementById('generate').disabled")
    assert el(driver, "opt-cfg_scale").get_attribute("value") == "3"
    assert pcm_of(result_wav(driver))[0] == first
    only_local(driver, server)


def test_dia2_words_follow_the_audio(driver, server, tts2, shots):
    open_page(driver, server)
    select(driver, "model", tts2.model_id)
    options = driver.execute_script("return [...document.querySelectorAll('#options input')].map((i) => i.dataset.name)")
    assert "top_p" not in options and "cfg_filter_top_k" in options
    set_value(driver, "script", SCRIPT)
    set_value(driver, "seed", "3")
    assert generate(driver).startswith("Done:")
    api = httpx.post(server + "/v1/audio/speech/with-timestamps",
                     json={"model": tts2.model_id, "input": SCRIPT, "seed": 3, "response_format": "pcm"},
                     timeout=WAIT).json()
    words = driver.execute_script(
        "return [...document.querySelectorAll('#words button')].map((b) => [b.textContent, Number(b.dataset.start)])")
    assert words == [[w["word"], w["start"]] for w in api["words"]] and len(words) > 2
    # Seeking into the third word highlights it.
    driver.execute_script(f"document.getElementById('result-audio').currentTime = {words[2][1] + 0.01}")
    wait_for(driver, "document.querySelector('#words button.now')")
    assert driver.execute_script("return document.querySelector('#words button.now').textContent") == words[2][0]
    shots(driver, "dia2-words")
    only_local(driver, server)


def test_stop_cancels_and_downloads_come_in_the_chosen_format(driver, server, tts2, tmp_path):
    open_page(driver, server)
    select(driver, "model", tts2.model_id)
    set_value(driver, "script", " ".join([SCRIPT] * 6))
    el(driver, "generate").click()
    wait_for(driver, "document.getElementById('progress').textContent.includes('s of audio ·')")
    el(driver, "stop").click()
    stopped = wait_for(driver, "document.getElementById('progress').textContent.startsWith('Stopped') && "
                               "document.getElementById('progress').textContent")
    assert "Stopped after" in stopped and not driver.find_elements("css selector", "#history .entry")
    deadline = time.monotonic() + WAIT  # the server cancels the request when the page drops it
    while httpx.get(server + "/health", timeout=WAIT).json()["in_flight"]:
        assert time.monotonic() < deadline
        time.sleep(0.05)

    driver.execute_cdp_cmd("Browser.setDownloadBehavior", {"behavior": "allow", "downloadPath": str(tmp_path)})
    set_value(driver, "script", SCRIPT)
    set_value(driver, "seed", "5")
    select(driver, "format", "mp3")
    assert generate(driver).startswith("Done:")
    el(driver, "download").click()
    mp3 = tmp_path / "dia-5.mp3"
    wait_for(driver, f"document.getElementById('progress').textContent === 'Saved {mp3.name}.'")
    deadline = time.monotonic() + WAIT
    while not mp3.exists():
        assert time.monotonic() < deadline
        time.sleep(0.05)
    api = httpx.post(server + "/v1/audio/speech", timeout=WAIT, json={
        "model": tts2.model_id, "input": SCRIPT, "seed": 5, "response_format": "mp3", "stream": False})
    assert mp3.read_bytes() == api.content  # made again from the seed: the same file
    only_local(driver, server)


def test_errors_appear_next_to_their_fields(driver, server, shots):
    open_page(driver, server)
    set_value(driver, "script", SCRIPT)
    set_value(driver, "opt-temperature", "9")
    generate(driver)
    message = visible_error(driver, "temperature")
    assert "temperature" in message and "Traceback" not in message
    assert el(driver, "opt-temperature").get_attribute("aria-invalid") == "true"
    assert visible_error(driver, "generate") == ""
    shots(driver, "error-temperature")

    set_value(driver, "opt-temperature", "")
    set_value(driver, "seed", "twelve")
    generate(driver)
    assert "whole number" in visible_error(driver, "seed") and visible_error(driver, "temperature") == ""

    set_value(driver, "seed", "")
    set_value(driver, "script", "[S3] Who am I?")
    generate(driver)
    assert "Unknown tag [S3]" in visible_error(driver, "input")

    set_value(driver, "script", "[S1] " + "la " * 400)
    assert "over this model's limit of 1024" in el(driver, "script-length").text
    long_form = httpx.get(server + "/ui/config", timeout=WAIT).json()["models"][0]["long_form"]
    if long_form:
        assert "split into chunks" in el(driver, "script-length").text
    else:
        generate(driver)
        assert "1024" in visible_error(driver, "input")
    driver.execute_script("const s = document.getElementById('script'); s.value = '[S1] ' + 'la '.repeat(1400); "
                          "s.dispatchEvent(new Event('input'));")
    assert "over the 4096 a request takes" in el(driver, "script-length").text
    generate(driver)
    assert "4096" in visible_error(driver, "input")
    only_local(driver, server)


def test_a_voice_from_an_uploaded_clip(driver, server, tmp_path, shots):
    whisper_tiny_en()  # the transcript is filled in by speech recognition
    clip = speak(SENTENCE, tmp_path / "me.wav")
    open_page(driver, server)
    driver.find_element("css selector", "#add-voice summary").click()
    el(driver, "voice-file").send_keys(str(clip))
    transcript = wait_for(driver, "document.getElementById('voice-transcript').value", timeout=60)
    assert "speech recognition" in transcript.lower()
    assert el(driver, "voice-name").get_attribute("value") == "me"
    set_value(driver, "voice-transcript", "Hello world. This is my voice for the test.")
    set_value(driver, "voice-name", "Page Tester")
    el(driver, "voice-save").click()
    wait_for(driver, "document.getElementById('voice-saved').textContent")
    assert el(driver, "voice-S1").get_attribute("value") == "page-tester"
    stored = httpx.get(server + "/v1/voices/page-tester", timeout=WAIT).json()
    assert stored["transcript"] == "Hello world. This is my voice for the test."
    # The voice's transcript counts towards the limit as the model reads it: "[S1] <transcript>\n" before the script.
    set_value(driver, "script", "[S1] Something new.")
    transcript = "Hello world. This is my voice for the test."
    expected = len(encode_script(join_prompt_transcript(f"[S1] {transcript}", "[S1] Something new.")))
    assert el(driver, "script-length").text.startswith(f"{expected} / 1024")
    shots(driver, "voice-saved")
    assert generate(driver).startswith("Done:")
    assert "voices S1=page-tester" in el(driver, "result-info").text

    # [S2] alone cannot have a voice: the server says why, next to the voice pickers.
    select(driver, "voice-S1", "")
    select(driver, "voice-S2", "page-tester")
    generate(driver)
    assert "S1" in visible_error(driver, "voices")

    # A saved voice whose clip is too short is refused next to the clip.
    short = speak("Hi.", tmp_path / "short.wav", words_per_minute=400)
    el(driver, "voice-file").send_keys(str(short))
    set_value(driver, "voice-name", "Too short")
    set_value(driver, "voice-transcript", "Hi.")
    el(driver, "voice-save").click()
    assert "s" in wait_for(driver, "!document.getElementById('err-voice-file').hidden && "
                                   "document.getElementById('err-voice-file').textContent")
    only_local(driver, server)


def test_recording_from_the_microphone(driver, server):
    open_page(driver, server)
    driver.find_element("css selector", "#add-voice summary").click()
    el(driver, "voice-record").click()
    wait_for(driver, "document.getElementById('voice-record').getAttribute('aria-pressed') === 'true'")
    time.sleep(1.6)
    el(driver, "voice-record").click()
    status = wait_for(driver, "document.getElementById('voice-clip-status').textContent.startsWith('Recorded') && "
                              "document.getElementById('voice-clip-status').textContent")
    assert float(status.split()[1]) >= 1.5
    set_value(driver, "voice-name", "Recorded")
    set_value(driver, "voice-transcript", "A steady tone.")
    el(driver, "voice-save").click()
    wait_for(driver, "document.getElementById('voice-saved').textContent || "
                     "!document.getElementById('err-voice-file').hidden")
    assert visible_error(driver, "voice-file") == ""
    assert httpx.get(server + "/v1/voices/recorded", timeout=WAIT).json()["duration"] >= 1.0
    only_local(driver, server)


def test_api_key_typed_into_the_page(driver, tts, voices_dir):
    with running(create_app(tts, api_keys=[KEY], chunk_frames=CHUNK_FRAMES, voices=voices_dir)) as url:
        open_page(driver, url)
        assert "No API key" in visible_error(driver, "key")
        assert el(driver, "key-panel").get_attribute("open") is not None
        el(driver, "api-key").send_keys("wrong")
        el(driver, "script").click()  # leaving the field saves the key
        wait_for(driver, "document.getElementById('err-key').textContent.includes('Incorrect')")
        set_value(driver, "api-key", KEY)
        el(driver, "script").click()
        wait_for(driver, "document.getElementById('err-key').hidden")
        assert driver.execute_script("return localStorage.getItem('faster-dia.api-key')") == KEY
        set_value(driver, "script", SCRIPT)
        assert generate(driver).startswith("Done:")
        only_local(driver, url)


def test_phone_screen_and_keyboard(driver, server, shots):
    from selenium.webdriver.common.keys import Keys

    driver.execute_cdp_cmd("Emulation.setDeviceMetricsOverride",
                           {"width": 390, "height": 844, "deviceScaleFactor": 2, "mobile": True})
    try:
        open_page(driver, server)
        assert driver.execute_script("return document.documentElement.scrollWidth") <= 390
        shots(driver, "phone-start")
        script = el(driver, "script")
        script.send_keys(SCRIPT)
        script.send_keys(Keys.CONTROL, Keys.ENTER)
        wait_for(driver, "document.getElementById('progress').textContent.startsWith('Done')")
        assert driver.execute_script("return document.documentElement.scrollWidth") <= 390
        driver.execute_script("document.getElementById('generate').scrollIntoView()")
        shots(driver, "phone-result")
        # Every control is reachable with Tab: walk the focus order from the top.
        driver.find_element("tag name", "body").click()
        reached = set()
        for _ in range(80):
            driver.switch_to.active_element.send_keys(Keys.TAB)
            reached.add(driver.switch_to.active_element.get_attribute("id"))
        assert {"model", "script", "sound", "voice-S1", "opt-temperature", "seed", "speed", "generate",
                "download"} <= reached
    finally:
        driver.execute_cdp_cmd("Emulation.clearDeviceMetricsOverride", {})
    only_local(driver, server)
