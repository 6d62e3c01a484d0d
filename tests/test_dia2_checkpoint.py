"""Dia2 checkpoint reading: config schema and defaults, strict tensor checks, Hub cache, the text tokenizer."""

from __future__ import annotations

import copy
import json
import math
import shutil
from functools import lru_cache
from pathlib import Path

import pytest
import regex
import torch
from safetensors.torch import load_file, save_file

from faster_dia.errors import CheckpointError, ModelNotFoundError
from faster_dia.models.dia2.checkpoint import (
    expected_shapes,
    is_dia2_config,
    load_checkpoint,
    parse_config,
)
from faster_dia.models.dia2.config import Dia2Config
from faster_dia.models.dia2.tokenizer import load_tokenizer
from faster_dia.testing import (
    TINY_TOKENIZER_ADDED_TOKENS,
    TINY_TOKENIZER_SPECIAL_TOKENS,
    TINY_TOKENIZER_WORDS,
    dia2_config_json,
    dia_config_json,
    nari_config_json,
    seed_hub_cache,
    tiny_dia2_config,
    tiny_dia2_state_dict,
    tiny_dia_config,
    write_tiny_checkpoint,
    write_tiny_tokenizer,
)


@pytest.fixture(scope="module")
def dia2_dir(tmp_path_factory) -> Path:
    return write_tiny_checkpoint("dia2", tmp_path_factory.mktemp("dia2") / "ckpt", seed=3)


@pytest.fixture(scope="module")
def raw_config(dia2_dir) -> dict:
    return json.loads((dia2_dir / "config.json").read_text())


def _copy(src: Path, dst: Path) -> Path:
    shutil.copytree(src, dst)
    return dst


# --------------------------------------------------------------------------------------------------------
# Config
# --------------------------------------------------------------------------------------------------------


def test_written_config_has_the_published_schema(raw_config):
    assert set(raw_config) == {"data", "model", "runtime"}  # no model_type, no assets
    assert set(raw_config["model"]) >= {"decoder", "depformer", "normalization_layer_epsilon"}
    data = raw_config["data"]
    assert data["delay_pattern"] == [16] + [18] * 31
    assert (data["channels"], data["audio_vocab_size"]) == (34, 2050)
    assert (data["text_new_word_token_id"], data["text_pad_token_id"], data["text_zero_token_id"]) == (
        2,
        3,
        7,
    )
    assert raw_config["model"]["depformer"]["text_embedding"] is False
    assert len(raw_config["runtime"]["weights_schedule"]) == 31


def test_is_dia2_config_tells_the_three_schemas_apart(raw_config):
    assert is_dia2_config(raw_config)
    assert not is_dia2_config(nari_config_json(tiny_dia_config("original")))
    assert not is_dia2_config(dia_config_json(tiny_dia_config("0626")))
    assert not is_dia2_config({k: v for k, v in raw_config.items() if k != "runtime"})
    assert not is_dia2_config([raw_config])


def test_config_round_trips_through_json(dia2_dir, raw_config):
    config = parse_config(raw_config)
    assert config == tiny_dia2_config(config.text_vocab_size)
    assert dia2_config_json(config) == raw_config
    assert config.num_codebooks == 32 and config.depformer_stages == 31
    assert config.weight_group_ids == (0, 1, 2)


def test_optional_fields_take_the_reference_defaults(raw_config):
    raw = copy.deepcopy(raw_config)
    for key in (
        "text_zero_token_id",
        "audio_pad_token_id",
        "audio_bos_token_id",
        "first_word_min_start",
        "max_pad",
        "second_stream_ahead",
    ):
        del raw["data"][key]
    for key in ("dropout", "rope_min_timescale", "rope_max_timescale", "normalization_layer_epsilon"):
        del raw["model"][key]
    del raw["model"]["depformer"]["apply_rope"]
    del raw["model"]["depformer"]["text_embedding"]
    raw["runtime"] = {}
    raw["data"]["audio_vocab_size"] = 2060
    config = parse_config(raw)
    assert config.text_zero_token_id == 7
    assert (config.audio_pad_token_id, config.audio_bos_token_id) == (2059, 2058)
    assert (config.first_word_min_start, config.max_pad, config.second_stream_ahead) == (0, 0, 0)
    assert config.norm_eps == 1e-5
    assert (config.rope_min_timescale, config.rope_max_timescale) == (1.0, 10000.0)
    assert config.depformer_apply_rope is True
    # The reference builds a depformer text embedding unless the file says otherwise.
    assert config.depformer_text_embedding is True
    assert config.weights_schedule == tuple(range(31))
    assert config.max_context_steps == 1500
    assert config.decoder_mlp_activations == config.depformer_mlp_activations == ("silu", "linear")


def test_missing_required_fields_are_all_named(raw_config):
    raw = copy.deepcopy(raw_config)
    del raw["data"]["channels"]
    del raw["data"]["action_new_word_token_id"]
    del raw["model"]["decoder"]["kv_heads"]
    with pytest.raises(CheckpointError) as info:
        parse_config(raw)
    message = str(info.value)
    for field in ("data.channels", "data.action_new_word_token_id", "model.decoder.kv_heads"):
        assert field in message

    raw = copy.deepcopy(raw_config)
    del raw["model"]["depformer"]
    with pytest.raises(CheckpointError, match="model.depformer"):
        parse_config(raw)


def test_missing_runtime_block_is_rejected(raw_config):
    raw = {k: v for k, v in raw_config.items() if k != "runtime"}
    with pytest.raises(CheckpointError, match="'runtime'"):
        parse_config(raw)


@pytest.mark.parametrize(
    ("path", "value", "message"),
    [
        (("data", "delay_pattern"), [16] * 31, "delay pattern has 31 entries"),
        (("runtime", "weights_schedule"), [0] * 30, "weights schedule has 30 entries"),
        (("model", "depformer", "kv_heads"), 1, "depformer has 2 query heads but 1 KV heads"),
        (("model", "decoder", "kv_heads"), 3, "not a multiple"),
        (("data", "channels"), "34", "expected a int"),
        (("model", "depformer", "mlp_activations"), ["tanh", "linear"], "mlp_activations"),
    ],
)
def test_unusable_config_values(raw_config, path, value, message):
    raw = copy.deepcopy(raw_config)
    block = raw
    for key in path[:-1]:
        block = block[key]
    block[path[-1]] = value
    with pytest.raises(CheckpointError, match=message):
        parse_config(raw)


def _published_config(size: str) -> Dia2Config:
    """The Dia2-1B / Dia2-2B configs as far as they are known (the weights schedules are not published)."""
    if size == "1B":
        return Dia2Config(
            decoder_layers=30,
            decoder_hidden_size=1024,
            depformer_layers=3,
            weights_schedule=(0,) * 11 + (1,) * 10 + (2,) * 10,
        )
    return Dia2Config(
        decoder_layers=28,
        decoder_hidden_size=2048,
        depformer_layers=4,
        weights_schedule=(0,) * 7 + (1,) * 6 + (2,) * 6 + (3,) * 6 + (4,) * 6,
    )


@pytest.mark.parametrize(
    ("size", "tensors", "params"), [("1B", 440, 1_076_244_736), ("2B", 450, 1_919_556_608)]
)
def test_expected_shapes_match_the_published_files(size, tensors, params):
    # Tensor counts and parameter totals of the published model.safetensors files.
    shapes = expected_shapes(_published_config(size))
    assert len(shapes) == tensors
    assert sum(math.prod(s) for s in shapes.values()) == params


def test_expected_shapes_variants():
    base = Dia2Config(decoder_layers=1, depformer_layers=1)
    low_rank = expected_shapes(Dia2Config(decoder_layers=1, depformer_layers=1, decoder_low_rank_dim=256))
    assert low_rank["transformer.text_embed.embedding.weight"] == (49280, 256)
    assert low_rank["transformer.text_embed.main_proj.weight"] == (2048, 256)
    with_text = expected_shapes(
        Dia2Config(decoder_layers=1, depformer_layers=1, depformer_text_embedding=True)
    )
    assert set(with_text) - set(expected_shapes(base)) == {
        "depformer.text_embed.embedding.weight",
        "depformer.text_embed.main_proj.weight",
        "depformer.text_embed.second_proj.weight",
    }
    assert with_text["depformer.text_embed.embedding.weight"] == (49280, 1024)
    # Group ids need not be contiguous: one set of projections per distinct id.
    sparse = expected_shapes(
        Dia2Config(decoder_layers=1, depformer_layers=1, weights_schedule=(0,) * 30 + (4,))
    )
    assert [n for n in sparse if ".depformer_in." in n] == [
        "depformer.depformer_in.0.weight",
        "depformer.depformer_in.4.weight",
    ]


# --------------------------------------------------------------------------------------------------------
# Weights
# --------------------------------------------------------------------------------------------------------


def test_tiny_checkpoint_round_trips(dia2_dir):
    loaded = load_checkpoint(dia2_dir)
    config = loaded.config
    expected = tiny_dia2_state_dict(config, seed=3)
    assert list(loaded.state_dict) == list(expected_shapes(config)) == list(expected)
    assert all(torch.equal(loaded.state_dict[n], expected[n]) for n in expected)
    assert all(t.dtype == torch.float32 for t in loaded.state_dict.values())
    assert loaded.state_dict["transformer.layers.0.attn.q_proj.weight"].shape == (4 * 16, 64)
    assert loaded.state_dict["transformer.layers.1.attn.k_proj.weight"].shape == (2 * 16, 64)
    assert loaded.state_dict["depformer.layers.0.self_attention.in_proj.2.weight"].shape == (3 * 2 * 16, 32)
    assert loaded.state_dict["depformer.depformer_in.1.weight"].shape == (32, 64)
    assert loaded.state_dict["depformer.logits.30.weight"].shape == (2050, 32)
    assert loaded.source == str(dia2_dir)
    assert loaded.directory == loaded.tokenizer_directory == dia2_dir.resolve()
    assert {p.name for p in loaded.files} >= {"config.json", "model.safetensors", "vocab.json", "merges.txt"}


def test_tiny_weights_keep_activations_sane(dia2_dir):
    sd = load_checkpoint(dia2_dir).state_dict
    x = torch.randn(256, 64)
    out = x @ sd["transformer.layers.0.attn.q_proj.weight"].T
    assert 0.5 < out.std().item() < 2.0
    assert 0.3 < sd["transformer.layers.0.attn.q_norm.weight"].mean().item() < 0.7  # 16 ** -0.25


def test_low_rank_and_depformer_text_embedding_variant(tmp_path):
    directory = write_tiny_checkpoint(
        "dia2",
        tmp_path / "v",
        config_overrides={"decoder_low_rank_dim": 16, "depformer_text_embedding": True},
    )
    loaded = load_checkpoint(directory)
    assert loaded.config.decoder_low_rank_dim == 16
    assert loaded.state_dict["transformer.text_embed.embedding.weight"].shape == (448, 16)
    assert loaded.state_dict["transformer.text_embed.second_proj.weight"].shape == (64, 16)
    assert loaded.state_dict["depformer.text_embed.main_proj.weight"].shape == (32, 32)


def _rewrite_weights(directory: Path, edit) -> None:
    tensors = load_file(str(directory / "model.safetensors"))
    edit(tensors)
    save_file(tensors, str(directory / "model.safetensors"))


def test_missing_unexpected_and_misshaped_tensors(dia2_dir, tmp_path):
    broken = _copy(dia2_dir, tmp_path / "broken")

    def edit(tensors):
        del tensors["depformer.layers.1.self_attention.out_proj.2.weight"]
        tensors["depformer.layers.0.self_attention.in_proj.3.weight"] = torch.zeros(96, 32)
        tensors["transformer.cb0_head.weight"] = torch.zeros(2048, 64)

    _rewrite_weights(broken, edit)
    with pytest.raises(CheckpointError) as info:
        load_checkpoint(broken)
    message = str(info.value)
    assert "missing depformer.layers.1.self_attention.out_proj.2.weight" in message
    assert "unexpected depformer.layers.0.self_attention.in_proj.3.weight" in message
    assert "transformer.cb0_head.weight (expected [2050, 64], found [2048, 64])" in message


def test_config_that_disagrees_with_the_weights(dia2_dir, tmp_path):
    broken = _copy(dia2_dir, tmp_path / "schedule")
    raw = json.loads((broken / "config.json").read_text())
    raw["runtime"]["weights_schedule"] = [0] * 31  # the file holds groups 0, 1 and 2
    (broken / "config.json").write_text(json.dumps(raw))
    with pytest.raises(CheckpointError, match="unexpected depformer.depformer_in.1.weight"):
        load_checkpoint(broken)


def test_missing_files(dia2_dir, tmp_path):
    no_weights = _copy(dia2_dir, tmp_path / "no_weights")
    (no_weights / "model.safetensors").unlink()
    with pytest.raises(ModelNotFoundError, match="model.safetensors"):
        load_checkpoint(no_weights)
    no_vocab = _copy(dia2_dir, tmp_path / "no_vocab")
    (no_vocab / "vocab.json").unlink()
    with pytest.raises(ModelNotFoundError, match="vocab.json"):
        load_checkpoint(no_vocab)


def test_load_by_repo_id_from_the_hub_cache(dia2_dir, tmp_path, monkeypatch):
    cache = tmp_path / "hub"
    snapshot = seed_hub_cache(cache, "nari-labs/Dia2-2B", dia2_dir)
    monkeypatch.setenv("HF_HUB_CACHE", str(cache))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    loaded = load_checkpoint("nari-labs/Dia2-2B")
    assert loaded.source == "nari-labs/Dia2-2B"
    assert loaded.directory == snapshot
    assert (loaded.directory / "tokenizer_config.json").is_file()
    assert load_tokenizer(loaded.tokenizer_directory).token_id("[S1]") is not None
    with pytest.raises(ModelNotFoundError, match="HF_HUB_OFFLINE"):
        load_checkpoint("nari-labs/Dia2-1B")


# --------------------------------------------------------------------------------------------------------
# Tokenizer
# --------------------------------------------------------------------------------------------------------


def test_tokenizer_ids(dia2_dir, raw_config):
    tok = load_tokenizer(dia2_dir)
    for i, token in enumerate(TINY_TOKENIZER_SPECIAL_TOKENS):
        assert tok.token_id(token) == i
    assert tok.bos_token_id == 0  # as the published tokenizer reports; the runtime feeds 1
    for tag in TINY_TOKENIZER_ADDED_TOKENS:
        assert tok.encode(tag) == [tok.token_id(tag)]
    assert tok.token_id("[S1]") != tok.token_id("[S2]")
    assert tok.token_id("[S3]") is None
    assert tok.vocab_size <= raw_config["data"]["text_vocab_size"]
    # Ids 0..7 are model text ids of the runtime (BOS, new word, pad, zero): no text may produce them.
    text = " ".join(TINY_TOKENIZER_WORDS) + " Hello, World! 1234 (laughs) x y z ? é"
    assert min(tok.encode(text)) >= 8
    assert tok.encode("[S1] hello (laughs) there")[0] == tok.token_id("[S1]")
    assert tok.decode(tok.encode("[S1] hello (laughs) there")) == "[S1] hello (laughs) there"


def test_tiny_tokenizer_is_deterministic(dia2_dir, tmp_path):
    again = write_tiny_tokenizer(tmp_path / "again")
    for name in ("vocab.json", "merges.txt", "tokenizer.json", "added_tokens.json", "tokenizer_config.json"):
        assert (again / name).read_bytes() == (dia2_dir / name).read_bytes()
    words = ["hello", "world", "dialogue", "xylophone"]
    assert [load_tokenizer(again).encode(w) for w in words] == [
        load_tokenizer(dia2_dir).encode(w) for w in words
    ]


@lru_cache(maxsize=1)
def _byte_to_unicode() -> dict[int, str]:
    # GPT-2's reversible byte -> printable character table.
    printable = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1))
    printable += list(range(ord("®"), ord("ÿ") + 1))
    table, extra = {}, 0
    for b in range(256):
        if b in printable:
            table[b] = chr(b)
        else:
            table[b] = chr(256 + extra)
            extra += 1
    return table


class _SlowGpt2:
    """The slow GPT-2 tokenizer algorithm, written out: split on added tokens, GPT-2 regex, rank-ordered merges."""

    PATTERN = regex.compile(r"""'s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+""")

    def __init__(self, directory: Path):
        self.vocab = json.loads((directory / "vocab.json").read_text())
        lines = (directory / "merges.txt").read_text().splitlines()[1:]
        self.ranks = {tuple(line.split()): i for i, line in enumerate(lines) if line}
        config = json.loads((directory / "tokenizer_config.json").read_text())
        self.added = {t["content"]: int(i) for i, t in config["added_tokens_decoder"].items()}

    def encode(self, text: str) -> list[int]:
        ids: list[int] = []
        pattern = "(" + "|".join(regex.escape(t) for t in sorted(self.added, key=len, reverse=True)) + ")"
        for piece in regex.split(pattern, text):
            if piece in self.added:
                ids.append(self.added[piece])
                continue
            for word in self.PATTERN.findall(piece):
                symbols = "".join(_byte_to_unicode()[b] for b in word.encode("utf-8"))
                ids.extend(self.vocab[s] for s in self._bpe(symbols))
        return ids

    def _bpe(self, word: str) -> list[str]:
        parts = list(word)
        while len(parts) > 1:
            pairs = [
                (self.ranks.get((a, b), math.inf), i)
                for i, (a, b) in enumerate(zip(parts, parts[1:], strict=False))
            ]
            rank, _ = min(pairs)
            if rank == math.inf:
                break
            merged, i = [], 0
            best = next(p for r, p in sorted(pairs) if r == rank)
            pair = (parts[best], parts[best + 1])
            while i < len(parts):
                if i < len(parts) - 1 and (parts[i], parts[i + 1]) == pair:
                    merged.append(parts[i] + parts[i + 1])
                    i += 2
                else:
                    merged.append(parts[i])
                    i += 1
            parts = merged
        return parts


@pytest.mark.parametrize(
    "text",
    [
        "hello",
        "world",
        "[S1] Hello there, how are you?",
        "[S2]okay(laughs)thanks  a lot!!",
        "numbers 12345 and 3.14 don't they'll",
        "tabs\tand\nnewlines   trailing ",
        "café naïve 日本 🙂",
        "(clears throat) (sighs)(coughs)",
    ],
)
def test_tokenizer_matches_the_slow_gpt2_algorithm(dia2_dir, text):
    assert load_tokenizer(dia2_dir).encode(text) == _SlowGpt2(dia2_dir).encode(text)
