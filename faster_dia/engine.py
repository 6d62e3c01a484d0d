"""The batching engine: one thread owns the model and steps every running request together.

The loop is three moves, as in vLLM's engine core: admit waiting requests into free batch slots, run one
batched decoder step for all running requests, then report (hand final frames to streaming consumers,
retire finished or cancelled requests and free their slots). Requests join between any two steps without
waiting for the running ones, and leave as soon as they end. The host work per step grows with what
happened in it (requests that finished, were cancelled or have a streaming chunk ready), not with the number
of requests running.

A request's tokens do not depend on its neighbours: sampling parameters, text, prompt and position are per
slot, and random draws are keyed by the request's seed and position (see models/dia1/sampling.py).
"""

from __future__ import annotations

import heapq
import itertools
import logging
import queue
import threading
from collections import deque
from dataclasses import dataclass, field

import torch

from .errors import CancelledError, OverloadedError
from .models.dia1.generator import Dia1Generator, Dia1Request, SlotState

log = logging.getLogger(__name__)


@dataclass(eq=False)
class Submission:
    """A request inside the engine. ``events`` receives ``("frames", codes)`` chunks when ``chunk_frames`` is
    set, then exactly one of ``("done", codes_or_None)``, ``("error", exc)``."""

    request: Dia1Request
    chunk_frames: int | None = None
    events: queue.Queue = field(default_factory=queue.Queue)
    state: SlotState | None = None
    sent_frames: int = 0
    cancelled: threading.Event = field(default_factory=threading.Event)
    ended: bool = False  # set by the engine thread before the final event
    _engine: Engine | None = None

    @property
    def frames(self) -> int:
        """Final audio frames so far (readable from any thread)."""
        state = self.state
        return 0 if state is None else state.final_frames

    def cancel(self) -> None:
        """Stop generating; the slot is freed at the next step."""
        if not self.cancelled.is_set() and not self.ended:
            self.cancelled.set()
            if self._engine is not None:
                self._engine._cancellations.append(self)


class Engine:
    def __init__(self, generator: Dia1Generator, *, max_queue: int = 64):
        self.generator = generator
        self.max_queue = max_queue
        self._waiting: deque[Submission] = deque()
        self._running: dict[int, Submission] = {}  # by batch slot
        # Streaming requests by the step after which their next chunk can first be ready.
        self._chunks_due: list[tuple[int, int, Submission]] = []
        self._order = itertools.count()
        self._cancellations: deque[Submission] = deque()  # appended from any thread
        self._wake = threading.Condition()
        self._thread: threading.Thread | None = None
        self.steps = 0  # decoder steps run so far (for tests and metrics)

    @property
    def max_batch(self) -> int:
        return self.generator.max_batch

    @property
    def busy(self) -> int:
        with self._wake:
            return len(self._waiting) + len(self._running)

    def submit(self, requests: list[Dia1Request], *, chunk_frames: int | None = None) -> list[Submission]:
        """Queue requests (validated here, in the caller's thread, so bad input fails at once). All requests of
        one call are admitted together when slots allow, so a list generates as one batch."""
        for request in requests:
            self.generator.validate(request)
        submissions = [Submission(r, chunk_frames, _engine=self) for r in requests]
        with self._wake:
            if self._waiting and len(self._waiting) + len(submissions) > self.max_queue:
                raise OverloadedError(
                    f"The model is busy: {len(self._waiting)} request(s) already wait for a slot (limit {self.max_queue}). "
                    "Retry shortly."
                )
            self._waiting.extend(submissions)
            if self._thread is None or not self._thread.is_alive():
                self._thread = threading.Thread(target=self._loop, name="faster-dia-engine", daemon=True)
                self._thread.start()
            self._wake.notify()
        return submissions

    # ------------------------------------------------------------------ the device thread

    def _loop(self) -> None:
        with torch.inference_mode():
            while True:
                with self._wake:
                    while not self._waiting and not self._running:
                        self._wake.wait()
                    admitted = self._admit()
                for sub in admitted:
                    self._running[sub.state.slot] = sub
                    if sub.chunk_frames is not None:
                        self._schedule_chunk(sub)
                self._drop_cancelled()
                if not self._running:
                    continue
                try:
                    finished = self.generator.step()
                    self.steps += 1
                except Exception as exc:  # a fault in the batched step ends every request in it
                    log.exception("decoder step failed")
                    for sub in list(self._running.values()):
                        self._finish(sub, ("error", exc))
                    continue
                self._report(finished)

    def _admit(self) -> list[Submission]:
        admitted = []
        while self._waiting and self.generator.free_slots:
            sub = self._waiting.popleft()
            if sub.cancelled.is_set():
                sub.events.put(("error", CancelledError("The request was cancelled.")))
                continue
            try:
                sub.state = self.generator.prepare(sub.request)
            except Exception as exc:  # only this request fails; the others go on
                log.debug("request failed during prepare: %s", exc)
                sub.events.put(("error", exc))
                continue
            admitted.append(sub)
        return admitted

    def _drop_cancelled(self) -> None:
        while self._cancellations:
            sub = self._cancellations.popleft()
            if sub.state is not None and self._running.get(sub.state.slot) is sub:
                self._finish(sub, ("error", CancelledError("The request was cancelled.")))

    def _schedule_chunk(self, sub: Submission) -> None:
        """Note the first step after which ``sub`` can have a chunk's worth of new final frames: a step makes at
        most one frame of a request final, so nothing needs checking before then."""
        steps = max(1, sub.sent_frames + sub.chunk_frames - sub.state.final_frames)
        heapq.heappush(self._chunks_due, (self.steps + steps, next(self._order), sub))

    def _report(self, finished: list[SlotState]) -> None:
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
