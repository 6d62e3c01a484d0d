"""The batching engine: one thread owns the model and steps every running request together.

The loop is three moves, as in vLLM's engine core: admit waiting requests into free batch slots, run one
batched decoder step for all running requests, then report (hand final frames to streaming consumers,
retire finished or cancelled requests and free their slots). Requests join between any two steps without
waiting for the running ones, and leave as soon as they end.

A request's tokens do not depend on its neighbours: sampling parameters, text, prompt and position are per
slot, and random draws are keyed by the request's seed and position (see models/dia1/sampling.py).
"""

from __future__ import annotations

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

    @property
    def frames(self) -> int:
        """Final audio frames so far (readable from any thread)."""
        state = self.state
        return 0 if state is None else state.final_frames

    def cancel(self) -> None:
        """Stop generating; the slot is freed at the next step."""
        self.cancelled.set()


class Engine:
    def __init__(self, generator: Dia1Generator, *, max_queue: int = 64):
        self.generator = generator
        self.max_queue = max_queue
        self._waiting: deque[Submission] = deque()
        self._running: list[Submission] = []
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
        submissions = [Submission(r, chunk_frames) for r in requests]
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
                self._running.extend(admitted)
                self._drop_cancelled()
                if not self._running:
                    continue
                try:
                    self.generator.step([s.state for s in self._running])
                    self.steps += 1
                except Exception as exc:  # a fault in the batched step ends every request in it
                    log.exception("decoder step failed")
                    for sub in self._running:
                        self._finish(sub, ("error", exc))
                    self._running = []
                    continue
                self._report()

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
        keep = []
        for sub in self._running:
            if sub.cancelled.is_set():
                self._finish(sub, ("error", CancelledError("The request was cancelled.")))
            else:
                keep.append(sub)
        self._running = keep

    def _report(self) -> None:
        keep = []
        for sub in self._running:
            state = sub.state
            if sub.chunk_frames is not None:
                final = state.final_frames
                if final - sub.sent_frames >= sub.chunk_frames or (state.finished and final > sub.sent_frames):
                    sub.events.put(("frames", self.generator.frames(state, sub.sent_frames, final).cpu()))
                    sub.sent_frames = final
            if state.finished:
                codes = None if sub.chunk_frames is not None else self.generator.frames(state, 0, state.final_frames)
                self._finish(sub, ("done", None if codes is None else codes.cpu()))
            else:
                keep.append(sub)
        self._running = keep

    def _finish(self, sub: Submission, event: tuple) -> None:
        self.generator.release(sub.state)
        sub.events.put(event)
