"""Dia2 end to end on the tiny checkpoint: generation, timestamps, prefixes, seeds, batches, errors, CLI."""

from __future__ import annotations

import os
import subprocess
import sys
import wave

import numpy as np
import pytest
import torch

import faster_dia
from faster_dia.errors import InvalidInputError

SCRIPT = "[S1] Hello there friend. [S2] Hi! (laughs)"


def test_generate_gives_24khz_audio_codes_and_timestamps(tts2):
    assert isinstance(tts2, faster_dia.Dia2TextToSpeech) and tts2.family == "dia2"
    speech = tts2.generate(SCRIPT, seed=3)
    assert speech.sample_rate == 24000 and tts2.frame_rate == 12.5
    frames = speech.codes.shape[0]
    assert speech.codes.shape[1] == 32 and 0 <= speech.codes.min() and speech.codes.max() < 2048
    assert len(speech.audio) == frames * 1920 and np.abs(speech.audio).max() <= 1.0
    words = [w for w, _ in speech.timestamps]
    assert words == ["Hello", "there", "friend.", "Hi!", "(laughs)"]
    starts = [t for _, t in speech.timestamps]
    assert starts == sorted(starts) and starts[0] >= 0 and starts[-1] < speech.duration
    assert starts[0] == pytest.approx(2 / 12.5)  # the first word comes after the two initial padding steps


def test_mimi_decode_equals_transformers(tts2, dia2_dirs):
    from transformers import MimiModel

    speech = tts2.generate(SCRIPT, seed=4)
    mimi = MimiModel.from_pretrained(dia2_dirs["mimi"]).eval()
    with torch.no_grad():
        expected = mimi.decode(torch.as_tensor(speech.codes).T[None]).audio_values.clamp(-1, 1).reshape(-1).numpy()
    np.testing.assert_allclose(speech.audio, expected, atol=1e-6)


def test_seeds_and_batches(tts2):
    a = tts2.generate(SCRIPT, seed=11)
    b = tts2.generate(SCRIPT, seed=11)
    assert np.array_equal(a.codes, b.codes) and a.timestamps == b.timestamps
    c = tts2.generate(SCRIPT, seed=12)
    assert not np.array_equal(a.codes, c.codes)
    scripts = [SCRIPT, "[S2] A different and somewhat longer line.", "[S1] Short."]
    batch = tts2.generate(scripts, seed=[11, 5, 6])
    assert np.array_equal(batch[0].codes, a.codes)
    for script, seed, speech in zip(scripts[1:], [5, 6], batch[1:], strict=True):
        assert np.array_equal(speech.codes, tts2.generate(script, seed=seed).codes)


def test_cfg_scale_one_runs_one_branch(tts2, monkeypatch):
    rows = []
    decode = tts2.model.decode

    def spy(*args, **kwargs):
        rows.append(args[0].shape[0])
        return decode(*args, **kwargs)

    monkeypatch.setattr(tts2.model, "decode", spy)
    tts2.generate(SCRIPT, seed=1, cfg_scale=1.0, max_new_tokens=5)
    assert set(rows) == {1}
    rows.clear()
    tts2.generate(SCRIPT, seed=1, cfg_scale=3.0, max_new_tokens=5)
    assert set(rows) == {2}


def test_max_new_tokens_caps_frames_and_greedy_is_seed_free(tts2):
    speech = tts2.generate(SCRIPT, seed=1, max_new_tokens=10)
    assert speech.codes.shape[0] == 10
    g1 = tts2.generate(SCRIPT, seed=1, temperature=0)
    g2 = tts2.generate(SCRIPT, seed=2, temperature=0)
    assert np.array_equal(g1.codes, g2.codes)


def test_prefix_is_excluded_or_included(tts2):
    pcm = (0.3 * np.sin(2 * np.pi * 200 * np.arange(24000 * 2) / 24000)).astype(np.float32)
    kwargs = dict(seed=1, prefix_speaker_1=pcm, prefix_transcript_1="[S1] Hello there friend.", prefix_sample_rate=24000)
    without = tts2.generate("[S1] Now new words.", **kwargs)
    with_prefix = tts2.generate("[S1] Now new words.", include_prefix=True, **kwargs)
    prefix_frames = 25  # 2 s at 12.5 frames/s
    assert with_prefix.codes.shape[0] == without.codes.shape[0] + prefix_frames
    assert np.array_equal(with_prefix.codes[prefix_frames:], without.codes)
    # the prefix's own codes are teacher-forced, so they come back unchanged
    assert np.array_equal(with_prefix.codes[:prefix_frames], tts2.codec.encode(pcm).numpy())
    assert [w for w, _ in without.timestamps] == ["Now", "new", "words."]
    assert [w for w, _ in with_prefix.timestamps][:3] == ["Hello", "there", "friend."]
    two = tts2.generate("[S1] Now.", seed=1, prefix_speaker_1=pcm, prefix_transcript_1="[S1] Hello.",
                        prefix_speaker_2=pcm[:24000], prefix_transcript_2="[S2] Hi.", prefix_sample_rate=24000,
                        include_prefix=True)
    assert two.codes.shape[0] > 25 + 13


def test_stream_equals_generate(tts2):
    full = tts2.generate(SCRIPT, seed=9)
    chunks = list(tts2.stream(SCRIPT, seed=9, chunk_frames=3))
    assert len(chunks) > 2
    np.testing.assert_allclose(np.concatenate(chunks), full.audio, atol=1e-4)


@pytest.mark.parametrize(
    "kwargs, match",
    [
        (dict(script=""), "empty"),
        (dict(script="[S3] who"), "Unknown tag"),
        (dict(script='[S1] a <break time="99s"/> b'), "break"),
        (dict(top_p=0.9), "top_p"),
        (dict(prefix_speaker_2=np.zeros(2400, np.float32), prefix_transcript_2="[S2] x", prefix_sample_rate=24000),
         "prefix_speaker_1"),
        (dict(prefix_speaker_1=np.zeros(2400, np.float32), prefix_sample_rate=24000), "transcript"),
        (dict(prefix_speaker_1="/nonexistent.wav", prefix_transcript_1="[S1] x"), "not found"),
        # Scripts of any length are spoken in chunks (see test_longform.py); a bad mode is still an error.
        (dict(script="[S1] " + "word " * 1600, continuity="sideways"), "continuity"),
        (dict(cfg_scale=0), "cfg_scale"),
        (dict(text_top_k=0), "text_top_k"),
        (dict(max_new_tokens=0), "max_new_tokens"),
    ],
)
def test_bad_input_is_a_clear_error(tts2, kwargs, match):
    kwargs = dict(kwargs)
    script = kwargs.pop("script", SCRIPT)
    with pytest.raises(InvalidInputError, match=match):
        tts2.generate(script, **kwargs)


def test_cli_speaks_with_a_dia2_model(dia2_dirs, tmp_path):
    out = tmp_path / "d2.wav"
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    result = subprocess.run(
        [sys.executable, "-m", "faster_dia.cli", "speak", SCRIPT, "-o", str(out), "--model", str(dia2_dirs["dia2"]),
         "--codec", str(dia2_dirs["mimi"]), "--device", "cpu", "--seed", "2", "--no-progress", "--cfg-scale", "3"],
        capture_output=True, text=True, env=env, timeout=300,
    )
    assert result.returncode == 0, result.stderr
    with wave.open(str(out)) as w:
        assert w.getframerate() == 24000 and w.getnframes() % 1920 == 0 and w.getnframes() > 0
    bad = subprocess.run(
        [sys.executable, "-m", "faster_dia.cli", "speak", SCRIPT, "-o", str(out), "--model", str(dia2_dirs["dia2"]),
         "--codec", str(dia2_dirs["mimi"]), "--device", "cpu", "--prompt", str(out), "--prompt-text", "[S1] x"],
        capture_output=True, text=True, env=env, timeout=300,
    )
    assert bad.returncode != 0 and "--prefix-speaker-1" in bad.stderr and "Traceback" not in bad.stderr


def test_the_server_serves_a_dia2_model(tts2):
    from starlette.testclient import TestClient

    from faster_dia.server import create_app

    expected = tts2.generate("[S1] Hello there. [S2] Hi!", seed=1)
    with TestClient(create_app(tts2)) as client:
        response = client.post("/v1/audio/speech", json={"model": "tts-1", "input": "[S1] Hello there. [S2] Hi!",
                                                         "voice": "alloy", "response_format": "pcm", "seed": 1})
        assert response.status_code == 200 and response.headers["x-seed"] == "1"
        assert len(response.content) == 2 * round(expected.duration * 24000)  # 24 kHz 16-bit, Dia2's own rate
        # OpenAI-shaped requests may carry fields that do not apply to Dia2 (top_p): they are ignored.
        ignored = client.post("/v1/audio/speech", json={"input": "[S1] Hello.", "top_p": 0.9, "max_new_tokens": 20,
                                                        "response_format": "pcm"})
        assert ignored.status_code == 200
        assert client.get("/health").json()["sample_rate"] == 24000
