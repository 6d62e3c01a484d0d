"""Read a published Dia2 checkpoint (``nari-labs/Dia2-1B``, ``nari-labs/Dia2-2B``).

A Dia2 repository holds ``config.json`` (``data``/``model``/``runtime`` blocks, no ``model_type``), one
float32 ``model.safetensors`` and the files of its GPT-2-style text tokenizer. Tensor names are kept exactly
as published, e.g. ``transformer.layers.0.attn.q_proj.weight`` [heads*head_dim, hidden] and
``depformer.layers.0.self_attention.in_proj.0.weight`` (nn.Linear (out, in) layout throughout).

Loading is strict: every tensor the config implies must be present with its shape and nothing else may be
there (the reference loader silently skips both, which hides a wrong config).
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from faster_dia.errors import CheckpointError
from faster_dia.hub import Repo, open_repo
from faster_dia.models.checkpoint_io import (
    CONFIG_FILE,
    SAFETENSORS_FILE,
    ConfigProblems,
    ConfigReader,
    check_tensors,
    json_object,
    read_json,
    read_safetensors,
)
from faster_dia.models.dia2.config import Dia2Config
from faster_dia.models.dia2.tokenizer import OPTIONAL_TOKENIZER_FILES, REQUIRED_TOKENIZER_FILES
from faster_dia.models.layers import ACTIVATIONS

#: Activation names the reference gated MLP accepts (gate and up half each take one).
MLP_ACTIVATIONS = frozenset(ACTIVATIONS)


@dataclass
class LoadedDia2Checkpoint:
    config: Dia2Config
    #: published tensor names, nn.Linear layout, dtype as stored.
    state_dict: dict[str, torch.Tensor]
    #: every file read: config.json, model.safetensors, the tokenizer files.
    files: list[Path]
    #: the model reference as given (Hub id or local directory), for messages and ids.
    source: str
    #: the local directory holding config.json, the weights and (normally) the tokenizer files.
    directory: Path
    #: the local directory holding the tokenizer files; ``directory`` unless the config names another.
    tokenizer_directory: Path


# --------------------------------------------------------------------------------------------------------
# Config
# --------------------------------------------------------------------------------------------------------

def is_dia2_config(raw: Any) -> bool:
    """Whether a parsed ``config.json`` has the Dia2 schema: ``data``, ``model`` and ``runtime`` blocks.

    The Dia-1.6B nari config has ``version``/``model``/``data`` but no ``runtime``; the transformers DiaConfig
    has ``encoder_config``/``decoder_config``.
    """
    return isinstance(raw, dict) and all(
        isinstance(raw.get(key), dict) for key in ("data", "model", "runtime")
    )


def read_config(path: str | os.PathLike) -> Dia2Config:
    """Read a Dia2 ``config.json``."""
    return parse_config(read_json(path, "model config"), source=str(path))


def _activations(r: ConfigReader, block: dict, where: str) -> tuple[str, str]:
    value = block.get("mlp_activations")
    if value is None:
        return ("silu", "linear")
    if (
        not isinstance(value, list)
        or len(value) != 2
        or not all(isinstance(v, str) and v.lower() in MLP_ACTIVATIONS for v in value)
    ):
        raise CheckpointError(
            f"The model config {r.source} has '{where}mlp_activations' = {value!r}, expected two of "
            f"{', '.join(sorted(MLP_ACTIVATIONS))}."
        )
    return (value[0].lower(), value[1].lower())


def parse_config(raw: Any, *, source: str = CONFIG_FILE) -> Dia2Config:
    """Turn a parsed Dia2 ``config.json`` into a :class:`Dia2Config`.

    Optional fields take the reference loader's defaults; missing required fields are all named in one
    :class:`CheckpointError`.
    """
    raw = json_object(raw, "model config", source)
    if not is_dia2_config(raw):
        absent = [key for key in ("data", "model", "runtime") if not isinstance(raw.get(key), dict)]
        raise CheckpointError(
            f"The model config {source} is not a Dia2 config: it lacks the {', '.join(repr(k) for k in absent)} "
            f"block(s) (found keys {sorted(raw)[:12]})."
        )
    r = ConfigReader(source, collect_missing=True)
    data, model, runtime = raw["data"], raw["model"], raw["runtime"]
    decoder = r.block(model, "decoder", "model.")
    depformer = r.block(model, "depformer", "model.")
    linear = model.get("linear") if isinstance(model.get("linear"), dict) else {}
    dec, dep = "model.decoder.", "model.depformer."

    channels = r.value(data, "channels", "data.", int)
    audio_vocab = r.value(data, "audio_vocab_size", "data.", int)
    config_fields: dict[str, Any] = dict(
        channels=channels,
        text_vocab_size=r.value(data, "text_vocab_size", "data.", int),
        audio_vocab_size=audio_vocab,
        action_vocab_size=r.value(data, "action_vocab_size", "data.", int),
        text_pad_token_id=r.value(data, "text_pad_token_id", "data.", int),
        text_new_word_token_id=r.value(data, "text_new_word_token_id", "data.", int),
        text_zero_token_id=r.value(data, "text_zero_token_id", "data.", int, 7),
        audio_pad_token_id=r.value(data, "audio_pad_token_id", "data.", int, audio_vocab - 1),
        audio_bos_token_id=r.value(data, "audio_bos_token_id", "data.", int, audio_vocab - 2),
        action_pad_token_id=r.value(data, "action_pad_token_id", "data.", int),
        action_new_word_token_id=r.value(data, "action_new_word_token_id", "data.", int),
        delay_pattern=r.int_list(data, "delay_pattern", "data.", []),
        first_word_min_start=r.value(data, "first_word_min_start", "data.", int, 0),
        max_pad=r.value(data, "max_pad", "data.", int, 0),
        second_stream_ahead=r.value(data, "second_stream_ahead", "data.", int, 0),
        tokenizer_path=r.value(data, "tokenizer_path", "data.", str, None),
        decoder_layers=r.value(decoder, "n_layer", dec, int),
        decoder_hidden_size=r.value(decoder, "n_embd", dec, int),
        decoder_intermediate_size=r.value(decoder, "n_hidden", dec, int),
        decoder_heads=r.value(decoder, "gqa_query_heads", dec, int),
        decoder_kv_heads=r.value(decoder, "kv_heads", dec, int),
        decoder_head_dim=r.value(decoder, "gqa_head_dim", dec, int),
        decoder_low_rank_dim=r.value(decoder, "low_rank_dim", dec, int, None),
        depformer_layers=r.value(depformer, "n_layer", dep, int),
        depformer_hidden_size=r.value(depformer, "n_embd", dep, int),
        depformer_intermediate_size=r.value(depformer, "n_hidden", dep, int),
        depformer_heads=r.value(depformer, "gqa_query_heads", dep, int),
        depformer_kv_heads=r.value(depformer, "kv_heads", dep, int),
        depformer_head_dim=r.value(depformer, "gqa_head_dim", dep, int),
        depformer_apply_rope=r.value(depformer, "apply_rope", dep, bool, True),
        # The reference defaults to a depformer text embedding; the shipped configs switch it off explicitly.
        depformer_text_embedding=r.value(depformer, "text_embedding", dep, bool, True),
        decoder_mlp_activations=_activations(r, linear, "model.linear."),
        depformer_mlp_activations=_activations(r, depformer, dep),
        dropout=r.value(model, "dropout", "model.", float, 0.0),
        norm_eps=r.value(model, "normalization_layer_epsilon", "model.", float, 1e-5),
        rope_min_timescale=r.value(model, "rope_min_timescale", "model.", float, 1.0),
        rope_max_timescale=r.value(model, "rope_max_timescale", "model.", float, 10000.0),
        # One weight group per depformer stage unless the file groups them.
        weights_schedule=r.int_list(
            runtime, "weights_schedule", "runtime.", list(range(max(channels - 3, 0)))
        ),
        max_context_steps=r.value(runtime, "max_context_steps", "runtime.", int, 1500),
    )
    r.raise_missing()
    config = Dia2Config(**config_fields)
    _validate_config(config, source)
    return config


def _validate_config(config: Dia2Config, source: str) -> None:
    c = config
    check = ConfigProblems(c, source)
    check.positive(("_layers", "_size", "_heads", "_dim", "channels", "max_context_steps"))
    audio_channels = c.channels - 2
    if len(c.delay_pattern) != audio_channels:
        check.add(
            f"the delay pattern has {len(c.delay_pattern)} entries for {audio_channels} audio channels "
            f"({c.channels} channels minus 2 text streams)"
        )
    check.delays_not_negative(c.delay_pattern)
    if len(c.weights_schedule) != max(audio_channels - 1, 0):
        check.add(
            f"the weights schedule has {len(c.weights_schedule)} entries for {max(audio_channels - 1, 0)} "
            "depformer stages"
        )
    if any(g < 0 for g in c.weights_schedule):
        check.add(f"the weights schedule {list(c.weights_schedule)} has negative group ids")
    check.grouped_heads(c.decoder_heads, c.decoder_kv_heads, "decoder")
    # The depformer's fused in_proj holds q, k and v with the query head count each.
    if c.depformer_kv_heads != c.depformer_heads:
        check.add(
            f"the depformer has {c.depformer_heads} query heads but {c.depformer_kv_heads} KV heads; "
            "they must be equal"
        )
    for name in ("decoder_head_dim", "depformer_head_dim"):
        if getattr(c, name) % 2:
            check.add(f"{name} = {getattr(c, name)} must be even for RoPE")
    check.token_ids(("audio_pad_token_id", "audio_bos_token_id"), c.audio_vocab_size, "audio")
    text_ids = ("text_pad_token_id", "text_new_word_token_id", "text_zero_token_id", "text_bos_token_id")
    check.token_ids(text_ids, c.text_vocab_size, "text")
    check.token_ids(("action_pad_token_id", "action_new_word_token_id"), c.action_vocab_size, "action")
    check.raise_any()


# --------------------------------------------------------------------------------------------------------
# Expected tensors
# --------------------------------------------------------------------------------------------------------


def expected_shapes(config: Dia2Config) -> dict[str, tuple[int, ...]]:
    """Every tensor of a Dia2 ``model.safetensors`` with its shape, in a fixed order."""
    c = config
    e, d = c.decoder_hidden_size, c.depformer_hidden_size
    text_width = c.decoder_low_rank_dim if c.decoder_low_rank_dim is not None else e
    shapes: dict[str, tuple[int, ...]] = {
        "transformer.text_embed.embedding.weight": (c.text_vocab_size, text_width),
        "transformer.text_embed.main_proj.weight": (e, text_width),
        "transformer.text_embed.second_proj.weight": (e, text_width),
    }
    for ch in range(c.num_codebooks):
        shapes[f"transformer.audio_embeds.{ch}.weight"] = (c.audio_vocab_size, e)
    q, kv, hd = c.decoder_heads, c.decoder_kv_heads, c.decoder_head_dim
    for i in range(c.decoder_layers):
        p = f"transformer.layers.{i}."
        shapes[p + "pre_norm.weight"] = (e,)
        shapes[p + "attn.q_proj.weight"] = (q * hd, e)
        shapes[p + "attn.k_proj.weight"] = (kv * hd, e)
        shapes[p + "attn.v_proj.weight"] = (kv * hd, e)
        shapes[p + "attn.o_proj.weight"] = (e, q * hd)
        shapes[p + "attn.q_norm.weight"] = (hd,)
        shapes[p + "attn.k_norm.weight"] = (hd,)
        shapes[p + "post_norm.weight"] = (e,)
        # Gate rows first, then up rows.
        shapes[p + "mlp.wi.weight"] = (2 * c.decoder_intermediate_size, e)
        shapes[p + "mlp.wo.weight"] = (e, c.decoder_intermediate_size)
    shapes["transformer.norm.weight"] = (e,)
    shapes["transformer.action_head.weight"] = (c.action_vocab_size, e)
    shapes["transformer.cb0_head.weight"] = (c.audio_vocab_size, e)

    for stage in range(c.depformer_stages):
        shapes[f"depformer.audio_embeds.{stage}.weight"] = (c.audio_vocab_size, d)
    if c.depformer_text_embedding:
        shapes["depformer.text_embed.embedding.weight"] = (c.text_vocab_size, d)
        shapes["depformer.text_embed.main_proj.weight"] = (d, d)
        shapes["depformer.text_embed.second_proj.weight"] = (d, d)
    for group in c.weight_group_ids:
        shapes[f"depformer.depformer_in.{group}.weight"] = (d, e)
    dq, dhd = c.depformer_heads, c.depformer_head_dim
    for i in range(c.depformer_layers):
        p = f"depformer.layers.{i}."
        shapes[p + "pre_norm.weight"] = (d,)
        shapes[p + "post_norm.weight"] = (d,)
        for group in c.weight_group_ids:
            # Rows: q | k | v blocks, each head-major.
            shapes[p + f"self_attention.in_proj.{group}.weight"] = (3 * dq * dhd, d)
        for group in c.weight_group_ids:
            shapes[p + f"self_attention.out_proj.{group}.weight"] = (d, dq * dhd)
        shapes[p + "self_attention.q_norm.weight"] = (dhd,)
        shapes[p + "self_attention.k_norm.weight"] = (dhd,)
        shapes[p + "mlp.wi.weight"] = (2 * c.depformer_intermediate_size, d)
        shapes[p + "mlp.wo.weight"] = (d, c.depformer_intermediate_size)
    shapes["depformer.norm.weight"] = (d,)
    for stage in range(c.depformer_stages):
        shapes[f"depformer.logits.{stage}.weight"] = (c.audio_vocab_size, d)
    return shapes


# --------------------------------------------------------------------------------------------------------
# Reading files
# --------------------------------------------------------------------------------------------------------


def load_checkpoint(model: str | os.PathLike, *, revision: str | None = None) -> LoadedDia2Checkpoint:
    """Load a Dia2 checkpoint (local directory or Hub id) with its published tensor names.

    The tokenizer files are fetched too, so that ``directory`` (or ``tokenizer_directory``) can be handed to
    :func:`faster_dia.models.dia2.tokenizer.load_tokenizer`. Raises :class:`ModelNotFoundError` when the model
    or one of its files cannot be found (or downloaded), and :class:`CheckpointError` when the files are
    there but do not form a complete Dia2 checkpoint.
    """
    repo = open_repo(model, revision=revision, what="model")
    config_path = repo.get(CONFIG_FILE)
    config = read_config(config_path)
    weights_path = repo.get(SAFETENSORS_FILE)
    tensors = read_safetensors([weights_path])
    check_tensors(tensors, expected_shapes(config), f"Dia2 weights in {weights_path.name}")
    state_dict = {name: tensors[name] for name in expected_shapes(config)}

    tokenizer_repo = repo
    if config.tokenizer_path:
        tokenizer_repo = open_repo(config.tokenizer_path, revision=None, what="tokenizer")
    tokenizer_files = _fetch_tokenizer_files(tokenizer_repo)
    return LoadedDia2Checkpoint(
        config=config,
        state_dict=state_dict,
        files=[config_path, weights_path, *tokenizer_files],
        source=repo.name,
        directory=config_path.parent,
        tokenizer_directory=tokenizer_files[0].parent,
    )


def _fetch_tokenizer_files(repo: Repo) -> list[Path]:
    paths = [repo.get(name) for name in REQUIRED_TOKENIZER_FILES]
    paths += [repo.get(name) for name in OPTIONAL_TOKENIZER_FILES if repo.has(name)]
    return paths
