"""Transformer primitives shared by the Dia-1.6B and Dia2 networks: RMSNorm, attention, RoPE, gated MLPs and the
static-cache indexing of a decode step.

Both references use attention scale 1.0 (not 1/sqrt(d)), RMSNorm statistics in float32, RoPE in the "rotate half"
layout with float32 tables cast to the compute dtype, and gated MLPs with gate/up in one fused matrix.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
import torch.nn.functional as F

Activation = Callable[[torch.Tensor], torch.Tensor] | None

#: Activation names a gated MLP half may take (config.json spellings); None is the identity.
ACTIVATIONS: dict[str, Activation] = {
    "silu": F.silu,
    "swish": F.silu,
    "swiglu": F.silu,
    "gelu": F.gelu,  # exact (erf) GELU, as torch.nn.GELU()
    "geglu": F.gelu,
    "relu": F.relu,
    "linear": None,
}

#: SiLU(gate) * up, the MLP of every published Dia checkpoint.
SWIGLU: tuple[Activation, Activation] = (F.silu, None)


def rms_norm(x: torch.Tensor, weight: torch.Tensor, eps: float, *, written_out: bool = False) -> torch.Tensor:
    """RMSNorm over the last axis with float32 statistics whatever the compute dtype. ``weight`` (float32) may be
    wider than the normalised axis, e.g. [heads, head_dim] to normalise every head with its own weight.

    Below float32, ``written_out`` computes the statistics as mean/rsqrt (the Dia-1.6B reference's form) instead
    of torch's rms_norm on a float32 copy; the two agree on CPU, but CUDA's fused kernel may round differently,
    so each family keeps the form it was checked with. Either way the last product is written straight into a
    tensor of the compute dtype (computed in float32, rounded once on the store, as ``.to()`` would): one kernel
    fewer per norm."""
    if x.dtype == torch.float32 and weight.shape == x.shape[-1:]:
        return F.rms_norm(x, weight.shape, weight, eps)  # one fused op; same values as the long form
    xf = x.float()
    if written_out:
        normed = xf * torch.rsqrt(xf.pow(2).mean(-1, keepdim=True) + eps)
    else:
        normed = F.rms_norm(xf, x.shape[-1:], eps=eps)
    if x.dtype == torch.float32:
        return normed * weight
    # weight * normed == normed * weight exactly (float products commute)
    return torch.mul(normed, weight, out=torch.empty(normed.shape, dtype=x.dtype, device=x.device))


def attend(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, mask: torch.Tensor | None) -> torch.Tensor:
    """Attention with scale 1.0 and grouped key/value heads. q: [R, H, T, D]; k, v: [R, KV, S, D]; mask: bool
    broadcastable to [R, 1, T, S] (True = may attend), an additive float bias of that shape (0 or -inf, see
    :func:`attention_bias`), or None for "every key". Returns [R, H, T, D].

    For the one-query decode step this is written out (query heads grouped onto their key/value head, two matrix
    products and a float32 softmax): on CPU it runs about twice as fast as the fused kernel, and on GPUs the step
    is bound by reading K/V either way. Longer queries use the fused kernel."""
    R, H, T, D = q.shape
    kv = k.shape[1]
    if T > 1:
        return F.scaled_dot_product_attention(q, k, v, attn_mask=mask, scale=1.0, enable_gqa=H != kv)
    grouped = q.reshape(R, kv, H // kv, D)  # query heads g*j … g*j+g-1 share key/value head j
    scores = grouped @ k.transpose(-1, -2)
    if mask is not None and mask.dtype == torch.bool:
        scores = scores.masked_fill(~mask.view(R, 1, 1, -1), float("-inf"))
    elif mask is not None:
        # + 0 leaves a finite score exactly as it is, + -inf is what masked_fill writes: the same scores.
        scores = scores + mask.view(R, 1, 1, -1)
    out = scores.softmax(dim=-1, dtype=torch.float32).to(v.dtype) @ v
    return out.view(R, H, 1, D)


def attention_bias(allowed: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """A boolean mask (True = may attend) as the additive bias :func:`attend` takes: 0 where allowed, -inf
    elsewhere, in ``dtype``. A decode step builds it once and every layer adds it (one operator a layer instead
    of inverting the mask and filling)."""
    return torch.zeros((), dtype=dtype, device=allowed.device).masked_fill(~allowed, float("-inf"))


def causal_mask(positions: torch.Tensor, kv_length: int) -> torch.Tensor:
    """[R, 1, T, kv_length] bool: the query at ``positions[r, t]`` may attend to cache positions up to its own."""
    key_positions = torch.arange(kv_length, device=positions.device)
    return (key_positions[None, None, :] <= positions[:, :, None])[:, None]


def step_mask(allowed: torch.Tensor, queries: int) -> torch.Tensor:
    """The mask a pass with ``queries`` queries per row passes to every layer's :func:`attend`, built once: for
    one query the additive bias (in float32: adding it to lower-precision scores gives the float32 scores the
    softmax reads anyway), otherwise the boolean mask as it is (the fused kernel takes it)."""
    if queries == 1:
        return attention_bias(allowed, torch.float32)
    return allowed


def cache_write_rows(rows: torch.Tensor | slice, cache_rows: int, positions: torch.Tensor) -> torch.Tensor:
    """Cache row of every new key/value: ``rows`` (an index tensor or a slice of a cache with ``cache_rows``
    rows) broadcast over ``positions`` [R, T], for ``cache[write_rows, :, positions] = k``."""
    if isinstance(rows, slice):
        rows = torch.arange(cache_rows, device=positions.device)[rows]
    return rows[:, None].expand(positions.shape)


def rope_cos_sin(
    positions: torch.Tensor,
    head_dim: int,
    max_timescale: float,
    dtype: torch.dtype,
    *,
    min_timescale: float = 1.0,
) -> tuple[torch.Tensor, torch.Tensor]:
    """cos/sin tables for integer ``positions`` of any shape -> [..., head_dim], with inv_freq =
    1 / (min * (max/min)^(2i/d)) in float32 (Dia-1.6B's ``theta`` is ``max_timescale`` with min 1, which gives
    the same float32 values as theta^(-2i/d))."""
    fraction = 2.0 * torch.arange(head_dim // 2, device=positions.device, dtype=torch.float32) / head_dim
    inv_freq = 1.0 / (min_timescale * (max_timescale / min_timescale) ** fraction)
    freqs = positions.to(torch.float32)[..., None] * inv_freq
    emb = torch.cat((freqs, freqs), dim=-1)
    return emb.cos().to(dtype), emb.sin().to(dtype)


def apply_rope(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """Rotate the two halves of each head vector as pairs. x: [..., heads, head_dim]; cos/sin broadcast over the
    heads axis ([..., 1, head_dim])."""
    half = x.shape[-1] // 2
    rotated = torch.cat((-x[..., half:], x[..., :half]), dim=-1)
    return x * cos + rotated * sin


def signed_sin(sin: torch.Tensor) -> torch.Tensor:
    """A sin table with its first half negated, as :func:`apply_rope_signed` takes it (made once with the table)."""
    half = sin.shape[-1] // 2
    return torch.cat((-sin[..., :half], sin[..., half:]), dim=-1)


def apply_rope_signed(x: torch.Tensor, cos: torch.Tensor, sin_signed: torch.Tensor) -> torch.Tensor:
    """:func:`apply_rope` in four operators instead of five, with the same values: the halves swap in one roll,
    and the sign of the rotated first half lives in the table (-a * b == a * -b exactly, rounding included)."""
    return x * cos + x.roll(x.shape[-1] // 2, dims=-1) * sin_signed


def activation(name: str) -> Activation:
    """The function for a config.json activation name (case-insensitive); ValueError if unknown."""
    if name.lower() not in ACTIVATIONS:
        raise ValueError(f"unsupported MLP activation {name!r}; expected one of {', '.join(ACTIVATIONS)}")
    return ACTIVATIONS[name.lower()]


def gated_mlp(
    x: torch.Tensor,
    gate_up: torch.Tensor,
    down: torch.Tensor,
    activations: tuple[Activation, Activation] = SWIGLU,
) -> torch.Tensor:
    """down(act0(gate) * act1(up)) with gate/up from one fused matrix (gate rows first); SwiGLU by default."""
    gate, up = F.linear(x, gate_up).chunk(2, dim=-1)
    gate_act, up_act = activations
    if gate_act is not None:
        gate = gate_act(gate)
    if up_act is not None:
        up = up_act(up)
    return F.linear(gate * up, down)


@dataclass
class KVCache:
    """A static self-attention cache: ``k[l]``, ``v[l]`` are [rows, kv_heads, max_positions, head_dim] for layer
    l, written in place at each row's positions; a row is reused by writing from position 0 again (the causal
    mask hides what lies past a row's position)."""

    k: list[torch.Tensor]
    v: list[torch.Tensor]

    @property
    def rows(self) -> int:
        return self.k[0].shape[0]

    @property
    def max_positions(self) -> int:
        return self.k[0].shape[2]
