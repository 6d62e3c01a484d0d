#!/usr/bin/env python
"""Decode speed of faster-dia against transformers' ``DiaForConditionalGeneration`` on the same random weights.

For each config (``tiny``, ``mid``, ``full``) one random checkpoint is written in the transformers layout of
``nari-labs/Dia-1.6B-0626`` and loaded by both implementations. Both then decode greedily with classifier-free
guidance (scale 3.0, top_k 45, temperature 0) for a fixed number of steps; only the decoder steps are timed
(encoder, cross-attention projections and the first steps are outside the timed region). A bare loop of the
step's matrix products gives the floor a decode step cannot beat. See bench/README.md for what each number means.

    .venv/bin/python bench/bench_dia1.py                      # CPU: tiny and mid, float32 and bfloat16
    .venv/bin/python bench/bench_dia1.py --device cuda        # GPU: tiny and full 1.6B in bfloat16
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
import warnings
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from functools import partial
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F

from faster_dia.models.dia1.checkpoint import load_checkpoint
from faster_dia.models.dia1.config import Dia1Config
from faster_dia.models.dia1.generator import Dia1Generator, Dia1Request
from faster_dia.models.dia1.model import Dia1Model
from faster_dia.script import encode_script, normalize_script
from faster_dia.testing import write_tiny_checkpoint

REPO_ROOT = Path(__file__).resolve().parent.parent
DEFAULT_OUT = REPO_ROOT / "bench" / "results" / "dia1.json"

#: DAC 44.1 kHz with hop length 512: one decoder step yields one frame, 86.13 frames make a second of audio.
FRAMES_PER_SECOND = 44100 / 512

CFG_SCALE = 3.0
TOP_K = 45

#: About 120 bytes, a typical two-speaker line; the same text for every request of a batch, so that
#: transformers sees no text padding.
SCRIPT = (
    "[S1] The benchmark reads every decoder weight once per step. "
    "[S2] So the batch is almost free, right? [S1] Almost."
)

#: The real Dia-1.6B widths (reference dia1 §1.2); layer counts are set per config below.
REAL_WIDTHS: dict[str, Any] = {
    "encoder_hidden_size": 1024,
    "encoder_intermediate_size": 4096,
    "encoder_heads": 16,
    "encoder_kv_heads": 16,
    "encoder_head_dim": 128,
    "decoder_hidden_size": 2048,
    "decoder_intermediate_size": 8192,
    "decoder_heads": 16,
    "decoder_kv_heads": 4,
    "decoder_head_dim": 128,
    "cross_heads": 16,
    "cross_kv_heads": 16,
    "cross_head_dim": 128,
}

#: Overrides of the tiny defaults of ``faster_dia.testing``. ``tiny`` is all per-step overhead (as a GPU at
#: batch 1 is); ``mid`` has the real matrix sizes but 4 decoder layers so that a CPU can run it; ``full`` is
#: the real 1.6B model.
CONFIGS: dict[str, dict[str, Any]] = {
    "tiny": {},
    "mid": {**REAL_WIDTHS, "encoder_layers": 2, "decoder_layers": 4},
    "full": {**REAL_WIDTHS, "encoder_layers": 12, "decoder_layers": 18},
}

#: Timed steps and warm-up steps per repeat: enough for a stable median where a step is cheap, few where a
#: step of a CPU run takes most of a second.
DEFAULT_STEPS = {"tiny": 32, "mid": 8, "full": 64}
DEFAULT_WARMUP = {"tiny": 8, "mid": 2, "full": 8}

DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}

IMPL_OURS = "faster-dia"
IMPL_EAGER = "faster-dia, no CUDA graphs"  # on CUDA only: the same generator stepping eagerly
IMPL_HF = "transformers"
IMPL_FLOOR = "floor: matvecs"
IMPL_BW_FLOOR = "floor: bytes/bandwidth"


# --------------------------------------------------------------------------------------------------------
# Helpers
# --------------------------------------------------------------------------------------------------------


def sync(device: torch.device) -> None:
    """Wait for queued device work, so that host clocks measure the device's time."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def free_memory(device: torch.device) -> None:
    gc.collect()
    if device.type == "cuda":
        torch.cuda.empty_cache()


def element_size(dtype: torch.dtype) -> int:
    return torch.empty((), dtype=dtype).element_size()


def decoder_step_matrices(c: Dia1Config) -> list[tuple[int, int]]:
    """(out, in) of every matrix one decode step multiplies by: per decoder layer the fused self-attention
    q/k/v, its output, the cross-attention query and output, the fused gate/up and the down projection; then
    the logits head. Cross-attention keys/values are computed once per request, so they are not here."""
    dh = c.decoder_hidden_size
    q = c.decoder_heads * c.decoder_head_dim
    kv = c.decoder_kv_heads * c.decoder_head_dim
    cq = c.cross_heads * c.cross_head_dim
    per_layer = [
        (q + 2 * kv, dh),
        (dh, q),
        (cq, dh),
        (dh, cq),
        (2 * c.decoder_intermediate_size, dh),
        (dh, c.decoder_intermediate_size),
    ]
    return per_layer * c.decoder_layers + [(c.channels * c.audio_vocab_size, dh)]


def weight_bytes_per_step(c: Dia1Config, dtype: torch.dtype) -> int:
    return sum(o * i for o, i in decoder_step_matrices(c)) * element_size(dtype)


def kv_bytes_per_step(c: Dia1Config, dtype: torch.dtype, rows: int, position: int, text_length: int) -> int:
    """Bytes of cached keys and values one step reads at decoder ``position``: self-attention keys/values of
    positions 0 … position and the cross-attention keys/values of the text, for every layer and row."""
    self_kv = 2 * c.decoder_kv_heads * c.decoder_head_dim * (position + 1)
    cross_kv = 2 * c.cross_kv_heads * c.cross_head_dim * text_length
    return c.decoder_layers * rows * (self_kv + cross_kv) * element_size(dtype)


# --------------------------------------------------------------------------------------------------------
# Timed runs. Each returns seconds per decode step for steps warmup … warmup + steps - 1.
# --------------------------------------------------------------------------------------------------------


def time_faster_dia(
    generator: Dia1Generator, requests: list[Dia1Request], *, warmup: int, steps: int, device: torch.device
) -> float:
    """Prepare the requests (encoder, cross-attention cache: untimed), step ``warmup`` times, then time
    ``steps`` calls of ``Dia1Generator.step`` for the whole batch."""
    states = [generator.prepare(r) for r in requests]
    try:
        for _ in range(warmup):
            generator.step()
        sync(device)
        start = time.perf_counter()
        for _ in range(steps):
            generator.step()
        sync(device)
        elapsed = time.perf_counter() - start
        if any(s.finished for s in states):
            # The checkpoint's EOS logit is 0 and max_new_tokens is the model's limit, so this means the
            # setup no longer does what it should; a timing over fewer live requests would mislead.
            raise RuntimeError("a faster-dia request finished inside the timed region; the timing is invalid")
    finally:
        for s in states:
            generator.release(s)
    return elapsed / steps


class StepClock:
    """A transformers streamer that only notes the time of each ``put``. ``generate`` calls ``put`` once with
    the decoder start tokens and then once after every decoding step, with the new tokens copied to the
    host, which waits for the step to finish on a GPU (transformers' loop waits there anyway, to check
    whether every sequence has ended)."""

    def __init__(self) -> None:
        self.times: list[float] = []

    def put(self, value: torch.Tensor) -> None:
        self.times.append(time.perf_counter())

    def end(self) -> None:
        pass


def time_transformers(
    model: Any, inputs: dict[str, torch.Tensor], *, warmup: int, steps: int, device: torch.device
) -> float:
    """One ``generate`` call of ``warmup + steps`` new tokens; the streamer's time stamps cut out the encoder,
    the prefill and the warm-up steps."""
    clock = StepClock()
    with torch.inference_mode():
        out = model.generate(
            **inputs,
            max_new_tokens=warmup + steps,
            do_sample=False,
            guidance_scale=CFG_SCALE,
            top_k=TOP_K,
            # Greedy either way; 1.0 drops the no-op temperature warper the checkpoint's 1.2 would add.
            temperature=1.0,
            streamer=clock,
        )
    sync(device)
    # times[0] is the start tokens, times[k] the end of step k.
    if len(clock.times) < warmup + steps + 1:
        raise RuntimeError(
            f"transformers stopped after {len(clock.times) - 1} steps (output {tuple(out.shape)}), "
            f"fewer than the {warmup + steps} asked for; the timing is invalid"
        )
    return (clock.times[warmup + steps] - clock.times[warmup]) / steps


class MatvecFloor:
    """The bare matrix products of one decode step: every decoder weight read once, nothing else (no
    attention, norms, embeddings or sampling). ``rows`` = 2 x batch for CFG. Weights and inputs are
    preallocated, in the benchmark's dtype; the weights are random (not uninitialised: denormals or NaNs
    could slow a CPU down)."""

    def __init__(self, c: Dia1Config, *, rows: int, dtype: torch.dtype, device: torch.device):
        gen = torch.Generator(device=device).manual_seed(0)
        self.pairs: list[tuple[torch.Tensor, torch.Tensor]] = []
        inputs: dict[int, torch.Tensor] = {}
        for out_features, in_features in decoder_step_matrices(c):
            weight = torch.randn(out_features, in_features, generator=gen, device=device, dtype=torch.float32)
            weight = weight.mul_(in_features**-0.5).to(dtype)
            if in_features not in inputs:
                inputs[in_features] = torch.randn(rows, in_features, generator=gen, device=device).to(dtype)
            self.pairs.append((inputs[in_features], weight))
        self.bytes = sum(w.numel() * w.element_size() for _, w in self.pairs)

    def run(self, *, steps: int, device: torch.device) -> float:
        with torch.inference_mode():
            for x, w in self.pairs:  # one untimed pass: first-touch costs
                F.linear(x, w)
            sync(device)
            start = time.perf_counter()
            for _ in range(steps):
                for x, w in self.pairs:
                    F.linear(x, w)
            sync(device)
        return (time.perf_counter() - start) / steps


def measure_bandwidth(device: torch.device, *, nbytes: int = 1 << 30, repeats: int = 20) -> float:
    """Device memory bandwidth in bytes/s from a large device-to-device copy (it reads and writes ``nbytes``)."""
    src = torch.empty(nbytes, dtype=torch.uint8, device=device)
    dst = torch.empty_like(src)
    dst.copy_(src)
    sync(device)
    times = []
    for _ in range(repeats):
        begin, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        begin.record()
        dst.copy_(src)
        end.record()
        end.synchronize()
        times.append(begin.elapsed_time(end) / 1000)
    del src, dst
    free_memory(device)
    return 2 * nbytes / statistics.median(times)


def measure_read_bandwidth_cpu(*, nbytes: int = 1 << 29, repeats: int = 5) -> float:
    """Host memory read bandwidth in bytes/s from summing a large tensor: context for the CPU floor, since a
    matrix-vector product with two or eight rows need not reach it."""
    data = torch.ones(nbytes // 4, dtype=torch.float32)
    data.sum()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        data.sum()
        times.append(time.perf_counter() - start)
    return nbytes / statistics.median(times)


# --------------------------------------------------------------------------------------------------------
# One config
# --------------------------------------------------------------------------------------------------------


@dataclass
class Row:
    config: str
    dtype: str
    batch: int
    impl: str
    ms_per_step: float
    steps_per_s: float
    x_transformers: float | None = None  # transformers' time / this time (> 1: faster than transformers)
    x_floor: float | None = None  # this time / the floor (>= 1; 1 would be the floor itself)
    x_realtime: float | None = None  # seconds of audio per wall-clock second, all requests of the batch
    peak_mib: float | None = None  # GPU only: own weights + peak extra memory while decoding
    weight_bytes: int | None = None
    kv_bytes: int | None = None
    bandwidth_gb_s: float | None = None  # floor rows: (weight + KV bytes) / time
    samples_ms: list[float] = field(default_factory=list)


def transformers_inputs(text: torch.Tensor, batch: int, c: Dia1Config, device: torch.device) -> dict[str, torch.Tensor]:
    """What ``DiaProcessor`` makes of ``batch`` copies of the script without an audio prompt."""
    input_ids = text.view(1, -1).expand(batch, -1).contiguous().to(device)
    return {
        "input_ids": input_ids,
        "attention_mask": torch.ones_like(input_ids),
        "decoder_input_ids": torch.full((batch, 1, c.channels), c.bos_token_id, dtype=torch.long, device=device),
        "decoder_attention_mask": torch.ones(batch, 1 + c.max_delay, dtype=torch.long, device=device),
    }


def measure(fn: Callable[[], float], device: torch.device) -> tuple[float, float | None]:
    """Run ``fn``; return its result and, on a GPU, the peak memory it added above what was allocated."""
    if device.type != "cuda":
        return fn(), None
    free_memory(device)
    before = torch.cuda.memory_allocated(device)
    torch.cuda.reset_peak_memory_stats(device)
    result = fn()
    return result, float(torch.cuda.max_memory_allocated(device) - before)


def bench_config(
    name: str, args: argparse.Namespace, device: torch.device, workdir: Path, log: Callable[[str], None]
) -> list[Row]:
    from transformers import DiaForConditionalGeneration

    ckpt_dir = workdir / name
    log(f"[{name}] writing a random checkpoint")
    began = time.perf_counter()
    # EOS logit scale 0 makes the channel-0 EOS logit exactly 0, far below the best of ~1000 random logits,
    # so neither implementation stops early and both run the same number of steps.
    write_tiny_checkpoint("dia-1.6b-0626", ckpt_dir, config_overrides=CONFIGS[name], eos_logit_scale=0.0)
    checkpoint = load_checkpoint(ckpt_dir)
    c = checkpoint.config
    log(f"[{name}] checkpoint written and read in {time.perf_counter() - began:.1f} s")
    text = torch.tensor(encode_script(normalize_script(SCRIPT)), dtype=torch.long)
    steps = args.steps or DEFAULT_STEPS[name]
    warmup = DEFAULT_WARMUP[name] if args.warmup is None else args.warmup
    mid_position = warmup + steps // 2  # the average decoder position of the timed steps
    rows: list[Row] = []

    for dtype_name in args.dtypes:
        dtype = DTYPES[dtype_name]
        log(f"[{name} {dtype_name}] loading transformers and faster-dia")
        hf = DiaForConditionalGeneration.from_pretrained(ckpt_dir, dtype=dtype).to(device).eval()
        ours = Dia1Model.from_hf_state_dict(c, checkpoint.state_dict, dtype=dtype, device=device)
        own_bytes = {
            IMPL_HF: sum(p.numel() * p.element_size() for p in hf.parameters()),
            IMPL_OURS: sum(p.numel() * p.element_size() for p in ours.parameters()),
        }
        # The floor matters where the weights dominate; on the tiny config it is all overhead.
        with_floor = name != "tiny"
        bandwidth = measure_bandwidth(device) if device.type == "cuda" and with_floor else None

        for batch in args.batches:
            allocated = torch.cuda.memory_allocated(device) if device.type == "cuda" else 0
            generator = Dia1Generator(ours, max_batch=batch)
            # The generator's static caches live outside the timed calls; count them as faster-dia's own.
            held = dict(own_bytes)
            if device.type == "cuda":
                held[IMPL_OURS] += torch.cuda.memory_allocated(device) - allocated
            requests = [
                Dia1Request(text=text, seed=i, temperature=0.0, top_k=TOP_K, cfg_scale=CFG_SCALE) for i in range(batch)
            ]
            inputs = transformers_inputs(text, batch, c, device)
            floor = MatvecFloor(c, rows=2 * batch, dtype=dtype, device=device) if with_floor else None
            if floor is not None:
                held[IMPL_FLOOR] = floor.bytes
            # Each run takes the number of timed steps.
            runs: dict[str, Callable[..., float]] = {
                IMPL_OURS: partial(time_faster_dia, generator, requests, warmup=warmup, device=device),
                IMPL_HF: partial(time_transformers, hf, inputs, warmup=warmup, device=device),
            }
            if device.type == "cuda":
                eager = Dia1Generator(ours, max_batch=batch, step_mode="eager")
                runs[IMPL_EAGER] = partial(time_faster_dia, eager, requests, warmup=warmup, device=device)
                held[IMPL_EAGER] = held[IMPL_OURS]
            if floor is not None:
                runs[IMPL_FLOOR] = partial(floor.run, device=device)

            # One short untimed round first: the first calls of a process pay for thread pools, allocator
            # growth and lazy initialisation, many times over a step's cost on the tiny config.
            for fn in runs.values():
                fn(steps=1)
            # Repeats interleave the implementations so that a slow spell of a shared machine hits all of them.
            samples: dict[str, list[float]] = {impl: [] for impl in runs}
            peaks: dict[str, float] = {}
            for repeat in range(args.repeats):
                for impl, fn in runs.items():
                    seconds, peak = measure(partial(fn, steps=steps), device)
                    samples[impl].append(seconds)
                    if peak is not None:
                        peaks[impl] = max(peaks.get(impl, 0.0), peak)
                log(
                    f"[{name} {dtype_name} b{batch}] repeat {repeat + 1}/{args.repeats}: "
                    + ", ".join(f"{impl} {s[-1] * 1e3:.2f} ms" for impl, s in samples.items())
                )

            median = {impl: statistics.median(s) for impl, s in samples.items()}
            weights = weight_bytes_per_step(c, dtype)
            kv = kv_bytes_per_step(c, dtype, 2 * batch, mid_position, int(text.numel()))
            floor_time = median.get(IMPL_FLOOR)
            if bandwidth is not None:
                # On a GPU the floor is what the memory system allows: weights and KV cache read once per step.
                median[IMPL_BW_FLOOR] = (weights + kv) / bandwidth
                floor_time = median[IMPL_BW_FLOOR]

            for impl, seconds in median.items():
                row = Row(
                    config=name, dtype=dtype_name, batch=batch, impl=impl, ms_per_step=seconds * 1e3,
                    steps_per_s=1.0 / seconds, x_transformers=median[IMPL_HF] / seconds,
                    x_floor=seconds / floor_time if floor_time else None,
                    x_realtime=batch / seconds / FRAMES_PER_SECOND,
                    samples_ms=[s * 1e3 for s in samples.get(impl, [])],
                )
                if impl in peaks:
                    row.peak_mib = (held[impl] + peaks[impl]) / 2**20
                if impl == IMPL_FLOOR:
                    row.weight_bytes = floor.bytes
                    row.bandwidth_gb_s = floor.bytes / seconds / 1e9
                elif impl == IMPL_BW_FLOOR:
                    row.weight_bytes, row.kv_bytes = weights, kv
                    row.bandwidth_gb_s = bandwidth / 1e9
                elif with_floor:
                    row.weight_bytes, row.kv_bytes = weights, kv
                    row.bandwidth_gb_s = (weights + kv) / seconds / 1e9
                rows.append(row)
            eager = None
            del generator, floor, runs
            free_memory(device)

        del hf, ours
        free_memory(device)
    return rows


# --------------------------------------------------------------------------------------------------------
# Output
# --------------------------------------------------------------------------------------------------------


def machine_info(device: torch.device) -> dict[str, Any]:
    import transformers

    info: dict[str, Any] = {
        "torch": torch.__version__,
        "transformers": transformers.__version__,
        "python": platform.python_version(),
        "device": device.type,
        "threads": torch.get_num_threads(),
        "cpu_count": os.cpu_count(),
        "cpu": _cpu_name(),
    }
    if device.type == "cuda":
        props = torch.cuda.get_device_properties(device)
        info.update(gpu=props.name, gpu_memory_gib=round(props.total_memory / 2**30, 1), cuda=torch.version.cuda)
    try:
        commit = subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"], cwd=REPO_ROOT, capture_output=True, text=True, check=True
        ).stdout.strip()
        info["commit"] = commit
    except (OSError, subprocess.CalledProcessError):
        pass
    return info


def _cpu_name() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def _fmt(value: float | None, spec: str) -> str:
    return "" if value is None else format(value, spec)


def print_table(rows: list[Row], device: torch.device, read_bandwidth: float | None = None) -> None:
    headers = ["config", "dtype", "batch", "impl", "ms/step", "steps/s", "x transformers", "x floor", "x realtime"]
    if device.type == "cuda":
        headers.append("peak MiB")
    lines = []
    for r in rows:
        cells = [
            r.config, r.dtype, str(r.batch), r.impl, _fmt(r.ms_per_step, ".2f"), _fmt(r.steps_per_s, ".1f"),
            _fmt(r.x_transformers, ".2f"), _fmt(r.x_floor, ".2f"), _fmt(r.x_realtime, ".2f"),
        ]
        if device.type == "cuda":
            cells.append(_fmt(r.peak_mib, ".0f"))
        lines.append(cells)
    widths = [max(len(h), *(len(line[i]) for line in lines)) for i, h in enumerate(headers)]
    numeric = {"batch", "ms/step", "steps/s", "x transformers", "x floor", "x realtime", "peak MiB"}

    def render(cells: list[str]) -> str:
        return "  ".join(
            cell.rjust(w) if h in numeric else cell.ljust(w) for cell, w, h in zip(cells, widths, headers, strict=True)
        )

    print(render(headers))
    print("  ".join("-" * w for w in widths))
    previous = None
    for r, cells in zip(rows, lines, strict=True):
        if previous is not None and (r.config, r.dtype, r.batch) != previous:
            print()
        previous = (r.config, r.dtype, r.batch)
        print(render(cells))

    # Bytes and implied bandwidth, once per (config, dtype, batch) that has a floor.
    floors = [r for r in rows if r.impl in (IMPL_FLOOR, IMPL_BW_FLOOR)]
    if floors:
        print("\nBytes read per step and implied bandwidth:")
    for r in floors:
        what = f"{r.config} {r.dtype} b{r.batch}"
        if r.impl == IMPL_FLOOR:
            print(f"  {what}: matvec floor reads {r.weight_bytes / 1e9:.3f} GB of weights per step "
                  f"-> {r.bandwidth_gb_s:.1f} GB/s")
            if read_bandwidth:
                print(f"    (a plain read streams at {read_bandwidth / 1e9:.1f} GB/s: "
                      f"{r.weight_bytes / read_bandwidth * 1e3:.1f} ms for these weights)")
        else:
            print(f"  {what}: weights {r.weight_bytes / 1e9:.3f} GB + KV {r.kv_bytes / 1e9:.3f} GB per step at "
                  f"{r.bandwidth_gb_s:.0f} GB/s (copy) -> floor {r.ms_per_step:.2f} ms")
        for impl in (IMPL_OURS, IMPL_EAGER, IMPL_HF):
            match = [x for x in rows if (x.config, x.dtype, x.batch, x.impl) == (r.config, r.dtype, r.batch, impl)]
            if match and match[0].bandwidth_gb_s:
                print(f"    {impl}: weights + KV at {match[0].bandwidth_gb_s:.1f} GB/s effective")


# --------------------------------------------------------------------------------------------------------
# Main
# --------------------------------------------------------------------------------------------------------


def _csv(kind: Callable[[str], Any]) -> Callable[[str], list[Any]]:
    return lambda text: [kind(part.strip()) for part in text.split(",") if part.strip()]


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--device", choices=["cpu", "cuda"], default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--configs", type=_csv(str), help="comma list of tiny, mid, full "
                        "(default: tiny,mid on cpu; tiny,full on cuda)")
    parser.add_argument("--dtypes", type=_csv(str), help="comma list of float32, bfloat16, float16 "
                        "(default: float32,bfloat16 on cpu; bfloat16 on cuda)")
    parser.add_argument("--batches", type=_csv(int), default=[1, 4], help="comma list of batch sizes (default 1,4)")
    parser.add_argument("--steps", type=int, help="timed decode steps per repeat "
                        f"(default per config: {DEFAULT_STEPS})")
    parser.add_argument("--warmup", type=int, help="untimed decode steps before them in every repeat "
                        f"(default per config: {DEFAULT_WARMUP})")
    parser.add_argument("--repeats", type=int, default=3, help="repeats; medians are reported (default 3)")
    parser.add_argument("--threads", type=int, help="torch CPU threads (default: torch's choice)")
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT, help=f"JSON output (default {DEFAULT_OUT})")
    args = parser.parse_args(argv)
    gpu = args.device == "cuda"
    args.configs = args.configs or (["tiny", "full"] if gpu else ["tiny", "mid"])
    args.dtypes = args.dtypes or (["bfloat16"] if gpu else ["float32", "bfloat16"])
    for value in args.configs:
        if value not in CONFIGS:
            parser.error(f"unknown config {value!r}; choose from {', '.join(CONFIGS)}")
    for value in args.dtypes:
        if value not in DTYPES:
            parser.error(f"unknown dtype {value!r}; choose from {', '.join(DTYPES)}")
    if gpu and not torch.cuda.is_available():
        parser.error("--device cuda but no CUDA device is available")
    if min(args.steps or 1, args.repeats, *args.batches) < 1 or (args.warmup or 0) < 0:
        parser.error("--steps, --repeats and --batches must be positive, --warmup non-negative")
    # Both implementations must stay clear of the forced end of the decoder's 3072 positions.
    if (args.warmup or 0) + (args.steps or 0) > 3000:
        parser.error("--warmup + --steps must stay below 3000 (the decoder has 3072 positions)")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    if device.type == "cpu" and "full" in args.configs:
        print("note: the full 1.6B config on a CPU takes minutes per repeat", file=sys.stderr)

    # Quiet transformers' generation-config and non-delayed-input notices; they repeat for every call.
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    import transformers

    transformers.logging.set_verbosity_error()
    transformers.logging.disable_progress_bar()
    warnings.filterwarnings("ignore", module="transformers")

    def log(message: str) -> None:
        print(message, file=sys.stderr, flush=True)

    rows: list[Row] = []
    with tempfile.TemporaryDirectory(prefix="bench_dia1_") as tmp:
        for name in args.configs:
            rows += bench_config(name, args, device, Path(tmp), log)

    info = machine_info(device)
    read_bandwidth = None
    if device.type == "cpu" and any(r.impl == IMPL_FLOOR for r in rows):
        read_bandwidth = measure_read_bandwidth_cpu()
        info["read_bandwidth_gb_s"] = read_bandwidth / 1e9
    print()
    print_table(rows, device, read_bandwidth)
    result = {
        "machine": info,
        "settings": {
            "steps": {n: args.steps or DEFAULT_STEPS[n] for n in args.configs},
            "warmup": {n: DEFAULT_WARMUP[n] if args.warmup is None else args.warmup for n in args.configs},
            "repeats": args.repeats, "cfg_scale": CFG_SCALE,
            "top_k": TOP_K, "temperature": 0.0, "script_bytes": len(encode_script(normalize_script(SCRIPT))),
        },
        "rows": [asdict(r) for r in rows],
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2) + "\n")
    print(f"\nwrote {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
