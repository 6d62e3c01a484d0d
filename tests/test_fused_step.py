"""The decode step's shorter forms give the numbers of the long forms they replace, bit for bit.

Each primitive that a step now runs in fewer operators (RMSNorm stored straight into the compute dtype, RoPE with
a roll and a signed table, the attention mask as an additive bias built once, the random hash in a per-row and a
per-candidate part, the exponential race as an argmin) is checked here against the long form written out, in
float32, bfloat16 and float16, on values that include the edge cases (masked keys, extreme seeds and positions).
"""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from faster_dia.models import layers
from faster_dia.models.random import candidate_noise, draw_keys, exponential_race, uniform_noise

DTYPES = [torch.float32, torch.bfloat16, torch.float16]
MASK32 = 0xFFFFFFFF


def _long_mix32(x):
    x = x & MASK32
    x = x ^ (x >> 16)
    x = (x * 0x7FEB352D) & MASK32
    x = x ^ (x >> 15)
    x = (x * 0x2C1B3C6D) & MASK32
    x = x ^ (x >> 16)
    x = (x * 0x297A2D39) & MASK32
    return x ^ (x >> 15)


def _long_uniform_noise(keys, positions, token_ids):
    """The hash as first written: every part per candidate."""
    B, C, K = token_ids.shape
    cell = token_ids + torch.arange(C, dtype=torch.int64).view(1, C, 1) * 4096
    x = _long_mix32(keys[:, None, None] ^ _long_mix32(positions[:, None, None] * 0x9E37 + 0x632BE5AB))
    x = _long_mix32(x + cell * 0x3C6EF372)
    return ((x >> 8).to(torch.float32) + 0.5) * (1.0 / (1 << 24))


def _long_rms_norm(x, weight, eps, written_out):
    if x.dtype == torch.float32 and weight.shape == x.shape[-1:]:
        return F.rms_norm(x, weight.shape, weight, eps)
    xf = x.float()
    if written_out:
        xf = xf * torch.rsqrt(xf.pow(2).mean(-1, keepdim=True) + eps)
        return (weight.float() * xf).to(x.dtype)
    return (F.rms_norm(xf, x.shape[-1:], eps=eps) * weight).to(x.dtype)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("written_out", [False, True])
def test_rms_norm_gives_the_long_form_values(dtype, written_out):
    g = torch.Generator().manual_seed(1)
    x = (torch.randn(3, 5, 64, generator=g) * 4).to(dtype)
    for weight in (1 + 0.1 * torch.randn(64, generator=g), 1 + 0.1 * torch.randn(5, 64, generator=g)):
        got = layers.rms_norm(x, weight, 1e-5, written_out=written_out)
        assert got.dtype == dtype
        assert torch.equal(got, _long_rms_norm(x, weight, 1e-5, written_out))


@pytest.mark.parametrize("dtype", DTYPES)
def test_rope_with_a_roll_and_a_signed_table_gives_the_rotate_half_values(dtype):
    g = torch.Generator().manual_seed(2)
    positions = torch.randint(0, 3000, (4, 1), generator=g)
    cos, sin = layers.rope_cos_sin(positions, 32, 10000.0, dtype)
    cos, sin = cos[:, :, None], sin[:, :, None]
    x = (torch.randn(4, 1, 6, 32, generator=g) * 3).to(dtype)
    assert torch.equal(layers.apply_rope_signed(x, cos, layers.signed_sin(sin)), layers.apply_rope(x, cos, sin))


@pytest.mark.parametrize("dtype", DTYPES)
def test_attention_with_the_step_bias_gives_the_boolean_mask_values(dtype):
    g = torch.Generator().manual_seed(3)
    R, H, KV, S, D = 3, 8, 2, 40, 16
    q = torch.randn(R, H, 1, D, generator=g).to(dtype)
    k, v = (torch.randn(R, KV, S, D, generator=g).to(dtype) for _ in range(2))
    positions = torch.tensor([[0], [17], [39]])
    allowed = layers.causal_mask(positions, S)
    bias = layers.step_mask(allowed, 1)
    assert bias.dtype == torch.float32 and set(bias.unique().tolist()) == {0.0, float("-inf")}
    assert torch.equal(layers.attend(q, k, v, bias), layers.attend(q, k, v, allowed))
    # Longer queries keep the boolean mask for the fused kernel.
    assert layers.step_mask(layers.causal_mask(torch.arange(4).expand(R, 4), S), 4).dtype == torch.bool


def test_the_split_hash_gives_the_values_of_the_hash_written_out():
    g = torch.Generator().manual_seed(4)
    for B, C, K in [(4, 9, 64), (3, 1, 2050), (2, 1, 1)]:
        keys = torch.randint(0, 2**32, (B,), generator=g, dtype=torch.int64)
        keys[0], keys[-1] = 0, 2**32 - 1
        positions = torch.randint(0, 2**22, (B,), generator=g)
        positions[0] = 0
        ids = torch.randint(0, 4096, (B, C, K), generator=g)
        want = _long_uniform_noise(keys, positions, ids)
        got = uniform_noise(keys, positions, ids)
        assert got.dtype == torch.float32 and torch.equal(got, want)
        assert torch.equal(candidate_noise(draw_keys(keys, positions), ids), want)
    # The keys of several draws at once are those of each draw alone.
    keys = torch.randint(0, 2**32, (3,), generator=g, dtype=torch.int64)
    draws = torch.randint(0, 2**20, (3, 33), generator=g)
    together = draw_keys(keys, draws)
    for d in (0, 7, 32):
        assert torch.equal(together[:, d], draw_keys(keys, draws[:, d]))


def test_the_race_as_an_argmin_draws_what_the_argmax_drew():
    g = torch.Generator().manual_seed(5)
    logits = torch.randn(64, 3, 50, generator=g) * 3
    logits[:, :, 40:] = float("-inf")  # masked candidates: probability 0
    probs = logits.softmax(-1)
    noise = torch.rand(64, 3, 50, generator=g).clamp_min(1e-7)
    noise[0, 0, 0] = 1.0  # log(1) = 0: an infinite race time, never drawn in either form
    want = (probs / -torch.log(noise)).argmax(dim=-1, keepdim=True)
    assert torch.equal(exponential_race(probs, noise), want)
