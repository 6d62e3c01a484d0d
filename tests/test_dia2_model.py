"""Dia2 network: cached decoding equals full passes, and the full pass equals a literal implementation of the
published architecture written here from the checkpoint tensors (no shared code with the model)."""

from __future__ import annotations

import dataclasses

import pytest
import torch
from safetensors.torch import load_file

from faster_dia.models.dia2.config import Dia2Config
from faster_dia.models.dia2.model import Dia2Model

SCHEDULE = (0,) * 10 + (1,) * 10 + (2,) * 11  # three depformer weight groups, as in Dia2-1B
CONFIG = Dia2Config(
    text_vocab_size=300,
    decoder_layers=2,
    decoder_hidden_size=64,
    decoder_intermediate_size=128,
    decoder_heads=4,
    decoder_kv_heads=2,
    decoder_head_dim=16,
    depformer_layers=2,
    depformer_hidden_size=32,
    depformer_intermediate_size=64,
    depformer_heads=2,
    depformer_kv_heads=2,
    depformer_head_dim=16,
    weights_schedule=SCHEDULE,
    # Not the defaults, so that the inv_freq formula is really exercised.
    rope_min_timescale=2.0,
    rope_max_timescale=500.0,
)
PAD = CONFIG.text_pad_token_id


def tiny_state_dict(config: Dia2Config, seed: int = 0) -> dict[str, torch.Tensor]:
    """Random float32 tensors for every published name. Projections ~ N(0, 1/fan_in) keep activations near
    unit size; q_norm weights carry head_dim**-0.5 so the scale-1.0 attention scores come out ~ N(0, 1)."""
    c = config
    g = torch.Generator().manual_seed(seed)
    sd: dict[str, torch.Tensor] = {}

    def w(name: str, *shape: int) -> None:
        sd[name] = torch.randn(*shape, generator=g) * shape[-1] ** -0.5

    def norm(name: str, n: int, scale: float = 1.0) -> None:
        sd[name] = (1.0 + 0.1 * torch.randn(n, generator=g)) * scale

    E, D, A, V = c.decoder_hidden_size, c.depformer_hidden_size, c.audio_vocab_size, c.text_vocab_size
    hd, dhd = c.decoder_head_dim, c.depformer_head_dim
    text_dim = c.decoder_low_rank_dim or E
    p = "transformer."
    sd[p + "text_embed.embedding.weight"] = torch.randn(V, text_dim, generator=g)
    w(p + "text_embed.main_proj.weight", E, text_dim)
    w(p + "text_embed.second_proj.weight", E, text_dim)
    for k in range(c.num_codebooks):
        w(p + f"audio_embeds.{k}.weight", A, E)
    for i in range(c.decoder_layers):
        lp = f"{p}layers.{i}."
        norm(lp + "pre_norm.weight", E)
        w(lp + "attn.q_proj.weight", c.decoder_heads * hd, E)
        w(lp + "attn.k_proj.weight", c.decoder_kv_heads * hd, E)
        w(lp + "attn.v_proj.weight", c.decoder_kv_heads * hd, E)
        w(lp + "attn.o_proj.weight", E, c.decoder_heads * hd)
        norm(lp + "attn.q_norm.weight", hd, hd**-0.5)
        norm(lp + "attn.k_norm.weight", hd)
        norm(lp + "post_norm.weight", E)
        w(lp + "mlp.wi.weight", 2 * c.decoder_intermediate_size, E)
        w(lp + "mlp.wo.weight", E, c.decoder_intermediate_size)
    norm(p + "norm.weight", E)
    w(p + "action_head.weight", c.action_vocab_size, E)
    w(p + "cb0_head.weight", A, E)

    p = "depformer."
    for s in range(c.num_codebooks - 1):
        w(p + f"audio_embeds.{s}.weight", A, D)
        w(p + f"logits.{s}.weight", A, D)
    if c.depformer_text_embedding:
        sd[p + "text_embed.embedding.weight"] = torch.randn(V, D, generator=g)
        w(p + "text_embed.main_proj.weight", D, D)
        w(p + "text_embed.second_proj.weight", D, D)
    for grp in sorted(set(c.weights_schedule)):
        w(p + f"depformer_in.{grp}.weight", D, E)
    for i in range(c.depformer_layers):
        lp = f"{p}layers.{i}."
        norm(lp + "pre_norm.weight", D)
        norm(lp + "post_norm.weight", D)
        for grp in sorted(set(c.weights_schedule)):
            w(lp + f"self_attention.in_proj.{grp}.weight", 3 * c.depformer_heads * dhd, D)
            w(lp + f"self_attention.out_proj.{grp}.weight", D, c.depformer_heads * dhd)
        norm(lp + "self_attention.q_norm.weight", dhd, dhd**-0.5)
        norm(lp + "self_attention.k_norm.weight", dhd)
        w(lp + "mlp.wi.weight", 2 * c.depformer_intermediate_size, D)
        w(lp + "mlp.wo.weight", D, c.depformer_intermediate_size)
    norm(p + "norm.weight", D)
    return sd


def random_inputs(config: Dia2Config, B: int, T: int, seed: int = 1):
    g = torch.Generator().manual_seed(seed)
    main = torch.randint(0, config.text_vocab_size, (B, T), generator=g)
    second = torch.randint(0, config.text_vocab_size, (B, T), generator=g)
    second[torch.rand(B, T, generator=g) < 0.5] = config.text_pad_token_id  # mostly PAD, as in generation
    audio = torch.randint(0, config.audio_vocab_size, (B, T, config.num_codebooks), generator=g)
    return main, second, audio


@pytest.fixture(scope="module")
def sd() -> dict[str, torch.Tensor]:
    return tiny_state_dict(CONFIG)


@pytest.fixture(scope="module")
def model(sd) -> Dia2Model:
    return Dia2Model.from_state_dict(CONFIG, sd, dtype=torch.float32)


# ---------------------------------------------------------------------- a literal implementation


def _rms(x: torch.Tensor, weight: torch.Tensor, eps: float) -> torch.Tensor:
    return x / torch.sqrt((x * x).mean(-1, keepdim=True) + eps) * weight


def _rope(x: torch.Tensor, positions: torch.Tensor, config: Dia2Config) -> torch.Tensor:
    """x: [T, heads, d] at ``positions`` [T]; rotate-half RoPE with 1 / (min * (max/min)^(2i/d))."""
    d = x.shape[-1]
    lo, hi = config.rope_min_timescale, config.rope_max_timescale
    inv_freq = torch.tensor(
        [1.0 / (lo * (hi / lo) ** (2 * i / d)) for i in range(d // 2)], dtype=torch.float64
    )
    angle = positions.double()[:, None] * inv_freq  # [T, d/2]
    cos, sin = angle.cos().float()[:, None], angle.sin().float()[:, None]
    x1, x2 = x[..., : d // 2], x[..., d // 2 :]
    return torch.cat((x1 * cos - x2 * sin, x2 * cos + x1 * sin), dim=-1)


def _attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    """Causal, scale 1.0; q [T, H, d], k/v [T, KV, d]; query head h reads key/value head h // (H / KV)."""
    T, H, _ = q.shape
    group = H // k.shape[1]
    k, v = k.repeat_interleave(group, dim=1), v.repeat_interleave(group, dim=1)
    scores = torch.einsum("thd,shd->hts", q, k)  # no 1/sqrt(d)
    scores = scores.masked_fill(~torch.ones(T, T, dtype=torch.bool).tril(), float("-inf"))
    return torch.einsum("hts,shd->thd", scores.softmax(-1), v)


_ACT = {
    "silu": torch.nn.SiLU(),
    "gelu": torch.nn.GELU(),
    "relu": torch.nn.ReLU(),
    "linear": torch.nn.Identity(),
}


def _mlp(x: torch.Tensor, wi: torch.Tensor, wo: torch.Tensor, activations=("silu", "linear")) -> torch.Tensor:
    gate, up = (x @ wi.T).chunk(2, dim=-1)  # rows 0..Hd-1 gate, then up
    return (_ACT[activations[0]](gate) * _ACT[activations[1]](up)) @ wo.T


def literal_embed(sd, config: Dia2Config, main, second, audio, prefix: str = "transformer.") -> torch.Tensor:
    table = sd[prefix + "text_embed.embedding.weight"]
    x = table[main] @ sd[prefix + "text_embed.main_proj.weight"].T
    second_term = table[second] @ sd[prefix + "text_embed.second_proj.weight"].T
    x = x + (second != config.text_pad_token_id)[..., None].float() * second_term
    if audio is not None:
        for k in range(config.num_codebooks):
            x = x + sd[f"transformer.audio_embeds.{k}.weight"][audio[..., k]]
    return x


def literal_forward(sd, config: Dia2Config, main, second, audio):
    """One sequence: main/second [T], audio [T, 32] -> hidden [T, E], action [T, 2], cb0 [T, 2050]."""
    c, eps = config, config.norm_eps
    T = main.shape[0]
    x = literal_embed(sd, c, main, second, audio)
    positions = torch.arange(T)
    for i in range(c.decoder_layers):
        lp = f"transformer.layers.{i}."
        h = _rms(x, sd[lp + "pre_norm.weight"], eps)
        q = (h @ sd[lp + "attn.q_proj.weight"].T).view(T, c.decoder_heads, -1)
        k = (h @ sd[lp + "attn.k_proj.weight"].T).view(T, c.decoder_kv_heads, -1)
        v = (h @ sd[lp + "attn.v_proj.weight"].T).view(T, c.decoder_kv_heads, -1)
        q = _rope(_rms(q, sd[lp + "attn.q_norm.weight"], eps), positions, c)  # QK-norm first, then RoPE
        k = _rope(_rms(k, sd[lp + "attn.k_norm.weight"], eps), positions, c)
        x = x + _attention(q, k, v).reshape(T, -1) @ sd[lp + "attn.o_proj.weight"].T
        x = x + _mlp(
            _rms(x, sd[lp + "post_norm.weight"], eps),
            sd[lp + "mlp.wi.weight"],
            sd[lp + "mlp.wo.weight"],
            c.decoder_mlp_activations,
        )
    hidden = _rms(x, sd["transformer.norm.weight"], eps)
    return (
        hidden,
        hidden @ sd["transformer.action_head.weight"].T,
        hidden @ sd["transformer.cb0_head.weight"].T,
    )


def literal_depformer(sd, config: Dia2Config, hidden, tokens, text=None):
    """One frame: hidden [E], tokens [31] -> logits [31, 2048] for codebooks 1..31."""
    c, eps, p = config, config.norm_eps, "depformer."
    S, H = tokens.shape[0], c.depformer_heads
    x = torch.stack(
        [
            sd[p + f"depformer_in.{c.weights_schedule[s]}.weight"] @ hidden
            + sd[p + f"audio_embeds.{s}.weight"][tokens[s]]
            for s in range(S)
        ]
    )
    if text is not None:
        x[0] = x[0] + literal_embed(sd, c, text[0], text[1], None, prefix=p)
    positions = torch.arange(S)
    for i in range(c.depformer_layers):
        lp = f"{p}layers.{i}.self_attention."
        h = _rms(x, sd[f"{p}layers.{i}.pre_norm.weight"], eps)
        qkv = torch.stack([sd[lp + f"in_proj.{c.weights_schedule[s]}.weight"] @ h[s] for s in range(S)])
        q, k, v = qkv.view(S, 3, H, -1).unbind(1)  # q | k | v blocks, each head-major
        q, k = _rms(q, sd[lp + "q_norm.weight"], eps), _rms(k, sd[lp + "k_norm.weight"], eps)
        if c.depformer_apply_rope:
            q, k = _rope(q, positions, c), _rope(k, positions, c)
        a = _attention(q, k, v).reshape(S, -1)
        x = x + torch.stack([sd[lp + f"out_proj.{c.weights_schedule[s]}.weight"] @ a[s] for s in range(S)])
        mp = f"{p}layers.{i}."
        x = x + _mlp(
            _rms(x, sd[mp + "post_norm.weight"], eps),
            sd[mp + "mlp.wi.weight"],
            sd[mp + "mlp.wo.weight"],
            c.depformer_mlp_activations,
        )
    x = _rms(x, sd[p + "norm.weight"], eps)
    return torch.stack([sd[p + f"logits.{s}.weight"][: c.codebook_size] @ x[s] for s in range(S)])


# ---------------------------------------------------------------------- main transformer


def test_forward_matches_literal_implementation(sd, model):
    main, second, audio = random_inputs(CONFIG, 2, 9)
    hidden, action, cb0 = model(main, second, audio)
    assert hidden.shape == (2, 9, 64) and action.shape == (2, 9, 2) and cb0.shape == (2, 9, 2050)
    assert action.dtype == cb0.dtype == torch.float32
    for b in range(2):
        ref = literal_forward(sd, CONFIG, main[b], second[b], audio[b])
        for got, want in zip((hidden[b], action[b], cb0[b]), ref, strict=True):
            torch.testing.assert_close(got, want, atol=2e-5, rtol=1e-5)


def test_second_stream_pad_contributes_exactly_zero(sd, model):
    main, second, audio = random_inputs(CONFIG, 2, 6)
    pads = torch.full_like(second, PAD)
    # Poison the second projection: if a PAD reached it at all, NaN would leak into the embedding.
    poisoned = dict(sd)
    poisoned["transformer.text_embed.second_proj.weight"] = torch.full_like(
        sd["transformer.text_embed.second_proj.weight"], float("nan")
    )
    poisoned_model = Dia2Model.from_state_dict(CONFIG, poisoned)
    x = model.embed(main, pads, audio)
    assert torch.equal(poisoned_model.embed(main, pads, audio), x)
    # and the rule itself, with and without a second-stream token
    torch.testing.assert_close(x, literal_embed(sd, CONFIG, main, pads, audio), atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(
        model.embed(main, second, audio), literal_embed(sd, CONFIG, main, second, audio), atol=1e-5, rtol=1e-5
    )
    assert not torch.allclose(model.embed(main, second, audio), x)


def test_low_rank_text_embedding_and_other_activations():
    config = dataclasses.replace(CONFIG, decoder_low_rank_dim=24, decoder_mlp_activations=("gelu", "relu"))
    sd = tiny_state_dict(config, seed=3)
    assert sd["transformer.text_embed.embedding.weight"].shape == (300, 24)
    model = Dia2Model.from_state_dict(config, sd)
    main, second, audio = random_inputs(config, 1, 5)
    ref = literal_forward(sd, config, main[0], second[0], audio[0])
    got = model(main, second, audio)
    for g, want in zip(got, ref, strict=True):
        torch.testing.assert_close(g[0], want, atol=2e-5, rtol=1e-5)


def _assert_rows_match(got, ref, row_ids, positions, atol=2e-5):
    """got: decode outputs [R, T, ...] for rows ``row_ids`` of ``ref`` (forward outputs) at ``positions``."""
    for g, want in zip(got, ref, strict=True):
        torch.testing.assert_close(g, want[row_ids[:, None], positions], atol=atol, rtol=1e-5)


def test_single_steps_at_different_positions_match_forward(model):
    B, T = 3, 10
    main, second, audio = random_inputs(CONFIG, B, T, seed=5)
    ref = model(main, second, audio)
    cache = model.new_cache(5, max_positions=16)
    for k in cache.k + cache.v:
        k.normal_()  # stale data from an earlier request: the mask must hide it
    slots = torch.tensor([3, 0, 4])  # cache row of each sequence
    starts = torch.tensor([0, 2, 5])  # sequence b starts at call starts[b]: rows sit at different positions
    with torch.inference_mode():
        for t in range(T + int(starts.max())):
            active = ((t - starts >= 0) & (t - starts < T)).nonzero().flatten()
            pos = (t - starts[active])[:, None]  # [R, 1]
            b = active[:, None]
            got = model.decode(
                main[b, pos], second[b, pos], audio[b, pos], pos, cache, slots[active], kv_length=T
            )
            _assert_rows_match(got, ref, active, pos)


def test_prefill_then_steps_match_forward(model):
    B, T, P = 2, 12, 7
    main, second, audio = random_inputs(CONFIG, B, T, seed=6)
    ref = model(main, second, audio)
    cache = model.new_cache(B, max_positions=20)
    rows = slice(0, B)
    everyone = torch.arange(B)
    with torch.inference_mode():
        pos = torch.arange(P).expand(B, P)
        got = model.decode(main[:, :P], second[:, :P], audio[:, :P], pos, cache, rows, kv_length=P)
        _assert_rows_match(got, ref, everyone, pos)
        for t in range(P, T):
            pos = torch.full((B, 1), t)
            s = slice(t, t + 1)
            got = model.decode(
                main[:, s], second[:, s], audio[:, s], pos, cache, rows, kv_length=cache.max_positions
            )
            _assert_rows_match(got, ref, everyone, pos)


def test_positions_beyond_1500(sd, model):
    T, P = 1540, 1530  # the reference's 1500-entry RoPE table would overflow here (max_context_steps 1500)
    assert CONFIG.max_context_steps == 1500
    main, second, audio = random_inputs(CONFIG, 1, T, seed=7)
    ref = model(main, second, audio)
    cache = model.new_cache(1, max_positions=T)
    with torch.inference_mode():
        pos = torch.arange(P)[None]
        model.decode(main[:, :P], second[:, :P], audio[:, :P], pos, cache, slice(0, 1), kv_length=P)
        for t in range(P, T):
            pos = torch.tensor([[t]])
            s = slice(t, t + 1)
            got = model.decode(main[:, s], second[:, s], audio[:, s], pos, cache, slice(0, 1), kv_length=T)
            _assert_rows_match(got, ref, torch.tensor([0]), pos, atol=1e-4)
    # and the full pass there agrees with the literal one (RoPE angles in float64)
    want = literal_forward(sd, CONFIG, main[0], second[0], audio[0])
    for g, w in zip(ref, want, strict=True):
        torch.testing.assert_close(g[0, P:], w[P:], atol=1e-4, rtol=1e-4)
    assert model.rope_cos.shape[0] >= T


# ---------------------------------------------------------------------- depformer


def _depformer_check(model: Dia2Model, sd, config: Dia2Config, R: int, seed: int, with_text: bool = False):
    g = torch.Generator().manual_seed(seed)
    hidden = torch.randn(R, config.decoder_hidden_size, generator=g)
    text = {}
    if with_text:
        text = {
            "text_main": torch.randint(0, config.text_vocab_size, (R,), generator=g),
            "text_second": torch.tensor([PAD] + [5] * (R - 1)),
        }
    cache = model.new_depformer_cache(R + 1)  # a larger cache: the step uses its first R rows
    for k in cache.k + cache.v:
        k.normal_()
    with torch.inference_mode():
        for _frame in range(2):  # the second frame overwrites the first one's cache without clearing it
            tokens = torch.randint(0, config.codebook_size, (R, 31), generator=g)
            full = model.depformer_forward(hidden, tokens, **text)
            assert full.shape == (R, 31, 2048) and full.dtype == torch.float32
            for s in range(31):
                step = model.depformer_step(hidden, tokens[:, s], s, cache, **text)
                torch.testing.assert_close(step, full[:, s], atol=2e-5, rtol=1e-5)
            for r in range(R):
                row_text = (text["text_main"][r], text["text_second"][r]) if with_text else None
                want = literal_depformer(sd, config, hidden[r], tokens[r], row_text)
                torch.testing.assert_close(full[r], want, atol=2e-5, rtol=1e-5)


def test_depformer_stage_by_stage_matches_full_pass(sd, model):
    _depformer_check(model, sd, CONFIG, R=3, seed=8)


def test_depformer_text_embedding_at_stage_0():
    config = dataclasses.replace(
        CONFIG,
        depformer_text_embedding=True,
        depformer_apply_rope=False,
        depformer_mlp_activations=("relu", "silu"),
    )
    sd = tiny_state_dict(config, seed=4)
    model = Dia2Model.from_state_dict(config, sd)
    _depformer_check(model, sd, config, R=2, seed=9, with_text=True)


# ---------------------------------------------------------------------- loading and precision


def test_shape_mismatch_names_the_tensor(sd):
    bad = dict(sd)
    bad["transformer.layers.1.attn.k_proj.weight"] = torch.zeros(48, 64)
    with pytest.raises(ValueError, match=r"transformer\.layers\.1\.attn\.k_proj\.weight"):
        Dia2Model.from_state_dict(CONFIG, bad)
    bad = dict(sd)
    bad["depformer.layers.0.self_attention.k_norm.weight"] = torch.zeros(8)
    with pytest.raises(ValueError, match=r"depformer\.layers\.0\.self_attention\.k_norm\.weight"):
        Dia2Model.from_state_dict(CONFIG, bad)


def test_bfloat16_stays_close_to_float32(sd, model):
    bf16 = Dia2Model.from_state_dict(CONFIG, sd, dtype=torch.bfloat16)
    main, second, audio = random_inputs(CONFIG, 2, 8, seed=10)
    want = model(main, second, audio)
    got = bf16(main, second, audio)
    assert got[0].dtype == torch.bfloat16 and got[1].dtype == got[2].dtype == torch.float32
    for g, w in zip(got, want, strict=True):
        err = (g.float() - w).norm() / w.norm()
        assert err < 0.03, err
    # cached steps in bf16 agree with the bf16 full pass
    cache = bf16.new_cache(2, max_positions=8)
    with torch.inference_mode():
        for t in range(8):
            pos = torch.full((2, 1), t)
            s = slice(t, t + 1)
            step = bf16.decode(main[:, s], second[:, s], audio[:, s], pos, cache, slice(0, 2), kv_length=8)
            torch.testing.assert_close(step[2], got[2][:, s], atol=0.05, rtol=0.02)
        hidden = want[0][:, -1]
        tokens = torch.randint(0, 2048, (2, 31), generator=torch.Generator().manual_seed(11))
        dep_want = model.depformer_forward(hidden, tokens)
        dep_got = bf16.depformer_forward(hidden.bfloat16(), tokens)
        assert (dep_got - dep_want).norm() / dep_want.norm() < 0.03
        dep_cache = bf16.new_depformer_cache(2)
        step = bf16.depformer_step(hidden.bfloat16(), tokens[:, 0], 0, dep_cache)
        assert step.dtype == torch.float32 and (step - dep_want[:, 0]).norm() / dep_want[:, 0].norm() < 0.03


def test_tiny_checkpoint_loads(tmp_path):
    from faster_dia.models.dia2.checkpoint import read_config
    from faster_dia.testing import write_tiny_checkpoint

    directory = write_tiny_checkpoint("dia2", tmp_path / "dia2")
    config = read_config(directory / "config.json")
    model = Dia2Model.from_state_dict(config, load_file(directory / "model.safetensors"))
    main, second, audio = random_inputs(config, 2, 5)
    hidden, action, cb0 = model(main, second, audio)
    assert torch.isfinite(hidden).all() and torch.isfinite(action).all() and torch.isfinite(cb0).all()
    cache = model.new_cache(2, max_positions=5)
    with torch.inference_mode():
        step = model.decode(
            main, second, audio, torch.arange(5).expand(2, 5), cache, slice(0, 2), kv_length=5
        )
    torch.testing.assert_close(step[2], cb0, atol=2e-5, rtol=1e-5)
    logits = model.depformer_forward(hidden[:, -1], audio[:, -1, :31].clamp(max=config.codebook_size - 1))
    assert logits.shape == (2, config.depformer_stages, config.codebook_size) and torch.isfinite(logits).all()
