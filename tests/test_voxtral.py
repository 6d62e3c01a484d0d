"""Voxtral: strict checkpoint reading, and greedy parity of the slot generator with transformers'
VoxtralForConditionalGeneration.generate on the same tiny random weights."""

from __future__ import annotations

import pytest
import torch

from faster_dia.engine import Engine
from faster_dia.errors import CheckpointError, InvalidInputError
from faster_dia.models.voxtral.checkpoint import load_checkpoint
from faster_dia.models.voxtral.generator import VoxtralGenerator, VoxtralRequest
from faster_dia.models.voxtral.model import VoxtralModel
from faster_dia.testing import write_tiny_voxtral

AUDIO = 24  # the tiny config's audio_token_id
TOKENS_PER_CHUNK = 8


@pytest.fixture(scope="module")
def voxtral_dir(tmp_path_factory):
    return write_tiny_voxtral(tmp_path_factory.mktemp("voxtral") / "hf")


@pytest.fixture(scope="module")
def model(voxtral_dir):
    ck = load_checkpoint(voxtral_dir)
    return VoxtralModel(ck.config, ck.state_dict)


@pytest.fixture(scope="module")
def reference(voxtral_dir):
    transformers = pytest.importorskip("transformers")
    return transformers.VoxtralForConditionalGeneration.from_pretrained(voxtral_dir).eval()


def conversation(seed: int, text: int, audio_chunks: list[int]) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Prompt ids with a placeholder run per audio (each of the given chunks), and the mel chunks."""
    g = torch.Generator().manual_seed(seed)
    parts = [torch.tensor([1])]
    for chunks in audio_chunks:
        parts += [torch.randint(30, 160, (3,), generator=g), torch.full((chunks * TOKENS_PER_CHUNK,), AUDIO)]
    parts.append(torch.randint(30, 160, (text,), generator=g))
    total = sum(audio_chunks)
    features = torch.randn(total, 8, 64, generator=g) if total else None
    return torch.cat(parts), features


def reference_tokens(reference, ids, features, max_new: int) -> list[int]:
    kwargs = {} if features is None else {"input_features": features}
    with torch.no_grad():
        out = reference.generate(input_ids=ids[None], max_new_tokens=max_new, do_sample=False, pad_token_id=0,
                                 **kwargs)
    tokens = out[0, ids.shape[0]:].tolist()
    return tokens[:-1] if tokens and tokens[-1] == reference.config.text_config.eos_token_id else tokens


def run_alone(model, request) -> list[int]:
    gen = VoxtralGenerator(model, max_batch=1, max_seq_len=256)
    state = gen.prepare(request)
    while not state.finished:
        gen.step()
    return gen.frames(state, 0, state.final_frames).tolist()


def test_encoder_matches_transformers(model, reference):
    features = torch.randn(3, 8, 64)
    with torch.no_grad():
        expected = reference.get_audio_features(features).pooler_output
    torch.testing.assert_close(model.encode_audio(features), expected, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("audio_chunks", [[], [1], [1, 2]], ids=["text-only", "one-audio", "two-audio"])
def test_greedy_matches_transformers(model, reference, audio_chunks):
    ids, features = conversation(3, 7, audio_chunks)
    expected = reference_tokens(reference, ids, features, 24)
    assert run_alone(model, VoxtralRequest(ids, features=features, max_new_tokens=24)) == expected


def test_batch_of_mixed_lengths_matches_transformers(model, reference):
    """Requests of different lengths, joining one engine together: each gets the tokens it gets alone."""
    cases = [conversation(10 + i, 2 + 5 * i, chunks) for i, chunks in enumerate([[], [1], [2], [1, 1], []])]
    lengths = [9, 20, 14, 30, 5]
    engine = Engine(VoxtralGenerator(model, max_batch=3, max_seq_len=256))
    try:
        subs = engine.submit([VoxtralRequest(ids, features=f, max_new_tokens=n)
                              for (ids, f), n in zip(cases, lengths, strict=True)])
        results = []
        for sub in subs:
            kind, tokens = sub.events.get(timeout=60)
            assert kind == "done"
            results.append(tokens.tolist())
    finally:
        engine.close()
    for (ids, f), n, got in zip(cases, lengths, results, strict=True):
        assert got == reference_tokens(reference, ids, f, n)


def test_sampled_tokens_do_not_depend_on_neighbours(model):
    ids, features = conversation(5, 6, [1])
    request = VoxtralRequest(ids, features=features, max_new_tokens=16, temperature=1.0, top_p=0.9, seed=7)
    alone = run_alone(model, request)
    gen = VoxtralGenerator(model, max_batch=4, max_seq_len=256)
    others = [gen.prepare(VoxtralRequest(*conversation(20 + i, 3 + i, [i % 2])[:1],
                                         features=conversation(20 + i, 3 + i, [i % 2])[1],
                                         max_new_tokens=40, temperature=0.8, seed=i)) for i in range(2)]
    for _ in range(3):
        gen.step()
    state = gen.prepare(request)
    while not state.finished:
        gen.step()
    assert gen.frames(state, 0, state.final_frames).tolist() == alone
    assert all(not o.finished for o in others)
    # A different seed samples differently.
    other_seed = run_alone(model, VoxtralRequest(ids, features=features, max_new_tokens=16, temperature=1.0,
                                                 top_p=0.9, seed=8))
    assert other_seed != alone


def test_stop_tokens_end_a_request(model):
    ids, _ = conversation(3, 7, [])
    greedy = run_alone(model, VoxtralRequest(ids, max_new_tokens=12))
    stop = greedy[4]
    first = greedy.index(stop)
    gen = VoxtralGenerator(model, max_batch=1, max_seq_len=256)
    state = gen.prepare(VoxtralRequest(ids, max_new_tokens=12, stop_token_ids=(stop,)))
    while not state.finished:
        gen.step()
    assert state.finish_reason == "stop"
    assert gen.frames(state, 0, state.final_frames).tolist() == greedy[:first]


def test_invalid_requests_are_refused(model):
    gen = VoxtralGenerator(model, max_batch=1, max_seq_len=64)
    ids, features = conversation(3, 4, [1])
    with pytest.raises(InvalidInputError, match="placeholders"):
        gen.validate(VoxtralRequest(ids, features=None))
    with pytest.raises(InvalidInputError, match="max_tokens"):
        gen.validate(VoxtralRequest(ids, features=features, max_new_tokens=1000))
    with pytest.raises(InvalidInputError, match="shape"):
        gen.validate(VoxtralRequest(ids, features=features[:, :, :10]))
    with pytest.raises(InvalidInputError, match="positions|long"):
        gen.validate(VoxtralRequest(torch.full((70,), 40)))


def test_strict_loading_names_the_problem(tmp_path, voxtral_dir):
    import json
    import shutil

    broken = tmp_path / "broken"
    shutil.copytree(voxtral_dir, broken)
    config = json.loads((broken / "config.json").read_text())
    config["text_config"]["num_hidden_layers"] = 3
    (broken / "config.json").write_text(json.dumps(config))
    with pytest.raises(CheckpointError, match="missing language_model.model.layers.2"):
        load_checkpoint(broken)
    del config["audio_token_id"]
    (broken / "config.json").write_text(json.dumps(config))
    with pytest.raises(CheckpointError, match="audio_token_id"):
        load_checkpoint(broken)


def test_native_layout_holds_the_same_network(tmp_path, voxtral_dir, model):
    """Mistral's params.json + consolidated.safetensors load to the same weights as the transformers files."""
    native_dir = write_tiny_voxtral(tmp_path / "native", layout="mistral")
    native = load_checkpoint(native_dir)
    assert native.layout == "mistral"
    assert native.config == model.config
    hf = load_checkpoint(voxtral_dir)
    assert native.state_dict.keys() == hf.state_dict.keys()
    for name, tensor in hf.state_dict.items():
        torch.testing.assert_close(native.state_dict[name], tensor, rtol=0, atol=1e-6, msg=name)
    ids, features = conversation(4, 6, [1])
    native_model = VoxtralModel(native.config, native.state_dict)
    request = VoxtralRequest(ids, features=features, max_new_tokens=12)
    assert run_alone(native_model, request) == run_alone(model, request)


def test_native_layout_is_strict(tmp_path):
    from safetensors.torch import load_file, save_file

    native_dir = write_tiny_voxtral(tmp_path / "native", layout="mistral")
    weights = load_file(native_dir / "consolidated.safetensors")
    weights["layers.0.attention.wz.weight"] = torch.zeros(2)
    save_file(weights, native_dir / "consolidated.safetensors")
    with pytest.raises(CheckpointError, match="layers.0.attention.wz.weight"):
        load_checkpoint(native_dir)
    del weights["layers.0.attention.wz.weight"], weights["output.weight"]
    save_file(weights, native_dir / "consolidated.safetensors")
    with pytest.raises(CheckpointError, match="missing language_model.lm_head.weight"):
        load_checkpoint(native_dir)


def test_replayed_steps_match_eager(model):
    """The decode step is capture-safe: in the trace mode (which records the step once per shape and replays it,
    as CUDA graphs do, refusing host reads) mixed greedy and sampled requests get the eager tokens."""
    cases = [(conversation(30 + i, 3 + 4 * i, [i % 2]), dict(temperature=0.7 * (i % 2), seed=i)) for i in range(3)]
    results = {}
    for mode in ("eager", "trace"):
        gen = VoxtralGenerator(model, max_batch=4, max_seq_len=128, step_mode=mode)
        states = [gen.prepare(VoxtralRequest(ids, features=f, max_new_tokens=10 + 3 * i, **opts))
                  for i, ((ids, f), opts) in enumerate(cases)]
        while not all(s.finished for s in states):
            gen.step()
        results[mode] = [gen.frames(s, 0, s.final_frames).tolist() for s in states]
        if mode == "trace":
            assert gen.runner.recorded_shapes >= 1
    assert results["trace"] == results["eager"]
