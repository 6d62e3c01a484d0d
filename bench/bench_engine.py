#!/usr/bin/env python
"""Aggregate throughput of the batching engine under concurrent requests, and of the HTTP server above it.

For one random checkpoint (``tiny`` or ``mid`` sizes, transformers layout of ``nari-labs/Dia-1.6B-0626``, its
channel-0 EOS logit fixed at 0 so that no request stops early) it measures, at each concurrency N:

* the engine with ``max_batch = N``, N requests submitted at once (different texts and seeds, one length);
* the same engine one request at a time (``max_batch = 1``, requests back to back);
* transformers' ``DiaForConditionalGeneration.generate`` on the same N texts as one batch;
* unless ``--no-server``: N concurrent clients streaming PCM from ``/v1/audio/speech`` over real HTTP
  (uvicorn on 127.0.0.1, the ``openai`` client), with time to first audio and per-request speed.

See bench/README.md ("bench_engine.py") for what each column means.

    .venv/bin/python bench/bench_engine.py --config tiny
    .venv/bin/python bench/bench_engine.py --config mid --frames 64
"""

from __future__ import annotations

import argparse
import contextlib
import gc
import json
import os
import platform
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import warnings
from collections.abc import Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch

# The configs, byte counts and bandwidth probe of the decode-step benchmark (run as scripts, bench/ is on the
# path).
from bench_dia1 import CONFIGS, kv_bytes_per_step, measure_bandwidth, weight_bytes_per_step
from scripts import script_for

import faster_dia
from faster_dia.engine import Engine
from faster_dia.models.dia1.generator import Dia1Generator, Dia1Request
from faster_dia.script import encode_script, normalize_script
from faster_dia.server.uvicorn_config import uvicorn_config
from faster_dia.testing import write_tiny_checkpoint

REPO_ROOT = Path(__file__).resolve().parent.parent
DEFAULT_OUT = REPO_ROOT / "bench" / "results" / "engine.json"

#: DAC 44.1 kHz with hop length 512: 86.13 frames are one second of audio.
FRAMES_PER_SECOND = 44100 / 512
#: The server's ``pcm`` format: 16-bit mono at 24 kHz.
PCM_BYTES_PER_SECOND = 2 * 24000

CFG_SCALE = 3.0
TOP_K = 45
TOP_P = 0.95

#: Audio frames per request, requests run one at a time, and timed repeats: a tiny step costs milliseconds,
#: a mid step on a CPU a good part of a second.
DEFAULT_FRAMES = {"tiny": 200, "mid": 64, "full": 400}
DEFAULT_SEQUENTIAL = {"tiny": 16, "mid": 2, "full": 4}
DEFAULT_REPEATS = {"tiny": 3, "mid": 1, "full": 2}



# --------------------------------------------------------------------------------------------------------
# Results
# --------------------------------------------------------------------------------------------------------


@dataclass
class ThroughputRow:
    """One concurrency level: aggregate audio frames per wall-clock second of each way of serving it."""

    config: str
    concurrency: int
    frames_per_request: int  # asked for: max_new_tokens = frames + max_delay + 1
    max_new_tokens: int
    engine_frames: list[int] = field(default_factory=list)  # frames each batched request actually produced
    engine_seconds: list[float] = field(default_factory=list)  # wall time of each repeat, submit to last done
    engine_ms_per_step: list[float] = field(default_factory=list)  # each repeat's wall time / decoder steps
    engine_fps: float | None = None  # median over repeats of (sum of frames) / wall time
    engine_x_realtime: float | None = None
    sequential_requests: int | None = None
    sequential_frames: list[int] = field(default_factory=list)
    sequential_seconds: float | None = None
    sequential_fps: float | None = None
    sequential_x_realtime: float | None = None
    batched_over_sequential: float | None = None
    transformers_frames: list[int] = field(default_factory=list)
    transformers_seconds: list[float] = field(default_factory=list)
    transformers_fps: float | None = None
    transformers_x_realtime: float | None = None
    engine_over_transformers: float | None = None
    # On a GPU: the frames/s a batch of N could reach if each step only read the weights and the KV cache once
    # at the measured memory bandwidth (the mean position of a request), and the engine's share of it.
    floor_fps: float | None = None
    engine_over_floor: float | None = None


@dataclass
class ServerRow:
    """N concurrent streaming clients over HTTP, one request each."""

    config: str
    concurrency: int
    max_new_tokens: int
    chunk_frames: int
    ttfa_s: list[float] = field(default_factory=list)  # per request: request sent -> first PCM byte
    total_s: list[float] = field(default_factory=list)  # per request: request sent -> last byte
    audio_s: list[float] = field(default_factory=list)  # per request: pcm bytes / 2 / 24000
    x_realtime: list[float] = field(default_factory=list)  # per request: audio_s / total_s
    wall_s: float | None = None  # first request sent -> last request done
    ttfa_p50: float | None = None
    ttfa_p95: float | None = None
    x_realtime_p50: float | None = None
    x_realtime_p95: float | None = None  # the 95th-percentile *slow* request: the 5th percentile of speed
    aggregate_x_realtime: float | None = None  # all audio / wall_s
    errors: list[str] = field(default_factory=list)


def percentile(values: list[float], q: float) -> float | None:
    """Linear-interpolated percentile; ``q`` in [0, 100]."""
    if not values:
        return None
    ordered = sorted(values)
    k = (len(ordered) - 1) * q / 100
    lo, hi = int(k), min(int(k) + 1, len(ordered) - 1)
    return ordered[lo] + (ordered[hi] - ordered[lo]) * (k - lo)


def ratio(a: float | None, b: float | None) -> float | None:
    return a / b if a is not None and b else None


# --------------------------------------------------------------------------------------------------------
# The engine and transformers
# --------------------------------------------------------------------------------------------------------


def make_requests(tts: faster_dia.TextToSpeech, n: int, *, max_new_tokens: int, temperature: float,
                  first: int = 0) -> list[Dia1Request]:
    return [
        tts._request(script_for(i), seed=i, audio_prompt=None, audio_prompt_transcript=None,
                     audio_prompt_sample_rate=None, temperature=temperature, top_p=TOP_P, top_k=TOP_K,
                     cfg_scale=CFG_SCALE, max_new_tokens=max_new_tokens)
        for i in range(first, first + n)
    ]


def wait_done(submissions: list) -> list[int]:
    """Block until every submission is done; return the frames each produced."""
    frames = []
    for sub in submissions:
        kind, payload = sub.events.get()
        if kind == "error":
            raise payload
        frames.append(int(payload.shape[0]))
    return frames


def run_batched(engine: Engine, requests: list[Dia1Request]) -> tuple[float, list[int], int]:
    """All requests submitted in one call, so they are admitted together and decoded as one batch; the
    clock runs from submission (encoder and cross-attention caches included) to the last request's end.
    Returns the wall time, each request's frames and the decoder steps the engine ran."""
    steps = engine.steps
    start = time.perf_counter()
    frames = wait_done(engine.submit(requests))
    return time.perf_counter() - start, frames, engine.steps - steps


def run_sequential(engine: Engine, requests: list[Dia1Request]) -> tuple[float, list[int]]:
    """Each request waits for the previous one to end: what a server without batching does."""
    start = time.perf_counter()
    frames = [wait_done(engine.submit([r]))[0] for r in requests]
    return time.perf_counter() - start, frames


def warm_engine(engine: Engine, tts: faster_dia.TextToSpeech, temperature: float) -> None:
    """One short untimed batch, so first-call allocations and lazy initialisation stay out of the timings."""
    n = min(engine.max_batch, 2)
    run_batched(engine, make_requests(tts, n, max_new_tokens=tts.config.max_delay + 8, temperature=temperature))


def transformers_inputs(texts: list[str], c: Any, device: torch.device) -> dict[str, torch.Tensor]:
    """What ``DiaProcessor`` makes of the scripts without an audio prompt: byte tokens right-padded with 0,
    and the BOS frame as the decoder start."""
    tokens = [encode_script(normalize_script(t)) for t in texts]
    width = max(len(t) for t in tokens)
    input_ids = torch.zeros(len(tokens), width, dtype=torch.long)
    attention_mask = torch.zeros(len(tokens), width, dtype=torch.long)
    for i, t in enumerate(tokens):
        input_ids[i, : len(t)] = torch.tensor(t)
        attention_mask[i, : len(t)] = 1
    batch = len(texts)
    return {
        "input_ids": input_ids.to(device),
        "attention_mask": attention_mask.to(device),
        "decoder_input_ids": torch.full((batch, 1, c.channels), c.bos_token_id, dtype=torch.long, device=device),
        "decoder_attention_mask": torch.ones(batch, 1 + c.max_delay, dtype=torch.long, device=device),
    }


def run_transformers(model: Any, texts: list[str], c: Any, *, max_new_tokens: int,
                     device: torch.device) -> tuple[float, list[int]]:
    """One ``generate`` call for the whole batch, greedy with guidance as the parity tests run it. The output
    is the delayed sequence (BOS frame first); a request's audio frames are those before channel 0's EOS."""
    inputs = transformers_inputs(texts, c, device)
    sync(device)
    start = time.perf_counter()
    with torch.inference_mode():
        out = model.generate(**inputs, max_new_tokens=max_new_tokens, do_sample=False,
                             guidance_scale=CFG_SCALE, top_k=TOP_K, temperature=1.0)
    sync(device)
    elapsed = time.perf_counter() - start
    channel0 = out[:, 1:, 0].cpu()
    frames = []
    for row in channel0:
        eos = (row == c.eos_token_id).nonzero()
        frames.append(int(eos[0]) if len(eos) else int(row.shape[0]))
    return elapsed, frames


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


# --------------------------------------------------------------------------------------------------------
# The HTTP server
# --------------------------------------------------------------------------------------------------------


@contextlib.contextmanager
def serving(app: Any, **options: Any) -> Iterator[str]:
    """uvicorn on a free 127.0.0.1 port in a thread; yields the base URL and stops the server after."""
    import uvicorn

    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind(("127.0.0.1", 0))
    port = sock.getsockname()[1]
    server = uvicorn.Server(uvicorn_config(app, **{"log_level": "warning", "lifespan": "off", **options}))
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    deadline = time.monotonic() + 30
    while not server.started:
        if not thread.is_alive() or time.monotonic() > deadline:
            raise RuntimeError("uvicorn did not start")
        time.sleep(0.02)
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        thread.join(30)
        sock.close()


def one_client_request(client: Any, i: int, max_new_tokens: int) -> tuple[float, float, int]:
    """One streaming PCM request; returns (time to first audio byte, total time, PCM bytes)."""
    start = time.perf_counter()
    first: float | None = None
    size = 0
    with client.audio.speech.with_streaming_response.create(
        model="tts-1", voice="alloy", input=script_for(i), response_format="pcm",
        extra_body={"seed": i, "max_new_tokens": max_new_tokens},
    ) as response:
        for piece in response.iter_bytes():
            if piece and first is None:
                first = time.perf_counter()
            size += len(piece)
    end = time.perf_counter()
    return (first if first is not None else end) - start, end - start, size


def run_clients(base_url: str, n: int, max_new_tokens: int, row: ServerRow) -> None:
    """N threads, released together by a barrier, each making one request with its own seed and text."""
    import openai

    client = openai.OpenAI(base_url=f"{base_url}/v1", api_key="bench", max_retries=0, timeout=600)
    barrier = threading.Barrier(n)
    results: list[tuple[float, float, int] | None] = [None] * n
    lock = threading.Lock()

    def user(i: int) -> None:
        barrier.wait()
        try:
            results[i] = one_client_request(client, i, max_new_tokens)
        except Exception as exc:  # reported in the row; one failed client must not hide the others' numbers
            with lock:
                row.errors.append(f"request {i}: {type(exc).__name__}: {exc}")

    threads = [threading.Thread(target=user, args=(i,), daemon=True) for i in range(n)]
    start = time.perf_counter()
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    row.wall_s = time.perf_counter() - start
    done = [r for r in results if r is not None]
    row.ttfa_s = [r[0] for r in done]
    row.total_s = [r[1] for r in done]
    row.audio_s = [r[2] / PCM_BYTES_PER_SECOND for r in done]
    row.x_realtime = [a / t for a, t in zip(row.audio_s, row.total_s, strict=True)]
    row.ttfa_p50 = percentile(row.ttfa_s, 50)
    row.ttfa_p95 = percentile(row.ttfa_s, 95)
    row.x_realtime_p50 = percentile(row.x_realtime, 50)
    row.x_realtime_p95 = percentile(row.x_realtime, 5)
    row.aggregate_x_realtime = ratio(sum(row.audio_s), row.wall_s)
    client.close()


# --------------------------------------------------------------------------------------------------------
# Profile
# --------------------------------------------------------------------------------------------------------


def profile_steps(tts: faster_dia.TextToSpeech, generator: Dia1Generator, *, max_new_tokens: int,
                  temperature: float, steps: int = 8) -> dict[str, Any]:
    """Where one batched step's time goes with every slot of ``generator`` busy: the torch operators (self
    time) and the Python functions of ``Dia1Generator.step``, over ``steps`` steps after a few untimed ones.
    The generator must be idle (an engine's, between runs: its caches are reused rather than allocated
    again, which at real widths would cost gigabytes)."""
    import cProfile
    import io
    import pstats

    from torch.profiler import ProfilerActivity, profile

    n = generator.max_batch
    states = [generator.prepare(r)
              for r in make_requests(tts, n, max_new_tokens=max_new_tokens, temperature=temperature)]
    with torch.inference_mode():
        for _ in range(3):
            generator.step()
        start = time.perf_counter()
        for _ in range(steps):
            generator.step()
        plain = (time.perf_counter() - start) / steps
        with profile(activities=[ProfilerActivity.CPU]) as prof:
            for _ in range(steps):
                generator.step()
        profiler = cProfile.Profile()
        profiler.enable()
        for _ in range(steps):
            generator.step()
        profiler.disable()
    for s in states:
        generator.release(s)
    ops = prof.key_averages()
    total = sum(e.self_cpu_time_total for e in ops) or 1.0
    top_ops = sorted(ops, key=lambda e: e.self_cpu_time_total, reverse=True)[:15]
    text = io.StringIO()
    pstats.Stats(profiler, stream=text).sort_stats("cumulative").print_stats(25)
    return {
        "batch": n,
        "step_ms": plain * 1e3,
        "ops": [{"op": e.key, "self_ms_per_step": e.self_cpu_time_total / 1e3 / steps,
                 "share": e.self_cpu_time_total / total, "calls_per_step": e.count / steps} for e in top_ops],
        "python": text.getvalue(),
    }


# --------------------------------------------------------------------------------------------------------
# Output
# --------------------------------------------------------------------------------------------------------


def machine_info(device: torch.device) -> dict[str, Any]:
    import transformers

    info: dict[str, Any] = {
        "torch": torch.__version__,
        "transformers": transformers.__version__,
        "faster_dia": faster_dia.__version__,
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
        info["commit"] = subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"], cwd=REPO_ROOT, capture_output=True, text=True, check=True
        ).stdout.strip()
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
    return "-" if value is None else format(value, spec)


def render_table(header: list[str], rows: list[list[str]]) -> str:
    widths = [max(len(h), *(len(r[i]) for r in rows)) for i, h in enumerate(header)]
    lines = [" | ".join(h.rjust(w) for h, w in zip(header, widths, strict=True)),
             "-|-".join("-" * w for w in widths)]
    lines += [" | ".join(c.rjust(w) for c, w in zip(r, widths, strict=True)) for r in rows]
    return "\n".join(lines)


def print_tables(throughput: list[ThroughputRow], server: list[ServerRow], profile: dict | None) -> None:
    if throughput:
        print("\nAggregate throughput: frames/s (x real time), all requests together")
        print(render_table(
            ["config", "N", "frames/req", "engine batched", "one at a time", "batched/one", "transformers",
             "engine/hf", "floor frames/s", "engine/floor"],
            [[r.config, str(r.concurrency), _frames_cell(r),
              f"{_fmt(r.engine_fps, '.1f')} ({_fmt(r.engine_x_realtime, '.2f')}x)",
              f"{_fmt(r.sequential_fps, '.1f')} ({_fmt(r.sequential_x_realtime, '.2f')}x)",
              _fmt(r.batched_over_sequential, ".2f"),
              f"{_fmt(r.transformers_fps, '.1f')} ({_fmt(r.transformers_x_realtime, '.2f')}x)",
              _fmt(r.engine_over_transformers, ".2f"), _fmt(r.floor_fps, ".0f"), _fmt(r.engine_over_floor, ".2f")]
             for r in throughput],
        ))
    if server:
        print("\nHTTP server, streaming pcm: time to first audio (s) and per-request x real time")
        print(render_table(
            ["config", "N", "tokens", "ttfa p50", "ttfa p95", "xRT p50", "xRT p95", "aggregate xRT", "wall s",
             "errors"],
            [[r.config, str(r.concurrency), str(r.max_new_tokens), _fmt(r.ttfa_p50, ".2f"), _fmt(r.ttfa_p95, ".2f"),
              _fmt(r.x_realtime_p50, ".2f"), _fmt(r.x_realtime_p95, ".2f"), _fmt(r.aggregate_x_realtime, ".2f"),
              _fmt(r.wall_s, ".1f"), str(len(r.errors))] for r in server],
        ))
        for r in server:
            for e in r.errors[:3]:
                print(f"  N={r.concurrency}: {e}")
    if profile:
        print(f"\nOne engine step at batch {profile['batch']}: {profile['step_ms']:.1f} ms; top torch ops (self time)")
        print(render_table(
            ["op", "ms/step", "share", "calls/step"],
            [[o["op"], f"{o['self_ms_per_step']:.2f}", f"{o['share']:.1%}", f"{o['calls_per_step']:.0f}"]
             for o in profile["ops"]],
        ))


def _frames_cell(r: ThroughputRow) -> str:
    """Frames each request actually produced: the asked-for count, or the range when some fell short."""
    produced = r.engine_frames + r.transformers_frames + r.sequential_frames
    if not produced or min(produced) == max(produced) == r.frames_per_request:
        return str(r.frames_per_request)
    return f"{min(produced)}-{max(produced)}!"


# --------------------------------------------------------------------------------------------------------
# Main
# --------------------------------------------------------------------------------------------------------


def _csv_ints(value: str) -> list[int]:
    return [int(v) for v in value.split(",") if v.strip()]


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--config", choices=sorted(CONFIGS), default="tiny")
    p.add_argument("--concurrency", type=_csv_ints, default=[1, 4, 16], help="comma-separated, e.g. 1,4,16")
    p.add_argument("--frames", type=int, default=None,
                   help=f"audio frames per request (default {DEFAULT_FRAMES}); 86 frames = 1 s")
    p.add_argument("--device", default=None, help="cpu, cuda, ... (default: cuda when present)")
    p.add_argument("--dtype", default=None, help="float32, bfloat16, float16 (default: float32 on CPU)")
    p.add_argument("--temperature", type=float, default=1.2,
                   help="engine sampling temperature (default 1.2, the library default; 0 = greedy)")
    p.add_argument("--repeats", type=int, default=None, help=f"timed repeats per batch (default {DEFAULT_REPEATS})")
    p.add_argument("--sequential-requests", type=int, default=None,
                   help=f"requests run one at a time for the baseline (default {DEFAULT_SEQUENTIAL}, at most "
                        "the largest concurrency)")
    p.add_argument("--chunk-frames", type=int, default=32, help="server stream chunk (frames, default 32)")
    p.add_argument("--no-server", action="store_true", help="skip the HTTP server runs")
    p.add_argument("--no-transformers", action="store_true", help="skip transformers' generate")
    p.add_argument("--profile", action="store_true",
                   help="also profile engine steps at the largest concurrency (torch ops and Python)")
    p.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's choice)")
    p.add_argument("--out", type=Path, default=DEFAULT_OUT, help=f"JSON results (default {DEFAULT_OUT})")
    args = p.parse_args(argv)
    if not args.concurrency or min(args.concurrency) < 1:
        p.error("--concurrency needs positive integers")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    warnings.filterwarnings("ignore")  # transformers' generation-config notices would bury the progress
    frames = args.frames or DEFAULT_FRAMES[args.config]
    repeats = args.repeats or DEFAULT_REPEATS[args.config]
    concurrency = sorted(set(args.concurrency))
    largest = max(concurrency)
    n_sequential = min(largest, args.sequential_requests or DEFAULT_SEQUENTIAL[args.config])

    def log(message: str) -> None:
        print(f"[{time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)

    throughput: list[ThroughputRow] = []
    server_rows: list[ServerRow] = []
    profile: dict | None = None
    with tempfile.TemporaryDirectory(prefix="faster-dia-bench-") as tmp:
        # EOS logit 0: below the top-k candidates of every step, so requests run to max_new_tokens.
        model_dir = write_tiny_checkpoint("dia-1.6b-0626", Path(tmp) / "model",
                                          config_overrides=CONFIGS[args.config], eos_logit_scale=0.0)
        codec_dir = write_tiny_checkpoint("dac", Path(tmp) / "codec")
        # max_batch=1: this TextToSpeech's own engine is the one-at-a-time baseline; batched engines share
        # its model and get their own caches below.
        tts = faster_dia.load(model_dir, codec=codec_dir, device=args.device, dtype=args.dtype, max_batch=1,
                              max_queue=max(64, largest))
        device, c = tts.device, tts.config
        max_new_tokens = frames + c.max_delay + 1  # one audio frame per step, less EOS and the delay tail
        info = machine_info(device)
        log(f"{args.config}: {frames} frames/request (max_new_tokens {max_new_tokens}) on {device}, "
            f"{str(tts.dtype).removeprefix('torch.')}, {info['threads']} threads")

        bandwidth = None
        if device.type == "cuda":
            bandwidth = measure_bandwidth(device)
            log(f"device memory bandwidth (copy): {bandwidth / 1e9:.0f} GB/s")
        engines: dict[int, Engine] = {1: tts.engine}
        for n in concurrency:
            engines.setdefault(n, Engine(Dia1Generator(tts.model, max_batch=n), max_queue=max(64, n)))

        # The baseline: one request at a time, measured once; its throughput does not depend on N.
        warm_engine(tts.engine, tts, args.temperature)
        seq_requests = make_requests(tts, n_sequential, max_new_tokens=max_new_tokens, temperature=args.temperature)
        seq_seconds, seq_frames = run_sequential(tts.engine, seq_requests)
        seq_fps = sum(seq_frames) / seq_seconds
        log(f"one at a time: {n_sequential} requests, {sum(seq_frames)} frames in {seq_seconds:.2f} s "
            f"= {seq_fps:.1f} frames/s")

        for n in concurrency:
            row = ThroughputRow(config=args.config, concurrency=n, frames_per_request=frames,
                                max_new_tokens=max_new_tokens, sequential_requests=n_sequential,
                                sequential_frames=seq_frames, sequential_seconds=seq_seconds, sequential_fps=seq_fps)
            engine = engines[n]
            warm_engine(engine, tts, args.temperature)
            fps = []
            for _ in range(repeats):
                requests = make_requests(tts, n, max_new_tokens=max_new_tokens, temperature=args.temperature)
                seconds, produced, steps = run_batched(engine, requests)
                row.engine_seconds.append(seconds)
                row.engine_ms_per_step.append(seconds / max(steps, 1) * 1e3)
                row.engine_frames = produced
                fps.append(sum(produced) / seconds)
            row.engine_fps = statistics.median(fps)
            log(f"engine N={n}: {sum(row.engine_frames)} frames, median {row.engine_fps:.1f} frames/s "
                f"({', '.join(f'{s:.2f}' for s in row.engine_seconds)} s; "
                f"{', '.join(f'{s:.1f}' for s in row.engine_ms_per_step)} ms/step)")
            throughput.append(row)

        if not args.no_transformers:
            from transformers import DiaForConditionalGeneration

            hf = DiaForConditionalGeneration.from_pretrained(model_dir, dtype=tts.dtype).to(device).eval()
            run_transformers(hf, [script_for(0)], c, max_new_tokens=c.max_delay + 8, device=device)  # warm-up
            for row in throughput:
                texts = [script_for(i) for i in range(row.concurrency)]
                fps = []
                for _ in range(repeats):
                    seconds, produced = run_transformers(hf, texts, c, max_new_tokens=max_new_tokens, device=device)
                    row.transformers_seconds.append(seconds)
                    row.transformers_frames = produced
                    fps.append(sum(produced) / seconds)
                row.transformers_fps = statistics.median(fps)
                log(f"transformers N={row.concurrency}: median {row.transformers_fps:.1f} frames/s "
                    f"({', '.join(f'{s:.2f}' for s in row.transformers_seconds)} s)")
            del hf
            gc.collect()

        for row in throughput:
            row.engine_x_realtime = ratio(row.engine_fps, FRAMES_PER_SECOND)
            row.sequential_x_realtime = ratio(row.sequential_fps, FRAMES_PER_SECOND)
            row.transformers_x_realtime = ratio(row.transformers_fps, FRAMES_PER_SECOND)
            row.batched_over_sequential = ratio(row.engine_fps, row.sequential_fps)
            row.engine_over_transformers = ratio(row.engine_fps, row.transformers_fps)
            if bandwidth:
                step_bytes = weight_bytes_per_step(c, tts.dtype) + kv_bytes_per_step(
                    c, tts.dtype, 2 * row.concurrency, max_new_tokens // 2, len(script_for(0)))
                row.floor_fps = row.concurrency / (step_bytes / bandwidth)
                row.engine_over_floor = ratio(row.engine_fps, row.floor_fps)
            short = [f for f in row.engine_frames + row.transformers_frames if f != frames]
            if short:
                log(f"N={row.concurrency}: some requests produced other than {frames} frames: {short}")

        if not args.no_server:
            from faster_dia.server import create_app

            # The server decodes with the largest engine, as a deployment configured for that load would.
            tts.engine = engines[largest]
            app = create_app(tts, max_queue=largest, chunk_frames=args.chunk_frames)
            with serving(app) as url:
                warm = ServerRow(args.config, 1, c.max_delay + 8 + args.chunk_frames, args.chunk_frames)
                run_clients(url, 1, warm.max_new_tokens, warm)  # untimed: first-request costs of the stack
                for n in concurrency:
                    row = ServerRow(config=args.config, concurrency=n, max_new_tokens=max_new_tokens,
                                    chunk_frames=args.chunk_frames)
                    run_clients(url, n, max_new_tokens, row)
                    server_rows.append(row)
                    log(f"server N={n}: ttfa p50 {_fmt(row.ttfa_p50, '.2f')} s, per-request "
                        f"x{_fmt(row.x_realtime_p50, '.2f')} real time, {len(row.errors)} errors")
            tts.engine = engines[1]

        if args.profile:
            log(f"profiling {largest}-request steps")
            profile = profile_steps(tts, engines[largest].generator, max_new_tokens=max_new_tokens,
                                    temperature=args.temperature)
            print(profile["python"], file=sys.stderr)

    print_tables(throughput, server_rows, profile)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    result = {
        "machine": info,
        "settings": {"config": args.config, "config_overrides": CONFIGS[args.config], "frames": frames,
                     "max_new_tokens": max_new_tokens, "concurrency": concurrency, "repeats": repeats,
                     "temperature": args.temperature, "top_p": TOP_P, "top_k": TOP_K, "cfg_scale": CFG_SCALE,
                     "sequential_requests": n_sequential, "chunk_frames": args.chunk_frames,
                     "frames_per_second": FRAMES_PER_SECOND},
        "throughput": [asdict(r) for r in throughput],
        "server": [asdict(r) for r in server_rows],
        "profile": profile,
    }
    args.out.write_text(json.dumps(result, indent=2) + "\n")
    log(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
