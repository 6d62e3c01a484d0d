"""The voice library: named voices kept on disk, each a short clip of speech with its transcript.

A voice is one directory under the library's root::

    <root>/<voice id>/voice.json          name, transcript, word times, created, duration, sample rate, source
    <root>/<voice id>/audio.<ext>         the clip exactly as it was given
    <root>/<voice id>/codes-<codec>.npy   the clip's codec codes, computed once per codec

Writes are atomic: a voice is assembled in a hidden temporary directory and renamed into place, and files are
replaced with ``os.replace``, so a crash mid-upload leaves no half voice (leftovers are removed at the next
start). Audio files dropped into the root (``alice.wav``, optionally with ``alice.txt`` holding its
transcript) become voices when a library opens the directory.

Voices are used through the models' ``voice=`` option (and ``voices={"S1": ..., "S2": ...}``): for Dia-1.6B a
voice is an audio prompt and its transcript, for Dia2 a speaker prefix and its words. OpenAI's built-in voice
names (alloy, echo, ...) need no stored voice: each picks a fixed seed, so every built-in name is one steady
voice of the model's own.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import re
import shutil
import tempfile
import threading
import time
import uuid
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from .errors import ConflictError, InvalidInputError, NotFoundError, PayloadTooLargeError

#: OpenAI's voice names. Clients send them by default; each selects a fixed seed.
BUILTIN_VOICES = ("alloy", "ash", "ballad", "cedar", "coral", "echo", "fable", "marin", "nova", "onyx", "sage",
                  "shimmer", "verse")
#: Bounds on a stored clip. 1 s is too little to carry a voice; 20 s leaves Dia-1.6B (35 s of context)
#: 15 s to speak in, and is well within Dia2's 60 s of prefix.
MIN_SECONDS = 1.0
MAX_SECONDS = 20.0
MAX_NAME_CHARS = 64
#: Largest upload accepted (OpenAI's limit for audio files).
MAX_UPLOAD_BYTES = 25 * 1024 * 1024
AUDIO_SUFFIXES = (".wav", ".mp3", ".flac", ".ogg", ".opus", ".m4a", ".aac", ".webm")
_CONTAINER_SUFFIXES = {"wav": ".wav", "mp3": ".mp3", "flac": ".flac", "ogg": ".ogg", "mov,mp4,m4a,3gp,3g2,mj2": ".m4a",
                       "matroska,webm": ".webm", "aac": ".aac"}
METADATA_FILE = "voice.json"
_TEMPORARY_PREFIX = ".partial-"


def builtin_seed(name: str) -> int:
    """The seed a built-in voice name stands for (stable across runs and machines)."""
    return int.from_bytes(hashlib.sha256(f"faster-dia voice {name}".encode()).digest()[:4], "little")


def default_voices_dir() -> Path:
    """``$FASTER_DIA_VOICES_DIR``, else ``$XDG_DATA_HOME/faster-dia/voices`` (``~/.local/share/...``)."""
    if os.environ.get("FASTER_DIA_VOICES_DIR"):
        return Path(os.environ["FASTER_DIA_VOICES_DIR"]).expanduser()
    data = os.environ.get("XDG_DATA_HOME") or os.path.join("~", ".local", "share")
    return Path(data).expanduser() / "faster-dia" / "voices"


def voice_id(name: str) -> str:
    """The id (and directory name) of a voice name: lower case, runs of other characters as one hyphen."""
    return re.sub(r"[^a-z0-9_]+", "-", name.strip().lower()).strip("-")


def check_name(name: Any, param: str = "name") -> str:
    if not isinstance(name, str) or not name.strip():
        raise InvalidInputError("A voice needs a name.", param=param)
    name = name.strip()
    if len(name) > MAX_NAME_CHARS:
        raise InvalidInputError(f"The voice name is {len(name)} characters long; at most {MAX_NAME_CHARS}.", param=param)
    if any(ch in name for ch in "/\\\0") or name.startswith(".") or any(ord(ch) < 32 for ch in name):
        raise InvalidInputError(
            "A voice name cannot contain path characters (/ \\), control characters or start with a dot.",
            param=param)
    if not voice_id(name):
        raise InvalidInputError("A voice name needs at least one letter or digit.", param=param)
    if voice_id(name) in BUILTIN_VOICES:
        raise ConflictError(f"'{name}' is one of the built-in voice names; pick another name.", param=param,
                            code="voice_exists")
    return name


@dataclass
class Voice:
    """A stored voice (read its clip with :meth:`load_audio`)."""

    id: str
    name: str
    transcript: str | None
    created: float
    duration: float
    sample_rate: int
    source: str
    audio_file: str
    words: list[tuple[str, float, float]] | None = None  # (word, start s, end s), when transcribed
    dropped_file: str | None = None  # the file in the library's root it was imported from
    directory: Path = field(default=Path(), repr=False, compare=False)

    @property
    def audio_path(self) -> Path:
        return self.directory / self.audio_file

    def load_audio(self, sample_rate: int | None = None) -> tuple[np.ndarray, int]:
        """The clip as float32 mono, at its own rate or ``sample_rate``."""
        from .audio import decode_audio

        return decode_audio(self.audio_path, sample_rate=sample_rate, max_seconds=None, param="voice")

    def codes(self, codec: Any) -> Any:
        """The clip's codec codes ``[frames, codebooks]`` for ``codec``: encoded once, then read from disk."""
        import torch

        key = hashlib.sha256(f"{codec.name}|{codec.sample_rate}|{codec.num_codebooks}".encode()).hexdigest()[:16]
        path = self.directory / f"codes-{key}.npy"
        if path.is_file():
            with contextlib.suppress(OSError, ValueError):
                return torch.from_numpy(np.load(path).astype(np.int64))
        pcm, _ = self.load_audio(codec.sample_rate)
        codes = codec.encode(pcm)
        staging = path.with_name(f".{path.name}.{uuid.uuid4().hex}.npy")
        try:
            np.save(staging, codes.numpy().astype(np.int32))
            os.replace(staging, path)
        except OSError:  # a read-only library still works, it just encodes every time
            with contextlib.suppress(OSError):
                staging.unlink()
        return codes

    def keep_transcript(self, transcript: str, words: list[tuple[str, float, float]] | None) -> Voice:
        """Store a transcript made later (the first use of a voice kept without one)."""
        self.transcript, self.words = transcript, words
        _write_json(self.directory / METADATA_FILE, self._metadata())
        return self

    def describe(self) -> dict[str, Any]:
        """What the HTTP API shows of a voice."""
        return {"id": self.id, "name": self.name, "created": int(self.created), "duration": round(self.duration, 3),
                "sample_rate": self.sample_rate, "source": self.source, "transcript": self.transcript}

    def _metadata(self) -> dict[str, Any]:
        data = asdict(self)
        data.pop("directory")
        return data


Transcriber = Callable[[np.ndarray, int], Any]  # (pcm, sample_rate) -> faster_dia.asr.Transcript


class VoiceLibrary:
    """Voices kept in ``path`` (default :func:`default_voices_dir`). ``transcriber`` transcribes clips
    added without a transcript (a ``faster_dia.asr`` recognizer's ``transcribe``); without one such voices
    are stored untranscribed and transcribed when first used. Safe to use from several threads."""

    def __init__(self, path: str | os.PathLike | None = None, *, transcriber: Transcriber | None = None):
        self.path = Path(path) if path is not None else default_voices_dir()
        self.transcriber = transcriber
        self._lock = threading.RLock()
        try:
            self.path.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise InvalidInputError(f"Cannot use {self.path} as the voice library: {exc.strerror or exc}.",
                                    param="voices_dir") from exc
        for leftover in self.path.glob(_TEMPORARY_PREFIX + "*"):
            shutil.rmtree(leftover, ignore_errors=True)
        self.import_dropped_files()

    # ------------------------------------------------------------------ reading

    def list(self) -> list[Voice]:
        voices = []
        for directory in sorted(self.path.iterdir()):
            if directory.is_dir() and not directory.name.startswith(".") and (directory / METADATA_FILE).is_file():
                voice = self._read(directory)
                if voice is not None:
                    voices.append(voice)
        return sorted(voices, key=lambda v: (v.created, v.id))

    def find(self, name_or_id: str) -> Voice | None:
        if not isinstance(name_or_id, str) or not voice_id(name_or_id):
            return None
        directory = self.path / voice_id(name_or_id)
        return self._read(directory) if (directory / METADATA_FILE).is_file() else None

    def get(self, name_or_id: str, *, param: str = "voice") -> Voice:
        voice = self.find(name_or_id)
        if voice is None:
            known = ", ".join(v.name for v in self.list()) or "none stored yet"
            raise NotFoundError(f"There is no voice '{name_or_id}' (stored voices: {known}; built-in names: "
                                f"{', '.join(BUILTIN_VOICES)}).", param=param, code="voice_not_found")
        return voice

    def __contains__(self, name_or_id: object) -> bool:
        return isinstance(name_or_id, str) and self.find(name_or_id) is not None

    def _read(self, directory: Path) -> Voice | None:
        try:
            data = json.loads((directory / METADATA_FILE).read_text(encoding="utf-8"))
            words = data.get("words")
            data["words"] = [tuple(w) for w in words] if words else None
            return Voice(**data, directory=directory)
        except (OSError, ValueError, TypeError):
            return None  # a damaged entry is skipped rather than breaking every listing

    # ------------------------------------------------------------------ writing

    def add(self, name: str, audio: Any, *, transcript: str | None = None, source: str = "api",
            sample_rate: int | None = None, suffix: str | None = None, param: str = "audio",
            transcriber: Transcriber | None = None) -> Voice:
        """Store a voice: ``audio`` is a path, encoded file bytes, or a float array with ``sample_rate``.
        Without ``transcript`` the clip is transcribed (``transcriber``, else the library's) when possible.
        Raises ConflictError for a name in use, InvalidInputError for unusable audio."""
        name = check_name(name)
        data, suffix = self._clip_bytes(audio, sample_rate, suffix, param)
        pcm, rate = self._decode(data, param)
        if transcript is not None:
            if not isinstance(transcript, str):
                raise InvalidInputError("A transcript must be text.", param="transcript")
            transcript = transcript.strip() or None
        words = None
        transcriber = transcriber or self.transcriber
        if transcript is None and transcriber is not None:
            transcript, words = _transcribe(transcriber, pcm, rate)
        with self._lock:
            if self.find(name) is not None:
                raise ConflictError(f"A voice called '{self.find(name).name}' exists already; remove it first or "
                                    "pick another name.", param="name", code="voice_exists")
            voice = Voice(id=voice_id(name), name=name, transcript=transcript, created=time.time(),
                          duration=len(pcm) / rate, sample_rate=rate, source=source, audio_file="audio" + suffix,
                          words=words)
            staging = Path(tempfile.mkdtemp(prefix=_TEMPORARY_PREFIX, dir=self.path))
            try:
                (staging / voice.audio_file).write_bytes(data)
                _write_json(staging / METADATA_FILE, voice._metadata())
                os.rename(staging, self.path / voice.id)
            except BaseException:
                shutil.rmtree(staging, ignore_errors=True)
                raise
        voice.directory = self.path / voice.id
        return voice

    def remove(self, name_or_id: str) -> Voice:
        with self._lock:
            voice = self.get(name_or_id)
            # Renamed away first, so that the voice disappears at once even if deleting its files takes a while.
            doomed = self.path / f"{_TEMPORARY_PREFIX}{uuid.uuid4().hex}"
            os.rename(voice.directory, doomed)
            shutil.rmtree(doomed, ignore_errors=True)
            if voice.dropped_file:
                for dropped in (self.path / voice.dropped_file, (self.path / voice.dropped_file).with_suffix(".txt")):
                    with contextlib.suppress(FileNotFoundError):
                        dropped.unlink()
        return voice

    def import_dropped_files(self) -> list[Voice]:
        """Audio files put into the root directory by hand become voices (their name is the file's stem; a
        ``.txt`` file beside one holds its transcript). A file that cannot be used is skipped."""
        imported = []
        for file in sorted(self.path.iterdir()):
            if not (file.is_file() and file.suffix.lower() in AUDIO_SUFFIXES) or voice_id(file.stem) in (
                    v.id for v in self.list()):
                continue
            text = file.with_suffix(".txt")
            transcript = text.read_text(encoding="utf-8", errors="replace") if text.is_file() else None
            try:
                voice = self.add(file.stem, file, transcript=transcript, source="file")
            except (InvalidInputError, ConflictError):
                continue
            voice.dropped_file = file.name
            with self._lock:
                _write_json(voice.directory / METADATA_FILE, voice._metadata())
            imported.append(voice)
        return imported

    # ------------------------------------------------------------------ clips

    @staticmethod
    def _clip_bytes(audio: Any, sample_rate: int | None, suffix: str | None, param: str) -> tuple[bytes, str]:
        if isinstance(audio, (str, os.PathLike)):
            path = Path(audio)
            if not path.is_file():
                raise InvalidInputError(f"Audio file not found: {path}.", param=param)
            if path.stat().st_size > MAX_UPLOAD_BYTES:
                raise PayloadTooLargeError(f"The audio file is over the {MAX_UPLOAD_BYTES >> 20} MiB limit.",
                                           param=param)
            data = path.read_bytes()
            return data, path.suffix.lower() if path.suffix.lower() in AUDIO_SUFFIXES else container_suffix(data) or ".audio"
        if isinstance(audio, (bytes, bytearray, memoryview)):
            if len(audio) > MAX_UPLOAD_BYTES:
                raise PayloadTooLargeError(f"The audio file is over the {MAX_UPLOAD_BYTES >> 20} MiB limit.",
                                           param=param)
            return bytes(audio), suffix or container_suffix(bytes(audio)) or ".audio"
        array = np.asarray(audio)
        if not np.issubdtype(array.dtype, np.floating) or array.ndim != 1:
            raise InvalidInputError("Voice audio must be a file, its bytes, or float mono samples.", param=param)
        if sample_rate is None:
            raise InvalidInputError("Voice audio given as samples needs its sample_rate.", param="sample_rate")
        from .audio import encode_audio

        return encode_audio(array.astype(np.float32), int(sample_rate), "wav"), ".wav"

    @staticmethod
    def _decode(data: bytes, param: str) -> tuple[np.ndarray, int]:
        from .audio import decode_audio

        if not data:
            raise InvalidInputError("The audio file is empty.", param=param)
        pcm, rate = decode_audio(data, max_seconds=MAX_SECONDS + 0.5, max_bytes=MAX_UPLOAD_BYTES, param=param)
        seconds = len(pcm) / rate
        if seconds < MIN_SECONDS:
            raise InvalidInputError(f"The clip is {seconds:.2f} s long; a voice needs at least {MIN_SECONDS:g} s of "
                                    "speech.", param=param)
        if seconds > MAX_SECONDS:
            raise InvalidInputError(f"The clip is {seconds:.1f} s long; a voice may be at most {MAX_SECONDS:g} s "
                                    "(Dia-1.6B needs the rest of its 35 s context to speak).", param=param)
        return pcm, rate


def container_suffix(data: bytes) -> str:
    """The usual file suffix of encoded audio, from its container (``""`` when unknown)."""
    import io

    import av

    try:
        with av.open(io.BytesIO(data)) as container:
            return _CONTAINER_SUFFIXES.get(container.format.name, "")
    except (av.FFmpegError, OSError, ValueError):
        return ""


def _transcribe(transcriber: Transcriber, pcm: np.ndarray, rate: int) -> tuple[str, list[tuple[str, float, float]]]:
    result = transcriber(pcm, rate)
    words = [(w.word.strip(), float(w.start), float(w.end)) for w in result.words if w.word.strip()]
    return result.text.strip(), words


def _write_json(path: Path, data: dict[str, Any]) -> None:
    staging = path.with_name(f".{path.name}.{uuid.uuid4().hex}")
    staging.write_text(json.dumps(data, indent=2, ensure_ascii=False), encoding="utf-8")
    os.replace(staging, path)
