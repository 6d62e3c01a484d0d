#!/usr/bin/env python
"""Text that arrives while speech plays, over the WebSocket ``/v1/audio/speech/stream``, with Dia2 tiny.

A server runs in this process (``faster_dia.server.create_app`` under uvicorn on 127.0.0.1, the project's
uvicorn config). Each session is one ``websockets.sync.client`` connection that sends ``session.start``
(pcm), then a dialogue script in one of two ways, and receives pcm audio until the server closes:

* ``3 words/s``: a sender thread sends one ``text.append`` per word (a speaker tag goes with the word after
  it) on a fixed schedule, word i at t0 + i / rate, then ``text.end`` (as an LLM writing its answer would);
* ``all at once``: the whole script in one ``text.append``, then ``text.end``.

Measured per session, from t0 (the first text piece sent):

* time to first audio: t0 to the first binary message;
* gaps: a playback simulation. Audio is played at 1x from the moment its first byte arrives; a gap is each
  time the player would run out of received audio before the next message arrives (the wait, in seconds).
  Count, sum and max per session, and the sum of those that began while text was still being sent.

Several sessions per way (different seeds, the ways interleaved), p50/p95 across sessions. Prints a table
and writes JSON.

    .venv/bin/python bench/bench_textstream.py
    .venv/bin/python bench/bench_textstream.py --sessions 5 --words-per-second 3
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import sys
import tempfile
import threading
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch

# bench/ is on the path when this runs as a script.
from bench_engine import serving
from websockets.exceptions import ConnectionClosed
from websockets.sync.client import connect

import faster_dia
from faster_dia.server import create_app
from faster_dia.testing import write_tiny_checkpoint

REPO_ROOT = Path(__file__).resolve().parent.parent
DEFAULT_OUT = REPO_ROOT / "bench" / "results" / "textstream.json"

#: The server's ``pcm`` format: 16-bit mono at 24 kHz.
PCM_BYTES_PER_SECOND = 2 * 24000
WAIT = 120.0  # seconds any one receive may take before the session counts as failed

SCRIPT = (
    "[S1] Did you catch the game last night? [S2] Only the second half, sadly. I was stuck at work until "
    "nine. [S1] You missed a great comeback. They were down by ten and won it in the final minute. "
    "[S2] No way. Who scored? [S1] The new kid, from almost half court. The whole place went wild."
)
WAYS = ("words", "all at once")


def words_of(script: str) -> list[str]:
    """One piece per word, each with its trailing space; a speaker tag goes with the word after it."""
    pieces: list[str] = []
    tag = ""
    for token in script.split():
        if token in ("[S1]", "[S2]"):
            tag = token + " "
            continue
        pieces.append(f"{tag}{token} ")
        tag = ""
    return pieces


@dataclass
class Session:
    way: str
    seed: int
    text_pieces: int
    text_seconds: float = 0.0  # t0 to text.end sent
    ttfa_s: float | None = None
    audio_s: float = 0.0
    wall_s: float = 0.0  # t0 to the connection closed
    messages: int = 0  # binary messages
    gaps: list[float] = field(default_factory=list)
    gaps_while_text: list[float] = field(default_factory=list)
    done: bool = False
    error: str | None = None


def playback_gaps(arrivals: list[tuple[float, float]], text_end: float) -> tuple[list[float], list[float]]:
    """Gaps of a player that starts at the first arrival and plays at 1x: ``arrivals`` are (time received,
    seconds of audio). Returns all gaps and those that began before ``text_end``."""
    gaps: list[float] = []
    while_text: list[float] = []
    runs_out: float | None = None  # when the audio received so far has all been played
    for at, seconds in arrivals:
        if runs_out is None:
            runs_out = at + seconds
            continue
        if at > runs_out:
            gaps.append(at - runs_out)
            if runs_out < text_end:
                while_text.append(at - runs_out)
            runs_out = at
        runs_out += seconds
    return gaps, while_text


def run_session(url: str, way: str, seed: int, pieces: list[str], rate: float) -> Session:
    session = Session(way=way, seed=seed, text_pieces=len(pieces))
    arrivals: list[tuple[float, float]] = []
    with connect(f"{url}/v1/audio/speech/stream", open_timeout=30, max_size=None) as ws:
        ws.send(json.dumps({"type": "session.start", "response_format": "pcm", "seed": seed}))
        text_end = [float("inf")]
        sender_error: list[BaseException] = []
        t0 = time.perf_counter()

        def send() -> None:
            try:
                for i, piece in enumerate(pieces):
                    delay = t0 + i / rate - time.perf_counter()
                    if delay > 0:
                        time.sleep(delay)
                    ws.send(json.dumps({"type": "text.append", "text": piece}))
                ws.send(json.dumps({"type": "text.end"}))
                text_end[0] = time.perf_counter()
            except BaseException as exc:  # reported with the session
                sender_error.append(exc)

        sender = threading.Thread(target=send, daemon=True)
        sender.start()
        while True:
            try:
                message = ws.recv(timeout=WAIT)
            except ConnectionClosed:
                break
            except TimeoutError:
                session.error = f"nothing received for {WAIT:g} s"
                break
            now = time.perf_counter()
            if isinstance(message, bytes):
                if session.ttfa_s is None:
                    session.ttfa_s = now - t0
                seconds = len(message) / PCM_BYTES_PER_SECOND
                arrivals.append((now, seconds))
                session.audio_s += seconds
                session.messages += 1
            else:
                event = json.loads(message)
                if event["type"] == "done":
                    session.done = True
                elif event["type"] == "error":
                    session.error = json.dumps(event["error"])
        session.wall_s = time.perf_counter() - t0
        sender.join(WAIT)
    if sender_error:
        session.error = session.error or f"sender: {type(sender_error[0]).__name__}: {sender_error[0]}"
    session.text_seconds = text_end[0] - t0
    session.gaps, session.gaps_while_text = playback_gaps(arrivals, text_end[0])
    return session


def percentile(values: list[float], q: float) -> float | None:
    """Linear-interpolated percentile; ``q`` in [0, 100]."""
    if not values:
        return None
    ordered = sorted(values)
    k = (len(ordered) - 1) * q / 100
    lo, hi = int(k), min(int(k) + 1, len(ordered) - 1)
    return ordered[lo] + (ordered[hi] - ordered[lo]) * (k - lo)


def metrics(sessions: list[Session]) -> dict[str, list[float]]:
    good = [s for s in sessions if s.error is None and s.ttfa_s is not None]
    return {
        "time to first audio s": [s.ttfa_s for s in good],
        "gaps (count)": [float(len(s.gaps)) for s in good],
        "gap sum s": [sum(s.gaps) for s in good],
        "gap max s": [max(s.gaps, default=0.0) for s in good],
        "gap sum while text s": [sum(s.gaps_while_text) for s in good],
        "text sent over s": [s.text_seconds for s in good],
        "audio s": [s.audio_s for s in good],
        "session wall s": [s.wall_s for s in good],
    }


def _fmt(value: float | None) -> str:
    return "-" if value is None else f"{value:.2f}"


def render_table(header: list[str], rows: list[list[str]]) -> str:
    widths = [max(len(h), *(len(r[i]) for r in rows)) for i, h in enumerate(header)]
    lines = [" | ".join((h.ljust if i == 0 else h.rjust)(w) for i, (h, w) in enumerate(zip(header, widths,
                                                                                              strict=True))),
             "-|-".join("-" * w for w in widths)]
    lines += [" | ".join((c.ljust if i == 0 else c.rjust)(w) for i, (c, w) in enumerate(zip(r, widths, strict=True)))
              for r in rows]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--sessions", type=int, default=5, help="sessions per way (default 5)")
    p.add_argument("--words-per-second", type=float, default=3.0)
    p.add_argument("--chunk-frames", type=int, default=None,
                   help="server stream chunk in Mimi frames, 12.5 a second (default: the server's 0.37 s)")
    p.add_argument("--threads", type=int, default=2, help="torch CPU threads (default 2)")
    p.add_argument("--timeout-request", type=float, default=3600.0,
                   help="uvicorn_config's timeout_request (default 3600; its own 30 s also ends WebSocket "
                        "sessions at 30 s, which would cut the slower sessions here short)")
    p.add_argument("--out", type=Path, default=DEFAULT_OUT, help=f"JSON results (default {DEFAULT_OUT})")
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)

    def log(message: str) -> None:
        print(f"[{time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)

    pieces = {"words": words_of(SCRIPT), "all at once": [SCRIPT]}
    rate = {"words": args.words_per_second, "all at once": 1.0}
    sessions: dict[str, list[Session]] = {way: [] for way in WAYS}
    with tempfile.TemporaryDirectory(prefix="faster-dia-bench-") as tmp:
        tts = faster_dia.load(write_tiny_checkpoint("dia2", Path(tmp) / "model"),
                              codec=write_tiny_checkpoint("mimi", Path(tmp) / "codec"), device="cpu")
        app = create_app(tts, chunk_frames=args.chunk_frames)
        with serving(app, timeout_request=args.timeout_request) as http_url:
            url = http_url.replace("http://", "ws://")
            warm = run_session(url, "all at once", 0, pieces["all at once"], 1.0)  # untimed: first-call costs
            log(f"warm-up: ttfa {_fmt(warm.ttfa_s)} s, {warm.audio_s:.1f} s of audio, error {warm.error}")
            for i in range(args.sessions):
                for way in WAYS if i % 2 == 0 else tuple(reversed(WAYS)):
                    s = run_session(url, way, 1 + i, pieces[way], rate[way])
                    sessions[way].append(s)
                    log(f"{way} seed {s.seed}: ttfa {_fmt(s.ttfa_s)} s, {len(s.gaps)} gaps sum {sum(s.gaps):.2f} s "
                        f"max {max(s.gaps, default=0.0):.2f} s, audio {s.audio_s:.1f} s, text over "
                        f"{s.text_seconds:.1f} s, wall {s.wall_s:.1f} s" + (f", ERROR {s.error}" if s.error else ""))

    label = {"words": f"{args.words_per_second:g} words/s", "all at once": "all at once"}
    table = {way: metrics(sessions[way]) for way in WAYS}
    names = list(table["words"])
    print(f"\nWebSocket /v1/audio/speech/stream, Dia2 tiny, pcm, CPU {args.threads} torch threads; "
          f"{len(pieces['words'])} words; p50/p95 over {args.sessions} sessions per way")
    print(render_table(
        ["metric", *(f"{label[w]} p50" for w in WAYS), *(f"{label[w]} p95" for w in WAYS)],
        [[name, *(_fmt(percentile(table[w][name], 50)) for w in WAYS),
          *(_fmt(percentile(table[w][name], 95)) for w in WAYS)] for name in names],
    ))
    failed = [s for way in WAYS for s in sessions[way] if s.error or not s.done]
    if failed:
        print(f"{len(failed)} session(s) failed or ended without 'done': " +
              "; ".join(f"{s.way} seed {s.seed}: {s.error}" for s in failed[:3]))
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps({
        "machine": {"cpu": platform.processor() or platform.machine(), "torch": torch.__version__,
                    "torch_threads": args.threads, "faster_dia": faster_dia.__version__},
        "settings": {"script": SCRIPT, "pieces": pieces["words"], "words_per_second": args.words_per_second,
                     "sessions": args.sessions, "chunk_frames": args.chunk_frames,
                     "timeout_request": args.timeout_request,
                     "pcm_bytes_per_second": PCM_BYTES_PER_SECOND},
        "summary": {label[w]: {name: {"p50": percentile(v, 50), "p95": percentile(v, 95),
                                      "median": statistics.median(v) if v else None, "min": min(v, default=None)}
                               for name, v in table[w].items()} for w in WAYS},
        "sessions": {label[w]: [asdict(s) for s in sessions[w]] for w in WAYS},
    }, indent=2) + "\n")
    log(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
