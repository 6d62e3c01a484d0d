"""Audio input and output: decoding, resampling, streaming encoders and speed change.

This layer depends only on numpy, PyAV and soxr; it never imports torch or model code.
"""

from __future__ import annotations

from .decode import DEFAULT_MAX_BYTES, DEFAULT_MAX_SECONDS, decode_audio
from .encode import (
    CONTENT_TYPES,
    PCM_SAMPLE_RATE,
    SUPPORTED_FORMATS,
    Encoder,
    encode_audio,
    normalize_format,
    open_encoder,
)
from .resample import StreamingResampler, resample
from .tempo import MAX_SPEED, MIN_SPEED, TempoStretcher, change_speed, check_speed

__all__ = [
    "CONTENT_TYPES",
    "DEFAULT_MAX_BYTES",
    "DEFAULT_MAX_SECONDS",
    "MAX_SPEED",
    "MIN_SPEED",
    "PCM_SAMPLE_RATE",
    "SUPPORTED_FORMATS",
    "Encoder",
    "StreamingResampler",
    "TempoStretcher",
    "change_speed",
    "check_speed",
    "decode_audio",
    "encode_audio",
    "normalize_format",
    "open_encoder",
    "resample",
]
