"""Running speech requests off the event loop: admission (the bounded queue) and one worker per request.

A request's :class:`~faster_dia.api.SpeechStream` is iterated in its own thread, which also changes the
tempo and encodes, and hands encoded bytes to the event loop through an asyncio queue. The event loop only
moves bytes, so ``/health`` and other requests keep being answered while audio is generated.

Cancelling is a flag the worker checks between chunks; the worker then calls ``stream.close()`` itself.
Closing from the worker's own thread matters: the stream is a generator, and closing it from another
thread while it is running raises instead of stopping it.
"""

from __future__ import annotations

import asyncio
import logging
import math
import threading
import time
from dataclasses import dataclass

import numpy as np

from ..api import SpeechStream
from ..audio import TempoStretcher, change_speed, encode_audio, open_encoder
from ..errors import OverloadedError

log = logging.getLogger("faster_dia.server")

_END = object()


class Admission:
    """At most ``max_concurrent`` requests generate at a time and at most ``max_queue`` more wait for
    their turn; a request beyond that is refused with 503 and a ``Retry-After`` estimate.

    Only touched from the event loop thread (workers report back with ``call_soon_threadsafe``)."""

    def __init__(self, *, max_queue: int, max_concurrent: int = 1):
        if max_queue < 0 or max_concurrent < 1:
            raise ValueError("max_queue must be >= 0 and max_concurrent >= 1")
        self.max_queue = max_queue
        self.max_concurrent = max_concurrent
        self.in_flight = 0
        self._slots: asyncio.Semaphore | None = None
        # Running mean of request durations, for Retry-After; a guess until the first request ends.
        self._mean_seconds = 5.0

    @property
    def slots(self) -> asyncio.Semaphore:
        # Created lazily so it belongs to the loop the server runs on.
        if self._slots is None:
            self._slots = asyncio.Semaphore(self.max_concurrent)
        return self._slots

    def retry_after(self) -> int:
        waiting = max(self.in_flight - self.max_concurrent, 0) + 1
        return max(1, min(60, math.ceil(self._mean_seconds * waiting / self.max_concurrent)))

    def admit(self) -> None:
        if self.in_flight >= self.max_concurrent + self.max_queue:
            raise OverloadedError(
                f"The server is busy ({self.in_flight} requests generating or queued); retry shortly.",
                retry_after=self.retry_after(),
            )
        self.in_flight += 1

    def leave(self, seconds: float | None = None) -> None:
        self.in_flight -= 1
        if seconds is not None:
            self._mean_seconds = 0.8 * self._mean_seconds + 0.2 * seconds


@dataclass
class Output:
    """How a request wants its audio."""

    fmt: str
    speed: float = 1.0
    #: Encode the whole clip at the end (complete headers) instead of chunk by chunk.
    whole_file: bool = False


class SpeechJob:
    """One admitted request: waits for a generation slot, then runs its stream in a worker thread."""

    def __init__(self, stream: SpeechStream, output: Output, admission: Admission, *, request_id: str):
        self.stream = stream
        self.output = output
        self.request_id = request_id
        self._admission = admission
        self._loop = asyncio.get_running_loop()
        self._queue: asyncio.Queue[object] = asyncio.Queue()
        self._cancel = threading.Event()
        self._has_slot = False
        self._started = False
        self._settled = False
        self.samples_in = 0  # model samples consumed by the worker
        self.started_at = time.perf_counter()

    # ------------------------------------------------------------------ event loop side

    async def first(self) -> bytes | None:
        """Wait for a slot, start the worker and return the first encoded bytes (None: no audio at all).
        Raises what the worker raised before producing anything."""
        await self._admission.slots.acquire()
        self._has_slot = True
        if self._cancel.is_set():
            self._settle()
            return None
        self._started = True
        threading.Thread(target=self._run, name=f"speech-{self.request_id}", daemon=True).start()
        return await self.next()

    async def next(self) -> bytes | None:
        """The next encoded bytes, or None at the end."""
        item = await self._queue.get()
        if item is _END:
            return None
        if isinstance(item, BaseException):
            raise item
        return item  # type: ignore[return-value]

    def cancel(self) -> None:
        """Stop generating (the worker notices between chunks). Safe to call at any time, and again."""
        self._cancel.set()
        if not self._started:
            self._settle()

    @property
    def cancelled(self) -> bool:
        return self._cancel.is_set()

    def _settle(self) -> None:
        """Give back the slot and the queue place, once; runs on the event loop."""
        if self._settled:
            return
        self._settled = True
        if self._has_slot:
            self._admission.slots.release()
        if not self._started:
            # The stream never ran; closing it frees what stream() prepared.
            try:
                self.stream.close()
            except Exception:  # never started: nothing to clean up can fail in a way that matters here
                log.debug("closing an unstarted stream failed", exc_info=True)
        self._admission.leave(time.perf_counter() - self.started_at if self._started else None)

    # ------------------------------------------------------------------ worker side

    def _put(self, item: object) -> None:
        try:
            self._loop.call_soon_threadsafe(self._queue.put_nowait, item)
        except RuntimeError:  # the event loop is gone (server shutting down): nobody is listening
            self._cancel.set()

    def _run(self) -> None:
        encoder = None
        try:
            if self.output.whole_file:
                self._run_whole()
            else:
                encoder = open_encoder(self.output.fmt, self.stream.sample_rate)
                self._run_streaming(encoder)
        except BaseException as exc:  # handed to the event loop, which decides what the client sees
            self._put(exc)
        finally:
            try:
                self.stream.close()  # ends generation early if cancelled, frees the model either way
            except Exception:
                log.exception("request %s: closing the speech stream failed", self.request_id)
            if encoder is not None and not encoder.closed:
                try:
                    encoder.close()  # releases the codec of a cancelled request
                except Exception:
                    log.debug("closing an abandoned encoder failed", exc_info=True)
            try:
                self._loop.call_soon_threadsafe(self._settle)
            except RuntimeError:
                pass

    def _chunks(self):
        """The stream's chunks until it ends or the request is cancelled."""
        iterator = iter(self.stream)
        while not self._cancel.is_set():
            try:
                chunk = next(iterator)
            except StopIteration:
                return
            if self._cancel.is_set():
                return
            self.samples_in += chunk.size
            yield chunk

    def _run_streaming(self, encoder) -> None:
        stretcher = TempoStretcher(self.stream.sample_rate, self.output.speed) if self.output.speed != 1.0 else None
        for chunk in self._chunks():
            data = encoder.push(stretcher.push(chunk) if stretcher is not None else chunk)
            if data:
                self._put(data)
        if self._cancel.is_set():
            return
        tail = encoder.push(stretcher.close()) if stretcher is not None else b""
        tail += encoder.close()
        if tail:
            self._put(tail)
        self._put(_END)

    def _run_whole(self) -> None:
        pieces = list(self._chunks())
        if self._cancel.is_set():
            return
        pcm = np.concatenate(pieces) if pieces else np.zeros(0, dtype=np.float32)
        pcm = change_speed(pcm, self.stream.sample_rate, self.output.speed)
        self._put(encode_audio(pcm, self.stream.sample_rate, self.output.fmt))
        self._put(_END)

    # ------------------------------------------------------------------ numbers for the log and usage

    @property
    def audio_seconds(self) -> float:
        """Seconds of audio delivered so far, after the speed change."""
        return self.samples_in / self.stream.sample_rate / self.output.speed
