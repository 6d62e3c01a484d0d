"""The batching engine: one thread owns the model and steps every running request together.

The loop is three moves, as in vLLM's engine core: admit waiting requests into free batch slots, run one
batched decoder step for all running requests, then report (hand final frames to streaming consumers,
retire finished or cancelled requests and free their slots). Requests join between any two steps without
waiting for the running ones, and leave as soon as they end. The host work per step grows with what
happened in it (requests that finished, were cancelled or have a streaming chunk ready), not with the number
of requests running.

The engine knows a model family only through the :class:`~faster_dia.models.protocol.Generator` protocol. It
owns admission: requests are validated once at ``submit``, wait in one bounded queue, and a request refused
because the queue is full learns when to retry from the measured step rate and the work ahead of it.

Each request's events go into its own :class:`RequestEvents`, which a thread can block on (``get``) and an
asyncio task can await (``aget``) without a thread of its own.
"""

from __future__ import annotations

import asyncio
import heapq
import itertools
import logging
import math
import queue
import random
import threading
import time
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import torch

from .errors import CancelledError, OverloadedError
from .models.protocol import Generator, RequestBase, SlotStateBase

log = logging.getLogger(__name__)

#: Waiting requests per batch slot that the default queue holds: a burst several times the batch is
#: worked through in a few request lengths, which is better than refusing it.
QUEUE_PER_SLOT = 16
MIN_QUEUE = 64


def default_max_queue(max_batch: int) -> int:
    return max(MIN_QUEUE, QUEUE_PER_SLOT * max_batch)


class RequestEvents:
    """The events of one request, in order: ``("frames", codes)`` chunks when the request streams, then
    exactly one of ``("done", codes_or_None)`` or ``("error", exception)``.

    The engine thread puts; one consumer takes, either blocking (``get``) or from an event loop (``aget``)."""

    def __init__(self) -> None:
        self._items: deque[tuple] = deque()
        self._lock = threading.Condition()
        self._waker: tuple[asyncio.AbstractEventLoop, asyncio.Event] | None = None

    def put(self, event: tuple) -> None:
        with self._lock:
            self._items.append(event)
            self._lock.notify()
            waker = self._waker
        if waker is not None:
            loop, ready = waker
            try:
                loop.call_soon_threadsafe(ready.set)
            except RuntimeError:  # the consumer's loop is closed: nobody is waiting any more
                pass

    def get(self, timeout: float | None = None) -> tuple:
        """The next event; raises ``queue.Empty`` after ``timeout`` seconds without one."""
        with self._lock:
            if not self._lock.wait_for(lambda: self._items, timeout):
                raise queue.Empty
            return self._items.popleft()

    def get_nowait(self) -> tuple | None:
        """The next event if there is one, else None."""
        with self._lock:
            return self._items.popleft() if self._items else None

    async def aget(self) -> tuple:
        """The next event, awaited on the running event loop."""
        loop = asyncio.get_running_loop()
        while True:
            with self._lock:
                if self._items:
                    return self._items.popleft()
                if self._waker is None or self._waker[0] is not loop:
                    self._waker = (loop, asyncio.Event())
                ready = self._waker[1]
                ready.clear()
            await ready.wait()


@dataclass(eq=False)
class Submission:
    """A request inside the engine; its events arrive in ``events``."""

    request: RequestBase
    chunk_frames: int | None = None
    events: RequestEvents = field(default_factory=RequestEvents)
    state: SlotStateBase | None = None
    sent_frames: int = 0
    cancelled: threading.Event = field(default_factory=threading.Event)
    ended: bool = False  # set by the engine thread before the final event
    admitted_step: int = 0
    _engine: Engine | None = None

    @property
    def frames(self) -> int:
        """Final audio frames so far (readable from any thread)."""
        state = self.state
        return 0 if state is None else state.final_frames

    def cancel(self) -> None:
        """Stop generating; the slot is freed at the next step (a waiting request leaves the queue)."""
        if not self.cancelled.is_set() and not self.ended:
            self.cancelled.set()
            if self._engine is not None:
                self._engine._cancel(self)


@dataclass(frozen=True)
class EngineStats:
    """A snapshot for health checks and metrics."""

    waiting: int
    running: int
    max_batch: int
    max_queue: int
    steps: int
    steps_per_second: float  # recent decoder steps per second while busy (0 before the first step)
    requests_finished: int


class Engine:
    """Decodes requests of one generator in batches. ``max_queue`` bounds the requests waiting for a slot
    (default: :func:`default_max_queue`)."""

    def __init__(self, generator: Generator, *, max_queue: int | None = None):
        self.generator = generator
        self.max_queue = default_max_queue(generator.max_batch) if max_queue is None else max_queue
        self._waiting: deque[Submission] = deque()
        self._running: dict[int, Submission] = {}  # by batch slot
        # Streaming requests by the step after which their next chunk can first be ready.
        self._chunks_due: list[tuple[int, int, Submission]] = []
        self._order = itertools.count()
        self._cancellations: deque[Submission] = deque()  # appended from any thread
        self._commands: deque[Callable[[], None]] = deque()  # run on the engine thread between steps
        self._wake = threading.Condition()
        self._thread: threading.Thread | None = None
        self._closed = False
        self.steps = 0  # decoder steps run so far (for tests and metrics)
        self.requests_finished = 0
        # Measured, for Retry-After: seconds per step (moving average) and steps per finished request.
        self._step_seconds: float | None = None
        self._request_steps: float | None = None
        self._next_opening = 0.0  # monotonic time of the last queue place promised to a refused client

    @property
    def max_batch(self) -> int:
        return self.generator.max_batch

    @property
    def busy(self) -> int:
        with self._wake:
            return len(self._waiting) + len(self._running)

    def stats(self) -> EngineStats:
        with self._wake:
            waiting, running = len(self._waiting), len(self._running)
        step = self._step_seconds
        return EngineStats(waiting=waiting, running=running, max_batch=self.max_batch, max_queue=self.max_queue,
                           steps=self.steps, steps_per_second=1.0 / step if step else 0.0,
                           requests_finished=self.requests_finished)

    def submit(self, requests: Sequence[RequestBase], *, chunk_frames: int | None = None) -> list[Submission]:
        """Queue requests (validated here, once, in the caller's thread, so bad input fails at once). All
        requests of one call are admitted together when slots allow, so a list generates as one batch.
        Raises :class:`OverloadedError` (with ``retry_after``) when the waiting queue has no room for them."""
        for request in requests:
            self.generator.validate(request)
        submissions = [Submission(r, chunk_frames, _engine=self) for r in requests]
        with self._wake:
            if self._closed:
                raise CancelledError("The model was unloaded.")
            room = self.max_queue + self.generator.free_slots - len(self._waiting)
            if len(submissions) > max(room, 0) and (self._waiting or self._running):
                raise OverloadedError(
                    f"The model is busy: {len(self._running)} request(s) generating and {len(self._waiting)} "
                    f"waiting for a slot (queue limit {self.max_queue}). Retry shortly.",
                    retry_after=self._retry_after(),
                )
            self._waiting.extend(submissions)
            self._start_thread()
            self._wake.notify()
        return submissions

    def close(self) -> None:
        """Stop the engine thread; waiting and running requests end with CancelledError."""
        with self._wake:
            self._closed = True
            self._wake.notify()
        if self._thread is not None and self._thread is not threading.current_thread():
            self._thread.join()

    def post(self, command: Callable[[], None]) -> None:
        """Run ``command`` on the engine thread before the next step (e.g. text arriving for a running request:
        generator state is only ever touched by the engine thread)."""
        with self._wake:
            self._commands.append(command)
            self._start_thread()
            self._wake.notify()

    def _start_thread(self) -> None:
        """Start the engine thread if it is not running (caller holds the lock)."""
        if self._thread is None or not self._thread.is_alive():
            self._thread = threading.Thread(target=self._loop, name="faster-dia-engine", daemon=True)
            self._thread.start()

    def _cancel(self, sub: Submission) -> None:
        with self._wake:
            self._cancellations.append(sub)
            self._wake.notify()

    # ------------------------------------------------------------------ Retry-After

    def _retry_after(self) -> int:
        """Seconds until a refused client should find room, for the refusal being made now (caller holds the
        lock). A queue place opens whenever a running request ends; with ``max_batch`` requests running, one
        ends every (steps per request × seconds per step) / max_batch seconds. Each refusal is promised the
        next opening not yet promised, so a burst of refused clients retries spread out instead of together,
        with some jitter on top."""
        step = self._step_seconds or 0.05
        steps = self._request_steps
        if steps is None:  # nothing finished yet: at least as long as the longest running request so far
            steps = max([self.steps - s.admitted_step for s in self._running.values()] + [1]) * 2
        interval = steps * step / max(self.max_batch, 1)
        now = time.monotonic()
        opening = max(now, self._next_opening) + interval
        self._next_opening = opening
        seconds = (opening - now) * random.uniform(1.0, 1.25)
        return max(1, min(300, math.ceil(seconds)))

    def _measure_step(self, seconds: float) -> None:
        self._step_seconds = seconds if self._step_seconds is None else 0.9 * self._step_seconds + 0.1 * seconds

    def _measure_request(self, steps: int) -> None:
        self._request_steps = steps if self._request_steps is None else 0.8 * self._request_steps + 0.2 * steps

    # ------------------------------------------------------------------ the device thread

    def _loop(self) -> None:
        with torch.inference_mode():
            while True:
                with self._wake:
                    while not self._has_work():
                        self._wake.wait()
                    if self._closed:
                        self._shut_down()
                        return
                    admitted = self._admit()
                    commands = list(self._commands)
                    self._commands.clear()
                for command in commands:
                    try:
                        command()
                    except Exception:  # a bad command must not stop the engine
                        log.exception("engine command failed")
                for sub in admitted:
                    sub.admitted_step = self.steps
                    self._running[sub.state.slot] = sub
                    if sub.chunk_frames is not None:
                        self._schedule_chunk(sub)
                self._drop_cancelled()
                if not self._running or not self.generator.ready_to_step():
                    continue
                started = time.perf_counter()
                try:
                    finished = self.generator.step()
                    self.steps += 1
                except Exception as exc:  # a fault in the batched step ends every request in it
                    log.exception("decoder step failed")
                    for sub in list(self._running.values()):
                        self._finish(sub, ("error", exc))
                    continue
                self._measure_step(time.perf_counter() - started)
                self._report(finished)

    def _has_work(self) -> bool:
        """Whether the loop has something to do (caller holds the lock): otherwise it sleeps until notified.
        Requests that wait for input (text still to come) are running but give no step to take."""
        return bool(self._closed or self._cancellations or self._commands
                    or (self._waiting and self.generator.free_slots)
                    or (self._running and self.generator.ready_to_step()))

    def _admit(self) -> list[Submission]:
        admitted = []
        while self._waiting and self.generator.free_slots:
            sub = self._waiting.popleft()
            if sub.cancelled.is_set():
                sub.ended = True
                sub.events.put(("error", CancelledError("The request was cancelled.")))
                continue
            try:
                sub.state = self.generator.prepare(sub.request)
            except Exception as exc:  # only this request fails; the others go on
                log.debug("request failed during prepare: %s", exc)
                sub.ended = True
                sub.events.put(("error", exc))
                continue
            admitted.append(sub)
        return admitted

    def _drop_cancelled(self) -> None:
        while self._cancellations:
            sub = self._cancellations.popleft()
            if sub.state is not None and self._running.get(sub.state.slot) is sub:
                self._finish(sub, ("error", CancelledError("The request was cancelled.")))
            elif sub.state is None and not sub.ended:
                with self._wake:
                    try:
                        self._waiting.remove(sub)
                    except ValueError:
                        continue
                sub.ended = True
                sub.events.put(("error", CancelledError("The request was cancelled.")))

    def _shut_down(self) -> None:
        error = CancelledError("The model was unloaded.")
        for sub in list(self._running.values()):
            self._finish(sub, ("error", error))
        while self._waiting:
            sub = self._waiting.popleft()
            sub.ended = True
            sub.events.put(("error", error))

    def _schedule_chunk(self, sub: Submission) -> None:
        """Note the first step after which ``sub`` can have a chunk's worth of new final frames: a step makes at
        most one frame of a request final, so nothing needs checking before then."""
        steps = max(1, sub.sent_frames + sub.chunk_frames - sub.state.final_frames)
        heapq.heappush(self._chunks_due, (self.steps + steps, next(self._order), sub))

    def _report(self, finished: list[SlotStateBase]) -> None:
        while self._chunks_due and self._chunks_due[0][0] <= self.steps:
            sub = heapq.heappop(self._chunks_due)[2]
            if sub.ended:
                continue
            final = sub.state.final_frames
            if final - sub.sent_frames >= sub.chunk_frames:
                sub.events.put(("frames", self.generator.frames(sub.state, sub.sent_frames, final).cpu()))
                sub.sent_frames = final
            self._schedule_chunk(sub)
        for state in finished:
            sub = self._running[state.slot]
            self.requests_finished += 1
            self._measure_request(self.steps - sub.admitted_step)
            if sub.chunk_frames is not None:
                final = state.final_frames
                if final > sub.sent_frames:
                    sub.events.put(("frames", self.generator.frames(state, sub.sent_frames, final).cpu()))
                    sub.sent_frames = final
                self._finish(sub, ("done", None))
            else:
                self._finish(sub, ("done", self.generator.frames(state, 0, state.final_frames).cpu()))

    def _finish(self, sub: Submission, event: tuple) -> None:
        self._running.pop(sub.state.slot, None)
        self.generator.release(sub.state)
        sub.ended = True
        sub.events.put(event)
