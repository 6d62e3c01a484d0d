"""Streaming encoders for the OpenAI ``response_format`` values.

Each encoder takes mono float32 chunks and returns encoded bytes as soon as the codec and muxer
produce them, so an HTTP response can start before the audio is complete. The concatenation of every
``push()`` result and the ``close()`` result is one valid file (or raw stream, for ``pcm``).

========  ==============================  ===================  ==============
format    container / codec               sample rate          content type
========  ==============================  ===================  ==============
wav       RIFF WAVE, 16-bit PCM           input rate           audio/wav
pcm       none, s16le mono                24 kHz (resampled)   audio/pcm
mp3       MPEG-1/2 layer III, 128 kb/s    input rate [*]       audio/mpeg
opus      Ogg Opus, 64 kb/s, 20 ms pages  48 kHz (resampled)   audio/ogg
aac       ADTS AAC-LC, 128 kb/s           input rate [*]       audio/aac
flac      native FLAC, 16-bit             input rate           audio/flac
========  ==============================  ===================  ==============

[*] resampled to the nearest rate the codec supports when it does not support the input rate.

:func:`encode_audio` (whole files) also takes a bit rate, stereo output (the mono signal on both channels) and
an output sample rate.

Streamed output cannot go back to fix its header, so:

- WAV: the RIFF size and the ``data`` size are both 0xFFFFFFFF, what FFmpeg itself writes on
  unseekable output; FFmpeg/PyAV, libsndfile and browsers read such a file to its end.
- FLAC: STREAMINFO has an unknown (zero) sample count and MD5. FFmpeg/PyAV and libFLAC read it;
  libsndfile (the ``soundfile`` package) cannot.
- MP3 has no Xing/LAME header, so decoders keep the encoder delay and padding (up to about two
  frames of extra silence).

ADTS cannot signal the AAC encoder delay at all, so decoded AAC starts with about 1024 samples of
extra silence, streamed or not.

:func:`encode_audio` encodes a whole clip at once and writes the complete headers.
"""

from __future__ import annotations

import io
import struct
from abc import ABC, abstractmethod
from dataclasses import dataclass, field
from fractions import Fraction

import av
import numpy as np

from faster_dia.errors import InvalidInputError

from .resample import StreamingResampler, resample

#: The ``response_format`` values an encoder exists for, OpenAI's order.
SUPPORTED_FORMATS: tuple[str, ...] = ("mp3", "opus", "aac", "flac", "wav", "pcm")

#: HTTP content type of each format.
CONTENT_TYPES: dict[str, str] = {
    "mp3": "audio/mpeg",
    "opus": "audio/ogg",
    "aac": "audio/aac",
    "flac": "audio/flac",
    "wav": "audio/wav",
    "pcm": "audio/pcm",
}

#: Sample rate of ``pcm`` output, the rate OpenAI clients assume.
PCM_SAMPLE_RATE = 24000
#: Ogg Opus is always decoded at 48 kHz, so the encoder is fed 48 kHz.
OPUS_SAMPLE_RATE = 48000

MP3_BIT_RATE = 128_000
AAC_BIT_RATE = 128_000
OPUS_BIT_RATE = 64_000


def _to_int16(samples: np.ndarray) -> np.ndarray:
    return np.round(samples * 32767.0).astype("<i2")


def _prepare(pcm: np.ndarray) -> np.ndarray:
    """Mono float32 in [-1, 1]; NaN becomes silence so a bad chunk cannot corrupt integer output."""
    samples = np.asarray(pcm, dtype=np.float32)
    if samples.ndim != 1:
        raise ValueError(f"expected mono audio as a 1-D array, got shape {samples.shape}")
    samples = np.nan_to_num(samples, nan=0.0, posinf=1.0, neginf=-1.0)
    return np.clip(samples, -1.0, 1.0)


class Encoder(ABC):
    """A streaming audio encoder; create one with :func:`open_encoder`."""

    #: The ``response_format`` it produces.
    format: str
    #: HTTP content type of the output.
    content_type: str
    #: Sample rate of the encoded audio (may differ from the input rate).
    output_sample_rate: int

    def __init__(self, fmt: str, sample_rate: int, output_sample_rate: int):
        if sample_rate <= 0:
            raise ValueError(f"sample_rate must be positive, got {sample_rate}")
        self.format = fmt
        self.content_type = CONTENT_TYPES[fmt]
        self.sample_rate = sample_rate
        self.output_sample_rate = output_sample_rate
        self._closed = False

    @property
    def closed(self) -> bool:
        return self._closed

    def push(self, pcm: np.ndarray) -> bytes:
        """Encode the next chunk of mono float32 audio at the input rate; returns the bytes ready so far."""
        if self._closed:
            raise RuntimeError(f"push() called on a closed {self.format} encoder")
        return self._push(_prepare(pcm))

    def close(self) -> bytes:
        """Flush the codec and finish the file; returns the last bytes. Later calls return b""."""
        if self._closed:
            return b""
        self._closed = True
        return self._close()

    @abstractmethod
    def _push(self, samples: np.ndarray) -> bytes: ...

    @abstractmethod
    def _close(self) -> bytes: ...


class PcmEncoder(Encoder):
    """Raw 16-bit signed little-endian mono at 24 kHz, no header."""

    def __init__(self, sample_rate: int):
        super().__init__("pcm", sample_rate, PCM_SAMPLE_RATE)
        self._resampler = StreamingResampler(sample_rate, PCM_SAMPLE_RATE)

    def _push(self, samples: np.ndarray) -> bytes:
        return self._pack(self._resampler.push(samples))

    def _close(self) -> bytes:
        return self._pack(self._resampler.close())

    @staticmethod
    def _pack(samples: np.ndarray) -> bytes:
        # The resampler can overshoot full scale slightly near clipped input.
        return _to_int16(np.clip(samples, -1.0, 1.0)).tobytes()


class WavEncoder(Encoder):
    """16-bit PCM WAV at the input rate.

    Streamed, the 44-byte header comes first with both sizes 0xFFFFFFFF. With ``whole_file=True``
    everything comes out of ``close()`` with the real sizes.
    """

    _UNKNOWN_SIZE = 0xFFFFFFFF
    _HEADER_SIZE = 44

    def __init__(self, sample_rate: int, *, whole_file: bool = False):
        super().__init__("wav", sample_rate, sample_rate)
        self._whole_file = whole_file
        self._held = bytearray()
        self._header_sent = False

    def _header(self, data_size: int | None) -> bytes:
        channels = 1
        bytes_per_sample = 2
        if data_size is None or data_size + self._HEADER_SIZE - 8 > 0xFFFFFFFF:
            riff_size = data_size = self._UNKNOWN_SIZE
        else:
            riff_size = data_size + self._HEADER_SIZE - 8
        return b"".join(
            [
                b"RIFF",
                struct.pack("<I", riff_size),
                b"WAVE",
                b"fmt ",
                struct.pack(
                    "<IHHIIHH",
                    16,  # fmt chunk size
                    1,  # WAVE_FORMAT_PCM
                    channels,
                    self.sample_rate,
                    self.sample_rate * channels * bytes_per_sample,
                    channels * bytes_per_sample,
                    8 * bytes_per_sample,
                ),
                b"data",
                struct.pack("<I", data_size),
            ]
        )

    def _push(self, samples: np.ndarray) -> bytes:
        data = _to_int16(samples).tobytes()
        if self._whole_file:
            self._held += data
            return b""
        if self._header_sent:
            return data
        self._header_sent = True
        return self._header(None) + data

    def _close(self) -> bytes:
        if self._whole_file:
            return self._header(len(self._held)) + bytes(self._held)
        if self._header_sent:
            return b""
        self._header_sent = True
        return self._header(None)


class _Sink:
    """Write-only, unseekable byte sink for PyAV; muxers then write their streaming form of the file."""

    def __init__(self) -> None:
        self._buffer = bytearray()

    def write(self, data: bytes) -> int:
        self._buffer += data
        return len(data)

    def drain(self) -> bytes:
        data = bytes(self._buffer)
        self._buffer.clear()
        return data


@dataclass(frozen=True)
class _CodecSpec:
    container: str
    codec: str
    sample_format: str
    bit_rate: int | None = None
    #: Rate the codec must be fed regardless of the input rate.
    fixed_rate: int | None = None
    container_options: dict[str, str] = field(default_factory=dict)


_CODECS: dict[str, _CodecSpec] = {
    "mp3": _CodecSpec("mp3", "libmp3lame", "fltp", bit_rate=MP3_BIT_RATE),
    # page_duration is in microseconds: the Ogg muxer otherwise holds about a second of packets per
    # page, and nothing leaves until the first page is full.
    "opus": _CodecSpec(
        "ogg",
        "libopus",
        "flt",
        bit_rate=OPUS_BIT_RATE,
        fixed_rate=OPUS_SAMPLE_RATE,
        container_options={"page_duration": "20000"},
    ),
    "aac": _CodecSpec("adts", "aac", "fltp", bit_rate=AAC_BIT_RATE),
    "flac": _CodecSpec("flac", "flac", "s16"),
}


def _supported_rate(codec_name: str, rate: int) -> int:
    """``rate`` if the encoder accepts it, else the closest rate it does (preferring higher ones)."""
    rates = av.codec.Codec(codec_name, "w").audio_rates
    if not rates or rate in rates:
        return rate
    higher = [r for r in rates if r > rate]
    return min(higher) if higher else max(rates)


class PyAVEncoder(Encoder):
    """mp3, opus, aac and flac through PyAV.

    By default the muxer writes into an unseekable in-memory sink that ``push()`` drains. With
    ``whole_file=True`` it writes into a seekable buffer instead and everything comes out of
    ``close()``: the muxer can then go back and fill in what is only known at the end (the FLAC sample
    count and MD5, the MP3 Xing/LAME header with gapless trimming), which some readers need.
    """

    def __init__(self, fmt: str, sample_rate: int, *, whole_file: bool = False, bit_rate: int | None = None,
                 channels: int = 1, output_sample_rate: int | None = None):
        spec = _CODECS[fmt]
        output_rate = spec.fixed_rate or _supported_rate(spec.codec, output_sample_rate or sample_rate)
        super().__init__(fmt, sample_rate, output_rate)
        self._spec = spec
        self._layout = "stereo" if channels == 2 else "mono"
        self._resampler = StreamingResampler(sample_rate, output_rate)
        self._sink: _Sink | io.BytesIO = io.BytesIO() if whole_file else _Sink()
        self._container = av.open(self._sink, mode="w", format=spec.container, options=spec.container_options)
        self._stream = self._container.add_stream(spec.codec, rate=output_rate, layout=self._layout)
        self._stream.format = spec.sample_format
        bit_rate = spec.bit_rate if bit_rate is None else bit_rate
        if bit_rate is not None:
            self._stream.bit_rate = bit_rate
        self._stream.time_base = Fraction(1, output_rate)
        self._container.start_encoding()
        self._next_pts = 0

    def _encode(self, samples: np.ndarray) -> None:
        if samples.size == 0:
            return
        if self._spec.sample_format == "s16":
            data = _to_int16(np.clip(samples, -1.0, 1.0))
        else:
            data = np.asarray(samples, dtype=np.float32)
        if self._layout == "mono":
            array = np.ascontiguousarray(data[None, :])
        elif self._spec.sample_format.endswith("p"):  # planar: one row per channel
            array = np.ascontiguousarray(np.stack([data, data]))
        else:  # packed: one row, the channels interleaved
            array = np.repeat(data, 2)[None, :]
        frame = av.AudioFrame.from_ndarray(array, format=self._spec.sample_format, layout=self._layout)
        frame.sample_rate = self.output_sample_rate
        frame.time_base = Fraction(1, self.output_sample_rate)
        frame.pts = self._next_pts
        self._next_pts += samples.size
        # PyAV re-cuts the frame to the codec's frame size and keeps the remainder for the next call.
        for packet in self._stream.encode(frame):
            self._container.mux(packet)

    def _push(self, samples: np.ndarray) -> bytes:
        self._encode(self._resampler.push(samples))
        if isinstance(self._sink, io.BytesIO):
            return b""
        return self._sink.drain()

    def _close(self) -> bytes:
        try:
            self._encode(self._resampler.close())
            for packet in self._stream.encode(None):
                self._container.mux(packet)
        finally:
            self._container.close()
        if isinstance(self._sink, io.BytesIO):
            return self._sink.getvalue()
        return self._sink.drain()


def normalize_format(fmt: str) -> str:
    """Lower-case and check a ``response_format`` value; raises ``InvalidInputError`` if unsupported."""
    name = fmt.strip().lower() if isinstance(fmt, str) else fmt
    if name not in SUPPORTED_FORMATS:
        raise InvalidInputError(
            f"Unsupported response_format {fmt!r}; choose one of {', '.join(SUPPORTED_FORMATS)}.",
            param="response_format",
        )
    return name


def open_encoder(fmt: str, sample_rate: int) -> Encoder:
    """A streaming encoder for ``fmt`` (one of ``SUPPORTED_FORMATS``), fed mono audio at ``sample_rate``."""
    name = normalize_format(fmt)
    if name == "pcm":
        return PcmEncoder(sample_rate)
    if name == "wav":
        return WavEncoder(sample_rate)
    return PyAVEncoder(name, sample_rate)


def encode_audio(pcm: np.ndarray, sample_rate: int, fmt: str, *, bitrate: int | None = None, channels: int = 1,
                 output_sample_rate: int | None = None) -> bytes:
    """Encode a whole clip in one call: the bytes of a complete file (or raw stream for ``pcm``).

    Unlike the streamed form, FLAC gets its total sample count and MD5 and MP3 its Xing/LAME header
    (exact duration after decoding), and WAV its real sizes, since the header can be written last.

    The lossy formats (mp3, opus, aac) take ``bitrate`` in bits per second (default: the format's, see the
    table above); mp3, opus, aac and flac take ``channels`` 2 (the mono input on both channels); every format
    but pcm takes ``output_sample_rate`` (the input is resampled; mp3 and aac use the nearest rate the codec
    supports, opus always codes at 48 kHz). The defaults give exactly what they gave before.
    """
    name = normalize_format(fmt)
    if channels not in (1, 2):
        raise InvalidInputError(f"channels must be 1 or 2, got {channels!r}.", param="channels")
    if bitrate is not None and name in ("pcm", "wav", "flac"):
        raise InvalidInputError(f"{name} is lossless: it takes no bit rate.", param="bitrate")
    if channels != 1 and name in ("pcm", "wav"):
        raise InvalidInputError(f"{name} output is mono.", param="channels")
    if output_sample_rate is not None and name == "pcm":
        raise InvalidInputError(f"pcm output is always {PCM_SAMPLE_RATE} Hz.", param="output_sample_rate")
    encoder: Encoder
    if name == "pcm":
        encoder = PcmEncoder(sample_rate)
    elif name == "wav":
        if output_sample_rate is not None and output_sample_rate != sample_rate:
            pcm, sample_rate = resample(_prepare(pcm), sample_rate, output_sample_rate), output_sample_rate
        encoder = WavEncoder(sample_rate, whole_file=True)
    else:
        encoder = PyAVEncoder(name, sample_rate, whole_file=True, bit_rate=bitrate, channels=channels,
                              output_sample_rate=output_sample_rate)
    return encoder.push(pcm) + encoder.close()
