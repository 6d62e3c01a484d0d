"""The Dia2 network: a decoder-only main transformer over 34 streams per frame and a small depth transformer
("depformer") that fills codebooks 1..31 of each frame one after another.

Written for decoding speed, in the same way as the Dia-1.6B network: q/k/v are fused into one matrix at load
time (the checkpoint already fuses the MLP's gate/up and the depformer's q/k/v), the action and codebook-0 heads
are one matrix, the main transformer writes into a preallocated static KV cache whose rows belong to batch slots
(so one call steps many requests that sit at different positions), and the depformer keeps a tiny per-frame
cache over its 31 stages.

Numerics follow the reference: per-head RMSNorm on queries and keys *before* RoPE, attention scale 1.0 (not
1/sqrt(d)), RoPE in the "rotate half" layout with inv_freq = 1 / (min * (max/min)^(2i/d)), gated MLPs
(SiLU(gate) * up in the published models), RMSNorm statistics in float32, logits in float32 (the primitives are in
:mod:`faster_dia.models.layers`, shared with Dia-1.6B). Unlike the reference, the RoPE tables grow with the
cache, so positions past ``max_context_steps`` (a voice prefix plus a long generation) work.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from ..layers import (
    KVCache,
    activation,
    apply_rope_signed,
    attend,
    cache_write_rows,
    causal_mask,
    gated_mlp,
    rms_norm,
    rope_cos_sin,
    signed_sin,
    step_mask,
)
from .config import Dia2Config


@dataclass
class Dia2DepformerCache:
    """Per-frame depformer cache: ``k[l]``, ``v[l]``: [rows, heads, stages, head_dim]. Stage s writes slot s and
    reads slots 0..s, so a new frame overwrites the previous one without clearing."""

    k: list[torch.Tensor]
    v: list[torch.Tensor]

    @property
    def rows(self) -> int:
        return self.k[0].shape[0]


class Dia2Model(nn.Module):
    def __init__(
        self, config: Dia2Config, *, dtype: torch.dtype = torch.float32, device: str | torch.device = "cpu"
    ):
        super().__init__()
        self.config = c = config
        self.dtype = dtype
        if c.decoder_heads % c.decoder_kv_heads:
            raise ValueError(
                f"decoder_heads {c.decoder_heads} is not a multiple of kv_heads {c.decoder_kv_heads}"
            )
        if c.depformer_kv_heads != c.depformer_heads:
            # The checkpoint's fused depformer in_proj holds as many key/value heads as query heads.
            raise ValueError("depformer_kv_heads must equal depformer_heads")
        self.stages = c.depformer_stages
        if len(c.weights_schedule) < self.stages:
            raise ValueError(f"weights_schedule has {len(c.weights_schedule)} entries, need {self.stages}")
        # Checkpoint group ids, and each stage's index into the stacked per-group weights.
        self.group_ids = list(c.weight_group_ids)
        self.stage_group = [self.group_ids.index(g) for g in c.weights_schedule[: self.stages]]
        self.mlp_activations = tuple(activation(a) for a in c.decoder_mlp_activations)
        self.dep_mlp_activations = tuple(activation(a) for a in c.depformer_mlp_activations)
        # Stage heads predict codes only: the reference cuts its logits below the first special id.
        self.code_limit = min(c.audio_pad_token_id, c.audio_bos_token_id)

        def param(*shape: int, dt: torch.dtype = dtype) -> nn.Parameter:
            return nn.Parameter(torch.empty(*shape, dtype=dt, device=device), requires_grad=False)

        E, Hd = c.decoder_hidden_size, c.decoder_intermediate_size
        text_dim = c.decoder_low_rank_dim or E
        q_dim, kv_dim = c.decoder_heads * c.decoder_head_dim, c.decoder_kv_heads * c.decoder_head_dim

        # main transformer
        self.text_embedding = param(c.text_vocab_size, text_dim)
        self.text_main_proj = param(E, text_dim)
        self.text_second_proj = param(E, text_dim)
        # One table for the 32 codebooks; codebook k's token t is row k * vocab + t.
        self.audio_embedding = param(c.num_codebooks * c.audio_vocab_size, E)
        self.layers = nn.ModuleList()
        for _ in range(c.decoder_layers):
            layer = nn.Module()
            layer.attn_norm = param(E, dt=torch.float32)
            layer.qkv = param(q_dim + 2 * kv_dim, E)
            # q_norm repeated over the query heads, then k_norm over the key heads: one norm call for both.
            layer.qk_norm = param(c.decoder_heads + c.decoder_kv_heads, c.decoder_head_dim, dt=torch.float32)
            layer.out = param(E, q_dim)
            layer.mlp_norm = param(E, dt=torch.float32)
            layer.gate_up = param(2 * Hd, E)
            layer.down = param(E, Hd)
            self.layers.append(layer)
        self.norm = param(E, dt=torch.float32)
        # action head (rows 0..1) and codebook-0 head (the rest) as one matrix.
        self.heads = param(c.action_vocab_size + c.audio_vocab_size, E)

        # depformer; per-stage and per-group weights are stacked along the first axis.
        D, Hdp, G = c.depformer_hidden_size, c.depformer_intermediate_size, len(self.group_ids)
        dep_q = c.depformer_heads * c.depformer_head_dim
        self.dep_audio_embedding = param(self.stages, c.audio_vocab_size, D)
        if c.depformer_text_embedding:
            self.dep_text_embedding = param(c.text_vocab_size, D)
            self.dep_text_main_proj = param(D, D)
            self.dep_text_second_proj = param(D, D)
        self.dep_in = param(G, D, E)
        self.dep_layers = nn.ModuleList()
        for _ in range(c.depformer_layers):
            layer = nn.Module()
            layer.attn_norm = param(D, dt=torch.float32)
            layer.qkv = param(G, 3 * dep_q, D)
            layer.qk_norm = param(2 * c.depformer_heads, c.depformer_head_dim, dt=torch.float32)
            layer.out = param(G, D, dep_q)
            layer.mlp_norm = param(D, dt=torch.float32)
            layer.gate_up = param(2 * Hdp, D)
            layer.down = param(D, Hdp)
            self.dep_layers.append(layer)
        self.dep_norm = param(D, dt=torch.float32)
        # Only the code rows of each stage head (2048); BOS/PAD are never predicted there.
        self.dep_logits = param(self.stages, self.code_limit, D)

        self.register_buffer(
            "audio_offsets",
            torch.arange(c.num_codebooks, device=device, dtype=torch.long) * c.audio_vocab_size,
            persistent=False,
        )
        self._set_rope(c.max_context_steps + 1, device)
        cos, sin = self._rope_tables(self.stages, c.depformer_head_dim, dtype, torch.device(device))
        self.register_buffer("dep_rope_cos", cos, persistent=False)
        self.register_buffer("dep_rope_sin", sin, persistent=False)

    # ------------------------------------------------------------------ loading

    @classmethod
    def from_state_dict(
        cls,
        config: Dia2Config,
        state_dict: dict[str, torch.Tensor],
        *,
        dtype: torch.dtype = torch.float32,
        device: str | torch.device = "cpu",
    ) -> Dia2Model:
        """Build the model from tensors in the published checkpoint naming (``transformer.*``, ``depformer.*``);
        fuses and stacks here, once. Raises ValueError naming the tensor on any shape mismatch."""
        c = config
        model = cls(c, dtype=dtype, device=device)
        sd = state_dict

        def check(name: str, shape: tuple[int, ...]) -> torch.Tensor:
            if tuple(sd[name].shape) != shape:
                raise ValueError(f"{name}: expected shape {shape}, got {tuple(sd[name].shape)}")
            return sd[name]

        def put(dst: torch.Tensor, *names: str, rows: tuple[int, ...] | None = None) -> None:
            """Copy ``names`` stacked along rows into ``dst``; ``rows`` = each tensor's row count (equal shares
            by default)."""
            rows = rows or (dst.shape[0] // len(names),) * len(names)
            src = torch.cat([check(n, (r, dst.shape[1])) for n, r in zip(names, rows, strict=True)], dim=0)
            if src.shape != dst.shape:
                raise ValueError(
                    f"{', '.join(names)}: expected {tuple(dst.shape)} in all, got {tuple(src.shape)}"
                )
            dst.data.copy_(src.to(dtype=dst.dtype, device=dst.device))

        def put_vector(dst: torch.Tensor, name: str) -> None:
            src = sd[name]
            if tuple(src.shape) != (dst.shape[-1],):
                raise ValueError(f"{name}: expected shape {(dst.shape[-1],)}, got {tuple(src.shape)}")
            dst.data.copy_(src.to(dtype=dst.dtype, device=dst.device).expand_as(dst))

        p = "transformer."
        A = c.audio_vocab_size
        put(model.text_embedding, p + "text_embed.embedding.weight")
        put(model.text_main_proj, p + "text_embed.main_proj.weight")
        put(model.text_second_proj, p + "text_embed.second_proj.weight")
        put(model.audio_embedding, *(p + f"audio_embeds.{k}.weight" for k in range(c.num_codebooks)))
        H, KV = c.decoder_heads, c.decoder_kv_heads
        for i, layer in enumerate(model.layers):
            lp = f"{p}layers.{i}."
            put_vector(layer.attn_norm, lp + "pre_norm.weight")
            qkv_rows = (H * c.decoder_head_dim, KV * c.decoder_head_dim, KV * c.decoder_head_dim)
            put(layer.qkv, *(lp + f"attn.{n}_proj.weight" for n in "qkv"), rows=qkv_rows)
            put_vector(layer.qk_norm[:H], lp + "attn.q_norm.weight")
            put_vector(layer.qk_norm[H:], lp + "attn.k_norm.weight")
            put(layer.out, lp + "attn.o_proj.weight")
            put_vector(layer.mlp_norm, lp + "post_norm.weight")
            put(layer.gate_up, lp + "mlp.wi.weight")
            put(layer.down, lp + "mlp.wo.weight")
        put_vector(model.norm, p + "norm.weight")
        put(model.heads, p + "action_head.weight", p + "cb0_head.weight", rows=(c.action_vocab_size, A))

        p = "depformer."
        D = c.depformer_hidden_size
        for s in range(model.stages):
            model.dep_audio_embedding.data[s].copy_(check(p + f"audio_embeds.{s}.weight", (A, D)))
            model.dep_logits.data[s].copy_(check(p + f"logits.{s}.weight", (A, D))[: model.code_limit])
        if c.depformer_text_embedding:
            put(model.dep_text_embedding, p + "text_embed.embedding.weight")
            put(model.dep_text_main_proj, p + "text_embed.main_proj.weight")
            put(model.dep_text_second_proj, p + "text_embed.second_proj.weight")
        for j, g in enumerate(model.group_ids):
            put(model.dep_in[j], p + f"depformer_in.{g}.weight")
        Hp = c.depformer_heads
        for i, layer in enumerate(model.dep_layers):
            lp = f"{p}layers.{i}."
            put_vector(layer.attn_norm, lp + "pre_norm.weight")
            for j, g in enumerate(model.group_ids):
                put(layer.qkv[j], lp + f"self_attention.in_proj.{g}.weight")
                put(layer.out[j], lp + f"self_attention.out_proj.{g}.weight")
            put_vector(layer.qk_norm[:Hp], lp + "self_attention.q_norm.weight")
            put_vector(layer.qk_norm[Hp:], lp + "self_attention.k_norm.weight")
            put_vector(layer.mlp_norm, lp + "post_norm.weight")
            put(layer.gate_up, lp + "mlp.wi.weight")
            put(layer.down, lp + "mlp.wo.weight")
        put_vector(model.dep_norm, p + "norm.weight")
        return model

    @property
    def device(self) -> torch.device:
        return self.text_embedding.device

    # ------------------------------------------------------------------ helpers

    def _rope_tables(
        self, length: int, head_dim: int, dtype: torch.dtype, device: torch.device
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """cos and signed sin (see layers.apply_rope_signed) [length, head_dim] for positions 0..length-1, with
        the reference's float32 arithmetic so the values match it exactly where both exist."""
        c = self.config
        positions = torch.arange(length, device=device)
        cos, sin = rope_cos_sin(
            positions, head_dim, c.rope_max_timescale, dtype, min_timescale=c.rope_min_timescale
        )
        return cos, signed_sin(sin)

    def _set_rope(self, length: int, device: str | torch.device) -> None:
        cos, sin = self._rope_tables(length, self.config.decoder_head_dim, self.dtype, torch.device(device))
        self.register_buffer("rope_cos", cos, persistent=False)
        self.register_buffer("rope_sin", sin, persistent=False)

    def _rope(self, positions: torch.Tensor, length: int) -> tuple[torch.Tensor, torch.Tensor]:
        """cos/sin for ``positions`` [R, T] -> [R, T, 1, head_dim]. The tables cover ``length`` positions (grown
        here if needed, a Python-side check only, so no device sync per step)."""
        if self.rope_cos.shape[0] < length:
            self._set_rope(length, self.device)
        return self.rope_cos[positions][:, :, None], self.rope_sin[positions][:, :, None]

    def _text_embed(
        self,
        main: torch.Tensor,
        second: torch.Tensor,
        table: torch.Tensor,
        main_proj: torch.Tensor,
        second_proj: torch.Tensor,
    ) -> torch.Tensor:
        """main_proj(Emb(main)) + [second != pad] * second_proj(Emb(second)), in float32. The second stream's
        term is selected away (not multiplied), so a PAD there contributes exactly zero."""
        out_main = F.linear(F.embedding(main, table), main_proj).float()
        out_second = F.linear(F.embedding(second, table), second_proj).float()
        keep = (second != self.config.text_pad_token_id)[..., None]
        return out_main + torch.where(keep, out_second, torch.zeros_like(out_second))

    def embed(self, text_main: torch.Tensor, text_second: torch.Tensor, audio: torch.Tensor) -> torch.Tensor:
        """Input embedding for [R, T] text streams and [R, T, 32] audio tokens -> [R, T, E] in the model dtype.
        The 34 terms are summed in float32 (bf16 would lose the small ones)."""
        x = self._text_embed(
            text_main, text_second, self.text_embedding, self.text_main_proj, self.text_second_proj
        )
        x = x + F.embedding(audio + self.audio_offsets, self.audio_embedding).sum(dim=2, dtype=torch.float32)
        return x.to(self.dtype)

    def _qkv(
        self, layer: nn.Module, x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Pre-norm, fused projection, QK-norm then RoPE. x: [R, T, E] -> q [R, H, T, hd], k and v [R, T, KV, hd]
        (time-major, as the cache is written)."""
        c = self.config
        R, T, _ = x.shape
        H, KV = c.decoder_heads, c.decoder_kv_heads
        qkv = F.linear(rms_norm(x, layer.attn_norm, c.norm_eps), layer.qkv).view(R, T, H + 2 * KV, -1)
        qk = apply_rope_signed(rms_norm(qkv[:, :, : H + KV], layer.qk_norm, c.norm_eps), cos, sin)
        return qk[:, :, :H].transpose(1, 2), qk[:, :, H:], qkv[:, :, H + KV :]

    def _finish(self, layer: nn.Module, x: torch.Tensor, a: torch.Tensor) -> torch.Tensor:
        """Output projection of attention ``a`` [R, H, T, hd], residual, then the MLP block."""
        R, _, T, _ = a.shape
        x = x + F.linear(a.transpose(1, 2).reshape(R, T, -1), layer.out)
        h = rms_norm(x, layer.mlp_norm, self.config.norm_eps)
        return x + gated_mlp(h, layer.gate_up, layer.down, self.mlp_activations)

    def _outputs(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        hidden = rms_norm(x, self.norm, self.config.norm_eps)
        logits = F.linear(hidden, self.heads).float()
        n = self.config.action_vocab_size
        return hidden, logits[..., :n], logits[..., n:]

    # ------------------------------------------------------------------ main transformer

    def new_cache(self, rows: int, max_positions: int | None = None) -> KVCache:
        c = self.config
        T = max_positions or c.max_context_steps + 1
        self._rope(torch.zeros(1, 1, dtype=torch.long, device=self.device), T)  # size the RoPE tables now
        shape = (rows, c.decoder_kv_heads, T, c.decoder_head_dim)
        dev, dt = self.device, self.dtype
        return KVCache(
            k=[torch.zeros(shape, device=dev, dtype=dt) for _ in range(c.decoder_layers)],
            v=[torch.zeros(shape, device=dev, dtype=dt) for _ in range(c.decoder_layers)],
        )

    def decode(
        self,
        text_main: torch.Tensor,
        text_second: torch.Tensor,
        audio: torch.Tensor,
        positions: torch.Tensor,
        cache: KVCache,
        rows: torch.Tensor | slice,
        *,
        kv_length: int,
        cache_entries: torch.Tensor | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Run the main transformer for ``text_main``/``text_second`` [R, T] and ``audio`` [R, T, 32] at
        ``positions`` [R, T] (consecutive per row) using cache ``rows`` (an index tensor or slice selecting R
        rows). Writes the new keys/values, attends to cache positions < ``kv_length`` that are <= the query
        position. Returns hidden [R, T, E] (after the final RMSNorm, model dtype), action logits [R, T, 2] and
        codebook-0 logits [R, T, 2050], both float32.

        ``cache_entries`` (default: ``positions``) are the cache entries the keys/values are written to and the
        causal mask is drawn at, where they differ from the RoPE positions (the reference prefix mode keeps
        two entries for one position, so its later steps sit one entry past their position).

        Attention work grows with ``kv_length``, so pass little more than the largest position + 1. A slice for
        ``rows`` reads the cache in place; an index tensor gathers (copies) the rows' keys/values."""
        entries = positions if cache_entries is None else cache_entries
        x = self.embed(text_main, text_second, audio)
        cos, sin = self._rope(positions, cache.max_positions)
        mask = step_mask(causal_mask(entries, kv_length), entries.shape[1])  # built once, read by every layer
        write_rows = cache_write_rows(rows, cache.rows, entries)
        for i, layer in enumerate(self.layers):
            q, k, v = self._qkv(layer, x, cos, sin)
            cache.k[i][write_rows, :, entries] = k
            cache.v[i][write_rows, :, entries] = v
            a = attend(q, cache.k[i][rows, :, :kv_length], cache.v[i][rows, :, :kv_length], mask)
            x = self._finish(layer, x, a)
        return self._outputs(x)

    @torch.inference_mode()
    def forward(
        self, text_main: torch.Tensor, text_second: torch.Tensor, audio: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """A whole causal pass from position 0 without a cache (for checks): [B, T] text streams and [B, T, 32]
        audio -> (hidden [B, T, E], action logits [B, T, 2], codebook-0 logits [B, T, 2050])."""
        B, T = text_main.shape
        x = self.embed(text_main, text_second, audio)
        positions = torch.arange(T, device=x.device).expand(B, T)
        cos, sin = self._rope(positions, T)
        gqa = self.config.decoder_heads != self.config.decoder_kv_heads
        for layer in self.layers:
            q, k, v = self._qkv(layer, x, cos, sin)
            a = F.scaled_dot_product_attention(
                q, k.transpose(1, 2), v.transpose(1, 2), is_causal=True, scale=1.0, enable_gqa=gqa
            )
            x = self._finish(layer, x, a)
        return self._outputs(x)

    # ------------------------------------------------------------------ depformer

    def new_depformer_cache(self, rows: int) -> Dia2DepformerCache:
        c = self.config
        shape = (rows, c.depformer_heads, self.stages, c.depformer_head_dim)
        dev, dt = self.device, self.dtype
        return Dia2DepformerCache(
            k=[torch.zeros(shape, device=dev, dtype=dt) for _ in range(c.depformer_layers)],
            v=[torch.zeros(shape, device=dev, dtype=dt) for _ in range(c.depformer_layers)],
        )

    def _dep_input(
        self,
        hidden: torch.Tensor,
        tokens: torch.Tensor,
        stages: list[int],
        text_main: torch.Tensor | None,
        text_second: torch.Tensor | None,
    ) -> torch.Tensor:
        """Depformer input for ``stages`` (tokens [R, len(stages)], the codebook-s token for stage s):
        depformer_in[group(s)](hidden) + audio_embeds[s](token), plus the text embedding at stage 0 when the
        checkpoint has one. -> [R, len(stages), D] in float32."""
        if len(stages) == 1:  # the decode step: plain ops, no index tensors built on the host
            s = stages[0]
            x = F.linear(hidden, self.dep_in[self.stage_group[s]])[:, None].float()
            x = x + F.embedding(tokens, self.dep_audio_embedding[s]).float()
        else:
            groups = [self.stage_group[s] for s in stages]
            x = torch.einsum("re,sde->rsd", hidden, self.dep_in[groups]).float()
            x = x + self.dep_audio_embedding[stages, tokens].float()
        if self.config.depformer_text_embedding and stages[0] == 0:
            if text_main is None or text_second is None:
                raise ValueError("this checkpoint's depformer needs the text tokens at stage 0")
            x[:, 0] += self._text_embed(
                text_main,
                text_second,
                self.dep_text_embedding,
                self.dep_text_main_proj,
                self.dep_text_second_proj,
            )
        return x

    def _dep_qkv(
        self, layer: nn.Module, x: torch.Tensor, weight: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """x: [R, S, D]; weight: one group's in_proj [3*H*hd, D], or [S, 3*H*hd, D] per stage.
        -> q [R, H, S, hd], k and v [R, S, H, hd]."""
        c = self.config
        R, S, _ = x.shape
        H = c.depformer_heads
        h = rms_norm(x, layer.attn_norm, c.norm_eps)
        qkv = F.linear(h, weight) if weight.dim() == 2 else torch.einsum("rsd,sod->rso", h, weight)
        qkv = qkv.view(R, S, 3 * H, -1)
        qk = rms_norm(qkv[:, :, : 2 * H], layer.qk_norm, c.norm_eps)
        if c.depformer_apply_rope:
            qk = apply_rope_signed(qk, cos, sin)
        return qk[:, :, :H].transpose(1, 2), qk[:, :, H:], qkv[:, :, 2 * H :]

    def depformer_step(
        self,
        hidden: torch.Tensor,
        token: torch.Tensor,
        stage: int,
        cache: Dia2DepformerCache,
        *,
        text_main: torch.Tensor | None = None,
        text_second: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """One depformer stage for R rows: ``hidden`` [R, E] is the main transformer's output for this frame,
        ``token`` [R] the codebook-``stage`` token. Uses the first R rows of ``cache`` and attends to stages
        0..stage of this frame. ``text_main``/``text_second`` [R] are needed at stage 0 only by checkpoints with
        a depformer text embedding. Returns logits [R, 2048] (float32) for codebook stage+1."""
        c = self.config
        R = hidden.shape[0]
        g = self.stage_group[stage]
        x = self._dep_input(hidden, token[:, None], [stage], text_main, text_second).to(self.dtype)
        cos, sin = self.dep_rope_cos[stage], self.dep_rope_sin[stage]
        for i, layer in enumerate(self.dep_layers):
            q, k, v = self._dep_qkv(layer, x, layer.qkv[g], cos, sin)
            cache.k[i][:R, :, stage] = k[:, 0]
            cache.v[i][:R, :, stage] = v[:, 0]
            # Slicing to stages 0..stage is the mask: whatever an earlier frame left in later slots is not read.
            a = attend(q, cache.k[i][:R, :, : stage + 1], cache.v[i][:R, :, : stage + 1], None)
            x = x + F.linear(a.transpose(1, 2).reshape(R, 1, -1), layer.out[g])
            x = x + gated_mlp(
                rms_norm(x, layer.mlp_norm, c.norm_eps), layer.gate_up, layer.down, self.dep_mlp_activations
            )
        x = rms_norm(x[:, 0], self.dep_norm, c.norm_eps)
        return F.linear(x, self.dep_logits[stage]).float()

    @torch.inference_mode()
    def depformer_forward(
        self,
        hidden: torch.Tensor,
        tokens: torch.Tensor,
        *,
        text_main: torch.Tensor | None = None,
        text_second: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """All stages of one frame in one causal pass, teacher-forced (for checks): ``hidden`` [R, E],
        ``tokens`` [R, 31] (codebooks 0..30) -> logits [R, 31, 2048] (float32) for codebooks 1..31."""
        c = self.config
        R, S = tokens.shape
        stages = list(range(S))
        groups = [self.stage_group[s] for s in stages]
        x = self._dep_input(hidden, tokens, stages, text_main, text_second).to(self.dtype)
        cos, sin = self.dep_rope_cos[:S, None], self.dep_rope_sin[:S, None]
        for layer in self.dep_layers:
            q, k, v = self._dep_qkv(layer, x, layer.qkv[groups], cos, sin)
            a = F.scaled_dot_product_attention(
                q, k.transpose(1, 2), v.transpose(1, 2), is_causal=True, scale=1.0
            )
            x = x + torch.einsum("rsi,sdi->rsd", a.transpose(1, 2).reshape(R, S, -1), layer.out[groups])
            x = x + gated_mlp(
                rms_norm(x, layer.mlp_norm, c.norm_eps), layer.gate_up, layer.down, self.dep_mlp_activations
            )
        x = rms_norm(x, self.dep_norm, c.norm_eps)
        return torch.einsum("rsd,svd->rsv", x, self.dep_logits[:S]).float()
