#!/usr/bin/env python
"""The HTTP speech server as its users see it, at 1, 4, 16 and 64 concurrent users.

The server runs as its own process, started from the command line (``python -m faster_dia.cli serve``) of
whichever checkout ``--repo`` names, on a tiny random checkpoint written by that checkout's
``faster_dia.testing``. This script imports nothing from faster_dia itself, so the same script measures any
version of the server. N client threads here, released together, each stream one PCM request with the
``openai`` client; while they run, the server process's thread count is sampled every 50 ms.

See bench/README.md ("bench_server.py") for what each column means.

    .venv/bin/python bench/bench_server.py
    .venv/bin/python bench/bench_server.py --repo /tmp/other-checkout --users 1,16 --repeats 3
"""

from __future__ import annotations

import argparse
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
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

# bench/ is on the path when this runs as a script.
from scripts import script_for

REPO_ROOT = Path(__file__).resolve().parent.parent
DEFAULT_OUT = REPO_ROOT / "bench" / "results" / "server.json"

#: The server's ``pcm`` format: 16-bit mono at 24 kHz.
PCM_BYTES_PER_SECOND = 2 * 24000

#: Per family: the checkpoint kinds of model and codec, and the default ``max_new_tokens`` of a request
#: (Dia-1.6B: decoder steps, 216 = 200 audio frames = 2.3 s; Dia2: frames, 12.5 = 1 s).
FAMILIES = {
    "dia1": {"model": "dia-1.6b-0626", "codec": "dac", "tokens": 216},
    "dia2": {"model": "dia2", "codec": "mimi", "tokens": 64},
}


#: Run by ``--python`` in ``--repo``: writes one tiny checkpoint and reports what it imported. Dia-1.6B
#: checkpoints get their channel-0 EOS logit fixed at 0 where the writer allows it, so that no request
#: stops early and every version produces the same amount of audio.
WRITE_CHECKPOINT = """
import inspect, json, sys
import faster_dia
from faster_dia.testing import write_tiny_checkpoint
kind, directory = sys.argv[1], sys.argv[2]
kwargs = {}
if kind.startswith("dia-1.6b") and "eos_logit_scale" in inspect.signature(write_tiny_checkpoint).parameters:
    kwargs["eos_logit_scale"] = 0.0
write_tiny_checkpoint(kind, directory, **kwargs)
import torch
print(json.dumps({"faster_dia_file": faster_dia.__file__, "faster_dia_version": faster_dia.__version__,
                  "torch": torch.__version__, "torch_threads": torch.get_num_threads(), **kwargs}))
"""


def log(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def percentile(values: list[float], q: float) -> float | None:
    """Linear interpolation between closest ranks; None for no values."""
    if not values:
        return None
    ordered = sorted(values)
    pos = (len(ordered) - 1) * q / 100
    lo = int(pos)
    hi = min(lo + 1, len(ordered) - 1)
    return ordered[lo] + (ordered[hi] - ordered[lo]) * (pos - lo)


# --------------------------------------------------------------------------------------------------------
# The server process
# --------------------------------------------------------------------------------------------------------


def server_env(repo: Path) -> dict[str, str]:
    """The environment of every process run in ``repo``: its faster_dia first on the path, no network."""
    env = os.environ.copy()
    env["PYTHONPATH"] = os.pathsep.join([str(repo), *filter(None, [env.get("PYTHONPATH")])])
    env["HF_HUB_OFFLINE"] = "1"
    env["HF_HUB_DISABLE_TELEMETRY"] = "1"
    env["PYTHONUNBUFFERED"] = "1"
    return env


def run_in_repo(python: str, repo: Path, args: list[str]) -> str:
    done = subprocess.run([python, *args], cwd=repo, env=server_env(repo), capture_output=True, text=True)
    if done.returncode != 0:
        raise RuntimeError(f"{python} {' '.join(args[:3])} failed:\n{done.stdout}{done.stderr}")
    return done.stdout


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def serve_command(python: str, repo: Path, model: Path, codec: Path, port: int, max_batch: int,
                  max_queue: int) -> list[str]:
    """The ``serve`` command line, with the optional flags this version's ``--help`` lists."""
    help_text = run_in_repo(python, repo, ["-m", "faster_dia.cli", "serve", "--help"])
    command = [python, "-m", "faster_dia.cli", "serve", "--model", str(model), "--codec", str(codec),
               "--device", "cpu", "--port", str(port), "--max-batch", str(max_batch)]
    if "--seed" in help_text:
        command += ["--seed", "1"]
    if "--max-queue" in help_text:
        command += ["--max-queue", str(max_queue)]
    return command


def wait_until_up(proc: subprocess.Popen, base_url: str, log_path: Path, timeout: float = 600) -> dict:
    deadline = time.monotonic() + timeout
    while True:
        if proc.poll() is not None:
            raise RuntimeError(f"the server exited with {proc.returncode}:\n{tail(log_path)}")
        try:
            with urllib.request.urlopen(f"{base_url}/health", timeout=5) as response:
                if response.status == 200:
                    return json.loads(response.read())
        except (urllib.error.URLError, OSError, ValueError):
            pass
        if time.monotonic() > deadline:
            raise RuntimeError(f"the server did not answer /health within {timeout:.0f} s:\n{tail(log_path)}")
        time.sleep(0.25)


def tail(path: Path, lines: int = 40) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return ""


def stop(proc: subprocess.Popen) -> None:
    if proc.poll() is None:
        proc.terminate()
        try:
            proc.wait(30)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(30)


def thread_count(pid: int) -> int | None:
    try:
        with open(f"/proc/{pid}/status") as status:
            for line in status:
                if line.startswith("Threads:"):
                    return int(line.split()[1])
    except (OSError, ValueError):
        pass
    return None


class ThreadSampler:
    """Reads the server's ``Threads:`` every ``interval`` seconds in a thread; ``stop`` returns the peak."""

    def __init__(self, pid: int, interval: float = 0.05):
        self.pid, self.interval = pid, interval
        self.peak: int | None = None
        self._done = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while True:
            count = thread_count(self.pid)
            if count is not None and (self.peak is None or count > self.peak):
                self.peak = count
            if self._done.wait(self.interval):
                return

    def start(self) -> ThreadSampler:
        self._thread.start()
        return self

    def stop(self) -> int | None:
        self._done.set()
        self._thread.join()
        count = thread_count(self.pid)
        if count is not None and (self.peak is None or count > self.peak):
            self.peak = count
        return self.peak


# --------------------------------------------------------------------------------------------------------
# The clients
# --------------------------------------------------------------------------------------------------------


def one_request(client: Any, i: int, tokens: int) -> dict[str, Any]:
    """User i streams one PCM request; time to first audio byte, total time, audio seconds or the error."""
    import openai

    result: dict[str, Any] = {"user": i, "status": None, "error": None}
    start = time.perf_counter()
    first: float | None = None
    size = 0
    try:
        with client.audio.speech.with_streaming_response.create(
            model="tts-1", voice="alloy", input=script_for(i), response_format="pcm",
            extra_body={"seed": i, "max_new_tokens": tokens},
        ) as response:
            result["status"] = response.status_code
            for piece in response.iter_bytes():
                if piece and first is None:
                    first = time.perf_counter()
                size += len(piece)
    except openai.APIStatusError as exc:
        result.update(status=exc.status_code, error=f"{exc.status_code}: {exc.message}"[:300])
    except Exception as exc:  # a failed user is reported, never hides the others' numbers
        result["error"] = f"{type(exc).__name__}: {exc}"[:300]
    end = time.perf_counter()
    result.update(ttfa_s=None if first is None else first - start, total_s=end - start,
                  audio_s=size / PCM_BYTES_PER_SECOND)
    return result


def run_level(base_url: str, pid: int, users: int, tokens: int) -> dict[str, Any]:
    """``users`` threads, released together, one request each; the level's figures."""
    import openai

    client = openai.OpenAI(base_url=f"{base_url}/v1", api_key="bench", max_retries=0, timeout=1800)
    barrier = threading.Barrier(users + 1)
    results: list[dict[str, Any]] = [{} for _ in range(users)]

    def user(i: int) -> None:
        barrier.wait()
        results[i] = one_request(client, i, tokens)

    threads = [threading.Thread(target=user, args=(i,), daemon=True) for i in range(users)]
    for t in threads:
        t.start()
    idle_threads = thread_count(pid)
    sampler = ThreadSampler(pid).start()
    barrier.wait()
    start = time.perf_counter()
    for t in threads:
        t.join()
    wall = time.perf_counter() - start
    peak = sampler.stop()
    client.close()

    def succeeded(r: dict[str, Any]) -> bool:
        return r.get("error") is None and r.get("ttfa_s") is not None

    ok = [r for r in results if succeeded(r)]
    ttfa = [r["ttfa_s"] for r in ok]
    speed = [r["audio_s"] / r["total_s"] for r in ok]
    audio = sum(r["audio_s"] for r in ok)
    errors = [r for r in results if not succeeded(r)]
    return {
        "users": users,
        "wall_s": wall,
        "ttfa_p50_s": percentile(ttfa, 50),
        "ttfa_p95_s": percentile(ttfa, 95),
        # p95 of a speed is the slow tail: the 5th percentile.
        "x_realtime_p50": percentile(speed, 50),
        "x_realtime_p95": percentile(speed, 5),
        "aggregate_x_realtime": audio / wall if wall > 0 else None,
        "audio_s": audio,
        "threads_before": idle_threads,
        "peak_threads": peak,
        "errors": len(errors),
        "error_statuses": sorted({str(r.get("status")) for r in errors}),
        "requests": results,
    }


# --------------------------------------------------------------------------------------------------------
# Output
# --------------------------------------------------------------------------------------------------------

#: (JSON key, table header, format) of the summary columns.
COLUMNS = [
    ("ttfa_p50_s", "ttfa p50 s", ".2f"),
    ("ttfa_p95_s", "ttfa p95 s", ".2f"),
    ("x_realtime_p50", "xRT p50", ".3f"),
    ("x_realtime_p95", "xRT p95", ".3f"),
    ("aggregate_x_realtime", "aggregate xRT", ".3f"),
    ("wall_s", "wall s", ".1f"),
    ("audio_s", "audio s", ".1f"),
    ("peak_threads", "threads", ".0f"),
    ("errors", "errors", ".0f"),
]


def summarize(runs: list[dict[str, Any]], how: str) -> dict[str, float | None]:
    pick = statistics.median if how == "median" else min
    out: dict[str, float | None] = {}
    for key, _, _ in COLUMNS:
        values = [r[key] for r in runs if r[key] is not None]
        out[key] = pick(values) if values else None
    return out


def render_table(levels: list[dict[str, Any]], how: str) -> str:
    header = ["users", *(h for _, h, _ in COLUMNS)]
    rows = [[str(level["users"]), *("-" if level[how][k] is None else format(level[how][k], f)
                                    for k, _, f in COLUMNS)] for level in levels]
    widths = [max(len(h), *(len(r[i]) for r in rows)) for i, h in enumerate(header)]
    lines = [" | ".join(h.rjust(w) for h, w in zip(header, widths, strict=True)),
             "-|-".join("-" * w for w in widths)]
    lines += [" | ".join(c.rjust(w) for c, w in zip(r, widths, strict=True)) for r in rows]
    return "\n".join(lines)


def machine_info(repo: Path) -> dict[str, Any]:
    info: dict[str, Any] = {"python": platform.python_version(), "cpu_count": os.cpu_count(), "cpu": None}
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                info["cpu"] = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    try:
        info["commit"] = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=repo, capture_output=True,
                                        text=True, check=True).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        info["commit"] = None
    return info


# --------------------------------------------------------------------------------------------------------
# Main
# --------------------------------------------------------------------------------------------------------


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--python", default=sys.executable, help="interpreter that runs the server (default: this one)")
    p.add_argument("--repo", type=Path, default=REPO_ROOT,
                   help="checkout whose faster_dia the server imports (default: the one holding this script)")
    p.add_argument("--family", choices=sorted(FAMILIES), default="dia1", help="dia1 (Dia-1.6B + DAC) or dia2")
    p.add_argument("--users", default="1,4,16,64", help="concurrent users per level (default 1,4,16,64)")
    p.add_argument("--tokens", type=int, default=None,
                   help="max_new_tokens of every request (default 216 for dia1, 64 for dia2)")
    p.add_argument("--max-batch", type=int, default=16, help="the server's --max-batch (default 16)")
    p.add_argument("--max-queue", type=int, default=256,
                   help="the server's --max-queue where it has the flag (default 256)")
    p.add_argument("--repeats", type=int, default=1, help="runs of each level (default 1)")
    p.add_argument("--out", type=Path, default=DEFAULT_OUT, help=f"JSON results (default {DEFAULT_OUT})")
    args = p.parse_args(argv)
    args.users = [int(u) for u in args.users.split(",") if u.strip()]
    if not args.users or min(args.users) < 1 or args.repeats < 1 or args.max_batch < 1:
        p.error("--users, --repeats and --max-batch must be positive")
    args.repo = args.repo.resolve()
    if args.tokens is None:
        args.tokens = FAMILIES[args.family]["tokens"]
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    family = FAMILIES[args.family]
    args.out.parent.mkdir(parents=True, exist_ok=True)
    server_log = args.out.with_suffix(".server.log")
    with tempfile.TemporaryDirectory(prefix="bench-server-") as tmp:
        model, codec = Path(tmp) / "model", Path(tmp) / "codec"
        log(f"writing tiny {family['model']} and {family['codec']} checkpoints with {args.python} in {args.repo}")
        imported = json.loads(run_in_repo(args.python, args.repo,
                                          ["-c", WRITE_CHECKPOINT, family["model"], str(model)]).splitlines()[-1])
        run_in_repo(args.python, args.repo, ["-c", WRITE_CHECKPOINT, family["codec"], str(codec)])
        log(f"the server imports {imported['faster_dia_file']} (faster_dia {imported['faster_dia_version']})")

        port = free_port()
        base_url = f"http://127.0.0.1:{port}"
        command = serve_command(args.python, args.repo, model, codec, port, args.max_batch, args.max_queue)
        log(f"starting: {' '.join(command)}  (log: {server_log})")
        with open(server_log, "w") as log_file:
            log_file.write(f"# faster_dia imported from {imported['faster_dia_file']}\n# {' '.join(command)}\n")
            log_file.flush()
            proc = subprocess.Popen(command, cwd=args.repo, env=server_env(args.repo), stdout=log_file,
                                    stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
            try:
                health = wait_until_up(proc, base_url, server_log)
                log(f"up: {health}; one untimed request warms it")
                warm = run_level(base_url, proc.pid, 1, args.tokens)
                if warm["errors"]:
                    raise RuntimeError(f"the warm-up request failed: {warm['requests'][0]['error']}\n"
                                       f"{tail(server_log)}")
                levels = []
                for users in args.users:
                    runs = []
                    for repeat in range(args.repeats):
                        run = run_level(base_url, proc.pid, users, args.tokens)
                        runs.append(run)
                        log(f"users {users} run {repeat + 1}/{args.repeats}: wall {run['wall_s']:.1f} s, "
                            f"aggregate {run['aggregate_x_realtime'] or 0:.3f}x real time, "
                            f"peak threads {run['peak_threads']}, errors {run['errors']} "
                            f"{' '.join(run['error_statuses'])}")
                    levels.append({"users": users, "median": summarize(runs, "median"),
                                   "min": summarize(runs, "min"), "runs": runs})
            finally:
                stop(proc)

    print(f"\nHTTP server ({args.family}, max-batch {args.max_batch}, {args.tokens} tokens per request, "
          f"{imported['faster_dia_file']}), " + ("one run per level" if args.repeats == 1
                                               else f"median of {args.repeats} runs"))
    print(render_table(levels, "median"))
    if args.repeats > 1:
        print(f"\nminimum of {args.repeats} runs")
        print(render_table(levels, "min"))
    result = {
        "machine": machine_info(args.repo),
        "settings": {"family": args.family, "users": args.users, "tokens": args.tokens,
                     "max_batch": args.max_batch, "max_queue": args.max_queue, "repeats": args.repeats,
                     "python": args.python, "repo": str(args.repo)},
        "server": {"command": command, "health": health, **imported},
        "levels": levels,
    }
    args.out.write_text(json.dumps(result, indent=1))
    log(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
