#!/usr/bin/env python
"""Quantized weights on CPU: how far each mode lands from full precision, the bytes it keeps, and its decode speed,
against transformers' ``DiaForConditionalGeneration`` on the same random weights in the same run.

One random Dia-1.6B checkpoint (the ``mid`` widths below) is written in the 0626 transformers layout. For each
variant (float32, bfloat16, int8, int8-dynamic, int4) faster-dia's network is loaded and quantized as
``faster_dia.load(quantize=...)`` does, then:

* quality: the variant decodes 200 steps greedily (CFG 3, top-k 45, temperature 0); float32's 200-step sequence
  is then read teacher-forced by every variant: per-step worst logit error over the logit RMS, and the top-1
  agreement per (step, channel). Free-running greedy agreement (the fraction of the 200 x 9 tokens equal to
  float32's, and the first step that differs) is reported too; on random weights the logits have small margins,
  so one flip makes the rest of the sequence differ: it is the harsher figure.
* memory: the network's weight bytes (parameters plus the quantized weights' stored bytes).
* speed: decode steps per second at batch 1 (2 rows with CFG), ``--steps`` timed steps per repeat, repeats
  interleaved across variants (the machine is shared and noisy), median and best reported. transformers'
  ``generate`` is timed the same way, in float32 and with ``torch.ao.quantization.quantize_dynamic`` (its
  usual int8 path on CPU, one activation scale per call).

    .venv/bin/python bench/bench_quantize.py                    # about two minutes on 2 cores
    .venv/bin/python bench/bench_quantize.py --steps 20 --repeats 5 --threads 1
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import time
import warnings
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_dia1 import (  # noqa: E402  (the shared transformers timing and inputs)
    CFG_SCALE,
    SCRIPT,
    TOP_K,
    machine_info,
    time_faster_dia,
    time_transformers,
    transformers_inputs,
)

from faster_dia.models.dia1.checkpoint import load_checkpoint  # noqa: E402
from faster_dia.models.dia1.generator import Dia1Generator, Dia1Request  # noqa: E402
from faster_dia.models.dia1.model import Dia1Model  # noqa: E402
from faster_dia.models.quantize import quantize_model, weight_bytes  # noqa: E402
from faster_dia.script import encode_script, normalize_script  # noqa: E402
from faster_dia.testing import delayed_tokens, write_tiny_checkpoint  # noqa: E402

REPO_ROOT = Path(__file__).resolve().parent.parent
DEFAULT_OUT = REPO_ROOT / "bench" / "results" / "quantize.json"

#: Between the tiny test model and the real one: real head widths, half the real hidden sizes, 4 decoder layers.
#: About 100 M parameters (75 M in the quantized matrices), 0.4 GB in float32.
MID: dict[str, int] = {
    "encoder_layers": 2, "encoder_hidden_size": 512, "encoder_intermediate_size": 2048, "encoder_heads": 4,
    "encoder_kv_heads": 4, "encoder_head_dim": 128,
    "decoder_layers": 4, "decoder_hidden_size": 1024, "decoder_intermediate_size": 4096, "decoder_heads": 8,
    "decoder_kv_heads": 2, "decoder_head_dim": 128, "cross_heads": 8, "cross_kv_heads": 8, "cross_head_dim": 128,
}

#: name -> (compute dtype, quantize mode)
VARIANTS: dict[str, tuple[torch.dtype, str | None]] = {
    "float32": (torch.float32, None),
    "bfloat16": (torch.bfloat16, None),
    "int8": (torch.float32, "int8"),
    "int8-dynamic": (torch.float32, "int8-dynamic"),
    "int4": (torch.float32, "int4"),
}
HF_FP32 = "transformers float32"
HF_INT8 = "transformers quantize_dynamic int8"
QUALITY_STEPS = 200


@dataclass
class Row:
    variant: str
    weight_mib: float
    steps_per_s_median: float
    steps_per_s_best: float  # from the fastest repeat (the least disturbed on a shared machine)
    x_float32: float | None = None  # this variant's median steps/s over faster-dia float32's
    x_transformers: float | None = None  # over transformers float32's
    worst_logit_error: float | None = None  # worst per-step |logit error| / logit RMS, teacher-forced
    mean_logit_error: float | None = None  # the per-step worst, averaged over steps
    top1_agreement: float | None = None  # teacher-forced, per (step, channel)
    greedy_agreement: float | None = None  # free-running, per (step, channel)
    first_difference: int | None = None  # free-running: first step whose tokens differ (None: none did)
    samples_ms: list[float] = field(default_factory=list)


def build(checkpoint, dtype: torch.dtype, mode: str | None) -> Dia1Model:
    model = Dia1Model.from_hf_state_dict(checkpoint.config, checkpoint.state_dict, dtype=dtype)
    if mode is not None:
        quantize_model(model, "dia1", mode)
    return model


def request(text: torch.Tensor) -> Dia1Request:
    return Dia1Request(text=text, seed=0, temperature=0.0, top_k=TOP_K, cfg_scale=CFG_SCALE)


@torch.inference_mode()
def greedy_tokens(model: Dia1Model, text: torch.Tensor, steps: int) -> torch.Tensor:
    """The delayed token sequence after ``steps`` greedy decode steps (BOS position included)."""
    generator = Dia1Generator(model, max_batch=1)
    state = generator.prepare(request(text))
    for _ in range(steps):
        generator.step()
    tokens = delayed_tokens(generator, state)
    generator.release(state)
    return tokens


@torch.inference_mode()
def teacher_forced(model: Dia1Model, text: torch.Tensor, tokens: torch.Tensor) -> torch.Tensor:
    return model(text[None], torch.ones(1, text.numel(), dtype=torch.bool), tokens[None]).float()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--steps", type=int, default=24, help="timed decode steps per repeat (default 24)")
    parser.add_argument("--repeats", type=int, default=3, help="repeats; median and best reported (default 3)")
    parser.add_argument("--threads", type=int, help="torch CPU threads (default: torch's choice)")
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT, help=f"JSON output (default {DEFAULT_OUT})")
    args = parser.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    import transformers
    from transformers import DiaForConditionalGeneration

    transformers.logging.set_verbosity_error()
    transformers.logging.disable_progress_bar()
    warnings.filterwarnings("ignore")

    def log(message: str) -> None:
        print(message, file=sys.stderr, flush=True)

    began = time.perf_counter()
    workdir = Path(tempfile.mkdtemp(prefix="bench-quantize-"))
    # EOS logit 0: nothing stops early, every variant decodes the same number of steps.
    write_tiny_checkpoint("dia-1.6b-0626", workdir / "mid", config_overrides=MID, eos_logit_scale=0.0)
    checkpoint = load_checkpoint(workdir / "mid")
    text = torch.tensor(encode_script(normalize_script(SCRIPT)), dtype=torch.long)
    device = torch.device("cpu")

    models = {name: build(checkpoint, dtype, mode) for name, (dtype, mode) in VARIANTS.items()}
    log(f"loaded {len(models)} variants in {time.perf_counter() - began:.0f} s")

    # Quality against float32.
    quality: dict[str, dict] = {}
    reference_tokens = greedy_tokens(models["float32"], text, QUALITY_STEPS)
    reference = teacher_forced(models["float32"], text, reference_tokens)
    rms = reference.pow(2).mean().sqrt()
    for name, model in models.items():
        tokens = reference_tokens if name == "float32" else greedy_tokens(model, text, QUALITY_STEPS)
        logits = teacher_forced(model, text, reference_tokens)
        per_step = (logits - reference).abs().amax(dim=(0, 2, 3)) / rms
        same = tokens == reference_tokens
        differing = (~same.all(dim=1)).nonzero()
        quality[name] = dict(
            worst_logit_error=float(per_step.max()), mean_logit_error=float(per_step.mean()),
            top1_agreement=float((logits.argmax(-1) == reference.argmax(-1)).float().mean()),
            greedy_agreement=float(same[1:].float().mean()),
            first_difference=int(differing[0]) if len(differing) else None,
        )
        log(f"{name}: " + ", ".join(f"{k} {v:.4g}" if isinstance(v, float) else f"{k} {v}"
                                    for k, v in quality[name].items()))

    # Speed, interleaved with transformers in float32 and with its dynamic int8 quantization.
    hf = DiaForConditionalGeneration.from_pretrained(workdir / "mid", dtype=torch.float32).eval()
    hf_q = torch.ao.quantization.quantize_dynamic(
        DiaForConditionalGeneration.from_pretrained(workdir / "mid", dtype=torch.float32).eval(),
        {torch.nn.Linear}, dtype=torch.qint8)
    inputs = transformers_inputs(text, 1, checkpoint.config, device)
    runs = {name: (lambda steps, m=model: time_faster_dia(Dia1Generator(m, max_batch=1), [request(text)],
                                                            warmup=2, steps=steps, device=device))
            for name, model in models.items()}
    runs[HF_FP32] = lambda steps: time_transformers(hf, inputs, warmup=2, steps=steps, device=device)
    runs[HF_INT8] = lambda steps: time_transformers(hf_q, inputs, warmup=2, steps=steps, device=device)
    for fn in runs.values():
        fn(1)
    samples: dict[str, list[float]] = {name: [] for name in runs}
    for repeat in range(args.repeats):
        for name, fn in runs.items():
            samples[name].append(fn(args.steps))
        log(f"repeat {repeat + 1}/{args.repeats}: "
            + ", ".join(f"{name} {s[-1] * 1e3:.1f} ms" for name, s in samples.items()))

    def steps_per_s(name: str) -> float:
        return 1 / statistics.median(samples[name])

    hf_bytes = {HF_FP32: sum(p.nbytes for p in hf.parameters()), HF_INT8: None}
    rows = []
    for name in runs:
        row = Row(
            variant=name,
            weight_mib=(weight_bytes(models[name]) if name in models else hf_bytes[name] or float("nan")) / 2**20,
            steps_per_s_median=steps_per_s(name), steps_per_s_best=1 / min(samples[name]),
            x_float32=steps_per_s(name) / steps_per_s("float32"),
            x_transformers=steps_per_s(name) / steps_per_s(HF_FP32),
            samples_ms=[s * 1e3 for s in samples[name]], **quality.get(name, {}),
        )
        rows.append(row)

    headers = ["variant", "weights MiB", "steps/s med", "steps/s best", "x fp32", "x transformers",
               "worst logit err", "mean logit err", "top-1 agree", "greedy agree", "first diff"]

    def cell(value, spec):
        return "" if value is None or value != value else format(value, spec)

    lines = [[r.variant, cell(r.weight_mib, ".1f"), cell(r.steps_per_s_median, ".1f"), cell(r.steps_per_s_best, ".1f"),
              cell(r.x_float32, ".2f"), cell(r.x_transformers, ".2f"), cell(r.worst_logit_error, ".4f"),
              cell(r.mean_logit_error, ".4f"), cell(r.top1_agreement, ".3f"), cell(r.greedy_agreement, ".3f"),
              "" if r.first_difference is None else str(r.first_difference)] for r in rows]
    widths = [max(len(h), *(len(line[i]) for line in lines)) for i, h in enumerate(headers)]
    print("  ".join(h.ljust(w) for h, w in zip(headers, widths, strict=True)))
    print("  ".join("-" * w for w in widths))
    for line in lines:
        print("  ".join(c.ljust(w) for c, w in zip(line, widths, strict=True)))

    args.out.parent.mkdir(parents=True, exist_ok=True)
    result = {"machine": machine_info(device), "config": MID, "quality_steps": QUALITY_STEPS,
              "timed_steps": args.steps, "repeats": args.repeats, "rows": [asdict(r) for r in rows]}
    args.out.write_text(json.dumps(result, indent=2) + "\n", encoding="utf-8")
    log(f"wrote {args.out} ({time.perf_counter() - began:.0f} s in all)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
