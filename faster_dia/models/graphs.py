"""Running a generator's batched decode step once per static shape and replaying it afterwards.

A decode step launches hundreds of small kernels; at small batch sizes the launches, not the arithmetic, set
the pace. On CUDA the step is therefore captured into a CUDA graph the first time each *step shape* is seen
and replayed afterwards: one launch per step. A step shape is everything the host decides about a step (batch
rows, attention lengths, candidate-set sizes); it is rounded up to a few buckets so that a server sees a
handful of shapes, not one per request mix. Everything else a step reads (positions, tokens, per-request
parameters) lives in device buffers that the step updates in place, so a replay with other requests in the
slots is exactly the step those requests would have run eagerly.

Three modes:

* ``eager``: call the step (CPU, MPS, or CUDA with graphs off). Shapes are exact, not bucketed.
* ``cuda-graphs``: capture per bucketed shape on the step's first run (one eager run first, as warm-up,
  then a capture that only records), replay after. All graphs share one memory pool; they never run
  concurrently and nothing they allocate outlives a replay. Should a capture fail (an old driver, a library
  op that cannot be captured), the runner logs it once and steps eagerly from then on.
* ``trace``: the same record-once/replay-after discipline on any device: the step's operators are recorded
  with every host value as it was, as a capture bakes them, and replayed as a list. It exists to prove on a machine without CUDA that
  a step is safe to capture: a replay that reads a stale host value, or a step that needs a device-to-host
  sync, gives different tokens or fails here as it would under capture.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Hashable

import torch
from torch.overrides import TorchFunctionMode
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_flatten, tree_unflatten

log = logging.getLogger(__name__)

EAGER, CUDA_GRAPHS, TRACE = "eager", "cuda-graphs", "trace"
MODES = (EAGER, CUDA_GRAPHS, TRACE)

#: Operators that make the host wait for the device (or size a tensor from device data); none may appear in
#: a captured step.
SYNC_OPERATORS = frozenset({
    "aten._local_scalar_dense.default",
    "aten.item.default",
    "aten.nonzero.default",
    "aten.masked_select.default",
    "aten.unique_dim.default",
    "aten._unique2.default",
    "aten.repeat_interleave.Tensor",
    "aten.equal.default",
    "aten.is_nonzero.default",
})


class NotCapturableError(RuntimeError):
    """The step did something a CUDA graph cannot record (a device-to-host sync, a data-dependent shape)."""


def resolve_mode(device: torch.device, cuda_graphs: bool | None) -> str:
    """The step mode for ``device``: CUDA graphs by default on CUDA, eager elsewhere."""
    if cuda_graphs is None:
        cuda_graphs = device.type == "cuda"
    if cuda_graphs and device.type != "cuda":
        raise ValueError(f"CUDA graphs need a CUDA device; the model is on {device.type}.")
    return CUDA_GRAPHS if cuda_graphs else EAGER


def batch_bucket(rows: int, max_batch: int) -> int:
    """Batch rows rounded up to 1, 2, 4, 8, then multiples of 8 (never past ``max_batch``)."""
    bucket = 1
    while bucket < rows and bucket < 8:
        bucket *= 2
    if bucket < rows:
        bucket = -(-rows // 8) * 8
    return min(bucket, max_batch)


def round_up(value: int, multiple: int, limit: int) -> int:
    return min(-(-value // multiple) * multiple, limit)


def power_of_two_at_least(value: int, smallest: int, limit: int) -> int:
    bucket = smallest
    while bucket < value:
        bucket *= 2
    return min(bucket, limit)


class StepRunner:
    """Runs ``step()`` for a hashable step shape, capturing or tracing it on first use in the replaying modes."""

    def __init__(self, mode: str = EAGER):
        if mode not in MODES:
            raise ValueError(f"unknown step mode {mode!r}; expected one of {', '.join(MODES)}")
        self.mode = mode
        self._recorded: dict[Hashable, Callable[[], object]] = {}
        self._pool = None

    @property
    def bucketed(self) -> bool:
        """Whether step shapes should be rounded up to buckets (true for the replaying modes)."""
        return self.mode != EAGER

    @property
    def recorded_shapes(self) -> int:
        return len(self._recorded)

    def operator_count(self, shape: Hashable) -> int:
        """Trace mode: how many operators that are not views (each a kernel launch on a GPU) the recorded
        ``shape`` replays."""
        replay = self._recorded[shape]
        if self.mode != TRACE:
            raise ValueError("operators are counted in the trace mode only")
        return replay.__self__.kernels

    def run(self, shape: Hashable, step: Callable[[], None]) -> None:
        """Run one step. ``step`` must read and write only persistent device buffers and depend on no host value
        outside ``shape``: in the replaying modes it runs for real only the first time a shape is seen."""
        if self.mode == EAGER:
            step()
            return
        replay = self._recorded.get(shape)
        if replay is not None:
            replay()
            return
        if self.mode == TRACE:
            self._recorded[shape] = self._trace(step)
            return
        replay = self._capture(step)
        if replay is None:
            self.mode = EAGER
            self._recorded.clear()
        else:
            self._recorded[shape] = replay

    def _capture(self, step: Callable[[], None]) -> Callable[[], object] | None:
        # The warm-up run is this step's real work (lazy tables, cuBLAS handles and workspaces get made here,
        # outside the capture); the capture that follows only records, it does not execute.
        side = torch.cuda.Stream()
        side.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(side):
            step()
        torch.cuda.current_stream().wait_stream(side)
        graph = torch.cuda.CUDAGraph()
        try:
            # thread_local: other threads (codecs, the server) may use the GPU while a step is being captured.
            with torch.cuda.graph(graph, pool=self._pool, capture_error_mode="thread_local"):
                step()
        except Exception as exc:  # a driver or library that cannot capture: keep serving, eagerly
            # The warm-up above already did this step's work, so nothing is lost or repeated.
            log.warning("CUDA graph capture failed (%s); decoding without CUDA graphs from now on", exc)
            return None
        if self._pool is None:
            self._pool = graph.pool()
        log.debug("captured a CUDA graph for step shape #%d", len(self._recorded) + 1)
        return graph.replay

    def _trace(self, step: Callable[[], None]) -> Callable[[], object]:
        # Recording with real tensors runs the step (this call's real work) and writes down its operators.
        tape = _Tape()
        with _NoHostData(), tape:
            step()
        return tape.replay


class _Tape(TorchDispatchMode):
    """Records every operator a step dispatches, with host values as they were, and replays the list: tensors
    that existed before the step (buffers, weights) are used in place, tensors the step made are made again.
    Like a CUDA graph, a replay cannot see host values that changed since the recording."""

    def __init__(self):
        super().__init__()
        self._ops: list[tuple] = []
        self._made: dict[int, int] = {}  # id of a tensor made by the step -> its result slot
        self._slots = 0
        self._alive: list[torch.Tensor] = []  # keeps ids unique while recording
        self.kernels = 0  # recorded operators that are not views (see launches_kernel)

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        name = str(func)
        problem = _capture_problem(name, args)
        if problem:
            raise NotCapturableError(f"the step {problem} ({name})")
        out = func(*args, **kwargs)
        self.kernels += launches_kernel(func, args, out)
        flat, spec = tree_flatten((args, kwargs))
        refs = []
        for leaf in flat:
            if isinstance(leaf, torch.Tensor):
                slot = self._made.get(id(leaf))
                refs.append(("made", slot) if slot is not None else ("kept", leaf))
            else:
                refs.append(("value", leaf))
        outputs, _ = tree_flatten(out)
        out_slots = []
        for leaf in outputs:
            if isinstance(leaf, torch.Tensor):
                self._made[id(leaf)] = self._slots
                self._alive.append(leaf)
                out_slots.append(self._slots)
                self._slots += 1
            else:
                out_slots.append(None)
        self._ops.append((func, refs, spec, out_slots))
        return out

    def replay(self) -> None:
        results: list[torch.Tensor | None] = [None] * self._slots
        for func, refs, spec, out_slots in self._ops:
            leaves = [results[v] if kind == "made" else v for kind, v in refs]
            args, kwargs = tree_unflatten(leaves, spec)
            outputs, _ = tree_flatten(func(*args, **kwargs))
            for slot, leaf in zip(out_slots, outputs, strict=True):
                if slot is not None:
                    results[slot] = leaf

    def __exit__(self, *exc):
        self._alive = []
        return super().__exit__(*exc)


class _NoHostData(TorchFunctionMode):
    """Fails on host data entering a step or device values leaving it (a capture cannot record either)."""

    _FORBIDDEN = {torch.tensor, torch.as_tensor, torch.from_numpy, torch.Tensor.tolist, torch.Tensor.numpy,
                  torch.Tensor.item, torch.Tensor.__bool__, torch.Tensor.__int__, torch.Tensor.__float__}

    def __torch_function__(self, func, types, args=(), kwargs=None):
        if func in self._FORBIDDEN:
            raise NotCapturableError(f"the step calls {getattr(func, '__name__', func)}, which moves data between "
                                     "host and device")
        return func(*args, **(kwargs or {}))


def launches_kernel(func, args: tuple, out) -> bool:
    """Whether a dispatched operator does device work: not an allocation, not a view, and not an operator that may
    alias (such as ``aten.to``) returning its input unchanged."""
    if str(func).startswith(("aten.empty.", "aten.empty_strided.", "aten.empty_like.")):
        return False
    if not func.is_view:
        return True
    first = next((a for a in tree_flatten(args)[0] if isinstance(a, torch.Tensor)), None)
    outputs = [o for o in tree_flatten(out)[0] if isinstance(o, torch.Tensor)]
    return first is None or not all(torch._C._is_alias_of(o, first) for o in outputs)


def _capture_problem(name: str, args: tuple) -> str | None:
    """Why a dispatched operator could not be recorded in a CUDA graph, or None."""
    if name in SYNC_OPERATORS:
        return "waits for the device"
    if name.startswith(("aten.index.", "aten.index_put", "aten._index_put_impl")) and len(args) > 1:
        for index in args[1] or ():
            if isinstance(index, torch.Tensor) and index.dtype in (torch.bool, torch.uint8):
                return "indexes with a boolean mask (a data-dependent shape)"
    return None
