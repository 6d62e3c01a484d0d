"""Dia-1.6B model configuration, independent of the checkpoint schema it was read from.

Two config.json schemas exist on the Hub (see docs/ARCHITECTURE.md): the nari "v0.1" schema of the original
``nari-labs/Dia-1.6B`` and the transformers ``DiaConfig`` schema of ``nari-labs/Dia-1.6B-0626``. Both are
read into this one dataclass by :mod:`faster_dia.models.dia1.checkpoint`.
"""

from __future__ import annotations

from dataclasses import dataclass, field

#: The original April 2025 checkpoint: cross-attention applies RoPE, guided logits are sampled directly.
VARIANT_ORIGINAL = "dia-1.6b"
#: The June 2025 checkpoint (and the transformers port): no cross-attention RoPE, guided top-k chooses
#: candidates and the conditional logits are sampled.
VARIANT_0626 = "dia-1.6b-0626"


@dataclass(frozen=True)
class Dia1Config:
    variant: str
    # text encoder
    encoder_layers: int = 12
    encoder_hidden_size: int = 1024
    encoder_intermediate_size: int = 4096
    encoder_heads: int = 16
    encoder_kv_heads: int = 16
    encoder_head_dim: int = 128
    text_vocab_size: int = 256
    text_length: int = 1024
    # audio decoder
    decoder_layers: int = 18
    decoder_hidden_size: int = 2048
    decoder_intermediate_size: int = 8192
    decoder_heads: int = 16
    decoder_kv_heads: int = 4
    decoder_head_dim: int = 128
    cross_heads: int = 16
    cross_kv_heads: int = 16
    cross_head_dim: int = 128
    audio_vocab_size: int = 1028
    audio_length: int = 3072
    channels: int = 9
    # shared
    norm_eps: float = 1e-5
    rope_theta: float = 10000.0
    delay_pattern: tuple[int, ...] = field(default=(0, 8, 9, 10, 11, 12, 13, 14, 15))
    eos_token_id: int = 1024
    pad_token_id: int = 1025
    bos_token_id: int = 1026
    text_pad_token_id: int = 0

    @property
    def cross_attention_rope(self) -> bool:
        return self.variant == VARIANT_ORIGINAL

    @property
    def max_delay(self) -> int:
        return max(self.delay_pattern)
