"""Voxtral's front door: ``chat(messages)``, ``achat``, streamed text deltas and ``transcribe(audio)`` over the
shared :class:`~faster_dia.engine.Engine`.

Messages take the OpenAI chat shape: ``{"role": "system" | "user" | "assistant", "content": str | [parts]}``
with text parts (``{"type": "text", "text": ...}``) and audio parts (``{"type": "input_audio", "input_audio":
{"data": base64, "format": "wav"}}`` or ``{"type": "audio_url", "audio_url": {"url": "data:audio/...;base64,..."}}``).
Audio is decoded here (any format FFmpeg reads, resampled to the model's rate); the conversation is tokenized by
mistral-common's tekken tokenizer (which lays out the audio placeholders) and the mel features come from
transformers' Whisper feature extractor, as the reference processor does. Resolving ``file://`` and ``http(s)``
URLs is the caller's business (the server does it with its own safety rules): pass ``resolve_url``.
"""

from __future__ import annotations

import asyncio
import base64
import io
import os
from collections import deque
from collections.abc import AsyncIterator, Callable, Iterator
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from ...audio.decode import decode_audio
from ...engine import Engine, Submission
from ...errors import InvalidInputError
from ...speech import check_integer, check_number, resolve_seed
from .checkpoint import TEKKEN_FILE, load_checkpoint
from .generator import VoxtralGenerator, VoxtralRequest
from .model import VoxtralModel

#: Longest audio accepted in one request, all parts together (Voxtral understands up to about 40 minutes).
DEFAULT_MAX_AUDIO_SECONDS = 1800.0
#: Stop strings a request may give (as OpenAI allows).
MAX_STOP_STRINGS = 4


@dataclass
class ChatResult:
    """The assistant's reply and its token counts (``usage``)."""

    text: str
    finish_reason: str  # "stop" or "length"
    prompt_tokens: int
    completion_tokens: int


@dataclass
class _Prepared:
    request: VoxtralRequest
    stop: list[str]
    audio_seconds: float = 0.0


class VoxtralChat:
    """A loaded Voxtral model. ``family``, ``model_id``, ``sample_rate`` (None: it makes no audio), ``device``
    and ``engine`` are what the server's registry reads; ``voices`` and ``asr`` are accepted and unused."""

    family = "voxtral"
    sample_rate = None

    def __init__(self, model: VoxtralModel, tokenizer: Any, feature_extractor: Any, *, max_batch: int,
                 max_queue: int | None = None, max_seq_len: int = 4096, step_mode: str | None = None,
                 max_audio_seconds: float = DEFAULT_MAX_AUDIO_SECONDS, model_id: str = "voxtral"):
        self.model = model
        self.config = model.config
        self.tokenizer = tokenizer
        self.feature_extractor = feature_extractor
        self.generator = VoxtralGenerator(model, max_batch=max_batch, max_seq_len=max_seq_len, step_mode=step_mode)
        self.engine = Engine(self.generator, max_queue=max_queue)
        self.device = model.device
        self.model_id = model_id
        self.max_audio_seconds = max_audio_seconds
        self.voices = None
        self.asr = None
        audio = tokenizer.instruct_tokenizer.tokenizer.audio
        self.audio_rate = int(audio.sampling_rate) if audio is not None else 16000
        self._chunk_samples = int(audio.chunk_length_s * audio.sampling_rate) if audio is not None else None

    def close(self) -> None:
        self.engine.close()

    # ------------------------------------------------------------------ messages → request

    def _audio_part(self, part: dict, resolve_url: Callable[[str], bytes] | None, budget: list[float]) -> Any:
        from mistral_common.protocol.instruct.chunk import AudioChunk

        kind = part.get("type")
        if kind == "input_audio":
            body = part.get("input_audio")
            if not isinstance(body, dict) or not isinstance(body.get("data"), str):
                raise InvalidInputError("An input_audio part needs input_audio.data (base64).", param="messages")
            data = _b64(body["data"])
        else:
            body = part.get("audio_url")
            url = body.get("url") if isinstance(body, dict) else body if isinstance(body, str) else None
            if not isinstance(url, str):
                raise InvalidInputError("An audio_url part needs audio_url.url.", param="messages")
            if url.startswith("data:"):
                header, _, payload = url.partition(",")
                if ";base64" not in header:
                    raise InvalidInputError("data: audio URLs must be base64.", param="messages")
                data = _b64(payload)
            elif resolve_url is not None:
                data = resolve_url(url)
            else:
                raise InvalidInputError("Only data: audio URLs are accepted here.", param="messages")
        samples, _ = decode_audio(data, sample_rate=self.audio_rate, max_seconds=budget[0], param="messages")
        budget[0] -= len(samples) / self.audio_rate
        return AudioChunk(input_audio=_wav_base64(samples, self.audio_rate))

    def _mistral_messages(self, messages: Any, resolve_url: Callable[[str], bytes] | None) -> list[Any]:
        from mistral_common.protocol.instruct.chunk import TextChunk
        from mistral_common.protocol.instruct.messages import AssistantMessage, SystemMessage, UserMessage

        if not isinstance(messages, list) or not messages:
            raise InvalidInputError("messages must be a non-empty list.", param="messages")
        budget = [self.max_audio_seconds]
        out = []
        for i, message in enumerate(messages):
            if not isinstance(message, dict) or message.get("role") not in ("system", "user", "assistant"):
                raise InvalidInputError(f"messages[{i}] needs a role of system, user or assistant.", param="messages")
            content = message.get("content")
            role = message["role"]
            if isinstance(content, str):
                parts: list[Any] = [TextChunk(text=content)]
            elif isinstance(content, list):
                parts = []
                for part in content:
                    kind = part.get("type") if isinstance(part, dict) else None
                    if kind == "text" and isinstance(part.get("text"), str):
                        parts.append(TextChunk(text=part["text"]))
                    elif kind in ("input_audio", "audio_url") and role == "user":
                        parts.append(self._audio_part(part, resolve_url, budget))
                    else:
                        raise InvalidInputError(
                            f"messages[{i}] has a content part of type {kind!r}; {role} messages take "
                            + ("text, input_audio and audio_url parts." if role == "user" else "text parts."),
                            param="messages")
            else:
                raise InvalidInputError(f"messages[{i}].content must be a string or a list of parts.",
                                        param="messages")
            if role == "user":
                out.append(UserMessage(content=parts))
            else:
                text = "".join(p.text for p in parts)
                out.append(SystemMessage(content=text) if role == "system" else AssistantMessage(content=text))
        if out[-1].role != "user":
            raise InvalidInputError("The last message must be the user's.", param="messages")
        return out

    def _features(self, audios: list[Any]) -> torch.Tensor | None:
        """Mel chunks [chunks, mel_bins, mel_frames] of the tokenizer's (chunk-padded) audio arrays, in order."""
        if not audios:
            return None
        c = self.config
        chunks = []
        for audio in audios:
            samples = np.asarray(audio.audio_array, dtype=np.float32)
            mel = self.feature_extractor(samples, sampling_rate=self.audio_rate, padding=True, truncation=False,
                                         pad_to_multiple_of=self._chunk_samples, return_tensors="pt")
            features = mel["input_features"][0]
            chunks.append(features.reshape(c.num_mel_bins, -1, c.mel_frames).transpose(0, 1))
        return torch.cat(chunks).float()

    def _request(self, tokenized: Any, *, max_tokens: Any, temperature: Any, top_p: Any, seed: Any,
                 stop: Any) -> _Prepared:
        temperature = check_number("temperature", 0.0 if temperature is None else temperature, 0.0, 2.0)
        top_p = check_number("top_p", 1.0 if top_p is None else top_p, 0.0, 1.0, low_open=True)
        if max_tokens is not None:
            max_tokens = check_integer("max_tokens", max_tokens, 1, self.generator.max_seq_len)
        stops = [stop] if isinstance(stop, str) else list(stop or [])
        if len(stops) > MAX_STOP_STRINGS or not all(isinstance(s, str) and s for s in stops):
            raise InvalidInputError(f"stop must be a string or up to {MAX_STOP_STRINGS} non-empty strings.",
                                    param="stop")
        request = VoxtralRequest(torch.tensor(tokenized.tokens, dtype=torch.long), seed=resolve_seed(seed),
                                 features=self._features(list(tokenized.audios)), max_new_tokens=max_tokens,
                                 temperature=temperature, top_p=top_p)
        return _Prepared(request, stops)

    def prepare_chat(self, messages: Any, *, max_tokens: Any = None, temperature: Any = None, top_p: Any = None,
                     seed: Any = None, stop: Any = None, resolve_url: Callable[[str], bytes] | None = None
                     ) -> _Prepared:
        """Messages and options → a checked request (the server does this off its event loop)."""
        from mistral_common.protocol.instruct.request import ChatCompletionRequest

        mistral = self._mistral_messages(messages, resolve_url)
        try:
            tokenized = self.tokenizer.encode_chat_completion(ChatCompletionRequest(messages=mistral))
        except (ValueError, AssertionError) as exc:
            raise InvalidInputError(f"The conversation cannot be tokenized: {exc}", param="messages") from exc
        prepared = self._request(tokenized, max_tokens=max_tokens, temperature=temperature, top_p=top_p, seed=seed,
                                 stop=stop)
        self.generator.validate(prepared.request)
        return prepared

    def prepare_transcription(self, audio: Any, *, language: str | None = None, max_tokens: Any = None,
                              temperature: Any = None, seed: Any = None) -> _Prepared:
        """Audio (path, file bytes or float samples at the model's rate) → a transcription-mode request."""
        from mistral_common.protocol.transcription.request import TranscriptionRequest

        if isinstance(audio, np.ndarray):
            samples = np.asarray(audio, dtype=np.float32).reshape(-1)
            if len(samples) > self.max_audio_seconds * self.audio_rate:
                raise InvalidInputError(f"The audio is longer than {self.max_audio_seconds:g} seconds.", param="file")
        else:
            samples, _ = decode_audio(audio, sample_rate=self.audio_rate, max_seconds=self.max_audio_seconds)
        if language is not None and (not isinstance(language, str) or not 2 <= len(language) <= 3):
            raise InvalidInputError("language must be an ISO 639-1 code such as 'en'.", param="language")
        try:
            tokenized = self.tokenizer.encode_transcription(
                TranscriptionRequest(model=self.model_id, audio=_wav_base64(samples, self.audio_rate), language=language))
        except (ValueError, AssertionError) as exc:
            raise InvalidInputError(f"The audio cannot be prepared for transcription: {exc}", param="file") from exc
        prepared = self._request(tokenized, max_tokens=max_tokens, temperature=temperature, top_p=None, seed=seed,
                                 stop=None)
        prepared.audio_seconds = len(samples) / self.audio_rate
        self.generator.validate(prepared.request)
        return prepared

    # ------------------------------------------------------------------ running

    def decode(self, tokens: list[int]) -> str:
        return self.tokenizer.decode(tokens)

    def _submit(self, prepared: _Prepared) -> Submission:
        return self.engine.submit([prepared.request], chunk_frames=1)[0]

    def stream_prepared(self, prepared: _Prepared) -> Iterator[str | ChatResult]:
        """Text deltas as tokens arrive, then the :class:`ChatResult` (blocking; any thread)."""
        sub = self._submit(prepared)
        text = _TextStream(self, prepared)
        try:
            while True:
                event = sub.events.get()
                delta = self._handle(event, text, sub)
                if delta:
                    yield delta
                if text.result is not None:
                    yield text.result
                    return
        finally:
            if text.result is None:
                sub.cancel()

    async def astream_prepared(self, prepared: _Prepared) -> AsyncIterator[str | ChatResult]:
        """:meth:`stream_prepared` on an event loop (no thread held); cancelling it cancels the request."""
        sub = self._submit(prepared)
        text = _TextStream(self, prepared)
        try:
            while True:
                event = await sub.events.aget()
                delta = self._handle(event, text, sub)
                if delta:
                    yield delta
                if text.result is not None:
                    yield text.result
                    return
        finally:
            if text.result is None:
                sub.cancel()

    def _handle(self, event: tuple, text: _TextStream, sub: Submission) -> str:
        kind, value = event
        if kind == "error":
            raise value
        if kind == "frames":
            delta = text.add(value.tolist())
            if text.stopped:
                sub.cancel()
                text.finish("stop")
            return delta
        reason = sub.state.finish_reason if sub.state is not None else "stop"
        delta = text.flush()
        text.finish(reason)
        return delta

    # ------------------------------------------------------------------ the public calls

    def chat(self, messages: Any, *, max_tokens: Any = None, temperature: Any = None, top_p: Any = None,
             seed: Any = None, stop: Any = None) -> ChatResult:
        """The assistant's reply to ``messages`` (OpenAI chat shape, audio parts allowed). ``temperature`` 0
        (the default) is greedy."""
        prepared = self.prepare_chat(messages, max_tokens=max_tokens, temperature=temperature, top_p=top_p,
                                     seed=seed, stop=stop)
        return _last(self.stream_prepared(prepared))

    def stream_chat(self, messages: Any, **options: Any) -> Iterator[str]:
        """The reply as text deltas."""
        prepared = self.prepare_chat(messages, **options)
        for item in self.stream_prepared(prepared):
            if isinstance(item, str):
                yield item

    async def achat(self, messages: Any, **options: Any) -> ChatResult:
        prepared = await asyncio.to_thread(self.prepare_chat, messages, **options)
        result = None
        async for item in self.astream_prepared(prepared):
            result = item
        return result

    async def astream_chat(self, messages: Any, **options: Any) -> AsyncIterator[str]:
        prepared = await asyncio.to_thread(self.prepare_chat, messages, **options)
        async for item in self.astream_prepared(prepared):
            if isinstance(item, str):
                yield item

    def transcribe(self, audio: Any, *, language: str | None = None, **options: Any) -> str:
        """Voxtral's transcription mode: the words spoken in ``audio`` (language detected unless given)."""
        prepared = self.prepare_transcription(audio, language=language, **options)
        return _last(self.stream_prepared(prepared)).text.strip()

    async def atranscribe(self, audio: Any, *, language: str | None = None, **options: Any) -> str:
        prepared = await asyncio.to_thread(self.prepare_transcription, audio, language=language, **options)
        result = None
        async for item in self.astream_prepared(prepared):
            result = item
        return result.text.strip()


class _TextStream:
    """Generated tokens → text deltas: holds back a possibly cut UTF-8 character and any tail that could be the
    start of a stop string; ends the text at the first stop string."""

    def __init__(self, owner: VoxtralChat, prepared: _Prepared):
        self.owner = owner
        self.stops = prepared.stop
        self.prompt_tokens = int(prepared.request.input_ids.shape[0])
        self.tokens: list[int] = []
        self.sent = 0
        self.text = ""
        self.stopped = False
        self.result: ChatResult | None = None

    def add(self, tokens: list[int]) -> str:
        if self.stopped:
            return ""
        self.tokens += tokens
        text = self.owner.decode(self.tokens)
        for stop in self.stops:
            at = text.find(stop)
            if at >= 0:
                text = text[:at]
                self.stopped = True
        self.text = text
        if self.stopped:
            return self._emit(len(text))
        hold = 1 if text.endswith("\ufffd") else 0
        for stop in self.stops:
            for n in range(min(len(stop) - 1, len(text)), 0, -1):
                if text.endswith(stop[:n]):
                    hold = max(hold, n)
                    break
        return self._emit(len(text) - hold)

    def _emit(self, upto: int) -> str:
        if upto <= self.sent:
            return ""
        delta = self.text[self.sent: upto]
        self.sent = upto
        return delta

    def flush(self) -> str:
        return self._emit(len(self.text))

    def finish(self, reason: str) -> None:
        self.result = ChatResult(self.text, reason, self.prompt_tokens, len(self.tokens))


def _last(items: Iterator[Any]) -> Any:
    remaining = deque(items, maxlen=1)
    return remaining[0] if remaining else None


def _b64(data: str) -> bytes:
    try:
        return base64.b64decode(data, validate=True)
    except ValueError as exc:
        raise InvalidInputError("Audio data is not valid base64.", param="messages") from exc


def _wav_base64(samples: np.ndarray, rate: int) -> str:
    """Float samples → base64 of a 32-bit float WAV (mistral-common's audio input; lossless)."""
    import soundfile

    buffer = io.BytesIO()
    soundfile.write(buffer, np.asarray(samples, dtype=np.float32), rate, format="WAV", subtype="FLOAT")
    return base64.b64encode(buffer.getvalue()).decode("ascii")


def _feature_extractor(directory, tokenizer):
    from transformers import WhisperFeatureExtractor

    if (directory / "preprocessor_config.json").is_file():
        return WhisperFeatureExtractor.from_pretrained(str(directory))
    audio = tokenizer.instruct_tokenizer.tokenizer.audio
    enc = audio.encoding_config
    return WhisperFeatureExtractor(feature_size=enc.num_mel_bins, sampling_rate=audio.sampling_rate,
                                   hop_length=enc.hop_length, n_fft=enc.window_size,
                                   chunk_length=int(audio.chunk_length_s))


def load(model: str | os.PathLike, *, revision: str | None = None, device: Any = None, dtype: Any = None,
         max_batch: int | None = None, max_queue: int | None = None, step_mode: str | None = None,
         max_seq_len: int = 4096, **_ignored: Any) -> VoxtralChat:
    """Load a Voxtral checkpoint in either published layout (``codec`` options of the TTS families are ignored)."""
    from mistral_common.tokens.tokenizers.mistral import MistralTokenizer

    from ...errors import CheckpointError
    from ...loading import DEFAULT_MAX_BATCH_CPU, default_max_batch, pick_device, pick_dtype, public_id

    checkpoint = load_checkpoint(model, revision=revision)
    tekken = checkpoint.directory / TEKKEN_FILE
    if not tekken.is_file():
        raise CheckpointError(f"{model} has no {TEKKEN_FILE} (Voxtral's tokenizer).")
    tokenizer = MistralTokenizer.from_file(str(tekken))
    dev = device if isinstance(device, torch.device) else pick_device(device)
    dt = dtype if isinstance(dtype, torch.dtype) else pick_dtype(dtype, dev)
    network = VoxtralModel(checkpoint.config, checkpoint.state_dict, dtype=dt, device=dev)
    del checkpoint.state_dict
    if max_batch is None:
        per_request = VoxtralGenerator.cache_bytes_per_request(network.config, dt, max_seq_len)
        max_batch = default_max_batch(dev, per_request) if dev.type == "cuda" else DEFAULT_MAX_BATCH_CPU
    return VoxtralChat(network, tokenizer, _feature_extractor(checkpoint.directory, tokenizer), max_batch=max_batch,
                       max_queue=max_queue, max_seq_len=max_seq_len, step_mode=step_mode, model_id=public_id(model))


