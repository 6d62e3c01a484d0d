"""Classifier-free guidance and sampling for Dia-1.6B, batched over requests with per-request parameters.

Two published rules (see docs/ARCHITECTURE.md, "Dia-1.6B variants"):

* 0626 (and transformers): the guided logits ``cond + s * (cond - uncond)`` only choose the top-k candidate
  set; the conditional logits restricted to that set are what gets sampled. Only channel 0 may emit EOS;
  if EOS is channel 0's best candidate it is forced, otherwise it is removed.
* original: the guided logits are sampled directly; channel 0's EOS logit is multiplied by 0.8; EOS is
  removed unless it is the best candidate (it is not forced when it is).

Randomness comes from a counter-based generator keyed by (request seed, position, channel, token), so a
request draws exactly the same numbers whether it runs alone or batched with others, with no per-request
loop and no host synchronisation.
"""

from __future__ import annotations

import torch

from .config import VARIANT_ORIGINAL

_MASK32 = 0xFFFFFFFF
NEG_INF = float("-inf")


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


def uniform_noise(keys: torch.Tensor, positions: torch.Tensor, shape: tuple[int, int]) -> torch.Tensor:
    """Uniform numbers in (0, 1) of shape [B, *shape] that depend only on each row's key and position."""
    C, V = shape
    cell = torch.arange(C * V, device=keys.device, dtype=torch.int64).view(1, C, V)
    x = _mix32(keys[:, None, None] ^ _mix32(positions[:, None, None] * 0x9E37 + 0x632BE5AB))
    x = _mix32(x + cell * 0x3C6EF372)
    return ((x >> 8).to(torch.float32) + 0.5) * (1.0 / (1 << 24))


def _keep_top_k(logits: torch.Tensor, ranking: torch.Tensor, k: torch.Tensor) -> torch.Tensor:
    """Mask ``logits`` outside the k best entries of ``ranking`` (per row of the last axis; k per batch row)."""
    order = ranking.argsort(dim=-1, descending=True, stable=True)
    ranks = torch.empty_like(order).scatter_(-1, order, torch.arange(order.shape[-1], device=order.device).expand_as(order))
    return logits.masked_fill(ranks >= k.view(-1, *([1] * (logits.dim() - 1))), NEG_INF)


def _keep_top_p(logits: torch.Tensor, top_p: torch.Tensor) -> torch.Tensor:
    """Nucleus filter: keep the smallest set of best tokens whose probability reaches top_p (the best always)."""
    sorted_logits, order = logits.sort(dim=-1, descending=True, stable=True)
    cumulative = sorted_logits.softmax(dim=-1).cumsum(dim=-1)
    remove = cumulative > top_p.view(-1, 1, 1)
    remove[..., 1:] = remove[..., :-1].clone()
    remove[..., 0] = False
    return logits.masked_fill(remove.scatter(-1, order, remove), NEG_INF)


def process_logits(
    cond: torch.Tensor,
    uncond: torch.Tensor,
    *,
    variant: str,
    cfg_scale: torch.Tensor,
    top_k: torch.Tensor,
    eos_token_id: int,
) -> torch.Tensor:
    """Guidance, candidate filter and channel/EOS masks -> the logits to sample from, [B, 9, V]."""
    scale = cfg_scale.view(-1, 1, 1)
    guided = cond + scale * (cond - uncond)
    if variant == VARIANT_ORIGINAL:
        logits = guided.clone()
    else:
        logits = _keep_top_k(cond, guided, top_k)
    # Only channel 0 may end the sequence; PAD, BOS and the unused id are never sampled.
    logits[:, 1:, eos_token_id:] = NEG_INF
    logits[:, 0, eos_token_id + 1 :] = NEG_INF
    if variant == VARIANT_ORIGINAL:
        logits[:, 0, eos_token_id] = logits[:, 0, eos_token_id] * 0.8
    eos_is_best = logits[:, 0].argmax(dim=-1) == eos_token_id
    channel0 = logits[:, 0]
    if variant != VARIANT_ORIGINAL:
        # EOS as best candidate is forced: everything below it is removed.
        forced = channel0.clone()
        forced[:, :eos_token_id] = NEG_INF
        channel0 = torch.where(eos_is_best[:, None], forced, channel0)
    suppressed = channel0.clone()
    suppressed[:, eos_token_id] = NEG_INF
    logits[:, 0] = torch.where(eos_is_best[:, None], channel0, suppressed)
    return logits


def sample(
    logits: torch.Tensor,
    *,
    variant: str,
    temperature: torch.Tensor,
    top_p: torch.Tensor,
    top_k: torch.Tensor,
    keys: torch.Tensor,
    positions: torch.Tensor,
) -> torch.Tensor:
    """Pick one token per (request, channel) from processed ``logits`` [B, 9, V]. Rows with temperature 0 are
    greedy. Returns [B, 9] int64."""
    greedy = logits.argmax(dim=-1)
    t = temperature.clamp_min(1e-6).view(-1, 1, 1)
    scaled = logits / t
    if variant == VARIANT_ORIGINAL:
        # The original rule applies top-k (the CFG filter's k) to the guided logits at sampling time.
        scaled = _keep_top_k(scaled, scaled, top_k)
    scaled = _keep_top_p(scaled, top_p)
    probs = scaled.softmax(dim=-1)
    # Exponential race: argmax(p / E) with E ~ Exp(1) draws index i with probability p_i.
    race = probs / -torch.log(uniform_noise(keys, positions, tuple(logits.shape[1:])))
    sampled = race.argmax(dim=-1)
    return torch.where((temperature == 0).view(-1, 1), greedy, sampled)
