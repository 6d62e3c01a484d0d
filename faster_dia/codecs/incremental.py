"""Decoding codec frames as they become final, for streaming."""

from __future__ import annotations

from typing import Protocol

import numpy as np
import torch


class FrameCodec(Protocol):
    hop_length: int
    num_codebooks: int

    def decode(self, codes: torch.Tensor) -> np.ndarray: ...


class IncrementalDecoder:
    """Decodes frames as they arrive, so that the concatenated output equals ``codec.decode`` of all frames.

    An output sample depends on the frames within ``left_context`` before and ``right_context`` after its
    own. Each call decodes the new frames together with that much history, and holds back the last
    ``right_context`` frames until their right-hand neighbours are known (or :meth:`flush` says there are
    none). With a context shorter than the codec's real reach the output is close to, not equal to, the
    full decode."""

    def __init__(self, codec: FrameCodec, *, left_context: int, right_context: int):
        self.codec = codec
        self.left_context = left_context
        self.right_context = right_context
        self._codes = torch.zeros(0, codec.num_codebooks, dtype=torch.long)
        self._offset = 0  # frame index of self._codes[0]
        self.emitted = 0  # frames whose audio has been returned

    @property
    def frames(self) -> int:
        return self._offset + self._codes.shape[0]

    def push(self, codes: torch.Tensor) -> np.ndarray:
        """Add the next final frames [n, num_codebooks]; returns the audio that is final now (may be empty)."""
        self._codes = torch.cat([self._codes, codes.cpu().long()])
        return self._emit(self.frames - self.right_context)

    def flush(self) -> np.ndarray:
        """No more frames will come: return the rest of the audio."""
        return self._emit(self.frames)

    def _emit(self, upto: int) -> np.ndarray:
        if upto <= self.emitted:
            return np.zeros(0, dtype=np.float32)
        lo = max(self._offset, self.emitted - self.left_context)
        hi = min(self.frames, upto + self.right_context)
        audio = self.codec.decode(self._codes[lo - self._offset : hi - self._offset])
        hop = self.codec.hop_length
        out = audio[(self.emitted - lo) * hop : (upto - lo) * hop]
        self.emitted = upto
        keep_from = max(self._offset, self.emitted - self.left_context)
        self._codes = self._codes[keep_from - self._offset :]
        self._offset = keep_from
        return out
