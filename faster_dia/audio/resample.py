"""Sample-rate conversion with soxr, one-shot and streaming."""

from __future__ import annotations

import numpy as np
import soxr

# "HQ" is soxr's default quality. The one-shot and the streaming paths must use the same quality so that a
# chunked conversion matches a whole-signal one.
_QUALITY = "HQ"


def _as_mono_float32(pcm: np.ndarray) -> np.ndarray:
    samples = np.asarray(pcm, dtype=np.float32)
    if samples.ndim != 1:
        raise ValueError(f"expected mono audio as a 1-D array, got shape {samples.shape}")
    return samples


def _check_rate(name: str, rate: int) -> None:
    if rate <= 0:
        raise ValueError(f"{name} must be a positive number of samples per second, got {rate}")


def resample(pcm: np.ndarray, from_rate: int, to_rate: int) -> np.ndarray:
    """Convert mono audio from ``from_rate`` to ``to_rate``; returns float32.

    The output has ``round(len(pcm) * to_rate / from_rate)`` samples. Equal rates return a float32 copy.
    """
    _check_rate("from_rate", from_rate)
    _check_rate("to_rate", to_rate)
    samples = _as_mono_float32(pcm)
    if from_rate == to_rate:
        return samples.copy()
    if samples.size == 0:
        return np.zeros(0, dtype=np.float32)
    return np.asarray(soxr.resample(samples, from_rate, to_rate, quality=_QUALITY), dtype=np.float32)


class StreamingResampler:
    """Resample mono audio that arrives in chunks.

    The concatenation of every ``push()`` result and the final ``close()`` result matches
    ``resample()`` of the whole signal to within a sample or two of length and float rounding of value.
    The output lags the input by the filter delay, so a push may return fewer samples than expected.
    """

    def __init__(self, from_rate: int, to_rate: int):
        _check_rate("from_rate", from_rate)
        _check_rate("to_rate", to_rate)
        self.from_rate = from_rate
        self.to_rate = to_rate
        self._stream: soxr.ResampleStream | None = None
        if from_rate != to_rate:
            self._stream = soxr.ResampleStream(from_rate, to_rate, 1, dtype="float32", quality=_QUALITY)
        self._closed = False

    def push(self, pcm: np.ndarray) -> np.ndarray:
        """Feed the next chunk; returns the output samples that are ready (maybe none)."""
        if self._closed:
            raise RuntimeError("push() called on a closed StreamingResampler")
        samples = _as_mono_float32(pcm)
        if self._stream is None:
            return samples.copy()
        if samples.size == 0:
            return np.zeros(0, dtype=np.float32)
        return np.asarray(self._stream.resample_chunk(samples, last=False), dtype=np.float32)

    def close(self) -> np.ndarray:
        """Flush the filter delay; returns the last output samples. Later calls return nothing."""
        if self._closed or self._stream is None:
            self._closed = True
            return np.zeros(0, dtype=np.float32)
        self._closed = True
        tail = self._stream.resample_chunk(np.zeros(0, dtype=np.float32), last=True)
        return np.asarray(tail, dtype=np.float32)
