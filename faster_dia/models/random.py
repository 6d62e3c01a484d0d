"""Counter-based random numbers for sampling, shared by the model families.

A draw depends only on (request seed, position, channel, token id), never on the batch a request runs in or
on a generator object's history: a request samples the same tokens alone or batched with any others, the
step needs no per-request loop, and there is no host synchronisation.
"""

from __future__ import annotations

import torch

_MASK32 = 0xFFFFFFFF


def _mix32(x: torch.Tensor) -> torch.Tensor:
    """An integer hash on 32-bit values held in int64 (multipliers stay below 2**31 so nothing overflows)."""
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


def uniform_noise(keys: torch.Tensor, positions: torch.Tensor, token_ids: torch.Tensor) -> torch.Tensor:
    """Uniform numbers in (0, 1), one per entry of ``token_ids`` [B, C, K], that depend only on the row's key
    and position, the channel and the token id."""
    B, C, K = token_ids.shape
    cell = token_ids + torch.arange(C, device=keys.device, dtype=torch.int64).view(1, C, 1) * 4096
    x = _mix32(keys[:, None, None] ^ _mix32(positions[:, None, None] * 0x9E37 + 0x632BE5AB))
    x = _mix32(x + cell * 0x3C6EF372)
    return ((x >> 8).to(torch.float32) + 0.5) * (1.0 / (1 << 24))
