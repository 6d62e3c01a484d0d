"""Speech recognition with Whisper on CTranslate2 (faster-whisper): transcripts with segment and word times.

It transcribes voice prompts that come without their transcript, and serves OpenAI's
``/v1/audio/transcriptions``. faster-whisper is the optional ``asr`` extra, so this module imports without it;
:func:`load` says how to install it when it is missing.

A :class:`SpeechRecognizer` is safe to share between threads: CTranslate2 models are thread-safe and queue
concurrent calls for their worker, and faster-whisper keeps no per-call state on the model, so no lock is
needed around ``transcribe``.
"""

from __future__ import annotations

import os
import threading
import weakref
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, BinaryIO

import numpy as np

from .audio import decode_audio, resample
from .errors import CheckpointError, InvalidInputError, ModelNotFoundError
from .hub import looks_like_repo_id, open_repo

#: The default model. base.en is the smallest English Whisper whose transcripts of short, clean voice
#: clips are reliably right (tiny.en often mishears a word or two); it runs many times faster than real time
#: on a CPU, and its 145 MB download is a fraction of small.en's 480 MB. Dia speaks English only, so the
#: English-only model loses nothing.
DEFAULT_MODEL = "base.en"
#: Overrides :data:`DEFAULT_MODEL` (a size name, a Hub id or a local CTranslate2 directory).
MODEL_ENV = "FASTER_DIA_ASR_MODEL"
#: Whisper's input rate; everything is resampled to it.
SAMPLE_RATE = 16_000
TASKS = ("transcribe", "translate")
#: Whisper's fallback schedule: temperature 0 first, hotter only where a window decodes badly (OpenAI's
#: ``temperature=0`` behaves so).
FALLBACK_TEMPERATURES = (0.0, 0.2, 0.4, 0.6, 0.8, 1.0)

_INSTALL_HINT = "pip install 'faster-dia[asr]'"


@dataclass
class Word:
    word: str  # without Whisper's leading space
    start: float  # seconds from the start of the audio
    end: float
    probability: float


@dataclass
class Segment:
    id: int  # 0, 1, 2, ... in order
    start: float
    end: float
    text: str  # as Whisper writes it, with its leading space, so the segments' texts join into the transcript
    words: list[Word]  # empty unless word timestamps were asked for
    avg_logprob: float
    no_speech_prob: float
    temperature: float
    seek: int = 0  # Whisper's window offset, in 10 ms frames
    tokens: list[int] = field(default_factory=list)
    compression_ratio: float = 0.0


@dataclass
class Transcript:
    text: str
    language: str  # ISO-639-1 code, e.g. "en"
    duration: float  # seconds of input audio
    segments: list[Segment]
    words: list[Word]  # every segment's words, in order


AudioInput = np.ndarray | str | os.PathLike | bytes | bytearray | memoryview | BinaryIO


class SpeechRecognizer:
    """A loaded Whisper model. Build it with :func:`load`."""

    #: Beam search width: on short clips it costs no more time than greedy decoding here and mishears less.
    beam_size = 5

    def __init__(self, whisper: Any, model_id: str, *, device: str, compute_type: str):
        self._whisper = whisper
        self.model_id = model_id
        self.device = device
        self.compute_type = compute_type

    def __repr__(self) -> str:
        return f"SpeechRecognizer({self.model_id!r}, device={self.device!r}, compute_type={self.compute_type!r})"

    @property
    def multilingual(self) -> bool:
        """False for the English-only models (``*.en``), which can neither detect a language nor translate."""
        return bool(self._whisper.model.is_multilingual)

    @property
    def languages(self) -> list[str]:
        return list(self._whisper.supported_languages)

    def transcribe(
        self, audio: AudioInput, *, sample_rate: int | None = None, language: str | None = None,
        prompt: str | None = None, temperature: float = 0.0, task: str = "transcribe",
        word_timestamps: bool = True,
    ) -> Transcript:
        """The transcript of ``audio``.

        ``audio`` is float32 mono samples at ``sample_rate`` (required for arrays), or a file: a path, its
        bytes or a binary file object, in any format FFmpeg reads (its own rate is used). ``language`` is an
        ISO-639-1 code (detected when omitted, for multilingual models); ``prompt`` is text in the style or
        vocabulary to expect; ``temperature`` 0 decodes with beam search and falls back to sampling, hotter
        step by step, where a window decodes badly (repeats itself or is unsure), as OpenAI's does; a value
        up to 1 samples at that temperature. ``task="translate"``
        writes English text (multilingual models only).
        """
        segments, info = self._start(audio, sample_rate=sample_rate, language=language, prompt=prompt,
                                     temperature=temperature, task=task, word_timestamps=word_timestamps)
        done = list(segments)
        text = "".join(segment.text for segment in done).strip()
        words = [word for segment in done for word in segment.words]
        return Transcript(text=text, language=info.language, duration=float(info.duration), segments=done,
                          words=words)

    def transcribe_segments(
        self, audio: AudioInput, *, sample_rate: int | None = None, language: str | None = None,
        prompt: str | None = None, temperature: float = 0.0, task: str = "transcribe",
        word_timestamps: bool = True,
    ) -> Iterator[Segment]:
        """Like :meth:`transcribe`, but the segments one by one as they are decoded (for streaming).

        Everything that can fail on the input (decoding, the options, language detection) happens in this
        call, before the first segment is asked for.
        """
        segments, _ = self._start(audio, sample_rate=sample_rate, language=language, prompt=prompt,
                                  temperature=temperature, task=task, word_timestamps=word_timestamps)
        return segments

    # -- internals -------------------------------------------------------------------------------------

    def _start(self, audio: AudioInput, *, sample_rate: int | None, language: str | None, prompt: str | None,
               temperature: float, task: str, word_timestamps: bool) -> tuple[Iterator[Segment], Any]:
        if task not in TASKS:
            raise InvalidInputError(f"task must be one of {', '.join(TASKS)}, got {task!r}.", param="task")
        if task == "translate" and not self.multilingual:
            raise InvalidInputError(
                f"The speech recognition model {self.model_id!r} is English-only and cannot translate; "
                "serve a multilingual Whisper model (e.g. 'small') to translate.", param="model")
        temperatures = _temperatures(temperature)
        language = self._check_language(language)
        samples = _samples_16k(audio, sample_rate)
        duration = samples.size / SAMPLE_RATE
        raw, info = self._whisper.transcribe(
            samples, language=language, task=task, initial_prompt=prompt or None, temperature=temperatures,
            beam_size=self.beam_size, word_timestamps=word_timestamps,
            # Silero VAD drops the silence around and inside a clip before Whisper sees it: Whisper tends to
            # invent words ("You", "Thank you.") for silence and noise. Times stay those of the input.
            vad_filter=True,
        )
        return _converted(raw, duration), info

    def _check_language(self, language: str | None) -> str | None:
        if language is None or not language.strip():
            return None
        code = language.strip().lower().replace("_", "-").split("-")[0]
        if code in self.languages:
            return code
        if not self.multilingual:
            raise InvalidInputError(
                f"The speech recognition model {self.model_id!r} is English-only; language must be 'en' "
                f"(or omitted), got {language!r}.", param="language")
        raise InvalidInputError(
            f"Unsupported language {language!r}; give an ISO-639-1 code Whisper knows, such as 'en', 'de' or "
            "'ja'.", param="language")


def _temperatures(temperature: float) -> tuple[float, ...]:
    try:
        value = float(temperature)
    except (TypeError, ValueError):
        raise InvalidInputError(f"temperature must be a number from 0 to 1, got {temperature!r}.",
                                param="temperature") from None
    if not 0.0 <= value <= 1.0:
        raise InvalidInputError(f"temperature must be from 0 to 1, got {temperature!r}.", param="temperature")
    return FALLBACK_TEMPERATURES if value == 0.0 else (value,)


def _is_file_source(audio: Any) -> bool:
    return isinstance(audio, (str, os.PathLike, bytes, bytearray, memoryview)) or hasattr(audio, "read")


def _samples_16k(audio: AudioInput, sample_rate: int | None) -> np.ndarray:
    """Mono float32 samples at 16 kHz from samples at ``sample_rate`` or from a file."""
    if _is_file_source(audio):
        samples, _ = decode_audio(audio, sample_rate=SAMPLE_RATE)
        return samples
    if sample_rate is None or int(sample_rate) <= 0:
        raise InvalidInputError(
            f"sample_rate (a positive number of samples per second) is required when the audio is an array of "
            f"samples, got {sample_rate!r}.", param="sample_rate")
    if hasattr(audio, "detach"):  # a torch tensor
        audio = audio.detach().float().cpu().numpy()
    samples = np.asarray(audio, dtype=np.float32)
    if samples.ndim == 2 and 1 in samples.shape:
        samples = samples.reshape(-1)
    if samples.ndim != 1:
        raise InvalidInputError(f"The audio must be mono (a 1-D array of samples), got shape {samples.shape}.",
                                param="audio")
    if samples.size == 0:
        raise InvalidInputError("The audio contains no samples.", param="audio")
    if not np.isfinite(samples).all():
        raise InvalidInputError("The audio contains NaN or infinite samples.", param="audio")
    if int(sample_rate) != SAMPLE_RATE:
        samples = resample(samples, int(sample_rate), SAMPLE_RATE)
    return samples


def _seconds(value: float, duration: float) -> float:
    """A time within the clip, to the millisecond (Whisper's own precision is 20 ms)."""
    return round(min(max(float(value), 0.0), duration), 3)


def _converted(raw: Iterator[Any], duration: float) -> Iterator[Segment]:
    """faster-whisper's segments as ours: ids from 0, times clamped to the clip, words without the space."""
    try:
        for index, segment in enumerate(raw):
            words = [
                Word(word=w.word.strip(), start=_seconds(w.start, duration), end=_seconds(w.end, duration),
                     probability=float(w.probability))
                for w in segment.words or () if w.word.strip()
            ]
            yield Segment(
                id=index, start=_seconds(segment.start, duration), end=_seconds(segment.end, duration),
                text=segment.text, words=words, avg_logprob=float(segment.avg_logprob),
                no_speech_prob=float(segment.no_speech_prob), temperature=float(segment.temperature or 0.0),
                seek=int(segment.seek), tokens=list(segment.tokens),
                compression_ratio=float(segment.compression_ratio),
            )
    finally:
        close = getattr(raw, "close", None)
        if close is not None:
            close()


# ---------------------------------------------------------------------- loading


def configured_model(model: str | os.PathLike | None = None) -> str:
    """The model :func:`load` would use for ``model``: itself, else ``$FASTER_DIA_ASR_MODEL``, else
    :data:`DEFAULT_MODEL`."""
    if model is not None and os.fspath(model):
        return os.fspath(model)
    return os.environ.get(MODEL_ENV, "").strip() or DEFAULT_MODEL


def public_name(model: str) -> str:
    """The name a model goes by in listings: a size name or Hub id as given, a local directory by its name."""
    path = Path(model).expanduser()
    return path.resolve().name if path.is_dir() else model


# Loaded models by (directory, device, compute type, threads), kept while someone holds them, so the server
# and the voice-prompt transcription share one copy.
_loaded: weakref.WeakValueDictionary[tuple, SpeechRecognizer] = weakref.WeakValueDictionary()
_load_lock = threading.Lock()


def load(
    model: str | os.PathLike | None = None, *, device: str | None = None, compute_type: str | None = None,
    param: str | None = None, cpu_threads: int | None = None,
) -> SpeechRecognizer:
    """Load a Whisper model for speech recognition.

    ``model`` is a Whisper size name ("tiny.en", "base.en", "small.en", "small", ... "large-v3"), a Hub id
    of a CTranslate2 Whisper conversion (``org/name``), or a local directory holding one (``model.bin``,
    ``config.json``, ``tokenizer.json``, ``vocabulary.*``). Without it, ``$FASTER_DIA_ASR_MODEL``, else
    :data:`DEFAULT_MODEL` ("base.en": see there why). Files come from the Hugging Face cache, downloaded
    when missing and possible; offline and not cached is a ModelNotFoundError that says how to get them.

    ``device`` is "cuda" (or "cuda:N") when CUDA is available, else "cpu"; ``compute_type`` defaults to
    float16 on CUDA and int8 on the CPU. ``cpu_threads`` defaults to ``$OMP_NUM_THREADS``, else up to 4.
    ``param`` names the request field the model is for, in errors.
    """
    try:
        import ctranslate2
        import faster_whisper
    except ImportError:
        raise InvalidInputError(
            f"Speech recognition is not installed: it needs the asr extra: {_INSTALL_HINT} "
            "(faster-whisper).", param=param) from None

    name = configured_model(model)
    device_name, device_index = _device(device, ctranslate2, param)
    compute = compute_type or ("float16" if device_name == "cuda" else "int8")
    threads = _cpu_threads(cpu_threads)
    directory = _model_directory(name, param)
    key = (directory, device_name, device_index, compute, threads)
    with _load_lock:
        recognizer = _loaded.get(key)
        if recognizer is not None:
            return recognizer
        try:
            whisper = faster_whisper.WhisperModel(directory, device=device_name, device_index=device_index,
                                                  compute_type=compute, cpu_threads=threads)
        except ValueError as exc:  # CTranslate2's answer to a compute type the device lacks
            raise InvalidInputError(f"Cannot load {name!r} on {device_name} with compute type {compute!r}: {exc}",
                                    param="compute_type") from None
        except RuntimeError as exc:
            if device_name == "cuda" and "CUDA" in str(exc):
                raise InvalidInputError(f"Cannot load {name!r} on CUDA: {exc}", param="device") from None
            raise CheckpointError(f"{public_name(name)} is not a loadable CTranslate2 Whisper model: {exc}") \
                from None
        recognizer = SpeechRecognizer(whisper, public_name(name), device=device_name, compute_type=compute)
        _loaded[key] = recognizer
        return recognizer


def _device(device: str | None, ctranslate2: Any, param: str | None) -> tuple[str, int]:
    text = (device or "auto").strip().lower()
    if text == "auto":
        return ("cuda", 0) if ctranslate2.get_cuda_device_count() > 0 else ("cpu", 0)
    kind, _, index = text.partition(":")
    if kind == "cpu" and not index:
        return "cpu", 0
    if kind == "cuda" and (not index or index.isdigit()):
        return "cuda", int(index or 0)
    raise InvalidInputError(f"device must be 'cpu', 'cuda', 'cuda:N' or 'auto', got {device!r}.", param="device")


def _cpu_threads(cpu_threads: int | None) -> int:
    if cpu_threads is not None:
        if cpu_threads < 0:
            raise InvalidInputError(f"cpu_threads must be 0 or more, got {cpu_threads}.", param="cpu_threads")
        return cpu_threads
    if os.environ.get("OMP_NUM_THREADS"):
        return 0  # CTranslate2 reads it itself
    return min(4, os.cpu_count() or 1)


def _model_directory(name: str, param: str | None) -> str:
    """A local directory holding the CTranslate2 model ``name``: itself, or its Hub cache snapshot."""
    path = Path(name).expanduser()
    if path.is_dir():
        if not (path / "model.bin").is_file():
            raise ModelNotFoundError(
                f"The speech recognition model directory {path} has no model.bin; pass a directory holding a "
                "CTranslate2 Whisper model (ct2-transformers-converter's output, or a Systran/faster-whisper-* "
                "download).", param=param)
        return str(path.resolve())
    if path.exists():
        raise ModelNotFoundError(f"The speech recognition model path {name} is a file, not a directory.",
                                 param=param)
    sizes = _whisper_sizes()
    repo_id = sizes.get(name) or (name if looks_like_repo_id(name) else None)
    if repo_id is None and (os.sep in name or name.startswith((".", "~"))):
        raise ModelNotFoundError(f"The speech recognition model directory {name} does not exist.", param=param)
    if repo_id is None:
        raise ModelNotFoundError(
            f"Unknown speech recognition model {name!r}: give a Whisper size ({', '.join(sizes)}), the Hub id of a "
            "CTranslate2 Whisper model, or a local directory holding one.", param=param)
    repo = open_repo(repo_id, what="speech recognition model")
    try:
        model_bin = repo.get("model.bin")
        for filename in ("config.json", "tokenizer.json"):
            repo.get(filename)
        for optional in ("vocabulary.txt", "vocabulary.json", "preprocessor_config.json"):
            if repo.has(optional):
                repo.get(optional)
    except ModelNotFoundError as exc:
        raise ModelNotFoundError(
            f"{exc.message} Or set {MODEL_ENV} to a local CTranslate2 Whisper directory.", param=param) from None
    return str(model_bin.parent)


def _whisper_sizes() -> dict[str, str]:
    """Size name → Hub id, from faster-whisper's own table (the names it documents)."""
    from faster_whisper import utils

    table = getattr(utils, "_MODELS", None)
    if isinstance(table, dict):
        return dict(table)
    return {name: f"Systran/faster-whisper-{name}" for name in utils.available_models()}


# ---------------------------------------------------------------------- for the server


class LazyRecognizer:
    """The server's recognizer: loaded on the first request that needs it, once, in a worker thread.

    ``model`` is anything :func:`load` takes (None: the default, ``$FASTER_DIA_ASR_MODEL`` respected, read
    now), or an already loaded :class:`SpeechRecognizer` to share.
    """

    #: Transcriptions running at once. CTranslate2 runs one at a time per model worker anyway; the limit keeps
    #: waiting requests off the shared thread pool.
    MAX_CONCURRENT = 2

    def __init__(self, model: str | os.PathLike | SpeechRecognizer | None = None, *, device: str | None = None,
                 compute_type: str | None = None):
        self._recognizer: SpeechRecognizer | None = None
        if isinstance(model, SpeechRecognizer):
            self._recognizer = model
            self.model: str | None = None
            self.model_id = model.model_id
        else:
            self.model = configured_model(model)
            self.model_id = public_name(self.model)
        self.device = device
        self.compute_type = compute_type
        self._lock = threading.Lock()
        self._limiter: Any = None

    @property
    def loaded(self) -> bool:
        return self._recognizer is not None

    async def get(self) -> SpeechRecognizer:
        """The loaded recognizer; the first call loads it off the event loop and concurrent callers wait."""
        if self._recognizer is not None:
            return self._recognizer
        import anyio

        return await anyio.to_thread.run_sync(self.load)

    def load(self) -> SpeechRecognizer:
        """The loaded recognizer, loading it in this thread if needed."""
        with self._lock:
            if self._recognizer is None:
                self._recognizer = load(self.model, device=self.device, compute_type=self.compute_type,
                                        param="model")
            return self._recognizer

    @property
    def limiter(self) -> Any:
        """An ``anyio.CapacityLimiter`` for running transcriptions in worker threads."""
        if self._limiter is None:
            import anyio

            self._limiter = anyio.CapacityLimiter(self.MAX_CONCURRENT)
        return self._limiter
