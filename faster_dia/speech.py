"""What every text-to-speech family's front door shares: results, streams (blocking and asyncio), progress,
the coercion of prompt audio, the parameter checks, and :class:`SpeechModel`, the base of the families'
classes (Dia-1.6B in models/dia1/tts.py, Dia2 in models/dia2/tts.py).

A family class declares its options once, as the keyword parameters of its ``generate``; ``stream``,
``astream`` and ``agenerate`` take the same options (checked against that signature) and share everything
else here. The engine owns the model; this layer turns a call into requests, and codes into audio.
"""

from __future__ import annotations

import asyncio
import inspect
import math
import os
import queue
import secrets
import time
import wave
from collections.abc import AsyncIterator, Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Any, BinaryIO

import numpy as np
import torch

from .engine import Engine, Submission
from .errors import InvalidInputError

# ---------------------------------------------------------------------- results


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

    def save(self, path: str | os.PathLike | BinaryIO) -> Path | BinaryIO:
        """Write a 16-bit PCM WAV file (to a path, or to a binary file object)."""
        if not isinstance(path, (str, os.PathLike)):
            self._write_wav(path)
            return path
        path = Path(path)
        # Opened here rather than by wave.open, which leaves a half-built writer behind when the open fails.
        with open(path, "wb") as file:
            self._write_wav(file)
        return path

    def _write_wav(self, file: BinaryIO) -> None:
        pcm = (np.clip(self.audio, -1.0, 1.0) * 32767.0).round().astype("<i2")
        with wave.open(file, "wb") as out:
            out.setnchannels(1)
            out.setsampwidth(2)
            out.setframerate(self.sample_rate)
            out.writeframes(pcm.tobytes())


@dataclass
class Progress:
    """Handed to a ``progress`` callback while a call generates."""

    frames: int  # final audio frames so far, all requests of the call together
    seconds_of_audio: float
    elapsed: float

    @property
    def real_time_factor(self) -> float:
        return self.seconds_of_audio / self.elapsed if self.elapsed > 0 else 0.0


# ---------------------------------------------------------------------- the output stage's worker pool

#: Threads that decode codec frames for asyncio consumers (and that the server encodes audio in): a few,
#: whatever the number of concurrent streams, so a server holds a bounded number of threads.
OUTPUT_WORKERS = max(2, min(4, os.cpu_count() or 2))
_pool: ThreadPoolExecutor | None = None


def output_pool() -> ThreadPoolExecutor:
    global _pool
    if _pool is None:
        _pool = ThreadPoolExecutor(OUTPUT_WORKERS, thread_name_prefix="faster-dia-output")
    return _pool


async def in_output_pool(function: Callable[..., Any], *args: Any) -> Any:
    """Run ``function(*args)`` in the output worker pool and await its result."""
    return await asyncio.get_running_loop().run_in_executor(output_pool(), partial(function, *args))


# ---------------------------------------------------------------------- parameter checks


def check_number(name: str, value: Any, low: float, high: float, *, low_open: bool = False) -> float:
    """A finite real in [low, high] (or (low, high] with ``low_open``), else InvalidInputError naming it."""
    if isinstance(value, bool) or not isinstance(value, (int, float, np.integer, np.floating)):
        raise InvalidInputError(f"{name} must be a number, got {value!r}.", param=name)
    number = float(value)
    if not math.isfinite(number) or number > high or number < low or (low_open and number == low):
        bound = f"({low:g}, {high:g}]" if low_open else f"[{low:g}, {high:g}]"
        raise InvalidInputError(f"{name} must be in {bound}, got {value!r}.", param=name)
    return number


def check_integer(name: str, value: Any, low: int, high: int) -> int:
    """An integer in [low, high], else InvalidInputError naming it."""
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)):
        raise InvalidInputError(f"{name} must be an integer, got {value!r}.", param=name)
    if not low <= int(value) <= high:
        raise InvalidInputError(f"{name} must be between {low} and {high}, got {value}.", param=name)
    return int(value)


#: Seeds are folded into the random key as 64-bit numbers.
MAX_SEED = (1 << 64) - 1


def resolve_seed(seed: Any) -> int:
    """A seed in [0, 2**64 - 1], or a random 32-bit one for None."""
    if seed is None:
        return secrets.randbits(32)
    return check_integer("seed", seed, 0, MAX_SEED)


def per_item(value: Any, n: int, name: str, *, offset_ints: bool = False) -> list[Any]:
    """One value per script of a batch: a list as given (length checked) or one value repeated (an integer
    seed counting up with ``offset_ints``)."""
    if isinstance(value, (list, tuple)):
        if len(value) != n:
            raise InvalidInputError(f"{name} has {len(value)} entries for {n} scripts.", param=name)
        return list(value)
    if offset_ints and value is not None:
        return [value + i if isinstance(value, (int, np.integer)) and not isinstance(value, bool) else value
                for i in range(n)]
    return [value] * n


def _word_times(transcript: Any) -> list[tuple[str, float, float]]:
    return [(w.word.strip(), float(w.start), float(w.end)) for w in transcript.words if w.word.strip()]


def _text_and_words(transcript: Any) -> tuple[str, list[tuple[str, float, float]]]:
    return transcript.text.strip(), _word_times(transcript)


# ---------------------------------------------------------------------- prompt audio


@dataclass
class PromptAudio:
    """A voice prompt after coercion: its codec codes, and its samples when it was given as audio."""

    codes: torch.Tensor  # [frames, codebooks]
    pcm: np.ndarray | None  # float32 mono at the codec's rate; None when codes were given


def coerce_prompt_audio(value: Any, codec: Any, *, param: str, sample_rate: int | None,
                        rate_param: str) -> PromptAudio:
    """A voice prompt from a path, encoded file bytes, a float array (``sample_rate`` required, given as the
    option ``rate_param``) or integer codec codes ``[frames, codebooks]``, as codes of ``codec`` (and its
    samples when it was audio)."""
    if isinstance(value, (str, os.PathLike, bytes, bytearray)):
        from .audio import decode_audio

        pcm, _ = decode_audio(bytes(value) if isinstance(value, bytearray) else value,
                              sample_rate=codec.sample_rate, param=param)
        return PromptAudio(codec.encode(pcm), pcm)
    array = value.detach().cpu() if isinstance(value, torch.Tensor) else np.asarray(value)
    if isinstance(array, torch.Tensor):
        is_codes = not array.is_floating_point()
        array = array.numpy()
    else:
        is_codes = np.issubdtype(array.dtype, np.integer)
    if is_codes:
        if array.ndim != 2 or array.shape[1] != codec.num_codebooks:
            raise InvalidInputError(
                f"Voice prompt codes must have shape [frames, {codec.num_codebooks}], got {list(array.shape)}.",
                param=param,
            )
        if array.size and (array.min() < 0 or array.max() >= codec.codebook_size):
            raise InvalidInputError(f"Voice prompt codes must lie in 0..{codec.codebook_size - 1}.", param=param)
        return PromptAudio(torch.as_tensor(array, dtype=torch.long), None)
    if not np.issubdtype(array.dtype, np.floating):
        raise InvalidInputError("A voice prompt array must hold float audio or integer codes.", param=param)
    if sample_rate is None:
        raise InvalidInputError(f"{param} given as an audio array needs its sample rate ({rate_param}).",
                                param=rate_param)
    if array.ndim == 2:
        # [channels, samples] or [samples, channels]: average the shorter axis away.
        array = array.mean(axis=0 if array.shape[0] < array.shape[1] else 1)
    if array.ndim != 1:
        raise InvalidInputError("A voice prompt array must be mono or stereo audio.", param=param)
    pcm = array.astype(np.float32)
    if sample_rate != codec.sample_rate:
        from .audio import resample

        pcm = resample(pcm, sample_rate, codec.sample_rate)
    return PromptAudio(codec.encode(pcm), pcm)


# ---------------------------------------------------------------------- voices


@dataclass
class SpeakerVoice:
    """One speaker's voice in a request: the clip's codec codes and what is said in them."""

    codes: torch.Tensor  # [frames, codebooks]
    transcript: str  # plain words, no speaker tag
    words: list[tuple[str, float, float]] | None  # (word, start s, end s) when known


def _voice_reference(value: Any, param: str) -> Any:
    """A voice as given: a name, a :class:`~faster_dia.voices.Voice`, ``{"id": ...}`` or a path."""
    if isinstance(value, dict):
        if not isinstance(value.get("id"), str):
            raise InvalidInputError(f"{param} given as an object needs an 'id'.", param=param)
        return value["id"]
    return value


# ---------------------------------------------------------------------- streams


class _StreamBase:
    """One request's audio, delivered in chunks while it is generated (shared by both stream kinds)."""

    def __init__(self, tts: SpeechModel, request: Any, *, input_tokens: int, chunk_frames: int,
                 submission: Submission | None = None):
        self._tts = tts
        self.request = request
        self.seed = request.seed
        self.sample_rate = tts.sample_rate
        self.input_tokens = input_tokens
        self.chunk_frames = chunk_frames
        self.frames = 0
        self.state = None  # the finished request's slot state
        self.words: list[tuple[str, float]] = []  # Dia2: (word, start s) as decided so far
        self.codes: list[torch.Tensor] = []  # the codes streamed so far, chunk by chunk
        self._decoder = tts.codec.incremental_decoder()
        self._ended = False
        # Submitted at once: the request is validated and queued (or refused) now, not at the first chunk (or
        # already submitted with others, to be decoded together).
        if submission is None:
            (submission,) = tts.engine.submit([request], chunk_frames=chunk_frames)
        self._submission = submission

    @property
    def seconds(self) -> float:
        return self.frames / self._tts.frame_rate

    @property
    def submission(self) -> Submission:
        return self._submission

    def _decode(self, event: tuple) -> np.ndarray:
        """Audio for one engine event (maybe empty); raises the request's error."""
        kind, payload = event
        sub = self._submission
        self.frames = sub.frames
        if sub.state is not None:
            self.words = self._tts._words(sub.state)
        if kind == "error":
            self._ended = True
            raise payload
        if kind == "frames":
            self.codes.append(payload)
        audio = self._decoder.push(payload) if kind == "frames" else self._decoder.flush()
        if kind == "done":
            self._ended = True
            self.state = sub.state
        return np.clip(audio, -1.0, 1.0)

    def _cancel(self) -> None:
        self._ended = True
        self._submission.cancel()  # no-op once done; frees the slot when the consumer stops early

    def __del__(self) -> None:
        submission = getattr(self, "_submission", None)
        if submission is not None:
            submission.cancel()


class SpeechStream(_StreamBase):
    """Iterate for float32 mono chunks (blocking); ``close()`` (or leaving the iteration early and dropping
    the stream) cancels the generation and frees its slot."""

    def __iter__(self):
        return self

    def __next__(self) -> np.ndarray:
        try:
            while not self._ended:
                audio = self._decode(self._submission.events.get())
                if audio.size:
                    return audio
        except BaseException:
            self._cancel()
            raise
        raise StopIteration

    def close(self) -> None:
        self._cancel()


class AsyncSpeechStream(_StreamBase):
    """``async for`` float32 mono chunks, without a thread per stream: events are awaited on the event loop
    and codec decoding runs in the shared output pool. ``await aclose()`` cancels."""

    def __aiter__(self):
        return self

    async def __anext__(self) -> np.ndarray:
        try:
            while not self._ended:
                event = await self._submission.events.aget()
                audio = await in_output_pool(self._decode, event)
                if audio.size:
                    return audio
        except BaseException:
            self._cancel()
            raise
        raise StopAsyncIteration

    async def aclose(self) -> None:
        self._cancel()

    def close(self) -> None:
        self._cancel()


# ---------------------------------------------------------------------- the family base


class SpeechModel:
    """What every loaded text-to-speech family shares: the engine that owns the model, the codec, results
    and streams. ``generate`` and ``stream`` are safe to call from many threads at once, ``agenerate`` and
    ``astream`` from many asyncio tasks: concurrent calls are decoded together by the one engine thread.

    A family implements ``generate`` (its options as keyword parameters), ``_requests(scripts, options)``,
    ``openai_options(fields)`` and, optionally, ``_words(state)``."""

    family = ""  # registry name: "dia1", "dia2"
    #: Audio per streamed chunk when the caller says nothing.
    default_chunk_seconds = 0.37

    def __init__(self, model, codec, generator, *, model_id: str, variant: str, max_queue: int | None = None):
        self.model = model
        self.codec = codec
        self.model_id = model_id
        self.variant = variant
        self.config = model.config
        self.engine = Engine(generator, max_queue=max_queue)
        #: The speech recognizer that transcribes voice prompts given without a transcript: a loaded
        #: ``faster_dia.asr`` recognizer, a model name or directory, or None for the default one (loaded on
        #: first need).
        self.asr = None

    #: The voice library that ``voice=`` names are looked up in (``faster_dia.VoiceLibrary``); None: none.
    voices = None

    def _voice_choice(self, voice: Any, voices: Any) -> tuple[dict[str, SpeakerVoice], int | None]:
        """The speakers' voices of a request (``"S1"``/``"S2"`` → voice) and the seed a built-in voice name
        stands for (None when no built-in name was given). ``voice`` is speaker 1's; ``voices`` maps speakers
        to voices. A voice is a stored voice's name or id, a :class:`~faster_dia.voices.Voice`, OpenAI's
        ``{"id": ...}``, a built-in name (alloy, echo, ...: a fixed seed, no clip), or a path to a clip, which
        is transcribed automatically."""
        if voice is not None and voices is not None:
            raise InvalidInputError("Give either voice (speaker 1) or voices (per speaker), not both.", param="voices")
        if voices is None:
            wanted = {} if voice is None else {"S1": voice}
        elif isinstance(voices, dict):
            wanted = {}
            for key, value in voices.items():
                speaker = str(key).strip("[]").upper()
                if speaker not in ("S1", "S2"):
                    raise InvalidInputError(f"voices keys are the speakers S1 and S2, got {key!r}.", param="voices")
                wanted[speaker] = value
            if "S2" in wanted and "S1" not in wanted:
                raise InvalidInputError("voices needs S1 when it has S2 (the prompt starts with speaker 1).",
                                        param="voices")
        else:
            raise InvalidInputError("voices maps speakers to voices, e.g. {\"S1\": \"alice\", \"S2\": \"bob\"}.",
                                    param="voices")
        from .voices import BUILTIN_VOICES, Voice, builtin_seed

        speakers: dict[str, SpeakerVoice] = {}
        seed = None
        param = "voice" if voices is None else "voices"
        for speaker in sorted(wanted):
            ref = _voice_reference(wanted[speaker], param)
            if isinstance(ref, str) and ref.strip().lower() in BUILTIN_VOICES:
                if speaker == "S1":
                    seed = builtin_seed(ref.strip().lower())
                continue
            if isinstance(ref, Voice):
                speakers[speaker] = self._stored_voice(ref, param)
            elif isinstance(ref, str) and self.voices is not None and ref in self.voices:
                speakers[speaker] = self._stored_voice(self.voices.get(ref, param=param), param)
            elif isinstance(ref, (str, os.PathLike)) and os.path.isfile(ref):
                prompt = coerce_prompt_audio(ref, self.codec, param=param, sample_rate=None, rate_param=param)
                text, words = _text_and_words(self._transcribe(prompt.pcm, param))
                speakers[speaker] = SpeakerVoice(prompt.codes, text, words)
            elif self.voices is not None:
                self.voices.get(str(ref), param=param)  # raises NotFoundError naming the stored voices
            else:
                raise InvalidInputError(
                    f"There is no voice {ref!r}: it is not a built-in name ({', '.join(BUILTIN_VOICES)}) nor an "
                    "audio file, and no voice library is set (faster_dia.load(..., voices=DIR)).", param=param)
        return speakers, seed

    def _stored_voice(self, voice: Any, param: str) -> SpeakerVoice:
        """A stored voice's codes for this model's codec (cached beside the voice) and its transcript, which
        is made and kept the first time when the voice was stored without one."""
        if voice.transcript is None:
            voice.keep_transcript(*_text_and_words(self._transcribe(voice.load_audio(self.sample_rate)[0], param)))
        return SpeakerVoice(voice.codes(self.codec), voice.transcript, voice.words)

    def _transcribe(self, pcm: np.ndarray, param: str):
        """A voice prompt's words (text and word times, a ``faster_dia.asr.Transcript``), for prompts given
        without their transcript."""
        recognizer = self.asr
        if recognizer is None or isinstance(recognizer, (str, os.PathLike)):
            from . import asr

            self.asr = recognizer = asr.load(recognizer, param=param)
        elif hasattr(recognizer, "load"):  # a LazyRecognizer shared with a server: loaded on first need
            recognizer = recognizer.load()
        return recognizer.transcribe(pcm, sample_rate=self.sample_rate)

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

    def close(self) -> None:
        """Stop the engine thread (requests still running end with CancelledError)."""
        self.engine.close()

    # ------------------------------------------------------------------ family hooks

    def _requests(self, scripts: list[str], options: dict[str, Any]) -> list[Any]:
        raise NotImplementedError

    def openai_options(self, fields: dict[str, Any]) -> dict[str, Any]:
        """Options for this family from the fields of an OpenAI-shaped speech request (``temperature``,
        ``top_p``, ``top_k``, ``cfg_scale``, ``max_new_tokens``, ``seed``; each may be absent). Fields that do
        not apply to the family are dropped, so clients that always send them keep working."""
        raise NotImplementedError

    def _words(self, state: Any) -> list[tuple[str, float]]:
        return []

    def _input_tokens(self, request: Any) -> int:
        raise NotImplementedError

    # ------------------------------------------------------------------ options

    @classmethod
    def option_defaults(cls) -> dict[str, Any]:
        """The options ``generate`` takes (besides the script and ``progress``) with their defaults."""
        parameters = inspect.signature(cls.generate).parameters
        return {name: p.default for name, p in parameters.items()
                if p.kind is inspect.Parameter.KEYWORD_ONLY and name != "progress"}

    @classmethod
    def _options(cls, options: dict[str, Any]) -> dict[str, Any]:
        """``options`` completed with the defaults; unknown names are an error."""
        defaults = cls.option_defaults()
        unknown = sorted(set(options) - set(defaults))
        if unknown:
            raise InvalidInputError(f"Unknown option(s) for {cls.__name__}: {', '.join(unknown)}.", param=unknown[0])
        complete = {**defaults, **options}
        if "continuity" in complete:
            from .longform import CONTINUITY_MODES

            if complete["continuity"] not in CONTINUITY_MODES:
                raise InvalidInputError(f"continuity must be one of {', '.join(CONTINUITY_MODES)}, got "
                                        f"{complete['continuity']!r}.", param="continuity")
        return complete

    @classmethod
    def _sampling(cls, options: dict[str, Any]) -> dict[str, Any]:
        """The family's sampling parameters from complete options, each checked against its range."""
        raise NotImplementedError

    @classmethod
    def check_options(cls, options: dict[str, Any]) -> None:
        """Check option names, types and ranges without a model, so a caller can refuse bad options before
        spending time on loading (the model's own limits, such as its context, are checked per request)."""
        complete = cls._options(options)
        cls._sampling(complete)
        seeds = complete["seed"] if isinstance(complete["seed"], (list, tuple)) else [complete["seed"]]
        for seed in seeds:
            resolve_seed(seed)
        if complete["max_new_tokens"] is not None:
            check_integer("max_new_tokens", complete["max_new_tokens"], 0, 1 << 62)

    def _chunk_frames(self, chunk_seconds: float | None, chunk_frames: int | None) -> int:
        if chunk_frames is not None:
            return check_integer("chunk_frames", chunk_frames, 1, 1 << 20)
        seconds = self.default_chunk_seconds if chunk_seconds is None else \
            check_number("chunk_seconds", chunk_seconds, 0.0, 3600.0, low_open=True)
        return max(1, round(seconds * self.frame_rate))

    def _scripts(self, script: str | Sequence[str]) -> tuple[list[str], bool]:
        single = isinstance(script, str)
        scripts = [script] if single else list(script)
        if not scripts:
            raise InvalidInputError("No script given.", param="input")
        return scripts, single

    # ------------------------------------------------------------------ calls

    def _generate(self, script: str | Sequence[str], options: dict[str, Any],
                  progress: Callable[[Progress], None] | None) -> Speech | list[Speech]:
        scripts, single = self._scripts(script)
        options = self._options(options)
        if any(self._is_long(s, options) for s in scripts):
            results = [self._generate_long(s, {**options, "seed": sd}, progress)
                       for s, sd in zip(scripts, per_item(options["seed"], len(scripts), "seed", offset_ints=True),
                                        strict=True)]
            return results[0] if single else results
        requests = self._requests(scripts, options)
        submissions = self.engine.submit(requests)
        start = time.perf_counter()
        codes: list[torch.Tensor] = []
        try:
            for sub in submissions:
                while True:
                    try:
                        kind, payload = sub.events.get(timeout=0.1 if progress is not None else None)
                    except queue.Empty:
                        frames = sum(s.frames for s in submissions)
                        progress(Progress(frames, frames / self.frame_rate, time.perf_counter() - start))
                        continue
                    if kind == "error":
                        raise payload
                    codes.append(payload)
                    break
            results = self._speeches(codes, submissions)
            if progress is not None:
                frames = sum(len(s.codes) for s in results)
                progress(Progress(frames, frames / self.frame_rate, time.perf_counter() - start))
        finally:
            for sub in submissions:
                sub.cancel()
        return results[0] if single else results

    def _generate_long(self, script: str, options: dict[str, Any],
                       progress: Callable[[Progress], None] | None) -> Speech:
        from .longform import LongSpeechStream

        stream = self._long_stream(LongSpeechStream, script, options, self._chunk_frames(None, None))
        start = time.perf_counter()
        pieces = []
        for audio in stream:
            pieces.append(audio)
            if progress is not None:
                progress(Progress(stream.frames, stream.seconds, time.perf_counter() - start))
        return self._long_speech(stream, pieces)

    def _long_speech(self, stream: Any, pieces: list[np.ndarray]) -> Speech:
        audio = np.concatenate(pieces) if pieces else np.zeros(0, np.float32)
        codes = torch.cat(stream.codes).numpy() if stream.codes else np.zeros((0, self.codec.num_codebooks), np.int64)
        return Speech(audio=audio, sample_rate=self.sample_rate, codes=codes, seed=stream.seed,
                      timestamps=list(stream.words) if self._has_words else None)

    async def agenerate(self, script: str | Sequence[str], **options: Any) -> Speech | list[Speech]:
        """``generate`` for asyncio: awaits the engine without a thread, decodes in the output pool."""
        scripts, single = self._scripts(script)
        options = self._options(options)
        if any(self._is_long(s, options) for s in scripts):
            from .longform import AsyncLongSpeechStream

            results = []
            seeds = per_item(options["seed"], len(scripts), "seed", offset_ints=True)
            for s, seed in zip(scripts, seeds, strict=True):
                stream = self._long_stream(AsyncLongSpeechStream, s, {**options, "seed": seed},
                                           self._chunk_frames(None, None))
                pieces = [audio async for audio in stream]
                results.append(self._long_speech(stream, pieces))
            return results[0] if single else results
        requests = self._requests(scripts, options)
        submissions = self.engine.submit(requests)
        codes = []
        try:
            for sub in submissions:
                kind, payload = await sub.events.aget()
                if kind == "error":
                    raise payload
                codes.append(payload)
            results = await in_output_pool(self._speeches, codes, submissions)
        finally:
            for sub in submissions:
                sub.cancel()
        return results[0] if single else results

    def stream(self, script: str, *, chunk_seconds: float | None = None, chunk_frames: int | None = None,
               **options: Any) -> SpeechStream:
        """Like ``generate`` for one script, but returns a :class:`SpeechStream` that yields audio chunks as
        frames become final. ``chunk_seconds`` sets how much audio each chunk carries at least (or
        ``chunk_frames`` in codec frames). The request is queued at once; close the stream to cancel it. A
        long script streams its chunks one after the other, joined (see faster_dia.longform)."""
        return self._open(SpeechStream, script, chunk_seconds, chunk_frames, options)

    def astream(self, script: str, *, chunk_seconds: float | None = None, chunk_frames: int | None = None,
                **options: Any) -> AsyncSpeechStream:
        """``stream`` for asyncio consumers: ``async for chunk in tts.astream(...)``."""
        return self._open(AsyncSpeechStream, script, chunk_seconds, chunk_frames, options)

    def _open(self, kind: type[_StreamBase], script: Any, chunk_seconds: float | None, chunk_frames: int | None,
              options: dict[str, Any]) -> Any:
        if not isinstance(script, str):
            raise InvalidInputError("stream() takes one script; use generate() for a batch.", param="input")
        frames = self._chunk_frames(chunk_seconds, chunk_frames)
        options = self._options(options)
        if self._is_long(script, options):
            from .longform import AsyncLongSpeechStream, LongSpeechStream

            long_kind = AsyncLongSpeechStream if kind is AsyncSpeechStream else LongSpeechStream
            return self._long_stream(long_kind, script, options, frames)
        return self._open_one(kind, script, options, frames)

    def _open_one(self, kind: type[_StreamBase], script: str, options: dict[str, Any], frames: int) -> Any:
        (request,) = self._requests([script], options)
        return kind(self, request, input_tokens=self._input_tokens(request), chunk_frames=frames)

    def _long_stream(self, kind: type, script: str, options: dict[str, Any], frames: int) -> Any:
        from .longform import LongFormPlan

        plan = LongFormPlan.make(self, script, options)
        return kind(self, plan, frames, self._chunk_opener(kind.__name__.startswith("Async")))

    def _chunk_opener(self, asynchronous: bool) -> Callable[[list[str], list[dict[str, Any]], int], list[Any]]:
        """Opens chunks of a long script (blocking or asyncio streams), all in one engine submission, so
        chunks opened together are admitted together and decoded as one batch."""
        kind = AsyncSpeechStream if asynchronous else SpeechStream

        def open_chunks(texts: list[str], options: list[dict[str, Any]], frames: int) -> list[Any]:
            requests = [self._requests([text], opts)[0] for text, opts in zip(texts, options, strict=True)]
            submissions = self.engine.submit(requests, chunk_frames=frames)
            return [kind(self, request, input_tokens=self._input_tokens(request), chunk_frames=frames,
                         submission=submission) for request, submission in zip(requests, submissions, strict=True)]

        return open_chunks

    # ------------------------------------------------------------------ text that arrives while speaking

    def open_text_stream(self, *, chunk_seconds: float | None = None, chunk_frames: int | None = None,
                         **options: Any):
        """A :class:`~faster_dia.textstream.TextSpeechStream` to write text into (``append``, ``flush``,
        ``end``, from any thread) while iterating its audio here (blocking). Options as ``generate``'s."""
        from .textstream import TextSpeechStream

        return TextSpeechStream(self, self._options(options), self._chunk_frames(chunk_seconds, chunk_frames),
                                asynchronous=False)

    def aopen_text_stream(self, *, chunk_seconds: float | None = None, chunk_frames: int | None = None,
                          **options: Any):
        """``open_text_stream`` whose audio is read with ``async for``."""
        from .textstream import TextSpeechStream

        return TextSpeechStream(self, self._options(options), self._chunk_frames(chunk_seconds, chunk_frames),
                                asynchronous=True)

    def stream_text(self, pieces: Any, **options: Any):
        """Audio for text that arrives in ``pieces`` (any iterable of strings, e.g. an LLM's tokens), yielded
        while the pieces still come: iterate the returned stream. Dia2 starts speaking after the first few
        words; Dia-1.6B after the first complete sentence."""
        from .textstream import feed

        stream = self.open_text_stream(**options)
        feed(stream, pieces)
        return stream

    def astream_text(self, pieces: Any, **options: Any):
        """``stream_text`` for asyncio: ``pieces`` may be an async iterable; ``async for`` the audio."""
        from .textstream import afeed

        stream = self.aopen_text_stream(**options)
        task = asyncio.get_running_loop().create_task(afeed(stream, pieces))
        stream._feeder = task  # kept referenced while it runs
        return stream

    # ------------------------------------------------------------------ long scripts (family hooks)

    def _is_long(self, script: str, options: dict[str, Any]) -> bool:
        """Whether ``script`` is spoken in several chunks (faster_dia.longform) rather than one request."""
        return False

    def _chunk_fits(self, chunk: str, options: dict[str, Any]) -> bool:
        raise NotImplementedError

    def _has_voice(self, options: dict[str, Any]) -> bool:
        """Whether the options carry the user's voice (which then is every chunk's reference)."""
        from .voices import BUILTIN_VOICES

        voice = options.get("voice")
        named = isinstance(voice, str) and voice.strip().lower() in BUILTIN_VOICES
        return (voice is not None and not named) or options.get("voices") is not None

    def _reference_chunk(self, result: Any) -> Any:
        """A spoken chunk as the reference of a later one (None: not usable as a reference)."""
        raise NotImplementedError

    def _with_reference(self, options: dict[str, Any], reference: Any) -> dict[str, Any]:
        raise NotImplementedError

    def _speech(self, codes: torch.Tensor, submission: Submission) -> Speech:
        return self._speeches([codes], [submission])[0]

    def _speeches(self, codes: list[torch.Tensor], submissions: Sequence[Submission]) -> list[Speech]:
        """The results of one call's requests, their codes decoded together (one batched codec call where the
        lengths fit, the same samples as one call each)."""
        audio = self.codec.decode_many(codes)
        return [Speech(audio=np.clip(a, -1.0, 1.0), sample_rate=self.sample_rate, codes=c.numpy(),
                       seed=sub.request.seed, timestamps=self._words(sub.state) if self._has_words else None)
                for a, c, sub in zip(audio, codes, submissions, strict=True)]

    _has_words = False

    async def agenerate_each(self, script: str, count: int, **options: Any) -> AsyncIterator[tuple[int, Speech]]:
        """``count`` results for one script, yielded as ``(index, speech)`` each as soon as it is ready (not in
        order). They are submitted together, so the engine decodes them as one batch; an integer ``seed``
        counts up (result i has seed + i). A long script is spoken result after result. An error ends the
        iteration; leaving it early cancels the results not yet yielded."""
        count = check_integer("count", count, 1, 1 << 16)
        options = self._options(options)
        if self._is_long(script, options):
            for index, seed in enumerate(per_item(options["seed"], count, "seed", offset_ints=True)):
                yield index, await self.agenerate(script, **{**options, "seed": seed})
            return
        # Preparing requests may encode voice clips or transcribe them: not on the event loop.
        requests = await in_output_pool(self._requests, [script] * count, options)
        submissions = self.engine.submit(requests)
        waiting = {asyncio.ensure_future(sub.events.aget()): index for index, sub in enumerate(submissions)}
        try:
            while waiting:
                done, _ = await asyncio.wait(waiting, return_when=asyncio.FIRST_COMPLETED)
                for future in sorted(done, key=waiting.get):
                    index = waiting.pop(future)
                    kind, payload = future.result()
                    if kind == "error":
                        raise payload
                    yield index, await in_output_pool(self._speech, payload, submissions[index])
        finally:
            for future in waiting:
                future.cancel()
            for sub in submissions:
                sub.cancel()
