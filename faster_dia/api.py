"""The public Python surface: ``faster_dia.load(...)`` returns a :class:`TextToSpeech`."""

from __future__ import annotations

import json
import logging
import os
import queue
import secrets
import time
import wave
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from .codecs.dac import DacCodec
from .engine import Engine
from .errors import CheckpointError, InvalidInputError
from .hub import open_repo
from .models.dia1.checkpoint import load_checkpoint
from .models.dia1.config import VARIANT_ORIGINAL
from .models.dia1.generator import Dia1Generator, Dia1Request
from .models.dia1.model import Dia1Model
from .models.dia2.checkpoint import is_dia2_config
from .models.graphs import resolve_mode
from .script import encode_script, join_prompt_transcript, normalize_script

log = logging.getLogger(__name__)

DEFAULT_MODEL = "nari-labs/Dia-1.6B-0626"
_DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


@dataclass
class Speech:
    """One generated utterance."""

    audio: np.ndarray  # float32 mono in [-1, 1]
    sample_rate: int
    codes: np.ndarray  # [frames, codebooks] codec codes, delay reverted, prompt excluded
    seed: int
    timestamps: list[tuple[str, float]] | None = None  # Dia2: (word, start in seconds)

    @property
    def duration(self) -> float:
        return len(self.audio) / self.sample_rate

    def save(self, path: str | os.PathLike) -> Path:
        """Write a 16-bit PCM WAV file."""
        path = Path(path)
        pcm = (np.clip(self.audio, -1.0, 1.0) * 32767.0).round().astype("<i2")
        with wave.open(str(path), "wb") as out:
            out.setnchannels(1)
            out.setsampwidth(2)
            out.setframerate(self.sample_rate)
            out.writeframes(pcm.tobytes())
        return path


@dataclass
class Progress:
    """Handed to a ``progress`` callback after every decoder step."""

    frames: int  # final audio frames so far, all requests of the call together
    seconds_of_audio: float
    elapsed: float

    @property
    def real_time_factor(self) -> float:
        return self.seconds_of_audio / self.elapsed if self.elapsed > 0 else 0.0


def pick_device(device: str | torch.device | None) -> torch.device:
    if device is not None:
        try:
            return torch.device(device)
        except (RuntimeError, TypeError) as exc:
            raise InvalidInputError(f"Unknown device {device!r}: {exc}", param="device") from exc
    if torch.cuda.is_available():
        return torch.device("cuda")
    if getattr(torch.backends, "mps", None) is not None and torch.backends.mps.is_available():
        return torch.device("mps")
    return torch.device("cpu")


def pick_dtype(dtype: str | torch.dtype | None, device: torch.device) -> torch.dtype:
    if dtype is None:
        return torch.bfloat16 if device.type == "cuda" else torch.float32
    if isinstance(dtype, torch.dtype):
        if dtype in _DTYPES.values():
            return dtype
        raise InvalidInputError(f"Unsupported dtype {dtype}; use one of {', '.join(_DTYPES)}.", param="dtype")
    if dtype not in _DTYPES:
        raise InvalidInputError(f"Unsupported dtype {dtype!r}; use one of {', '.join(_DTYPES)}.", param="dtype")
    return _DTYPES[dtype]


#: Requests decoded together by default off CUDA, and at most by default on CUDA.
DEFAULT_MAX_BATCH_CPU = 4
DEFAULT_MAX_BATCH_CUDA_LIMIT = 64


def max_batch_for_memory(free_bytes: int, per_request_bytes: int) -> int:
    """Batch slots whose caches fit in half of ``free_bytes`` (the rest is left for activations, the codec and
    other processes): a multiple of 8 from 8 up, at least 1, at most DEFAULT_MAX_BATCH_CUDA_LIMIT."""
    slots = int(free_bytes // 2 // max(per_request_bytes, 1))
    if slots >= 8:
        slots -= slots % 8
    return max(1, min(slots, DEFAULT_MAX_BATCH_CUDA_LIMIT))


def default_max_batch(device: torch.device, per_request_bytes: int) -> int:
    """The ``max_batch`` used when none is given: sized to the GPU's free memory on CUDA, 4 elsewhere."""
    if device.type != "cuda":
        return DEFAULT_MAX_BATCH_CPU
    free, _ = torch.cuda.mem_get_info(device)
    return max_batch_for_memory(free, per_request_bytes)


def load(
    model: str | os.PathLike = DEFAULT_MODEL,
    *,
    device: str | torch.device | None = None,
    dtype: str | torch.dtype | None = None,
    codec: str | os.PathLike | None = None,
    revision: str | None = None,
    codec_revision: str | None = None,
    max_batch: int | None = None,
    max_queue: int = 64,
    cuda_graphs: bool | None = None,
) -> TextToSpeech | Dia2TextToSpeech:
    """Load a Dia checkpoint (Hub id or local directory) and its codec, ready to generate. Dia-1.6B
    checkpoints use the DAC codec (default ``descript/dac_44khz``), Dia2 checkpoints Mimi (``kyutai/mimi``).

    ``max_batch`` is how many requests are decoded together (caches for that many are allocated once;
    default: on CUDA as many as half the free GPU memory holds after loading, up to 64; 4 elsewhere); ``max_queue`` bounds the requests waiting for a slot. ``cuda_graphs``
    replays each decode step shape as a CUDA graph (default: on for CUDA devices; CUDA only)."""
    dev = pick_device(device)
    if cuda_graphs is not None and not isinstance(cuda_graphs, bool):
        raise InvalidInputError(f"cuda_graphs must be True, False or None, got {cuda_graphs!r}.", param="cuda_graphs")
    if cuda_graphs and dev.type != "cuda":
        raise InvalidInputError(f"CUDA graphs need a CUDA device; the model would run on {dev.type}.",
                                param="cuda_graphs")
    step_mode = resolve_mode(dev, cuda_graphs)
    dt = pick_dtype(dtype, dev)
    if max_batch is not None and (isinstance(max_batch, bool) or not isinstance(max_batch, int) or max_batch < 1):
        raise InvalidInputError(f"max_batch must be a positive integer, got {max_batch!r}.", param="max_batch")
    # The family is read from the files: Dia2's config.json has data/model/runtime blocks.
    config_path = open_repo(model, revision=revision).get("config.json")
    try:
        raw_config = json.loads(config_path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise CheckpointError(f"{config_path} is not valid JSON: {exc}") from exc
    if is_dia2_config(raw_config):
        return _load_dia2(model, revision=revision, device=dev, dtype=dt, codec=codec,
                          codec_revision=codec_revision, max_batch=max_batch, max_queue=max_queue,
                          step_mode=step_mode)
    checkpoint = load_checkpoint(model, revision=revision)
    network = Dia1Model.from_hf_state_dict(checkpoint.config, checkpoint.state_dict, dtype=dt, device=dev)
    del checkpoint.state_dict
    dac = DacCodec.load(codec, revision=codec_revision, device=dev)
    if max_batch is None:
        max_batch = default_max_batch(dev, Dia1Generator.cache_bytes_per_request(checkpoint.config, dt))
    log.info(
        "loaded %s (%s layout, variant %s%s) on %s in %s",
        checkpoint.source, checkpoint.layout, checkpoint.variant,
        ": cross-attention RoPE, guided sampling with EOS x0.8" if checkpoint.variant == VARIANT_ORIGINAL
        else ": guided top-k candidates, conditional sampling",
        dev, str(dt).removeprefix("torch."),
    )
    return TextToSpeech(network, dac, model_id=checkpoint.source, variant=checkpoint.variant,
                        max_batch=max_batch, max_queue=max_queue, step_mode=step_mode)


def _load_dia2(model, *, revision, device, dtype, codec, codec_revision, max_batch, max_queue,
               step_mode) -> Dia2TextToSpeech:
    from .codecs.mimi import MimiCodec
    from .models.dia2.checkpoint import load_checkpoint as load_dia2_checkpoint
    from .models.dia2.model import Dia2Model
    from .models.dia2.tokenizer import load_tokenizer

    checkpoint = load_dia2_checkpoint(model, revision=revision)
    network = Dia2Model.from_state_dict(checkpoint.config, checkpoint.state_dict, dtype=dtype, device=device)
    del checkpoint.state_dict
    tokenizer = load_tokenizer(checkpoint.tokenizer_directory)
    mimi = MimiCodec.load(codec, revision=codec_revision, device=device)
    if max_batch is None:
        from .models.dia2.generator import Dia2Generator

        max_batch = default_max_batch(device, Dia2Generator.cache_bytes_per_request(checkpoint.config, dtype))
    c = checkpoint.config
    variant = f"dia2 ({c.decoder_layers}-layer transformer, {c.decoder_hidden_size} wide)"
    log.info("loaded %s (%s) on %s in %s", checkpoint.source, variant, device, str(dtype).removeprefix("torch."))
    return Dia2TextToSpeech(network, mimi, tokenizer, model_id=checkpoint.source, variant=variant,
                            max_batch=max_batch, max_queue=max_queue, step_mode=step_mode)


class SpeechModel:
    """What every loaded model family shares: the engine that owns the model, the codec, results and
    streams. ``generate`` and ``stream`` are safe to call from many threads at once: concurrent calls are
    decoded together by the one engine thread."""

    family = ""

    def __init__(self, model, codec, generator, *, model_id: str, variant: str, max_queue: int = 64):
        self.model = model
        self.codec = codec
        self.model_id = model_id
        self.variant = variant
        self.config = model.config
        self.engine = Engine(generator, max_queue=max_queue)

    @property
    def sample_rate(self) -> int:
        return self.codec.sample_rate

    @property
    def frame_rate(self) -> float:
        return self.codec.frame_rate

    @property
    def device(self) -> torch.device:
        return self.model.device

    @property
    def dtype(self) -> torch.dtype:
        return self.model.dtype

    def _speech(self, codes: torch.Tensor, request: Any, state: Any) -> Speech:
        return Speech(audio=np.clip(self.codec.decode(codes), -1.0, 1.0), sample_rate=self.sample_rate,
                      codes=codes.numpy(), seed=request.seed)

    def _stream_chunks(self, stream: SpeechStream):
        (submission,) = self.engine.submit([stream.request], chunk_frames=stream.chunk_frames)
        decoder = self.codec.incremental_decoder()
        try:
            while True:
                kind, payload = submission.events.get()
                stream.frames = submission.frames
                if kind == "error":
                    raise payload
                audio = decoder.push(payload) if kind == "frames" else decoder.flush()
                if audio.size:
                    yield np.clip(audio, -1.0, 1.0)
                if kind == "done":
                    stream.state = submission.state
                    return
        finally:
            submission.cancel()  # no-op once done; frees the slot when the consumer stops early

    @staticmethod
    def _per_item(value: Any, n: int, name: str, *, offset_ints: bool = False) -> list[Any]:
        if isinstance(value, (list, tuple)):
            if len(value) != n:
                raise InvalidInputError(f"{name} has {len(value)} entries for {n} scripts.", param=name)
            return list(value)
        if offset_ints and value is not None:
            return [value + i if isinstance(value, (int, np.integer)) and not isinstance(value, bool) else value
                    for i in range(n)]
        return [value] * n

    @staticmethod
    def _seed(seed: Any) -> int:
        if seed is None:
            return secrets.randbits(32)
        if not isinstance(seed, (int, np.integer)) or isinstance(seed, bool) or seed < 0:
            raise InvalidInputError(f"seed must be a non-negative integer, got {seed!r}.", param="seed")
        return int(seed)

    def _run(self, requests: list[Any], progress: Callable[[Progress], None] | None) -> list[tuple[torch.Tensor, Any]]:
        """Submit requests, wait for all; returns (codes, final slot state) per request."""
        submissions = self.engine.submit(requests)
        start = time.perf_counter()
        results: list[tuple[torch.Tensor, Any] | None] = [None] * len(submissions)
        try:
            for i, sub in enumerate(submissions):
                while True:
                    try:
                        kind, payload = sub.events.get(timeout=0.1 if progress is not None else None)
                    except queue.Empty:
                        frames = sum(s.frames for s in submissions)
                        progress(Progress(frames, frames / self.frame_rate, time.perf_counter() - start))
                        continue
                    if kind == "error":
                        raise payload
                    results[i] = (payload, sub.state)
                    break
            if progress is not None:
                frames = sum(len(c) for c, _ in results)
                progress(Progress(frames, frames / self.frame_rate, time.perf_counter() - start))
            return results
        finally:
            for sub in submissions:
                sub.cancel()


class TextToSpeech(SpeechModel):
    """Dia-1.6B (both published checkpoints) with the DAC codec."""

    family = "dia1"

    def __init__(self, model: Dia1Model, codec: DacCodec, *, model_id: str, variant: str, max_batch: int = 4,
                 max_queue: int = 64, step_mode: str | None = None):
        super().__init__(model, codec, Dia1Generator(model, max_batch=max_batch, step_mode=step_mode), model_id=model_id,
                         variant=variant, max_queue=max_queue)

    # ------------------------------------------------------------------ requests

    def _prompt_codes(self, audio_prompt: Any, sample_rate: int | None) -> torch.Tensor:
        if isinstance(audio_prompt, (str, os.PathLike)):
            from .audio import decode_audio

            pcm, _ = decode_audio(audio_prompt, sample_rate=self.sample_rate)
            return self.codec.encode(pcm)
        if isinstance(audio_prompt, (bytes, bytearray)):
            from .audio import decode_audio

            pcm, _ = decode_audio(bytes(audio_prompt), sample_rate=self.sample_rate)
            return self.codec.encode(pcm)
        array = audio_prompt.detach().cpu() if isinstance(audio_prompt, torch.Tensor) else np.asarray(audio_prompt)
        if isinstance(array, torch.Tensor):
            is_codes = not array.is_floating_point()
            array = array.numpy()
        else:
            is_codes = np.issubdtype(array.dtype, np.integer)
        if is_codes:
            if array.ndim != 2 or array.shape[1] != self.codec.num_codebooks:
                raise InvalidInputError(
                    f"Voice prompt codes must have shape [frames, {self.codec.num_codebooks}], got {list(array.shape)}.",
                    param="audio_prompt",
                )
            if array.size and (array.min() < 0 or array.max() >= self.codec.codebook_size):
                raise InvalidInputError(
                    f"Voice prompt codes must lie in 0..{self.codec.codebook_size - 1}.", param="audio_prompt"
                )
            return torch.as_tensor(array, dtype=torch.long)
        if not np.issubdtype(array.dtype, np.floating):
            raise InvalidInputError("A voice prompt array must hold float audio or integer codes.", param="audio_prompt")
        if sample_rate is None:
            raise InvalidInputError(
                "A voice prompt given as an audio array needs audio_prompt_sample_rate.", param="audio_prompt_sample_rate"
            )
        if array.ndim == 2:
            # [channels, samples] or [samples, channels]: average the shorter axis away.
            array = array.mean(axis=0 if array.shape[0] < array.shape[1] else 1)
        if array.ndim != 1:
            raise InvalidInputError("A voice prompt array must be mono or stereo audio.", param="audio_prompt")
        pcm = array.astype(np.float32)
        if sample_rate != self.sample_rate:
            from .audio import resample

            pcm = resample(pcm, sample_rate, self.sample_rate)
        return self.codec.encode(pcm)

    def _request(
        self, script: str, *, seed: int | None, audio_prompt: Any, audio_prompt_transcript: str | None,
        audio_prompt_sample_rate: int | None, **params: Any,
    ) -> Dia1Request:
        text = normalize_script(script)
        prompt = None
        if audio_prompt is not None:
            if not audio_prompt_transcript or not str(audio_prompt_transcript).strip():
                raise InvalidInputError(
                    "A voice prompt needs its transcript (audio_prompt_transcript): the model continues the "
                    "transcript's speech, and without it the output is garbled.",
                    param="audio_prompt_transcript",
                )
            transcript = normalize_script(audio_prompt_transcript, param="audio_prompt_transcript")
            text = join_prompt_transcript(transcript, text)
            prompt = self._prompt_codes(audio_prompt, audio_prompt_sample_rate)
        elif audio_prompt_transcript:
            raise InvalidInputError(
                "audio_prompt_transcript was given without audio_prompt.", param="audio_prompt_transcript"
            )
        tokens = encode_script(text)
        if len(tokens) > self.config.text_length:
            what = "script plus the voice prompt transcript" if prompt is not None else "script"
            raise InvalidInputError(
                f"The {what} is {len(tokens)} bytes long ([S1]/[S2] count as one); the model reads at most "
                f"{self.config.text_length} bytes. Shorten it or split it into several calls.",
                param="input",
            )
        seed = self._seed(seed)
        top_k = params["top_k"]
        if isinstance(top_k, bool) or not isinstance(top_k, (int, np.integer)):
            raise InvalidInputError(f"top_k must be an integer, got {top_k!r}.", param="top_k")
        for name in ("temperature", "top_p", "cfg_scale"):
            value = params[name]
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not np.isfinite(value):
                raise InvalidInputError(f"{name} must be a number, got {value!r}.", param=name)
        max_new = params["max_new_tokens"]
        if max_new is not None and (isinstance(max_new, bool) or not isinstance(max_new, (int, np.integer))):
            raise InvalidInputError(f"max_new_tokens must be an integer, got {max_new!r}.", param="max_new_tokens")
        return Dia1Request(
            text=torch.tensor(tokens, dtype=torch.long), seed=int(seed), prompt=prompt,
            max_new_tokens=max_new, temperature=float(params["temperature"]), top_p=float(params["top_p"]),
            top_k=int(top_k), cfg_scale=float(params["cfg_scale"]),
        )

    # ------------------------------------------------------------------ generation

    def generate(
        self,
        script: str | Sequence[str],
        *,
        seed: int | Sequence[int | None] | None = None,
        temperature: float = 1.2,
        top_p: float = 0.95,
        top_k: int = 45,
        cfg_scale: float = 3.0,
        max_new_tokens: int | None = None,
        audio_prompt: Any = None,
        audio_prompt_transcript: str | Sequence[str | None] | None = None,
        audio_prompt_sample_rate: int | None = None,
        progress: Callable[[Progress], None] | None = None,
    ) -> Speech | list[Speech]:
        """Generate speech for one script, or for a list of scripts as one batch.

        For a list, ``seed`` may be one integer (item i uses seed + i) or a list, and ``audio_prompt`` /
        ``audio_prompt_transcript`` may be single values shared by all items or lists with None entries."""
        single = isinstance(script, str)
        scripts = [script] if single else list(script)
        if not scripts:
            raise InvalidInputError("No script given.", param="input")
        n = len(scripts)
        seeds = self._per_item(seed, n, "seed", offset_ints=True)
        prompts = self._per_item(audio_prompt, n, "audio_prompt")
        transcripts = self._per_item(audio_prompt_transcript, n, "audio_prompt_transcript")
        params = dict(temperature=temperature, top_p=top_p, top_k=top_k, cfg_scale=cfg_scale,
                      max_new_tokens=max_new_tokens)
        requests = [
            self._request(s, seed=sd, audio_prompt=p, audio_prompt_transcript=t,
                          audio_prompt_sample_rate=audio_prompt_sample_rate, **params)
            for s, sd, p, t in zip(scripts, seeds, prompts, transcripts, strict=True)
        ]
        results = [self._speech(codes, r, state)
                   for (codes, state), r in zip(self._run(requests, progress), requests, strict=True)]
        return results[0] if single else results

    def stream(
        self,
        script: str,
        *,
        seed: int | None = None,
        temperature: float = 1.2,
        top_p: float = 0.95,
        top_k: int = 45,
        cfg_scale: float = 3.0,
        max_new_tokens: int | None = None,
        audio_prompt: Any = None,
        audio_prompt_transcript: str | None = None,
        audio_prompt_sample_rate: int | None = None,
        chunk_frames: int = 32,
    ) -> SpeechStream:
        """Like ``generate`` for one script, but returns a :class:`SpeechStream` that yields audio chunks as
        frames become final. ``chunk_frames`` (86 = 1 s) sets how much audio each chunk carries at least;
        the first chunk arrives after the 15-step delay plus one chunk and the codec's look-ahead."""
        if not isinstance(script, str):
            raise InvalidInputError("stream() takes one script; use generate() for a batch.", param="input")
        if isinstance(chunk_frames, bool) or not isinstance(chunk_frames, int) or chunk_frames < 1:
            raise InvalidInputError("chunk_frames must be a positive integer.", param="chunk_frames")
        request = self._request(
            script, seed=seed, audio_prompt=audio_prompt, audio_prompt_transcript=audio_prompt_transcript,
            audio_prompt_sample_rate=audio_prompt_sample_rate, temperature=temperature, top_p=top_p, top_k=top_k,
            cfg_scale=cfg_scale, max_new_tokens=max_new_tokens,
        )
        self.engine.generator.validate(request)
        return SpeechStream(self, request, input_tokens=int(request.text.shape[0]), chunk_frames=chunk_frames)


class SpeechStream:
    """Audio of one request, delivered in chunks while it is generated. Iterate it for float32 mono chunks;
    ``close()`` (or leaving the iteration early) cancels the generation and frees its slot."""

    def __init__(self, tts: SpeechModel, request: Any, *, input_tokens: int, chunk_frames: int = 32):
        self._tts = tts
        self.chunk_frames = chunk_frames
        self.request = request
        self.seed = request.seed
        self.sample_rate = tts.sample_rate
        self.input_tokens = input_tokens
        self.frames = 0
        self.state = None  # the finished request's slot state (Dia2: word timestamps)
        self._iterator = tts._stream_chunks(self)

    def __iter__(self):
        return self

    def __next__(self) -> np.ndarray:
        return next(self._iterator)

    def close(self) -> None:
        self._iterator.close()

    @property
    def seconds(self) -> float:
        return self.frames / self._tts.frame_rate


def _voiced_span(pcm: np.ndarray, sample_rate: int) -> tuple[float, float]:
    """Start and end (seconds) of the part of a clip louder than -40 dBFS: where its words can be."""
    loud = np.flatnonzero(np.abs(pcm) > 0.01)
    if loud.size == 0:
        return 0.0, len(pcm) / sample_rate
    return loud[0] / sample_rate, (loud[-1] + 1) / sample_rate


class Dia2TextToSpeech(SpeechModel):
    """Dia2 (1B, 2B) with the Mimi codec: 24 kHz audio, word timestamps, voice prefixes."""

    family = "dia2"

    def __init__(self, model, codec, tokenizer, *, model_id: str, variant: str = "dia2", max_batch: int = 4,
                 max_queue: int = 64, step_mode: str | None = None):
        from .models.dia2.generator import Dia2Generator

        super().__init__(model, codec, Dia2Generator(model, max_batch=max_batch, step_mode=step_mode),
                         model_id=model_id,
                         variant=variant, max_queue=max_queue)
        self.tokenizer = tokenizer

    def _encode(self, text: str) -> list[int]:
        return self.tokenizer.encode(text)

    def _entries(self, script: str, param: str = "input"):
        from .models.dia2.text import parse_script, speaker_token_ids

        if not isinstance(script, str):
            raise InvalidInputError(f"A script must be a string, got {type(script).__name__}.", param=param)
        if not script.strip():
            raise InvalidInputError("The script is empty.", param=param)
        ids = speaker_token_ids(self._encode, self.config.text_new_word_token_id)
        return parse_script(script, self._encode, speaker_ids=ids, new_word_token_id=self.config.text_new_word_token_id)

    def _prefix(self, audio: Any, transcript: Any, speaker: str, frame_offset: int, sample_rate: int | None):
        """Mimi codes, entries and forced new-word steps of one speaker's voice prefix."""
        from .models.dia2.text import prefix_entries

        param = "prefix_speaker_1" if speaker == "[S1]" else "prefix_speaker_2"
        if transcript is None or (isinstance(transcript, str) and not transcript.strip()):
            raise InvalidInputError(
                f"{param} needs its transcript ({param.replace('speaker', 'transcript')}): the model continues "
                "the prefix's words, and automatic transcription is not available yet.", param=param,
            )
        if isinstance(audio, (str, os.PathLike, bytes, bytearray)):
            from .audio import decode_audio

            pcm, _ = decode_audio(bytes(audio) if isinstance(audio, bytearray) else audio,
                                  sample_rate=self.sample_rate, param=param)
        else:
            pcm = np.asarray(audio, dtype=np.float32)
            if pcm.ndim == 2:
                pcm = pcm.mean(axis=0 if pcm.shape[0] < pcm.shape[1] else 1)
            if sample_rate is None:
                raise InvalidInputError(f"{param} given as an array needs prefix_sample_rate.", param=param)
            if sample_rate != self.sample_rate:
                from .audio import resample

                pcm = resample(pcm, sample_rate, self.sample_rate)
        codes = self.codec.encode(pcm)
        words = transcript.split() if isinstance(transcript, str) else list(transcript)
        entries, steps = prefix_entries(
            [w for w in words if w not in ("[S1]", "[S2]")] if isinstance(transcript, str) else words,
            speaker, self._encode, start_frame_offset=frame_offset,
            voiced_span=_voiced_span(pcm, self.sample_rate) if isinstance(transcript, str) else None,
        )
        return codes, entries, steps

    def _request(self, script: str, *, seed: Any, text_temperature: float, text_top_k: int, audio_temperature: float,
                 audio_top_k: int, cfg_scale: float, cfg_filter_k: int, max_new_tokens: int | None,
                 prefix_speaker_1: Any, prefix_transcript_1: Any, prefix_speaker_2: Any, prefix_transcript_2: Any,
                 prefix_sample_rate: int | None, include_prefix: bool):
        from .models.dia2.generator import Dia2Request

        entries = self._entries(script)
        prefix_codes, steps, head = None, [], []
        if prefix_speaker_2 is not None and prefix_speaker_1 is None:
            raise InvalidInputError("prefix_speaker_2 needs prefix_speaker_1 too.", param="prefix_speaker_2")
        if prefix_speaker_1 is not None:
            codes1, entries1, steps1 = self._prefix(prefix_speaker_1, prefix_transcript_1, "[S1]", 0, prefix_sample_rate)
            parts, head, steps = [codes1], entries1, steps1
            if prefix_speaker_2 is not None:
                codes2, entries2, steps2 = self._prefix(
                    prefix_speaker_2, prefix_transcript_2, "[S2]", int(codes1.shape[0]), prefix_sample_rate)
                parts.append(codes2)
                head, steps = head + entries2, steps + steps2
            prefix_codes = torch.cat(parts)
        for name, value in (("text_temperature", text_temperature), ("audio_temperature", audio_temperature),
                            ("cfg_scale", cfg_scale)):
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not np.isfinite(value):
                raise InvalidInputError(f"{name} must be a number, got {value!r}.", param=name)
        for name, value in (("text_top_k", text_top_k), ("audio_top_k", audio_top_k), ("cfg_filter_k", cfg_filter_k)):
            if isinstance(value, bool) or not isinstance(value, (int, np.integer)):
                raise InvalidInputError(f"{name} must be an integer, got {value!r}.", param=name)
        if max_new_tokens is not None and (isinstance(max_new_tokens, bool)
                                           or not isinstance(max_new_tokens, (int, np.integer))):
            raise InvalidInputError(f"max_new_tokens must be an integer, got {max_new_tokens!r}.", param="max_new_tokens")
        return Dia2Request(
            entries=head + entries, seed=self._seed(seed), prefix_codes=prefix_codes,
            prefix_new_word_steps=tuple(steps), max_new_frames=max_new_tokens,
            text_temperature=float(text_temperature), text_top_k=int(text_top_k),
            audio_temperature=float(audio_temperature), audio_top_k=int(audio_top_k), cfg_scale=float(cfg_scale),
            cfg_filter_k=int(cfg_filter_k), include_prefix=bool(include_prefix),
        )

    @staticmethod
    def _sampling(temperature, top_k, top_p, text_temperature, text_top_k, audio_temperature, audio_top_k):
        """``temperature``/``top_k`` (the names Dia-1.6B and OpenAI-style clients use) set text and audio alike,
        as the reference command line does; the specific settings win."""
        if top_p is not None:
            raise InvalidInputError("top_p does not apply to Dia2 (it samples with top-k).", param="top_p")
        return dict(
            text_temperature=text_temperature if text_temperature is not None else (temperature if temperature is not None else 0.6),
            text_top_k=text_top_k if text_top_k is not None else (top_k if top_k is not None else 50),
            audio_temperature=audio_temperature if audio_temperature is not None else (temperature if temperature is not None else 0.8),
            audio_top_k=audio_top_k if audio_top_k is not None else (top_k if top_k is not None else 50),
        )

    def generate(
        self,
        script: str | Sequence[str],
        *,
        seed: int | Sequence[int | None] | None = None,
        temperature: float | None = None,
        top_k: int | None = None,
        top_p: float | None = None,
        text_temperature: float | None = None,
        text_top_k: int | None = None,
        audio_temperature: float | None = None,
        audio_top_k: int | None = None,
        cfg_scale: float = 2.0,
        cfg_filter_k: int = 50,
        max_new_tokens: int | None = None,
        prefix_speaker_1: Any = None,
        prefix_transcript_1: Any = None,
        prefix_speaker_2: Any = None,
        prefix_transcript_2: Any = None,
        prefix_sample_rate: int | None = None,
        include_prefix: bool = False,
        progress: Callable[[Progress], None] | None = None,
    ) -> Speech | list[Speech]:
        """Generate speech for one script or a batch. Defaults as the reference: text 0.6 / top-k 50, audio
        0.8 / top-k 50, cfg_scale 2.0 (1 turns guidance off and runs one branch), cfg_filter_k 50.
        ``max_new_tokens`` caps the result at that many frames (12.5 = 1 s). The result's ``timestamps`` list
        (word, start second) for the script's words."""
        single = isinstance(script, str)
        scripts = [script] if single else list(script)
        if not scripts:
            raise InvalidInputError("No script given.", param="input")
        seeds = self._per_item(seed, len(scripts), "seed", offset_ints=True)
        sampling = self._sampling(temperature, top_k, top_p, text_temperature, text_top_k, audio_temperature,
                                  audio_top_k)
        requests = [
            self._request(s, seed=sd, cfg_scale=cfg_scale, cfg_filter_k=cfg_filter_k, max_new_tokens=max_new_tokens,
                          prefix_speaker_1=prefix_speaker_1, prefix_transcript_1=prefix_transcript_1,
                          prefix_speaker_2=prefix_speaker_2, prefix_transcript_2=prefix_transcript_2,
                          prefix_sample_rate=prefix_sample_rate, include_prefix=include_prefix, **sampling)
            for s, sd in zip(scripts, seeds, strict=True)
        ]
        results = [self._speech(codes, r, state)
                   for (codes, state), r in zip(self._run(requests, progress), requests, strict=True)]
        return results[0] if single else results

    def _speech(self, codes: torch.Tensor, request: Any, state: Any) -> Speech:
        speech = super()._speech(codes, request, state)
        speech.timestamps = state.timestamps
        return speech

    def stream(self, script: str, *, chunk_frames: int = 4, **kwargs: Any) -> SpeechStream:
        """Like ``generate`` for one script, yielding audio chunks of at least ``chunk_frames`` frames
        (12.5 = 1 s) while it is generated."""
        if not isinstance(script, str):
            raise InvalidInputError("stream() takes one script; use generate() for a batch.", param="input")
        if isinstance(chunk_frames, bool) or not isinstance(chunk_frames, int) or chunk_frames < 1:
            raise InvalidInputError("chunk_frames must be a positive integer.", param="chunk_frames")
        sampling_names = ("temperature", "top_k", "top_p", "text_temperature", "text_top_k", "audio_temperature",
                          "audio_top_k")
        sampling = self._sampling(*(kwargs.pop(n, None) for n in sampling_names))
        defaults = dict(seed=None, cfg_scale=2.0, cfg_filter_k=50, max_new_tokens=None, prefix_speaker_1=None,
                        prefix_transcript_1=None, prefix_speaker_2=None, prefix_transcript_2=None,
                        prefix_sample_rate=None, include_prefix=False)
        unknown = set(kwargs) - set(defaults)
        if unknown:
            raise InvalidInputError(f"Unknown option(s) for Dia2: {', '.join(sorted(unknown))}.", param=sorted(unknown)[0])
        request = self._request(script, **{**defaults, **kwargs}, **sampling)
        self.engine.generator.validate(request)
        tokens = sum(len(e.tokens) for e in request.entries)
        return SpeechStream(self, request, input_tokens=tokens, chunk_frames=chunk_frames)
