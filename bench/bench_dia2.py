"""Dia2 generation speed: frames per second and multiple of real time (12.5 frames = 1 s of audio).

Random weights written in the published layout (faster_dia.testing), batch 1, full frames (one transformer
step plus the 31 depformer stages and 32 samplings). There is no pip-installable Dia2 reference to run beside
it, so the comparison is against the frame's floor: a bare pass of its matrix-vector products (the
depformer's weights are read once per stage, 31 times a frame).

    python bench/bench_dia2.py                 # tiny and mid (2B widths, 4+2 layers) on CPU
    python bench/bench_dia2.py --configs full --device cuda   # the 2B config in bfloat16 on a GPU
"""

from __future__ import annotations

import argparse
import json
import statistics
import tempfile
import time
from pathlib import Path

import torch
import torch.nn.functional as F

from faster_dia.models.dia2.checkpoint import load_checkpoint
from faster_dia.models.dia2.generator import Dia2Generator, Dia2Request
from faster_dia.models.dia2.model import Dia2Model
from faster_dia.models.dia2.text import Entry
from faster_dia.testing import write_tiny_checkpoint

FRAME_RATE = 12.5
CONFIGS = {
    "tiny": {},
    "mid": dict(decoder_layers=4, decoder_hidden_size=2048, decoder_intermediate_size=6144, decoder_heads=16,
                decoder_kv_heads=8, decoder_head_dim=128, depformer_layers=2, depformer_hidden_size=1024,
                depformer_intermediate_size=3072, depformer_heads=8, depformer_kv_heads=8, depformer_head_dim=128),
    "full": dict(decoder_layers=28, decoder_hidden_size=2048, decoder_intermediate_size=6144, decoder_heads=16,
                 decoder_kv_heads=8, decoder_head_dim=128, depformer_layers=4, depformer_hidden_size=1024,
                 depformer_intermediate_size=3072, depformer_heads=8, depformer_kv_heads=8, depformer_head_dim=128),
}


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


def floor_ms(model: Dia2Model, device: torch.device, repeats: int) -> float:
    """A bare pass of one frame's matrix-vector products (2 CFG rows): the transformer's matrices once, then
    for each of the 31 depformer stages its group's input, q/k/v and output projections, the shared MLP and
    the stage's logits head — every weight the frame must read, read once per use."""
    plan = []
    for layer in model.layers:
        plan += [layer.qkv, layer.out, layer.gate_up, layer.down]
    plan.append(model.heads)
    for stage in range(model.stages):
        g = model.stage_group[stage]
        plan.append(model.dep_in[g])
        for layer in model.dep_layers:
            plan += [layer.qkv[g], layer.out[g], layer.gate_up, layer.down]
        plan.append(model.dep_logits[stage])
    x = {w.shape[1]: torch.randn(2, w.shape[1], device=device, dtype=w.dtype) for w in plan}
    times = []
    for _ in range(repeats + 1):
        sync(device)
        start = time.perf_counter()
        for w in plan:
            F.linear(x[w.shape[1]], w)
        sync(device)
        times.append((time.perf_counter() - start) * 1000)
    return statistics.median(times[1:])


def run(config_name: str, dtype: torch.dtype, device: torch.device, steps: int, repeats: int) -> dict:
    with tempfile.TemporaryDirectory() as tmp:
        directory = write_tiny_checkpoint("dia2", Path(tmp) / "dia2", config_overrides=CONFIGS[config_name])
        checkpoint = load_checkpoint(directory)
        model = Dia2Model.from_state_dict(checkpoint.config, checkpoint.state_dict, dtype=dtype, device=device)
    generator = Dia2Generator(model, max_batch=1, max_prefix_frames=0)
    words = [Entry(tokens=[100 + i % 200], text=f"w{i}", padding=1) for i in range(400)]
    times = []
    for _ in range(repeats):
        state = generator.prepare(Dia2Request(entries=words, seed=1, cfg_scale=2.0))
        for _ in range(3):
            generator.step([state])
        sync(device)
        start = time.perf_counter()
        for _ in range(steps):
            generator.step([state])
        sync(device)
        times.append((time.perf_counter() - start) / steps * 1000)
        generator.release(state)
    ms = statistics.median(times)
    weight_bytes = sum(p.numel() * p.element_size() for p in model.parameters())
    return dict(config=config_name, dtype=str(dtype).removeprefix("torch."), device=str(device), ms_per_frame=ms,
                frames_per_s=1000 / ms, x_realtime=1000 / ms / FRAME_RATE, floor_ms=floor_ms(model, device, 5),
                weight_gb=weight_bytes / 1e9)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--configs", default="tiny,mid")
    parser.add_argument("--dtypes", default="float32")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--steps", type=int, default=10)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--out", default=str(Path(__file__).parent / "results" / "dia2.json"))
    args = parser.parse_args()
    device = torch.device(args.device)
    rows = []
    for name in args.configs.split(","):
        for dt in args.dtypes.split(","):
            row = run(name, getattr(torch, dt), device, args.steps, args.repeats)
            rows.append(row)
            print(f"{row['config']:5} {row['dtype']:9} {row['ms_per_frame']:9.2f} ms/frame "
                  f"{row['frames_per_s']:8.1f} frames/s {row['x_realtime']:7.2f}x real time   "
                  f"floor {row['floor_ms']:8.2f} ms ({row['ms_per_frame'] / row['floor_ms']:.2f}x)", flush=True)
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps({"torch": torch.__version__, "threads": torch.get_num_threads(),
                                          "rows": rows}, indent=2))


if __name__ == "__main__":
    main()
