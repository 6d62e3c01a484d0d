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
  concurrently and nothing they allocate outlives a replay.
* ``trace``: the same record-once/replay-after discipline on any device, by tracing the step into an FX graph
  with every host value baked in, as a capture bakes them. It exists to prove on a machine without CUDA that
  a step is safe to capture: a replay that reads a stale host value, or a step that needs a device-to-host
  sync, gives different tokens or fails here as it would under capture.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Hashable

import torch

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
        self._recorded[shape] = self._capture(step) if self.mode == CUDA_GRAPHS else self._trace(step)

    def _capture(self, step: Callable[[], None]) -> Callable[[], object]:
        # The warm-up run is this step's real work (lazy tables, cuBLAS handles and workspaces get made here,
        # outside the capture); the capture that follows only records, it does not execute.
        side = torch.cuda.Stream()
        side.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(side):
            step()
        torch.cuda.current_stream().wait_stream(side)
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graph, pool=self._pool):
            step()
        if self._pool is None:
            self._pool = graph.pool()
        log.debug("captured a CUDA graph for step shape #%d", len(self._recorded) + 1)
        return graph.replay

    def _trace(self, step: Callable[[], None]) -> Callable[[], object]:
        from torch.fx.experimental.proxy_tensor import make_fx

        def traced() -> None:
            step()

        # Tracing with real tensors runs the step (this call's real work) and records it.
        try:
            module = make_fx(traced, record_stack_traces=True)()
        except RuntimeError as exc:
            if "_local_scalar_dense" in str(exc):
                raise NotCapturableError("the step reads a device value on the host") from exc
            raise
        for node in module.graph.nodes:
            if node.op == "call_function":
                problem = _capture_problem(node)
                if problem:
                    where = (node.meta.get("stack_trace") or "").strip().splitlines()[-2:]
                    raise NotCapturableError(f"the step {problem} ({node.target}) at {' / '.join(where)}")
        return module


def _capture_problem(node) -> str | None:
    """Why a traced operator could not be recorded in a CUDA graph, or None."""
    name = str(node.target)
    if name in SYNC_OPERATORS:
        return "waits for the device"
    if name == "aten.lift_fresh_copy.default":
        # A Python scalar assigned into a tensor arrives as a 0-dim host tensor and is passed to the kernel as an
        # argument; anything larger is a host-to-device copy.
        value = node.meta.get("val")
        if value is None or value.dim() > 0:
            return "copies host data to the device"
    if name.startswith(("aten.index.", "aten.index_put")):
        indices = node.args[1] if len(node.args) > 1 else ()
        for index in indices or ():
            value = getattr(index, "meta", {}).get("val")
            if value is not None and value.dtype == torch.bool:
                return "indexes with a boolean mask (a data-dependent shape)"
    return None
