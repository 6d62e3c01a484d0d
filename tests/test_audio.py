"""Tests of the audio layer: decoding, resampling, streaming encoders and speed change."""

from __future__ import annotations

import ast
import io
from fractions import Fraction
from pathlib import Path

import av
import numpy as np
import pytest

from faster_dia.audio import (
    CONTENT_TYPES,
    SUPPORTED_FORMATS,
    Encoder,
    StreamingResampler,
    TempoStretcher,
    change_speed,
    decode_audio,
    encode_audio,
    open_encoder,
    resample,
)
from faster_dia.errors import InvalidInputError

INT16_STEP = 1.0 / 32767

# Extra samples a lossy decoder may return: encoder delay (priming) plus padding to a whole frame.
MAX_EXTRA_SAMPLES = {"mp3": 1105 + 2 * 1152, "aac": 2 * 1024, "opus": 2, "flac": 0, "wav": 0}


def sine(seconds: float, rate: int, freq: float = 440.0, amplitude: float = 0.5) -> np.ndarray:
    t = np.arange(round(seconds * rate)) / rate
    return (amplitude * np.sin(2 * np.pi * freq * t)).astype(np.float32)


def peak_frequency(samples: np.ndarray, rate: int) -> float:
    spectrum = np.abs(np.fft.rfft(samples * np.hanning(samples.size)))
    return float(np.argmax(spectrum) * rate / samples.size)


def pyav_decode(data: bytes) -> tuple[np.ndarray, int]:
    """Decode with plain PyAV (independent of decode_audio); returns (channels, samples) float32 and rate."""
    with av.open(io.BytesIO(data)) as container:
        stream = container.streams.audio[0]
        to_float = av.AudioResampler(format="fltp")
        frames = [f.to_ndarray() for frame in container.decode(stream) for f in to_float.resample(frame)]
        rate = stream.codec_context.sample_rate
    return np.concatenate(frames, axis=1), rate


def chunked(samples: np.ndarray, rate: int, seed: int = 0) -> list[np.ndarray]:
    """Split into chunks of 0.2-0.5 s, the sizes a generator streams."""
    rng = np.random.default_rng(seed)
    chunks = []
    start = 0
    while start < samples.size:
        size = int(rng.uniform(0.2, 0.5) * rate)
        chunks.append(samples[start : start + size])
        start += size
    return chunks


def stream_encode(fmt: str, samples: np.ndarray, rate: int) -> tuple[bytes, list[bytes], Encoder]:
    encoder = open_encoder(fmt, rate)
    pieces = [encoder.push(chunk) for chunk in chunked(samples, rate)]
    pieces.append(encoder.close())
    return b"".join(pieces), pieces, encoder


def pyav_file(
    container_format: str, codec: str, samples: np.ndarray, rate: int, layout: str = "mono"
) -> bytes:
    """A file written by PyAV directly, as an upload from elsewhere would be. ``samples``: (channels, n)."""
    buffer = io.BytesIO()
    with av.open(buffer, mode="w", format=container_format) as container:
        # FFmpeg's own Vorbis encoder is marked experimental.
        options = {"strict": "experimental"} if codec == "vorbis" else {}
        stream = container.add_stream(codec, rate=rate, layout=layout, options=options)
        frame = av.AudioFrame.from_ndarray(
            np.ascontiguousarray(samples, dtype=np.float32), format="fltp", layout=layout
        )
        frame.sample_rate = rate
        frame.pts = 0
        frame.time_base = Fraction(1, rate)
        for packet in stream.encode(frame):
            container.mux(packet)
        for packet in stream.encode(None):
            container.mux(packet)
    return buffer.getvalue()


# --------------------------------------------------------------------------- encoders


@pytest.mark.parametrize("rate", [24000, 44100])
@pytest.mark.parametrize("fmt", ["wav", "flac", "mp3", "opus", "aac"])
def test_streamed_encoding_decodes_with_pyav(fmt: str, rate: int) -> None:
    samples = sine(1.3, rate)
    data, _, encoder = stream_encode(fmt, samples, rate)

    decoded, decoded_rate = pyav_decode(data)
    assert decoded.shape[0] == 1
    assert decoded_rate == encoder.output_sample_rate
    expected = round(samples.size * decoded_rate / rate)
    extra = decoded.shape[1] - expected
    assert -2 <= extra <= MAX_EXTRA_SAMPLES[fmt], f"{fmt}: {decoded.shape[1]} samples, expected {expected}"
    assert abs(peak_frequency(decoded[0], decoded_rate) - 440.0) < 5.0

    if fmt in ("wav", "flac"):
        np.testing.assert_allclose(decoded[0], samples, atol=INT16_STEP)


def test_output_rates_and_content_types() -> None:
    assert set(SUPPORTED_FORMATS) == set(CONTENT_TYPES) == {"mp3", "opus", "aac", "flac", "wav", "pcm"}
    expected = {
        "wav": ("audio/wav", 44100),
        "pcm": ("audio/pcm", 24000),
        "mp3": ("audio/mpeg", 44100),
        "opus": ("audio/ogg", 48000),
        "aac": ("audio/aac", 44100),
        "flac": ("audio/flac", 44100),
    }
    for fmt, (content_type, output_rate) in expected.items():
        encoder = open_encoder(fmt, 44100)
        assert encoder.format == fmt
        assert encoder.content_type == content_type
        assert encoder.output_sample_rate == output_rate
        encoder.close()


def test_unsupported_rate_is_resampled_for_the_codec() -> None:
    encoder = open_encoder("mp3", 22000)
    assert encoder.output_sample_rate == 22050
    data = encoder.push(sine(0.5, 22000)) + encoder.close()
    assert pyav_decode(data)[1] == 22050


@pytest.mark.parametrize("rate", [24000, 44100, 16000])
def test_pcm_is_24khz_s16le_without_header(rate: int) -> None:
    seconds = 2.0
    samples = sine(seconds, rate)
    data, _, encoder = stream_encode("pcm", samples, rate)

    assert encoder.output_sample_rate == 24000
    assert len(data) % 2 == 0
    count = len(data) // 2
    assert abs(count - 24000 * seconds) <= 2
    decoded = np.frombuffer(data, dtype="<i2").astype(np.float32) / 32767
    reference = resample(samples, rate, 24000)
    n = min(decoded.size, reference.size)
    np.testing.assert_allclose(decoded[:n], reference[:n], atol=2 * INT16_STEP)
    # No header: the stream starts with audio, which for a sine is near zero.
    assert abs(decoded[0]) < 0.05


def test_streamed_equals_whole_for_lossless_formats() -> None:
    rate = 24000
    samples = sine(1.5, rate)
    for fmt in ("wav", "pcm", "flac"):
        streamed = stream_encode(fmt, samples, rate)[0]
        whole = encode_audio(samples, rate, fmt)
        if fmt == "pcm":
            assert streamed == whole
        else:
            np.testing.assert_array_equal(pyav_decode(streamed)[0], pyav_decode(whole)[0])


def test_wav_streaming_header() -> None:
    encoder = open_encoder("wav", 24000)
    first = encoder.push(sine(0.25, 24000))
    assert first[:4] == b"RIFF" and first[8:16] == b"WAVEfmt "
    assert first[4:8] == b"\xff\xff\xff\xff"
    assert first[36:44] == b"data\xff\xff\xff\xff"
    assert len(first) == 44 + 2 * 6000
    assert encoder.close() == b""

    whole = encode_audio(sine(0.25, 24000), 24000, "wav")
    assert int.from_bytes(whole[40:44], "little") == 2 * 6000
    assert int.from_bytes(whole[4:8], "little") == 36 + 2 * 6000


def test_empty_stream_is_still_a_valid_wav() -> None:
    encoder = open_encoder("wav", 24000)
    assert len(encoder.close()) == 44


@pytest.mark.parametrize("fmt", ["wav", "mp3", "opus"])
def test_soundfile_reads_streamed_output(fmt: str) -> None:
    soundfile = pytest.importorskip("soundfile")
    samples = sine(1.0, 24000)
    data, _, encoder = stream_encode(fmt, samples, 24000)
    decoded, decoded_rate = soundfile.read(io.BytesIO(data), dtype="float32")
    assert decoded_rate == encoder.output_sample_rate
    expected = round(samples.size * decoded_rate / 24000)
    assert 0 <= decoded.size - expected <= MAX_EXTRA_SAMPLES[fmt] + 2


@pytest.mark.parametrize("fmt", ["wav", "flac", "mp3"])
def test_soundfile_reads_whole_files(fmt: str) -> None:
    soundfile = pytest.importorskip("soundfile")
    samples = sine(1.0, 24000)
    decoded, decoded_rate = soundfile.read(io.BytesIO(encode_audio(samples, 24000, fmt)), dtype="float32")
    assert decoded_rate == 24000
    # The whole-file MP3 carries a LAME header, so decoders trim priming and padding exactly.
    assert decoded.size == samples.size


def test_opus_first_push_returns_audio() -> None:
    rate = 24000
    encoder = open_encoder("opus", rate)
    first = encoder.push(sine(0.5, rate))
    assert first
    # Not only the Ogg headers: the first push already carries decodable audio pages.
    decoded, decoded_rate = pyav_decode(first)
    assert decoded_rate == 48000
    assert decoded.shape[1] >= 0.3 * 48000
    encoder.close()


@pytest.mark.parametrize("fmt", ["mp3", "aac", "flac", "wav", "pcm"])
def test_first_push_returns_bytes(fmt: str) -> None:
    encoder = open_encoder(fmt, 44100)
    assert encoder.push(sine(0.5, 44100))
    encoder.close()


def test_input_is_clipped_and_sanitised() -> None:
    samples = np.array([2.0, -3.0, 0.5, np.nan, np.inf, -np.inf], dtype=np.float32)
    data = open_encoder("wav", 24000).push(samples)
    values = np.frombuffer(data[44:], dtype="<i2")
    np.testing.assert_array_equal(values, [32767, -32767, 16384, 0, 32767, -32767])
    decoded, _ = pyav_decode(encode_audio(samples * 10, 24000, "flac"))
    assert np.abs(decoded).max() <= 1.0


def test_encoder_lifecycle() -> None:
    encoder = open_encoder("mp3", 24000)
    encoder.push(sine(0.3, 24000))
    assert encoder.close()
    assert encoder.close() == b""
    with pytest.raises(RuntimeError):
        encoder.push(sine(0.1, 24000))


def test_unknown_format_lists_supported() -> None:
    with pytest.raises(InvalidInputError) as info:
        open_encoder("ogg", 24000)
    assert info.value.param == "response_format"
    for fmt in SUPPORTED_FORMATS:
        assert fmt in info.value.message
    assert open_encoder(" MP3 ", 24000).format == "mp3"


# --------------------------------------------------------------------------- decoding


DECODE_CASES: dict[str, tuple[str, ...]] = {
    "wav": ("wav", "pcm_s16le"),
    "mp3": ("mp3", "libmp3lame"),
    "flac": ("flac", "flac"),
    "ogg-opus": ("ogg", "libopus"),
    # FFmpeg's Vorbis encoder only writes stereo.
    "ogg-vorbis": ("ogg", "vorbis", "stereo"),
    "m4a": ("ipod", "aac"),
    "webm": ("webm", "libopus"),
}


@pytest.mark.parametrize("case", sorted(DECODE_CASES))
def test_decode_formats(case: str) -> None:
    container_format, codec, *rest = DECODE_CASES[case]
    layout = rest[0] if rest else "mono"
    rate = 48000
    samples = sine(1.0, rate)
    channels = 2 if layout == "stereo" else 1
    data = pyav_file(container_format, codec, np.tile(samples, (channels, 1)), rate, layout=layout)

    decoded, decoded_rate = decode_audio(data)
    assert decoded.dtype == np.float32 and decoded.ndim == 1
    assert decoded_rate == rate
    assert abs(decoded.size - rate) <= 0.05 * rate
    assert abs(peak_frequency(decoded, rate) - 440.0) < 5.0


def test_decode_path_and_file_object(tmp_path) -> None:
    data = encode_audio(sine(1.0, 24000), 24000, "flac")
    path = tmp_path / "voice.flac"
    path.write_bytes(data)
    from_path, _ = decode_audio(path)
    from_str, _ = decode_audio(str(path))
    with open(path, "rb") as handle:
        from_file, _ = decode_audio(handle)
    from_buffer, _ = decode_audio(io.BytesIO(data))
    for decoded in (from_str, from_file, from_buffer):
        np.testing.assert_array_equal(decoded, from_path)
    np.testing.assert_allclose(from_path, sine(1.0, 24000), atol=INT16_STEP)


def test_decode_downmixes_stereo() -> None:
    rate = 24000
    left = sine(1.0, rate, amplitude=0.6)
    right = sine(1.0, rate, freq=660.0, amplitude=0.2)
    data = pyav_file("wav", "pcm_s16le", np.stack([left, right]), rate, layout="stereo")
    decoded, _ = decode_audio(data)
    np.testing.assert_allclose(decoded, (left + right) / 2, atol=INT16_STEP)


def test_decode_resamples() -> None:
    data = encode_audio(sine(2.0, 44100), 44100, "wav")
    decoded, rate = decode_audio(data, sample_rate=24000)
    assert rate == 24000
    assert abs(decoded.size - 48000) <= 1
    assert abs(peak_frequency(decoded, rate) - 440.0) < 2.0
    native, native_rate = decode_audio(data)
    assert native_rate == 44100 and native.size == 88200


def test_decode_errors(tmp_path) -> None:
    wav = encode_audio(sine(3.0, 24000), 24000, "wav")

    def message(source, **kwargs) -> str:
        with pytest.raises(InvalidInputError) as info:
            decode_audio(source, **kwargs)
        assert info.value.param == "file"
        assert "\n" not in info.value.message
        return info.value.message

    assert "not found" in message(tmp_path / "missing.wav")
    assert "not a file" in message(tmp_path)
    assert message(b"this is not audio" * 50).startswith("Could not decode audio:")
    (tmp_path / "notes.txt").write_text("hello")
    assert message(tmp_path / "notes.txt").startswith("Could not decode audio:")
    assert "empty" in message(b"")
    assert "no samples" in message(wav[:44])
    assert "larger than" in message(wav, max_bytes=1000)
    assert "larger than" in message(io.BytesIO(wav), max_bytes=1000)
    (tmp_path / "big.wav").write_bytes(wav)
    assert "larger than" in message(tmp_path / "big.wav", max_bytes=1000)
    assert "2-second limit" in message(wav, max_seconds=2)
    assert decode_audio(wav, max_seconds=None, max_bytes=None)[0].size == 72000

    buffer = io.BytesIO()
    with av.open(buffer, mode="w", format="matroska") as container:
        stream = container.add_stream("mpeg4", rate=10)
        stream.width = stream.height = 32
        stream.pix_fmt = "yuv420p"
        frame = av.VideoFrame.from_ndarray(np.zeros((32, 32, 3), np.uint8), format="rgb24")
        frame.pts = 0
        for packet in list(stream.encode(frame)) + list(stream.encode(None)):
            container.mux(packet)
    assert "no audio stream" in message(buffer.getvalue())


def test_decode_stops_early_on_long_audio() -> None:
    # One hour of silence: decoding it all would take seconds; hitting the limit must not.
    encoder = open_encoder("flac", 8000)
    silence = np.zeros(8000 * 60, dtype=np.float32)
    data = b"".join(encoder.push(silence) for _ in range(60)) + encoder.close()
    with pytest.raises(InvalidInputError, match="60-second limit"):
        decode_audio(data, max_seconds=60, max_bytes=None)


# --------------------------------------------------------------------------- resampling


@pytest.mark.parametrize(("from_rate", "to_rate"), [(44100, 24000), (24000, 48000), (16000, 24000)])
def test_streaming_resampler_matches_one_shot(from_rate: int, to_rate: int) -> None:
    samples = np.random.default_rng(1).standard_normal(from_rate * 2).astype(np.float32) * 0.1
    whole = resample(samples, from_rate, to_rate)
    assert whole.dtype == np.float32
    assert whole.size == round(samples.size * to_rate / from_rate)

    stream = StreamingResampler(from_rate, to_rate)
    pieces = [stream.push(chunk) for chunk in chunked(samples, from_rate)] + [stream.close()]
    streamed = np.concatenate(pieces)
    assert abs(streamed.size - whole.size) <= 2
    n = min(streamed.size, whole.size)
    np.testing.assert_allclose(streamed[:n], whole[:n], atol=1e-5)


def test_resample_same_rate_is_a_copy() -> None:
    samples = sine(0.1, 24000)
    out = resample(samples, 24000, 24000)
    np.testing.assert_array_equal(out, samples)
    assert out is not samples


# --------------------------------------------------------------------------- speed


@pytest.mark.parametrize("speed", [0.25, 0.5, 0.8, 1.5, 2.0, 4.0])
def test_change_speed_keeps_pitch(speed: float) -> None:
    rate = 24000
    samples = sine(2.0, rate)
    out = change_speed(samples, rate, speed)
    assert out.dtype == np.float32
    assert out.size == round(samples.size / speed)
    assert abs(peak_frequency(out, rate) - 440.0) < 5.0
    # The last input samples come through: the final 50 ms of output is audio, not padding.
    assert np.abs(out[-rate // 20 :]).max() > 0.3


def test_change_speed_one_returns_input() -> None:
    samples = sine(0.5, 24000)
    assert change_speed(samples, 24000, 1.0) is samples
    stretcher = TempoStretcher(24000, 1)
    np.testing.assert_array_equal(stretcher.push(samples), samples)
    assert stretcher.close().size == 0


@pytest.mark.parametrize("speed", [0.2, 4.5, 0.0, -1.0, float("nan"), float("inf"), "fast"])
def test_change_speed_range(speed) -> None:
    with pytest.raises(InvalidInputError) as info:
        change_speed(sine(0.1, 24000), 24000, speed)
    assert info.value.param == "speed"
    if isinstance(speed, str):
        assert "number" in info.value.message
    else:
        assert "between 0.25 and 4.0" in info.value.message


@pytest.mark.parametrize("speed", [0.5, 1.25, 3.0])
def test_tempo_stretcher_streams_like_change_speed(speed: float) -> None:
    rate = 44100
    samples = np.random.default_rng(2).standard_normal(rate * 2).astype(np.float32) * 0.2
    whole = change_speed(samples, rate, speed)

    stretcher = TempoStretcher(rate, speed)
    pieces = [stretcher.push(chunk) for chunk in chunked(samples, rate)] + [stretcher.close()]
    streamed = np.concatenate(pieces)
    assert abs(streamed.size - whole.size) <= rate // 200
    n = min(streamed.size, whole.size)
    np.testing.assert_allclose(streamed[:n], whole[:n], atol=1e-4)
    assert stretcher.close().size == 0


# --------------------------------------------------------------------------- layer rule


def test_audio_layer_imports_no_model_code() -> None:
    allowed = {"__future__", "abc", "dataclasses", "fractions", "io", "math", "os", "struct", "typing"}
    allowed |= {"av", "numpy", "soxr", "faster_dia.errors"}
    package = Path(__file__).resolve().parents[1] / "faster_dia" / "audio"
    for path in package.glob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Import):
                names = [alias.name for alias in node.names]
            elif isinstance(node, ast.ImportFrom) and node.level == 0:
                names = [node.module or ""]
            else:
                continue
            for name in names:
                assert name in allowed or name.split(".")[0] in allowed - {"faster_dia.errors"}, (
                    f"{path.name} imports {name}"
                )
