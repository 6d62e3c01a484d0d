"""Read every published Dia-1.6B checkpoint layout into one canonical form.

Published layouts (docs: reference dia1 §1):

* ``nari-labs/Dia-1.6B``: nari "v0.1" ``config.json`` + ``model.safetensors`` and/or ``dia-v0_1.pth``, both
  holding the nari state dict (DenseGeneral kernels in JAX layout, 9 separate decoder embedding tables).
* ``nari-labs/Dia-1.6B-0626``: transformers ``DiaConfig`` ``config.json`` + sharded safetensors in transformers
  naming, and ``pytorch_model.bin`` holding the same weights in nari naming.

The canonical form is the transformers naming with ``nn.Linear`` (out, in) layout, e.g.
``model.encoder.layers.0.self_attention.q_proj.weight`` [heads*head_dim, hidden],
``model.decoder.embeddings.embed.weight`` [channels*audio_vocab, hidden] and ``logits_dense.weight``
[channels*audio_vocab, hidden] (channel c = rows c*audio_vocab ... (c+1)*audio_vocab-1).

The variant (which changes the maths, see :data:`VARIANT_ORIGINAL`) is decided by the config schema; the
tensor naming is decided by the tensor names in the weight file. Loading is strict: every expected tensor
must be present with its expected shape and nothing else may be there.
"""

from __future__ import annotations

import json
import math
import os
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any

import torch

from faster_dia.errors import CheckpointError, ModelNotFoundError
from faster_dia.hub import Repo, open_repo
from faster_dia.models.dia1.config import VARIANT_0626, VARIANT_ORIGINAL, Dia1Config
from faster_dia.models.weights import check_tensors, name_list

LAYOUT_NARI_SAFETENSORS = "nari-safetensors"
LAYOUT_NARI_PTH = "nari-pth"
LAYOUT_NARI_BIN = "nari-bin"
LAYOUT_HF_SAFETENSORS = "hf-safetensors"
#: A ``pytorch_model.bin`` / ``.pth`` in transformers naming (not published, but what
#: ``save_pretrained(safe_serialization=False)`` writes).
LAYOUT_HF_BIN = "hf-bin"

CONFIG_FILE = "config.json"
INDEX_FILE = "model.safetensors.index.json"
SAFETENSORS_FILE = "model.safetensors"
BIN_FILE = "pytorch_model.bin"
PTH_FILE = "dia-v0_1.pth"
#: Weight files in order of preference.
WEIGHT_FILES = (INDEX_FILE, SAFETENSORS_FILE, BIN_FILE, PTH_FILE)

# Non-persistent buffers of the nari code (RoPE ``timescale``) and of transformers (RoPE ``inv_freq``, the
# multi-channel embedding ``offsets``). They are never saved by the published checkpoints, but a state dict
# dumped by other tools may carry them; they are derived from the config, so they are dropped, and they are
# the only tensors ever dropped.
_DERIVED_BUFFER_SUFFIXES = (".inv_freq", ".rotary_emb.timescale", "decoder.embeddings.offsets")

# nari DenseGeneral modules; their kernels are stored as in_dims + out_dims.
_DENSE_MODULES = frozenset({"q_proj", "k_proj", "v_proj", "o_proj", "wi_fused", "wo", "logits_dense"})


@dataclass
class LoadedCheckpoint:
    config: Dia1Config
    #: transformers naming, nn.Linear layout, dtype as stored.
    state_dict: dict[str, torch.Tensor]
    #: one of the ``LAYOUT_*`` constants.
    layout: str
    #: every file read: config.json, the shard index if any, the weight files.
    files: list[Path]
    #: the model reference as given (Hub id or local directory), for messages and ids.
    source: str

    @property
    def variant(self) -> str:
        return self.config.variant


# --------------------------------------------------------------------------------------------------------
# Config
# --------------------------------------------------------------------------------------------------------

_REQUIRED = object()
_DEFAULTS = {f.name: f.default for f in fields(Dia1Config) if f.name != "variant"}


def read_config(path: str | os.PathLike) -> Dia1Config:
    """Read a Dia-1.6B ``config.json`` of either schema."""
    path = Path(path)
    try:
        raw = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise CheckpointError(f"The model config {path} cannot be read as JSON ({exc}).") from exc
    return parse_config(raw, source=str(path))


def parse_config(raw: Any, *, source: str = CONFIG_FILE) -> Dia1Config:
    """Turn a parsed ``config.json`` (nari v0.1 schema or transformers ``DiaConfig``) into a :class:`Dia1Config`."""
    if not isinstance(raw, dict):
        raise CheckpointError(f"The model config {source} is not a JSON object.")
    if "encoder_config" in raw or "decoder_config" in raw:
        config = _parse_dia_config(raw, source)
    elif "model" in raw and "data" in raw:
        config = _parse_nari_config(raw, source)
    else:
        raise CheckpointError(
            f"The model config {source} is not a Dia-1.6B config: expected the nari 'version'/'model'/'data' "
            f"blocks or a transformers DiaConfig with 'encoder_config'/'decoder_config', found keys "
            f"{sorted(raw)[:12]}."
        )
    _validate_config(config, source)
    return config


def _block(parent: dict, key: str, where: str, source: str) -> dict:
    value = parent.get(key)
    if not isinstance(value, dict):
        raise CheckpointError(f"The model config {source} has no '{where}{key}' block.")
    return value


def _value(block: dict, key: str, where: str, source: str, kind: type, default: Any = _REQUIRED) -> Any:
    value = block.get(key)
    if value is None:
        if default is _REQUIRED:
            raise CheckpointError(f"The model config {source} lacks the field '{where}{key}'.")
        return default
    if kind in (int, float):
        # bool is an int subclass; a bool where a number belongs is a broken file, not a number.
        ok = isinstance(value, (int, float)) and not isinstance(value, bool)
        if kind is int and isinstance(value, float) and not value.is_integer():
            ok = False
    else:
        ok = isinstance(value, kind)
    if not ok:
        raise CheckpointError(
            f"The model config {source} has '{where}{key}' = {value!r}, expected a {kind.__name__}."
        )
    return kind(value)


def _token_id(value: Any, name: str, source: str) -> int:
    # transformers allows eos_token_id to be a list; Dia has exactly one of each.
    if isinstance(value, list) and len(value) == 1:
        value = value[0]
    if not isinstance(value, int) or isinstance(value, bool):
        raise CheckpointError(f"The model config {source} has {name} = {value!r}, expected one integer.")
    return value


def _parse_nari_config(raw: dict, source: str) -> Dia1Config:
    version = raw.get("version")
    if str(version) != "0.1":
        raise CheckpointError(
            f"The model config {source} has the nari schema with version {version!r}; only version '0.1' is supported."
        )
    model = _block(raw, "model", "", source)
    encoder = _block(model, "encoder", "model.", source)
    decoder = _block(model, "decoder", "model.", source)
    data = _block(raw, "data", "", source)

    for where, block in (("model.encoder.", encoder), ("model.decoder.", decoder)):
        activations = block.get("mlp_activations", ["silu", "linear"])
        if list(activations) != ["silu", "linear"]:
            raise CheckpointError(
                f"The model config {source} has '{where}mlp_activations' = {activations!r}; "
                "only ['silu', 'linear'] (SwiGLU) is supported."
            )
    rope_min = _value(model, "rope_min_timescale", "model.", source, float, 1.0)
    if rope_min != 1.0:
        raise CheckpointError(
            f"The model config {source} has 'model.rope_min_timescale' = {rope_min}; only 1 is supported."
        )

    enc_heads = _value(encoder, "n_head", "model.encoder.", source, int)
    cross_heads = _value(decoder, "cross_query_heads", "model.decoder.", source, int)
    return Dia1Config(
        variant=VARIANT_ORIGINAL,
        encoder_layers=_value(encoder, "n_layer", "model.encoder.", source, int),
        encoder_hidden_size=_value(encoder, "n_embd", "model.encoder.", source, int),
        encoder_intermediate_size=_value(encoder, "n_hidden", "model.encoder.", source, int),
        encoder_heads=enc_heads,
        # The nari encoder is plain MHA: no separate KV head count in this schema.
        encoder_kv_heads=enc_heads,
        encoder_head_dim=_value(encoder, "head_dim", "model.encoder.", source, int),
        # 128 is the nari code's default; the published file always sets 256.
        text_vocab_size=_value(model, "src_vocab_size", "model.", source, int, 128),
        text_length=_value(data, "text_length", "data.", source, int),
        decoder_layers=_value(decoder, "n_layer", "model.decoder.", source, int),
        decoder_hidden_size=_value(decoder, "n_embd", "model.decoder.", source, int),
        decoder_intermediate_size=_value(decoder, "n_hidden", "model.decoder.", source, int),
        decoder_heads=_value(decoder, "gqa_query_heads", "model.decoder.", source, int),
        decoder_kv_heads=_value(decoder, "kv_heads", "model.decoder.", source, int),
        decoder_head_dim=_value(decoder, "gqa_head_dim", "model.decoder.", source, int),
        cross_heads=cross_heads,
        # Cross-attention K/V use cross_query_heads too (plain MHA).
        cross_kv_heads=cross_heads,
        cross_head_dim=_value(decoder, "cross_head_dim", "model.decoder.", source, int),
        audio_vocab_size=_value(model, "tgt_vocab_size", "model.", source, int, 1028),
        audio_length=_value(data, "audio_length", "data.", source, int),
        channels=_value(data, "channels", "data.", source, int, 9),
        norm_eps=_value(model, "normalization_layer_epsilon", "model.", source, float, 1e-5),
        rope_theta=_value(model, "rope_max_timescale", "model.", source, float, 10000.0),
        delay_pattern=_delay_pattern(data.get("delay_pattern"), "data.delay_pattern", source),
        eos_token_id=_value(data, "audio_eos_value", "data.", source, int, 1024),
        pad_token_id=_value(data, "audio_pad_value", "data.", source, int, 1025),
        bos_token_id=_value(data, "audio_bos_value", "data.", source, int, 1026),
        text_pad_token_id=_value(data, "text_pad_value", "data.", source, int, 0),
    )


def _delay_pattern(value: Any, where: str, source: str) -> tuple[int, ...]:
    if value is None:
        return tuple(_DEFAULTS["delay_pattern"])
    if not isinstance(value, list) or not all(isinstance(d, int) and not isinstance(d, bool) for d in value):
        raise CheckpointError(
            f"The model config {source} has '{where}' = {value!r}, expected a list of integers."
        )
    return tuple(value)


def _rope_theta(block: dict, where: str, source: str) -> float:
    # transformers 4.53 writes rope_theta + rope_scaling; v5 writes rope_parameters {"rope_type", "rope_theta"}.
    params = block.get("rope_parameters")
    if params is not None:
        if not isinstance(params, dict):
            raise CheckpointError(f"The model config {source} has '{where}rope_parameters' = {params!r}.")
        rope_type = params.get("rope_type", params.get("type", "default"))
        theta = params.get("rope_theta", block.get("rope_theta", 10000.0))
    else:
        scaling = block.get("rope_scaling")
        rope_type = "default"
        if scaling is not None:
            rope_type = (
                scaling.get("rope_type", scaling.get("type")) if isinstance(scaling, dict) else scaling
            )
        theta = block.get("rope_theta", 10000.0)
    if rope_type != "default":
        raise CheckpointError(
            f"The model config {source} asks for RoPE type {rope_type!r} in '{where}'; only the default RoPE is supported."
        )
    return _value({"rope_theta": theta}, "rope_theta", where, source, float)


def _parse_dia_config(raw: dict, source: str) -> Dia1Config:
    model_type = raw.get("model_type", "dia")
    if model_type != "dia":
        raise CheckpointError(
            f"The model config {source} has model_type {model_type!r}; only Dia-1.6B ('dia') is supported."
        )
    encoder = _block(raw, "encoder_config", "", source)
    decoder = _block(raw, "decoder_config", "", source)
    enc, dec = "encoder_config.", "decoder_config."
    d = _DEFAULTS

    for where, block in ((enc, encoder), (dec, decoder)):
        act = block.get("hidden_act", "silu")
        if act != "silu":
            raise CheckpointError(
                f"The model config {source} has '{where}hidden_act' = {act!r}; only 'silu' is supported."
            )
    enc_theta = _rope_theta(encoder, enc, source)
    dec_theta = _rope_theta(decoder, dec, source)
    if enc_theta != dec_theta:
        raise CheckpointError(
            f"The model config {source} has different RoPE thetas for the encoder ({enc_theta}) and the "
            f"decoder ({dec_theta}); Dia-1.6B uses one."
        )
    # transformers reads norm_eps from each sub-config; the top-level norm_eps is unused.
    enc_eps = _value(encoder, "norm_eps", enc, source, float, d["norm_eps"])
    dec_eps = _value(decoder, "norm_eps", dec, source, float, d["norm_eps"])
    if enc_eps != dec_eps:
        raise CheckpointError(
            f"The model config {source} has different norm_eps for the encoder ({enc_eps}) and the decoder ({dec_eps})."
        )
    enc_hidden = _value(encoder, "hidden_size", enc, source, int, d["encoder_hidden_size"])
    cross_hidden = _value(decoder, "cross_hidden_size", dec, source, int, enc_hidden)
    if cross_hidden != enc_hidden:
        raise CheckpointError(
            f"The model config {source} has '{dec}cross_hidden_size' = {cross_hidden} but the encoder "
            f"hidden_size is {enc_hidden}; they must be equal."
        )

    # transformers 4.53 keeps the audio token ids at the top level, v5 in decoder_config; like v5, the
    # top level wins when both are present.
    ids = {}
    for name, default in (("eos_token_id", 1024), ("pad_token_id", 1025), ("bos_token_id", 1026)):
        value = raw.get(name)
        if value is None:
            value = decoder.get(name, default)
        ids[name] = _token_id(value, name, source)

    return Dia1Config(
        variant=VARIANT_0626,
        encoder_layers=_value(encoder, "num_hidden_layers", enc, source, int, d["encoder_layers"]),
        encoder_hidden_size=enc_hidden,
        encoder_intermediate_size=_value(
            encoder, "intermediate_size", enc, source, int, d["encoder_intermediate_size"]
        ),
        encoder_heads=_value(encoder, "num_attention_heads", enc, source, int, d["encoder_heads"]),
        encoder_kv_heads=_value(encoder, "num_key_value_heads", enc, source, int, d["encoder_kv_heads"]),
        encoder_head_dim=_value(encoder, "head_dim", enc, source, int, d["encoder_head_dim"]),
        text_vocab_size=_value(encoder, "vocab_size", enc, source, int, d["text_vocab_size"]),
        text_length=_value(encoder, "max_position_embeddings", enc, source, int, d["text_length"]),
        decoder_layers=_value(decoder, "num_hidden_layers", dec, source, int, d["decoder_layers"]),
        decoder_hidden_size=_value(decoder, "hidden_size", dec, source, int, d["decoder_hidden_size"]),
        decoder_intermediate_size=_value(
            decoder, "intermediate_size", dec, source, int, d["decoder_intermediate_size"]
        ),
        decoder_heads=_value(decoder, "num_attention_heads", dec, source, int, d["decoder_heads"]),
        decoder_kv_heads=_value(decoder, "num_key_value_heads", dec, source, int, d["decoder_kv_heads"]),
        decoder_head_dim=_value(decoder, "head_dim", dec, source, int, d["decoder_head_dim"]),
        cross_heads=_value(decoder, "cross_num_attention_heads", dec, source, int, d["cross_heads"]),
        cross_kv_heads=_value(decoder, "cross_num_key_value_heads", dec, source, int, d["cross_kv_heads"]),
        cross_head_dim=_value(decoder, "cross_head_dim", dec, source, int, d["cross_head_dim"]),
        audio_vocab_size=_value(decoder, "vocab_size", dec, source, int, d["audio_vocab_size"]),
        audio_length=_value(decoder, "max_position_embeddings", dec, source, int, d["audio_length"]),
        channels=_value(decoder, "num_channels", dec, source, int, d["channels"]),
        norm_eps=enc_eps,
        rope_theta=enc_theta,
        delay_pattern=_delay_pattern(raw.get("delay_pattern"), "delay_pattern", source),
        eos_token_id=ids["eos_token_id"],
        pad_token_id=ids["pad_token_id"],
        bos_token_id=ids["bos_token_id"],
        # Hard-coded in the 0626 code and in transformers; the schema has no field for it.
        text_pad_token_id=0,
    )


def _validate_config(config: Dia1Config, source: str) -> None:
    problems = []
    for name in (f.name for f in fields(Dia1Config)):
        value = getattr(config, name)
        if isinstance(value, int) and name.endswith(
            ("_layers", "_size", "_heads", "_dim", "_length", "channels")
        ):
            if value <= 0:
                problems.append(f"{name} = {value} must be positive")
    if len(config.delay_pattern) != config.channels:
        problems.append(
            f"the delay pattern {list(config.delay_pattern)} has {len(config.delay_pattern)} entries for "
            f"{config.channels} channels"
        )
    if any(d < 0 for d in config.delay_pattern):
        problems.append(f"the delay pattern {list(config.delay_pattern)} has negative entries")
    for heads, kv, what in (
        (config.encoder_heads, config.encoder_kv_heads, "encoder"),
        (config.decoder_heads, config.decoder_kv_heads, "decoder self-attention"),
        (config.cross_heads, config.cross_kv_heads, "cross-attention"),
    ):
        if kv > 0 and heads % kv:
            problems.append(f"the {what} has {heads} query heads, not a multiple of its {kv} KV heads")
    for name in ("eos_token_id", "pad_token_id", "bos_token_id"):
        if not 0 <= getattr(config, name) < config.audio_vocab_size:
            problems.append(f"{name} = {getattr(config, name)} is outside the audio vocabulary")
    if problems:
        raise CheckpointError(f"The model config {source} is not usable: " + "; ".join(problems) + ".")


# --------------------------------------------------------------------------------------------------------
# Expected tensors
# --------------------------------------------------------------------------------------------------------


def expected_nari_shapes(config: Dia1Config) -> dict[str, tuple[int, ...]]:
    """Every tensor of a nari-format state dict with its shape (DenseGeneral kernels: in_dims + out_dims)."""
    c = config
    shapes: dict[str, tuple[int, ...]] = {
        "encoder.embedding.weight": (c.text_vocab_size, c.encoder_hidden_size)
    }
    eh = c.encoder_hidden_size
    for i in range(c.encoder_layers):
        p = f"encoder.layers.{i}."
        shapes[p + "pre_sa_norm.weight"] = (eh,)
        shapes[p + "self_attention.q_proj.weight"] = (eh, c.encoder_heads, c.encoder_head_dim)
        shapes[p + "self_attention.k_proj.weight"] = (eh, c.encoder_kv_heads, c.encoder_head_dim)
        shapes[p + "self_attention.v_proj.weight"] = (eh, c.encoder_kv_heads, c.encoder_head_dim)
        shapes[p + "self_attention.o_proj.weight"] = (c.encoder_heads, c.encoder_head_dim, eh)
        shapes[p + "post_sa_norm.weight"] = (eh,)
        shapes[p + "mlp.wi_fused.weight"] = (eh, 2, c.encoder_intermediate_size)
        shapes[p + "mlp.wo.weight"] = (c.encoder_intermediate_size, eh)
    shapes["encoder.norm.weight"] = (eh,)

    dh = c.decoder_hidden_size
    for ch in range(c.channels):
        shapes[f"decoder.embeddings.{ch}.weight"] = (c.audio_vocab_size, dh)
    for i in range(c.decoder_layers):
        p = f"decoder.layers.{i}."
        shapes[p + "pre_sa_norm.weight"] = (dh,)
        shapes[p + "self_attention.q_proj.weight"] = (dh, c.decoder_heads, c.decoder_head_dim)
        shapes[p + "self_attention.k_proj.weight"] = (dh, c.decoder_kv_heads, c.decoder_head_dim)
        shapes[p + "self_attention.v_proj.weight"] = (dh, c.decoder_kv_heads, c.decoder_head_dim)
        shapes[p + "self_attention.o_proj.weight"] = (c.decoder_heads, c.decoder_head_dim, dh)
        shapes[p + "pre_ca_norm.weight"] = (dh,)
        shapes[p + "cross_attention.q_proj.weight"] = (dh, c.cross_heads, c.cross_head_dim)
        shapes[p + "cross_attention.k_proj.weight"] = (eh, c.cross_kv_heads, c.cross_head_dim)
        shapes[p + "cross_attention.v_proj.weight"] = (eh, c.cross_kv_heads, c.cross_head_dim)
        shapes[p + "cross_attention.o_proj.weight"] = (c.cross_heads, c.cross_head_dim, dh)
        shapes[p + "pre_mlp_norm.weight"] = (dh,)
        shapes[p + "mlp.wi_fused.weight"] = (dh, 2, c.decoder_intermediate_size)
        shapes[p + "mlp.wo.weight"] = (c.decoder_intermediate_size, dh)
    shapes["decoder.norm.weight"] = (dh,)
    shapes["decoder.logits_dense.weight"] = (dh, c.channels, c.audio_vocab_size)
    return shapes


def hf_name(nari_name: str) -> str:
    """The transformers name of a nari tensor (the 9 decoder embedding tables all map to one table)."""
    if nari_name == "decoder.logits_dense.weight":
        return "logits_dense.weight"
    if nari_name.startswith("decoder.embeddings."):
        return "model.decoder.embeddings.embed.weight"
    name = "model." + nari_name
    return name.replace(".mlp.wo.", ".mlp.down_proj.").replace(".mlp.wi_fused.", ".mlp.gate_up_proj.")


def expected_hf_shapes(config: Dia1Config) -> dict[str, tuple[int, ...]]:
    """Every tensor of a transformers-format state dict with its (nn.Linear / nn.Embedding) shape."""
    shapes: dict[str, tuple[int, ...]] = {}
    for name, shape in expected_nari_shapes(config).items():
        if name.startswith("decoder.embeddings."):
            shape = (config.channels * config.audio_vocab_size, config.decoder_hidden_size)
        elif _is_dense(name):
            n_in = _dense_in_dims(name)
            shape = (math.prod(shape[n_in:]), math.prod(shape[:n_in]))
        shapes[hf_name(name)] = shape
    return shapes


def _is_dense(nari_name: str) -> bool:
    parts = nari_name.split(".")
    return len(parts) >= 2 and parts[-1] == "weight" and parts[-2] in _DENSE_MODULES


def _dense_in_dims(nari_name: str) -> int:
    # o_proj contracts (heads, head_dim); every other DenseGeneral contracts one axis.
    return 2 if nari_name.split(".")[-2] == "o_proj" else 1


# --------------------------------------------------------------------------------------------------------
# Conversion
# --------------------------------------------------------------------------------------------------------


def nari_to_hf(tensors: dict[str, torch.Tensor], config: Dia1Config) -> dict[str, torch.Tensor]:
    """Convert a (validated) nari state dict to transformers naming and nn.Linear layout."""
    out: dict[str, torch.Tensor] = {}
    for name, weight in tensors.items():
        if name.startswith("decoder.embeddings."):
            continue
        if _is_dense(name):
            n_in = _dense_in_dims(name)
            # Kernel (in_dims..., out_dims...) -> (prod(in), prod(out)) -> nn.Linear (out, in). For the logits
            # head (hidden, channels, vocab) this makes row c*vocab + v = channel c, token v, which is the
            # order transformers' view(batch, seq, channels, vocab) expects.
            weight = weight.reshape(math.prod(weight.shape[:n_in]), -1).T.contiguous()
        out[hf_name(name)] = weight
    tables = [tensors[f"decoder.embeddings.{ch}.weight"] for ch in range(config.channels)]
    out["model.decoder.embeddings.embed.weight"] = torch.cat(tables, dim=0)
    order = expected_hf_shapes(config)
    return {name: out[name] for name in order}


def hf_to_nari(tensors: dict[str, torch.Tensor], config: Dia1Config) -> dict[str, torch.Tensor]:
    """Inverse of :func:`nari_to_hf`: a transformers-format state dict in nari naming and kernel layout."""
    out: dict[str, torch.Tensor] = {}
    for name, shape in expected_nari_shapes(config).items():
        if name.startswith("decoder.embeddings."):
            channel = int(name.split(".")[2])
            rows = config.audio_vocab_size
            table = tensors["model.decoder.embeddings.embed.weight"]
            out[name] = table[channel * rows : (channel + 1) * rows].clone()
        elif _is_dense(name):
            out[name] = tensors[hf_name(name)].T.reshape(shape).contiguous()
        else:
            out[name] = tensors[hf_name(name)]
    return out


# --------------------------------------------------------------------------------------------------------
# Reading files
# --------------------------------------------------------------------------------------------------------


def load_checkpoint(model: str | os.PathLike, *, revision: str | None = None) -> LoadedCheckpoint:
    """Load a Dia-1.6B checkpoint (local directory or Hub id) into transformers naming.

    Raises :class:`ModelNotFoundError` when the model or one of its files cannot be found (or downloaded),
    and :class:`CheckpointError` when the files are there but do not form a supported, complete checkpoint.
    """
    repo = open_repo(model, revision=revision, what="model")
    config_path = repo.get(CONFIG_FILE)
    config = read_config(config_path)
    weight_format, index_path, weight_paths = _find_weight_files(repo)

    if weight_format == "safetensors":
        tensors = _read_safetensors(weight_paths, index_path)
    else:
        tensors = _read_torch_file(weight_paths[0])
    tensors = _drop_derived_buffers(tensors)
    naming = _detect_naming(tensors, weight_paths)
    where = ", ".join(p.name for p in weight_paths)

    if naming == "nari":
        _check_tensors(tensors, expected_nari_shapes(config), where, "nari")
        state_dict = nari_to_hf(tensors, config)
        layout = {
            "safetensors": LAYOUT_NARI_SAFETENSORS,
            "bin": LAYOUT_NARI_BIN,
            "pth": LAYOUT_NARI_PTH,
        }[weight_format]
    else:
        _check_tensors(tensors, expected_hf_shapes(config), where, "transformers")
        state_dict = {name: tensors[name] for name in expected_hf_shapes(config)}
        layout = LAYOUT_HF_SAFETENSORS if weight_format == "safetensors" else LAYOUT_HF_BIN

    files = [config_path] + ([index_path] if index_path else []) + weight_paths
    return LoadedCheckpoint(
        config=config, state_dict=state_dict, layout=layout, files=files, source=repo.name
    )


def _find_weight_files(repo: Repo) -> tuple[str, Path | None, list[Path]]:
    """Pick the weight files: (format, index path or None, weight file paths)."""
    # First look only at what is already on disk, so that a partly cached Hub repo (e.g. the 0626
    # pytorch_model.bin fetched by other tools) does not trigger a multi-GB download of the other copy.
    for on_disk_only in (True, False):
        for filename in WEIGHT_FILES:
            present = repo.cached(filename) is not None if on_disk_only else repo.has(filename)
            if not present:
                continue
            if filename == INDEX_FILE:
                index_path = repo.get(INDEX_FILE)
                shard_names = sorted(set(_read_index(index_path).values()))
                if on_disk_only and not all(repo.cached(name) for name in shard_names):
                    continue
                return "safetensors", index_path, [repo.get(name) for name in shard_names]
            weight_format = {SAFETENSORS_FILE: "safetensors", BIN_FILE: "bin", PTH_FILE: "pth"}[filename]
            return weight_format, None, [repo.get(filename)]

    looked_for = ", ".join(WEIGHT_FILES)
    if repo.is_local or repo.can_download():
        raise CheckpointError(
            f"The model {repo.name} has a config.json but none of the weight files {looked_for}."
        )
    raise ModelNotFoundError(
        f"None of the weight files ({looked_for}) of the model {repo.name} is in the Hub cache and the Hub "
        f"cannot be reached; run `hf download {repo.repo_id}` on a machine with network access, or pass a "
        "local directory holding the model files."
    )


def _read_index(path: Path) -> dict[str, str]:
    try:
        index = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise CheckpointError(f"The shard index {path} cannot be read as JSON ({exc}).") from exc
    weight_map = index.get("weight_map") if isinstance(index, dict) else None
    if not isinstance(weight_map, dict) or not all(
        isinstance(k, str) and isinstance(v, str) for k, v in weight_map.items()
    ):
        raise CheckpointError(f"The shard index {path} has no 'weight_map' of tensor names to shard files.")
    for shard in set(weight_map.values()):
        if "/" in shard or "\\" in shard or shard.startswith("."):
            raise CheckpointError(f"The shard index {path} names a shard outside its directory: {shard!r}.")
    return weight_map


def _read_safetensors(paths: list[Path], index_path: Path | None) -> dict[str, torch.Tensor]:
    from safetensors import SafetensorError, safe_open

    weight_map = _read_index(index_path) if index_path else None
    tensors: dict[str, torch.Tensor] = {}
    for path in paths:
        try:
            with safe_open(str(path), framework="pt", device="cpu") as handle:
                for name in handle.keys():
                    if name in tensors:
                        raise CheckpointError(
                            f"The tensor {name} appears in more than one shard (again in {path.name})."
                        )
                    if weight_map is not None and weight_map.get(name) != path.name:
                        raise CheckpointError(
                            f"The tensor {name} is in {path.name} but the shard index puts it in "
                            f"{weight_map.get(name) or 'no shard'}."
                        )
                    tensors[name] = handle.get_tensor(name)
        except SafetensorError as exc:
            raise CheckpointError(f"The weight file {path} is not a valid safetensors file ({exc}).") from exc
    if weight_map is not None:
        absent = sorted(name for name in weight_map if name not in tensors)
        if absent:
            raise CheckpointError(
                f"The shard index lists tensors its shards do not hold: {name_list(absent)}."
            )
    return tensors


def _read_torch_file(path: Path) -> dict[str, torch.Tensor]:
    try:
        try:
            obj = torch.load(path, map_location="cpu", weights_only=True, mmap=True)
        except RuntimeError as exc:
            # Files written with the legacy (pre-zip) torch.save format cannot be memory-mapped.
            if "mmap" not in str(exc):
                raise
            obj = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:
        first_line = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
        raise CheckpointError(
            f"The weight file {path} cannot be read as a plain PyTorch state dict ({first_line})."
        ) from exc
    # Training scripts often wrap the state dict.
    for wrapper in ("state_dict", "model"):
        if isinstance(obj, dict) and isinstance(obj.get(wrapper), dict):
            obj = obj[wrapper]
            break
    if not isinstance(obj, dict):
        raise CheckpointError(f"The weight file {path} holds a {type(obj).__name__}, not a state dict.")
    not_tensors = sorted(
        str(k) for k, v in obj.items() if not isinstance(v, torch.Tensor) or not isinstance(k, str)
    )
    if not_tensors:
        raise CheckpointError(
            f"The weight file {path} has entries that are not tensors: {name_list(not_tensors)}."
        )
    return dict(obj)


def _drop_derived_buffers(tensors: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    return {name: t for name, t in tensors.items() if not name.endswith(_DERIVED_BUFFER_SUFFIXES)}


def _detect_naming(tensors: dict[str, torch.Tensor], paths: list[Path]) -> str:
    """Tell the naming from the tensor names: "hf" (``model.…``, ``logits_dense.weight``) or "nari" (``encoder.…``)."""
    hf = [n for n in tensors if n.startswith("model.") or n == "logits_dense.weight"]
    nari = [n for n in tensors if n.startswith(("encoder.", "decoder."))]
    where = ", ".join(p.name for p in paths)
    if hf and nari:
        raise CheckpointError(
            f"The weight file(s) {where} mix transformers tensor names (e.g. {hf[0]}) with nari names "
            f"(e.g. {nari[0]})."
        )
    if hf:
        return "hf"
    if nari:
        return "nari"
    found = name_list(sorted(tensors)) if tensors else "no tensors at all"
    raise CheckpointError(f"The weight file(s) {where} hold no Dia-1.6B tensors (found {found}).")


def _check_tensors(
    tensors: dict[str, torch.Tensor], expected: dict[str, tuple[int, ...]], where: str, naming: str
) -> None:
    check_tensors(tensors, expected, f"{naming}-format weights in {where}")
