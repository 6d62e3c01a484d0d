"""Read a published Voxtral checkpoint, strictly.

Two layouts exist: transformers' (``config.json`` of ``VoxtralForConditionalGeneration``, sharded safetensors
with an index, processor files) and Mistral's native one (``params.json``, ``consolidated.safetensors``,
``tekken.json``). Both are read into one :class:`VoxtralConfig` and one state dict in transformers' tensor
names; every tensor the config implies must be present with its shape and nothing else may be there.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from faster_dia.errors import CheckpointError
from faster_dia.hub import open_repo
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
from faster_dia.models.layers import ACTIVATIONS
from faster_dia.models.voxtral.config import VoxtralConfig

SHARD_INDEX_FILE = "model.safetensors.index.json"
TEKKEN_FILE = "tekken.json"


@dataclass
class LoadedVoxtralCheckpoint:
    config: VoxtralConfig
    #: transformers tensor names, nn.Linear layout, dtype as stored.
    state_dict: dict[str, torch.Tensor]
    #: the local directory of the checkpoint (tokenizer and processor files are read from it).
    directory: Path
    #: "transformers" or "mistral".
    layout: str


def parse_config(raw: Any, *, source: str = CONFIG_FILE) -> VoxtralConfig:
    """A transformers ``VoxtralConfig`` config.json → :class:`VoxtralConfig` (every missing field named at once)."""
    raw = json_object(raw, "model config", source)
    if raw.get("model_type") != "voxtral":
        raise CheckpointError(f"The model config {source} is not a Voxtral config (model_type "
                              f"{raw.get('model_type')!r}, expected 'voxtral').")
    r = ConfigReader(source, collect_missing=True)
    audio = r.block(raw, "audio_config", "")
    text = r.block(raw, "text_config", "")
    a, t = "audio_config.", "text_config."
    rope = text.get("rope_parameters") if isinstance(text.get("rope_parameters"), dict) else {}
    theta = rope.get("rope_theta", text.get("rope_theta", 1e8))
    if rope.get("rope_type", "default") != "default":
        raise CheckpointError(f"The model config {source} uses RoPE scaling {rope.get('rope_type')!r}; "
                              "only the default RoPE is supported.")
    hidden = r.value(text, "hidden_size", t, int, 3072)
    heads = r.value(text, "num_attention_heads", t, int, 32)
    audio_hidden = r.value(audio, "hidden_size", a, int, 1280)
    audio_inter = r.value(audio, "intermediate_size", a, int, 5120)
    eos = text.get("eos_token_id", 2)
    config = VoxtralConfig(
        audio_hidden_size=audio_hidden,
        audio_intermediate_size=audio_inter,
        audio_layers=r.value(audio, "num_hidden_layers", a, int, 32),
        audio_heads=r.value(audio, "num_attention_heads", a, int, 20),
        num_mel_bins=r.value(audio, "num_mel_bins", a, int, 128),
        max_source_positions=r.value(audio, "max_source_positions", a, int, 1500),
        downsample_factor=audio_inter // max(audio_hidden, 1),
        projector_act=r.value(raw, "projector_hidden_act", "", str, "gelu"),
        vocab_size=r.value(text, "vocab_size", t, int, 131072),
        hidden_size=hidden,
        intermediate_size=r.value(text, "intermediate_size", t, int, 8192),
        layers=r.value(text, "num_hidden_layers", t, int, 30),
        heads=heads,
        kv_heads=r.value(text, "num_key_value_heads", t, int, heads),
        head_dim=r.value(text, "head_dim", t, int, hidden // max(heads, 1)),
        rope_theta=float(theta),
        rms_norm_eps=r.value(text, "rms_norm_eps", t, float, 1e-5),
        max_position_embeddings=r.value(text, "max_position_embeddings", t, int, 131072),
        tie_word_embeddings=r.value(text, "tie_word_embeddings", t, bool, False),
        audio_token_id=r.value(raw, "audio_token_id", "", int),
        bos_token_id=r.token_id(text.get("bos_token_id", 1), "text_config.bos_token_id"),
        eos_token_id=r.token_id(eos, "text_config.eos_token_id"),
    )
    r.raise_missing()
    check_config(config, source)
    return config


def check_config(c: VoxtralConfig, source: str) -> None:
    problems = ConfigProblems(c, source)
    problems.positive(("size", "layers", "heads", "bins", "positions", "factor", "dim"))
    problems.grouped_heads(c.heads, c.kv_heads, "decoder")
    if c.audio_hidden_size % max(c.audio_heads, 1):
        problems.add(f"the audio hidden size {c.audio_hidden_size} is not a multiple of {c.audio_heads} heads")
    if c.audio_intermediate_size != c.downsample_factor * c.audio_hidden_size:
        problems.add("audio_config.intermediate_size must be a multiple of audio_config.hidden_size "
                     "(the projector reads that many encoder frames at once)")
    elif c.max_source_positions % c.downsample_factor:
        problems.add(f"max_source_positions {c.max_source_positions} is not a multiple of the downsampling "
                     f"factor {c.downsample_factor}")
    if c.projector_act.lower() not in ACTIVATIONS:
        problems.add(f"projector_hidden_act {c.projector_act!r} is not one of {', '.join(ACTIVATIONS)}")
    problems.token_ids(("audio_token_id", "bos_token_id", "eos_token_id"), c.vocab_size, "text")
    problems.raise_any()


def expected_shapes(c: VoxtralConfig) -> dict[str, tuple[int, ...]]:
    """Every tensor of the transformers layout with its shape."""
    A, F, H = c.audio_hidden_size, c.audio_intermediate_size, c.hidden_size
    shapes: dict[str, tuple[int, ...]] = {
        "audio_tower.conv1.weight": (A, c.num_mel_bins, 3),
        "audio_tower.conv1.bias": (A,),
        "audio_tower.conv2.weight": (A, A, 3),
        "audio_tower.conv2.bias": (A,),
        "audio_tower.embed_positions.weight": (c.max_source_positions, A),
        "audio_tower.layer_norm.weight": (A,),
        "audio_tower.layer_norm.bias": (A,),
        "multi_modal_projector.linear_1.weight": (H, F),
        "multi_modal_projector.linear_2.weight": (H, H),
        "language_model.model.embed_tokens.weight": (c.vocab_size, H),
        "language_model.model.norm.weight": (H,),
    }
    if not c.tie_word_embeddings:
        shapes["language_model.lm_head.weight"] = (c.vocab_size, H)
    for i in range(c.audio_layers):
        p = f"audio_tower.layers.{i}."
        shapes.update({
            p + "self_attn.q_proj.weight": (A, A), p + "self_attn.q_proj.bias": (A,),
            p + "self_attn.k_proj.weight": (A, A),
            p + "self_attn.v_proj.weight": (A, A), p + "self_attn.v_proj.bias": (A,),
            p + "self_attn.out_proj.weight": (A, A), p + "self_attn.out_proj.bias": (A,),
            p + "self_attn_layer_norm.weight": (A,), p + "self_attn_layer_norm.bias": (A,),
            p + "fc1.weight": (F, A), p + "fc1.bias": (F,),
            p + "fc2.weight": (A, F), p + "fc2.bias": (A,),
            p + "final_layer_norm.weight": (A,), p + "final_layer_norm.bias": (A,),
        })
    q, kv = c.heads * c.head_dim, c.kv_heads * c.head_dim
    for i in range(c.layers):
        p = f"language_model.model.layers.{i}."
        shapes.update({
            p + "input_layernorm.weight": (H,), p + "post_attention_layernorm.weight": (H,),
            p + "self_attn.q_proj.weight": (q, H), p + "self_attn.k_proj.weight": (kv, H),
            p + "self_attn.v_proj.weight": (kv, H), p + "self_attn.o_proj.weight": (H, q),
            p + "mlp.gate_proj.weight": (c.intermediate_size, H), p + "mlp.up_proj.weight": (c.intermediate_size, H),
            p + "mlp.down_proj.weight": (H, c.intermediate_size),
        })
    return shapes


def _transformers_weights(directory: Path, repo) -> dict[str, torch.Tensor]:
    if repo.has(SHARD_INDEX_FILE):
        index = json_object(read_json(repo.get(SHARD_INDEX_FILE), "shard index"), "shard index", SHARD_INDEX_FILE)
        weight_map = index.get("weight_map")
        if not isinstance(weight_map, dict) or not all(isinstance(v, str) for v in weight_map.values()):
            raise CheckpointError(f"The shard index {SHARD_INDEX_FILE} has no valid 'weight_map'.")
        paths = [repo.get(name) for name in sorted(set(weight_map.values()))]
        return read_safetensors(paths, weight_map)
    if repo.has(SAFETENSORS_FILE):
        return read_safetensors([repo.get(SAFETENSORS_FILE)])
    raise CheckpointError(f"{directory} has a Voxtral config.json but neither {SHARD_INDEX_FILE} nor "
                          f"{SAFETENSORS_FILE}.")


def load_checkpoint(model: str | os.PathLike, *, revision: str | None = None) -> LoadedVoxtralCheckpoint:
    """Read config and weights of a Voxtral checkpoint in either published layout (detected from its files)."""
    repo = open_repo(model, revision=revision)
    if repo.has(CONFIG_FILE):
        config_path = repo.get(CONFIG_FILE)
        config = parse_config(read_json(config_path, "model config"), source=str(config_path))
        tensors = _transformers_weights(config_path.parent, repo)
        check_tensors(tensors, expected_shapes(config), "transformers-format Voxtral weights")
        return LoadedVoxtralCheckpoint(config, tensors, config_path.parent, "transformers")
    from faster_dia.models.voxtral.mistral_format import MISTRAL_PARAMS_FILE, load_mistral

    if repo.has(MISTRAL_PARAMS_FILE):
        return load_mistral(repo)
    raise CheckpointError(f"{model} holds neither a transformers config.json nor Mistral's {MISTRAL_PARAMS_FILE}.")
