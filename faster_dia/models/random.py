"""Counter-based random numbers for sampling, shared by the model families.

A draw depends only on (request seed, position, channel, token id), never on the batch a request runs in or
on a generator object's history: a request samples the same tokens alone or batched with any others, the
step needs no per-request loop, and there is no host synchronisation.

The hash runs in two parts so that a step launches few operators: :func:`draw_keys` mixes a row's seed with its
draw counter (once per row, and once per step for every draw of the step where a family draws several times),
:func:`candidate_noise` mixes that key with each candidate's cell. :func:`uniform_noise` is the two together.
"""

from __future__ import annotations

import functools

import torch

_MASK32 = 0xFFFFFFFF
_CELL = 0x3C6EF372  # multiplier of a candidate's cell (channel * 4096 + token id)


def _mix32(x: torch.Tensor, *, masked: bool = False) -> torch.Tensor:
    """An integer hash on 32-bit values held in int64 (multipliers stay below 2**31 so nothing overflows).
    ``masked``: x already lies in [0, 2**32), so the first mask is skipped (it would change nothing)."""
    if not masked:
        x = x & _MASK32
    x = x ^ (x >> 16)
    x = (x * 0x7FEB352D) & _MASK32
    x = x ^ (x >> 15)
    x = (x * 0x2C1B3C6D) & _MASK32
    x = x ^ (x >> 16)
    x = (x * 0x297A2D39) & _MASK32
    return x ^ (x >> 15)


def seed_key(seed: int) -> int:
    """Fold a seed of up to 64 bits into the 32-bit key used by :func:`uniform_noise`."""
    lo, hi = seed & _MASK32, (seed >> 32) & _MASK32
    return int(_mix32(torch.tensor(lo ^ int(_mix32(torch.tensor(hi + 0x9E3779B9))), dtype=torch.int64)))


def draw_keys(keys: torch.Tensor, draws: torch.Tensor) -> torch.Tensor:
    """The per-row part of the hash: row keys [B] (from :func:`seed_key`) mixed with draw counters ``draws``
    [B] or [B, D] (a position, or several draws of one step at once) -> int64 of the shape of ``draws``."""
    keys = keys.view(-1, *([1] * (draws.dim() - 1)))
    return _mix32(keys ^ _mix32(draws * 0x9E37 + 0x632BE5AB), masked=True)


def candidate_noise(draw_key: torch.Tensor, token_ids: torch.Tensor) -> torch.Tensor:
    """Uniform numbers in (0, 1), one per entry of ``token_ids`` [B, C, K] (channel c, candidates), for the
    rows' draw keys [B] (:func:`draw_keys`)."""
    B, C, K = token_ids.shape
    # key + (token + channel * 4096) * _CELL with the channel's term folded into the per-row part (exact in int64;
    # one channel adds nothing)
    base = draw_key.view(B, 1, 1)
    if C > 1:
        base = base + _channel_terms(C, token_ids.device)
    x = _mix32(base + token_ids * _CELL)
    # ((x >> 8) + 0.5) / 2**24: the int64 -> float32 conversion happens inside the add, as a cast would do it
    return ((x >> 8) + 0.5) * (1.0 / (1 << 24))


def exponential_race(probs: torch.Tensor, noise: torch.Tensor) -> torch.Tensor:
    """The index (keepdim) drawn from ``probs`` over the last axis with uniform ``noise`` of the same shape:
    argmax(p / E) with E = -log(u) ~ Exp(1) draws index i with probability p_i. Computed as argmin(p / log u),
    the same numbers negated exactly (ties and infinities included), so the draw is the same and the negation
    is not an operator of its own."""
    return (probs / torch.log(noise)).argmin(dim=-1, keepdim=True)


@functools.cache
def ranks(k: int, device: torch.device) -> torch.Tensor:
    """0 … k-1 (int64), built once per size and device: candidate ranks for the top-k masks of a step."""
    return torch.arange(k, device=device)


def uniform_noise(keys: torch.Tensor, positions: torch.Tensor, token_ids: torch.Tensor) -> torch.Tensor:
    """Uniform numbers in (0, 1), one per entry of ``token_ids`` [B, C, K], that depend only on the row's key
    and position, the channel and the token id."""
    return candidate_noise(draw_keys(keys, positions), token_ids)


@functools.cache
def _channel_terms(channels: int, device: torch.device) -> torch.Tensor:
    """[C, 1]: channel c's share of a cell's hash input, c * 4096 * _CELL. Built once per shape and device."""
    return (torch.arange(channels, device=device, dtype=torch.int64) * (4096 * _CELL)).view(channels, 1)
