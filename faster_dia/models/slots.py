"""Batch-slot bookkeeping shared by the generators of both model families.

A generator owns ``max_batch`` slots. A request's *slot* is its handle for as long as it runs (the engine and
tests key requests by it); its *row* is where its state lives in the generator's per-request buffers (KV cache
rows, tokens, per-request parameters) and in the host copies kept here (numpy, indexed by row) of whether each
row is running and at which position, which is what a step's shape is decided from without reading the device
or looping over requests.

A step computes rows 0 … highest running row, finished or empty rows below it included. A ``dense``
generator therefore keeps its requests in rows 0 … n-1: when a request leaves, the request in the highest row
moves into the freed row (its KV rows up to its position and its per-request values: one copy per finished
request, not per step), so a step costs what is running. Without ``dense`` the row is the slot.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Hashable
from typing import Generic, TypeVar

import numpy as np
import torch

from .protocol import SlotStateBase

log = logging.getLogger(__name__)

S = TypeVar("S", bound=SlotStateBase)

#: Default time bound of a warm-up at load (seconds).
WARMUP_SECONDS = 120.0


class SlotGenerator(Generic[S]):
    """Slot allocation, release and the host copies. Subclasses keep a device ``active`` flag per row and
    implement ``frames(state, start, stop)``; a ``dense`` subclass implements ``_move_row(src, dst)``."""

    active: torch.Tensor
    #: Keep running requests in the lowest rows (``_move_row`` on release).
    dense = False

    def _init_slots(self, max_batch: int) -> None:
        self.max_batch = max_batch
        self._free = list(range(max_batch))
        self._states: dict[int, S] = {}  # by slot
        self._by_row: list[S | None] = [None] * max_batch
        self._releases = 0  # requests released so far: a step launched before a release may see rows moved
        self._host_active = np.zeros(max_batch, dtype=bool)
        self._host_position = np.zeros(max_batch, dtype=np.int64)
        #: Host arrays indexed by row that move with a request (subclasses add theirs).
        self._row_arrays: list[np.ndarray] = [self._host_active, self._host_position]

    @property
    def free_slots(self) -> int:
        return len(self._free)

    def _claim(self, fill: Callable[[int], S]) -> S:
        """Run ``fill(row)`` for the lowest free slot (in the lowest free row when dense) and register the state
        it returns as running. A request that fails in ``fill`` does not take its slot with it."""
        if not self._free:
            raise RuntimeError("no free batch slot")
        slot = self._free.pop(0)
        row = len(self._states) if self.dense else slot
        try:
            state = fill(row)
        except BaseException:
            # Leave no trace: the slot is free and switched off on the device, whatever fill got to.
            self.active[row] = False
            self._host_position[row] = 0
            self._free.append(slot)
            self._free.sort()
            raise
        state.slot, state.row = slot, row
        self._states[slot] = state
        self._by_row[row] = state
        self._host_active[row] = True
        return state

    def _running_rows(self) -> np.ndarray:
        return np.flatnonzero(self._host_active)

    # The name the non-dense generators use: there a row is a slot.
    _running_slots = _running_rows

    def ready_to_step(self) -> bool:
        """Whether a step would advance anything (a slot waiting for input is held but not stepped)."""
        return bool(self._host_active.any())

    def frames(self, state: S, start: int, stop: int) -> torch.Tensor:
        raise NotImplementedError

    def _move_row(self, src: int, dst: int) -> None:
        """Copy a request's device state from row ``src`` to row ``dst`` (dense generators)."""
        raise NotImplementedError

    # ------------------------------------------------------------------ warm-up

    def warmup_shapes(self) -> list[Hashable]:
        """The step shapes a warm-up records, most useful first (a family that has none returns [])."""
        return []

    def _device_step(self, shape: Hashable) -> None:
        raise NotImplementedError

    def warm_up(self, seconds: float = WARMUP_SECONDS, *, progress: bool = True) -> tuple[int, int]:
        """Record the common step shapes before traffic (CUDA graphs captured at load instead of in the middle
        of the first requests); returns (shapes recorded, shapes left when ``seconds`` ran out). Each shape's
        step runs on idle rows, which compute and discard as they do in any step: no request, token, position
        or count changes. Nothing to do in eager mode."""
        if self._states:
            raise RuntimeError("warm up before any request is admitted")
        runner = self.runner
        shapes = self.warmup_shapes() if runner.bucketed else []
        if not shapes:
            return 0, 0
        deadline = time.monotonic() + seconds
        recorded = 0
        from tqdm import tqdm

        with torch.inference_mode(), tqdm(total=len(shapes), desc="recording decode steps", unit="shape",
                                          disable=not progress, leave=False) as bar:
            for shape in shapes:
                if time.monotonic() >= deadline:
                    break
                # Compiled where the mode compiles; after it, a shape first met while serving is never compiled.
                runner.prepare(shape, lambda shape=shape: self._device_step(shape))
                recorded += 1
                bar.update()
        left = len(shapes) - recorded
        if left:
            log.info("warm-up stopped after %.0f s: %d of %d step shapes recorded, %d left to record on first use",
                     seconds, recorded, len(shapes), left)
        return recorded, left

    def release(self, state: S) -> None:
        """Free a request's slot (finished or cancelled); it may be reused by the next ``prepare``."""
        if self._states.get(state.slot) is not state:
            return
        del self._states[state.slot]
        self._releases += 1
        state._released_at = state.position
        row = state.row
        self._host_active[row] = False
        self.active[row] = False
        self._by_row[row] = None
        self._free.append(state.slot)
        self._free.sort()
        last = len(self._states)  # the highest row in use, when dense
        if self.dense and row < last:
            moved = self._by_row[last]
            self._move_row(last, row)
            for array in self._row_arrays:
                array[row] = array[last]
            self._host_active[last] = False
            self.active[last] = False
            self._by_row[row], self._by_row[last] = moved, None
            moved.row = row
