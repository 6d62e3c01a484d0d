"""Voxtral model configuration, independent of the checkpoint layout it was read from.

The network is a Whisper-style audio encoder (two convolutions, learned positions, pre-LayerNorm blocks with
biases), a two-layer projector that reads every ``downsample_factor`` encoder frames as one vector, and a
Llama-style decoder (RMSNorm, RoPE, grouped-query attention, SwiGLU).
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class VoxtralConfig:
    # audio encoder (Whisper large-v3 shapes in the published checkpoints)
    audio_hidden_size: int = 1280
    audio_intermediate_size: int = 5120
    audio_layers: int = 32
    audio_heads: int = 20
    num_mel_bins: int = 128
    #: encoder positions of one audio chunk; a chunk is twice as many mel frames (30 s at 100 frames/s).
    max_source_positions: int = 1500
    #: encoder frames concatenated into one projector input (intermediate_size / hidden_size).
    downsample_factor: int = 4
    projector_act: str = "gelu"
    # text decoder
    vocab_size: int = 131072
    hidden_size: int = 3072
    intermediate_size: int = 8192
    layers: int = 30
    heads: int = 32
    kv_heads: int = 8
    head_dim: int = 128
    rope_theta: float = 1e8
    rms_norm_eps: float = 1e-5
    max_position_embeddings: int = 131072
    tie_word_embeddings: bool = False
    # special tokens
    audio_token_id: int = 24
    bos_token_id: int = 1
    eos_token_id: int = 2

    @property
    def mel_frames(self) -> int:
        """Mel frames of one encoder chunk (the feature extractor pads or splits audio to this)."""
        return 2 * self.max_source_positions

    @property
    def audio_tokens_per_chunk(self) -> int:
        """Decoder positions one audio chunk takes."""
        return self.max_source_positions // self.downsample_factor
