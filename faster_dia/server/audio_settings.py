"""Output formats of the hosted APIs (``/v1/tasks``, ``/v1/dia``) and the sample rates, channels and bit rates
each one takes: :data:`BITRATE_TABLE` is the one place they are written down (docs/server.md shows it, as
:func:`bitrate_table_markdown` renders it).

Where the limits come from:

- MP3 (LAME): the MPEG version that a sample rate implies fixes the bit rates: MPEG-1 (32, 44.1, 48 kHz)
  32–320 kb/s, MPEG-2 (16, 22.05, 24 kHz) 8–160, MPEG-2.5 (8, 11.025, 12 kHz) 8–64, in mono and stereo. LAME
  codes at the nearest standard bit rate.
- Ogg Vorbis: per channel, 24–128 kb/s at 44.1/48 kHz, 20–96 at 32 kHz, 16–80 at 22.05/24 kHz, 12–48 at
  16 kHz, 8–32 at 8–12 kHz; stereo takes twice that (so mono at 24 kHz 16–80, stereo at 48 kHz 48–256).
  Vorbis is variable bit rate: the bit rate picks the libvorbis quality whose nominal rate is nearest, within
  the qualities libvorbis has (its lowest is about 24 kb/s a channel at 16–24 kHz, so the lowest rates of the
  table give that). PyAV's FFmpeg has no libvorbis and FFmpeg's own Vorbis encoder is experimental, stereo only
  and ignores the bit rate, so Vorbis is written by libvorbis inside libsndfile (the ``soundfile`` package).
- Opus (libopus): always 48 kHz in Ogg; 6–256 kb/s a channel, at most 510 in stereo.
- AAC (FFmpeg's AAC-LC in ADTS): a frame of 1024 samples holds at most 6144 bits a channel, so at most
  6 bits a sample: 48 kb/s a channel at 8–12 kHz, 96 at 16 kHz, 132 at 22.05/24 kHz, 192 at 32 kHz, capped at
  256 at 44.1/48 kHz; at least 8 kb/s a channel.

WAV, FLAC and PCM are lossless at the model's rate, mono: they take no audio settings.
"""

from __future__ import annotations

import io
import struct
from dataclasses import dataclass
from typing import Any

import numpy as np

from ..audio import CONTENT_TYPES, PCM_SAMPLE_RATE, encode_audio, resample
from ..errors import InvalidInputError

#: format, sample rates (Hz), mono kb/s (low, high), stereo kb/s (low, high).
BITRATE_TABLE: tuple[tuple[str, tuple[int, ...], tuple[int, int], tuple[int, int]], ...] = (
    ("MP3", (32000, 44100, 48000), (32, 320), (32, 320)),
    ("MP3", (16000, 22050, 24000), (8, 160), (8, 160)),
    ("MP3", (8000, 11025, 12000), (8, 64), (8, 64)),
    ("OGG", (44100, 48000), (24, 128), (48, 256)),
    ("OGG", (32000,), (20, 96), (40, 192)),
    ("OGG", (22050, 24000), (16, 80), (32, 160)),
    ("OGG", (16000,), (12, 48), (24, 96)),
    ("OGG", (8000, 11025, 12000), (8, 32), (16, 64)),
    ("OPUS", (48000,), (6, 256), (12, 510)),
    ("AAC", (44100, 48000), (8, 256), (16, 512)),
    ("AAC", (32000,), (8, 192), (16, 384)),
    ("AAC", (22050, 24000), (8, 132), (16, 264)),
    ("AAC", (16000,), (8, 96), (16, 192)),
    ("AAC", (8000, 11025, 12000), (8, 48), (16, 96)),
)
#: Bit rate of a lossy format when none is asked for (within the table's range for the rate and channels).
DEFAULT_KBPS = 128
#: Channels of a lossy format when none are asked for.
DEFAULT_CHANNELS = 2

#: The names a client may send (any case) → the encoder's format.
FORMAT_NAMES = {"mp3": "mp3", "wav": "wav", "flac": "flac", "ogg": "vorbis", "vorbis": "vorbis", "opus": "opus",
                "aac": "aac", "pcm": "pcm"}
#: The table's name of each lossy encoder format.
_TABLE_NAMES = {"mp3": "MP3", "vorbis": "OGG", "opus": "OPUS", "aac": "AAC"}
EXTENSIONS = {"mp3": ".mp3", "wav": ".wav", "flac": ".flac", "vorbis": ".ogg", "opus": ".opus", "aac": ".aac",
              "pcm": ".pcm"}


@dataclass(frozen=True)
class OutputSpec:
    """How a result is encoded."""

    name: str  # as the client knows it: MP3, WAV, FLAC, OGG, OPUS, AAC, PCM
    format: str  # the encoder's: mp3, wav, flac, vorbis, opus, aac, pcm
    channels: int = 1
    sample_rate: int | None = None  # None: the model's
    kbps: int | None = None  # lossy formats only

    @property
    def content_type(self) -> str:
        if self.format == "vorbis":
            return "audio/ogg"
        if self.format == "pcm":
            return f"{CONTENT_TYPES['pcm']};rate={PCM_SAMPLE_RATE}"
        return CONTENT_TYPES[self.format]

    @property
    def extension(self) -> str:
        return EXTENSIONS[self.format]


def rates_of(table_name: str) -> tuple[int, ...]:
    return tuple(sorted(r for name, rates, _, _ in BITRATE_TABLE if name == table_name for r in rates))


def bitrate_range(table_name: str, sample_rate: int, channels: int) -> tuple[int, int] | None:
    """(low, high) kb/s of a format at a sample rate and channel count; None if the rate is not one it takes."""
    for name, rates, mono, stereo in BITRATE_TABLE:
        if name == table_name and sample_rate in rates:
            return mono if channels == 1 else stereo
    return None


def output_spec(output_format: Any, settings: Any, model_rate: int, *, format_param: str = "outputFormat",
                settings_param: str = "audioSettings") -> OutputSpec:
    """The output a request asks for, every value checked against :data:`BITRATE_TABLE` (InvalidInputError
    naming the field and, for a bit rate, the allowed range)."""
    if not isinstance(output_format, str) or output_format.strip().lower() not in FORMAT_NAMES:
        names = ", ".join(n.upper() for n in FORMAT_NAMES if n != "vorbis")
        raise InvalidInputError(f"{format_param} must be one of {names}; got {output_format!r}.", param=format_param)
    fmt = FORMAT_NAMES[output_format.strip().lower()]
    table_name = _TABLE_NAMES.get(fmt)
    name = table_name or fmt.upper()
    if table_name is None:
        if settings is not None:
            raise InvalidInputError(
                f"{settings_param} applies to the lossy formats (MP3, OGG, OPUS, AAC) only; {name} is lossless, "
                "mono, at the model's sample rate.", param=settings_param)
        return OutputSpec(name, fmt)
    if settings is None:
        settings = {}
    if not isinstance(settings, dict):
        raise InvalidInputError(f"{settings_param} must be an object.", param=settings_param)
    channels = settings.get("channels", DEFAULT_CHANNELS)
    if isinstance(channels, bool) or channels not in (1, 2):
        raise InvalidInputError(f"{settings_param}.channels must be 1 or 2, got {channels!r}.",
                                param=f"{settings_param}.channels")
    rates = rates_of(table_name)
    rate = settings.get("sampleRate")
    if rate is None:
        rate = model_rate if model_rate in rates else min((r for r in rates if r >= model_rate), default=rates[-1])
    elif isinstance(rate, bool) or not isinstance(rate, int) or rate not in rates:
        raise InvalidInputError(f"{settings_param}.sampleRate for {name} must be one of "
                                f"{', '.join(map(str, rates))} (Hz), got {rate!r}.", param=f"{settings_param}.sampleRate")
    low, high = bitrate_range(table_name, rate, channels)
    kbps = settings.get("bitrate")
    if kbps is None:
        kbps = min(max(DEFAULT_KBPS, low), high)
    elif isinstance(kbps, bool) or not isinstance(kbps, int) or not low <= kbps <= high:
        layout = "mono" if channels == 1 else "stereo"
        raise InvalidInputError(f"{settings_param}.bitrate for {name} at {rate} Hz, {layout}, must be an integer "
                                f"from {low} to {high} (kb/s), got {kbps!r}.", param=f"{settings_param}.bitrate")
    return OutputSpec(name, fmt, channels=channels, sample_rate=rate, kbps=kbps)


def encode_output(pcm: np.ndarray, sample_rate: int, spec: OutputSpec) -> bytes:
    """A whole file of ``pcm`` (mono float32 at ``sample_rate``) as ``spec`` says."""
    if spec.format == "vorbis":
        return _encode_vorbis(pcm, sample_rate, kbps=spec.kbps, channels=spec.channels,
                              output_sample_rate=spec.sample_rate or sample_rate)
    return encode_audio(pcm, sample_rate, spec.format, bitrate=None if spec.kbps is None else spec.kbps * 1000,
                        channels=spec.channels, output_sample_rate=spec.sample_rate)


def bitrate_table_markdown() -> str:
    """:data:`BITRATE_TABLE` as the Markdown table in docs/server.md."""
    lines = ["| `outputFormat` | `sampleRate` (Hz) | mono (kb/s) | stereo (kb/s) |", "|---|---|---|---|"]
    for name, rates, mono, stereo in BITRATE_TABLE:
        lines.append(f"| {name} | {', '.join(map(str, rates))} | {mono[0]}–{mono[1]} | {stereo[0]}–{stereo[1]} |")
    return "\n".join(lines)


# ---------------------------------------------------------------------- Ogg Vorbis

#: libvorbis qualities 0.0, 0.1, ... 1.0 (``oggenc -q`` 0 to 10) between whose nominal bit rates a requested
#: bit rate is placed.
_VORBIS_QUALITIES = tuple(q / 10 for q in range(11))
_vorbis_rates: dict[tuple[int, int], tuple[int, ...]] = {}


def _encode_vorbis(pcm: np.ndarray, sample_rate: int, *, kbps: int | None, channels: int,
                   output_sample_rate: int) -> bytes:
    import soundfile

    samples = np.clip(np.nan_to_num(np.asarray(pcm, dtype=np.float32)), -1.0, 1.0)
    if output_sample_rate != sample_rate:
        samples = np.clip(resample(samples, sample_rate, output_sample_rate), -1.0, 1.0)
    quality = vorbis_quality((kbps or DEFAULT_KBPS) * 1000, output_sample_rate, channels)
    buffer = io.BytesIO()
    # libsndfile's compression level is the inverse of libvorbis' quality.
    soundfile.write(buffer, np.repeat(samples[:, None], channels, axis=1), output_sample_rate, format="OGG",
                    subtype="VORBIS", compression_level=1.0 - quality)
    return buffer.getvalue()


def vorbis_quality(bitrate: int, sample_rate: int, channels: int) -> float:
    """The libvorbis quality (0–1) whose nominal bit rate at ``sample_rate`` and ``channels`` is ``bitrate``
    (bits per second), interpolated between libvorbis' own figures and clamped to the qualities it has."""
    rates = vorbis_nominal_rates(sample_rate, channels)
    if bitrate <= rates[0]:
        return _VORBIS_QUALITIES[0]
    for i in range(1, len(rates)):
        if bitrate <= rates[i]:
            q0, q1, r0, r1 = _VORBIS_QUALITIES[i - 1], _VORBIS_QUALITIES[i], rates[i - 1], rates[i]
            return q0 + (q1 - q0) * (bitrate - r0) / max(r1 - r0, 1)
    return _VORBIS_QUALITIES[-1]


def vorbis_nominal_rates(sample_rate: int, channels: int) -> tuple[int, ...]:
    """libvorbis' nominal bit rate (bits per second) at each of the qualities 0.0 … 1.0, read from the
    identification header of a tenth of a second of silence encoded at each: the encoder's own calibration,
    whatever its version. Measured once per rate and channel count."""
    key = (sample_rate, channels)
    if key not in _vorbis_rates:
        import soundfile

        rates = []
        for quality in _VORBIS_QUALITIES:
            buffer = io.BytesIO()
            soundfile.write(buffer, np.zeros((max(sample_rate // 10, 1), channels), dtype=np.float32), sample_rate,
                            format="OGG", subtype="VORBIS", compression_level=1.0 - quality)
            data = buffer.getvalue()
            # After "\x01vorbis": version (4), channels (1), rate (4), maximum (4), nominal (4), minimum (4).
            rates.append(struct.unpack_from("<IBIiii", data, data.find(b"\x01vorbis") + 7)[4])
        _vorbis_rates[key] = tuple(rates)
    return _vorbis_rates[key]
