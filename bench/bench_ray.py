#!/usr/bin/env python
"""faster-dia on Ray Serve: aggregate real-time multiple at 1 and 2 replicas, and the time to first audio that
Serve's proxy adds, against a plain ``faster-dia serve`` in the same run.

Each server is a process started from the command line, on the same tiny random Dia-1.6B checkpoint (EOS
logit fixed at 0, so every request runs exactly its ``max_new_tokens``):

* ``plain``: ``faster-dia serve`` (one process, one engine);
* ``ray-1``: ``faster-dia serve --ray --replicas 1`` (the same engine behind Serve's HTTP proxy);
* ``ray-2``: ``faster-dia serve --ray --replicas 2``.

For each, the same two loads, repeated: ``--users`` concurrent streaming requests released together (aggregate
real-time multiple = audio seconds / wall seconds), then ``--probes`` single requests one after another (time
to first audio byte with nothing else running: the proxy's added latency is ray-1 minus plain). The clients,
their timing and the statistics are bench_server.py's.

    .venv/bin/python bench/bench_ray.py
    .venv/bin/python bench/bench_ray.py --servers plain,ray-2 --users 16 --repeats 5
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

# bench/ is on the path when this runs as a script.
from bench_server import (
    REPO_ROOT,
    WRITE_CHECKPOINT,
    free_port,
    log,
    machine_info,
    one_request,
    run_in_repo,
    run_level,
    server_env,
    stop,
    tail,
    wait_until_up,
)

DEFAULT_OUT = REPO_ROOT / "bench" / "results" / "ray.json"
SERVERS = ("plain", "ray-1", "ray-2")


def server_command(name: str, python: str, model: Path, codec: Path, port: int, max_batch: int,
                   data_dir: Path) -> list[str]:
    command = [python, "-m", "faster_dia.cli", "serve", "--model", str(model), "--codec", str(codec),
               "--device", "cpu", "--port", str(port), "--max-batch", str(max_batch), "--seed", "1",
               "--data-dir", str(data_dir)]
    if name.startswith("ray-"):
        replicas = int(name.split("-")[1])
        # The machine's cores split between the replicas: one replica gets them all, as the plain server does.
        cpus = max(1, (os.cpu_count() or 1) // replicas)
        command += ["--ray", "--replicas", str(replicas), "--cpus-per-replica", str(cpus)]
    return command


def measure(name: str, args: argparse.Namespace, model: Path, codec: Path, work: Path) -> dict[str, Any]:
    port = free_port()
    base_url = f"http://127.0.0.1:{port}"
    log_path = work / f"{name}.log"
    env = {**server_env(REPO_ROOT), "RAY_USAGE_STATS_ENABLED": "0"}
    command = server_command(name, args.python, model, codec, port, args.max_batch, work / f"data-{name}")
    started = time.perf_counter()
    with open(log_path, "wb") as out:
        proc = subprocess.Popen(command, cwd=REPO_ROOT, env=env, stdout=out, stderr=subprocess.STDOUT)
    try:
        wait_until_up(proc, base_url, log_path, timeout=600)
        ready_s = time.perf_counter() - started
        log(f"{name}: up in {ready_s:.1f} s")
        import openai

        client = openai.OpenAI(base_url=f"{base_url}/v1", api_key="bench", max_retries=0, timeout=1800)
        one_request(client, 0, args.tokens)  # untimed: the first request of a process pays for lazy setup
        loads, probes = [], []
        for repeat in range(args.repeats):
            level = run_level(base_url, proc.pid, args.users, args.tokens)
            level.pop("requests")
            loads.append(level)
            for i in range(args.probes):
                probes.append(one_request(client, 1000 + i, args.tokens))
            log(f"{name}: repeat {repeat + 1}: aggregate {level['aggregate_x_realtime']:.2f}x real time, "
                f"{level['errors']} errors")
        client.close()
    except Exception:
        log(tail(log_path))
        raise
    finally:
        stop(proc)
    aggregate = [level["aggregate_x_realtime"] for level in loads if level["aggregate_x_realtime"]]
    ttfa = [p["ttfa_s"] for p in probes if p.get("ttfa_s") is not None]
    return {
        "server": name, "command": command[2:], "ready_s": ready_s,
        "aggregate_x_realtime_min": min(aggregate, default=None),
        "aggregate_x_realtime_median": statistics.median(aggregate) if aggregate else None,
        "aggregate_x_realtime_max": max(aggregate, default=None),
        "ttfa_min_s": min(ttfa, default=None),
        "ttfa_median_s": statistics.median(ttfa) if ttfa else None,
        "errors": sum(level["errors"] for level in loads) + sum(1 for p in probes if p.get("error")),
        "loads": loads,
    }


def render(results: list[dict[str, Any]], args: argparse.Namespace) -> str:
    plain = next((r for r in results if r["server"] == "plain"), None)
    lines = [f"{args.users} concurrent users x {args.tokens} steps, {args.repeats} repeats; time to first audio "
             f"of {args.probes} lone requests per repeat",
             "| server | aggregate xRT min | median | max | ttfa min ms | ttfa median ms | ttfa vs plain ms | errors "
             "| ready s |",
             "|---|---|---|---|---|---|---|---|---|"]

    def f(value: float | None, scale: float = 1.0, fmt: str = ".2f") -> str:
        return "n/a" if value is None else format(value * scale, fmt)

    for r in results:
        extra = None
        if plain is not None and r["ttfa_median_s"] is not None and plain["ttfa_median_s"] is not None:
            extra = r["ttfa_median_s"] - plain["ttfa_median_s"]
        lines.append(f"| {r['server']} | {f(r['aggregate_x_realtime_min'])} | {f(r['aggregate_x_realtime_median'])} | "
                     f"{f(r['aggregate_x_realtime_max'])} | {f(r['ttfa_min_s'], 1000, '.0f')} | "
                     f"{f(r['ttfa_median_s'], 1000, '.0f')} | {f(extra, 1000, '+.0f')} | {r['errors']} | "
                     f"{r['ready_s']:.0f} |")
    return "\n".join(lines)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--servers", default=",".join(SERVERS), help=f"comma-separated, of {', '.join(SERVERS)}")
    p.add_argument("--users", type=int, default=16, help="concurrent requests of the load (default 16)")
    p.add_argument("--tokens", type=int, default=216, help="max_new_tokens of every request (default 216: 2.3 s)")
    p.add_argument("--max-batch", type=int, default=4, help="batch slots per engine (default 4)")
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--probes", type=int, default=5, help="lone requests per repeat for time to first audio")
    p.add_argument("--python", default=sys.executable, help="the interpreter that runs the servers")
    p.add_argument("--out", type=Path, default=DEFAULT_OUT)
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    names = [n.strip() for n in args.servers.split(",") if n.strip()]
    unknown = sorted(set(names) - set(SERVERS))
    if unknown:
        raise SystemExit(f"unknown servers: {', '.join(unknown)} (known: {', '.join(SERVERS)})")
    with tempfile.TemporaryDirectory(prefix="bench-ray-") as tmp:
        work = Path(tmp)
        model, codec = work / "model", work / "codec"
        info = json.loads(run_in_repo(args.python, REPO_ROOT, ["-c", WRITE_CHECKPOINT, "dia-1.6b-0626", str(model)])
                          .strip().splitlines()[-1])
        run_in_repo(args.python, REPO_ROOT, ["-c", WRITE_CHECKPOINT, "dac", str(codec)])
        results = [measure(name, args, model, codec, work) for name in names]
    table = render(results, args)
    print(table)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps({"machine": machine_info(REPO_ROOT), "checkpoint": info,
                                    "args": {k: str(v) for k, v in vars(args).items()}, "results": results,
                                    "table": table}, indent=2) + "\n")
    log(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
