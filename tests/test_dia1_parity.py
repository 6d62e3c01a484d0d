"""Fidelity to transformers' DiaForConditionalGeneration and DacModel on the same tiny random weights."""

from __future__ import annotations

import numpy as np
import pytest
import torch

transformers = pytest.importorskip("transformers")
from transformers import (  # noqa: E402
    DacModel,
    DiaFeatureExtractor,
    DiaForConditionalGeneration,
    DiaProcessor,
    DiaTokenizer,
)

from faster_dia.models.dia1.generator import Dia1Generator  # noqa: E402
from faster_dia.testing import delayed_tokens  # noqa: E402

SCRIPTS = [
    "[S1] Did you hear? (laughs) [S2] I did.",
    "[S1] a",
    "[S2] A noticeably longer line of dialogue, to give the batch three lengths. [S1] Sure.",
]


@pytest.fixture(scope="module")
def reference(tiny_dirs):
    model = DiaForConditionalGeneration.from_pretrained(tiny_dirs["dia-1.6b-0626"]).eval()
    dac = DacModel.from_pretrained(tiny_dirs["dac"]).eval()
    processor = DiaProcessor(
        feature_extractor=DiaFeatureExtractor(sampling_rate=44100, hop_length=512),
        tokenizer=DiaTokenizer(),
        audio_tokenizer=dac,
    )
    return model, processor


def reference_generate(reference, texts, *, max_new_tokens, audio=None):
    model, processor = reference
    inputs = processor(text=texts, audio=audio, padding=True, return_tensors="pt")
    with torch.no_grad():
        out = model.generate(**inputs, max_new_tokens=max_new_tokens, do_sample=False, guidance_scale=3.0, top_k=45)
    prompt_len = processor.get_audio_prompt_len(inputs["decoder_attention_mask"]) if audio is not None else None
    return out, processor.batch_decode(out, audio_prompt_len=prompt_len)


def our_delayed_sequences(tts, scripts, *, max_new_tokens, audio_prompt=None, audio_prompt_transcript=None):
    """Generate greedily and return each request's whole delayed sequence (BOS, prompt, EOS tail)."""
    requests = [
        tts._request(s, seed=0, temperature=0.0, top_p=0.95, top_k=45, cfg_scale=3.0,
                     max_new_tokens=max_new_tokens, audio_prompt=audio_prompt,
                     audio_prompt_transcript=audio_prompt_transcript, audio_prompt_sample_rate=44100)
        for s in scripts
    ]
    generator = Dia1Generator(tts.model, max_batch=len(requests))
    states = [generator.prepare(r) for r in requests]
    while not all(s.finished for s in states):
        generator.step()
    return [delayed_tokens(generator, s) for s in states]


def test_teacher_forced_logits_match_for_a_padded_batch(tts, reference):
    model, processor = reference
    inputs = processor(text=SCRIPTS[:2], padding=True, return_tensors="pt")
    assert inputs["input_ids"].shape[1] > len(SCRIPTS[1])  # the short script really is padded
    generator = torch.Generator().manual_seed(3)
    decoder = torch.randint(0, 1024, (2, 37, 9), generator=generator)
    decoder[:, 0] = 1026
    with torch.no_grad():
        expected = model(input_ids=inputs["input_ids"], attention_mask=inputs["attention_mask"],
                         decoder_input_ids=decoder).logits
    expected = expected.view(2, 9, 37, 1028).transpose(1, 2)
    ours = tts.model(inputs["input_ids"], inputs["attention_mask"].bool(), decoder)
    rel = (ours - expected).norm() / expected.norm()
    assert rel < 1e-5, rel


@pytest.mark.parametrize("batch", [[SCRIPTS[0]], SCRIPTS], ids=["single", "batch-of-three"])
def test_greedy_generation_matches_with_eos_and_tail(tts, reference, batch):
    out, ref_audio = reference_generate(reference, batch, max_new_tokens=400)
    ours = our_delayed_sequences(tts, batch, max_new_tokens=400)
    lengths = set()
    for i, seq in enumerate(ours):
        # the whole delayed sequence: BOS frame, generated frames, channel-0 EOS and the 15-step tail
        assert seq[-1, -1].item() == 1024 and (seq[:, 0] == 1024).sum() == 1
        assert torch.equal(out[i, : len(seq)], seq), f"item {i}"
        assert (out[i, len(seq):] == 1025).all()  # transformers only pads after the item ended
        lengths.add(len(seq))
    if len(batch) > 1:
        assert len(lengths) == len(batch)  # the scripts ended at different steps
    speeches = tts.generate(batch, temperature=0.0, max_new_tokens=400, seed=0, pad_short_scripts=False)
    for speech, audio in zip(speeches, ref_audio, strict=True):
        np.testing.assert_allclose(speech.audio, np.clip(audio.numpy(), -1, 1), atol=1e-6)


def test_a_batch_that_hits_the_length_limit(tts, reference):
    out, _ = reference_generate(reference, SCRIPTS, max_new_tokens=30)
    ours = our_delayed_sequences(tts, SCRIPTS, max_new_tokens=30)
    for i, seq in enumerate(ours):
        assert len(seq) == 31  # BOS + 30 new tokens: the forced EOS at 15 made the tail fit exactly
        assert torch.equal(out[i, :31], seq)
    speeches = tts.generate(SCRIPTS, temperature=0.0, max_new_tokens=30, seed=0, pad_short_scripts=False)
    assert [s.codes.shape[0] for s in speeches] == [30 - 16] * 3


def test_voice_prompted_generation_matches(tts, reference):
    rng = np.random.default_rng(0)
    prompt_audio = (0.3 * rng.standard_normal(512 * 20 + 100)).astype(np.float32)
    transcript, script = "[S1] This is my voice.", "[S2] And this is new."
    out, ref_audio = reference_generate(
        reference, [f"{transcript}\n{script}"], max_new_tokens=300, audio=[prompt_audio]
    )
    (ours,) = our_delayed_sequences(
        tts, [script], max_new_tokens=300, audio_prompt=prompt_audio, audio_prompt_transcript=transcript
    )
    assert torch.equal(out[0, : len(ours)], ours)
    speech = tts.generate(script, temperature=0.0, max_new_tokens=300, audio_prompt=prompt_audio,
                          audio_prompt_transcript=transcript, audio_prompt_sample_rate=44100)
    np.testing.assert_allclose(speech.audio, np.clip(ref_audio[0].numpy(), -1, 1), atol=1e-6)


def test_speech_audio_is_the_dac_decoding_of_its_codes(tts, tiny_dirs):
    dac = DacModel.from_pretrained(tiny_dirs["dac"]).eval()
    speech = tts.generate(SCRIPTS[0], seed=7, max_new_tokens=120)
    with torch.no_grad():
        expected = dac.decode(audio_codes=torch.as_tensor(speech.codes).T[None]).audio_values.reshape(-1).numpy()
    np.testing.assert_allclose(speech.audio, np.clip(expected, -1, 1), atol=1e-6)
    assert speech.sample_rate == 44100 and len(speech.audio) == 512 * speech.codes.shape[0]
