"""The voice library on disk, voices in generation (Python, HTTP, command line), and voice prompts
transcribed automatically with a real Whisper on real (espeak-ng) speech."""

from __future__ import annotations

import os
import subprocess
import sys
import wave
from pathlib import Path

import httpx
import numpy as np
import pytest
from servers import WAIT, running
from speech_clips import speak, whisper_tiny_en

import faster_dia
from faster_dia.errors import ConflictError, InvalidInputError, NotFoundError
from faster_dia.server import create_app
from faster_dia.voices import BUILTIN_VOICES, MAX_SECONDS, VoiceLibrary, builtin_seed

SCRIPT = "[S1] Something new in the same voice."
ALICE_SAYS = "Hello world. This is a test of the speech recognition system."


def tone_wav(path: Path, seconds: float, rate: int = 16000) -> Path:
    t = np.arange(int(seconds * rate)) / rate
    pcm = (0.3 * np.sin(2 * np.pi * 220 * t) * 32767).astype("<i2")
    with wave.open(str(path), "wb") as out:
        out.setnchannels(1)
        out.setsampwidth(2)
        out.setframerate(rate)
        out.writeframes(pcm.tobytes())
    return path


@pytest.fixture(scope="module")
def alice_wav(tmp_path_factory):
    return speak(ALICE_SAYS, tmp_path_factory.mktemp("clips") / "alice.wav")


@pytest.fixture(scope="module")
def recognizer():
    from faster_dia import asr

    return asr.load(whisper_tiny_en(), device="cpu")


@pytest.fixture
def library(tmp_path):
    return VoiceLibrary(tmp_path / "voices")


# ---------------------------------------------------------------------- the library on disk


def test_add_list_get_remove_and_restart(library, tmp_path):
    clip = tone_wav(tmp_path / "tone.wav", 2.0)
    voice = library.add("Alice Smith", clip, transcript="[S1] La la la.")
    assert (voice.id, voice.name, voice.transcript) == ("alice-smith", "Alice Smith", "[S1] La la la.")
    assert voice.duration == pytest.approx(2.0) and voice.sample_rate == 16000 and voice.source == "api"
    assert voice.audio_path.read_bytes() == clip.read_bytes()  # the clip is kept exactly as given
    again = VoiceLibrary(library.path)  # a restarted server sees the same library
    assert [v.name for v in again.list()] == ["Alice Smith"]
    assert again.get("alice-smith").name == again.get("Alice Smith").name == "Alice Smith"
    assert "alice smith" in again
    assert again.remove("Alice Smith").id == "alice-smith"
    assert again.list() == [] and not (library.path / "alice-smith").exists()
    with pytest.raises(NotFoundError, match="no voice 'Alice Smith'"):
        again.get("Alice Smith")


@pytest.mark.parametrize(("name", "error", "match"), [
    ("", InvalidInputError, "needs a name"),
    ("x" * 65, InvalidInputError, "at most 64"),
    ("a/b", InvalidInputError, "path characters"),
    ("..", InvalidInputError, "path characters"),
    (".hidden", InvalidInputError, "start with a dot"),
    ("!!!", InvalidInputError, "letter or digit"),
    ("Alloy", ConflictError, "built-in"),
])
def test_bad_names(library, tmp_path, name, error, match):
    with pytest.raises(error, match=match):
        library.add(name, tone_wav(tmp_path / "t.wav", 2.0), transcript="x")


def test_bad_clips_and_duplicates(library, tmp_path):
    good = tone_wav(tmp_path / "good.wav", 2.0)
    library.add("bob", good, transcript="x")
    with pytest.raises(ConflictError, match="exists already"):
        library.add("Bob", good, transcript="x")
    with pytest.raises(InvalidInputError, match="at least 1 s"):
        library.add("short", tone_wav(tmp_path / "short.wav", 0.5), transcript="x")
    with pytest.raises(InvalidInputError, match=f"{MAX_SECONDS:g}"):
        library.add("long", tone_wav(tmp_path / "long.wav", MAX_SECONDS + 2), transcript="x")
    with pytest.raises(InvalidInputError):
        library.add("noise", b"this is not audio", transcript="x")
    with pytest.raises(InvalidInputError, match="empty"):
        library.add("nothing", b"", transcript="x")
    assert [v.name for v in library.list()] == ["bob"]  # nothing half-made was left behind


def test_a_crash_mid_write_leaves_no_half_voice(library, tmp_path):
    partial = library.path / ".partial-123"
    partial.mkdir()
    (partial / "audio.wav").write_bytes(b"half")
    reopened = VoiceLibrary(library.path)
    assert reopened.list() == [] and not partial.exists()


def test_dropped_files_become_voices(tmp_path):
    root = tmp_path / "voices"
    root.mkdir()
    tone_wav(root / "carol.wav", 1.5)
    (root / "carol.txt").write_text("[S1] Hi, I am Carol.", encoding="utf-8")
    tone_wav(root / "dave.wav", 0.2)  # too short: skipped
    library = VoiceLibrary(root)
    (carol,) = library.list()
    assert (carol.name, carol.transcript, carol.source) == ("carol", "[S1] Hi, I am Carol.", "file")
    assert len(VoiceLibrary(root).list()) == 1  # opening again imports nothing twice
    library.remove("carol")
    assert not (root / "carol.wav").exists() and VoiceLibrary(root).list() == []


def test_codes_are_computed_once_per_codec(library, tts, tmp_path):
    voice = library.add("erin", tone_wav(tmp_path / "e.wav", 1.5), transcript="x")
    calls = []
    encode = tts.codec.encode

    def counted(pcm):
        calls.append(len(pcm))
        return encode(pcm)

    tts.codec.encode = counted
    try:
        first = voice.codes(tts.codec)
        second = library.get("erin").codes(tts.codec)
    finally:
        del tts.codec.encode
    assert len(calls) == 1 and np.array_equal(first.numpy(), second.numpy())
    assert first.shape[1] == 9 and len(list(voice.directory.glob("codes-*.npy"))) == 1


# ---------------------------------------------------------------------- voices in generation


def test_a_stored_voice_is_its_clip_and_transcript(library, tts, tmp_path):
    clip = tone_wav(tmp_path / "f.wav", 1.5)
    library.add("frank", clip, transcript="Tones are all I say.")
    tts.voices = library
    try:
        with_voice = tts.generate(SCRIPT, voice="frank", seed=5, max_new_tokens=60)
        again = tts.generate(SCRIPT, voice={"id": "frank"}, seed=5, max_new_tokens=60)
        by_hand = tts.generate(SCRIPT, audio_prompt=str(clip), audio_prompt_transcript="[S1] Tones are all I say.",
                               seed=5, max_new_tokens=60)
        assert np.array_equal(with_voice.codes, by_hand.codes) and np.array_equal(again.codes, by_hand.codes)
        library.add("gina", tone_wav(tmp_path / "g.wav", 1.2, rate=8000), transcript="Me too.")
        both = tts.generate(SCRIPT, voices={"S1": "frank", "S2": "gina"}, seed=5, max_new_tokens=60)
        frank, gina = library.get("frank").codes(tts.codec), library.get("gina").codes(tts.codec)
        joined = tts.generate(SCRIPT, audio_prompt=np.concatenate([frank.numpy(), gina.numpy()]),
                              audio_prompt_transcript="[S1] Tones are all I say. [S2] Me too.", seed=5,
                              max_new_tokens=60)
        assert np.array_equal(both.codes, joined.codes)
        with pytest.raises(NotFoundError, match="frank"):  # the message lists the stored voices
            tts.generate(SCRIPT, voice="nobody", seed=5, max_new_tokens=30)
    finally:
        tts.voices = None


def test_built_in_names_are_fixed_seeds(tts):
    alloy = tts.generate(SCRIPT, voice="alloy", max_new_tokens=40)
    assert alloy.seed == builtin_seed("alloy")
    assert np.array_equal(alloy.codes, tts.generate(SCRIPT, seed=builtin_seed("alloy"), max_new_tokens=40).codes)
    assert tts.generate(SCRIPT, voice="alloy", seed=3, max_new_tokens=40).seed == 3  # a seed given wins
    assert len({builtin_seed(name) for name in BUILTIN_VOICES}) == len(BUILTIN_VOICES)


def test_voice_prompts_are_transcribed_automatically(tts, tts2, alice_wav, recognizer):
    tts.asr = tts2.asr = recognizer
    try:
        heard = recognizer.transcribe(alice_wav).text.strip()
        assert "hello world" in heard.lower()
        auto = tts.generate(SCRIPT, audio_prompt=str(alice_wav), seed=2, max_new_tokens=60)
        given = tts.generate(SCRIPT, audio_prompt=str(alice_wav), audio_prompt_transcript="[S1] " + heard, seed=2,
                             max_new_tokens=60)
        assert np.array_equal(auto.codes, given.codes)
        # A clip's path as the voice: transcribed the same way.
        assert np.array_equal(tts.generate(SCRIPT, voice=str(alice_wav), seed=2, max_new_tokens=60).codes,
                              given.codes)
    finally:
        tts.asr = tts2.asr = None


def test_a_voice_stored_without_transcript_is_transcribed_once(tts, alice_wav, recognizer, tmp_path):
    library = VoiceLibrary(tmp_path / "lib")
    voice = library.add("alice", alice_wav)  # no recognizer yet: kept untranscribed
    assert voice.transcript is None
    tts.voices, tts.asr = library, recognizer
    try:
        tts.generate(SCRIPT, voice="alice", seed=1, max_new_tokens=40)
        kept = VoiceLibrary(library.path).get("alice")
        assert "hello world" in kept.transcript.lower() and kept.words and kept.words[0][0].lower().startswith("hello")
    finally:
        tts.voices = tts.asr = None
    with_recognizer = VoiceLibrary(tmp_path / "lib2", transcriber=lambda pcm, rate: recognizer.transcribe(
        pcm, sample_rate=rate))
    assert "hello world" in with_recognizer.add("alice", alice_wav).transcript.lower()


# ---------------------------------------------------------------------- HTTP


@pytest.fixture
def server(tts, tmp_path):
    with running(create_app(tts, voices=tmp_path / "server-voices", asr_model=whisper_tiny_en())) as url:
        yield url
    tts.voices = tts.asr = None


def upload(url: str, path: str, name: str, audio: bytes, **fields) -> httpx.Response:
    field = "audio_sample" if path == "/v1/audio/voices" else "audio"
    return httpx.post(url + path, data={"name": name, **fields}, files={field: ("clip.wav", audio, "audio/wav")},
                      timeout=WAIT)


def assert_error(response: httpx.Response, status: int, param: str | None = None) -> None:
    assert response.status_code == status, response.text
    error = response.json()["error"]
    assert set(error) == {"message", "type", "param", "code"} and error["message"]
    if param is not None:
        assert error["param"] == param, error


def test_voices_over_http(server, alice_wav, tmp_path):
    clip = alice_wav.read_bytes()
    created = upload(server, "/v1/voices", "Alice", clip)
    assert created.status_code == 201, created.text
    body = created.json()
    assert body["id"] == "alice" and "hello world" in body["transcript"].lower()
    given = upload(server, "/v1/voices", "Tone", tone_wav(tmp_path / "t.wav", 2.0).read_bytes(),
                   transcript="Just a tone.")
    assert given.json()["transcript"] == "Just a tone."
    openai_shape = upload(server, "/v1/audio/voices", "Ally", clip, consent="yes")
    assert openai_shape.status_code == 200 and openai_shape.json()["object"] == "audio.voice"
    assert set(openai_shape.json()) == {"object", "id", "name", "created_at"}

    names = [v["id"] for v in httpx.get(f"{server}/v1/audio/voices").json()["voices"]]
    assert names[:3] == ["alice", "tone", "ally"] and "alloy" in names  # stored ones first, then built-ins
    listed = httpx.get(f"{server}/v1/voices").json()["voices"]
    assert [v["id"] for v in listed if not v["builtin"]] == ["alice", "tone", "ally"]
    one = httpx.get(f"{server}/v1/voices/alice").json()
    assert one["name"] == "Alice" and one["duration"] > 3 and one["words"]
    audio = httpx.get(f"{server}/v1/voices/alice/audio")
    assert audio.status_code == 200 and audio.content == clip and audio.headers["content-type"].startswith("audio/")

    # The same voice and seed give the same audio, and a stored voice is the clip with its transcript.
    spoken = [httpx.post(f"{server}/v1/audio/speech", timeout=WAIT, json={
        "input": SCRIPT, "voice": "Alice", "seed": 4, "max_new_tokens": 60, "response_format": "pcm"})
        for _ in range(2)]
    assert spoken[0].status_code == 200 and spoken[0].content == spoken[1].content
    per_speaker = httpx.post(f"{server}/v1/audio/speech", timeout=WAIT, json={
        "input": SCRIPT + " [S2] And me.", "voices": {"S1": "alice", "S2": "tone"}, "seed": 4, "max_new_tokens": 60,
        "response_format": "pcm"})
    assert per_speaker.status_code == 200 and per_speaker.content != spoken[0].content

    deleted = httpx.delete(f"{server}/v1/voices/tone")
    assert deleted.json() == {"object": "audio.voice.deleted", "id": "tone", "deleted": True}
    assert_error(httpx.get(f"{server}/v1/voices/tone"), 404, "voice")


def test_voice_upload_errors(server, alice_wav, tmp_path):
    clip = alice_wav.read_bytes()
    assert upload(server, "/v1/voices", "dup", clip).status_code == 201
    assert_error(upload(server, "/v1/voices", "Dup", clip), 409, "name")
    assert_error(upload(server, "/v1/voices", "", clip), 400)
    assert_error(upload(server, "/v1/voices", "../etc", clip), 400, "name")
    assert_error(upload(server, "/v1/voices", "x" * 100, clip), 400, "name")
    assert_error(upload(server, "/v1/voices", "junk", b"not audio at all"), 400, "audio")
    assert_error(upload(server, "/v1/voices", "empty", b""), 400, "audio")
    assert_error(upload(server, "/v1/voices", "short", tone_wav(tmp_path / "s.wav", 0.3).read_bytes()), 400, "audio")
    assert_error(upload(server, "/v1/voices", "long", tone_wav(tmp_path / "l.wav", 30).read_bytes()), 400, "audio")
    assert_error(upload(server, "/v1/audio/voices", "huge", b"\0" * (26 << 20)), 413)
    assert_error(httpx.post(f"{server}/v1/voices", data={"name": "nofile"}), 400, "audio")
    assert_error(httpx.post(f"{server}/v1/audio/speech", json={"input": SCRIPT, "voice": "nobody"}), 404, "voice")
    assert_error(httpx.delete(f"{server}/v1/voices/nobody"), 404, "voice")


# ---------------------------------------------------------------------- command line


def run_cli(*args, env_extra=None):
    env = {**os.environ, "HF_HUB_OFFLINE": "1", **(env_extra or {})}
    return subprocess.run([sys.executable, "-m", "faster_dia.cli", *args], capture_output=True, text=True, env=env,
                          timeout=300)


def test_cli_voices_and_speak_with_a_voice(tiny_dirs, alice_wav, tmp_path):
    root = str(tmp_path / "cli-voices")
    env = {"FASTER_DIA_ASR_MODEL": str(whisper_tiny_en())}
    added = run_cli("voices", "--voices-dir", root, "add", "alice", str(alice_wav), env_extra=env)
    assert added.returncode == 0 and "hello world" in added.stdout.lower(), added.stderr
    listed = run_cli("voices", "--voices-dir", root, "list")
    assert listed.returncode == 0 and listed.stdout.startswith("alice\t")
    out = tmp_path / "cloned.wav"
    spoken = run_cli("speak", SCRIPT, "--voice", "alice", "--voices-dir", root, "-o", str(out), "--seed", "3",
                     "--max-new-tokens", "40", "--no-progress", "--model", str(tiny_dirs["dia-1.6b-0626"]),
                     "--codec", str(tiny_dirs["dac"]), "--device", "cpu")
    assert spoken.returncode == 0 and out.stat().st_size > 44, spoken.stderr
    assert run_cli("voices", "--voices-dir", root, "rm", "alice").returncode == 0
    missing = run_cli("voices", "--voices-dir", root, "rm", "alice")
    assert missing.returncode != 0 and "no voice" in missing.stderr and "Traceback" not in missing.stderr


def test_load_takes_a_voice_library(tiny_dirs, tmp_path):
    tts = faster_dia.load(tiny_dirs["dia-1.6b-0626"], codec=tiny_dirs["dac"], device="cpu", voices=tmp_path / "lib")
    assert isinstance(tts.voices, VoiceLibrary) and tts.voices.path == tmp_path / "lib"
