"""One batched codec call for the results of one ``generate`` call: the same samples as decoding each alone."""

from __future__ import annotations

import numpy as np
import pytest
import torch


def _codes(codec, lengths, seed=0):
    g = torch.Generator().manual_seed(seed)
    return [torch.randint(0, codec.codebook_size, (n, codec.num_codebooks), generator=g) for n in lengths]


@pytest.mark.parametrize("family", ["dac", "mimi"])
def test_decode_many_equals_each_alone(tts, tts2, family, monkeypatch):
    codec = tts.codec if family == "dac" else tts2.codec
    codes = _codes(codec, [40, 5, 0, 17, 30, 40])
    alone = [codec.decode(c) for c in codes]
    for a, b in zip(codec.decode_many(codes), alone, strict=True):  # on a CPU: one decode each
        assert np.array_equal(a, b)
    calls = []
    batched = codec._decode_batch
    monkeypatch.setattr(codec, "_decode_batch", lambda c: calls.append(c.shape[0]) or batched(c))
    got = codec.decode_many(codes, batched=True)
    assert calls[0] == 5  # the five non-empty results in one call (then DAC's tails of the shorter ones)
    for a, b in zip(got, alone, strict=True):
        assert a.shape == b.shape and a.dtype == np.float32
        np.testing.assert_allclose(a, b, atol=2e-5, rtol=0)
    # A frame budget splits the results into several calls, each padded to its own longest.
    monkeypatch.setattr(codec, "batch_frames", 60)
    calls.clear()
    for a, b in zip(codec.decode_many(codes, batched=True), alone, strict=True):
        np.testing.assert_allclose(a, b, atol=2e-5, rtol=0)
    assert calls[0] == 2  # 5 and 17 frames padded to 2 x 17 <= 60; with 30 it would be 3 x 30


def test_generate_decodes_a_list_in_one_call(tts, monkeypatch):
    seen = []
    decode_many = tts.codec.decode_many
    monkeypatch.setattr(tts.codec, "decode_many",
                        lambda codes: seen.append(len(codes)) or decode_many(codes, batched=True))
    results = tts.generate(["[S1] One.", "[S2] And a second, longer line."], seed=5, max_new_tokens=60)
    assert seen == [2]
    for speech in results:
        np.testing.assert_allclose(speech.audio, np.clip(tts.codec.decode(torch.from_numpy(speech.codes)), -1, 1),
                                   atol=2e-5, rtol=0)
