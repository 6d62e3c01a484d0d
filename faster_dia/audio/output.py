"""One request's audio on its way out: speed change, then encoding, chunk by chunk or as a whole file.

Both steps are CPU work that the server runs in the shared output pool (faster_dia.speech.output_pool), never
on the event loop and never in a thread per request.
"""

from __future__ import annotations

import numpy as np

from .encode import encode_audio, open_encoder
from .tempo import TempoStretcher, change_speed


class AudioOutput:
    """Feed float32 mono chunks with :meth:`push`, then :meth:`close`; the concatenated bytes are one file.

    With ``whole_file`` nothing is returned until ``close``, which encodes the clip in one go so that the
    file gets complete headers (WAV sizes, FLAC sample count, MP3 duration)."""

    def __init__(self, fmt: str, sample_rate: int, *, speed: float = 1.0, whole_file: bool = False):
        self.fmt = fmt
        self.sample_rate = sample_rate
        self.speed = speed
        self.whole_file = whole_file
        self.samples_in = 0  # model samples received
        self._pieces: list[np.ndarray] = []
        self._encoder = None if whole_file else open_encoder(fmt, sample_rate)
        self._stretcher = TempoStretcher(sample_rate, speed) if speed != 1.0 and not whole_file else None

    @property
    def audio_seconds(self) -> float:
        """Seconds of audio delivered so far, after the speed change."""
        return self.samples_in / self.sample_rate / self.speed

    def push(self, pcm: np.ndarray) -> bytes:
        self.samples_in += pcm.size
        if self.whole_file:
            self._pieces.append(pcm)
            return b""
        return self._encoder.push(self._stretcher.push(pcm) if self._stretcher is not None else pcm)

    def close(self) -> bytes:
        if self.whole_file:
            pcm = np.concatenate(self._pieces) if self._pieces else np.zeros(0, dtype=np.float32)
            return encode_audio(change_speed(pcm, self.sample_rate, self.speed), self.sample_rate, self.fmt)
        tail = self._encoder.push(self._stretcher.close()) if self._stretcher is not None else b""
        return tail + self._encoder.close()

    def abandon(self) -> None:
        """Release the encoder of a request that ends early."""
        if self._encoder is not None and not self._encoder.closed:
            try:
                self._encoder.close()
            except Exception:  # an encoder that cannot finish cleanly has nothing left to release
                pass
