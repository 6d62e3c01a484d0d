"""Operators per decode step: how many kernels a replayed step launches, for the real model shapes.

A recorded step (a CUDA graph, or the trace mode of models/graphs.py) replays every operator the step
dispatched; at small batch sizes on a GPU the step time is set by how many there are, not by their arithmetic.
This script builds each real configuration with its weights on the ``meta`` device (shapes only: nothing is
allocated or downloaded), runs one bucketed decode step of the generator under the trace mode and counts the
recorded operators that launch a kernel (not views, nor a ``to`` that changes nothing). The count is split by where the operator
comes from: the model's layers (per layer, from a model with one layer fewer), the random hash, the rest of
sampling, and the step's own bookkeeping. A second column, if ``--before`` names an earlier run's JSON, shows
those counts beside the new ones.

    python bench/bench_ops.py                                   # writes bench/results/ops.json
    python bench/bench_ops.py --before bench/results/ops_before.json
    python bench/bench_ops.py --speed                           # and CPU steps/s per step mode (tiny models)

``--speed`` also times the tiny checkpoints' steps on this machine's CPU, one thread, in the eager, trace and
compiled step modes (the whole ``generator.step()``, host part included; the modes take turns repeat by repeat),
with the time the first compiled step took (the compile), so that whether inductor helps a CPU step is measured,
not assumed. The trace mode replays operators from Python: its time says nothing about a GPU.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import statistics
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path

import torch
from torch.utils._python_dispatch import TorchDispatchMode

from faster_dia.models.dia1.config import VARIANT_0626, Dia1Config
from faster_dia.models.dia1.generator import Dia1Generator, StepShape
from faster_dia.models.dia1.model import Dia1Model
from faster_dia.models.dia2.config import Dia2Config
from faster_dia.models.dia2.generator import Dia2Generator, Dia2StepShape
from faster_dia.models.dia2.model import Dia2Model
from faster_dia.models.graphs import COMPILED, EAGER, TRACE, StepRunner, launches_kernel

REPO_ROOT = Path(__file__).resolve().parent.parent
DEFAULT_OUT = REPO_ROOT / "bench" / "results" / "ops.json"

# Dia2-1B: 30 transformer layers of width 1024, 3 depformer layers, 3 depformer weight groups; Dia2-2B: the
# class defaults (28 layers of 2048, 4 depformer layers) with 5 groups (docs: ../shared/reference/dia2.md §1).
DIA2_1B = dict(decoder_layers=30, decoder_hidden_size=1024, depformer_layers=3,
               weights_schedule=(0,) * 10 + (1,) * 10 + (2,) * 11)
DIA2_2B = dict(weights_schedule=(0,) * 7 + (1,) * 6 + (2,) * 6 + (3,) * 6 + (4,) * 6)

CASES = {
    "dia1.6b-bf16-b1": ("dia1", {}, 1),
    "dia1.6b-bf16-b16": ("dia1", {}, 16),
    "dia2-1b-bf16-b1": ("dia2", DIA2_1B, 1),
    "dia2-2b-bf16-b1": ("dia2", DIA2_2B, 1),
    "dia2-2b-bf16-b16": ("dia2", DIA2_2B, 16),
}


class _Classifier(TorchDispatchMode):
    """Counts non-view operators by the innermost step part on the Python stack."""

    PARTS = (("_mix32", "hash"), ("candidate_noise", "hash"), ("choose_tokens", "sampling"), ("choose", "sampling"),
             ("depformer_step", "depformer"), ("decode", "transformer"))

    def __init__(self):
        super().__init__()
        self.counts: Counter[str] = Counter()

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        if launches_kernel(func, args, out):
            names = set()
            frame = sys._getframe(1)
            while frame is not None:
                names.add(frame.f_code.co_name)
                frame = frame.f_back
            self.counts[next((part for name, part in self.PARTS if name in names), "step")] += 1
        return out


def _dia1(overrides: dict, batch: int, layers_less: int = 0) -> tuple[Dia1Generator, StepShape]:
    config = Dia1Config(variant=VARIANT_0626, **overrides)
    config = dataclasses.replace(config, decoder_layers=config.decoder_layers - layers_less)
    model = Dia1Model(config, dtype=torch.bfloat16, device="meta")
    generator = Dia1Generator(model, max_batch=batch, step_mode=TRACE)
    # The bucketed shape of a CUDA step a few seconds into a request (45 candidates -> 64).
    return generator, StepShape(batch=batch, kv_length=512, text_length=128, top_k=64, sampling=True)


def _dia2(overrides: dict, batch: int, layers_less: int = 0, dep_layers_less: int = 0):
    config = Dia2Config(**overrides)
    config = dataclasses.replace(config, decoder_layers=config.decoder_layers - layers_less,
                                 depformer_layers=config.depformer_layers - dep_layers_less)
    model = Dia2Model(config, dtype=torch.bfloat16, device="meta")
    generator = Dia2Generator(model, max_batch=batch, max_prefix_frames=0, step_mode=TRACE)
    shape = Dia2StepShape(batch=batch, guided=True, all_guided=True, kv_length=512, shifted=False, filter_k=64,
                          text_top_k=64, audio_top_k=64, text_sampling=True, audio_sampling=True)
    return generator, shape


def _count(generator, shape) -> tuple[Counter[str], int]:
    """Operators of one step by part, and the trace mode's own count of the recorded non-view operators."""
    with torch.inference_mode():  # a first run makes what a step builds once (tables, caches), as a warm-up does
        generator._device_step(shape)
    classifier = _Classifier()
    with torch.inference_mode(), classifier:
        generator._device_step(shape)
    runner = StepRunner(TRACE)
    with torch.inference_mode():
        runner.run(shape, lambda: generator._device_step(shape))
    return classifier.counts, runner.operator_count(shape)


def measure(name: str) -> dict:
    family, overrides, batch = CASES[name]
    build = _dia1 if family == "dia1" else _dia2
    counts, traced = _count(*build(overrides, batch))
    total = sum(counts.values())
    if total != traced:
        raise SystemExit(f"{name}: the classifier counted {total} operators, the trace recorded {traced}")
    fewer, _ = _count(*build(overrides, batch, layers_less=1))
    row = {"total": total, "layer": total - sum(fewer.values()), "hash": counts["hash"],
           "sampling": counts["sampling"], "step": counts["step"], "transformer": counts["transformer"]}
    if family == "dia1":
        row["layers"] = Dia1Config(variant=VARIANT_0626, **overrides).decoder_layers
    else:
        c = Dia2Config(**overrides)
        less, _ = _count(*build(overrides, batch, dep_layers_less=1))
        row.update(layers=c.decoder_layers, depformer=counts["depformer"], depformer_layers=c.depformer_layers,
                   depformer_layer_per_frame=total - sum(less.values()))
    return row


def _speed_generators(root: Path):
    """A tiny Dia-1.6B (EOS never wins) and a tiny Dia2 model, with a request factory for each."""
    from faster_dia.models.dia1.checkpoint import load_checkpoint as load_dia1
    from faster_dia.models.dia1.generator import Dia1Request
    from faster_dia.models.dia2.checkpoint import load_checkpoint as load_dia2
    from faster_dia.models.dia2.generator import Dia2Request
    from faster_dia.models.dia2.text import Entry
    from faster_dia.testing import write_tiny_checkpoint

    checkpoint = load_dia1(write_tiny_checkpoint("dia-1.6b-0626", root / "dia1", eos_logit_scale=0.0))
    dia1 = Dia1Model.from_hf_state_dict(checkpoint.config, checkpoint.state_dict)
    text = torch.tensor(list(b"[S1] A line of about sixty bytes for the timing of steps."), dtype=torch.long)

    def dia1_request(i):
        return Dia1Request(text=text, seed=i, temperature=1.2, top_k=45, cfg_scale=3.0)

    checkpoint = load_dia2(write_tiny_checkpoint("dia2", root / "dia2"))
    dia2 = Dia2Model.from_state_dict(checkpoint.config, checkpoint.state_dict)
    words = [Entry(tokens=[100 + i % 200], text=f"w{i}", padding=1) for i in range(400)]

    def dia2_request(i):
        return Dia2Request(entries=list(words), seed=i, cfg_scale=2.0)

    return {"dia1-tiny": (Dia1Generator, dia1, dia1_request), "dia2-tiny": (Dia2Generator, dia2, dia2_request)}


def speed(root: Path, steps: int, repeats: int) -> dict:
    """Steps per second of the tiny models per step mode, batch 1 and 4, one thread. The modes take turns repeat
    by repeat, so that on a shared machine they see the same background load."""
    torch.set_num_threads(1)
    results = {}
    modes = (EAGER, TRACE, COMPILED)
    for name, (cls, model, request) in _speed_generators(root).items():
        for batch in (1, 4):
            generators = {mode: cls(model, max_batch=batch, step_mode=mode) for mode in modes}
            times: dict[str, list[float]] = {mode: [] for mode in modes}
            first: dict[str, float] = {}
            for repeat in range(repeats + 1):  # the first round is untimed: it records the step shapes
                for mode, generator in generators.items():
                    states = [generator.prepare(request(i)) for i in range(batch)]
                    start = time.perf_counter()
                    generator.step()
                    first.setdefault(mode, time.perf_counter() - start)
                    for _ in range(2):
                        generator.step()
                    start = time.perf_counter()
                    for _ in range(steps):
                        generator.step()
                    if repeat:
                        times[mode].append((time.perf_counter() - start) / steps * 1000)
                    for state in states:
                        generator.release(state)
            for mode in modes:
                row = {"min_ms": min(times[mode]), "median_ms": statistics.median(times[mode]),
                       "steps_per_s": 1000 / statistics.median(times[mode]), "first_step_s": first[mode]}
                results[f"{name}-b{batch}-{mode}"] = row
                print(f"{name} batch {batch} {mode}: {row['median_ms']:.2f} ms/step (min {row['min_ms']:.2f}), "
                      f"first step {first[mode]:.1f} s", file=sys.stderr)
    return results


def _table(results: dict, before: dict | None) -> str:
    cols = ["total", "layer", "transformer", "depformer", "depformer_layer_per_frame", "hash", "sampling", "step"]
    lines = ["| case | " + " | ".join(cols) + " |", "|---|" + "---|" * len(cols)]
    for name, row in results.items():
        cells = []
        for col in cols:
            now = row.get(col)
            old = (before or {}).get(name, {}).get(col)
            cell = "–" if now is None else str(now)
            if old is not None and old != now:
                cell = f"{old} → {cell}"
            cells.append(cell)
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cases", default=",".join(CASES), help=f"comma-separated, of {', '.join(CASES)}")
    parser.add_argument("--before", type=Path, help="an earlier run's JSON, shown beside this run's counts")
    parser.add_argument("--speed", action="store_true", help="also time the tiny models' CPU steps per mode")
    parser.add_argument("--steps", type=int, default=20, help="timed steps per repeat (--speed)")
    parser.add_argument("--repeats", type=int, default=3, help="timed repeats (--speed)")
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT)
    args = parser.parse_args(argv)
    names = [n for n in args.cases.split(",") if n]
    unknown = [n for n in names if n not in CASES]
    if unknown:
        parser.error(f"unknown case(s) {', '.join(unknown)}; expected some of {', '.join(CASES)}")
    before = json.loads(args.before.read_text())["results"] if args.before else None
    results = {}
    for name in names:
        print(f"counting {name} …", file=sys.stderr)
        results[name] = measure(name)
    print(_table(results, before))
    timings = None
    if args.speed:
        with tempfile.TemporaryDirectory() as root:
            timings = speed(Path(root), args.steps, args.repeats)
        print("\n| case | ms/step median | min | steps/s | first step s |\n|---|---|---|---|---|")
        for name, row in timings.items():
            print(f"| {name} | {row['median_ms']:.2f} | {row['min_ms']:.2f} | {row['steps_per_s']:.0f} | "
                  f"{row['first_step_s']:.1f} |")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps({"torch": torch.__version__, "results": results, "before": before,
                                    "speed": timings}, indent=1))
    print(f"wrote {args.out}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
