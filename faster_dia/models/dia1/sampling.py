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

import functools

import torch

from ..random import exponential_race, ranks, uniform_noise
from .config import VARIANT_ORIGINAL

NEG_INF = float("-inf")


def choose_tokens(
    cond: torch.Tensor,
    uncond: torch.Tensor,
    *,
    variant: str,
    cfg_scale: torch.Tensor,
    temperature: torch.Tensor,
    top_p: torch.Tensor,
    top_k: torch.Tensor,
    max_top_k: int,
    keys: torch.Tensor,
    positions: torch.Tensor,
    eos_token_id: int,
    sampling: bool = True,
) -> torch.Tensor:
    """One token per (request, channel) from conditional and unconditional logits [B, C, V] -> [B, C].

    Per-request tensors ([B]) carry each request's parameters; ``max_top_k`` (a host int, the largest top_k
    in the batch) bounds the candidate set, so after guidance everything runs on [B, C, max_top_k] instead of
    the whole vocabulary. Rows with temperature 0 are greedy; ``sampling=False`` skips the random draw when
    every row is greedy."""
    B, C, V = cond.shape
    guided = cond + (cond - uncond) * cfg_scale.view(-1, 1, 1)  # the reference's order of operations
    invalid, channel0 = _channel_masks(C, V, eos_token_id, cond.device)
    k = min(max_top_k, V)
    if variant == VARIANT_ORIGINAL:
        guided = guided.masked_fill(invalid, NEG_INF)
        guided[:, 0, eos_token_id] *= 0.8
        # The original removes EOS (unless it is the best) before its top-k, so EOS never takes a place.
        eos_not_best = guided[:, 0].argmax(dim=-1) != eos_token_id
        guided[:, 0, eos_token_id] = torch.where(eos_not_best, NEG_INF, guided[:, 0, eos_token_id])
        values, ids = guided.topk(k, dim=-1)
    else:
        # Guidance picks the candidates (before the masks, as the reference does); the conditional logits of
        # those candidates are what gets sampled.
        ids = guided.topk(k, dim=-1).indices
        values = cond.gather(-1, ids).masked_fill(invalid[None].expand(B, C, V).gather(-1, ids), NEG_INF)
    values = values.masked_fill(ranks(k, cond.device) >= top_k.view(-1, 1, 1), NEG_INF)

    # EOS in channel 0 only when it is the best candidate; 0626 then forces it.
    best = values.argmax(dim=-1, keepdim=True)
    best_id = ids.gather(-1, best)
    is_eos = ids == eos_token_id
    eos_is_best = (best_id == eos_token_id) & channel0
    values = torch.where(~eos_is_best & is_eos, NEG_INF, values)
    if variant != VARIANT_ORIGINAL:
        values = torch.where(eos_is_best & ~is_eos, NEG_INF, values)
    greedy = ids.gather(-1, values.argmax(dim=-1, keepdim=True))[..., 0]
    if not sampling:
        return greedy

    scaled = values / temperature.clamp_min(1e-6).view(-1, 1, 1)
    scaled = _keep_top_p(scaled, top_p)
    probs = scaled.softmax(dim=-1)
    # Exponential race. The noise is keyed by token id, so a draw does not depend on the candidate order or on
    # the batch.
    sampled = ids.gather(-1, exponential_race(probs, uniform_noise(keys, positions, ids)))[..., 0]
    return torch.where((temperature == 0).view(-1, 1), greedy, sampled)


@functools.cache
def _channel_masks(C: int, V: int, eos_token_id: int, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    """[C, V] True where a token may never be sampled (only channel 0 may end the sequence; PAD, BOS and the
    unused id never), and [C, 1] True for channel 0. Built once per shape and device."""
    vocab = torch.arange(V, device=device)
    channel0 = torch.arange(C, device=device)[:, None] == 0
    return torch.where(channel0, vocab > eos_token_id, vocab >= eos_token_id), channel0


def _keep_top_p(logits: torch.Tensor, top_p: torch.Tensor) -> torch.Tensor:
    """Nucleus filter: keep the smallest set of best tokens whose probability reaches top_p (the best always)."""
    sorted_logits, order = logits.sort(dim=-1, descending=True, stable=True)
    cumulative = sorted_logits.softmax(dim=-1).cumsum(dim=-1)
    remove = cumulative > top_p.view(-1, 1, 1)
    remove[..., 1:] = remove[..., :-1].clone()
    remove[..., 0] = False
    return logits.masked_fill(remove.scatter(-1, order, remove), NEG_INF)
