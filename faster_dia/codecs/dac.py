"""DAC 44.1 kHz codec (9 codebooks of 1024 codes, 512 samples per frame) through transformers' DacModel."""

from __future__ import annotations

import logging

import numpy as np
import torch

from ..errors import InvalidInputError
from . import TransformersCodec
from .incremental import IncrementalDecoder

log = logging.getLogger(__name__)

DEFAULT_DAC = "descript/dac_44khz"


class DacCodec(TransformersCodec):
    transformers_class = "DacModel"
    label = "DAC"
    model_type = "dac"
    needed_by = "Dia-1.6B"
    default_repo = DEFAULT_DAC

    def __init__(self, model, *, name: str):
        super().__init__(model, name=name)
        cfg = model.config
        self.sample_rate = int(cfg.sampling_rate)
        self.hop_length = int(np.prod(cfg.downsampling_ratios))
        self.num_codebooks = int(cfg.n_codebooks)
        self.codebook_size = int(cfg.codebook_size)

    @property
    def frame_rate(self) -> float:
        return self.sample_rate / self.hop_length

    # DAC's decoder is a stack of non-causal convolutions: an output sample depends on about nine frames on each
    # side (measured by perturbing one frame), so 12 frames of context either way make pieces exact.
    left_context = 12
    right_context = 12

    def incremental_decoder(self) -> IncrementalDecoder:
        return IncrementalDecoder(self, left_context=self.left_context, right_context=self.right_context)

    @torch.inference_mode()
    def encode(self, pcm: np.ndarray) -> torch.Tensor:
        """Mono float audio at ``sample_rate`` -> codes [frames, num_codebooks] (right-padded to whole frames)."""
        audio = torch.as_tensor(np.asarray(pcm, dtype=np.float32), device=self.device).view(1, 1, -1)
        if audio.shape[-1] == 0:
            raise InvalidInputError("The voice prompt contains no audio.", param="audio_prompt")
        pad = (-audio.shape[-1]) % self.hop_length
        audio = torch.nn.functional.pad(audio, (0, pad))
        codes = self.model.encode(audio).audio_codes  # [1, n_q, frames]
        return codes[0].transpose(0, 1).long().cpu()

    @torch.inference_mode()
    def _decode_batch(self, codes: torch.Tensor) -> np.ndarray:
        audio = self.model.decode(audio_codes=codes.transpose(1, 2).to(self.device)).audio_values
        return audio.reshape(codes.shape[0], -1).float().cpu().numpy()
