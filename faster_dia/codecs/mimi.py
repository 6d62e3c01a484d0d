"""Mimi 24 kHz codec (32 codebooks of 2048 codes, 1920 samples per frame at 12.5 Hz) through transformers' MimiModel.

Dia2 uses all 32 codebooks. Decoded audio is clamped to [-1, 1], as the Dia2 reference does.
"""

from __future__ import annotations

import logging

import numpy as np
import torch

from ..errors import InvalidInputError
from . import TransformersCodec
from .incremental import IncrementalDecoder

log = logging.getLogger(__name__)

DEFAULT_MIMI = "kyutai/mimi"

#: Newer transformers nest Mimi's halves (``encoder.encoder_seanet.layers…``, ``decoder.decoder_transformer…``)
#: and rename on load; the published kyutai/mimi file (and ``save_pretrained``) keeps the flat names of the
#: original port (``encoder.layers…``, ``decoder_transformer…``). Model name prefix -> file name prefix; with
#: transformers that still use the flat names, none matches.
FILE_PREFIXES = (
    ("encoder.encoder_seanet.", "encoder."),
    ("encoder.encoder_transformer.", "encoder_transformer."),
    ("encoder.downsample.", "downsample."),
    ("decoder.upsample.", "upsample."),
    ("decoder.decoder_transformer.", "decoder_transformer."),
    ("decoder.decoder_seanet.", "decoder."),
)


class MimiCodec(TransformersCodec):
    transformers_class = "MimiModel"
    label = "Mimi"
    model_type = "mimi"
    needed_by = "Dia2"
    default_repo = DEFAULT_MIMI
    file_prefixes = FILE_PREFIXES

    def __init__(self, model, *, name: str):
        super().__init__(model, name=name)
        cfg = model.config
        self.sample_rate = int(cfg.sampling_rate)
        self.frame_rate = float(cfg.frame_rate)
        self.hop_length = round(self.sample_rate / self.frame_rate)
        self.num_codebooks = int(cfg.num_quantizers)
        self.codebook_size = int(cfg.codebook_size)

    # Mimi's decoder is causal (no look-ahead: padding after a result changes none of its samples) but its
    # transformer reaches back a sliding window of 250 frames per layer. 250 frames (20 s) of history make
    # streamed audio equal the full decode for results up to 20 s and a close approximation beyond.
    left_context = 250
    right_context = 0

    def incremental_decoder(self) -> IncrementalDecoder:
        return IncrementalDecoder(self, left_context=self.left_context, right_context=self.right_context)

    @torch.inference_mode()
    def encode(self, pcm: np.ndarray) -> torch.Tensor:
        """Mono float audio at ``sample_rate`` -> codes [frames, num_codebooks], frames = ceil(samples / hop_length).

        The audio is right-padded with silence to whole frames first.
        """
        audio = torch.as_tensor(np.asarray(pcm, dtype=np.float32), device=self.device).view(1, 1, -1)
        if audio.shape[-1] == 0:
            raise InvalidInputError("The voice prompt contains no audio.", param="audio_prompt")
        pad = (-audio.shape[-1]) % self.hop_length
        audio = torch.nn.functional.pad(audio, (0, pad))
        codes = self.model.encode(audio, num_quantizers=self.num_codebooks).audio_codes  # [1, n_q, frames]
        return codes[0].transpose(0, 1).long().cpu()

    def decode(self, codes: torch.Tensor) -> np.ndarray:
        """Codes [frames, num_codebooks] -> mono float32 audio of frames * hop_length samples in [-1, 1]."""
        if codes.shape[0] == 0:
            return np.zeros(0, dtype=np.float32)
        if codes.ndim != 2 or codes.shape[1] != self.num_codebooks:
            raise InvalidInputError(
                f"Mimi codes must have shape [frames, {self.num_codebooks}], got {list(codes.shape)}."
            )
        return super().decode(codes)

    @torch.inference_mode()
    def _decode_batch(self, codes: torch.Tensor) -> np.ndarray:
        audio = self.model.decode(codes.transpose(1, 2).long().to(self.device)).audio_values
        return audio.clamp(-1.0, 1.0).reshape(codes.shape[0], -1).float().cpu().numpy()
