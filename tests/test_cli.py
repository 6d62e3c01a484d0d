"""The faster-dia command line, run as a user runs it."""

from __future__ import annotations

import os
import subprocess
import sys
import wave

import pytest


def run_cli(*args, stdin=None, cwd=None):
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    return subprocess.run([sys.executable, "-m", "faster_dia.cli", *args], input=stdin, capture_output=True,
                          text=True, env=env, cwd=cwd, timeout=300)


@pytest.fixture(scope="module")
def model_args(tiny_dirs):
    return ["--model", str(tiny_dirs["dia-1.6b-0626"]), "--codec", str(tiny_dirs["dac"]), "--device", "cpu"]


def test_speak_writes_a_wav_of_the_expected_length(model_args, tmp_path):
    out = tmp_path / "out.wav"
    result = run_cli("speak", "[S1] Hello there. [S2] Hi!", "-o", str(out), "--seed", "4",
                     "--max-new-tokens", "60", *model_args)
    assert result.returncode == 0, result.stderr
    assert "seed 4" in result.stdout
    assert "x real time" in result.stderr  # the progress bar
    with wave.open(str(out)) as w:
        assert w.getframerate() == 44100 and w.getnchannels() == 1
        frames = w.getnframes()
    assert frames % 512 == 0 and 0 < frames <= (60 - 16) * 512

    import faster_dia

    tts = faster_dia.load(model_args[1], codec=model_args[3], device="cpu")
    speech = tts.generate("[S1] Hello there. [S2] Hi!", seed=4, max_new_tokens=60)
    assert frames == len(speech.audio)


def test_script_from_stdin_and_file_and_prompt(model_args, tmp_path):
    out = tmp_path / "a.wav"
    result = run_cli("speak", "-", "-o", str(out), "--max-new-tokens", "40", "--no-progress", *model_args,
                     stdin="[S1] From standard input.\n")
    assert result.returncode == 0, result.stderr
    assert "seed " in result.stdout  # a drawn seed is printed
    script = tmp_path / "script.txt"
    script.write_text("[S1] From a file. (laughs)", encoding="utf-8")
    prompt = tmp_path / "voice.wav"
    with wave.open(str(prompt), "wb") as w:
        w.setnchannels(1)
        w.setsampwidth(2)
        w.setframerate(22050)
        w.writeframes(b"\x10\x00\x00\x10" * 5000)
    result = run_cli("speak", "--input", str(script), "-o", str(out), "--max-new-tokens", "40", "--temperature", "0",
                     "--prompt", str(prompt), "--prompt-text", "[S1] Voice.", "--no-progress", *model_args)
    assert result.returncode == 0, result.stderr


@pytest.mark.parametrize(
    "args, message",
    [
        (["speak", "[S3] Hello"], "Unknown tag [S3]"),
        (["speak", "   "], "empty"),
        (["speak"], "No script given"),
        (["speak", "[S1] hi", "--max-new-tokens", "99999"], "max_new_tokens"),
        (["speak", "[S1] hi", "--prompt", "missing.wav", "--prompt-text", "[S1] x"], "not found"),
        (["speak", "[S1] hi", "--prompt", "__PROMPT__"], "transcript"),
        (["speak", "[S1] hi", "--input", "missing.txt"], "Give the script either"),
    ],
)
def test_bad_input_is_one_line_and_a_failing_status(model_args, tmp_path, args, message):
    args = [str(tmp_path / "p.wav") if a == "__PROMPT__" else a for a in args]
    if str(tmp_path / "p.wav") in args:
        with wave.open(str(tmp_path / "p.wav"), "wb") as w:
            w.setnchannels(1)
            w.setsampwidth(2)
            w.setframerate(44100)
            w.writeframes(b"\x00\x01" * 4410)
    result = run_cli(*args, "-o", str(tmp_path / "x.wav"), "--no-progress", *model_args, cwd=tmp_path)
    assert result.returncode != 0
    assert message in result.stderr
    assert "Traceback" not in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1, result.stderr


def test_missing_model_offline_is_a_fast_clear_error(tmp_path):
    result = run_cli("speak", "[S1] hi", "-o", str(tmp_path / "x.wav"), "--model", "nari-labs/Dia-1.6B-0626",
                     "--device", "cpu", cwd=tmp_path)
    assert result.returncode != 0 and "Traceback" not in result.stderr
    assert "nari-labs/Dia-1.6B-0626" in result.stderr and "local directory" in result.stderr
