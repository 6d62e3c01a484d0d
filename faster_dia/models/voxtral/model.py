"""The Voxtral network: Whisper-style audio encoder, projector, and a Llama-style decoder over a static,
slot-indexed KV cache.

Weights are plain tensors in one dict per block, converted once at load time (q/k/v and gate/up fused); the
decoder reads and writes cache rows by index, so any subset of slots runs one batched call at its own
positions. Query vectors are scaled by 1/sqrt(head_dim) before :func:`~faster_dia.models.layers.attend`
(which uses scale 1, the Dia references' convention).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from ..layers import (
    KVCache,
    activation,
    apply_rope,
    attend,
    cache_write_rows,
    causal_mask,
    gated_mlp,
    rms_norm,
    rope_cos_sin,
)
from .config import VoxtralConfig


class VoxtralModel:
    def __init__(self, config: VoxtralConfig, state_dict: dict[str, torch.Tensor], *,
                 dtype: torch.dtype = torch.float32, device: str | torch.device = "cpu"):
        self.config = c = config
        self.dtype = dtype
        self.device = torch.device(device)

        def get(name: str, dt: torch.dtype = dtype) -> torch.Tensor:
            return state_dict[name].to(device=self.device, dtype=dt)

        a = "audio_tower."
        self.conv1 = (get(a + "conv1.weight"), get(a + "conv1.bias"))
        self.conv2 = (get(a + "conv2.weight"), get(a + "conv2.bias"))
        # Learned positions stay float32, as transformers keeps them.
        self.audio_positions = get(a + "embed_positions.weight", torch.float32)
        self.audio_norm = (get(a + "layer_norm.weight"), get(a + "layer_norm.bias"))
        self.audio_layers = []
        for i in range(c.audio_layers):
            p = f"{a}layers.{i}."
            q_bias = get(p + "self_attn.q_proj.bias")
            self.audio_layers.append({
                "attn_norm": (get(p + "self_attn_layer_norm.weight"), get(p + "self_attn_layer_norm.bias")),
                "qkv": torch.cat([get(p + f"self_attn.{n}_proj.weight") for n in "qkv"]),
                # k_proj has no bias in Whisper
                "qkv_bias": torch.cat([q_bias, torch.zeros_like(q_bias), get(p + "self_attn.v_proj.bias")]),
                "out": (get(p + "self_attn.out_proj.weight"), get(p + "self_attn.out_proj.bias")),
                "mlp_norm": (get(p + "final_layer_norm.weight"), get(p + "final_layer_norm.bias")),
                "fc1": (get(p + "fc1.weight"), get(p + "fc1.bias")),
                "fc2": (get(p + "fc2.weight"), get(p + "fc2.bias")),
            })
        self.projector = (get("multi_modal_projector.linear_1.weight"), get("multi_modal_projector.linear_2.weight"))
        self.projector_act = activation(c.projector_act)

        t = "language_model.model."
        self.embed_tokens = get(t + "embed_tokens.weight")
        self.norm = get(t + "norm.weight", torch.float32)
        self.lm_head = self.embed_tokens if c.tie_word_embeddings else get("language_model.lm_head.weight")
        self.layers = []
        for i in range(c.layers):
            p = f"{t}layers.{i}."
            self.layers.append({
                "attn_norm": get(p + "input_layernorm.weight", torch.float32),
                "qkv": torch.cat([get(p + f"self_attn.{n}_proj.weight") for n in "qkv"]),
                "out": get(p + "self_attn.o_proj.weight"),
                "mlp_norm": get(p + "post_attention_layernorm.weight", torch.float32),
                "gate_up": torch.cat([get(p + "mlp.gate_proj.weight"), get(p + "mlp.up_proj.weight")]),
                "down": get(p + "mlp.down_proj.weight"),
            })

    # ------------------------------------------------------------------ audio

    def encode_audio(self, features: torch.Tensor) -> torch.Tensor:
        """Mel features [chunks, mel_bins, 2 * max_source_positions] → decoder input vectors
        [chunks * audio_tokens_per_chunk, hidden] (the projector output, in order)."""
        c = self.config
        x = features.to(device=self.device, dtype=self.dtype)
        x = F.gelu(F.conv1d(x, *self.conv1, padding=1))
        x = F.gelu(F.conv1d(x, *self.conv2, stride=2, padding=1))
        x = (x.transpose(1, 2) + self.audio_positions).to(self.dtype)
        N, P, A = x.shape
        heads = c.audio_heads
        hd = A // heads
        scale = hd ** -0.5
        for layer in self.audio_layers:
            h = F.layer_norm(x, (A,), *layer["attn_norm"])
            q, k, v = F.linear(h, layer["qkv"], layer["qkv_bias"]).view(N, P, 3, heads, hd).unbind(2)
            q = q * scale  # scaled before the product, as Whisper does
            a = F.scaled_dot_product_attention(q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2), scale=1.0)
            x = x + F.linear(a.transpose(1, 2).reshape(N, P, A), *layer["out"])
            h = F.layer_norm(x, (A,), *layer["mlp_norm"])
            x = x + F.linear(F.gelu(F.linear(h, *layer["fc1"])), *layer["fc2"])
        x = F.layer_norm(x, (A,), *self.audio_norm)
        x = x.reshape(-1, c.audio_intermediate_size)
        h = F.linear(x, self.projector[0])
        if self.projector_act is not None:
            h = self.projector_act(h)
        return F.linear(h, self.projector[1])

    # ------------------------------------------------------------------ decoder

    def embed(self, tokens: torch.Tensor) -> torch.Tensor:
        return F.embedding(tokens, self.embed_tokens)

    def new_cache(self, rows: int, positions: int) -> KVCache:
        c = self.config
        shape = (rows, c.kv_heads, positions, c.head_dim)
        k = [torch.zeros(shape, dtype=self.dtype, device=self.device) for _ in range(c.layers)]
        v = [torch.zeros(shape, dtype=self.dtype, device=self.device) for _ in range(c.layers)]
        return KVCache(k, v)

    def decode(self, x: torch.Tensor, positions: torch.Tensor, cache: KVCache, rows: torch.Tensor | slice, *,
               kv_length: int, last_only: bool = False) -> torch.Tensor:
        """Run the decoder on input vectors ``x`` [R, T, hidden] at ``positions`` [R, T] (consecutive per row)
        using cache ``rows``; writes the new keys/values and attends causally to cache positions below
        ``kv_length``. Returns float32 logits [R, T, vocab] (or [R, 1, vocab] with ``last_only``)."""
        c = self.config
        R, T, _ = x.shape
        nq, nkv, hd = c.heads, c.kv_heads, c.head_dim
        cos, sin = rope_cos_sin(positions, hd, c.rope_theta, self.dtype)
        cos, sin = cos[:, :, None], sin[:, :, None]
        mask = causal_mask(positions, kv_length)
        write_rows = cache_write_rows(rows, cache.rows, positions)
        scale = 1.0 / math.sqrt(hd)
        for i, layer in enumerate(self.layers):
            h = rms_norm(x, layer["attn_norm"], c.rms_norm_eps)
            qkv = F.linear(h, layer["qkv"]).view(R, T, nq + 2 * nkv, hd)
            qk = apply_rope(qkv[:, :, : nq + nkv], cos, sin)
            cache.k[i][write_rows, :, positions] = qk[:, :, nq:]
            cache.v[i][write_rows, :, positions] = qkv[:, :, nq + nkv:]
            q = (qk[:, :, :nq] * scale).transpose(1, 2)
            a = attend(q, cache.k[i][rows, :, :kv_length], cache.v[i][rows, :, :kv_length], mask)
            x = x + F.linear(a.transpose(1, 2).reshape(R, T, nq * hd), layer["out"])
            x = x + gated_mlp(rms_norm(x, layer["mlp_norm"], c.rms_norm_eps), layer["gate_up"], layer["down"])
        if last_only:
            x = x[:, -1:]
        x = rms_norm(x, self.norm, c.rms_norm_eps)
        return F.linear(x, self.lm_head).float()
