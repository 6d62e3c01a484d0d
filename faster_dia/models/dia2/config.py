"""Dia2 model configuration (Dia2-1B, Dia2-2B), read from the checkpoint's config.json.

config.json has three blocks: ``data`` (streams, vocabularies, special ids, delays), ``model`` (transformer and
depformer sizes) and ``runtime`` (depformer weight groups, context length). Field names here follow the
file, flattened with a ``decoder_``/``depformer_`` prefix for the two networks.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Dia2Config:
    # data
    channels: int = 34  # 2 text streams + one stream per Mimi codebook
    text_vocab_size: int = 49280
    audio_vocab_size: int = 2050  # 2048 Mimi codes + BOS + PAD
    action_vocab_size: int = 2
    text_pad_token_id: int = 3
    text_new_word_token_id: int = 2
    text_zero_token_id: int = 7
    audio_pad_token_id: int = 2049
    audio_bos_token_id: int = 2048
    action_pad_token_id: int = 0
    action_new_word_token_id: int = 1
    delay_pattern: tuple[int, ...] = (16,) + (18,) * 31
    first_word_min_start: int = 0  # in the file, unused by the reference runtime
    max_pad: int = 0  # in the file, unused by the reference runtime (it pads at most 6 steps)
    second_stream_ahead: int = 2
    tokenizer_path: str | None = (
        None  # a tokenizer elsewhere than the checkpoint's own files; unset on the Hub
    )
    # main transformer
    decoder_layers: int = 28
    decoder_hidden_size: int = 2048
    decoder_intermediate_size: int = 6144
    decoder_heads: int = 16
    decoder_kv_heads: int = 8
    decoder_head_dim: int = 128
    decoder_low_rank_dim: int | None = None  # text embedding width when factorised
    # depformer (one stage per codebook 1..31)
    depformer_layers: int = 4
    depformer_hidden_size: int = 1024
    depformer_intermediate_size: int = 3072
    depformer_heads: int = 8
    depformer_kv_heads: int = 8
    depformer_head_dim: int = 128
    depformer_apply_rope: bool = True
    depformer_text_embedding: bool = False
    # Gated MLPs: activation of the gate half, then of the up half (the decoder's is the file's model.linear).
    decoder_mlp_activations: tuple[str, str] = ("silu", "linear")
    depformer_mlp_activations: tuple[str, str] = ("silu", "linear")
    dropout: float = 0.0  # in the file, unused at inference
    norm_eps: float = 1e-6
    rope_min_timescale: float = 1.0
    rope_max_timescale: float = 10000.0
    # runtime
    weights_schedule: tuple[int, ...] = (0,) * 31
    max_context_steps: int = 1500

    # The tokenizer reports BOS 0, but the reference runtime feeds 1 (``bos_token_id or 1``).
    text_bos_token_id: int = 1

    @property
    def num_codebooks(self) -> int:
        return len(self.delay_pattern)

    @property
    def codebook_size(self) -> int:
        return self.audio_vocab_size - 2

    @property
    def max_delay(self) -> int:
        return max(self.delay_pattern)

    @property
    def weight_groups(self) -> int:
        return max(self.weights_schedule) + 1

    @property
    def depformer_stages(self) -> int:
        """Depformer stages per frame: one per codebook after the first."""
        return self.num_codebooks - 1

    @property
    def weight_group_ids(self) -> tuple[int, ...]:
        """The distinct depformer weight groups, ascending (each has its own depformer_in/in_proj/out_proj)."""
        return tuple(sorted(set(self.weights_schedule)))
