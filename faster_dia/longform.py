"""Scripts longer than one request: cut into chunks, spoken in one voice, joined into one stream.

A script that does not fit one request of its model (Dia-1.6B: 1024 text bytes and 3072 decoder positions,
voice prompt included; Dia2: a 1500-frame context), or that would run longer than the model speaks well,
is cut at speaker turns, then sentence ends, then clause marks (:func:`faster_dia.script.split_script`) into
chunks of the family's size, each starting with its speaker's tag.

Every chunk after the first is conditioned on a reference so the voice stays the same:

* ``continuity="first"`` (the default): every later chunk is prompted with the same reference, the user's
  voice (a voice, audio prompt or prefix) when one was given, else the first chunk's own audio and text.
  The later chunks do not depend on each other, so they are decoded together in one batch once the first is
  done: long text takes about the time of two chunks, and the voice cannot drift from chunk to chunk.
* ``continuity="previous"``: each chunk is prompted with the previous one (most natural flow from chunk to
  chunk, as if spoken on), so the chunks are made one after the other.

Chunk i uses seed + i, so the same seed gives the same long output. The chunks' audio is joined with the
silence between them trimmed to a natural pause and short fades, so no click or gap lands mid-sentence.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import numpy as np
import torch

from .errors import InvalidInputError
from .script import split_script

if TYPE_CHECKING:
    from .speech import SpeechModel

CONTINUITY_MODES = ("first", "previous")
DEFAULT_CONTINUITY = "first"

#: Joining: what counts as silence, the longest pause kept between chunks (and at a chunk's start), and the
#: fade applied at each join.
SILENCE_LEVEL = 0.01  # -40 dBFS
MAX_PAUSE_SECONDS = 0.4
MAX_LEAD_SECONDS = 0.1
FADE_SECONDS = 0.01


@dataclass
class ChunkResult:
    """What one spoken chunk leaves for the next: its codes, its text (with speaker tags), its words."""

    codes: torch.Tensor
    text: str
    words: list[tuple[str, float]]
    seconds: float


@dataclass
class LongFormPlan:
    """The chunks of one long script and the options of each chunk's request."""

    tts: SpeechModel
    chunks: list[str]
    options: dict[str, Any]
    seed: int
    continuity: str
    results: list[ChunkResult] = field(default_factory=list)

    @classmethod
    def make(cls, tts: SpeechModel, script: str, options: dict[str, Any], *, allow_empty: bool = False
             ) -> LongFormPlan:
        from .speech import resolve_seed

        continuity = options["continuity"]
        if continuity not in CONTINUITY_MODES:
            raise InvalidInputError(f"continuity must be one of {', '.join(CONTINUITY_MODES)}, got {continuity!r}.",
                                    param="continuity")
        chunks = split_script(script, lambda chunk: tts._chunk_fits(chunk, options))
        if not chunks and not allow_empty:
            raise InvalidInputError("The script is empty.", param="input")
        return cls(tts, chunks, options, resolve_seed(options["seed"]), continuity)

    @property
    def batched_after_first(self) -> bool:
        return self.continuity == "first"

    def chunk_options(self, index: int) -> dict[str, Any]:
        """The options of chunk ``index``'s request, its reference chosen from the chunks done so far."""
        options = {**self.options, "seed": self.seed + index}
        reference = None
        if index > 0:
            if self.continuity == "previous":
                reference = self.tts._reference_chunk(self.results[index - 1])
            elif not self.tts._has_voice(options):
                reference = self.tts._reference_chunk(self.results[0])
        return self.tts._with_reference(options, reference) if reference is not None else options


class Stitcher:
    """Joins the audio of consecutive chunks while it streams: a chunk's leading silence is cut to
    ``MAX_LEAD_SECONDS``, a silence at its end to ``MAX_PAUSE_SECONDS``, and each join gets short fades. Audio
    that might still turn out to be a trailing silence is held back until the chunk goes on or ends."""

    def __init__(self, sample_rate: int):
        self.rate = sample_rate
        self.emitted = 0  # samples sent so far
        self.chunk_start = 0  # where the current chunk's first kept sample lands in the output
        self.chunk_trimmed = 0  # samples cut from the current chunk's start
        self._first_chunk = True
        self._lead: list[np.ndarray] = []  # the current chunk's audio before its first sound
        self._started = False
        self._held: list[np.ndarray] = []  # quiet audio at the current end, not yet known to be a pause
        self._fade_in = False

    @property
    def started(self) -> bool:
        return self._started

    def start_chunk(self) -> None:
        self._lead, self._held, self._started = [], [], False
        self.chunk_trimmed = 0
        self._fade_in = not self._first_chunk

    def push(self, audio: np.ndarray) -> np.ndarray:
        out = []
        if not self._started:
            self._lead.append(audio)
            lead = np.concatenate(self._lead)
            loud = np.flatnonzero(np.abs(lead) > SILENCE_LEVEL)
            if loud.size == 0:
                return np.zeros(0, np.float32)
            keep_from = 0 if self._first_chunk else max(0, loud[0] - int(MAX_LEAD_SECONDS * self.rate))
            self.chunk_trimmed = keep_from
            self.chunk_start = self.emitted
            self._started = True
            audio = lead[keep_from:]
            if self._fade_in:
                audio = _fade(audio, self.rate, fade_in=True)
        loud = np.flatnonzero(np.abs(audio) > SILENCE_LEVEL)
        if loud.size == 0:
            self._held.append(audio)
            return self._emit(out)
        out.extend(self._held)
        out.append(audio[: loud[-1] + 1])
        # Always hold back the last FADE_SECONDS, so the chunk's end can be faded out however it ends.
        sound = np.concatenate(out)
        keep = min(sound.size, int(FADE_SECONDS * self.rate))
        self._held = [sound[sound.size - keep:], audio[loud[-1] + 1:]]
        return self._emit([sound[: sound.size - keep]])

    def end_chunk(self) -> np.ndarray:
        """The rest of the current chunk: its trailing silence cut to a pause, faded out."""
        self._first_chunk = False
        if not self._started:  # never above the silence level: kept as it is rather than lost
            self.chunk_start = self.emitted
            lead = np.concatenate(self._lead) if self._lead else np.zeros(0, np.float32)
            self._lead = []
            return self._emit([_fade(lead, self.rate, fade_in=True) if self._fade_in else lead])
        tail = np.concatenate(self._held) if self._held else np.zeros(0, np.float32)
        self._held = []
        fade = int(FADE_SECONDS * self.rate)
        return self._emit([_fade(tail[: fade + int(MAX_PAUSE_SECONDS * self.rate)], self.rate, fade_in=False)])

    def _emit(self, pieces: list[np.ndarray]) -> np.ndarray:
        audio = np.concatenate(pieces).astype(np.float32) if pieces else np.zeros(0, np.float32)
        self.emitted += audio.size
        return audio

    def word_offset(self) -> float:
        """Seconds to add to the current chunk's word times to place them on the joined timeline."""
        return (self.chunk_start - self.chunk_trimmed) / self.rate


def _fade(audio: np.ndarray, rate: int, *, fade_in: bool) -> np.ndarray:
    n = min(audio.size, int(FADE_SECONDS * rate))
    if n == 0:
        return audio
    audio = audio.copy()
    ramp = np.linspace(0.0, 1.0, n, dtype=np.float32)
    if fade_in:
        audio[:n] *= ramp
    else:
        audio[-n:] *= ramp[::-1]
    return audio


class _LongStreamBase:
    """A long script's audio as one stream (blocking or asyncio below): the chunks' streams in order, later
    ones opened as the plan allows, joined by a :class:`Stitcher`."""

    def __init__(self, tts: SpeechModel, plan: LongFormPlan, chunk_frames: int, opener: Callable[..., Any],
                 arrivals: Any = None):
        self._tts = tts
        self.plan = plan
        self.seed = plan.seed
        self.sample_rate = tts.sample_rate
        self.chunk_frames = chunk_frames
        self.input_tokens = 0
        self.words: list[tuple[str, float]] = []
        self.codes: list[torch.Tensor] = []
        self._frames_done = 0
        self._stitcher = Stitcher(tts.sample_rate)
        self._open = opener
        self._streams: dict[int, Any] = {}
        self._current: Any = None
        self._closed = False
        # Chunks written while the stream plays arrive here (faster_dia.textstream); None: the plan is whole.
        self._arrivals = arrivals
        self._more = arrivals is not None
        if plan.chunks:
            self._ensure_open(0)
            self.input_tokens = self._streams[0].input_tokens

    @property
    def frames(self) -> int:
        return self._frames_done + (self._current.frames if self._current is not None else 0)

    @property
    def seconds(self) -> float:
        return self.frames / self._tts.frame_rate

    def _ensure_open(self, *indices: int) -> Any:
        """Open the streams of these chunks (those not open yet) in one submission; returns the first's."""
        new = [i for i in indices if i not in self._streams]
        if new:
            streams = self._open([self.plan.chunks[i] for i in new], [self.plan.chunk_options(i) for i in new],
                                 self.chunk_frames)
            self._streams.update(zip(new, streams, strict=True))
        return self._streams[indices[0]]

    def _arrived(self, event: tuple) -> None:
        kind, text = event
        if kind == "end":
            self._more = False
            return
        self.plan.chunks.append(text)
        index = len(self.plan.chunks) - 1
        if index == 0 or (self.plan.batched_after_first and self.plan.results):
            self._ensure_open(index)  # its reference is known: start it now, next to the one playing

    def _take_arrivals(self) -> None:
        while self._more:
            event = self._arrivals.get_nowait()
            if event is None:
                return
            self._arrived(event)

    def _chunk_done(self, index: int, stream: Any) -> None:
        offset = self._stitcher.word_offset()
        words = [(w, round(s + offset, 3)) for w, s in stream.words]
        self.words = self.words[: self._words_before] + words
        codes = torch.cat(stream.codes) if stream.codes else torch.zeros(0, self._tts.codec.num_codebooks,
                                                                          dtype=torch.long)
        self.codes.append(codes)
        self.plan.results.append(ChunkResult(codes, self.plan.chunks[index], stream.words,
                                             codes.shape[0] / self._tts.frame_rate))
        self._frames_done += stream.frames
        self._current = None
        if self.plan.batched_after_first and index == 0 and len(self.plan.chunks) > 1:
            self._ensure_open(*range(1, len(self.plan.chunks)))  # one submission: decoded as one batch

    def _live_words(self, stream: Any) -> None:
        if not self._stitcher.started:  # where this chunk lands on the timeline is known at its first sound
            return
        offset = self._stitcher.word_offset()
        self.words = self.words[: self._words_before] + [(w, round(s + offset, 3)) for w, s in stream.words]

    _words_before = 0

    def _begin(self, index: int) -> Any:
        self._current = self._ensure_open(index)
        self._stitcher.start_chunk()
        self._words_before = len(self.words)
        return self._current

    def _joined(self, stream: Any, audio: np.ndarray) -> np.ndarray:
        """A piece of the current chunk's audio, as it goes into the joined stream."""
        self._live_words(stream)
        return self._stitcher.push(audio)

    def _chunk_end(self, index: int, stream: Any) -> np.ndarray:
        """The current chunk is done: the rest of its audio, and the chunk kept for later references."""
        self._live_words(stream)
        tail = self._stitcher.end_chunk()
        self._chunk_done(index, stream)
        return tail

    def _cancel_all(self) -> None:
        self._closed = True
        for stream in self._streams.values():
            stream.close()


class LongSpeechStream(_LongStreamBase):
    """Iterate for float32 chunks of the joined audio; ``close()`` cancels every chunk still running."""

    def __init__(self, *args: Any):
        super().__init__(*args)
        self._iterator = self._run()

    def _run(self) -> Iterator[np.ndarray]:
        index = 0
        while True:
            self._take_arrivals()
            while index >= len(self.plan.chunks) and self._more:
                self._arrived(self._arrivals.get())
            if index >= len(self.plan.chunks):
                return
            stream = self._begin(index)
            for audio in stream:
                out = self._joined(stream, audio)
                if out.size:
                    yield out
            tail = self._chunk_end(index, stream)
            index += 1
            if tail.size:
                yield tail

    def __iter__(self):
        return self

    def __next__(self) -> np.ndarray:
        if self._closed:
            raise StopIteration
        try:
            return next(self._iterator)
        except BaseException:
            self._cancel_all()
            raise

    def close(self) -> None:
        self._cancel_all()


class AsyncLongSpeechStream(_LongStreamBase):
    """``async for`` chunks of the joined audio; ``await aclose()`` cancels every chunk still running."""

    def __init__(self, *args: Any):
        super().__init__(*args)
        self._iterator = self._run()

    async def _run(self):
        index = 0
        while True:
            self._take_arrivals()
            while index >= len(self.plan.chunks) and self._more:
                self._arrived(await self._arrivals.aget())
            if index >= len(self.plan.chunks):
                return
            stream = self._begin(index)
            async for audio in stream:
                out = self._joined(stream, audio)
                if out.size:
                    yield out
            tail = self._chunk_end(index, stream)
            index += 1
            if tail.size:
                yield tail

    def __aiter__(self):
        return self

    async def __anext__(self) -> np.ndarray:
        if self._closed:
            raise StopAsyncIteration
        try:
            return await self._iterator.__anext__()
        except BaseException:
            self._cancel_all()
            raise

    async def aclose(self) -> None:
        self._cancel_all()

    def close(self) -> None:
        self._cancel_all()
