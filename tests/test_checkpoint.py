"""Checkpoint reading: every published Dia-1.6B layout, both config schemas, strictness, tiny writers."""

from __future__ import annotations

import dataclasses
import json
import math
import shutil
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file

from faster_dia.errors import CheckpointError, ModelNotFoundError
from faster_dia.models.dia1.checkpoint import (
    LAYOUT_HF_SAFETENSORS,
    LAYOUT_NARI_BIN,
    LAYOUT_NARI_PTH,
    LAYOUT_NARI_SAFETENSORS,
    expected_hf_shapes,
    expected_nari_shapes,
    hf_to_nari,
    load_checkpoint,
    nari_to_hf,
    parse_config,
)
from faster_dia.models.dia1.config import VARIANT_0626, VARIANT_ORIGINAL
from faster_dia.testing import (
    DIA_KINDS,
    dia_config_json,
    nari_config_json,
    nari_reference_logits,
    tiny_dia_config,
    tiny_nari_state_dict,
    write_tiny_checkpoint,
)

EXPECTED_LAYOUT = {
    "dia-1.6b": (LAYOUT_NARI_SAFETENSORS, VARIANT_ORIGINAL),
    "dia-1.6b-pth": (LAYOUT_NARI_PTH, VARIANT_ORIGINAL),
    "dia-1.6b-0626": (LAYOUT_HF_SAFETENSORS, VARIANT_0626),
    "dia-1.6b-0626-bin": (LAYOUT_NARI_BIN, VARIANT_0626),
}


@pytest.fixture(scope="module")
def layout_dirs(tmp_path_factory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("tiny")
    return {kind: write_tiny_checkpoint(kind, root / kind, seed=7) for kind in DIA_KINDS}


def _copy(src: Path, dst: Path) -> Path:
    shutil.copytree(src, dst)
    return dst


def _same_state_dicts(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> bool:
    return list(a) == list(b) and all(torch.equal(a[name], b[name]) for name in a)


# --------------------------------------------------------------------------------------------------------
# Layouts
# --------------------------------------------------------------------------------------------------------


def test_all_layouts_load_to_identical_hf_state_dicts(layout_dirs):
    loaded = {kind: load_checkpoint(path) for kind, path in layout_dirs.items()}
    reference = loaded["dia-1.6b"]
    expected = expected_hf_shapes(reference.config)
    for kind, ckpt in loaded.items():
        layout, variant = EXPECTED_LAYOUT[kind]
        assert ckpt.layout == layout
        assert ckpt.variant == variant == ckpt.config.variant
        assert ckpt.source == str(layout_dirs[kind])
        assert all(path.is_file() for path in ckpt.files)
        assert {name: tuple(t.shape) for name, t in ckpt.state_dict.items()} == expected
        assert all(t.dtype == torch.float32 for t in ckpt.state_dict.values())
        assert _same_state_dicts(ckpt.state_dict, reference.state_dict), kind
        assert dataclasses.replace(ckpt.config, variant=VARIANT_ORIGINAL) == reference.config


def test_hf_names_and_shapes_follow_the_published_table():
    config = tiny_dia_config(VARIANT_0626)
    shapes = expected_hf_shapes(config)
    inner = config.encoder_heads * config.encoder_head_dim
    assert shapes["model.encoder.layers.0.self_attention.q_proj.weight"] == (inner, 32)
    assert shapes["model.encoder.layers.1.self_attention.o_proj.weight"] == (32, inner)
    assert shapes["model.encoder.layers.0.mlp.gate_up_proj.weight"] == (2 * 64, 32)
    assert shapes["model.encoder.layers.0.mlp.down_proj.weight"] == (32, 64)
    assert shapes["model.decoder.layers.0.self_attention.k_proj.weight"] == (2 * 16, 48)
    assert shapes["model.decoder.layers.0.cross_attention.k_proj.weight"] == (4 * 16, 32)
    assert shapes["model.decoder.embeddings.embed.weight"] == (9 * 1028, 48)
    assert shapes["logits_dense.weight"] == (9 * 1028, 48)
    nari = expected_nari_shapes(config)
    assert nari["decoder.logits_dense.weight"] == (48, 9, 1028)
    assert nari["decoder.layers.1.self_attention.o_proj.weight"] == (4, 16, 48)
    assert len(nari) == len(shapes) + config.channels - 1


def test_conversion_matches_dense_general_semantics():
    config = tiny_dia_config(VARIANT_0626)
    nari = tiny_nari_state_dict(config, seed=1)
    hf = nari_to_hf(nari, config)
    x = torch.randn(3, 48)
    # o_proj contracts (heads, head_dim); an nn.Linear sees the flattened heads.
    heads = torch.randn(3, 4, 16)
    kernel = nari["decoder.layers.0.self_attention.o_proj.weight"]
    linear = hf["model.decoder.layers.0.self_attention.o_proj.weight"]
    torch.testing.assert_close(heads.reshape(3, 64) @ linear.T, torch.tensordot(heads, kernel, dims=2))
    # wi_fused: rows [0, I) of gate_up_proj are the gate, [I, 2I) the up projection.
    fused = torch.tensordot(x, nari["decoder.layers.0.mlp.wi_fused.weight"], dims=1)
    gate_up = x @ hf["model.decoder.layers.0.mlp.gate_up_proj.weight"].T
    torch.testing.assert_close(gate_up[:, :96], fused[:, 0])
    torch.testing.assert_close(gate_up[:, 96:], fused[:, 1])
    # logits: row c*1028 + v is channel c, token v.
    logits = torch.tensordot(x, nari["decoder.logits_dense.weight"], dims=1)
    torch.testing.assert_close((x @ hf["logits_dense.weight"].T).view(3, 9, 1028), logits)
    # embeddings: channel c = rows c*1028 ...
    table = hf["model.decoder.embeddings.embed.weight"]
    assert torch.equal(table[5 * 1028 + 17], nari["decoder.embeddings.5.weight"][17])
    assert _same_state_dicts(hf_to_nari(hf, config), nari)


def test_tiny_weights_depend_only_on_seed(tmp_path):
    config = tiny_dia_config(VARIANT_ORIGINAL)
    a = tiny_nari_state_dict(config, seed=3)
    assert _same_state_dicts(a, tiny_nari_state_dict(config, seed=3))
    b = tiny_nari_state_dict(config, seed=4)
    assert not torch.equal(a["encoder.embedding.weight"], b["encoder.embedding.weight"])
    scaled = tiny_nari_state_dict(config, seed=3, eos_logit_scale=10.0)
    head, head_scaled = a["decoder.logits_dense.weight"], scaled["decoder.logits_dense.weight"]
    torch.testing.assert_close(head_scaled[:, 0, 1024], 10.0 * head[:, 0, 1024])
    head_scaled[:, 0, 1024] = head[:, 0, 1024]
    assert torch.equal(head, head_scaled)


def test_tiny_logits_are_not_degenerate():
    config = tiny_dia_config(VARIANT_0626)
    nari = tiny_nari_state_dict(config, seed=0)
    text = torch.randint(1, 256, (1, 10), generator=torch.Generator().manual_seed(0))
    audio = torch.randint(0, 1024, (1, 6, 9), generator=torch.Generator().manual_seed(1))
    logits = nari_reference_logits(nari, config, text, audio)
    assert torch.isfinite(logits).all()
    assert 0.3 < logits.std().item() < 5.0
    assert logits.argmax(-1).unique().numel() > 10


def test_transformers_loads_the_0626_layout(layout_dirs):
    transformers = pytest.importorskip("transformers")
    transformers.logging.set_verbosity_error()
    model, info = transformers.DiaForConditionalGeneration.from_pretrained(
        layout_dirs["dia-1.6b-0626"], output_loading_info=True
    )
    assert not info["missing_keys"] and not info["unexpected_keys"] and not info["mismatched_keys"]
    config = tiny_dia_config(VARIANT_0626)
    generator = torch.Generator().manual_seed(0)
    text = torch.randint(1, 256, (2, 12), generator=generator)
    text[1, 8:] = 0
    audio = torch.randint(0, 1024, (2, 7, 9), generator=generator)
    audio[:, 0] = config.bos_token_id
    with torch.no_grad():
        out = model.eval()(input_ids=text, attention_mask=(text != 0).long(), decoder_input_ids=audio).logits
    out = out.view(2, 9, 7, 1028).transpose(1, 2)
    expected = nari_reference_logits(tiny_nari_state_dict(config, seed=7), config, text, audio)
    torch.testing.assert_close(out, expected, rtol=1e-4, atol=1e-4)


def test_reference_cross_attention_rope_follows_variant():
    original = tiny_dia_config(VARIANT_ORIGINAL)
    nari = tiny_nari_state_dict(original, seed=0)
    text = torch.randint(1, 256, (1, 10), generator=torch.Generator().manual_seed(0))
    audio = torch.randint(0, 1024, (1, 4, 9), generator=torch.Generator().manual_seed(1))
    with_rope = nari_reference_logits(nari, original, text, audio)
    without = nari_reference_logits(nari, dataclasses.replace(original, variant=VARIANT_0626), text, audio)
    assert not torch.allclose(with_rope, without)


def test_published_file_sets(layout_dirs):
    files = {kind: sorted(p.name for p in path.iterdir()) for kind, path in layout_dirs.items()}
    assert files["dia-1.6b"] == ["config.json", "model.safetensors"]
    assert files["dia-1.6b-pth"] == ["config.json", "dia-v0_1.pth"]
    assert files["dia-1.6b-0626"] == [
        "config.json",
        "generation_config.json",
        "model-00001-of-00002.safetensors",
        "model-00002-of-00002.safetensors",
        "model.safetensors.index.json",
    ]
    assert files["dia-1.6b-0626-bin"] == ["config.json", "pytorch_model.bin"]
    index = json.loads((layout_dirs["dia-1.6b-0626"] / "model.safetensors.index.json").read_text())
    assert set(index["weight_map"].values()) == {
        "model-00001-of-00002.safetensors",
        "model-00002-of-00002.safetensors",
    }
    assert index["metadata"]["total_size"] == 4 * sum(
        math.prod(s) for s in expected_hf_shapes(tiny_dia_config(VARIANT_0626)).values()
    )
    nari_config = json.loads((layout_dirs["dia-1.6b"] / "config.json").read_text())
    assert {"version", "model", "training", "data"} <= set(nari_config)
    hf_config = json.loads((layout_dirs["dia-1.6b-0626"] / "config.json").read_text())
    assert hf_config["model_type"] == "dia" and "rope_theta" in hf_config["decoder_config"]


def test_variant_comes_from_the_files_not_the_name(layout_dirs, tmp_path):
    renamed_new = _copy(layout_dirs["dia-1.6b-0626"], tmp_path / "Dia-1.6B")
    renamed_old = _copy(layout_dirs["dia-1.6b"], tmp_path / "Dia-1.6B-0626")
    assert load_checkpoint(renamed_new).variant == VARIANT_0626
    assert load_checkpoint(renamed_old).variant == VARIANT_ORIGINAL


def test_config_overrides_survive_both_schemas(tmp_path):
    overrides = {
        "decoder_kv_heads": 1,
        "decoder_layers": 3,
        "rope_theta": 5000.0,
        "norm_eps": 1e-6,
        "delay_pattern": [0, 1, 2, 3, 4, 5, 6, 7, 8],
        "text_length": 512,
    }
    for kind in ("dia-1.6b", "dia-1.6b-0626", "dia-1.6b-0626-bin"):
        ckpt = load_checkpoint(write_tiny_checkpoint(kind, tmp_path / kind, config_overrides=overrides))
        assert ckpt.config == tiny_dia_config(ckpt.variant, overrides)
        assert ckpt.state_dict["model.decoder.layers.2.self_attention.k_proj.weight"].shape == (16, 48)


def test_nari_schema_maps_every_field():
    config = tiny_dia_config(VARIANT_ORIGINAL, {"eos_token_id": 1000, "text_pad_token_id": 3})
    assert parse_config(nari_config_json(config)) == config
    # Optional nari fields fall back to the nari code's defaults.
    raw = nari_config_json(config)
    for key in ("normalization_layer_epsilon", "rope_min_timescale", "rope_max_timescale", "weight_dtype"):
        del raw["model"][key]
    assert parse_config(raw) == config


def test_transformers_v5_config_spelling(layout_dirs):
    config = tiny_dia_config(
        VARIANT_0626, {"rope_theta": 20000.0, "eos_token_id": 1001, "bos_token_id": 1002}
    )
    raw = dia_config_json(config)
    for name in ("eos_token_id", "pad_token_id", "bos_token_id"):
        raw["decoder_config"][name] = raw.pop(name)
    for sub in ("encoder_config", "decoder_config"):
        del raw[sub]["rope_scaling"]
        raw[sub]["rope_parameters"] = {"rope_type": "default", "rope_theta": raw[sub].pop("rope_theta")}
    raw["transformers_version"] = "5.23.0"
    assert parse_config(raw) == config


def test_transformers_v5_save_pretrained_loads(layout_dirs, tmp_path):
    transformers = pytest.importorskip("transformers")
    transformers.logging.set_verbosity_error()
    model = transformers.DiaForConditionalGeneration.from_pretrained(layout_dirs["dia-1.6b-0626"])
    model.save_pretrained(tmp_path / "v5")
    saved = json.loads((tmp_path / "v5" / "config.json").read_text())
    assert "rope_parameters" in saved["decoder_config"]
    ckpt = load_checkpoint(tmp_path / "v5")
    assert ckpt.layout == LAYOUT_HF_SAFETENSORS
    assert [p.name for p in ckpt.files] == ["config.json", "model.safetensors"]
    assert ckpt.config == load_checkpoint(layout_dirs["dia-1.6b-0626"]).config
    assert _same_state_dicts(ckpt.state_dict, load_checkpoint(layout_dirs["dia-1.6b"]).state_dict)


# --------------------------------------------------------------------------------------------------------
# Unsupported configs
# --------------------------------------------------------------------------------------------------------


def _bad_config(edit) -> dict:
    raw = dia_config_json(tiny_dia_config(VARIANT_0626))
    edit(raw)
    return raw


@pytest.mark.parametrize(
    ("raw", "words"),
    [
        ({"model_type": "llama", "hidden_size": 8}, ["not a Dia-1.6B config", "hidden_size"]),
        ({**nari_config_json(tiny_dia_config(VARIANT_ORIGINAL)), "version": "0.2"}, ["version", "0.2"]),
        (_bad_config(lambda r: r.update(model_type="dia2")), ["model_type", "dia2"]),
        (
            _bad_config(lambda r: r["decoder_config"].update(rope_scaling={"rope_type": "linear"})),
            ["linear", "decoder_config"],
        ),
        (_bad_config(lambda r: r["encoder_config"].update(hidden_act="gelu")), ["hidden_act", "gelu"]),
        (_bad_config(lambda r: r.update(delay_pattern=[0, 1])), ["delay pattern", "9 channels"]),
        (_bad_config(lambda r: r["decoder_config"].update(num_key_value_heads=3)), ["3 KV heads"]),
        (_bad_config(lambda r: r["decoder_config"].update(cross_hidden_size=7)), ["cross_hidden_size"]),
        (_bad_config(lambda r: r["encoder_config"].update(num_hidden_layers="two")), ["num_hidden_layers"]),
    ],
)
def test_unsupported_configs_are_named(raw, words):
    with pytest.raises(CheckpointError) as error:
        parse_config(raw)
    for word in words:
        assert word in str(error.value)


def test_nari_config_missing_required_field():
    raw = nari_config_json(tiny_dia_config(VARIANT_ORIGINAL))
    del raw["model"]["decoder"]["kv_heads"]
    with pytest.raises(CheckpointError, match="model.decoder.kv_heads"):
        parse_config(raw)


# --------------------------------------------------------------------------------------------------------
# Strictness
# --------------------------------------------------------------------------------------------------------


def _edit_safetensors(path: Path, edit) -> None:
    tensors = load_file(str(path))
    edit(tensors)
    save_file(tensors, str(path), metadata={"format": "pt"})


def _edit_shard(directory: Path, shard: str, edit) -> None:
    """Edit one shard and keep the index consistent with it."""
    _edit_safetensors(directory / shard, edit)
    index_path = directory / "model.safetensors.index.json"
    index = json.loads(index_path.read_text())
    others = {k: v for k, v in index["weight_map"].items() if v != shard}
    others.update({name: shard for name in load_file(str(directory / shard))})
    index["weight_map"] = others
    index_path.write_text(json.dumps(index))


NARI_VICTIM = "decoder.layers.1.cross_attention.v_proj.weight"


def test_nari_missing_tensor(layout_dirs, tmp_path):
    directory = _copy(layout_dirs["dia-1.6b"], tmp_path / "m")
    _edit_safetensors(directory / "model.safetensors", lambda t: t.pop(NARI_VICTIM))
    with pytest.raises(CheckpointError, match=rf"missing {NARI_VICTIM}"):
        load_checkpoint(directory)


def test_nari_unexpected_tensor(layout_dirs, tmp_path):
    directory = _copy(layout_dirs["dia-1.6b"], tmp_path / "m")
    _edit_safetensors(
        directory / "model.safetensors", lambda t: t.update({"decoder.extra.weight": torch.ones(2)})
    )
    with pytest.raises(CheckpointError, match=r"unexpected decoder\.extra\.weight"):
        load_checkpoint(directory)


def test_nari_misshaped_tensor(layout_dirs, tmp_path):
    directory = _copy(layout_dirs["dia-1.6b"], tmp_path / "m")

    def reshape(tensors):
        tensors[NARI_VICTIM] = tensors[NARI_VICTIM].reshape(32, 64).contiguous()

    _edit_safetensors(directory / "model.safetensors", reshape)
    with pytest.raises(CheckpointError) as error:
        load_checkpoint(directory)
    assert f"{NARI_VICTIM} (expected [32, 4, 16], found [32, 64])" in str(error.value)


def test_nari_pth_missing_tensor(layout_dirs, tmp_path):
    directory = _copy(layout_dirs["dia-1.6b-pth"], tmp_path / "m")
    tensors = torch.load(directory / "dia-v0_1.pth", weights_only=True)
    del tensors["encoder.norm.weight"]
    torch.save(tensors, directory / "dia-v0_1.pth")
    with pytest.raises(CheckpointError, match=r"missing encoder\.norm\.weight"):
        load_checkpoint(directory)


def test_hf_shard_missing_unexpected_and_misshaped(layout_dirs, tmp_path):
    shard = "model-00002-of-00002.safetensors"
    victim = "model.decoder.layers.1.mlp.down_proj.weight"
    index = json.loads((layout_dirs["dia-1.6b-0626"] / "model.safetensors.index.json").read_text())
    assert index["weight_map"][victim] == shard

    directory = _copy(layout_dirs["dia-1.6b-0626"], tmp_path / "missing")
    _edit_shard(directory, shard, lambda t: t.pop(victim))
    with pytest.raises(CheckpointError, match=rf"missing {victim}"):
        load_checkpoint(directory)

    directory = _copy(layout_dirs["dia-1.6b-0626"], tmp_path / "unexpected")
    _edit_shard(directory, shard, lambda t: t.update({"model.decoder.bias": torch.zeros(3)}))
    with pytest.raises(CheckpointError, match=r"unexpected model\.decoder\.bias"):
        load_checkpoint(directory)

    directory = _copy(layout_dirs["dia-1.6b-0626"], tmp_path / "shape")
    _edit_shard(directory, shard, lambda t: t.update({victim: t[victim].T.contiguous()}))
    with pytest.raises(CheckpointError) as error:
        load_checkpoint(directory)
    assert f"{victim} (expected [48, 96], found [96, 48])" in str(error.value)


def test_shard_index_must_match_the_shards(layout_dirs, tmp_path):
    directory = _copy(layout_dirs["dia-1.6b-0626"], tmp_path / "m")
    victim = "logits_dense.weight"
    shard = json.loads((directory / "model.safetensors.index.json").read_text())["weight_map"][victim]
    _edit_safetensors(directory / shard, lambda t: t.pop(victim))
    with pytest.raises(CheckpointError, match=r"index lists tensors its shards do not hold: logits_dense"):
        load_checkpoint(directory)


def test_missing_shard_file(layout_dirs, tmp_path):
    directory = _copy(layout_dirs["dia-1.6b-0626"], tmp_path / "m")
    (directory / "model-00001-of-00002.safetensors").unlink()
    with pytest.raises(ModelNotFoundError, match="model-00001-of-00002.safetensors"):
        load_checkpoint(directory)


def test_derived_buffers_are_tolerated(layout_dirs, tmp_path):
    nari_dir = _copy(layout_dirs["dia-1.6b"], tmp_path / "nari")
    _edit_safetensors(
        nari_dir / "model.safetensors",
        lambda t: t.update({"decoder.layers.0.self_attention.rotary_emb.timescale": torch.ones(8)}),
    )
    hf_dir = _copy(layout_dirs["dia-1.6b-0626"], tmp_path / "hf")
    _edit_shard(
        hf_dir,
        "model-00001-of-00002.safetensors",
        lambda t: t.update(
            {
                "model.decoder.embeddings.offsets": torch.arange(9) * 1028,
                "model.encoder.rotary_emb.inv_freq": torch.ones(8),
            }
        ),
    )
    reference = load_checkpoint(layout_dirs["dia-1.6b"]).state_dict
    assert _same_state_dicts(load_checkpoint(nari_dir).state_dict, reference)
    assert _same_state_dicts(load_checkpoint(hf_dir).state_dict, reference)


def test_mixed_naming_is_refused(layout_dirs, tmp_path):
    directory = _copy(layout_dirs["dia-1.6b"], tmp_path / "m")
    _edit_safetensors(
        directory / "model.safetensors", lambda t: t.update({"logits_dense.weight": torch.ones(1)})
    )
    with pytest.raises(CheckpointError, match="mix transformers tensor names"):
        load_checkpoint(directory)


def test_wrapped_pth_is_unwrapped(layout_dirs, tmp_path):
    directory = _copy(layout_dirs["dia-1.6b-pth"], tmp_path / "m")
    tensors = torch.load(directory / "dia-v0_1.pth", weights_only=True)
    torch.save({"state_dict": tensors}, directory / "dia-v0_1.pth")
    assert _same_state_dicts(
        load_checkpoint(directory).state_dict, load_checkpoint(layout_dirs["dia-1.6b"]).state_dict
    )


def test_weight_file_preference(layout_dirs, tmp_path):
    directory = _copy(layout_dirs["dia-1.6b"], tmp_path / "both")
    shutil.copy(layout_dirs["dia-1.6b-pth"] / "dia-v0_1.pth", directory)
    assert load_checkpoint(directory).layout == LAYOUT_NARI_SAFETENSORS
    directory = _copy(layout_dirs["dia-1.6b-0626"], tmp_path / "hf-and-bin")
    shutil.copy(layout_dirs["dia-1.6b-0626-bin"] / "pytorch_model.bin", directory)
    assert load_checkpoint(directory).layout == LAYOUT_HF_SAFETENSORS


def test_no_weights_or_no_config(layout_dirs, tmp_path):
    directory = tmp_path / "config-only"
    directory.mkdir()
    shutil.copy(layout_dirs["dia-1.6b"] / "config.json", directory)
    with pytest.raises(CheckpointError, match="none of the weight files"):
        load_checkpoint(directory)
    directory = _copy(layout_dirs["dia-1.6b"], tmp_path / "no-config")
    (directory / "config.json").unlink()
    with pytest.raises(ModelNotFoundError, match="config.json"):
        load_checkpoint(directory)


def test_garbage_files_raise_checkpoint_errors(layout_dirs, tmp_path):
    directory = _copy(layout_dirs["dia-1.6b"], tmp_path / "bad-json")
    (directory / "config.json").write_text("{not json")
    with pytest.raises(CheckpointError, match="cannot be read as JSON"):
        load_checkpoint(directory)
    directory = _copy(layout_dirs["dia-1.6b"], tmp_path / "bad-safetensors")
    (directory / "model.safetensors").write_bytes(b"\x00" * 64)
    with pytest.raises(CheckpointError, match="not a valid safetensors file"):
        load_checkpoint(directory)
    directory = _copy(layout_dirs["dia-1.6b-pth"], tmp_path / "bad-pth")
    (directory / "dia-v0_1.pth").write_bytes(b"not a pickle")
    with pytest.raises(CheckpointError, match="cannot be read as a plain PyTorch state dict"):
        load_checkpoint(directory)


# --------------------------------------------------------------------------------------------------------
# Tiny DAC
# --------------------------------------------------------------------------------------------------------


def test_tiny_dac(tmp_path):
    transformers = pytest.importorskip("transformers")
    directory = write_tiny_checkpoint("dac", tmp_path / "dac", seed=1)
    model = transformers.DacModel.from_pretrained(directory).eval()
    assert model.config.hop_length == 512
    assert model.config.n_codebooks == 9 and model.config.codebook_size == 1024
    assert model.config.sampling_rate == 44100
    codes = torch.randint(0, 1024, (1, 9, 5))
    with torch.no_grad():
        audio = model.decode(audio_codes=codes).audio_values
    assert audio.shape[-1] == 5 * 512
    again = write_tiny_checkpoint("dac", tmp_path / "dac2", seed=1)
    assert _same_state_dicts(
        load_file(str(directory / "model.safetensors")), load_file(str(again / "model.safetensors"))
    )
