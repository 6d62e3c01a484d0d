"""Dia2's guidance and sampling rule, on hand-worked logits."""

from __future__ import annotations

import torch

from faster_dia.models.dia2.sampling import STREAMS, choose
from faster_dia.models.random import seed_key


def _choose(cond, uncond, *, cfg=2.0, k=2, temperature=0.0, top_k=50, banned=(), draw=0, seed=0):
    B = cond.shape[0]
    return choose(cond, uncond, cfg_scale=torch.full((B,), cfg), cfg_filter_k=torch.full((B,), k), max_filter_k=k,
                  all_guided=cfg != 1.0, temperature=torch.full((B,), temperature),
                  top_k=torch.full((B,), top_k), max_top_k=top_k, keys=torch.full((B,), seed_key(seed)),
                  draw=torch.full((B,), draw), banned=banned)


def test_guidance_chooses_candidates_and_the_conditional_logits_decide():
    # guided = uncond + 2 (cond - uncond): token 0 -> 1 + 2*(3-1) = 5, token 1 -> 0 + 2*(2.9-0) = 5.8,
    # token 2 -> 4 + 2*(2.8-4) = 1.6, token 3 -> -10. The top-2 guided are {1, 0}; the conditional logits
    # (3.0 vs 2.9) pick 0 greedily, although guided prefers 1 and cond alone would also allow token 2.
    cond = torch.tensor([[3.0, 2.9, 2.8, -10.0]])
    uncond = torch.tensor([[1.0, 0.0, 4.0, -10.0]])
    assert _choose(cond, uncond, k=2).item() == 0
    samples = {_choose(cond, uncond, k=2, temperature=1.0, draw=d).item() for d in range(200)}
    assert samples == {0, 1}  # never token 2: it is outside the guided candidates
    # cfg_scale 1 skips the filter: all finite conditional tokens can be drawn
    samples = {_choose(cond, uncond, cfg=1.0, k=2, temperature=1.0, draw=d).item() for d in range(300)}
    assert samples == {0, 1, 2}


def test_banned_ids_and_top_k_and_greedy():
    cond = torch.tensor([[0.0, 1.0, 9.0, 8.0]])
    assert _choose(cond, None, cfg=1.0, banned=(2,)).item() == 3
    samples = {_choose(cond, None, cfg=1.0, temperature=5.0, top_k=2, draw=d).item() for d in range(200)}
    assert samples == {2, 3}


def test_draws_are_per_seed_and_stream():
    cond = torch.zeros(1, 2048)
    a = [_choose(cond, None, cfg=1.0, temperature=1.0, top_k=2048, draw=5 * STREAMS + s, seed=1).item() for s in range(8)]
    b = [_choose(cond, None, cfg=1.0, temperature=1.0, top_k=2048, draw=5 * STREAMS + s, seed=1).item() for s in range(8)]
    c = [_choose(cond, None, cfg=1.0, temperature=1.0, top_k=2048, draw=5 * STREAMS + s, seed=2).item() for s in range(8)]
    assert a == b and a != c and len(set(a)) > 4


def test_each_row_keeps_its_own_guidance_filter_in_a_mixed_batch():
    # The same logits in three rows: guidance filter k = 1, 3, and no guidance. Greedy picks the best
    # conditional logit among each row's candidates: the guided best alone (token 1), the guided top 3
    # ({1, 0, 2}: token 0 wins on cond), or the whole vocabulary (token 3 wins on cond).
    cond = torch.tensor([[3.0, 2.9, 2.8, 3.5]]).expand(3, 4)
    uncond = torch.tensor([[1.0, 0.0, 2.5, 6.0]]).expand(3, 4)
    chosen = choose(
        cond, uncond, cfg_scale=torch.tensor([2.0, 2.0, 1.0]), cfg_filter_k=torch.tensor([1, 3, 1]), max_filter_k=3,
        all_guided=False, temperature=torch.zeros(3), top_k=torch.full((3,), 4), max_top_k=4,
        keys=torch.zeros(3, dtype=torch.long), draw=torch.zeros(3, dtype=torch.long), sampling=False,
    )
    assert chosen.tolist() == [1, 0, 3]
    # A row's candidates do not depend on its neighbours' filter.
    alone = choose(
        cond[:1], uncond[:1], cfg_scale=torch.tensor([2.0]), cfg_filter_k=torch.tensor([1]), max_filter_k=1,
        all_guided=True, temperature=torch.zeros(1), top_k=torch.full((1,), 4), max_top_k=4,
        keys=torch.zeros(1, dtype=torch.long), draw=torch.zeros(1, dtype=torch.long), sampling=False,
    )
    assert alone.tolist() == [1]
