#!/usr/bin/env python
"""Dense rows and batched codec decoding, each against its peer in the same run.

1. Decode step cost with ``--slots`` batch slots of which all but the highest one have finished: with dense
   rows (the running request moved down into row 0 when the others left: a batch of 1) against the same
   generator without compaction (the step computes rows 0 … 15, 15 of them idle), a request alone in a
   one-slot generator (the floor) and every slot running. Also the cost of the move itself (one release).
2. Codec decoding of the results of one ``generate`` call: ``decode_many`` (one batched call, padded and
   trimmed) against one ``decode`` per result, with the largest difference in samples.

Random checkpoints (bench_dia1.py's configs, EOS logit 0 so no request stops) and a tiny or real-width DAC.
Steps and decodes are timed ``--repeats`` times; min and median are reported.

    .venv/bin/python bench/bench_dense.py --config tiny --threads 1
    .venv/bin/python bench/bench_dense.py --config mid --device cuda --dac real
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from bench_dia1 import CONFIGS, machine_info, sync

import faster_dia
from faster_dia.models.dia1.generator import Dia1Generator
from faster_dia.models.graphs import resolve_mode
from faster_dia.testing import write_tiny_checkpoint

REPO_ROOT = Path(__file__).resolve().parent.parent
DEFAULT_OUT = REPO_ROOT / "bench" / "results" / "dense.json"
#: The descript/dac_44khz widths (the tiny DAC is 16 wide).
REAL_DAC = {"encoder_hidden_size": 64, "decoder_hidden_size": 1536, "codebook_dim": 8}
SCRIPT = "[S1] Dense rows keep a step's cost to what is running. [S2] And the codec decodes once."


def _summary(times: list[float]) -> dict[str, float]:
    return {"min_ms": 1e3 * min(times), "median_ms": 1e3 * statistics.median(times)}


def time_steps(generator: Dia1Generator, *, steps: int, warmup: int, repeats: int, device) -> list[float]:
    for _ in range(warmup):
        generator.step()
    out = []
    for _ in range(repeats):
        sync(device)
        start = time.perf_counter()
        for _ in range(steps):
            generator.step()
        sync(device)
        out.append((time.perf_counter() - start) / steps)
    return out


def step_rows(tts, args, device) -> list[dict]:
    request = tts._request(SCRIPT, seed=1, temperature=0.0, top_p=0.95, top_k=45, cfg_scale=3.0, max_new_tokens=None,
                           audio_prompt=None, audio_prompt_transcript=None, audio_prompt_sample_rate=None)
    mode = resolve_mode(device, None if args.cuda_graphs else False)
    rows = []

    def scenario(name: str, slots: int, running: int, *, dense: bool = True, leave: int = 0) -> None:
        generator = Dia1Generator(tts.model, max_batch=slots, step_mode=mode)
        generator.dense = dense
        states = [generator.prepare(request) for _ in range(running)]
        moves = []
        for state in states[:leave]:  # the low rows finish; the highest request stays
            moving = dense and state.row < len(generator._states) - 1  # a release from the top moves nothing
            sync(device)
            start = time.perf_counter()
            generator.release(state)
            sync(device)
            if moving:
                moves.append(time.perf_counter() - start)
        times = time_steps(generator, steps=args.steps, warmup=args.warmup, repeats=args.repeats, device=device)
        live = states[leave:]
        if any(s.finished for s in live):
            raise RuntimeError("a request finished inside the timed region; the timing is invalid")
        rows.append({"part": "step", "case": name, "slots": slots, "running": len(live),
                     "rows_stepped": int(live[-1].row) + 1, **_summary(times)})
        if moves:
            rows.append({"part": "move", "case": "release with a move (highest request down)",
                         "slots": slots, "running": len(live), "rows_stepped": None, **_summary(moves)})
        for s in live:
            generator.release(s)

    n = args.slots
    scenario(f"{n - 1} finished low slots, dense rows", n, n, dense=True, leave=n - 1)
    scenario(f"{n - 1} finished low slots, not compacted", n, n, dense=False, leave=n - 1)
    scenario("floor: the request alone (1 slot)", 1, 1)
    scenario(f"all {n} running", n, n)
    return rows


def codec_rows(codec, args, device) -> list[dict]:
    rng = np.random.default_rng(0)
    frames = (rng.uniform(args.min_seconds, args.max_seconds, args.results) * codec.frame_rate).astype(int)
    codes = [torch.from_numpy(rng.integers(0, codec.codebook_size, (int(f), codec.num_codebooks))) for f in frames]
    alone = [codec.decode(c) for c in codes]  # also warms the decoder up
    batched = codec.decode_many(codes, batched=True)
    diff = max(float(np.abs(a - b).max()) for a, b in zip(alone, batched, strict=True))

    def each() -> None:
        for c in codes:
            codec.decode(c)

    rows = []
    for name, fn in (("one decode per result", each), ("decode_many (one batched call)",
                                                         lambda: codec.decode_many(codes, batched=True))):
        times = []
        for _ in range(args.repeats):
            sync(device)
            start = time.perf_counter()
            fn()
            sync(device)
            times.append(time.perf_counter() - start)
        rows.append({"part": "codec", "case": name, "results": len(codes), "audio_seconds": float(frames.sum()
                     / codec.frame_rate), "max_abs_difference": diff, **_summary(times)})
    return rows


def print_table(rows: list[dict]) -> None:
    print(f"{'part':<6} {'case':<46} {'rows':>5} {'min ms':>10} {'median ms':>10}")
    for r in rows:
        stepped = r.get("rows_stepped")
        print(f"{r['part']:<6} {r['case']:<46} {'' if stepped is None else stepped:>5} "
              f"{r['min_ms']:>10.3f} {r['median_ms']:>10.3f}")
    codec = [r for r in rows if r["part"] == "codec"]
    if codec:
        print(f"codec: {codec[0]['results']} results, {codec[0]['audio_seconds']:.1f} s of audio, largest sample "
              f"difference {codec[0]['max_abs_difference']:.2e}")


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--config", default="tiny", choices=sorted(CONFIGS))
    p.add_argument("--device", default="cpu")
    p.add_argument("--threads", type=int, default=None, help="torch CPU threads (1 for overhead comparisons)")
    p.add_argument("--slots", type=int, default=16)
    p.add_argument("--steps", type=int, default=16)
    p.add_argument("--warmup", type=int, default=4)
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--no-cuda-graphs", dest="cuda_graphs", action="store_false")
    p.add_argument("--dac", default="tiny", choices=["tiny", "real"], help="DAC widths: tiny or descript's")
    p.add_argument("--results", type=int, default=8, help="results decoded by the codec part")
    p.add_argument("--min-seconds", type=float, default=2.0)
    p.add_argument("--max-seconds", type=float, default=6.0)
    p.add_argument("--out", type=Path, default=DEFAULT_OUT)
    args = p.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    device = torch.device(args.device)
    with tempfile.TemporaryDirectory(prefix="bench_dense_") as tmp:
        ckpt = write_tiny_checkpoint("dia-1.6b-0626", Path(tmp) / "dia", config_overrides=CONFIGS[args.config],
                                     eos_logit_scale=0.0)
        dac = write_tiny_checkpoint("dac", Path(tmp) / "dac", config_overrides=REAL_DAC if args.dac == "real" else None)
        tts = faster_dia.load(ckpt, codec=dac, device=device, max_batch=1, cuda_graphs=False if device.type != "cuda"
                              else args.cuda_graphs, warmup=False)
        print("timing steps ...", file=sys.stderr)
        rows = step_rows(tts, args, device)
        print("timing codec ...", file=sys.stderr)
        rows += codec_rows(tts.codec, args, device)
    print()
    print_table(rows)
    result = {"machine": machine_info(device), "settings": {k: str(v) for k, v in vars(args).items()}, "rows": rows}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2) + "\n")
    print(f"\nwrote {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
