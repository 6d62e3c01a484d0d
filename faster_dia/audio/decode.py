"""Decoding of uploaded or referenced audio (voice prompts, transcription input) with PyAV."""

from __future__ import annotations

import io
import os
from typing import BinaryIO

import av
import numpy as np

from faster_dia.errors import InvalidInputError

from .resample import resample

#: Default upper bound on the encoded size of an audio source.
DEFAULT_MAX_BYTES = 50 * 1024 * 1024
#: Default upper bound on the decoded duration of an audio source, in seconds.
DEFAULT_MAX_SECONDS = 600.0

AudioSource = str | os.PathLike | bytes | bytearray | memoryview | BinaryIO


def decode_audio(
    source: AudioSource,
    *,
    sample_rate: int | None = None,
    max_seconds: float | None = DEFAULT_MAX_SECONDS,
    max_bytes: int | None = DEFAULT_MAX_BYTES,
    param: str | None = "file",
) -> tuple[np.ndarray, int]:
    """Decode an audio file to mono float32.

    ``source`` is a path, the file's bytes, or a binary file-like object (read from its current
    position). Any format FFmpeg reads is accepted: wav, mp3, flac, ogg (vorbis or opus), m4a/aac,
    webm and more. Channels are averaged. With ``sample_rate`` the audio is resampled to that rate,
    otherwise it keeps its own.

    Returns ``(samples, rate)``. Raises ``InvalidInputError`` (with ``param``, the request field the
    audio came from) when the source is missing, too large, too long, empty, or not decodable audio.
    ``max_seconds`` and ``max_bytes`` may be None to lift the limit; decoding stops as soon as the
    duration limit is passed, so an over-long file costs no more than the limit itself.
    """
    if sample_rate is not None and sample_rate <= 0:
        raise ValueError(f"sample_rate must be positive, got {sample_rate}")

    data = _open_source(source, max_bytes=max_bytes, param=param)
    samples, native_rate = _decode_mono(data, max_seconds=max_seconds, param=param)

    if samples.size == 0:
        raise InvalidInputError("The audio contains no samples; upload a non-empty recording.", param=param)
    if sample_rate is not None and sample_rate != native_rate:
        return resample(samples, native_rate, sample_rate), sample_rate
    return samples, native_rate


def _size_limit_error(max_bytes: int, param: str | None) -> InvalidInputError:
    return InvalidInputError(
        f"The audio file is larger than the limit of {_format_bytes(max_bytes)}; upload a smaller file.",
        param=param,
    )


def _format_bytes(count: int) -> str:
    if count >= 1024 * 1024 and count % (1024 * 1024) == 0:
        return f"{count // (1024 * 1024)} MiB"
    return f"{count} bytes"


def _open_source(source: AudioSource, *, max_bytes: int | None, param: str | None) -> str | io.BytesIO:
    """Return something ``av.open`` can read: a checked path, or the bytes in a seekable buffer."""
    if isinstance(source, (str, os.PathLike)):
        path = os.fspath(source)
        if not os.path.exists(path):
            raise InvalidInputError(f"Audio file not found: {path}.", param=param)
        if not os.path.isfile(path):
            raise InvalidInputError(f"Audio path is not a file: {path}.", param=param)
        if max_bytes is not None and os.path.getsize(path) > max_bytes:
            raise _size_limit_error(max_bytes, param)
        return path

    if isinstance(source, (bytes, bytearray, memoryview)):
        data = bytes(source)
    elif hasattr(source, "read"):
        # Read one byte past the limit so an over-size stream is detected without reading all of it.
        data = source.read() if max_bytes is None else source.read(max_bytes + 1)
        if not isinstance(data, (bytes, bytearray)):
            raise TypeError("decode_audio() needs a file object opened in binary mode")
        data = bytes(data)
    else:
        raise TypeError(f"decode_audio() cannot read audio from {type(source).__name__}")

    if max_bytes is not None and len(data) > max_bytes:
        raise _size_limit_error(max_bytes, param)
    if not data:
        raise InvalidInputError("The audio file is empty; upload a non-empty recording.", param=param)
    # A seekable buffer: MP4/M4A keeps its index at the end of the file.
    return io.BytesIO(data)


def _decode_error(exc: BaseException, param: str | None) -> InvalidInputError:
    reason = getattr(exc, "strerror", None) or str(exc) or type(exc).__name__
    reason = str(reason).rstrip(".")
    return InvalidInputError(f"Could not decode audio: {reason[:1].lower()}{reason[1:]}.", param=param)


def _decode_mono(
    data: str | io.BytesIO, *, max_seconds: float | None, param: str | None
) -> tuple[np.ndarray, int]:
    try:
        container = av.open(data, mode="r")
    except (av.FFmpegError, OSError, ValueError, UnicodeDecodeError) as exc:
        raise _decode_error(exc, param) from None

    with container:
        if not container.streams.audio:
            raise InvalidInputError("The file has no audio stream; upload an audio recording.", param=param)
        stream = container.streams.audio[0]
        # Converts whatever sample format the decoder produces (s16, s32p, dbl, ...) to planar float,
        # keeping the layout and rate.
        converter = av.AudioResampler(format="fltp")

        chunks: list[np.ndarray] = []
        total = 0
        rate = 0
        limit: int | None = None
        try:
            for frame in container.decode(stream):
                if rate == 0:
                    rate = frame.sample_rate
                    if max_seconds is not None:
                        limit = int(max_seconds * rate)
                for converted in converter.resample(frame):
                    mono = converted.to_ndarray().mean(axis=0, dtype=np.float32)
                    chunks.append(mono)
                    total += mono.size
                if limit is not None and total > limit:
                    raise InvalidInputError(
                        f"The audio is longer than the {max_seconds:g}-second limit; upload a shorter clip.",
                        param=param,
                    )
            for converted in converter.resample(None):
                chunks.append(converted.to_ndarray().mean(axis=0, dtype=np.float32))
        except InvalidInputError:
            raise
        except (av.FFmpegError, ValueError) as exc:
            raise _decode_error(exc, param) from None

    if rate == 0:
        rate = stream.codec_context.sample_rate or 0
    if not chunks:
        return np.zeros(0, dtype=np.float32), rate
    return np.concatenate(chunks).astype(np.float32, copy=False), rate
