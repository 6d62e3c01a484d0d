"""Speed change without pitch change (the OpenAI ``speed`` parameter), with FFmpeg's ``atempo`` filter."""

from __future__ import annotations

import math
from fractions import Fraction

import av
import av.filter
import numpy as np

from faster_dia.errors import InvalidInputError

MIN_SPEED = 0.25
MAX_SPEED = 4.0

# Older FFmpeg builds accept 0.5-2.0 per atempo instance; chaining instances in that range works
# everywhere and reaches the full 0.25-4.0.
_ATEMPO_MIN = 0.5
_ATEMPO_MAX = 2.0

# atempo drops the last partial analysis window at end of stream (tens of ms of output, more at low
# speeds). Feeding this much silence before the flush lets the real tail out; the output is then cut to
# the exact expected length.
_TAIL_PADDING_SECONDS = 0.25

_FRAME_SAMPLES = 512


def check_speed(speed: float) -> float:
    """Return ``speed`` as a float, or raise ``InvalidInputError`` (param "speed") if out of range."""
    try:
        value = float(speed)
    except (TypeError, ValueError):
        raise InvalidInputError(f"speed must be a number, got {speed!r}.", param="speed") from None
    if not math.isfinite(value) or not MIN_SPEED <= value <= MAX_SPEED:
        raise InvalidInputError(
            f"speed must be between {MIN_SPEED} and {MAX_SPEED}, got {speed!r}.", param="speed"
        )
    return value


def _atempo_factors(speed: float) -> list[float]:
    factors: list[float] = []
    remaining = speed
    while remaining > _ATEMPO_MAX:
        factors.append(_ATEMPO_MAX)
        remaining /= _ATEMPO_MAX
    while remaining < _ATEMPO_MIN:
        factors.append(_ATEMPO_MIN)
        remaining /= _ATEMPO_MIN
    factors.append(remaining)
    return factors


def _as_mono_float32(pcm: np.ndarray) -> np.ndarray:
    samples = np.asarray(pcm, dtype=np.float32)
    if samples.ndim != 1:
        raise ValueError(f"expected mono audio as a 1-D array, got shape {samples.shape}")
    return samples


class TempoStretcher:
    """Change the speed of audio arriving in chunks, keeping its pitch.

    ``push()`` returns whatever output is ready (the filter holds back a window of a few tens of ms, so
    early pushes may return nothing); ``close()`` returns the rest. The concatenated output has exactly
    ``round(total_input_samples / speed)`` samples and equals :func:`change_speed` of the whole input.
    At speed 1.0 the audio passes through untouched.
    """

    def __init__(self, sample_rate: int, speed: float):
        if sample_rate <= 0:
            raise ValueError(f"sample_rate must be positive, got {sample_rate}")
        self.sample_rate = sample_rate
        self.speed = check_speed(speed)
        self._samples_in = 0
        self._samples_out = 0
        self._closed = False
        self._graph: av.filter.Graph | None = None
        if self.speed != 1.0:
            self._graph = self._build_graph()

    def _build_graph(self) -> av.filter.Graph:
        graph = av.filter.Graph()
        time_base = Fraction(1, self.sample_rate)
        node = graph.add_abuffer(
            sample_rate=self.sample_rate, format="flt", layout="mono", time_base=time_base
        )
        for factor in _atempo_factors(self.speed):
            stage = graph.add("atempo", repr(factor))
            node.link_to(stage)
            node = stage
        # Pins the sink to packed float mono whatever format atempo negotiates.
        to_float = graph.add("aformat", "sample_fmts=flt:channel_layouts=mono")
        node.link_to(to_float)
        sink = graph.add("abuffersink")
        to_float.link_to(sink)
        graph.configure()
        return graph

    def _feed(self, samples: np.ndarray) -> None:
        assert self._graph is not None
        # atempo sizes each output frame from its input frame and releases it only once full, so its
        # output lags by one input frame per instance. Small frames keep that lag to a few ms whatever
        # the caller's chunk size.
        for start in range(0, samples.size, _FRAME_SAMPLES):
            piece = np.ascontiguousarray(samples[None, start : start + _FRAME_SAMPLES])
            frame = av.AudioFrame.from_ndarray(piece, format="flt", layout="mono")
            frame.sample_rate = self.sample_rate
            frame.time_base = Fraction(1, self.sample_rate)
            frame.pts = self._samples_in
            self._samples_in += piece.shape[1]
            self._graph.push(frame)

    def _pull_ready(self) -> list[np.ndarray]:
        assert self._graph is not None
        chunks: list[np.ndarray] = []
        while True:
            try:
                frame = self._graph.pull()
            except (BlockingIOError, EOFError):
                return chunks
            chunks.append(frame.to_ndarray().reshape(-1).astype(np.float32, copy=False))

    def push(self, pcm: np.ndarray) -> np.ndarray:
        """Feed the next chunk of mono float32 audio; returns the output that is ready (maybe empty)."""
        if self._closed:
            raise RuntimeError("push() called on a closed TempoStretcher")
        samples = _as_mono_float32(pcm)
        if self._graph is None:
            return samples.copy()
        if samples.size == 0:
            return np.zeros(0, dtype=np.float32)
        self._feed(samples)
        output = _concat(self._pull_ready())
        self._samples_out += output.size
        return output

    def close(self) -> np.ndarray:
        """Flush the filter; returns the remaining output. Later calls return an empty array."""
        if self._closed or self._graph is None:
            self._closed = True
            return np.zeros(0, dtype=np.float32)
        self._closed = True
        real_input = self._samples_in
        target = round(real_input / self.speed)
        if real_input > 0:
            self._feed(np.zeros(int(_TAIL_PADDING_SECONDS * self.sample_rate), dtype=np.float32))
        self._graph.push(None)
        tail = _concat(self._pull_ready())
        wanted = max(target - self._samples_out, 0)
        if tail.size < wanted:
            tail = np.concatenate([tail, np.zeros(wanted - tail.size, dtype=np.float32)])
        self._samples_out += wanted
        return tail[:wanted]


def _concat(chunks: list[np.ndarray]) -> np.ndarray:
    if not chunks:
        return np.zeros(0, dtype=np.float32)
    return np.concatenate(chunks)


def change_speed(pcm: np.ndarray, sample_rate: int, speed: float) -> np.ndarray:
    """Play mono audio ``speed`` times faster (0.25-4.0) without changing its pitch.

    The result has ``round(len(pcm) / speed)`` samples. Speed 1.0 returns ``pcm`` itself.
    Raises ``InvalidInputError`` (param "speed") when ``speed`` is out of range.
    """
    value = check_speed(speed)
    if value == 1.0:
        return pcm
    stretcher = TempoStretcher(sample_rate, value)
    head = stretcher.push(pcm)
    return np.concatenate([head, stretcher.close()])
