"""Guidance and sampling for Dia2, batched over requests with per-request parameters.

The reference rule: with guidance, ``guided = uncond + scale * (cond - uncond)`` only chooses the
``cfg_filter_k`` candidates; the conditional logits of those candidates are sampled (temperature, then top-k
on the probabilities). A scale of 1 skips the filter. Temperature 0 is greedy. Unlike Dia-1.6B's rule, the
guided logits are centred on the unconditional branch.
"""

from __future__ import annotations

import torch

from ..random import candidate_noise, draw_keys, exponential_race, ranks

NEG_INF = float("-inf")
#: Draws for one decoder step are keyed by position * STREAMS + stream, stream 0 the action, 1 + k codebook k.
STREAMS = 64


def choose(
    cond: torch.Tensor,
    uncond: torch.Tensor | None,
    *,
    cfg_scale: torch.Tensor,
    cfg_filter_k: torch.Tensor,
    max_filter_k: int,
    all_guided: bool,
    temperature: torch.Tensor,
    top_k: torch.Tensor,
    max_top_k: int,
    keys: torch.Tensor,
    draw: torch.Tensor | None = None,
    banned: tuple[int, ...] = (),
    sampling: bool = True,
) -> torch.Tensor:
    """One token per row from logits [B, V] -> [B] int64.

    ``uncond`` may be None when no row uses guidance. Per-row tensors ([B]) carry each request's parameters;
    the host ints bound them (``max_filter_k`` >= every row's ``cfg_filter_k``, ``max_top_k`` >= every
    ``top_k``) and ``all_guided`` says whether every row has a scale other than 1, so the step has fixed
    shapes and never reads a device value. ``keys`` [B] are the rows' seed keys and ``draw`` [B] identifies the
    random draw (see STREAMS); with ``draw`` None, ``keys`` are already the draw keys of
    :func:`faster_dia.models.random.draw_keys` (a step computes those of all its draws at once). ``banned`` ids
    are removed after guidance (the reference masks BOS/PAD on codebook 0 there).

    Where ``all_guided`` says every row is guided, the per-row choice between guided and plain ranking is left
    out: rows outside the running requests are computed and discarded, so the tokens that count are the same."""
    B, V = cond.shape
    if uncond is not None:
        guided = uncond + cfg_scale.view(-1, 1) * (cond - uncond)
        if all_guided:
            ranking = guided
        else:
            guided_rows = cfg_scale != 1.0
            ranking = torch.where(guided_rows.view(-1, 1), guided, cond)
    else:
        ranking = cond
    # Candidates: each guided row's cfg_filter_k best by the guided logits, the whole vocabulary for the others.
    # With guidance the candidates are ranked by ``ranking`` (so that rank < cfg_filter_k selects a guided row's
    # filter); unguided rows rank by their own logits, which changes nothing for them.
    if uncond is None:
        ids = ranks(V, cond.device).expand(B, V)
    else:
        k = min(max_filter_k, V) if all_guided else V
        ids = ranking.topk(k, dim=-1).indices
    values = cond.gather(-1, ids)
    if uncond is not None:
        outside = ranks(ids.shape[-1], cond.device) >= cfg_filter_k.view(-1, 1)
        values = values.masked_fill(outside if all_guided else guided_rows.view(-1, 1) & outside, NEG_INF)
    for token in banned:
        values = values.masked_fill(ids == token, NEG_INF)

    # top-k on the conditional distribution (probabilities rank like logits)
    kk = min(max_top_k, values.shape[-1])
    values, order = values.topk(kk, dim=-1)
    ids = ids.gather(-1, order)
    values = values.masked_fill(ranks(kk, cond.device) >= top_k.view(-1, 1), NEG_INF)
    greedy = ids[:, 0]
    if not sampling:
        return greedy
    probs = (values / temperature.clamp_min(1e-6).view(-1, 1)).softmax(dim=-1)
    noise = candidate_noise(keys if draw is None else draw_keys(keys, draw), ids[:, None, :])[:, 0]
    sampled = ids.gather(-1, exponential_race(probs, noise))[:, 0]
    return torch.where(temperature <= 0, greedy, sampled)
