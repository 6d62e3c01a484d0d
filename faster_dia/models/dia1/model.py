"""The Dia-1.6B network: a byte-level text encoder and a 9-channel audio decoder.

Written for decoding speed: q/k/v and gate/up are fused into one matrix each at load time, cross-attention
keys/values are computed once per request, and the decoder writes into a preallocated static KV cache whose
rows belong to batch slots, so one call steps many requests that sit at different positions.

Numerics follow the reference exactly: attention scale 1.0 (not 1/sqrt(d)), RMSNorm in float32, RoPE in
the "rotate half" layout, SwiGLU MLP, grouped-query self-attention in the decoder (the primitives are in
:mod:`faster_dia.models.layers`, shared with Dia2). The original checkpoint also rotates cross-attention queries
(decoder position) and keys (text position); 0626 does not.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from ..layers import (
    apply_rope,
    apply_rope_signed,
    attend,
    cache_write_rows,
    causal_mask,
    gated_mlp,
    rope_cos_sin,
    signed_sin,
    step_mask,
)
from ..layers import rms_norm as _rms_norm
from .config import Dia1Config


def rms_norm(x: torch.Tensor, weight: torch.Tensor, eps: float) -> torch.Tensor:
    # The reference's written-out float32 statistics below float32 (see layers.rms_norm).
    return _rms_norm(x, weight, eps, written_out=True)


@dataclass
class DecoderCache:
    """Static per-layer caches for ``rows`` decoder rows (two rows per request: conditional, unconditional).

    ``self_k/self_v[l]``: [rows, kv_heads, max_positions, head_dim], written in place at each row's position.
    ``cross_k/cross_v[l]``: [rows, cross_heads, max_text, cross_head_dim], written once per request.
    ``cross_mask``: [rows, max_text] True where the text position is real.
    """

    self_k: list[torch.Tensor]
    self_v: list[torch.Tensor]
    cross_k: list[torch.Tensor]
    cross_v: list[torch.Tensor]
    cross_mask: torch.Tensor

    @property
    def rows(self) -> int:
        return self.cross_mask.shape[0]


class Dia1Model(nn.Module):
    def __init__(self, config: Dia1Config, *, dtype: torch.dtype = torch.float32, device: str | torch.device = "cpu"):
        super().__init__()
        self.config = c = config
        self.dtype = dtype

        def param(*shape: int, dt: torch.dtype = dtype) -> nn.Parameter:
            return nn.Parameter(torch.empty(*shape, dtype=dt, device=device), requires_grad=False)

        eh, dh = c.encoder_hidden_size, c.decoder_hidden_size
        enc_q, enc_kv = c.encoder_heads * c.encoder_head_dim, c.encoder_kv_heads * c.encoder_head_dim
        dec_q, dec_kv = c.decoder_heads * c.decoder_head_dim, c.decoder_kv_heads * c.decoder_head_dim
        cross_q, cross_kv = c.cross_heads * c.cross_head_dim, c.cross_kv_heads * c.cross_head_dim

        self.text_embedding = param(c.text_vocab_size, eh)
        self.enc_layers = nn.ModuleList()
        for _ in range(c.encoder_layers):
            layer = nn.Module()
            layer.attn_norm = param(eh, dt=torch.float32)
            layer.qkv = param(enc_q + 2 * enc_kv, eh)
            layer.out = param(eh, enc_q)
            layer.mlp_norm = param(eh, dt=torch.float32)
            layer.gate_up = param(2 * c.encoder_intermediate_size, eh)
            layer.down = param(eh, c.encoder_intermediate_size)
            self.enc_layers.append(layer)
        self.enc_norm = param(eh, dt=torch.float32)

        # One table for the nine channels; channel c's token t is row c * vocab + t.
        self.audio_embedding = param(c.channels * c.audio_vocab_size, dh)
        self.dec_layers = nn.ModuleList()
        for _ in range(c.decoder_layers):
            layer = nn.Module()
            layer.self_norm = param(dh, dt=torch.float32)
            layer.self_qkv = param(dec_q + 2 * dec_kv, dh)
            layer.self_out = param(dh, dec_q)
            layer.cross_norm = param(dh, dt=torch.float32)
            layer.cross_q = param(cross_q, dh)
            layer.cross_kv = param(2 * cross_kv, eh)
            layer.cross_out = param(dh, cross_q)
            layer.mlp_norm = param(dh, dt=torch.float32)
            layer.gate_up = param(2 * c.decoder_intermediate_size, dh)
            layer.down = param(dh, c.decoder_intermediate_size)
            self.dec_layers.append(layer)
        self.dec_norm = param(dh, dt=torch.float32)
        self.logits_head = param(c.channels * c.audio_vocab_size, dh)
        self.register_buffer(
            "channel_offsets",
            torch.arange(c.channels, device=device, dtype=torch.long) * c.audio_vocab_size,
            persistent=False,
        )

    # ------------------------------------------------------------------ loading

    @classmethod
    def from_hf_state_dict(
        cls,
        config: Dia1Config,
        state_dict: dict[str, torch.Tensor],
        *,
        dtype: torch.dtype = torch.float32,
        device: str | torch.device = "cpu",
    ) -> Dia1Model:
        """Build the model from tensors in transformers naming; fuses q/k/v and cross k/v here, once."""
        model = cls(config, dtype=dtype, device=device)
        sd = state_dict

        def put(dst: nn.Parameter, *names: str) -> None:
            src = torch.cat([sd[n] for n in names], dim=0) if len(names) > 1 else sd[names[0]]
            if tuple(src.shape) != tuple(dst.shape):
                raise ValueError(f"{names}: expected shape {tuple(dst.shape)}, got {tuple(src.shape)}")
            dst.data.copy_(src.to(dtype=dst.dtype, device=dst.device))

        put(model.text_embedding, "model.encoder.embedding.weight")
        for i, layer in enumerate(model.enc_layers):
            p = f"model.encoder.layers.{i}."
            put(layer.attn_norm, p + "pre_sa_norm.weight")
            put(layer.qkv, *(p + f"self_attention.{n}_proj.weight" for n in "qkv"))
            put(layer.out, p + "self_attention.o_proj.weight")
            put(layer.mlp_norm, p + "post_sa_norm.weight")
            put(layer.gate_up, p + "mlp.gate_up_proj.weight")
            put(layer.down, p + "mlp.down_proj.weight")
        put(model.enc_norm, "model.encoder.norm.weight")

        put(model.audio_embedding, "model.decoder.embeddings.embed.weight")
        for i, layer in enumerate(model.dec_layers):
            p = f"model.decoder.layers.{i}."
            put(layer.self_norm, p + "pre_sa_norm.weight")
            put(layer.self_qkv, *(p + f"self_attention.{n}_proj.weight" for n in "qkv"))
            put(layer.self_out, p + "self_attention.o_proj.weight")
            put(layer.cross_norm, p + "pre_ca_norm.weight")
            put(layer.cross_q, p + "cross_attention.q_proj.weight")
            put(layer.cross_kv, p + "cross_attention.k_proj.weight", p + "cross_attention.v_proj.weight")
            put(layer.cross_out, p + "cross_attention.o_proj.weight")
            put(layer.mlp_norm, p + "pre_mlp_norm.weight")
            put(layer.gate_up, p + "mlp.gate_up_proj.weight")
            put(layer.down, p + "mlp.down_proj.weight")
        put(model.dec_norm, "model.decoder.norm.weight")
        put(model.logits_head, "logits_dense.weight")
        return model

    @property
    def device(self) -> torch.device:
        return self.text_embedding.device

    def _rope_table(self, positions: torch.Tensor, head_dim: int) -> tuple[torch.Tensor, torch.Tensor]:
        """cos and signed sin (see layers.apply_rope_signed) for decoder ``positions`` [R, T] -> [R, T, 1,
        head_dim], from a table built once (same arithmetic as computing them on the fly, so the values are
        identical)."""
        tables = self.__dict__.setdefault("_rope_tables", {})
        key = (head_dim, positions.device)
        if key not in tables:
            every = torch.arange(self.config.audio_length, device=positions.device)
            cos, sin = rope_cos_sin(every, head_dim, self.config.rope_theta, self.dtype)
            tables[key] = cos, signed_sin(sin)
        cos, sin = tables[key]
        return cos[positions][:, :, None], sin[positions][:, :, None]

    # ------------------------------------------------------------------ encoder

    def encode(self, text: torch.Tensor, text_mask: torch.Tensor) -> torch.Tensor:
        """text, text_mask: [B, S] -> encoder states [B, S, encoder_hidden]. Padded positions are masked out
        as keys; their own outputs are meaningless and never read."""
        c = self.config
        B, S = text.shape
        x = F.embedding(text, self.text_embedding)
        positions = torch.arange(S, device=text.device).expand(B, S)
        cos, sin = rope_cos_sin(positions, c.encoder_head_dim, c.rope_theta, x.dtype)
        cos, sin = cos[:, :, None], sin[:, :, None]
        attn_mask = text_mask[:, None, None, :]
        nq, nkv, hd = c.encoder_heads, c.encoder_kv_heads, c.encoder_head_dim
        for layer in self.enc_layers:
            h = rms_norm(x, layer.attn_norm, c.norm_eps)
            qkv = F.linear(h, layer.qkv).view(B, S, nq + 2 * nkv, hd)
            qk = apply_rope(qkv[:, :, : nq + nkv], cos, sin).transpose(1, 2)
            q, k = qk[:, :nq], qk[:, nq:]
            v = qkv[:, :, nq + nkv :].transpose(1, 2)
            a = F.scaled_dot_product_attention(q, k, v, attn_mask=attn_mask, scale=1.0, enable_gqa=nq != nkv)
            x = x + F.linear(a.transpose(1, 2).reshape(B, S, nq * hd), layer.out)
            x = x + gated_mlp(rms_norm(x, layer.mlp_norm, c.norm_eps), layer.gate_up, layer.down)
        return rms_norm(x, self.enc_norm, c.norm_eps)

    # ------------------------------------------------------------------ caches

    def new_cache(self, rows: int, *, max_positions: int | None = None, max_text: int | None = None) -> DecoderCache:
        c = self.config
        T = max_positions or c.audio_length
        S = max_text or c.text_length
        dev, dt = self.device, self.dtype

        def zeros(*shape: int) -> list[torch.Tensor]:
            return [torch.zeros(*shape, device=dev, dtype=dt) for _ in range(c.decoder_layers)]

        return DecoderCache(
            self_k=zeros(rows, c.decoder_kv_heads, T, c.decoder_head_dim),
            self_v=zeros(rows, c.decoder_kv_heads, T, c.decoder_head_dim),
            cross_k=zeros(rows, c.cross_kv_heads, S, c.cross_head_dim),
            cross_v=zeros(rows, c.cross_kv_heads, S, c.cross_head_dim),
            cross_mask=torch.zeros(rows, S, device=dev, dtype=torch.bool),
        )

    def fill_cross_cache(
        self, cache: DecoderCache, rows: torch.Tensor, encoder_states: torch.Tensor, text_mask: torch.Tensor
    ) -> None:
        """Project encoder states [R, S, E] to cross-attention keys/values once and store them in ``rows``."""
        c = self.config
        R, S, _ = encoder_states.shape
        nkv, hd = c.cross_kv_heads, c.cross_head_dim
        cache.cross_mask[rows] = False
        cache.cross_mask[rows, :S] = text_mask
        if c.cross_attention_rope:
            positions = torch.arange(S, device=encoder_states.device).expand(R, S)
            cos, sin = rope_cos_sin(positions, hd, c.rope_theta, self.dtype)
            cos, sin = cos[:, :, None], sin[:, :, None]
        for i, layer in enumerate(self.dec_layers):
            k, v = F.linear(encoder_states, layer.cross_kv).split(nkv * hd, dim=-1)
            k = k.view(R, S, nkv, hd)
            if c.cross_attention_rope:
                k = apply_rope(k, cos, sin)
            k = k.transpose(1, 2)
            v = v.view(R, S, nkv, hd).transpose(1, 2)
            cache.cross_k[i][rows, :, :S] = k
            cache.cross_v[i][rows, :, :S] = v

    # ------------------------------------------------------------------ decoder

    def decode(
        self,
        tokens: torch.Tensor,
        positions: torch.Tensor,
        cache: DecoderCache,
        rows: torch.Tensor | slice,
        *,
        kv_length: int,
        text_length: int,
    ) -> torch.Tensor:
        """Run the decoder for ``tokens`` [R, T, 9] at ``positions`` [R, T] (consecutive per row) using cache
        ``rows`` (an index tensor or slice selecting R rows). Writes the new keys/values, attends to cache
        positions < ``kv_length`` that are <= the query position, and to the first ``text_length`` text
        positions. Returns logits [R, T, 9, vocab] in float32."""
        c = self.config
        R, T, _ = tokens.shape
        x = F.embedding(tokens + self.channel_offsets, self.audio_embedding).sum(dim=2)
        nq, nkv, hd = c.decoder_heads, c.decoder_kv_heads, c.decoder_head_dim
        cq, chd = c.cross_heads, c.cross_head_dim
        # Built once and shared by every layer: RoPE tables, masks (an additive bias for one query per row).
        cos, sin = self._rope_table(positions, hd)
        ccos, csin = (cos, sin) if chd == hd else self._rope_table(positions, chd)
        self_mask = step_mask(causal_mask(positions, kv_length), T)
        cross_mask = step_mask(cache.cross_mask[rows, :text_length][:, None, None, :], T)  # [R, 1, 1, S]
        write_rows = cache_write_rows(rows, cache.rows, positions)

        for i, layer in enumerate(self.dec_layers):
            h = rms_norm(x, layer.self_norm, c.norm_eps)
            qkv = F.linear(h, layer.self_qkv).view(R, T, nq + 2 * nkv, hd)
            qk = apply_rope_signed(qkv[:, :, : nq + nkv], cos, sin)
            q = qk[:, :, :nq].transpose(1, 2)
            cache.self_k[i][write_rows, :, positions] = qk[:, :, nq:]
            cache.self_v[i][write_rows, :, positions] = qkv[:, :, nq + nkv :]
            keys = cache.self_k[i][rows, :, :kv_length]
            values = cache.self_v[i][rows, :, :kv_length]
            a = attend(q, keys, values, self_mask)
            x = x + F.linear(a.transpose(1, 2).reshape(R, T, nq * hd), layer.self_out)

            h = rms_norm(x, layer.cross_norm, c.norm_eps)
            q = F.linear(h, layer.cross_q).view(R, T, cq, chd)
            if c.cross_attention_rope:
                q = apply_rope_signed(q, ccos, csin)
            q = q.transpose(1, 2)
            keys = cache.cross_k[i][rows, :, :text_length]
            values = cache.cross_v[i][rows, :, :text_length]
            a = attend(q, keys, values, cross_mask)
            x = x + F.linear(a.transpose(1, 2).reshape(R, T, cq * chd), layer.cross_out)

            x = x + gated_mlp(rms_norm(x, layer.mlp_norm, c.norm_eps), layer.gate_up, layer.down)

        x = rms_norm(x, self.dec_norm, c.norm_eps)
        return F.linear(x, self.logits_head).float().view(R, T, c.channels, c.audio_vocab_size)

    @torch.inference_mode()
    def forward(self, text: torch.Tensor, text_mask: torch.Tensor, decoder_tokens: torch.Tensor) -> torch.Tensor:
        """Teacher-forced logits for a whole sequence: text [B, S], decoder_tokens [B, T, 9] (delayed layout,
        starting with the BOS frame) -> [B, T, 9, vocab]. Used for checks, not for generation."""
        B, T, _ = decoder_tokens.shape
        S = text.shape[1]
        cache = self.new_cache(B, max_positions=T, max_text=S)
        rows = torch.arange(B, device=text.device)
        self.fill_cross_cache(cache, rows, self.encode(text, text_mask), text_mask)
        positions = torch.arange(T, device=text.device).expand(B, T)
        return self.decode(decoder_tokens, positions, cache, rows, kv_length=T, text_length=S)
