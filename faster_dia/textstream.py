"""Text that arrives while speech plays (an LLM writing its answer): ``tts.open_text_stream(...)``.

The writer calls :meth:`append` with pieces of any size, :meth:`flush` to have what it wrote so far spoken
now, and :meth:`end` when done; the reader iterates audio (blocking or ``async for``) as it is made.

* Dia2 speaks word by word: complete words join the running request's text queue as they arrive (the text
  state machine's streaming mode). When the text runs dry before the end, the request waits in its batch slot
  (no end of speech, no filler) and goes on when more words come. First audio comes after the first few
  words. One request holds Dia2's 2-minute context; a longer text ends at that limit.
* Dia-1.6B needs whole sentences: each complete sentence (or speaker turn) becomes a chunk as soon as it is
  complete, spoken with the voice continuity of long scripts (faster_dia.longform).

:func:`complete_text` decides what is complete: words up to the last space (never inside a ``<...>`` tag), or
sentences up to the last sentence end.
"""

from __future__ import annotations

import re
import threading
from collections.abc import AsyncIterable, Iterable
from typing import TYPE_CHECKING, Any

import numpy as np

from .engine import RequestEvents
from .errors import CancelledError, InvalidInputError
from .longform import AsyncLongSpeechStream, LongFormPlan, LongSpeechStream

if TYPE_CHECKING:
    from .speech import SpeechModel

#: The longest piece of text one ``append`` may carry.
MAX_PIECE_CHARS = 100_000

def _has_words(text: str) -> bool:
    return bool(re.sub(r"\[S[12]\]|<[^<>]*>", " ", text).strip())


_SENTENCE_OR_TURN_END = re.compile(r"[.!?…][\"'”’)\]]*\s+|\s+(?=\[S[12]\])")


def complete_text(buffer: str, *, unit: str, final: bool = False) -> tuple[str, str]:
    """``(complete, rest)`` of the text written so far. ``unit`` is ``"words"`` (cut after the last
    whitespace outside a ``<...>`` tag) or ``"sentences"`` (after the last sentence end or before a speaker
    tag). ``final``: everything is complete."""
    if final:
        return buffer, ""
    if unit == "words":
        cut = -1
        depth = 0
        for i, ch in enumerate(buffer):
            if ch == "<":
                depth += 1
            elif ch == ">":
                depth = max(0, depth - 1)
            elif ch.isspace() and depth == 0:
                cut = i
        return (buffer[: cut + 1], buffer[cut + 1:]) if cut >= 0 else ("", buffer)
    ends = list(_SENTENCE_OR_TURN_END.finditer(buffer))
    if not ends:
        return "", buffer
    return buffer[: ends[-1].end()], buffer[ends[-1].end():]


class _TextInput:
    """The writer's side, shared by both families: pieces in, complete text out (thread-safe)."""

    unit = "words"

    def __init__(self) -> None:
        self._buffer = ""
        self._lock = threading.Lock()
        self.ended = False
        self.chars = 0

    def append(self, text: str) -> None:
        if not isinstance(text, str):
            raise InvalidInputError(f"Text pieces must be strings, got {type(text).__name__}.", param="text")
        if len(text) > MAX_PIECE_CHARS:
            raise InvalidInputError(f"A text piece may be at most {MAX_PIECE_CHARS} characters.", param="text")
        with self._lock:
            if self.ended:
                raise InvalidInputError("The text has ended; no more can be appended.", param="text")
            self._buffer += text
            self.chars += len(text)
            complete, self._buffer = complete_text(self._buffer, unit=self.unit)
            if not _has_words(complete):  # a speaker tag alone waits for its first word
                complete, self._buffer = "", complete + self._buffer
        if complete:
            self._deliver(complete)

    def flush(self) -> None:
        """Speak what was written so far, complete or not."""
        with self._lock:
            complete, self._buffer = self._buffer, ""
        if _has_words(complete):
            self._deliver(complete)

    def end(self) -> None:
        """No more text: the rest is spoken and the stream ends."""
        if self.ended:
            return
        self.flush()
        self.ended = True
        self._close()

    def _deliver(self, text: str) -> None:
        raise NotImplementedError

    def _close(self) -> None:
        raise NotImplementedError


class _Dia2TextInput(_TextInput):
    """Complete words go to the running request's text queue through the engine thread."""

    def __init__(self, tts: SpeechModel, stream: Any):
        super().__init__()
        self._tts = tts
        self._stream = stream
        self._first = True

    def _deliver(self, text: str) -> None:
        entries = self._tts._entries(text, param="text", continuation=not self._first)
        if not entries:
            return
        self._first = False
        submission, generator = self._stream.submission, self._tts.engine.generator
        self._tts.engine.post(lambda: generator.append_text(submission.request, submission.state, entries))

    def _close(self) -> None:
        submission, generator = self._stream.submission, self._tts.engine.generator
        self._tts.engine.post(lambda: generator.close_text(submission.request, submission.state))


class _ChunkedTextInput(_TextInput):
    """Complete sentences become the chunks of a growing long-form plan."""

    unit = "sentences"

    def __init__(self, plan: LongFormPlan, arrivals: RequestEvents):
        super().__init__()
        self._plan = plan
        self._arrivals = arrivals
        self._speaker = "[S1]"

    def _deliver(self, text: str) -> None:
        from .script import split_script

        # A sentence continues the last speaker unless it names one; each chunk carries its speaker's tag.
        tagged = text if text.lstrip().startswith(("[S1]", "[S2]")) else f"{self._speaker} {text}"
        for chunk in split_script(tagged, lambda c: self._plan.tts._chunk_fits(c, self._plan.options)):
            self._speaker = chunk[:4]
            self._arrivals.put(("chunk", chunk))

    def _close(self) -> None:
        self._arrivals.put(("end", None))


class TextSpeechStream:
    """Audio for text written while it plays. Writer: ``append(text)``, ``flush()``, ``end()`` (from any
    thread). Reader: iterate (blocking) or ``async for`` (asyncio), as the stream was opened. ``words`` are
    Dia2's word timestamps so far; ``close()`` cancels."""

    def __init__(self, tts: SpeechModel, options: dict[str, Any], chunk_frames: int, *, asynchronous: bool):
        self._tts = tts
        self.sample_rate = tts.sample_rate
        if tts.family == "dia2":
            from .speech import AsyncSpeechStream, SpeechStream

            kind = AsyncSpeechStream if asynchronous else SpeechStream
            (request,) = tts._requests([""], {**options, "runaway_guard": False}, text_streaming=True)
            self._audio = kind(tts, request, input_tokens=0, chunk_frames=chunk_frames)
            self._input: _TextInput = _Dia2TextInput(tts, self._audio)
        else:
            arrivals = RequestEvents()
            plan = LongFormPlan.make(tts, "", options, allow_empty=True)
            kind = AsyncLongSpeechStream if asynchronous else LongSpeechStream
            self._audio = kind(tts, plan, chunk_frames, tts._chunk_opener(asynchronous), arrivals)
            self._input = _ChunkedTextInput(plan, arrivals)
        self.seed = self._audio.seed
        self._failure: BaseException | None = None

    def fail(self, exc: BaseException) -> None:
        """The writer failed: the reader gets ``exc`` instead of more audio."""
        self._failure = exc
        self.close()

    # writer
    def append(self, text: str) -> None:
        self._input.append(text)

    def flush(self) -> None:
        self._input.flush()

    def end(self) -> None:
        self._input.end()

    # reader
    @property
    def words(self) -> list[tuple[str, float]]:
        return self._audio.words

    @property
    def frames(self) -> int:
        return self._audio.frames

    @property
    def text_chars(self) -> int:
        return self._input.chars

    def __iter__(self):
        return self

    def __next__(self) -> np.ndarray:
        try:
            return next(self._audio)
        except (StopIteration, CancelledError):
            if self._failure is not None:  # the writer's failure, not the cancellation it caused
                raise self._failure from None
            raise

    def __aiter__(self):
        return self

    async def __anext__(self) -> np.ndarray:
        try:
            return await self._audio.__anext__()
        except (StopAsyncIteration, CancelledError):
            if self._failure is not None:
                raise self._failure from None
            raise

    def close(self) -> None:
        self._audio.close()

    async def aclose(self) -> None:
        self._audio.close()


def feed(stream: TextSpeechStream, pieces: Iterable[str]) -> threading.Thread:
    """Write ``pieces`` into ``stream`` from a thread of their own, then end it (for ``stream_text``)."""

    def run() -> None:
        try:
            for piece in pieces:
                stream.append(piece)
            stream.end()
        except BaseException as exc:  # handed to the reader, who sees it instead of the rest of the audio
            stream.fail(exc)

    thread = threading.Thread(target=run, name="faster-dia-text-feed", daemon=True)
    thread.start()
    return thread


async def afeed(stream: TextSpeechStream, pieces: AsyncIterable[str] | Iterable[str]) -> None:
    """Write ``pieces`` (sync or async) into ``stream``, then end it (for ``astream_text``)."""
    try:
        if hasattr(pieces, "__aiter__"):
            async for piece in pieces:
                stream.append(piece)
        else:
            for piece in pieces:
                stream.append(piece)
        stream.end()
    except BaseException as exc:
        stream.fail(exc)
