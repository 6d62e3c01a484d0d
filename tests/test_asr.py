"""faster_dia.asr on real Whisper tiny.en weights and real (espeak-ng) speech."""

from __future__ import annotations

import asyncio
import re
import subprocess
import sys
import threading

import numpy as np
import pytest
import torch
from speech_clips import SENTENCE, speak, whisper_tiny_en

from faster_dia import asr
from faster_dia.audio import decode_audio, resample
from faster_dia.errors import InvalidInputError, ModelNotFoundError


@pytest.fixture(scope="module")
def model_dir():
    return whisper_tiny_en()


@pytest.fixture(scope="module")
def recognizer(model_dir):
    return asr.load(model_dir, device="cpu", cpu_threads=2)


@pytest.fixture(scope="module")
def clip(tmp_path_factory):
    return speak(SENTENCE, tmp_path_factory.mktemp("speech") / "hello.wav")


@pytest.fixture(scope="module")
def transcript(recognizer, clip):
    return recognizer.transcribe(clip)


def letters(text: str) -> str:
    return re.sub(r"[^a-z]", "", text.lower())


def assert_heard(text: str) -> None:
    lowered = text.lower()
    for word in ("hello", "world", "speech", "recognition"):
        assert word in lowered, f"{word!r} not in {text!r}"


def assert_words_timed(words: list[asr.Word], duration: float) -> None:
    assert words
    previous_start = 0.0
    for word in words:
        assert word.word and word.word == word.word.strip()
        assert 0.0 <= word.start <= word.end <= duration + 1e-6, word
        assert word.start >= previous_start, words
        assert 0.0 <= word.probability <= 1.0
        previous_start = word.start


def test_transcribes_real_speech(recognizer, clip, transcript):
    samples, rate = decode_audio(clip)
    assert_heard(transcript.text)
    assert transcript.text == transcript.text.strip()
    assert transcript.language == "en"
    assert transcript.duration == pytest.approx(samples.size / rate, abs=0.01)
    assert recognizer.model_id == "model"  # the directory's name, never its path
    assert not recognizer.multilingual and recognizer.languages == ["en"]


def test_segments_join_into_the_transcript(transcript):
    segments = transcript.segments
    assert [s.id for s in segments] == list(range(len(segments)))
    assert "".join(s.text for s in segments).strip() == transcript.text
    for segment in segments:
        assert 0.0 <= segment.start < segment.end <= transcript.duration + 1e-6
        assert segment.avg_logprob <= 0.0 and 0.0 <= segment.no_speech_prob <= 1.0
        assert segment.temperature == 0.0 and segment.tokens
    assert segments[0].start < 0.5


def test_word_timestamps(transcript):
    words = transcript.words
    assert_words_timed(words, transcript.duration)
    assert words == [w for s in transcript.segments for w in s.words]
    assert letters("".join(w.word for w in words)) == letters(transcript.text)
    assert words[0].word.lower().startswith("hello") and words[0].start < 0.5
    # The sentence fills the clip: the last word ends in its last second.
    assert words[-1].end > transcript.duration - 1.0


def test_without_word_timestamps(recognizer, clip, transcript):
    plain = recognizer.transcribe(clip, word_timestamps=False)
    assert plain.text == transcript.text
    assert plain.words == [] and all(s.words == [] for s in plain.segments)


@pytest.mark.parametrize("rate", [16_000, 44_100, 24_000])
def test_arrays_at_any_rate(recognizer, clip, transcript, rate):
    native, native_rate = decode_audio(clip)
    samples = resample(native, native_rate, rate)
    result = recognizer.transcribe(samples, sample_rate=rate)
    assert_heard(result.text)
    assert result.duration == pytest.approx(transcript.duration, abs=0.01)
    assert_words_timed(result.words, result.duration)
    # The same speech gives the same words at about the same times, whatever the input rate (punctuation and
    # case may differ: resampling changes the samples a little).
    assert [letters(w.word) for w in result.words] == [letters(w.word) for w in transcript.words]
    for ours, reference in zip(result.words, transcript.words, strict=True):
        assert ours.start == pytest.approx(reference.start, abs=0.15)


def test_tensors_and_column_arrays(recognizer, clip, transcript):
    samples, rate = decode_audio(clip)
    assert recognizer.transcribe(torch.from_numpy(samples), sample_rate=rate).text == transcript.text
    assert recognizer.transcribe(samples[:, None], sample_rate=rate).text == transcript.text


def test_bytes_and_file_objects(recognizer, clip, transcript):
    data = clip.read_bytes()
    assert recognizer.transcribe(data).text == transcript.text
    with open(clip, "rb") as file:
        assert recognizer.transcribe(file).text == transcript.text
    assert recognizer.transcribe(str(clip)).text == transcript.text


def test_segments_stream_lazily(recognizer, clip, transcript):
    segments = recognizer.transcribe_segments(clip)
    assert not isinstance(segments, list)
    assert list(segments) == transcript.segments


def test_silence_and_noise_give_no_words(recognizer):
    # Without the VAD filter Whisper "hears" a word ("You") in both.
    silence = np.zeros(32_000, dtype=np.float32)
    noise = np.random.default_rng(0).standard_normal(16_000).astype(np.float32) * 0.05
    for samples in (silence, noise):
        result = recognizer.transcribe(samples, sample_rate=16_000)
        assert result.text == "" and result.words == [] and result.segments == []
        assert result.duration == pytest.approx(samples.size / 16_000)


def test_a_single_sample(recognizer):
    result = recognizer.transcribe(np.zeros(1, dtype=np.float32), sample_rate=8_000)
    assert result.text == "" and result.segments == []


def test_prompt_and_temperature(recognizer, clip):
    result = recognizer.transcribe(clip, prompt="A test of speech recognition.", temperature=0.3)
    assert "world" in result.text.lower()
    assert all(s.temperature == pytest.approx(0.3) for s in result.segments)


@pytest.mark.parametrize(("kwargs", "param"), [
    ({"audio": np.zeros(100, dtype=np.float32)}, "sample_rate"),
    ({"audio": np.zeros(100, dtype=np.float32), "sample_rate": 0}, "sample_rate"),
    ({"audio": np.zeros(0, dtype=np.float32), "sample_rate": 16_000}, "audio"),
    ({"audio": np.full(100, np.nan, dtype=np.float32), "sample_rate": 16_000}, "audio"),
    ({"audio": np.zeros((2, 100), dtype=np.float32), "sample_rate": 16_000}, "audio"),
    ({"audio": b"not audio at all"}, "file"),
    ({"audio": b""}, "file"),
    ({"task": "translate"}, "model"),
    ({"task": "summarize"}, "task"),
    ({"language": "fr"}, "language"),
    ({"temperature": 1.5}, "temperature"),
    ({"temperature": -0.1}, "temperature"),
])
def test_bad_input(recognizer, clip, kwargs, param):
    kwargs = {"audio": clip, **kwargs}
    with pytest.raises(InvalidInputError) as caught:
        recognizer.transcribe(kwargs.pop("audio"), **kwargs)
    assert caught.value.param == param


def test_english_only_models_cannot_translate(recognizer, clip):
    with pytest.raises(InvalidInputError, match="English-only and cannot translate"):
        recognizer.transcribe(clip, task="translate")
    # Errors come before the first segment is asked for, so a server can answer 400 before streaming.
    with pytest.raises(InvalidInputError):
        recognizer.transcribe_segments(clip, task="translate")


def test_languages_are_normalised(recognizer, clip, transcript):
    assert recognizer.transcribe(clip, language="EN-us", word_timestamps=False).text == transcript.text


def test_threads_share_one_model(recognizer, clip, transcript):
    results: list[str] = []
    errors: list[BaseException] = []

    def work() -> None:
        try:
            results.append(recognizer.transcribe(clip).text)
        except BaseException as exc:  # noqa: BLE001 - handed to the main thread
            errors.append(exc)

    threads = [threading.Thread(target=work) for _ in range(3)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(120)
    assert not errors
    assert results == [transcript.text] * 3


# ---------------------------------------------------------------------- loading


def test_load_shares_a_loaded_model(model_dir, recognizer):
    assert asr.load(str(model_dir), device="cpu", cpu_threads=2) is recognizer
    assert asr.load(model_dir, device="cpu", cpu_threads=1) is not recognizer


def test_environment_names_the_default(model_dir, recognizer, monkeypatch):
    monkeypatch.setenv(asr.MODEL_ENV, str(model_dir))
    assert asr.configured_model() == str(model_dir)
    assert asr.load(device="cpu", cpu_threads=2) is recognizer
    monkeypatch.delenv(asr.MODEL_ENV)
    assert asr.configured_model() == asr.DEFAULT_MODEL


def test_offline_and_not_cached(tmp_path, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path))
    with pytest.raises(ModelNotFoundError) as caught:
        asr.load("small.en", param="model")
    message = caught.value.message
    assert "Systran/faster-whisper-small.en" in message and "hf download" in message
    assert asr.MODEL_ENV in message and caught.value.param == "model"


@pytest.mark.parametrize("name", ["whisper-enormous", "./no/such/dir"])
def test_unknown_models(name):
    with pytest.raises(ModelNotFoundError):
        asr.load(name)


def test_a_directory_without_weights(tmp_path):
    with pytest.raises(ModelNotFoundError, match="has no model.bin"):
        asr.load(tmp_path)


def test_bad_device():
    with pytest.raises(InvalidInputError) as caught:
        asr.load("tiny.en", device="tpu")
    assert caught.value.param == "device"


def test_without_faster_whisper(monkeypatch):
    monkeypatch.setitem(sys.modules, "faster_whisper", None)
    with pytest.raises(InvalidInputError, match=r"pip install 'faster-dia\[asr\]'") as caught:
        asr.load(param="file")
    assert caught.value.param == "file"


def test_the_module_imports_without_faster_whisper():
    code = ("import sys; sys.modules['faster_whisper'] = None; sys.modules['ctranslate2'] = None; "
            "import faster_dia.asr, faster_dia.server.app; print(faster_dia.asr.LazyRecognizer().model_id)")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120,
                          env={"PATH": "", "FASTER_DIA_ASR_MODEL": "tiny.en"})
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "tiny.en"


def test_lazy_recognizer_loads_once(model_dir, recognizer):
    lazy = asr.LazyRecognizer(model_dir, device="cpu")
    assert lazy.model_id == "model" and not lazy.loaded

    async def both():
        return await asyncio.gather(lazy.get(), lazy.get())

    first, second = asyncio.run(both())
    assert first is second and lazy.loaded
    assert first.model_id == "model"
    shared = asr.LazyRecognizer(recognizer)
    assert shared.loaded and shared.model_id == "model"
    assert asyncio.run(shared.get()) is recognizer
