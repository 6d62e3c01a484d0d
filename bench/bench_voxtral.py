#!/usr/bin/env python
"""Voxtral decoding speed: generated tokens per second, faster-dia's engine against transformers'
``VoxtralForConditionalGeneration.generate`` on the same random weights, in the same run.

Each request is one audio chunk (random mel features) plus a few text tokens; every request generates exactly
``--tokens`` tokens greedily (EOS is switched off on both sides, so random weights cannot end a request early).
"batch 1" is one request at a time; "8 concurrent" submits 8 requests at once (the engine batches them in its
slots; transformers gets them as one padded batch). Audio encoding and prefill are included in the time.

    .venv/bin/python bench/bench_voxtral.py                   # tiny and mid, on the default device
    .venv/bin/python bench/bench_voxtral.py --configs mid --tokens 128 --device cuda --dtype bfloat16

Prints the table to stdout and writes JSON (default ``bench/results/voxtral.json``).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import platform
import sys
import tempfile
import time
from pathlib import Path

import torch

from faster_dia.engine import Engine
from faster_dia.models.voxtral.checkpoint import load_checkpoint
from faster_dia.models.voxtral.generator import VoxtralGenerator, VoxtralRequest
from faster_dia.models.voxtral.model import VoxtralModel
from faster_dia.testing import write_tiny_voxtral

REPO_ROOT = Path(__file__).resolve().parent.parent
DEFAULT_OUT = REPO_ROOT / "bench" / "results" / "voxtral.json"

#: "tiny" is the tests' checkpoint; "mid" has Voxtral-Mini's audio chunk (30 s, 128 mel bins, 375 tokens) and
#: a decoder of about 0.2 B parameters.
CONFIGS = {
    "tiny": {},
    "mid": dict(audio_hidden_size=384, audio_layers=4, audio_heads=6, num_mel_bins=128, max_source_positions=1500,
                vocab_size=32768, hidden_size=1024, intermediate_size=2816, layers=8, heads=16, kv_heads=4,
                head_dim=64, max_position_embeddings=4096),
}
AUDIO = 24


def prompts(config, count: int, seed: int) -> list[tuple[torch.Tensor, torch.Tensor]]:
    g = torch.Generator().manual_seed(seed)
    out = []
    for _ in range(count):
        ids = torch.cat([torch.tensor([1, 3, 25]), torch.full((config.audio_tokens_per_chunk,), AUDIO),
                         torch.randint(40, min(config.vocab_size, 280), (12,), generator=g), torch.tensor([4])])
        out.append((ids, torch.randn(1, config.num_mel_bins, config.mel_frames, generator=g)))
    return out


def run_engine(model, cases, tokens: int, max_batch: int) -> float:
    generator = VoxtralGenerator(model, max_batch=max_batch, max_seq_len=cases[0][0].shape[0] + tokens + 1)
    generator.config = dataclasses.replace(generator.config, eos_token_id=-1)  # never stop early
    engine = Engine(generator)
    try:
        started = time.perf_counter()
        subs = engine.submit([VoxtralRequest(ids, features=f, max_new_tokens=tokens) for ids, f in cases])
        for sub in subs:
            kind, value = sub.events.get()
            assert kind == "done" and value.shape[0] == tokens, (kind, value)
        return time.perf_counter() - started
    finally:
        engine.close()


def run_transformers(reference, cases, tokens: int) -> float:
    ids = torch.stack([c[0] for c in cases])
    features = torch.cat([c[1] for c in cases])
    started = time.perf_counter()
    with torch.no_grad():
        out = reference.generate(input_ids=ids, input_features=features.to(reference.dtype),
                                 attention_mask=torch.ones_like(ids), max_new_tokens=tokens, min_new_tokens=tokens,
                                 do_sample=False, pad_token_id=11, eos_token_id=None)
    assert out.shape[1] == ids.shape[1] + tokens
    return time.perf_counter() - started


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--configs", default="tiny,mid")
    parser.add_argument("--tokens", type=int, default=64)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--dtype", default="float32", choices=("float32", "bfloat16", "float16"))
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT)
    args = parser.parse_args()
    import transformers

    dtype = getattr(torch, args.dtype)
    rows = []
    for name in args.configs.split(","):
        with tempfile.TemporaryDirectory() as tmp:
            directory = write_tiny_voxtral(Path(tmp) / name, config_overrides=CONFIGS[name])
            checkpoint = load_checkpoint(directory)
            model = VoxtralModel(checkpoint.config, checkpoint.state_dict, dtype=dtype, device=args.device)
            reference = transformers.VoxtralForConditionalGeneration.from_pretrained(directory, dtype=dtype)
            reference = reference.to(args.device).eval()
        for concurrent in (1, 8):
            cases = prompts(model.config, concurrent, seed=concurrent)
            best = {"faster-dia": float("inf"), "transformers": float("inf")}
            for _ in range(args.repeats + 1):  # the first round warms up
                if concurrent == 1:
                    ours = run_engine(model, cases, args.tokens, max_batch=1)
                else:
                    ours = run_engine(model, cases, args.tokens, max_batch=8)
                theirs = run_transformers(reference, [(c[0].to(args.device), c[1].to(args.device)) for c in cases],
                                          args.tokens)
                best = {"faster-dia": min(best["faster-dia"], ours), "transformers": min(best["transformers"], theirs)}
            total = concurrent * args.tokens
            row = {"config": name, "concurrent": concurrent, "dtype": args.dtype, "device": args.device,
                   "faster_dia_tokens_per_s": total / best["faster-dia"],
                   "transformers_tokens_per_s": total / best["transformers"]}
            row["ratio"] = row["faster_dia_tokens_per_s"] / row["transformers_tokens_per_s"]
            rows.append(row)
            print(f"{name} x{concurrent}: {row['faster_dia_tokens_per_s']:.1f} vs "
                  f"{row['transformers_tokens_per_s']:.1f} tokens/s", file=sys.stderr)
    print("| config | concurrent | faster-dia tokens/s | transformers tokens/s | faster-dia × transformers |")
    print("|---|---|---|---|---|")
    for r in rows:
        print(f"| {r['config']} | {r['concurrent']} | {r['faster_dia_tokens_per_s']:.1f} | "
              f"{r['transformers_tokens_per_s']:.1f} | {r['ratio']:.2f} |")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps({"rows": rows, "tokens": args.tokens, "torch": torch.__version__,
                                    "transformers": transformers.__version__, "machine": platform.machine(),
                                    "threads": torch.get_num_threads()}, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
