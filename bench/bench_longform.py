#!/usr/bin/env python
"""Long-form wall time: ``continuity="previous"`` (chunks one after the other) against ``continuity="first"``
(the first chunk, then every later chunk in one batch).

For each config a random checkpoint is written with ``faster_dia.testing.write_tiny_checkpoint`` (Dia-1.6B
``tiny`` and ``mid`` of bench_dia1.CONFIGS with the EOS logit fixed at 0, and Dia2 ``dia2-tiny``), and one
dialogue script that the long-form planner cuts into ``--chunks`` chunks is spoken in both modes, with the
same seed and ``max_new_tokens`` fixed per chunk, so both modes decode the same number of frames per chunk.
The engine's ``max_batch`` is the number of chunks, so "first" can decode all later chunks together.

Timed: the whole long stream, from ``tts.stream`` to its last audio (what ``generate`` runs for a long
script), and one chunk alone (the script's first chunk, unprompted) as the floor: "first" should take about
two chunk times (the first chunk, then one batch of the rest). Repeats are interleaved (one chunk, first,
previous; the order reversed every other repeat), so machine noise hits every mode alike; min and median.

    .venv/bin/python bench/bench_longform.py
    .venv/bin/python bench/bench_longform.py --configs tiny,mid --chunks 9 --repeats 3
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import sys
import tempfile
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch

# The Dia-1.6B configs of the decode-step benchmark and the shared dialogue lines (bench/ is on the path
# when this runs as a script).
from bench_dia1 import CONFIGS
from scripts import script_for

import faster_dia
from faster_dia.script import split_script
from faster_dia.testing import write_tiny_checkpoint

REPO_ROOT = Path(__file__).resolve().parent.parent
DEFAULT_OUT = REPO_ROOT / "bench" / "results" / "longform.json"

ALL_CONFIGS = ("tiny", "mid", "dia2-tiny")
#: Decoder steps per chunk (Dia-1.6B: the first max_delay + 1 of them give no audio frame) and timed repeats:
#: a tiny step costs milliseconds, a mid step on a CPU a good part of a second.
DEFAULT_STEPS = {"tiny": 60, "mid": 20, "dia2-tiny": 40}
DEFAULT_REPEATS = {"tiny": 7, "mid": 5, "dia2-tiny": 3}
MODES = ("first", "previous")


@dataclass
class ConfigResult:
    config: str
    chunks: int
    chunk_chars: list[int]
    steps_per_chunk: int
    max_batch: int
    frames: dict[str, int] = field(default_factory=dict)  # audio frames of each mode's whole result
    references: dict[str, int] = field(default_factory=dict)  # later chunks that were spoken with a reference
    seconds: dict[str, list[float]] = field(default_factory=dict)  # "first", "previous", "one chunk"
    min_s: dict[str, float] = field(default_factory=dict)
    median_s: dict[str, float] = field(default_factory=dict)
    previous_over_first: float | None = None  # medians
    first_over_two_chunks: float | None = None  # medians


def load(config: str, root: Path, max_batch: int) -> Any:
    if config == "dia2-tiny":
        model = write_tiny_checkpoint("dia2", root / "model")
        codec = write_tiny_checkpoint("mimi", root / "codec")
    else:
        # EOS logit 0: below the top candidates of every step, so each chunk runs to max_new_tokens.
        model = write_tiny_checkpoint("dia-1.6b-0626", root / "model", config_overrides=CONFIGS[config],
                                      eos_logit_scale=0.0)
        codec = write_tiny_checkpoint("dac", root / "codec")
    return faster_dia.load(model, codec=codec, device="cpu", max_batch=max_batch)


def long_script(tts: Any, chunks: int) -> tuple[str, list[str]]:
    """As many dialogue lines as the planner cuts into ``chunks`` chunks (a line is shorter than a chunk, so
    the count grows by at most one per line; the last chunk is filled too)."""
    options = tts._options({})
    script, planned = "", []
    for n in range(1, 10_000):
        candidate = " ".join(script_for(i) for i in range(n))
        cut = split_script(candidate, lambda chunk: tts._chunk_fits(chunk, options))
        if len(cut) > chunks:
            break
        script, planned = candidate, cut
    if not tts._is_long(script, options):
        raise SystemExit(f"a script of {chunks} chunks is not long for {tts.family}: ask for more chunks")
    return script, planned


def speak(tts: Any, script: str, options: dict[str, Any]) -> tuple[float, Any, int]:
    """Wall time of the whole stream, the stream, and its audio frames."""
    start = time.perf_counter()
    stream = tts.stream(script, **options)
    for _ in stream:
        pass
    return time.perf_counter() - start, stream, int(stream.frames)


def run_config(config: str, args: argparse.Namespace, log: Any) -> ConfigResult:
    with tempfile.TemporaryDirectory(prefix="faster-dia-bench-") as tmp:
        return _run_config(config, args, log, Path(tmp))


def _run_config(config: str, args: argparse.Namespace, log: Any, tmp: Path) -> ConfigResult:
    steps = args.steps or DEFAULT_STEPS[config]
    repeats = args.repeats or DEFAULT_REPEATS[config]
    max_batch = args.max_batch or args.chunks
    began = time.perf_counter()
    tts = load(config, tmp, max_batch)
    log(f"[{config}] checkpoint written and loaded in {time.perf_counter() - began:.1f} s")
    script, planned = long_script(tts, args.chunks)
    result = ConfigResult(config=config, chunks=len(planned), chunk_chars=[len(c) for c in planned],
                          steps_per_chunk=steps, max_batch=max_batch)
    base = {"seed": args.seed, "max_new_tokens": steps}
    ways = {
        "one chunk": (planned[0], base),
        "first": (script, {**base, "continuity": "first"}),
        "previous": (script, {**base, "continuity": "previous"}),
    }
    # Untimed: lazy tables and first-call allocations, the prompted chunks' path and the batch of later chunks.
    speak(tts, *ways["one chunk"])
    speak(tts, *ways["first"])
    result.seconds = {name: [] for name in ways}
    for r in range(repeats):
        order = list(ways) if r % 2 == 0 else list(reversed(ways))
        for name in order:
            seconds, stream, frames = speak(tts, *ways[name])
            result.seconds[name].append(seconds)
            result.frames[name] = frames
            if name in MODES:
                later = stream.plan.results[1:]
                result.references[name] = sum(tts._reference_chunk(c) is not None for c in later)
        log(f"[{config}] repeat {r + 1}/{repeats}: " + ", ".join(
            f"{name} {result.seconds[name][-1]:.2f} s" for name in ways))
    result.min_s = {name: min(v) for name, v in result.seconds.items()}
    result.median_s = {name: statistics.median(v) for name, v in result.seconds.items()}
    result.previous_over_first = result.median_s["previous"] / result.median_s["first"]
    result.first_over_two_chunks = result.median_s["first"] / (2 * result.median_s["one chunk"])
    if result.frames["first"] != result.frames["previous"]:
        log(f"[{config}] the modes made different audio lengths: {result.frames}")
    return result


def render_table(header: list[str], rows: list[list[str]]) -> str:
    widths = [max(len(h), *(len(r[i]) for r in rows)) for i, h in enumerate(header)]
    lines = [" | ".join(h.rjust(w) for h, w in zip(header, widths, strict=True)),
             "-|-".join("-" * w for w in widths)]
    lines += [" | ".join(c.rjust(w) for c, w in zip(r, widths, strict=True)) for r in rows]
    return "\n".join(lines)


def print_table(results: list[ConfigResult], threads: int) -> None:
    print(f"\nLong-form wall time (s, min/median), CPU, {threads} torch threads; max_batch = chunks")
    print(render_table(
        ["config", "chunks", "steps/chunk", "first", "previous", "prev/first", "1 chunk", "2 x chunk",
         "first/2xchunk"],
        [[r.config, str(r.chunks), str(r.steps_per_chunk),
          f"{r.min_s['first']:.2f}/{r.median_s['first']:.2f}",
          f"{r.min_s['previous']:.2f}/{r.median_s['previous']:.2f}",
          f"{r.previous_over_first:.2f}",
          f"{r.min_s['one chunk']:.2f}/{r.median_s['one chunk']:.2f}",
          f"{2 * r.median_s['one chunk']:.2f}",
          f"{r.first_over_two_chunks:.2f}"] for r in results],
    ))


def _csv(value: str) -> list[str]:
    names = [v.strip() for v in value.split(",") if v.strip()]
    unknown = sorted(set(names) - set(ALL_CONFIGS))
    if unknown:
        raise argparse.ArgumentTypeError(f"unknown config(s) {', '.join(unknown)}; choose from {', '.join(ALL_CONFIGS)}")
    return names


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--configs", type=_csv, default=list(ALL_CONFIGS), help=f"comma-separated: {','.join(ALL_CONFIGS)}")
    p.add_argument("--chunks", type=int, default=9, help="chunks of the script (default 9)")
    p.add_argument("--steps", type=int, default=None, help=f"max_new_tokens per chunk (default {DEFAULT_STEPS})")
    p.add_argument("--repeats", type=int, default=None, help=f"timed repeats (default {DEFAULT_REPEATS})")
    p.add_argument("--max-batch", type=int, default=None, help="engine max_batch (default: the chunk count)")
    p.add_argument("--seed", type=int, default=1)
    p.add_argument("--threads", type=int, default=2, help="torch CPU threads (default 2)")
    p.add_argument("--out", type=Path, default=DEFAULT_OUT, help=f"JSON results (default {DEFAULT_OUT})")
    args = p.parse_args(argv)
    if args.chunks < 2:
        p.error("--chunks must be at least 2")
    torch.set_num_threads(args.threads)

    def log(message: str) -> None:
        print(f"[{time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)

    results = [run_config(config, args, log) for config in args.configs]
    print_table(results, args.threads)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps({
        "machine": {"cpu": platform.processor() or platform.machine(), "torch": torch.__version__,
                    "torch_threads": args.threads, "faster_dia": faster_dia.__version__},
        "settings": {"chunks": args.chunks, "seed": args.seed,
                     "config_overrides": {c: CONFIGS.get(c) for c in args.configs}},
        "results": [asdict(r) for r in results],
    }, indent=2) + "\n")
    log(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
