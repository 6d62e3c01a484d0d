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

import math
import os
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any

import torch

from faster_dia.errors import CheckpointError, ModelNotFoundError
from faster_dia.hub import Repo, open_repo
from faster_dia.models.checkpoint_io import (
    CONFIG_FILE,
    SAFETENSORS_FILE,
    ConfigProblems,
    ConfigReader,
    check_tensors,
    json_object,
    name_list,
    read_json,
    read_safetensors,
    read_torch_state_dict,
)
from faster_dia.models.dia1.config import VARIANT_0626, VARIANT_ORIGINAL, Dia1Config

LAYOUT_NARI_SAFETENSORS = "nari-safetensors"
LAYOUT_NARI_PTH = "nari-pth"
LAYOUT_NARI_BIN = "nari-bin"
LAYOUT_HF_SAFETENSORS = "hf-safetensors"
#: A ``pytorch_model.bin`` / ``.pth`` in transformers naming (not published, but what
#: ``save_pretrained(safe_serialization=False)`` writes).
LAYOUT_HF_BIN = "hf-bin"

INDEX_FILE = "model.safetensors.index.json"
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

_DEFAULTS = {f.name: f.default for f in fields(Dia1Config) if f.name != "variant"}


def read_config(path: str | os.PathLike) -> Dia1Config:
    """Read a Dia-1.6B ``config.json`` of either schema."""
    return parse_config(read_json(path, "model config"), source=str(path))


def parse_config(raw: Any, *, source: str = CONFIG_FILE) -> Dia1Config:
    """Turn a parsed ``config.json`` (nari v0.1 schema or transformers ``DiaConfig``) into a :class:`Dia1Config`."""
    raw = json_object(raw, "model config", source)
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


def _parse_nari_config(raw: dict, source: str) -> Dia1Config:
    version = raw.get("version")
    if str(version) != "0.1":
        raise CheckpointError(
            f"The model config {source} has the nari schema with version {version!r}; only version '0.1' is supported."
        )
    r = ConfigReader(source)
    model = r.block(raw, "model", "")
    encoder = r.block(model, "encoder", "model.")
    decoder = r.block(model, "decoder", "model.")
    data = r.block(raw, "data", "")

    for where, block in (("model.encoder.", encoder), ("model.decoder.", decoder)):
        activations = block.get("mlp_activations", ["silu", "linear"])
        if list(activations) != ["silu", "linear"]:
            raise CheckpointError(
                f"The model config {source} has '{where}mlp_activations' = {activations!r}; "
                "only ['silu', 'linear'] (SwiGLU) is supported."
            )
    rope_min = r.value(model, "rope_min_timescale", "model.", float, 1.0)
    if rope_min != 1.0:
        raise CheckpointError(
            f"The model config {source} has 'model.rope_min_timescale' = {rope_min}; only 1 is supported."
        )

    enc_heads = r.value(encoder, "n_head", "model.encoder.", int)
    cross_heads = r.value(decoder, "cross_query_heads", "model.decoder.", int)
    return Dia1Config(
        variant=VARIANT_ORIGINAL,
        encoder_layers=r.value(encoder, "n_layer", "model.encoder.", int),
        encoder_hidden_size=r.value(encoder, "n_embd", "model.encoder.", int),
        encoder_intermediate_size=r.value(encoder, "n_hidden", "model.encoder.", int),
        encoder_heads=enc_heads,
        # The nari encoder is plain MHA: no separate KV head count in this schema.
        encoder_kv_heads=enc_heads,
        encoder_head_dim=r.value(encoder, "head_dim", "model.encoder.", int),
        # 128 is the nari code's default; the published file always sets 256.
        text_vocab_size=r.value(model, "src_vocab_size", "model.", int, 128),
        text_length=r.value(data, "text_length", "data.", int),
        decoder_layers=r.value(decoder, "n_layer", "model.decoder.", int),
        decoder_hidden_size=r.value(decoder, "n_embd", "model.decoder.", int),
        decoder_intermediate_size=r.value(decoder, "n_hidden", "model.decoder.", int),
        decoder_heads=r.value(decoder, "gqa_query_heads", "model.decoder.", int),
        decoder_kv_heads=r.value(decoder, "kv_heads", "model.decoder.", int),
        decoder_head_dim=r.value(decoder, "gqa_head_dim", "model.decoder.", int),
        cross_heads=cross_heads,
        # Cross-attention K/V use cross_query_heads too (plain MHA).
        cross_kv_heads=cross_heads,
        cross_head_dim=r.value(decoder, "cross_head_dim", "model.decoder.", int),
        audio_vocab_size=r.value(model, "tgt_vocab_size", "model.", int, 1028),
        audio_length=r.value(data, "audio_length", "data.", int),
        channels=r.value(data, "channels", "data.", int, 9),
        norm_eps=r.value(model, "normalization_layer_epsilon", "model.", float, 1e-5),
        rope_theta=r.value(model, "rope_max_timescale", "model.", float, 10000.0),
        delay_pattern=r.int_list(data, "delay_pattern", "data.", _DEFAULTS["delay_pattern"]),
        eos_token_id=r.value(data, "audio_eos_value", "data.", int, 1024),
        pad_token_id=r.value(data, "audio_pad_value", "data.", int, 1025),
        bos_token_id=r.value(data, "audio_bos_value", "data.", int, 1026),
        text_pad_token_id=r.value(data, "text_pad_value", "data.", int, 0),
    )


def _rope_theta(r: ConfigReader, block: dict, where: str) -> float:
    # transformers 4.53 writes rope_theta + rope_scaling; v5 writes rope_parameters {"rope_type", "rope_theta"}.
    params = block.get("rope_parameters")
    if params is not None:
        if not isinstance(params, dict):
            raise CheckpointError(f"The model config {r.source} has '{where}rope_parameters' = {params!r}.")
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
            f"The model config {r.source} asks for RoPE type {rope_type!r} in '{where}'; only the default RoPE is supported."
        )
    return r.value({"rope_theta": theta}, "rope_theta", where, float)


def _parse_dia_config(raw: dict, source: str) -> Dia1Config:
    model_type = raw.get("model_type", "dia")
    if model_type != "dia":
        raise CheckpointError(
            f"The model config {source} has model_type {model_type!r}; only Dia-1.6B ('dia') is supported."
        )
    r = ConfigReader(source)
    encoder = r.block(raw, "encoder_config", "")
    decoder = r.block(raw, "decoder_config", "")
    enc, dec = "encoder_config.", "decoder_config."
    d = _DEFAULTS

    for where, block in ((enc, encoder), (dec, decoder)):
        act = block.get("hidden_act", "silu")
        if act != "silu":
            raise CheckpointError(
                f"The model config {source} has '{where}hidden_act' = {act!r}; only 'silu' is supported."
            )
    enc_theta = _rope_theta(r, encoder, enc)
    dec_theta = _rope_theta(r, decoder, dec)
    if enc_theta != dec_theta:
        raise CheckpointError(
            f"The model config {source} has different RoPE thetas for the encoder ({enc_theta}) and the "
            f"decoder ({dec_theta}); Dia-1.6B uses one."
        )
    # transformers reads norm_eps from each sub-config; the top-level norm_eps is unused.
    enc_eps = r.value(encoder, "norm_eps", enc, float, d["norm_eps"])
    dec_eps = r.value(decoder, "norm_eps", dec, float, d["norm_eps"])
    if enc_eps != dec_eps:
        raise CheckpointError(
            f"The model config {source} has different norm_eps for the encoder ({enc_eps}) and the decoder ({dec_eps})."
        )
    enc_hidden = r.value(encoder, "hidden_size", enc, int, d["encoder_hidden_size"])
    cross_hidden = r.value(decoder, "cross_hidden_size", dec, int, enc_hidden)
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
        ids[name] = r.token_id(value, name)

    return Dia1Config(
        variant=VARIANT_0626,
        encoder_layers=r.value(encoder, "num_hidden_layers", enc, int, d["encoder_layers"]),
        encoder_hidden_size=enc_hidden,
        encoder_intermediate_size=r.value(encoder, "intermediate_size", enc, int, d["encoder_intermediate_size"]
        ),
        encoder_heads=r.value(encoder, "num_attention_heads", enc, int, d["encoder_heads"]),
        encoder_kv_heads=r.value(encoder, "num_key_value_heads", enc, int, d["encoder_kv_heads"]),
        encoder_head_dim=r.value(encoder, "head_dim", enc, int, d["encoder_head_dim"]),
        text_vocab_size=r.value(encoder, "vocab_size", enc, int, d["text_vocab_size"]),
        text_length=r.value(encoder, "max_position_embeddings", enc, int, d["text_length"]),
        decoder_layers=r.value(decoder, "num_hidden_layers", dec, int, d["decoder_layers"]),
        decoder_hidden_size=r.value(decoder, "hidden_size", dec, int, d["decoder_hidden_size"]),
        decoder_intermediate_size=r.value(decoder, "intermediate_size", dec, int, d["decoder_intermediate_size"]
        ),
        decoder_heads=r.value(decoder, "num_attention_heads", dec, int, d["decoder_heads"]),
        decoder_kv_heads=r.value(decoder, "num_key_value_heads", dec, int, d["decoder_kv_heads"]),
        decoder_head_dim=r.value(decoder, "head_dim", dec, int, d["decoder_head_dim"]),
        cross_heads=r.value(decoder, "cross_num_attention_heads", dec, int, d["cross_heads"]),
        cross_kv_heads=r.value(decoder, "cross_num_key_value_heads", dec, int, d["cross_kv_heads"]),
        cross_head_dim=r.value(decoder, "cross_head_dim", dec, int, d["cross_head_dim"]),
        audio_vocab_size=r.value(decoder, "vocab_size", dec, int, d["audio_vocab_size"]),
        audio_length=r.value(decoder, "max_position_embeddings", dec, int, d["audio_length"]),
        channels=r.value(decoder, "num_channels", dec, int, d["channels"]),
        norm_eps=enc_eps,
        rope_theta=enc_theta,
        delay_pattern=r.int_list(raw, "delay_pattern", "", _DEFAULTS["delay_pattern"]),
        eos_token_id=ids["eos_token_id"],
        pad_token_id=ids["pad_token_id"],
        bos_token_id=ids["bos_token_id"],
        # Hard-coded in the 0626 code and in transformers; the schema has no field for it.
        text_pad_token_id=0,
    )


def _validate_config(config: Dia1Config, source: str) -> None:
    check = ConfigProblems(config, source)
    check.positive(("_layers", "_size", "_heads", "_dim", "_length", "channels"))
    if len(config.delay_pattern) != config.channels:
        check.add(
            f"the delay pattern {list(config.delay_pattern)} has {len(config.delay_pattern)} entries for "
            f"{config.channels} channels"
        )
    check.delays_not_negative(config.delay_pattern)
    check.grouped_heads(config.encoder_heads, config.encoder_kv_heads, "encoder")
    check.grouped_heads(config.decoder_heads, config.decoder_kv_heads, "decoder self-attention")
    check.grouped_heads(config.cross_heads, config.cross_kv_heads, "cross-attention")
    check.token_ids(("eos_token_id", "pad_token_id", "bos_token_id"), config.audio_vocab_size, "audio")
    check.raise_any()


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
        tensors = read_safetensors(weight_paths, _read_index(index_path) if index_path else None)
    else:
        tensors = read_torch_state_dict(weight_paths[0])
    tensors = _drop_derived_buffers(tensors)
    naming = _detect_naming(tensors, weight_paths)
    where = ", ".join(p.name for p in weight_paths)

    if naming == "nari":
        check_tensors(tensors, expected_nari_shapes(config), f"nari-format weights in {where}")
        state_dict = nari_to_hf(tensors, config)
        layout = {
            "safetensors": LAYOUT_NARI_SAFETENSORS,
            "bin": LAYOUT_NARI_BIN,
            "pth": LAYOUT_NARI_PTH,
        }[weight_format]
    else:
        check_tensors(tensors, expected_hf_shapes(config), f"transformers-format weights in {where}")
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
    index = read_json(path, "shard index")
    weight_map = index.get("weight_map") if isinstance(index, dict) else None
    if not isinstance(weight_map, dict) or not all(
        isinstance(k, str) and isinstance(v, str) for k, v in weight_map.items()
    ):
        raise CheckpointError(f"The shard index {path} has no 'weight_map' of tensor names to shard files.")
    for shard in set(weight_map.values()):
        if "/" in shard or "\\" in shard or shard.startswith("."):
            raise CheckpointError(f"The shard index {path} names a shard outside its directory: {shard!r}.")
    return weight_map


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
