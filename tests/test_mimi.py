"""Mimi codec wrapper: loading (local and Hub cache), frame arithmetic, encode/decode against MimiModel."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from faster_dia.codecs.mimi import DEFAULT_MIMI, MimiCodec
from faster_dia.errors import InvalidInputError, ModelNotFoundError
from faster_dia.testing import seed_hub_cache, write_tiny_checkpoint


@pytest.fixture(scope="module")
def mimi_dir(tmp_path_factory) -> Path:
    return write_tiny_checkpoint("mimi", tmp_path_factory.mktemp("mimi") / "codec", seed=1)


@pytest.fixture(scope="module")
def codec(mimi_dir) -> MimiCodec:
    return MimiCodec.load(mimi_dir)


def _tone(samples: int) -> np.ndarray:
    t = np.arange(samples) / 24000
    return (0.4 * np.sin(2 * np.pi * 220 * t) + 0.1 * np.sin(2 * np.pi * 1234 * t)).astype(np.float32)


def test_properties(codec):
    assert codec.sample_rate == 24000
    assert codec.frame_rate == 12.5
    assert codec.hop_length == 1920
    assert codec.num_codebooks == 32
    assert codec.codebook_size == 2048
    assert next(codec.model.parameters()).dtype == torch.float32


@pytest.mark.parametrize(("samples", "frames"), [(1, 1), (1920, 1), (1921, 2), (3840, 2), (24000, 13)])
def test_encode_pads_to_whole_frames(codec, samples, frames):
    # One second is 12.5 frames; it is padded to 13 whole frames (24,960 samples).
    codes = codec.encode(_tone(samples))
    assert codes.shape == (frames, 32)
    assert codes.dtype == torch.long
    assert 0 <= codes.min() and codes.max() < 2048


def test_encode_depends_on_the_audio(codec):
    codes = codec.encode(_tone(24000))
    assert codes.unique().numel() > 32
    assert not torch.equal(codes, codec.encode(np.zeros(24000, dtype=np.float32)))


def test_decode_matches_mimi_model(codec):
    codes = codec.encode(_tone(24000))
    audio = codec.decode(codes)
    assert audio.dtype == np.float32
    assert audio.shape == (13 * 1920,)
    with torch.inference_mode():
        direct = codec.model.decode(codes.T[None]).audio_values
    # Clamped to [-1, 1] like the Dia2 reference; the tiny codec's output rarely reaches the bounds.
    np.testing.assert_array_equal(audio, direct.clamp(-1, 1).reshape(-1).numpy())
    assert np.abs(audio).max() <= 1.0
    assert codec.decode(codes[:0]).shape == (0,)


def test_bad_input(codec):
    with pytest.raises(InvalidInputError):
        codec.encode(np.zeros(0, dtype=np.float32))
    with pytest.raises(InvalidInputError, match=r"\[frames, 32\]"):
        codec.decode(torch.zeros(4, 9, dtype=torch.long))


def test_load_from_the_hub_cache(mimi_dir, tmp_path, monkeypatch):
    cache = tmp_path / "hub"
    monkeypatch.setenv("HF_HUB_CACHE", str(cache))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(ModelNotFoundError, match="HF_HUB_OFFLINE"):
        MimiCodec.load()
    seed_hub_cache(cache, DEFAULT_MIMI, mimi_dir)
    codec = MimiCodec.load()
    assert codec.name == DEFAULT_MIMI
    assert codec.encode(_tone(1920)).shape == (1, 32)
