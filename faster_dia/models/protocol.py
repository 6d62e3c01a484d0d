"""The contract between the engine and a model family's generator, as code.

The engine (faster_dia/engine.py) is typed against :class:`Generator` and imports no model family. A family
provides a generator over a fixed number of batch slots, a request type (any object with a ``seed``) and a
slot state derived from :class:`SlotStateBase`. docs/ARCHITECTURE.md explains the rules in prose; the
important one for batching is that a request's tokens do not depend on the requests next to it.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Protocol, TypeVar, runtime_checkable

import numpy as np
import torch


class RequestBase:
    """What every family's request has: the seed its random draws are keyed by."""

    seed: int


@dataclass(eq=False)
class SlotStateBase:
    """What every request's slot state has: its slot (its handle while it runs), its row in the generator's
    buffers (which a dense generator may change when another request leaves, see models/slots.py), its
    position (read from the generator's host copy), whether it finished and how many of its frames are final."""

    slot: int
    row: int = field(default=-1, kw_only=True)
    _positions: np.ndarray | None = field(default=None, kw_only=True, repr=False)
    _released_at: int | None = field(default=None, kw_only=True)
    #: Set by the generator's ``step`` when the request ends (each family's state declares it as a field).
    finished: bool = field(default=False, kw_only=True)

    @property
    def position(self) -> int:
        """The decoder position fed by the next step (frozen once the slot is released)."""
        if self._released_at is not None:
            return self._released_at
        return int(self._positions[self.row])

    @property
    def final_frames(self) -> int:
        """Frames of the result that no later step changes (what may be decoded and streamed)."""
        raise NotImplementedError


R = TypeVar("R", bound=RequestBase, contravariant=True)
S = TypeVar("S", bound=SlotStateBase)


@runtime_checkable
class Generator(Protocol[R, S]):
    """One model family's per-step generation over ``max_batch`` slots.

    - ``validate(request)``: raise :class:`~faster_dia.errors.InvalidInputError` for a request the model cannot
      run. Called once per request, in the submitting thread, before the request waits for a slot.
    - ``prepare(request) -> state``: claim a free slot for a validated request and do its prefill (encoder,
      prompt). A request that fails here leaves no trace: its slot is free again, nothing stays active.
    - ``step() -> finished``: advance every running request by one step in one batched call; return the
      states that finished with it (their slots stay held until ``release``).
    - ``frames(state, start, stop)``: codec codes ``[stop - start, codebooks]`` of final frames.
    - ``release(state)``: free the slot of a finished or cancelled request.
    - ``ready_to_step()``: whether any running request can take a step now (requests may wait for input).
    """

    max_batch: int

    @property
    def free_slots(self) -> int: ...

    def validate(self, request: R) -> object: ...

    def prepare(self, request: R) -> S: ...

    def step(self) -> list[S]: ...

    def frames(self, state: S, start: int, stop: int) -> torch.Tensor: ...

    def release(self, state: S) -> None: ...

    def ready_to_step(self) -> bool: ...
