"""The Python API: inputs, errors, seeds, batches, voice prompts, streaming."""

from __future__ import annotations

import io
import time
import wave

import av
import numpy as np
import pytest
import torch

import faster_dia
from faster_dia.errors import InvalidInputError, ModelNotFoundError

SCRIPT = "[S1] Did you hear? (laughs) [S2] I did."
FAST = dict(max_new_tokens=80)


def _write_audio(path, pcm, rate):
    with av.open(str(path), "w") as container:
        stream = container.add_stream("flac" if str(path).endswith(".flac") else "pcm_s16le", rate=rate)
        stream.layout = "mono"
        frame = av.AudioFrame.from_ndarray((pcm * 32767).astype(np.int16)[None], format="s16", layout="mono")
        frame.sample_rate = rate
        for packet in stream.encode(frame):
            container.mux(packet)
        for packet in stream.encode(None):
            container.mux(packet)


def test_speech_result(tts):
    speech = tts.generate(SCRIPT, seed=3, **FAST)
    assert speech.audio.dtype == np.float32 and speech.audio.ndim == 1
    assert np.abs(speech.audio).max() <= 1.0
    assert speech.sample_rate == 44100 and speech.seed == 3
    assert speech.codes.shape[1] == 9 and speech.codes.min() >= 0 and speech.codes.max() <= 1023
    assert speech.duration == pytest.approx(speech.codes.shape[0] * 512 / 44100)


def test_same_seed_same_codes_and_none_draws_a_reported_seed(tts):
    a = tts.generate(SCRIPT, seed=11, **FAST)
    b = tts.generate(SCRIPT, seed=11, **FAST)
    assert np.array_equal(a.codes, b.codes) and np.array_equal(a.audio, b.audio)
    drawn = tts.generate(SCRIPT, **FAST)
    assert isinstance(drawn.seed, int)
    again = tts.generate(SCRIPT, seed=drawn.seed, **FAST)
    assert np.array_equal(drawn.codes, again.codes)
    other = tts.generate(SCRIPT, seed=12, **FAST)
    assert not np.array_equal(a.codes, other.codes)


def test_batch_items_equal_their_single_runs_with_mixed_prompts(tts):
    rng = np.random.default_rng(1)
    prompt_codes = rng.integers(0, 1024, size=(25, 9))
    scripts = [SCRIPT, "[S2] Short.", "[S1] A somewhat longer third line for this batch."]
    prompts = [None, prompt_codes, None]
    transcripts = [None, "[S1] My voice sample.", None]
    batch = tts.generate(scripts, seed=[5, 6, 7], audio_prompt=prompts, audio_prompt_transcript=transcripts, **FAST)
    for i, speech in enumerate(batch):
        alone = tts.generate(scripts[i], seed=[5, 6, 7][i], audio_prompt=prompts[i],
                             audio_prompt_transcript=transcripts[i], **FAST)
        assert np.array_equal(speech.codes, alone.codes), i
    batch_default_seeds = tts.generate(scripts[:2], seed=40, **FAST)
    assert [s.seed for s in batch_default_seeds] == [40, 41]


def test_sampling_parameters_change_the_output(tts):
    base = tts.generate(SCRIPT, seed=1, **FAST)
    greedy = tts.generate(SCRIPT, seed=1, temperature=0, **FAST)
    greedy2 = tts.generate(SCRIPT, seed=2, temperature=0, **FAST)
    assert np.array_equal(greedy.codes, greedy2.codes)  # greedy ignores the seed
    assert not np.array_equal(base.codes, greedy.codes)


def test_voice_prompt_from_file_array_and_codes_agree(tts, tmp_path):
    t = np.arange(44100 // 2) / 44100
    pcm = (0.4 * np.sin(2 * np.pi * 220 * t)).astype(np.float32)
    path = tmp_path / "voice.wav"
    _write_audio(path, pcm, 44100)
    kwargs = dict(seed=2, audio_prompt_transcript="[S1] Voice sample.", **FAST)
    from_file = tts.generate(SCRIPT, audio_prompt=str(path), **kwargs)
    quantised = np.round(pcm * 32767) / 32767  # the file holds 16-bit samples
    from_array = tts.generate(SCRIPT, audio_prompt=quantised.astype(np.float32), audio_prompt_sample_rate=44100, **kwargs)
    assert np.array_equal(from_file.codes, from_array.codes)
    codes = tts.codec.encode(quantised.astype(np.float32)).numpy()
    from_codes = tts.generate(SCRIPT, audio_prompt=codes, **kwargs)
    assert np.array_equal(from_codes.codes, from_array.codes)
    # Other sample rates and stereo are resampled and downmixed.
    stereo = np.stack([pcm, pcm])
    resampled = tts.generate(SCRIPT, audio_prompt=stereo, audio_prompt_sample_rate=22050, **kwargs)
    assert resampled.codes.shape[1] == 9


def test_the_prompt_is_not_in_the_result(tts):
    codes = np.random.default_rng(0).integers(0, 1024, size=(40, 9))
    speech = tts.generate(SCRIPT, seed=1, audio_prompt=codes, audio_prompt_transcript="[S1] Hi.", max_new_tokens=60)
    assert speech.codes.shape[0] <= 60 - 16


@pytest.mark.parametrize(
    "kwargs, match",
    [
        (dict(script=""), "empty"),
        (dict(script="[S3] who?"), "Unknown tag"),
        # Scripts of any length are spoken in chunks; a prompt transcript that leaves no room is an error.
        (dict(audio_prompt=np.zeros((10, 9), dtype=np.int64), audio_prompt_transcript="[S1] " + "a" * 1100),
         "transcript"),
        (dict(audio_prompt=np.zeros((10, 9), dtype=np.int64)), "needs its transcript"),
        (dict(audio_prompt_transcript="[S1] x"), "without audio_prompt"),
        (dict(audio_prompt=np.zeros(4410, dtype=np.float32), audio_prompt_transcript="[S1] x"), "audio_prompt_sample_rate"),
        (dict(audio_prompt=np.zeros((10, 8), dtype=np.int64), audio_prompt_transcript="[S1] x"), r"shape \[frames, 9\]"),
        (dict(audio_prompt=np.full((10, 9), 2000), audio_prompt_transcript="[S1] x"), "0..1023"),
        (dict(audio_prompt="/nonexistent/voice.wav", audio_prompt_transcript="[S1] x"), "not found"),
        (dict(max_new_tokens=5000), "at most 3071 new tokens"),
        (dict(max_new_tokens=3), "at least 17"),
        (dict(temperature=-1), "temperature"),
        (dict(top_p=0), "top_p"),
        (dict(top_k=0), "top_k"),
        (dict(top_k=2.5), "top_k"),
        (dict(cfg_scale=float("nan")), "cfg_scale"),
        (dict(seed=-3), "seed"),
        (dict(seed="x"), "seed"),
    ],
)
def test_bad_input_is_a_clear_error(tts, kwargs, match):
    kwargs = dict(kwargs)
    script = kwargs.pop("script", SCRIPT)
    with pytest.raises(InvalidInputError, match=match):
        tts.generate(script, **kwargs)


def test_a_script_and_prompt_transcript_over_the_limit_together_is_spoken_in_chunks(tts):
    codes = np.zeros((10, 9), dtype=np.int64)
    speech = tts.generate("[S1] " + "b " * 300, audio_prompt=codes, audio_prompt_transcript="[S1] " + "a" * 600,
                          max_new_tokens=20, seed=1)
    assert speech.codes.shape[0] > 0 and speech.codes.shape[1] == 9


def test_a_prompt_too_long_for_the_context(tts):
    with pytest.raises(InvalidInputError, match="leaves no room"):
        tts.generate(SCRIPT, audio_prompt=np.zeros((3060, 9), dtype=np.int64), audio_prompt_transcript="[S1] x")


def test_save_writes_a_wav(tts, tmp_path):
    speech = tts.generate(SCRIPT, seed=1, **FAST)
    path = speech.save(tmp_path / "out.wav")
    with wave.open(str(path)) as w:
        assert w.getframerate() == 44100 and w.getnchannels() == 1 and w.getnframes() == len(speech.audio)


def test_stream_equals_generate_and_starts_before_the_end(tts):
    full = tts.generate(SCRIPT, seed=9, max_new_tokens=200)
    stream = tts.stream(SCRIPT, seed=9, max_new_tokens=200, chunk_frames=8)
    chunks, frames_at_chunk = [], []
    for chunk in stream:
        chunks.append(chunk)
        frames_at_chunk.append(stream.frames)
    assert stream.seed == 9 and len(chunks) > 2
    np.testing.assert_allclose(np.concatenate(chunks), full.audio, atol=1e-4)
    assert frames_at_chunk[0] < full.codes.shape[0]  # audio arrived before the last frame was generated


def test_closing_a_stream_frees_the_model(tts):
    stream = tts.stream(SCRIPT, seed=1, max_new_tokens=300, chunk_frames=4)
    next(stream)
    stream.close()
    deadline = time.monotonic() + 10
    while tts.engine.busy and time.monotonic() < deadline:
        time.sleep(0.01)
    assert tts.engine.busy == 0 and tts.engine.generator.free_slots == tts.engine.max_batch
    assert tts.generate(SCRIPT, seed=1, **FAST).codes.shape[0] > 0


def test_load_errors(tiny_dirs, tmp_path):
    with pytest.raises(ModelNotFoundError):
        faster_dia.load(tmp_path / "missing-model", codec=tiny_dirs["dac"], device="cpu")
    with pytest.raises(ModelNotFoundError, match="nari-labs/Dia-1.6B-0626"):
        faster_dia.load("nari-labs/Dia-1.6B-0626", codec=tiny_dirs["dac"], device="cpu")
    with pytest.raises(InvalidInputError, match="dtype"):
        faster_dia.load(tiny_dirs["dia-1.6b-0626"], codec=tiny_dirs["dac"], device="cpu", dtype="int8")
    with pytest.raises(InvalidInputError, match="CUDA graphs need a CUDA device"):
        faster_dia.load(tiny_dirs["dia-1.6b-0626"], codec=tiny_dirs["dac"], device="cpu", cuda_graphs=True)


def test_hub_id_through_a_seeded_cache(tiny_dirs, tmp_path, monkeypatch):
    from faster_dia.testing import seed_hub_cache

    seed_hub_cache(tmp_path, "nari-labs/Dia-1.6B-0626", tiny_dirs["dia-1.6b-0626"])
    seed_hub_cache(tmp_path, "descript/dac_44khz", tiny_dirs["dac"])
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path))
    tts = faster_dia.load("nari-labs/Dia-1.6B-0626", device="cpu")
    assert tts.model_id == "nari-labs/Dia-1.6B-0626" and tts.variant == "dia-1.6b-0626"
    assert tts.generate(SCRIPT, seed=0, **FAST).codes.shape[0] > 0


def test_bfloat16_runs(tiny_dirs):
    tts = faster_dia.load(tiny_dirs["dia-1.6b-0626"], codec=tiny_dirs["dac"], device="cpu", dtype="bfloat16")
    assert tts.dtype == torch.bfloat16
    speech = tts.generate(SCRIPT, seed=0, **FAST)
    assert np.isfinite(speech.audio).all() and speech.codes.shape[0] > 0


def test_original_checkpoint_generates(tts_original):
    assert tts_original.variant == "dia-1.6b"
    speech = tts_original.generate(SCRIPT, seed=0, **FAST)
    assert speech.codes.shape[0] > 0
    _ = io.BytesIO()
