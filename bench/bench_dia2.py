"""Dia2 generation speed: frames per second and multiple of real time (12.5 frames = 1 s of audio).

Random weights written in the published layout (faster_dia.testing), full frames (one transformer step plus
the 31 depformer stages and 32 samplings) for a batch of B requests stepped together. There is no
pip-installable Dia2 reference to run beside it, so the comparison is against the frame's floor: a bare pass
of its matrix products (the depformer's weights are read once per stage, 31 times a frame), and on a GPU also
the bytes every frame must read (weights once per use, plus the KV cache) over the measured bandwidth. On CUDA
each configuration runs twice: with CUDA graphs (the default) and eagerly.

    python bench/bench_dia2.py                 # tiny and mid (2B widths, 4+2 layers) on CPU
    python bench/bench_dia2.py --configs tiny,full --dtypes bfloat16 --device cuda --batches 1,8,32
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


def frame_matrices(model: Dia2Model) -> list[torch.Tensor]:
    """Every weight one frame multiplies by, once per use: the transformer's matrices once, then for each of
    the 31 depformer stages its group's input, q/k/v and output projections, the shared MLP and the stage's
    logits head."""
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
    return plan


def floor_ms(model: Dia2Model, device: torch.device, repeats: int, rows: int) -> float:
    """A bare pass of one frame's matrix products for ``rows`` rows (2 per request with CFG)."""
    plan = frame_matrices(model)
    x = {w.shape[1]: torch.randn(rows, w.shape[1], device=device, dtype=w.dtype) for w in plan}
    times = []
    for _ in range(repeats + 1):
        sync(device)
        start = time.perf_counter()
        for w in plan:
            F.linear(x[w.shape[1]], w)
        sync(device)
        times.append((time.perf_counter() - start) * 1000)
    return statistics.median(times[1:])


def measure_bandwidth(device: torch.device, nbytes: int = 1 << 30, repeats: int = 20) -> float:
    """Device memory bandwidth in bytes/s from a large device-to-device copy (reads and writes ``nbytes``)."""
    src = torch.empty(nbytes, dtype=torch.uint8, device=device)
    dst = torch.empty_like(src)
    dst.copy_(src)
    sync(device)
    start = time.perf_counter()
    for _ in range(repeats):
        dst.copy_(src)
    sync(device)
    return 2 * nbytes * repeats / (time.perf_counter() - start)


def run(model: Dia2Model, config_name: str, dtype: torch.dtype, device: torch.device, batch: int, mode: str,
        steps: int, repeats: int) -> dict:
    generator = Dia2Generator(model, max_batch=batch, max_prefix_frames=0, step_mode=mode)
    words = [Entry(tokens=[100 + i % 200], text=f"w{i}", padding=1) for i in range(400)]
    times = []
    for repeat in range(repeats + 1):  # the first round is untimed: it records the step shapes
        states = [generator.prepare(Dia2Request(entries=words, seed=1 + i, cfg_scale=2.0)) for i in range(batch)]
        for _ in range(3):
            generator.step()
        sync(device)
        start = time.perf_counter()
        for _ in range(steps):
            generator.step()
        sync(device)
        if repeat:
            times.append((time.perf_counter() - start) / steps * 1000)
        for state in states:
            generator.release(state)
    ms = statistics.median(times)
    c = model.config
    weight_bytes = sum(w.numel() * w.element_size() for w in frame_matrices(model))
    # Keys and values one frame reads: the transformer's cache up to the mean timed position, both CFG rows.
    position = 3 + steps // 2
    kv_bytes = 2 * batch * c.decoder_layers * 2 * c.decoder_kv_heads * c.decoder_head_dim * position * dtype.itemsize
    del generator
    return dict(config=config_name, dtype=str(dtype).removeprefix("torch."), device=str(device), batch=batch,
                step_mode=mode, ms_per_frame=ms, frames_per_s=batch * 1000 / ms,
                x_realtime=batch * 1000 / ms / FRAME_RATE, weight_gb_per_frame=weight_bytes / 1e9,
                kv_gb_per_frame=kv_bytes / 1e9)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--configs", default="tiny,mid")
    parser.add_argument("--dtypes", default="float32")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--batches", default="1", help="comma list of requests stepped together (default 1)")
    parser.add_argument("--steps", type=int, default=10)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--out", default=str(Path(__file__).parent / "results" / "dia2.json"))
    args = parser.parse_args()
    device = torch.device(args.device)
    modes = ["cuda-graphs", "eager"] if device.type == "cuda" else ["eager"]
    bandwidth = measure_bandwidth(device) if device.type == "cuda" else None
    rows = []
    for name in args.configs.split(","):
        for dt in args.dtypes.split(","):
            dtype = getattr(torch, dt)
            with tempfile.TemporaryDirectory() as tmp:
                directory = write_tiny_checkpoint("dia2", Path(tmp) / "dia2", config_overrides=CONFIGS[name])
                checkpoint = load_checkpoint(directory)
                model = Dia2Model.from_state_dict(checkpoint.config, checkpoint.state_dict, dtype=dtype, device=device)
                del checkpoint
            for batch in (int(b) for b in args.batches.split(",")):
                floor = floor_ms(model, device, 5, rows=2 * batch)
                for mode in modes:
                    row = run(model, name, dtype, device, batch, mode, args.steps, args.repeats)
                    row["floor_matvec_ms"] = floor
                    if bandwidth:
                        row["bandwidth_gb_s"] = bandwidth / 1e9
                        row["floor_bytes_ms"] = (row["weight_gb_per_frame"] + row["kv_gb_per_frame"]) * 1e9 / bandwidth * 1e3
                    rows.append(row)
                    bytes_floor = f", bytes/bandwidth floor {row['floor_bytes_ms']:.2f} ms" if bandwidth else ""
                    print(f"{row['config']:5} {row['dtype']:9} b{batch:<3} {mode:12} {row['ms_per_frame']:9.2f} ms/frame "
                          f"{row['frames_per_s']:8.1f} frames/s {row['x_realtime']:7.2f}x real time   "
                          f"matvec floor {floor:8.2f} ms ({row['ms_per_frame'] / floor:.2f}x){bytes_floor}", flush=True)
            del model
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps({"torch": torch.__version__, "threads": torch.get_num_threads(),
                                          "rows": rows}, indent=2))


if __name__ == "__main__":
    main()
