"""Dia-1.6B decoding rules, each on a small hand-worked case."""

from __future__ import annotations

import math

import pytest
import torch

from faster_dia.models.dia1.checkpoint import load_checkpoint
from faster_dia.models.dia1.config import VARIANT_0626, VARIANT_ORIGINAL
from faster_dia.models.dia1.delay import UNKNOWN, clean_codes, delayed_prompt, revert_delay
from faster_dia.models.dia1.generator import Dia1Generator, Dia1Request
from faster_dia.models.dia1.model import Dia1Model
from faster_dia.models.dia1.sampling import choose_tokens
from faster_dia.models.random import seed_key
from faster_dia.testing import (
    delayed_tokens,
    finish,
    nari_reference_logits,
    tiny_dia_config,
    tiny_nari_state_dict,
)

EOS, PAD, BOS = 1024, 1025, 1026
DELAYS = (0, 8, 9, 10, 11, 12, 13, 14, 15)


# ---------------------------------------------------------------------------------------------- delay


def test_delayed_prompt_hand_worked():
    prompt = torch.tensor([[10, 20, 30], [11, 21, 31]])
    table = delayed_prompt(prompt, (0, 1, 2), bos_token_id=9)
    U = UNKNOWN
    expected = torch.tensor([
        [9, 9, 9],     # position 0: the BOS frame
        [10, 9, 9],    # channel 1 still in its BOS run, channel 2 too
        [11, 20, 9],
        [U, 21, 30],   # channel 0 generates from here; the others are still teacher-forced
        [U, U, 31],
    ])
    assert torch.equal(table, expected)


def test_delayed_prompt_without_prompt_is_bos_runs():
    table = delayed_prompt(torch.zeros(0, 9, dtype=torch.long), DELAYS, BOS)
    assert table.shape == (16, 9)
    for c, d in enumerate(DELAYS):
        assert (table[: d + 1, c] == BOS).all() and (table[d + 1 :, c] == UNKNOWN).all()


def test_revert_delay_hand_worked():
    delayed = torch.tensor([[9, 9, 9], [10, 9, 9], [11, 20, 9], [12, 21, 30], [13, 22, 31], [14, 23, 32]])
    assert torch.equal(revert_delay(delayed, (0, 1, 2), 1, 4), torch.tensor([[10, 20, 30], [11, 21, 31], [12, 22, 32]]))


def test_codes_outside_the_codebook_become_zero():
    assert torch.equal(clean_codes(torch.tensor([[-1, 0, 1023, 1024, 1025, 1026]])), torch.tensor([[0, 0, 1023, 0, 0, 0]]))


# ---------------------------------------------------------------------------------------------- sampling


def _logits(channel0: dict[int, float], batch: int = 1) -> torch.Tensor:
    logits = torch.full((batch, 9, 1028), -5.0)
    logits[:, 1:, 7] = 1.0
    for token, value in channel0.items():
        logits[:, 0, token] = value
    return logits


def _choose(variant, cond, uncond=None, *, cfg=0.0, temperature=0.0, top_p=1.0, top_k=45, seed=0, position=1):
    uncond = cond if uncond is None else uncond
    B = cond.shape[0]
    return choose_tokens(
        cond, uncond, variant=variant, cfg_scale=torch.full((B,), cfg), temperature=torch.full((B,), temperature),
        top_p=torch.full((B,), top_p), top_k=torch.full((B,), top_k), max_top_k=top_k,
        keys=torch.full((B,), seed_key(seed)), positions=torch.full((B,), position), eos_token_id=EOS,
    )


def _greedy(variant, cond, uncond=None, *, cfg=0.0):
    return _choose(variant, cond, uncond, cfg=cfg)[0]


def test_original_rule_scales_the_eos_logit_by_0_8():
    # EOS 5.0 vs 4.5: 0626 takes EOS; the original sees 5.0 * 0.8 = 4.0 < 4.5 and takes token 3.
    logits = _logits({EOS: 5.0, 3: 4.5})
    assert _greedy(VARIANT_0626, logits)[0] == EOS
    assert _greedy(VARIANT_ORIGINAL, logits)[0] == 3
    # A negative EOS logit is raised: -0.8 beats -0.9 only after scaling.
    logits = _logits({EOS: -1.0, 3: -0.9})
    assert _greedy(VARIANT_0626, logits)[0] == 3
    assert _greedy(VARIANT_ORIGINAL, logits)[0] == EOS


def test_only_channel_0_may_emit_eos_and_pad_bos_are_never_sampled():
    logits = torch.full((1, 9, 1028), -5.0)
    logits[:, :, EOS:] = 9.0  # EOS, PAD, BOS and 1027 look best everywhere
    logits[:, :, 5] = 1.0
    tokens = _greedy(VARIANT_0626, logits)
    assert tokens[0] == EOS and (tokens[1:] == 5).all()


def test_0626_guidance_chooses_candidates_and_samples_the_conditional_logits():
    # The guided logits (cond + 3 (cond - uncond)) prefer token 2, the conditional logits token 1.
    cond = _logits({1: 2.0, 2: 1.9})
    uncond = _logits({1: 2.0, 2: 1.0})
    assert _greedy(VARIANT_0626, cond, uncond, cfg=3.0)[0] == 1
    assert _greedy(VARIANT_ORIGINAL, cond, uncond, cfg=3.0)[0] == 2
    # Outside the guided top-k nothing is ever sampled, even a conditional favourite.
    cond = torch.zeros(1, 9, 1028)
    cond[0, :, 0] = 10.0
    uncond = cond.clone()
    uncond[0, :, 0] = 50.0  # guidance pushes token 0 far down
    picks = torch.stack([_choose(VARIANT_0626, cond, uncond, cfg=3.0, temperature=1.0, top_k=4, position=p)[0]
                         for p in range(200)])
    assert (picks != 0).all()
    assert len(set(picks[:, 1].tolist())) == 4  # four candidates per channel, all of them drawn


def test_sampling_is_reproducible_per_seed_and_independent_of_the_batch():
    cond, uncond = torch.randn(3, 9, 1028), torch.randn(3, 9, 1028)
    cond[2], uncond[2] = cond[0], uncond[0]
    kwargs = dict(variant=VARIANT_0626, cfg_scale=torch.full((3,), 3.0), temperature=torch.full((3,), 1.2),
                  top_p=torch.full((3,), 0.95), top_k=torch.full((3,), 45), max_top_k=45,
                  positions=torch.tensor([5, 5, 5]), eos_token_id=EOS)
    keys = torch.tensor([seed_key(1), seed_key(2), seed_key(1)])
    batch = choose_tokens(cond, uncond, keys=keys, **kwargs)
    assert torch.equal(batch[0], batch[2])  # same seed, same logits, same tokens
    one = {k: (v[1:2] if isinstance(v, torch.Tensor) else v) for k, v in kwargs.items()}
    alone = choose_tokens(cond[1:2], uncond[1:2], keys=keys[1:2], **one)
    assert torch.equal(alone[0], batch[1])
    other_seed = choose_tokens(cond[:1], uncond[:1], keys=torch.tensor([seed_key(3)]),
                               **{k: (v[:1] if isinstance(v, torch.Tensor) else v) for k, v in kwargs.items()})
    assert not torch.equal(other_seed[0], batch[0])


def test_sampling_follows_the_distribution():
    # Two candidates with probabilities 0.75 / 0.25 under temperature 1: count over many positions.
    logits = torch.full((1, 9, 1028), -30.0)
    logits[0, :, 0] = math.log(3.0)
    logits[0, :, 1] = 0.0
    picks = torch.stack([_choose(VARIANT_0626, logits, temperature=1.0, seed=5, position=p)[0] for p in range(2000)])
    share = (picks == 0).float().mean().item()
    assert 0.72 < share < 0.78, share


def test_top_p_keeps_the_smallest_set_reaching_p():
    logits = torch.full((1, 9, 1028), -30.0)
    logits[0, :, :3] = torch.log(torch.tensor([0.5, 0.3, 0.2]))
    picks = torch.stack([_choose(VARIANT_0626, logits, temperature=1.0, top_p=0.7, position=p)[0] for p in range(300)])
    assert set(picks.flatten().tolist()) == {0, 1}  # 0.5 < 0.7 needs the second; 0.8 >= 0.7 stops before the third


# ---------------------------------------------------------------------------------------------- cross-attention RoPE


def _model(variant, seed=0):
    config = tiny_dia_config(variant)
    nari = tiny_nari_state_dict(config, seed=seed)
    from faster_dia.models.dia1.checkpoint import nari_to_hf

    return Dia1Model.from_hf_state_dict(config, nari_to_hf(nari, config)), nari, config


def test_original_checkpoint_rotates_cross_attention_and_0626_does_not():
    text = torch.tensor([[1, 72, 105, 33, 0, 0], [1, 66, 121, 101, 33, 10]])
    audio = torch.randint(0, 1024, (2, 12, 9), generator=torch.Generator().manual_seed(0))
    audio[:, 0] = BOS
    results = {}
    for variant in (VARIANT_ORIGINAL, VARIANT_0626):
        model, nari, config = _model(variant)
        ours = model(text, text != 0, audio)
        reference = nari_reference_logits(nari, config, text, audio)
        valid = torch.ones(2, 12, dtype=torch.bool)
        assert ((ours - reference)[valid].norm() / reference.norm()) < 1e-5
        results[variant] = ours
    assert not torch.allclose(results[VARIANT_ORIGINAL], results[VARIANT_0626], atol=1e-3)


def test_rope_hand_worked():
    from faster_dia.models.layers import apply_rope, rope_cos_sin

    # head_dim 4, theta 10000: frequencies 1 and 1/100; the halves (1, 2) and (3, 4) rotate as pairs.
    x = torch.tensor([1.0, 2.0, 3.0, 4.0]).view(1, 1, 1, 4)
    cos, sin = rope_cos_sin(torch.tensor([[1]]), 4, 10000.0, torch.float32)
    c1, s1, c2, s2 = math.cos(1), math.sin(1), math.cos(0.01), math.sin(0.01)
    expected = torch.tensor([1 * c1 - 3 * s1, 2 * c2 - 4 * s2, 3 * c1 + 1 * s1, 4 * c2 + 2 * s2])
    assert torch.allclose(apply_rope(x, cos, sin).flatten(), expected, atol=1e-6)


def test_nari_and_hf_layouts_load_to_identical_outputs(tiny_dirs):
    text = torch.tensor([[1, 72, 105, 33]])
    audio = torch.full((1, 4, 9), BOS)
    outputs = []
    for kind in ("dia-1.6b-0626", "dia-1.6b-0626-bin"):
        checkpoint = load_checkpoint(tiny_dirs[kind])
        model = Dia1Model.from_hf_state_dict(checkpoint.config, checkpoint.state_dict)
        outputs.append(model(text, text != 0, audio))
    assert torch.equal(outputs[0], outputs[1])
    a, b = (load_checkpoint(tiny_dirs[k]) for k in ("dia-1.6b", "dia-1.6b-pth"))
    assert a.variant == b.variant == VARIANT_ORIGINAL
    assert all(torch.equal(a.state_dict[n], b.state_dict[n]) for n in a.state_dict)


# ---------------------------------------------------------------------------------------------- generator rules


class ScriptedDecoder:
    """Stands in for the network's decode: channel c at position p prefers token (p * 10 + c) % 1000, and
    channel 0 prefers EOS at ``eos_at``. Cache, encoder and prefill use the real tiny model."""

    def __init__(self, model, eos_at=None):
        self.model = model
        self.eos_at = eos_at
        self.prefilled = []

    def __getattr__(self, name):
        return getattr(self.model, name)

    def decode(self, tokens, positions, cache, rows, *, kv_length, text_length):
        R, T, C = tokens.shape
        if T > 1:
            self.prefilled.append(tokens.clone())
            return None
        nxt = positions[:, 0] + 1
        logits = torch.full((R, T, C, 1028), -10.0)
        best = (nxt[:, None] * 10 + torch.arange(C)) % 1000
        logits.scatter_(-1, best[:, None, :, None], 10.0)
        if self.eos_at is not None:
            logits[nxt == self.eos_at, 0, 0, EOS] = 20.0
        return logits


def _scripted(eos_at=None, **request):
    model, _, _ = _model(VARIANT_0626)
    scripted = ScriptedDecoder(model, eos_at)
    generator = Dia1Generator(model, max_batch=1)
    generator.model = scripted
    state = generator.prepare(Dia1Request(text=torch.tensor([1, 65]), seed=0, temperature=0.0, **request))
    while not state.finished:
        generator.step()
    return generator, state, scripted


def test_eos_in_channel_0_starts_the_delay_tail():
    generator, state, _ = _scripted(eos_at=30)
    seq = delayed_tokens(generator, state)
    assert len(seq) == 30 + 15 + 1  # the request ends once channel 8's EOS at 30 + 15 is written
    for c, d in enumerate(DELAYS):
        assert (seq[: d + 1, c] == BOS).all()
        for p in range(d + 1, 30 + d):
            assert seq[p, c] == (p * 10 + c) % 1000, (p, c)  # sampled while earlier frames finish
        assert seq[30 + d, c] == EOS
        assert (seq[30 + d + 1 :, c] == PAD).all()
    codes = finish(generator, state)
    assert codes.shape == (29, 9)  # frames 1 … 29 of the undelayed sequence
    assert codes[0, 0] == 10 and codes[0, 8] == (16 * 10 + 8) % 1000


def test_forced_stop_near_the_length_limit():
    generator, state, _ = _scripted(eos_at=None, max_new_tokens=40)
    seq = delayed_tokens(generator, state)
    assert len(seq) == 41 and seq[25, 0] == EOS and seq[40, 8] == EOS  # forced at 40 - 15
    assert finish(generator, state).shape == (24, 9)


def test_prompt_prefill_and_teacher_forcing():
    prompt = torch.arange(4 * 9).view(4, 9) + 500
    generator, state, scripted = _scripted(eos_at=40, prompt=prompt)
    (prefill,) = scripted.prefilled
    assert prefill.shape == (2, 4, 9)  # positions 0 … 3 in one causal pass, both CFG rows
    seq = delayed_tokens(generator, state)
    for c, d in enumerate(DELAYS):
        assert (seq[: d + 1, c] == BOS).all()
        assert torch.equal(seq[d + 1 : d + 5, c], prompt[:, c])  # forced although the model wanted other tokens
        assert seq[d + 5, c] == ((d + 5) * 10 + c) % 1000  # the first generated frame
    codes = finish(generator, state)
    assert codes.shape == (40 - 1 - 4, 9)  # the prompt is not part of the result


def test_request_limits(tts):
    from faster_dia.errors import InvalidInputError

    generator = Dia1Generator(tts.model, max_batch=1)
    text = torch.tensor([1, 65])
    with pytest.raises(InvalidInputError, match="at most 3071 new tokens"):
        generator.validate(Dia1Request(text=text, seed=0, max_new_tokens=3072))
    with pytest.raises(InvalidInputError, match="at least 17"):
        generator.validate(Dia1Request(text=text, seed=0, max_new_tokens=16))
    with pytest.raises(InvalidInputError, match="at most 2971 new tokens"):
        generator.validate(Dia1Request(text=text, seed=0, prompt=torch.zeros(100, 9, dtype=torch.long),
                                       max_new_tokens=3000))
    with pytest.raises(InvalidInputError, match="leaves no room"):
        generator.validate(Dia1Request(text=text, seed=0, prompt=torch.zeros(3060, 9, dtype=torch.long)))
    with pytest.raises(InvalidInputError, match="1025 bytes"):
        generator.validate(Dia1Request(text=torch.ones(1025, dtype=torch.long), seed=0))
    assert generator.validate(Dia1Request(text=text, seed=0, prompt=torch.zeros(100, 9, dtype=torch.long))) == (100, 2971)
