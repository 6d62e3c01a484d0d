"""Voxtral's front door: messages in the OpenAI chat shape → the same prompt, features and tokens as
transformers' VoxtralProcessor + VoxtralForConditionalGeneration.generate; streaming, stop strings, transcription,
loading through faster_dia.load."""

from __future__ import annotations

import asyncio
import base64
import io

import numpy as np
import pytest
import torch

import faster_dia
from faster_dia.errors import InvalidInputError
from faster_dia.testing import write_tiny_voxtral

transformers = pytest.importorskip("transformers")
pytest.importorskip("mistral_common")


def wav_bytes(seconds: float, seed: int, rate: int = 16000) -> bytes:
    import soundfile

    samples = np.random.default_rng(seed).standard_normal(int(seconds * rate)).astype(np.float32) * 0.1
    buffer = io.BytesIO()
    soundfile.write(buffer, samples, rate, format="WAV")
    return buffer.getvalue()


def b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


@pytest.fixture(scope="module")
def voxtral_dir(tmp_path_factory):
    return write_tiny_voxtral(tmp_path_factory.mktemp("voxtral-chat") / "Voxtral-Tiny")


@pytest.fixture(scope="module")
def voxtral(voxtral_dir):
    import faster_dia

    model = faster_dia.load(voxtral_dir, device="cpu", max_batch=3)
    yield model
    model.close()


@pytest.fixture(scope="module")
def reference(voxtral_dir):
    model = transformers.VoxtralForConditionalGeneration.from_pretrained(voxtral_dir).eval()
    processor = transformers.VoxtralProcessor.from_pretrained(voxtral_dir)
    return model, processor


CLIP_A, CLIP_B = wav_bytes(1.5, 1), wav_bytes(0.7, 2)
CONVERSATIONS = {
    "text-only": [{"role": "user", "content": "Hello there, who are you?"}],
    "one-audio": [{"role": "user", "content": [
        {"type": "input_audio", "input_audio": {"data": b64(CLIP_A), "format": "wav"}},
        {"type": "text", "text": "What is said?"}]}],
    "two-audio-turns": [
        {"role": "user", "content": [
            {"type": "audio_url", "audio_url": {"url": "data:audio/wav;base64," + b64(CLIP_A)}},
            {"type": "text", "text": "First clip."}]},
        {"role": "assistant", "content": "Noted."},
        {"role": "user", "content": [
            {"type": "input_audio", "input_audio": {"data": b64(CLIP_B), "format": "wav"}},
            {"type": "text", "text": "And this one?"}]}],
}


def as_processor_conversation(messages):
    out = []
    for m in messages:
        if isinstance(m["content"], str):
            out.append({"role": m["role"], "content": [{"type": "text", "text": m["content"]}]})
            continue
        parts = []
        for p in m["content"]:
            if p["type"] == "text":
                parts.append(p)
            elif p["type"] == "input_audio":
                parts.append({"type": "audio", "base64": p["input_audio"]["data"]})
            else:
                parts.append({"type": "audio", "base64": p["audio_url"]["url"].split(",", 1)[1]})
        out.append({"role": m["role"], "content": parts})
    return out


@pytest.mark.parametrize("name", list(CONVERSATIONS))
def test_chat_matches_transformers_processor_and_generate(voxtral, reference, name):
    model, processor = reference
    messages = CONVERSATIONS[name]
    inputs = processor.apply_chat_template(as_processor_conversation(messages), max_source_positions=64,
                                           pad_to_multiple_of=16000)
    prepared = voxtral.prepare_chat(messages, max_tokens=16)
    assert prepared.request.input_ids.tolist() == inputs["input_ids"][0].tolist()
    if "input_features" in inputs:
        torch.testing.assert_close(prepared.request.features, inputs["input_features"], rtol=0, atol=1e-6)
    with torch.no_grad():
        out = model.generate(**inputs, max_new_tokens=16, do_sample=False, pad_token_id=11)
    expected = out[0, inputs["input_ids"].shape[1]:].tolist()
    if expected and expected[-1] == 2:
        expected = expected[:-1]
    result = voxtral.chat(messages, max_tokens=16)
    assert result.text == voxtral.decode(expected)
    assert result.completion_tokens == len(expected)
    assert result.prompt_tokens == inputs["input_ids"].shape[1]


def test_stream_deltas_join_to_the_reply(voxtral):
    messages = CONVERSATIONS["one-audio"]
    whole = voxtral.chat(messages, max_tokens=24, temperature=0.9, seed=5)
    deltas = list(voxtral.stream_chat(messages, max_tokens=24, temperature=0.9, seed=5))
    assert "".join(deltas) == whole.text
    assert len(deltas) > 1


def test_concurrent_chats_are_independent(voxtral):
    """Requests batched in one engine get the tokens each gets alone (sampled, seeded)."""
    names = list(CONVERSATIONS) * 2
    alone = [voxtral.chat(CONVERSATIONS[n], max_tokens=12 + i, temperature=1.0, seed=i).text
             for i, n in enumerate(names)]

    async def together():
        return await asyncio.gather(*[voxtral.achat(CONVERSATIONS[n], max_tokens=12 + i, temperature=1.0, seed=i)
                                      for i, n in enumerate(names)])

    assert [r.text for r in asyncio.run(together())] == alone


def test_stop_strings_cut_the_reply(voxtral):
    messages = CONVERSATIONS["text-only"]
    whole = voxtral.chat(messages, max_tokens=20).text
    stop = whole[5:7]
    cut = voxtral.chat(messages, max_tokens=20, stop=[stop])
    assert cut.text == whole[: whole.find(stop)]
    assert cut.finish_reason == "stop"
    assert "".join(voxtral.stream_chat(messages, max_tokens=20, stop=stop)) == cut.text


def test_transcribe_uses_transcription_mode(voxtral, reference):
    model, processor = reference
    prepared = voxtral.prepare_transcription(CLIP_A, language="en")
    tokens = prepared.request.input_ids.tolist()
    assert tokens[-1] == 34  # [TRANSCRIBE]
    assert tokens.count(24) == 16  # 1.5 s padded to 2 one-second chunks of 8 audio tokens
    text = voxtral.transcribe(CLIP_A, language="en", max_tokens=8)
    assert isinstance(text, str)


@pytest.mark.parametrize("messages, match", [
    ([{"role": "user", "content": [{"type": "image_url", "image_url": {"url": "x"}}]}], "image_url"),
    ([{"role": "user", "content": [{"type": "input_audio", "input_audio": {"data": b64(b"not audio"),
                                                                           "format": "wav"}}]}], "audio|decod"),
    ([{"role": "user", "content": [{"type": "audio_url", "audio_url": {"url": "file:///etc/passwd"}}]}], "data:"),
    ([{"role": "assistant", "content": "hi"}], "last message"),
    ([], "non-empty"),
])
def test_bad_messages_are_refused(voxtral, messages, match):
    with pytest.raises(InvalidInputError, match=match):
        voxtral.prepare_chat(messages)


def test_too_long_audio_is_refused(voxtral_dir):
    from faster_dia.models.voxtral.chat import load

    model = load(voxtral_dir, device="cpu", max_batch=1)
    model.max_audio_seconds = 1.0
    try:
        with pytest.raises(InvalidInputError, match="second|long"):
            model.prepare_chat(CONVERSATIONS["one-audio"])
    finally:
        model.close()


def test_native_layout_loads_by_directory(tmp_path, voxtral):
    from faster_dia.models.voxtral.chat import load

    native = load(write_tiny_voxtral(tmp_path / "native", layout="mistral"), device="cpu", max_batch=1)
    try:
        messages = CONVERSATIONS["one-audio"]
        assert native.chat(messages, max_tokens=10).text == voxtral.chat(messages, max_tokens=10).text
    finally:
        native.close()


def test_a_native_layout_directory_loads_through_faster_dia_load(voxtral, tmp_path):
    """Mistral's own layout has params.json and no config.json: the registry reads that to pick the family."""
    native = faster_dia.load(write_tiny_voxtral(tmp_path / "native", layout="mistral"), device="cpu")
    assert native.family == "voxtral"
    messages = CONVERSATIONS["text-only"]
    assert native.chat(messages, max_tokens=8).text == voxtral.chat(messages, max_tokens=8).text
