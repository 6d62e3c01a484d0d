"""Quantized weights: each mode that runs here stays within a stated distance of full precision, a broken
quantization fails those bounds, quantized steps record and replay, and modes that cannot run say why.

The bounds are relative to the RMS of the full-precision outputs. They were set at about twice what the tiny
random models measure, and a scale that is 10% off breaks them. Logit errors are worst-case over a step and all
9 channels x 1028 entries; agreement is the fraction of (step, channel) pairs whose best token is the same.
"""

from __future__ import annotations

import re

import pytest
import torch
import torch.nn.functional as F
from test_step_capture import _assert_replays_give_solo_tokens, _dia2_request, _run_schedule

import faster_dia
from faster_dia.errors import InvalidInputError
from faster_dia.loading import check_load_options, pick_dtype
from faster_dia.models import quantize as q
from faster_dia.models.dia1.delay import delayed_prompt
from faster_dia.models.dia1.generator import Dia1Generator
from faster_dia.models.dia2.generator import Dia2Generator
from faster_dia.models.graphs import EAGER, TRACE
from faster_dia.testing import write_tiny_checkpoint

#: Modes that load here; fp8 cannot (it needs a CUDA GPU), but its arithmetic is checked below on the CPU's
#: torch._scaled_mm.
CPU_MODES = ("int8", "int8-dynamic", "int4")

#: mode -> (relative error of one matrix product, worst per-step logit error / logit RMS, argmax agreement).
#: Measured on these models: int8 0.009 / 0.028 / 0.99, int8-dynamic 0.02 / 0.06 / 0.98, int4 0.1 / 0.46 / 0.91,
#: fp8 0.05 / 0.15 / 0.95.
BOUNDS = {
    "int8": (0.02, 0.06, 0.97),
    "int8-dynamic": (0.04, 0.12, 0.95),
    "int4": (0.2, 0.9, 0.85),
    "fp8": (0.1, 0.3, 0.9),
}

SCRIPT = "[S1] Hello there, how are you today? [S2] Fine, thanks."

#: The tiny Dia-1.6B with widths every kernel takes (int4: out % 16, in % 32).
KERNEL_WIDTHS = {"encoder_hidden_size": 64, "encoder_intermediate_size": 128, "decoder_hidden_size": 64,
                 "decoder_intermediate_size": 128}


@pytest.fixture(scope="module")
def dirs(tmp_path_factory, tiny_dirs):
    root = tmp_path_factory.mktemp("quantize")
    # EOS logit 0: no early end, so every mode decodes the same number of frames.
    model = write_tiny_checkpoint("dia-1.6b-0626", root / "dia", config_overrides=KERNEL_WIDTHS, eos_logit_scale=0.0)
    return {"dia": model, "dac": tiny_dirs["dac"]}


@pytest.fixture(scope="module")
def full(dirs):
    return faster_dia.load(dirs["dia"], codec=dirs["dac"], device="cpu")


def _relative_error(got: torch.Tensor, want: torch.Tensor) -> float:
    return float((got - want).pow(2).mean().sqrt() / want.pow(2).mean().sqrt())


def _weight(mode: str, weight: torch.Tensor) -> q.QuantizedWeight:
    if mode == "int4":
        return q.Int4Weight.from_float(weight, keep_values=True)
    return q.quantize_weight(weight, mode)


@pytest.mark.parametrize("mode", [*CPU_MODES, "fp8"])
def test_a_quantized_product_is_close_to_full_precision_and_to_its_own_weights(mode):
    gen = torch.Generator().manual_seed(0)
    weight = torch.randn(96, 256, generator=gen) / 16
    x = torch.randn(3, 5, 256, generator=gen)
    quantized = _weight(mode, weight)
    assert quantized.shape == weight.shape and quantized.dtype == torch.float32
    got = F.linear(x, quantized)
    assert got.shape == (3, 5, 96) and type(got) is torch.Tensor
    bound = BOUNDS[mode][0]
    assert _relative_error(got, F.linear(x, weight)) < bound
    # The kernel computes with the weights it stores: against them, only activation rounding is left (bfloat16
    # or 8-bit activations), a fraction of the quantization error itself.
    assert _relative_error(got, F.linear(x, quantized.dequantize())) < bound / 2
    # A bias is added as F.linear adds it.
    bias = torch.randn(96, generator=gen)
    assert torch.allclose(F.linear(x, quantized, bias), got + bias)


def test_a_wrong_scale_fails_the_bound():
    gen = torch.Generator().manual_seed(1)
    weight = torch.randn(96, 256, generator=gen) / 16
    x = torch.randn(7, 256, generator=gen)
    quantized = q.Int8Weight.from_float(weight)
    assert _relative_error(F.linear(x, quantized), F.linear(x, weight)) < BOUNDS["int8"][0]
    quantized._kernel_scale = quantized._kernel_scale * 1.1
    assert _relative_error(F.linear(x, quantized), F.linear(x, weight)) > BOUNDS["int8"][0]


def test_a_quantized_weight_refuses_anything_but_linear():
    quantized = q.Int8Weight.from_float(torch.randn(32, 64))
    assert quantized.dim() == 2 and "Int8Weight(shape=(32, 64)" in repr(quantized)
    with pytest.raises(RuntimeError, match="only F.linear"):
        quantized + 1
    with pytest.raises(RuntimeError, match="only F.linear"):
        torch.matmul(torch.randn(2, 64), quantized.t())


def _distance(full, tts, codes: torch.Tensor) -> tuple[float, float]:
    """Both models read the generated ``codes`` teacher-forced: the worst per-step logit error over the logit RMS,
    and the top-1 agreement."""
    c = tts.model.config
    device = next(full.model.parameters()).device
    codes = codes.to(device)
    tokens = delayed_prompt(codes, c.delay_pattern, c.bos_token_id)[: len(codes) + 1][None]
    request = full._request(SCRIPT, seed=1, audio_prompt=None, audio_prompt_transcript=None,
                            audio_prompt_sample_rate=None, temperature=0.0, top_p=1.0, top_k=45, cfg_scale=3.0,
                            max_new_tokens=100)
    text = request.text[None].to(device)
    mask = torch.ones_like(text, dtype=torch.bool)
    reference, got = full.model(text, mask, tokens), tts.model(text, mask, tokens)
    per_step = (got - reference).abs().amax(dim=(0, 2, 3)) / reference.pow(2).mean().sqrt()
    return float(per_step.max()), float((got.argmax(-1) == reference.argmax(-1)).float().mean())


@pytest.mark.parametrize("mode", CPU_MODES)
def test_a_quantized_model_generates_within_the_bounds_of_full_precision(dirs, full, mode):
    tts = faster_dia.load(dirs["dia"], codec=dirs["dac"], device="cpu", quantize=mode)
    try:
        assert tts.quantize == mode
        # 4 matrices in each of the 2 encoder and 2 decoder layers.
        assert sum(isinstance(w, q.QuantizedWeight) for m in tts.model.modules() for w in vars(m).values()) == 16
        # Generated through the engine with the quantized weights, then read by both models teacher-forced.
        speech = tts.generate(SCRIPT, seed=1, temperature=0.0, max_new_tokens=100)
        codes = torch.as_tensor(speech.codes)
        assert codes.shape == full.generate(SCRIPT, seed=1, temperature=0.0, max_new_tokens=100).codes.shape
        worst, agreement = _distance(full, tts, codes)
        _, logit_bound, agreement_bound = BOUNDS[mode]
        assert worst < logit_bound
        assert agreement > agreement_bound
        if mode == "int8":
            # Every row scale 10% off: the same check fails.
            for m in tts.model.modules():
                for w in vars(m).values():
                    if isinstance(w, q.Int8Weight):
                        w._kernel_scale = w._kernel_scale * 1.1
            worst, agreement = _distance(full, tts, codes)
            assert worst > logit_bound
    finally:
        tts.close()


def test_the_memory_of_the_quantized_weights(dirs, full):
    # The matrices quantized: 4 per encoder layer, 4 per decoder layer, in float32 before.
    matrices = [w for layer in full.model.enc_layers for w in (layer.qkv, layer.out, layer.gate_up, layer.down)]
    matrices += [w for layer in full.model.dec_layers for w in (layer.self_qkv, layer.self_out, layer.gate_up,
                                                                   layer.down)]
    elements = sum(w.numel() for w in matrices)
    rows = sum(w.shape[0] for w in matrices)
    before = q.weight_bytes(full.model)
    assert before == sum(p.nbytes for p in full.model.parameters())
    # int8: a byte per element, a float32 scale per row. int4: half a byte per element, a bfloat16 scale and
    # zero per group of the widest size that divides the row.
    groups = sum(w.shape[0] * w.shape[1] // next(g for g in q.INT4_GROUP_SIZES if w.shape[1] % g == 0)
                 for w in matrices)
    for mode, stored in (("int8", elements + 4 * rows), ("int4", elements // 2 + 4 * groups)):
        tts = faster_dia.load(dirs["dia"], codec=dirs["dac"], device="cpu", quantize=mode)
        assert q.weight_bytes(tts.model) == before - 4 * elements + stored, mode
        if mode == "int8":
            # The server shows the mode and the bytes.
            from starlette.testclient import TestClient

            from faster_dia.server import create_app

            with TestClient(create_app(tts)) as client:
                (entry,) = client.get("/health").json()["models"]
            assert entry["quantize"] == "int8" and entry["weight_bytes"] == before - 4 * elements + stored
        tts.close()


def _assert_replays_give_eager_tokens(generator_class, model, requests, *, join_every):
    """The same schedule (slots reused, the step shape changing as requests come and go) stepped eagerly and
    recorded-then-replayed in the trace mode: the same tokens."""
    schedule = [(j * join_every, j, r) for j, r in enumerate(requests)]
    eager = _run_schedule(generator_class(model, max_batch=2, step_mode=EAGER), schedule)
    traced = generator_class(model, max_batch=2, step_mode=TRACE)
    replayed = _run_schedule(traced, schedule)
    assert all(torch.equal(replayed[j], eager[j]) for j in range(len(requests)))
    assert 1 <= traced.runner.recorded_shapes <= 6


@pytest.mark.parametrize("mode", ["int8", "int8-dynamic"])
def test_quantized_dia1_steps_record_and_replay(dirs, mode):
    from dia1_requests import dia1_request

    tts = faster_dia.load(dirs["dia"], codec=dirs["dac"], device="cpu", quantize=mode)
    try:
        requests = [dia1_request(tts, i, seed=300 + i) for i in (0, 1, 2)]
        if mode == "int8":
            # Row by row like full precision: each request gets its tokens alone, whatever runs beside it.
            _assert_replays_give_solo_tokens(Dia1Generator, tts.model, requests, slots=2, join_every=9)
        else:
            # One activation scale per step for all rows: a request's tokens may depend on its neighbours, so
            # the replay is checked against eager steps on the same schedule.
            _assert_replays_give_eager_tokens(Dia1Generator, tts.model, requests, join_every=9)
    finally:
        tts.close()


def test_quantized_dia2_generates_and_its_steps_replay(dia2_dirs, tts2):
    tts = faster_dia.load(dia2_dirs["dia2"], codec=dia2_dirs["mimi"], device="cpu", quantize="int8-dynamic")
    try:
        # 4 per transformer layer, gate/up and down per depformer layer; the stacked depformer q/k/v stay.
        quantized = [w for m in tts.model.modules() for w in vars(m).values() if isinstance(w, q.QuantizedWeight)]
        assert len(quantized) == 4 * 2 + 2 * 2
        assert tts.model.dep_layers[0].qkv.dim() == 3 and not isinstance(tts.model.dep_layers[0].qkv,
                                                                          q.QuantizedWeight)
        speech = tts.generate("[S1] Hello there. [S2] Hi.", seed=3, max_new_tokens=30)
        assert len(speech.audio) > 0
        # Main transformer and depformer logits, teacher-forced, against full precision.
        gen = torch.Generator().manual_seed(4)
        text = torch.randint(8, 300, (1, 24), generator=gen)
        audio = torch.randint(0, 2048, (1, 24, 32), generator=gen)
        with torch.inference_mode():
            want, got = tts2.model(text, text, audio), tts.model(text, text, audio)
            for w, g in zip(want[1:], got[1:], strict=True):
                assert _relative_error(g, w) < BOUNDS["int8-dynamic"][1]
            tokens = audio[:, -1, :31]
            dep_want = tts2.model.depformer_forward(want[0][:, -1], tokens)
            dep_got = tts.model.depformer_forward(got[0][:, -1], tokens)
        assert _relative_error(dep_got, dep_want) < BOUNDS["int8-dynamic"][1]
        _assert_replays_give_eager_tokens(Dia2Generator, tts.model, [_dia2_request(tts, i) for i in (1, 3)],
                                          join_every=6)
    finally:
        tts.close()


def test_modes_that_cannot_run_say_why(dirs, tmp_path):
    with pytest.raises(InvalidInputError, match=r"fp8 needs a CUDA GPU with compute capability >= 8\.9"):
        faster_dia.load(dirs["dia"], codec=dirs["dac"], device="cpu", quantize="fp8")
    with pytest.raises(InvalidInputError, match="int8-dynamic runs on CPU only"):
        q.check_quantize("int8-dynamic", torch.device("cuda"), "dia1")
    with pytest.raises(InvalidInputError, match="int4 runs on CUDA and CPU only"):
        q.check_quantize("int4", torch.device("mps"), "dia1")
    with pytest.raises(InvalidInputError, match="not supported for voxtral"):
        q.check_quantize("int8", torch.device("cpu"), "voxtral")
    with pytest.raises(InvalidInputError, match="Unsupported quantize mode 'int3'"):
        check_load_options(quantize="int3")
    # A model none of whose matrices the kernel takes (int4 wants widths of 32 and 16) is refused, not silently
    # left in full precision.
    odd = write_tiny_checkpoint("dia-1.6b-0626", tmp_path / "odd", config_overrides={
        "encoder_hidden_size": 40, "decoder_hidden_size": 40, "encoder_intermediate_size": 72,
        "decoder_intermediate_size": 72, "decoder_heads": 2, "decoder_kv_heads": 1, "encoder_heads": 2,
        "encoder_kv_heads": 2, "cross_heads": 2, "cross_kv_heads": 2, "encoder_head_dim": 12,
        "decoder_head_dim": 12, "cross_head_dim": 12})
    with pytest.raises(InvalidInputError, match="No weight of this model has a shape the int4 kernels take"):
        faster_dia.load(odd, codec=dirs["dac"], device="cpu", quantize="int4")


def test_bfloat16_is_the_cpu_default_where_the_cpu_has_it(monkeypatch):
    from faster_dia import loading

    cpu, cuda = torch.device("cpu"), torch.device("cuda")
    monkeypatch.setattr(loading, "cpu_flags", lambda: frozenset({"avx512f", "avx512_bf16"}))
    assert pick_dtype(None, cpu) == torch.bfloat16
    monkeypatch.setattr(loading, "cpu_flags", lambda: frozenset({"avx512f", "avx512_vnni"}))
    assert pick_dtype(None, cpu) == torch.float32
    assert pick_dtype(None, cuda) == torch.bfloat16 and pick_dtype("float32", cpu) == torch.float32


def test_the_command_line_quantizes_and_says_how_much_the_weights_hold(dirs, tmp_path):
    from test_cli import run_cli

    out = tmp_path / "out.wav"
    result = run_cli("speak", "[S1] Hello there.", "-o", str(out), "--max-new-tokens", "30", "--no-progress",
                     "--model", str(dirs["dia"]), "--codec", str(dirs["dac"]), "--device", "cpu",
                     "--quantize", "int8-dynamic")
    assert result.returncode == 0, result.stderr
    assert re.search(r"^weights quantized \(int8-dynamic\): \d+ MiB$", result.stderr, re.M), result.stderr
    assert out.stat().st_size > 44


needs_cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")


@needs_cuda
@pytest.mark.parametrize("mode", ["int8", "int4", "fp8"])
def test_quantized_weights_on_cuda_stay_within_the_bounds_of_full_precision(dirs, mode):
    """The CUDA kernels (int8 weights cast per call, tinygemm int4, fp8 through torch._scaled_mm) against float32
    on the same GPU, with the CPU modes' bounds."""
    if mode == "fp8" and torch.cuda.get_device_capability() < (8, 9):
        pytest.skip("fp8 needs compute capability 8.9 or higher")
    full = faster_dia.load(dirs["dia"], codec=dirs["dac"], device="cuda", dtype="float32")
    tts = faster_dia.load(dirs["dia"], codec=dirs["dac"], device="cuda", dtype="float32", quantize=mode)
    try:
        speech = tts.generate(SCRIPT, seed=1, temperature=0.0, max_new_tokens=100)
        worst, agreement = _distance(full, tts, torch.as_tensor(speech.codes))
        _, logit_bound, agreement_bound = BOUNDS[mode]
        assert worst < logit_bound and agreement > agreement_bound
        assert q.weight_bytes(tts.model) < q.weight_bytes(full.model)
    finally:
        tts.close()
        full.close()
