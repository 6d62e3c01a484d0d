"""Batch-slot bookkeeping shared by the generators of both model families.

A generator owns ``max_batch`` slots. This keeps which are free, which request holds each, and host copies
(numpy, indexed by slot) of whether each slot is running and at which position, which is what a step's
shape is decided from without reading the device or looping over requests.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Generic, TypeVar

import numpy as np
import torch

from .protocol import SlotStateBase

S = TypeVar("S", bound=SlotStateBase)


class SlotGenerator(Generic[S]):
    """Slot allocation, release and the host copies. Subclasses keep a device ``active`` flag per slot and
    implement ``frames(state, start, stop)``."""

    active: torch.Tensor

    def _init_slots(self, max_batch: int) -> None:
        self.max_batch = max_batch
        self._free = list(range(max_batch))
        self._states: dict[int, S] = {}
        self._host_active = np.zeros(max_batch, dtype=bool)
        self._host_position = np.zeros(max_batch, dtype=np.int64)

    @property
    def free_slots(self) -> int:
        return len(self._free)

    def _claim(self, fill: Callable[[int], S]) -> S:
        """Run ``fill(slot)`` on the lowest free slot and register the state it returns as running. A request
        that fails in ``fill`` does not take its slot with it."""
        if not self._free:
            raise RuntimeError("no free batch slot")
        slot = self._free.pop(0)
        try:
            state = fill(slot)
        except BaseException:
            # Leave no trace: the slot is free and switched off on the device, whatever fill got to.
            self.active[slot] = False
            self._host_position[slot] = 0
            self._free.append(slot)
            self._free.sort()
            raise
        self._states[slot] = state
        self._host_active[slot] = True
        return state

    def _running_slots(self) -> np.ndarray:
        return np.flatnonzero(self._host_active)

    def ready_to_step(self) -> bool:
        """Whether a step would advance anything (a slot waiting for input is held but not stepped)."""
        return bool(self._host_active.any())

    def frames(self, state: S, start: int, stop: int) -> torch.Tensor:
        raise NotImplementedError

    def release(self, state: S) -> None:
        """Free a request's slot (finished or cancelled); it may be reused by the next ``prepare``."""
        if self._states.pop(state.slot, None) is None:
            return
        state._released_at = state.position
        self._host_active[state.slot] = False
        self.active[state.slot] = False
        self._free.append(state.slot)
        self._free.sort()
