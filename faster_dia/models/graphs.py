"""Running a generator's batched decode step once per static shape and replaying it afterwards.

A decode step launches hundreds of small kernels; at small batch sizes the launches, not the arithmetic, set
the pace. On CUDA the step is therefore captured into a CUDA graph the first time each *step shape* is seen
and replayed afterwards: one launch per step. A step shape is everything the host decides about a step (batch
rows, attention lengths, candidate-set sizes); it is rounded up to a few buckets so that a server sees a
handful of shapes, not one per request mix. Everything else a step reads (positions, tokens, per-request
parameters) lives in device buffers that the step updates in place, so a replay with other requests in the
slots is exactly the step those requests would have run eagerly.

Modes:

* ``eager``: call the step (CPU, MPS, or CUDA with graphs off). Shapes are exact, not bucketed.
* ``cuda-graphs``: capture per bucketed shape on the step's first run (one eager run first, as warm-up,
  then a capture that only records), replay after. All graphs share one memory pool; they never run
  concurrently and nothing they allocate outlives a replay. Should a capture fail (an old driver, a library
  op that cannot be captured), the runner logs it once and steps eagerly from then on.
* ``compiled``: the step compiled by ``torch.compile`` (inductor) once per bucketed shape, then the compiled
  step is called (any device; on CPU inductor writes C++ and builds it with the system compiler).
* ``compiled-cuda-graphs``: the compiled step, captured in a CUDA graph as in ``cuda-graphs``: the graph
  replays inductor's fused kernels, far fewer than the eager step's.
* ``trace``: the same record-once/replay-after discipline on any device: the step's operators are recorded
  with every host value as it was, as a capture bakes them, and replayed as a list. It exists to prove on a
  machine without CUDA that a step is safe to capture: a replay that reads a stale host value, or a step that
  needs a device-to-host sync, gives different tokens or fails here as it would under capture. It also counts
  a step's operators (``operator_count``, used by bench/bench_ops.py).

The default is ``cuda-graphs`` on CUDA and ``eager`` elsewhere; the compiled modes are chosen by name, or by
``FASTER_DIA_COMPILE=1`` (see :func:`resolve_mode`). Compiling a shape takes seconds (much longer the first time
on a machine, while inductor's cache is cold), a CUDA graph capture milliseconds.

Warm-up and unseen shapes. ``prepare(shape, step)`` records a shape ahead of traffic (a generator calls it at
load for the shapes it expects, with no request running: the step computes on idle rows and discards what it
computes, as it does for idle rows in any step). Once anything was prepared, a shape first seen while serving is
recorded without compiling: in ``compiled-cuda-graphs`` it is captured from the eager step (a capture costs
about one step), in ``compiled`` it runs eagerly; it is never compiled later, so running streams never wait
seconds for a compile. Without a warm-up every shape is compiled on first use (scripts, tests).
``stalls`` counts the shapes recorded while serving.

Capture hygiene. ``torch.cuda.graph()`` synchronises the device and empties the allocator's cache on every
capture (and may collect garbage); a server that meets a new shape while other threads decode audio should pay
none of that. The runner collects garbage once, before its first capture, keeps the collector off while a
capture runs (so no finaliser frees memory into the capture), and calls ``capture_begin``/``capture_end`` on its
own stream, which waits for the current stream's work instead of the whole device.
"""

from __future__ import annotations

import gc
import logging
import os
from collections.abc import Callable, Hashable

import torch
from torch.overrides import TorchFunctionMode
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_flatten, tree_unflatten

log = logging.getLogger(__name__)

EAGER, CUDA_GRAPHS, TRACE = "eager", "cuda-graphs", "trace"
COMPILED, COMPILED_CUDA_GRAPHS = "compiled", "compiled-cuda-graphs"
MODES = (EAGER, CUDA_GRAPHS, TRACE, COMPILED, COMPILED_CUDA_GRAPHS)
#: Environment variable that turns on the compiled modes where no mode is named ("1" / "0").
COMPILE_ENV = "FASTER_DIA_COMPILE"
#: Compiled step shapes a process may hold: torch.compile recompiles the one step function per shape, and its
#: default limit (8) would quietly fall back to eager steps.
_RECOMPILE_LIMIT = 512

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


def resolve_mode(device: torch.device, cuda_graphs: bool | None, compile: bool | None = None) -> str:
    """The step mode for ``device``: CUDA graphs by default on CUDA, eager elsewhere; ``compile`` (default: the
    ``FASTER_DIA_COMPILE`` environment variable, off when unset) compiles the step with inductor, captured in a
    CUDA graph where graphs are on."""
    if cuda_graphs is None:
        cuda_graphs = device.type == "cuda"
    if cuda_graphs and device.type != "cuda":
        raise ValueError(f"CUDA graphs need a CUDA device; the model is on {device.type}.")
    if compile is None:
        value = os.environ.get(COMPILE_ENV, "").strip().lower()
        if value not in ("", "0", "1", "false", "true", "no", "yes"):
            raise ValueError(f"{COMPILE_ENV} must be 1 or 0, got {value!r}.")
        compile = value in ("1", "true", "yes")
    if compile:
        return COMPILED_CUDA_GRAPHS if cuda_graphs else COMPILED
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
    """Runs ``step()`` for a hashable step shape, recording it (capture, compile or trace) on first use in the
    replaying modes."""

    def __init__(self, mode: str = EAGER):
        if mode not in MODES:
            raise ValueError(f"unknown step mode {mode!r}; expected one of {', '.join(MODES)}")
        self.mode = mode
        self._recorded: dict[Hashable, Callable[[], object]] = {}
        self._pool = None
        self._stream = None
        self._collected = False
        self._prepared = False  # a warm-up ran: from now on an unseen shape is not compiled
        self.stalls = 0  # shapes first recorded while serving

    @property
    def bucketed(self) -> bool:
        """Whether step shapes should be rounded up to buckets (true for the replaying modes)."""
        return self.mode != EAGER

    @property
    def compiles(self) -> bool:
        return self.mode in (COMPILED, COMPILED_CUDA_GRAPHS)

    @property
    def recorded_shapes(self) -> int:
        return len(self._recorded)

    def operator_count(self, shape: Hashable) -> int:
        """Trace mode: how many operators that launch a kernel (see :func:`launches_kernel`) the recorded
        ``shape`` replays."""
        if self.mode != TRACE:
            raise ValueError("operators are counted in the trace mode only")
        return self._recorded[shape].__self__.kernels

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
        if self._prepared:
            self.stalls += 1
            log.info("step shape %s first seen while serving; recorded%s", shape,
                     " without compiling" if self.compiles else "")
        self._record(shape, step, compile=not self._prepared)

    def prepare(self, shape: Hashable, step: Callable[[], None]) -> bool:
        """Record ``shape`` ahead of traffic (compiled where the mode compiles); returns whether it was new.
        The recording runs ``step`` once for real, so call it when no request is running (idle rows compute
        and discard). Nothing in eager mode."""
        if self.mode == EAGER or shape in self._recorded:
            return False
        self._record(shape, step, compile=True)
        self._prepared = True
        return True

    def _record(self, shape: Hashable, step: Callable[[], None], *, compile: bool) -> None:
        if self.mode == TRACE:
            self._recorded[shape] = self._trace(step)
            return
        if self.compiles and compile:
            step = _compiled(step)
        if self.mode == COMPILED:
            step()  # the compile and this step's real work
            self._recorded[shape] = step
            return
        replay = self._capture(step)
        if replay is None:
            self.mode = EAGER
            self._recorded.clear()
        else:
            self._recorded[shape] = replay

    def _capture(self, step: Callable[[], None]) -> Callable[[], object] | None:
        # The warm-up run is this step's real work (lazy tables, cuBLAS handles and workspaces, a compile, get
        # made here, outside the capture); the capture that follows only records, it does not execute.
        if self._stream is None:
            self._stream = torch.cuda.Stream()
        side = self._stream
        side.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(side):
            step()
        if not self._collected:  # once: dead cycles holding device memory go before the first graph's pool
            gc.collect()
            self._collected = True
        graph = torch.cuda.CUDAGraph()
        collecting = gc.isenabled()
        gc.disable()
        try:
            with torch.cuda.stream(side):
                # thread_local: other threads (codecs, the server) may use the GPU while a step is being captured.
                graph.capture_begin(pool=self._pool, capture_error_mode="thread_local")
                try:
                    step()
                finally:
                    graph.capture_end()
        except Exception as exc:  # a driver or library that cannot capture: keep serving, eagerly
            # The warm-up above already did this step's work, so nothing is lost or repeated.
            log.warning("CUDA graph capture failed (%s); decoding without CUDA graphs from now on", exc)
            return None
        finally:
            if collecting:
                gc.enable()
        torch.cuda.current_stream().wait_stream(side)
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


def _compiled(step: Callable[[], None]) -> Callable[[], None]:
    """``step`` compiled by inductor for its one shape (the shape is a constant of the step's closure, so the
    compile specialises on it; every shape is a recompile of the same function, hence the raised limit)."""
    import torch._dynamo

    config = torch._dynamo.config
    config.recompile_limit = max(config.recompile_limit, _RECOMPILE_LIMIT)
    config.accumulated_recompile_limit = max(config.accumulated_recompile_limit, _RECOMPILE_LIMIT)
    return torch.compile(step, backend="inductor", dynamic=False)


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
