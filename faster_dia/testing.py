"""Tiny random checkpoints in exactly the published layouts, for tests and benchmarks.

:func:`write_tiny_checkpoint` writes a few-hundred-kB Dia-1.6B look-alike (or a tiny DAC codec), a tiny Dia2
look-alike with its own tiny tokenizer, or a tiny Mimi codec, in the layouts found on the Hub; :func:`seed_hub_cache` lays a directory out as a Hugging Face Hub cache entry so the
repo-id code paths can be exercised offline.

For one ``seed`` the four Dia layouts hold the same weights: one canonical nari-format state dict is drawn and
then written in nari form or converted to transformers form.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import math
import os
import re
import shutil
from pathlib import Path
from typing import Any

import torch

from faster_dia.errors import InvalidInputError
from faster_dia.models.dia1.checkpoint import expected_nari_shapes, nari_to_hf
from faster_dia.models.dia1.config import VARIANT_0626, VARIANT_ORIGINAL, Dia1Config
from faster_dia.models.dia2.config import Dia2Config

KIND_ORIGINAL = "dia-1.6b"
KIND_ORIGINAL_PTH = "dia-1.6b-pth"
KIND_0626 = "dia-1.6b-0626"
KIND_0626_BIN = "dia-1.6b-0626-bin"
KIND_DAC = "dac"
KIND_DIA2 = "dia2"
KIND_MIMI = "mimi"
DIA_KINDS = (KIND_ORIGINAL, KIND_ORIGINAL_PTH, KIND_0626, KIND_0626_BIN)
KINDS = DIA_KINDS + (KIND_DAC, KIND_DIA2, KIND_MIMI)

#: Tiny sizes that keep every structural feature of Dia-1.6B: GQA in the decoder self-attention, a decoder
#: wider than the encoder, attention widths different from the hidden sizes, 9 channels with the real
#: delay pattern and the real token ids.
TINY_DIA_SIZES: dict[str, Any] = {
    "encoder_layers": 2,
    "encoder_hidden_size": 32,
    "encoder_intermediate_size": 64,
    "encoder_heads": 2,
    "encoder_kv_heads": 2,
    "encoder_head_dim": 16,
    "text_vocab_size": 256,
    "text_length": 1024,
    "decoder_layers": 2,
    "decoder_hidden_size": 48,
    "decoder_intermediate_size": 96,
    "decoder_heads": 4,
    "decoder_kv_heads": 2,
    "decoder_head_dim": 16,
    "cross_heads": 4,
    "cross_kv_heads": 4,
    "cross_head_dim": 16,
    "audio_vocab_size": 1028,
    "audio_length": 3072,
    "channels": 9,
    "norm_eps": 1e-5,
    "rope_theta": 10000.0,
    "delay_pattern": (0, 8, 9, 10, 11, 12, 13, 14, 15),
}

# Written into the 0626-style files, as the published ones carry it.
_TRANSFORMERS_VERSION = "4.53.0.dev0"


def tiny_dia_config(variant: str, config_overrides: dict[str, Any] | None = None) -> Dia1Config:
    """The tiny :class:`Dia1Config` of ``variant`` with ``config_overrides`` (Dia1Config field names) applied."""
    overrides = dict(config_overrides or {})
    if "variant" in overrides:
        raise InvalidInputError("The variant of a tiny checkpoint follows from its kind; do not override it.")
    known = {f.name for f in dataclasses.fields(Dia1Config)}
    unknown = sorted(set(overrides) - known)
    if unknown:
        raise InvalidInputError(f"Unknown Dia1Config fields in config_overrides: {', '.join(unknown)}.")
    if "delay_pattern" in overrides:
        overrides["delay_pattern"] = tuple(overrides["delay_pattern"])
    return Dia1Config(variant=variant, **{**TINY_DIA_SIZES, **overrides})


def tiny_nari_state_dict(
    config: Dia1Config, *, seed: int = 0, eos_logit_scale: float = 1.0
) -> dict[str, torch.Tensor]:
    """Random fp32 weights in nari naming and layout, drawn in a fixed order from ``seed``.

    Scales keep activations near unit size so that logits are neither flat nor saturated: DenseGeneral
    kernels ~ N(0, 1/fan_in) (unit-variance outputs), q/k kernels further scaled by head_dim**-0.25 because
    Dia's attention has no 1/sqrt(head_dim) factor (so the scores come out ~ N(0, 1)), embeddings ~ N(0, 1),
    RMSNorm weights 1 + N(0, 0.1²). ``eos_logit_scale`` multiplies the channel-0 EOS column of the logits
    head: with a large scale the EOS logit has a large magnitude, so greedy and sampled decoding pick EOS
    at roughly every other step and generation ends early.
    """
    generator = torch.Generator().manual_seed(seed)
    tensors: dict[str, torch.Tensor] = {}
    for name, shape in expected_nari_shapes(config).items():
        values = torch.randn(shape, generator=generator, dtype=torch.float32)
        module = name.split(".")[-2]
        if name.endswith("norm.weight"):
            values = 1.0 + 0.1 * values
        elif module in {"q_proj", "k_proj", "v_proj", "o_proj", "wi_fused", "wo", "logits_dense"}:
            n_in = 2 if module == "o_proj" else 1
            std = math.prod(shape[:n_in]) ** -0.5
            if module in {"q_proj", "k_proj"}:
                std *= shape[-1] ** -0.25
            values = values * std
        tensors[name] = values
    tensors["decoder.logits_dense.weight"][:, 0, config.eos_token_id] *= eos_logit_scale
    return tensors


def write_tiny_checkpoint(
    kind: str,
    directory: str | os.PathLike,
    *,
    seed: int = 0,
    config_overrides: dict[str, Any] | None = None,
    eos_logit_scale: float = 1.0,
) -> Path:
    """Write a tiny random checkpoint of ``kind`` (one of :data:`KINDS`) into ``directory``; return it.

    * ``dia-1.6b``: nari v0.1 config.json + nari-format model.safetensors (like ``nari-labs/Dia-1.6B``);
    * ``dia-1.6b-pth``: the same config + nari-format dia-v0_1.pth;
    * ``dia-1.6b-0626``: transformers DiaConfig config.json + generation_config.json + two transformers-format
      safetensors shards and their index (like ``nari-labs/Dia-1.6B-0626``);
    * ``dia-1.6b-0626-bin``: the DiaConfig config.json + nari-format pytorch_model.bin;
    * ``dac``: a tiny transformers DacModel (hop length 512, 9 codebooks of 1024) via ``save_pretrained``;
      ``config_overrides`` then are DacConfig arguments;
    * ``dia2``: Dia2 config.json (``data``/``model``/``runtime``) + float32 model.safetensors in the published
      naming + the files of a tiny GPT-2-style tokenizer (like ``nari-labs/Dia2-2B``); ``config_overrides``
      are Dia2Config field names (see :data:`TINY_DIA2_SIZES`);
    * ``mimi``: a tiny transformers MimiModel (24 kHz, 12.5 Hz, 32 codebooks of 2048) via ``save_pretrained``;
      ``config_overrides`` then are MimiConfig arguments.
    """
    if kind not in KINDS:
        raise InvalidInputError(f"Unknown tiny checkpoint kind {kind!r}; choose one of {', '.join(KINDS)}.")
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    if kind == KIND_DAC:
        return _write_tiny_dac(directory, seed=seed, config_overrides=config_overrides)
    if kind == KIND_DIA2:
        return _write_tiny_dia2(directory, seed=seed, config_overrides=config_overrides)
    if kind == KIND_MIMI:
        return _write_tiny_mimi(directory, seed=seed, config_overrides=config_overrides)

    variant = VARIANT_ORIGINAL if kind in (KIND_ORIGINAL, KIND_ORIGINAL_PTH) else VARIANT_0626
    config = tiny_dia_config(variant, config_overrides)
    nari = tiny_nari_state_dict(config, seed=seed, eos_logit_scale=eos_logit_scale)

    if kind == KIND_ORIGINAL:
        _write_json(directory / "config.json", nari_config_json(config))
        _save_safetensors(nari, directory / "model.safetensors")
    elif kind == KIND_ORIGINAL_PTH:
        _write_json(directory / "config.json", nari_config_json(config))
        torch.save(nari, directory / "dia-v0_1.pth")
    elif kind == KIND_0626:
        _write_json(directory / "config.json", dia_config_json(config))
        _write_json(directory / "generation_config.json", generation_config_json(config))
        _write_hf_shards(nari_to_hf(nari, config), directory)
    else:
        _write_json(directory / "config.json", dia_config_json(config))
        torch.save(nari, directory / "pytorch_model.bin")
    return directory


# --------------------------------------------------------------------------------------------------------
# Config files
# --------------------------------------------------------------------------------------------------------


def nari_config_json(config: Dia1Config) -> dict[str, Any]:
    """The nari "v0.1" config.json (schema of ``nari-labs/Dia-1.6B``) describing ``config``."""
    if config.encoder_kv_heads != config.encoder_heads or config.cross_kv_heads != config.cross_heads:
        raise InvalidInputError(
            "The nari v0.1 config cannot express encoder or cross-attention KV heads that differ from the "
            "query heads; keep encoder_kv_heads == encoder_heads and cross_kv_heads == cross_heads."
        )
    return {
        "version": "0.1",
        "model": {
            "encoder": {
                "n_layer": config.encoder_layers,
                "n_embd": config.encoder_hidden_size,
                "n_hidden": config.encoder_intermediate_size,
                "n_head": config.encoder_heads,
                "head_dim": config.encoder_head_dim,
            },
            "decoder": {
                "n_layer": config.decoder_layers,
                "n_embd": config.decoder_hidden_size,
                "n_hidden": config.decoder_intermediate_size,
                "gqa_query_heads": config.decoder_heads,
                "kv_heads": config.decoder_kv_heads,
                "gqa_head_dim": config.decoder_head_dim,
                "cross_query_heads": config.cross_heads,
                "cross_head_dim": config.cross_head_dim,
            },
            "src_vocab_size": config.text_vocab_size,
            "tgt_vocab_size": config.audio_vocab_size,
            "dropout": 0.0,
            "normalization_layer_epsilon": config.norm_eps,
            "weight_dtype": "float32",
            "rope_min_timescale": 1,
            "rope_max_timescale": _plain_number(config.rope_theta),
        },
        "training": {},
        "data": {
            "text_length": config.text_length,
            "audio_length": config.audio_length,
            "channels": config.channels,
            "text_pad_value": config.text_pad_token_id,
            "audio_eos_value": config.eos_token_id,
            "audio_pad_value": config.pad_token_id,
            "audio_bos_value": config.bos_token_id,
            "delay_pattern": list(config.delay_pattern),
        },
    }


def dia_config_json(config: Dia1Config) -> dict[str, Any]:
    """The transformers DiaConfig config.json describing ``config``, spelled as transformers 4.53 wrote it."""
    if config.text_pad_token_id != 0:
        raise InvalidInputError("The transformers DiaConfig has no text pad id; keep text_pad_token_id at 0.")
    encoder = {
        "head_dim": config.encoder_head_dim,
        "hidden_act": "silu",
        "hidden_size": config.encoder_hidden_size,
        "initializer_range": 0.02,
        "intermediate_size": config.encoder_intermediate_size,
        "max_position_embeddings": config.text_length,
        "model_type": "dia_encoder",
        "norm_eps": config.norm_eps,
        "num_attention_heads": config.encoder_heads,
        "num_hidden_layers": config.encoder_layers,
        "num_key_value_heads": config.encoder_kv_heads,
        "rope_scaling": None,
        "rope_theta": config.rope_theta,
        "vocab_size": config.text_vocab_size,
    }
    decoder = {
        "cross_head_dim": config.cross_head_dim,
        "cross_hidden_size": config.encoder_hidden_size,
        "cross_num_attention_heads": config.cross_heads,
        "cross_num_key_value_heads": config.cross_kv_heads,
        "head_dim": config.decoder_head_dim,
        "hidden_act": "silu",
        "hidden_size": config.decoder_hidden_size,
        "initializer_range": 0.02,
        "intermediate_size": config.decoder_intermediate_size,
        "max_position_embeddings": config.audio_length,
        "model_type": "dia_decoder",
        "norm_eps": config.norm_eps,
        "num_attention_heads": config.decoder_heads,
        "num_channels": config.channels,
        "num_hidden_layers": config.decoder_layers,
        "num_key_value_heads": config.decoder_kv_heads,
        "rope_scaling": None,
        "rope_theta": config.rope_theta,
        "vocab_size": config.audio_vocab_size,
    }
    return {
        "architectures": ["DiaForConditionalGeneration"],
        "bos_token_id": config.bos_token_id,
        "decoder_config": decoder,
        "delay_pattern": list(config.delay_pattern),
        "encoder_config": encoder,
        "eos_token_id": config.eos_token_id,
        "initializer_range": 0.02,
        "is_encoder_decoder": True,
        "model_type": "dia",
        "norm_eps": config.norm_eps,
        "pad_token_id": config.pad_token_id,
        "torch_dtype": "float32",
        "transformers_version": _TRANSFORMERS_VERSION,
        "use_cache": True,
    }


def generation_config_json(config: Dia1Config) -> dict[str, Any]:
    """The generation_config.json shipped with ``nari-labs/Dia-1.6B-0626`` (transformers sampling defaults)."""
    return {
        "bos_token_id": config.bos_token_id,
        "do_sample": True,
        "eos_token_id": config.eos_token_id,
        "guidance_scale": 3.0,
        "max_length": config.audio_length,
        "pad_token_id": config.pad_token_id,
        "temperature": 1.2,
        "top_k": 45,
        "top_p": 0.95,
        "transformers_version": _TRANSFORMERS_VERSION,
    }


def _plain_number(value: float) -> int | float:
    return int(value) if float(value).is_integer() else value


def _write_json(path: Path, content: dict[str, Any]) -> None:
    path.write_text(json.dumps(content, indent=2, sort_keys=False) + "\n", encoding="utf-8")


# --------------------------------------------------------------------------------------------------------
# Weight files
# --------------------------------------------------------------------------------------------------------


def _save_safetensors(tensors: dict[str, torch.Tensor], path: Path) -> None:
    from safetensors.torch import save_file

    save_file({name: t.contiguous() for name, t in tensors.items()}, str(path), metadata={"format": "pt"})


def _write_hf_shards(tensors: dict[str, torch.Tensor], directory: Path) -> None:
    """Two shards split at half the bytes, plus the index, as ``save_pretrained`` lays them out."""
    total = sum(t.numel() * t.element_size() for t in tensors.values())
    shards: list[dict[str, torch.Tensor]] = [{}, {}]
    written = 0
    for name, tensor in tensors.items():
        shards[0 if written < total / 2 else 1][name] = tensor
        written += tensor.numel() * tensor.element_size()
    weight_map = {}
    for number, shard in enumerate(shards, start=1):
        filename = f"model-{number:05d}-of-{len(shards):05d}.safetensors"
        _save_safetensors(shard, directory / filename)
        weight_map.update({name: filename for name in shard})
    index = {"metadata": {"total_size": total}, "weight_map": dict(sorted(weight_map.items()))}
    _write_json(directory / "model.safetensors.index.json", index)


def _write_tiny_dac(directory: Path, *, seed: int, config_overrides: dict[str, Any] | None) -> Path:
    from transformers import DacConfig, DacModel

    settings = {
        "encoder_hidden_size": 4,
        "downsampling_ratios": [2, 4, 8, 8],
        "decoder_hidden_size": 16,
        "n_codebooks": 9,
        "codebook_size": 1024,
        "codebook_dim": 8,
        "sampling_rate": 44100,
        **(config_overrides or {}),
    }
    torch.manual_seed(seed)
    model = DacModel(DacConfig(**settings)).eval()
    model.save_pretrained(directory)
    return directory


# --------------------------------------------------------------------------------------------------------
# Dia2
# --------------------------------------------------------------------------------------------------------

#: Tiny Dia2 sizes (Dia2Config field names). They keep every structural feature of the published models:
#: GQA in the decoder, a depformer narrower than the decoder, 34 channels with the real delay pattern, the
#: real audio vocabulary and special ids, and several depformer weight groups. The text vocabulary follows
#: from the tiny tokenizer (see :func:`write_tiny_tokenizer`).
TINY_DIA2_SIZES: dict[str, Any] = {
    "channels": 34,
    "audio_vocab_size": 2050,
    "delay_pattern": (16,) + (18,) * 31,
    "first_word_min_start": 3,
    "max_pad": 8,
    "second_stream_ahead": 2,
    "decoder_layers": 2,
    "decoder_hidden_size": 64,
    "decoder_intermediate_size": 128,
    "decoder_heads": 4,
    "decoder_kv_heads": 2,
    "decoder_head_dim": 16,
    "depformer_layers": 2,
    "depformer_hidden_size": 32,
    "depformer_intermediate_size": 64,
    "depformer_heads": 2,
    "depformer_kv_heads": 2,
    "depformer_head_dim": 16,
    "depformer_text_embedding": False,
    "norm_eps": 1e-6,
    # Three groups over the 31 depformer stages, like the published files' few groups.
    "weights_schedule": (0,) + (1,) * 15 + (2,) * 15,
    "max_context_steps": 1500,
}

#: Tokens of the tiny tokenizer at ids 0..7. The runtime uses model text ids 1 (BOS), 2 (new word), 3 (pad)
#: and 7 (zero), so no real word may ever get one of these ids; id 0 is the tokenizer's own BOS/EOS/UNK,
#: as in the published tokenizer (which reports bos_token_id 0).
TINY_TOKENIZER_SPECIAL_TOKENS = ("<|endoftext|>",) + tuple(
    f"<|reserved_special_token_{i}|>" for i in range(1, 8)
)
#: Added tokens of the tiny tokenizer, after its BPE vocabulary: the speaker tags and a few sound tags.
TINY_TOKENIZER_ADDED_TOKENS = (
    "[S1]",
    "[S2]",
    "(laughs)",
    "(sighs)",
    "(coughs)",
    "(gasps)",
    "(clears throat)",
)
#: Size of the tiny tokenizer's BPE vocabulary (special tokens, 256 byte symbols, merges).
TINY_TOKENIZER_BPE_SIZE = 384

#: The word list the tiny tokenizer's BPE is trained on.
TINY_TOKENIZER_WORDS = """
the be to of and a in that have it for not on with he as you do at this but his by from they we say her she
or an will my one all would there their what so up out if about who get which go me when make can like time
no just him know take people into year your good some could them see other than then now look only come its
over think also back after use two how our work first well way even new want because any these give day most
us is are was were been has had did said says hello world speech voice sound audio model dialogue talk talks
speaker listen laugh sigh cough yes okay thanks thank please sorry really very much little big small long
short fast slow happy sad today tomorrow yesterday morning night water coffee music story friend family home
house city country number numbers word words sentence question answer start stop again right left maybe
never always something nothing everything someone everyone where why here there going doing thing things
""".split()


def write_tiny_tokenizer(directory: str | os.PathLike) -> Path:
    """Write a tiny GPT-2-style byte-level BPE tokenizer's files (as a Hub tokenizer repo has them); return the directory.

    The BPE is trained on a fixed English word list, so the files are the same on every call. Ids 0..7 are
    :data:`TINY_TOKENIZER_SPECIAL_TOKENS`, then the 256 byte symbols and the merges up to
    :data:`TINY_TOKENIZER_BPE_SIZE`, then :data:`TINY_TOKENIZER_ADDED_TOKENS` in order.
    """
    from tokenizers import AddedToken, Tokenizer, decoders, models, pre_tokenizers, trainers

    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    tokenizer = Tokenizer(models.BPE())
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tokenizer.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=TINY_TOKENIZER_BPE_SIZE,
        special_tokens=list(TINY_TOKENIZER_SPECIAL_TOKENS),
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    # Each word both at the start of a text and after a space, as words are encoded in both forms.
    corpus = [" ".join(TINY_TOKENIZER_WORDS), *TINY_TOKENIZER_WORDS, " ".join(reversed(TINY_TOKENIZER_WORDS))]
    tokenizer.train_from_iterator(corpus, trainer)
    tokenizer.add_special_tokens(
        [AddedToken(t, normalized=False, special=True) for t in TINY_TOKENIZER_ADDED_TOKENS]
    )

    tokenizer.model.save(str(directory))  # vocab.json and merges.txt
    tokenizer.save(str(directory / "tokenizer.json"))
    vocab = tokenizer.get_vocab(with_added_tokens=False)
    added = {t: tokenizer.token_to_id(t) for t in TINY_TOKENIZER_ADDED_TOKENS}
    _write_json(directory / "added_tokens.json", added)

    def added_token(content: str) -> dict[str, Any]:
        return {
            "content": content,
            "lstrip": False,
            "normalized": False,
            "rstrip": False,
            "single_word": False,
            "special": True,
        }

    decoder = {str(vocab[t]): added_token(t) for t in TINY_TOKENIZER_SPECIAL_TOKENS}
    decoder.update({str(i): added_token(t) for t, i in added.items()})
    _write_json(
        directory / "tokenizer_config.json",
        {
            "add_prefix_space": False,
            "added_tokens_decoder": decoder,
            "additional_special_tokens": list(TINY_TOKENIZER_ADDED_TOKENS),
            "bos_token": "<|endoftext|>",
            "clean_up_tokenization_spaces": False,
            "eos_token": "<|endoftext|>",
            "model_max_length": 8192,
            "tokenizer_class": "GPT2Tokenizer",
            "unk_token": "<|endoftext|>",
            "vocab_size": len(vocab),
        },
    )
    _write_json(
        directory / "special_tokens_map.json",
        {
            "additional_special_tokens": [added_token(t) for t in TINY_TOKENIZER_ADDED_TOKENS],
            "bos_token": added_token("<|endoftext|>"),
            "eos_token": added_token("<|endoftext|>"),
            "unk_token": added_token("<|endoftext|>"),
        },
    )
    return directory


def tiny_dia2_config(text_vocab_size: int, config_overrides: dict[str, Any] | None = None) -> Dia2Config:
    """The tiny :class:`Dia2Config` with ``config_overrides`` (Dia2Config field names) applied."""
    overrides = dict(config_overrides or {})
    known = {f.name for f in dataclasses.fields(Dia2Config)}
    unknown = sorted(set(overrides) - known)
    if unknown:
        raise InvalidInputError(f"Unknown Dia2Config fields in config_overrides: {', '.join(unknown)}.")
    for name in ("delay_pattern", "weights_schedule", "decoder_mlp_activations", "depformer_mlp_activations"):
        if name in overrides:
            overrides[name] = tuple(overrides[name])
    return Dia2Config(**{**TINY_DIA2_SIZES, "text_vocab_size": text_vocab_size, **overrides})


def tiny_dia2_state_dict(config: Dia2Config, *, seed: int = 0) -> dict[str, torch.Tensor]:
    """Random fp32 weights in the published Dia2 naming, drawn in a fixed order from ``seed``.

    Scales keep activations near unit size: linear weights ~ N(0, 1/fan_in), embeddings ~ N(0, 1), RMSNorm
    weights 1 + N(0, 0.1²). Dia2's attention has scale 1.0 after RMSNorm-ing q and k per head, so the q/k
    norm weights are further scaled by head_dim**-0.25 (scaling the projections would be undone by the norm);
    the scores then come out ~ N(0, 1).
    """
    from faster_dia.models.dia2.checkpoint import expected_shapes

    generator = torch.Generator().manual_seed(seed)
    tensors: dict[str, torch.Tensor] = {}
    for name, shape in expected_shapes(config).items():
        values = torch.randn(shape, generator=generator, dtype=torch.float32)
        if name.endswith("norm.weight"):
            values = 1.0 + 0.1 * values
            if name.endswith(("q_norm.weight", "k_norm.weight")):
                values = values * shape[0] ** -0.25
        elif not (".audio_embeds." in name or name.endswith("text_embed.embedding.weight")):
            values = values * shape[1] ** -0.5
        tensors[name] = values
    return tensors


def dia2_config_json(config: Dia2Config) -> dict[str, Any]:
    """The Dia2 config.json describing ``config``, with the published field names and blocks."""
    c = config
    data: dict[str, Any] = {
        "channels": c.channels,
        "text_vocab_size": c.text_vocab_size,
        "audio_vocab_size": c.audio_vocab_size,
        "action_vocab_size": c.action_vocab_size,
        "text_pad_token_id": c.text_pad_token_id,
        "text_new_word_token_id": c.text_new_word_token_id,
        "text_zero_token_id": c.text_zero_token_id,
        "audio_pad_token_id": c.audio_pad_token_id,
        "audio_bos_token_id": c.audio_bos_token_id,
        "action_pad_token_id": c.action_pad_token_id,
        "action_new_word_token_id": c.action_new_word_token_id,
        "delay_pattern": list(c.delay_pattern),
        "first_word_min_start": c.first_word_min_start,
        "max_pad": c.max_pad,
        "second_stream_ahead": c.second_stream_ahead,
    }
    if c.tokenizer_path is not None:
        data["tokenizer_path"] = c.tokenizer_path
    decoder: dict[str, Any] = {
        "n_layer": c.decoder_layers,
        "n_embd": c.decoder_hidden_size,
        "n_hidden": c.decoder_intermediate_size,
        "gqa_query_heads": c.decoder_heads,
        "kv_heads": c.decoder_kv_heads,
        "gqa_head_dim": c.decoder_head_dim,
    }
    if c.decoder_low_rank_dim is not None:
        decoder["low_rank_dim"] = c.decoder_low_rank_dim
    depformer: dict[str, Any] = {
        "n_layer": c.depformer_layers,
        "n_embd": c.depformer_hidden_size,
        "n_hidden": c.depformer_intermediate_size,
        "gqa_query_heads": c.depformer_heads,
        "kv_heads": c.depformer_kv_heads,
        "gqa_head_dim": c.depformer_head_dim,
        "apply_rope": c.depformer_apply_rope,
        "text_embedding": c.depformer_text_embedding,
    }
    # The published files leave the MLP activations at the loader's default.
    if c.depformer_mlp_activations != ("silu", "linear"):
        depformer["mlp_activations"] = list(c.depformer_mlp_activations)
    model: dict[str, Any] = {"decoder": decoder, "depformer": depformer}
    if c.decoder_mlp_activations != ("silu", "linear"):
        model["linear"] = {"mlp_activations": list(c.decoder_mlp_activations)}
    model.update(
        {
            "dropout": c.dropout,
            "rope_min_timescale": _plain_number(c.rope_min_timescale),
            "rope_max_timescale": _plain_number(c.rope_max_timescale),
            "normalization_layer_epsilon": c.norm_eps,
        }
    )
    runtime = {"weights_schedule": list(c.weights_schedule), "max_context_steps": c.max_context_steps}
    return {"data": data, "model": model, "runtime": runtime}


def _write_tiny_dia2(directory: Path, *, seed: int, config_overrides: dict[str, Any] | None) -> Path:
    from faster_dia.models.dia2.tokenizer import load_tokenizer

    write_tiny_tokenizer(directory)
    # Like the published 49,280 rows for a ~49k tokenizer: the embedding table is the tokenizer size rounded up.
    text_vocab_size = -(-load_tokenizer(directory).vocab_size // 64) * 64
    config = tiny_dia2_config(text_vocab_size, config_overrides)
    _write_json(directory / "config.json", dia2_config_json(config))
    _save_safetensors(tiny_dia2_state_dict(config, seed=seed), directory / "model.safetensors")
    return directory


def _write_tiny_mimi(directory: Path, *, seed: int, config_overrides: dict[str, Any] | None) -> Path:
    from transformers import MimiConfig, MimiModel

    # Real rates and quantizer layout (24 kHz, 1920 samples per frame, 32 codebooks of 2048), tiny widths.
    settings = {
        "sampling_rate": 24000,
        "frame_rate": 12.5,
        "hidden_size": 16,
        "num_filters": 4,
        "upsampling_ratios": [8, 6, 5, 4],
        "upsample_groups": 16,
        "codebook_size": 2048,
        "codebook_dim": 8,
        "vector_quantization_hidden_dimension": 8,
        "num_quantizers": 32,
        "num_semantic_quantizers": 1,
        "num_hidden_layers": 1,
        "intermediate_size": 32,
        "num_attention_heads": 2,
        "num_key_value_heads": 2,
        "head_dim": 8,
        **(config_overrides or {}),
    }
    torch.manual_seed(seed)
    model = MimiModel(MimiConfig(**settings)).eval()
    # Fresh codebooks are all zeros (they are learnt by k-means), so every frame would encode to code 0;
    # random centroids make codes depend on the audio and decoding depend on the codes.
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, buffer in model.named_buffers():
            if name.endswith(".embed_sum"):
                buffer.copy_(torch.randn(buffer.shape, generator=generator))
        # Shrink the last convolution so that decoded audio mostly stays inside [-1, 1] instead of clipping.
        last_conv = [m for m in model.decoder.modules() if isinstance(m, torch.nn.Conv1d)][-1]
        last_conv.weight.mul_(0.05)
        if last_conv.bias is not None:
            last_conv.bias.mul_(0.05)
    model.save_pretrained(directory)
    return directory


# --------------------------------------------------------------------------------------------------------
# Hub cache
# --------------------------------------------------------------------------------------------------------

_COMMIT_RE = re.compile(r"^[0-9a-f]{40}$")


def seed_hub_cache(
    cache_dir: str | os.PathLike, repo_id: str, source_dir: str | os.PathLike, *, revision: str = "main"
) -> Path:
    """Copy ``source_dir`` into a Hub-cache snapshot of ``repo_id`` at ``revision``; return the snapshot path.

    Lays out ``models--{org}--{name}/snapshots/<commit>/...`` and ``refs/<revision>`` (unless the revision is
    itself a commit hash), which is all ``hf_hub_download(..., local_files_only=True)`` and
    :func:`faster_dia.hub.open_repo` need with ``HF_HUB_CACHE=cache_dir``. The commit hash is derived from
    the repo id, the revision and the file names and sizes, so seeding is reproducible.
    """
    source = Path(source_dir)
    if not source.is_dir():
        raise InvalidInputError(f"The directory to seed the Hub cache from, {source}, does not exist.")
    if _COMMIT_RE.match(revision):
        commit = revision
    else:
        digest = hashlib.sha1(f"{repo_id}\0{revision}".encode())
        for path in sorted(p for p in source.rglob("*") if p.is_file()):
            digest.update(f"\0{path.relative_to(source).as_posix()}\0{path.stat().st_size}".encode())
        commit = digest.hexdigest()
    repo_dir = Path(cache_dir) / ("models--" + repo_id.replace("/", "--"))
    snapshot = repo_dir / "snapshots" / commit
    shutil.copytree(source, snapshot, dirs_exist_ok=True)
    if commit != revision:
        ref = repo_dir / "refs" / revision
        ref.parent.mkdir(parents=True, exist_ok=True)
        ref.write_text(commit)
    return snapshot


# --------------------------------------------------------------------------------------------------------
# Reference forward pass
# --------------------------------------------------------------------------------------------------------


def nari_reference_logits(
    state_dict: dict[str, torch.Tensor],
    config: Dia1Config,
    text_ids: torch.Tensor,
    audio_ids: torch.Tensor,
) -> torch.Tensor:
    """Teacher-forced logits [B, T, channels, audio_vocab] straight from a nari-format state dict.

    A slow, literal fp32 transcription of the nari model (DenseGeneral tensordots, attention scale 1.0,
    GQA by repeat-interleave, half-split RoPE, SwiGLU, pre-norm RMSNorm residuals, nari masks: text id 0 is
    padding), used to cross-check the weight conversion and faster implementations. Cross-attention applies
    RoPE only for the original variant. ``text_ids`` is [B, S]; ``audio_ids`` is [B, T, channels].
    """
    sd = {name: t.float() for name, t in state_dict.items()}
    c = config
    batch, text_len = text_ids.shape
    text_pos = torch.arange(text_len).expand(batch, text_len)
    audio_pos = torch.arange(audio_ids.shape[1]).expand(batch, audio_ids.shape[1])
    real = text_ids != c.text_pad_token_id
    # nari encoder mask: real attends to real, padding attends to padding.
    enc_mask = (real[:, :, None] & real[:, None, :]) | (~real[:, :, None] & ~real[:, None, :])
    cross_mask = real[:, None, :].expand(batch, audio_ids.shape[1], text_len)
    causal = torch.ones(audio_ids.shape[1], audio_ids.shape[1], dtype=torch.bool).tril()

    x = sd["encoder.embedding.weight"][text_ids]
    for i in range(c.encoder_layers):
        p = f"encoder.layers.{i}."
        h = _rms(x, sd[p + "pre_sa_norm.weight"], c.norm_eps)
        q = _rope(_dense(h, sd[p + "self_attention.q_proj.weight"]), text_pos, c.rope_theta)
        k = _rope(_dense(h, sd[p + "self_attention.k_proj.weight"]), text_pos, c.rope_theta)
        v = _dense(h, sd[p + "self_attention.v_proj.weight"])
        x = x + _dense(_attend(q, k, v, enc_mask), sd[p + "self_attention.o_proj.weight"], n_in=2)
        h = _rms(x, sd[p + "post_sa_norm.weight"], c.norm_eps)
        x = x + _swiglu(h, sd[p + "mlp.wi_fused.weight"], sd[p + "mlp.wo.weight"])
    encoded = _rms(x, sd["encoder.norm.weight"], c.norm_eps)

    y = sum(sd[f"decoder.embeddings.{ch}.weight"][audio_ids[..., ch]] for ch in range(c.channels))
    for i in range(c.decoder_layers):
        p = f"decoder.layers.{i}."
        h = _rms(y, sd[p + "pre_sa_norm.weight"], c.norm_eps)
        q = _rope(_dense(h, sd[p + "self_attention.q_proj.weight"]), audio_pos, c.rope_theta)
        k = _rope(_dense(h, sd[p + "self_attention.k_proj.weight"]), audio_pos, c.rope_theta)
        v = _dense(h, sd[p + "self_attention.v_proj.weight"])
        y = y + _dense(_attend(q, k, v, causal), sd[p + "self_attention.o_proj.weight"], n_in=2)
        h = _rms(y, sd[p + "pre_ca_norm.weight"], c.norm_eps)
        q = _dense(h, sd[p + "cross_attention.q_proj.weight"])
        k = _dense(encoded, sd[p + "cross_attention.k_proj.weight"])
        v = _dense(encoded, sd[p + "cross_attention.v_proj.weight"])
        if c.cross_attention_rope:
            q = _rope(q, audio_pos, c.rope_theta)
            k = _rope(k, text_pos, c.rope_theta)
        y = y + _dense(_attend(q, k, v, cross_mask), sd[p + "cross_attention.o_proj.weight"], n_in=2)
        h = _rms(y, sd[p + "pre_mlp_norm.weight"], c.norm_eps)
        y = y + _swiglu(h, sd[p + "mlp.wi_fused.weight"], sd[p + "mlp.wo.weight"])
    y = _rms(y, sd["decoder.norm.weight"], c.norm_eps)
    return _dense(y, sd["decoder.logits_dense.weight"])


def _dense(x: torch.Tensor, kernel: torch.Tensor, n_in: int = 1) -> torch.Tensor:
    return torch.tensordot(x, kernel, dims=(list(range(x.ndim - n_in, x.ndim)), list(range(n_in))))


def _rms(x: torch.Tensor, weight: torch.Tensor, eps: float) -> torch.Tensor:
    return x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + eps) * weight


def _rope(x: torch.Tensor, positions: torch.Tensor, theta: float) -> torch.Tensor:
    half = x.shape[-1] // 2
    timescale = theta ** (2 * torch.arange(half, dtype=torch.float32) / x.shape[-1])
    angle = positions[:, :, None, None].float() / timescale
    x1, x2 = x[..., :half], x[..., half:]
    return torch.cat([x1 * angle.cos() - x2 * angle.sin(), x2 * angle.cos() + x1 * angle.sin()], dim=-1)


def _attend(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, allowed: torch.Tensor) -> torch.Tensor:
    groups = q.shape[2] // k.shape[2]
    k = k.repeat_interleave(groups, dim=2)
    v = v.repeat_interleave(groups, dim=2)
    scores = torch.einsum("bqhd,bkhd->bhqk", q, k)
    scores = scores.masked_fill(~allowed.expand(q.shape[0], -1, -1)[:, None], float("-inf"))
    return torch.einsum("bhqk,bkhd->bqhd", scores.softmax(dim=-1), v)


def _swiglu(x: torch.Tensor, wi_fused: torch.Tensor, wo: torch.Tensor) -> torch.Tensor:
    fused = _dense(x, wi_fused)
    return _dense(torch.nn.functional.silu(fused[..., 0, :]) * fused[..., 1, :], wo)


# ---------------------------------------------------------------------- generator helpers for tests


def finish(generator, state):
    """All codes of a finished request (as the engine reports them), then its slot freed."""
    codes = generator.frames(state, 0, state.final_frames)
    generator.release(state)
    return codes


def delayed_tokens(generator, state):
    """A Dia-1.6B request's delayed token sequence so far, positions 0 … current (prompt included)."""
    return generator.tokens[state.row, : state.position + 1].clone()


# --------------------------------------------------------------------------------------------------------
# Voxtral
# --------------------------------------------------------------------------------------------------------

VOXTRAL_LAYOUTS = ("transformers", "mistral")

#: A tiny Voxtral: one audio chunk is 1 s at 16 kHz = 64 mel frames (hop 250) = 32 encoder positions = 8 tokens.
TINY_VOXTRAL_SIZES: dict[str, Any] = dict(
    audio_hidden_size=16, audio_intermediate_size=64, audio_layers=2, audio_heads=2, num_mel_bins=8,
    max_source_positions=32, downsample_factor=4, vocab_size=288, hidden_size=32, intermediate_size=48, layers=2,
    heads=4, kv_heads=2, head_dim=8, rope_theta=10000.0, max_position_embeddings=512, audio_token_id=24,
)
TINY_VOXTRAL_FEATURES: dict[str, Any] = dict(sampling_rate=16000, hop_length=250, n_fft=400, chunk_length=1)


def tiny_voxtral_config(config_overrides: dict[str, Any] | None = None):
    from faster_dia.models.voxtral.config import VoxtralConfig

    sizes = {**TINY_VOXTRAL_SIZES, **(config_overrides or {})}
    sizes["audio_intermediate_size"] = sizes["downsample_factor"] * sizes["audio_hidden_size"]
    return VoxtralConfig(**sizes)


def tiny_voxtral_state_dict(config, *, seed: int = 0) -> dict[str, torch.Tensor]:
    """Random float32 weights in transformers' names for every tensor ``config`` implies; the encoder positions
    are Whisper's sinusoids, as in the published checkpoints (Mistral's native file does not store them)."""
    from faster_dia.models.voxtral.checkpoint import expected_shapes
    from faster_dia.models.voxtral.mistral_format import whisper_sinusoids

    gen = torch.Generator().manual_seed(seed)
    tensors = {}
    for name, shape in expected_shapes(config).items():
        if name.endswith("norm.weight") or "layer_norm.weight" in name or "layernorm.weight" in name:
            tensors[name] = 1.0 + 0.1 * torch.randn(shape, generator=gen)
        elif name.endswith("embed_positions.weight"):
            tensors[name] = whisper_sinusoids(*shape)
        elif name.endswith("embed_tokens.weight"):
            tensors[name] = torch.randn(shape, generator=gen)
        else:
            fan_in = math.prod(shape[1:]) if len(shape) > 1 else shape[0]
            tensors[name] = torch.randn(shape, generator=gen) * (1.5 / math.sqrt(fan_in))
    return tensors


def voxtral_config_json(config) -> dict[str, Any]:
    """The transformers ``VoxtralConfig`` config.json of ``config``."""
    c = config
    return {
        "architectures": ["VoxtralForConditionalGeneration"],
        "model_type": "voxtral",
        "audio_token_id": c.audio_token_id,
        "hidden_size": c.hidden_size,
        "projector_hidden_act": c.projector_act,
        "audio_config": {
            "model_type": "voxtral_encoder", "hidden_size": c.audio_hidden_size,
            "intermediate_size": c.audio_intermediate_size, "num_hidden_layers": c.audio_layers,
            "num_attention_heads": c.audio_heads, "num_mel_bins": c.num_mel_bins,
            "max_source_positions": c.max_source_positions, "activation_function": "gelu",
            "scale_embedding": False, "vocab_size": 51866,
        },
        "text_config": {
            "model_type": "llama", "vocab_size": c.vocab_size, "hidden_size": c.hidden_size,
            "intermediate_size": c.intermediate_size, "num_hidden_layers": c.layers,
            "num_attention_heads": c.heads, "num_key_value_heads": c.kv_heads, "head_dim": c.head_dim,
            "max_position_embeddings": c.max_position_embeddings, "rms_norm_eps": c.rms_norm_eps,
            "rope_parameters": {"rope_theta": _plain_number(c.rope_theta), "rope_type": "default"},
            "hidden_act": "silu", "attention_bias": False, "mlp_bias": False,
            "tie_word_embeddings": c.tie_word_embeddings,
            "bos_token_id": c.bos_token_id, "eos_token_id": c.eos_token_id,
        },
        "dtype": "float32",
        "transformers_version": "5.24.0",
    }


def voxtral_preprocessor_json(config) -> dict[str, Any]:
    """preprocessor_config.json: transformers' WhisperFeatureExtractor sized so one chunk is ``mel_frames``."""
    f = TINY_VOXTRAL_FEATURES
    return {
        "feature_extractor_type": "WhisperFeatureExtractor", "feature_size": config.num_mel_bins,
        "sampling_rate": f["sampling_rate"], "hop_length": f["hop_length"], "n_fft": f["n_fft"],
        "chunk_length": f["chunk_length"], "n_samples": f["chunk_length"] * f["sampling_rate"],
        "nb_max_frames": config.mel_frames, "padding_side": "right", "padding_value": 0.0,
        "return_attention_mask": False, "dither": 0.0,
    }


def write_tiny_voxtral(directory: str | os.PathLike, *, layout: str = "transformers", seed: int = 0,
                       config_overrides: dict[str, Any] | None = None) -> Path:
    """Write a tiny random Voxtral checkpoint in one of :data:`VOXTRAL_LAYOUTS` into ``directory``; return it.

    * ``transformers``: config.json of ``VoxtralForConditionalGeneration``, two safetensors shards and their
      index, preprocessor_config.json (like ``mistralai/Voxtral-Mini-3B-2507``'s transformers files);
    * ``mistral``: params.json + consolidated.safetensors in Mistral's native names.

    Both get a tiny tekken.json (:func:`write_tiny_tekken`) that fits the tiny model's 288-token vocabulary.

    For one ``seed`` both layouts hold the same weights."""
    if layout not in VOXTRAL_LAYOUTS:
        raise InvalidInputError(f"Unknown Voxtral layout {layout!r}; choose one of {', '.join(VOXTRAL_LAYOUTS)}.")
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    config = tiny_voxtral_config(config_overrides)
    tensors = tiny_voxtral_state_dict(config, seed=seed)
    if layout == "transformers":
        _write_json(directory / "config.json", voxtral_config_json(config))
        _write_json(directory / "preprocessor_config.json", voxtral_preprocessor_json(config))
        _write_hf_shards(tensors, directory)
        write_tiny_tekken(directory)
    else:
        from faster_dia.models.voxtral.mistral_format import mistral_params_json, to_mistral_names

        f = TINY_VOXTRAL_FEATURES
        _write_json(directory / "params.json", mistral_params_json(
            config, sampling_rate=f["sampling_rate"], hop_length=f["hop_length"], window_size=f["n_fft"]))
        _save_safetensors(to_mistral_names(tensors, config), directory / "consolidated.safetensors")
        write_tiny_tekken(directory)
    return directory


#: The tiny tekken vocabulary: 32 special tokens (ids as in Voxtral's where the code relies on them: <s> 1,
#: </s> 2, [INST] 3, [/INST] 4, [AUDIO] 24, [BEGIN_AUDIO] 25, [TRANSCRIBE] 34), then the 256 bytes, no merges.
TINY_TEKKEN_SPECIALS = {0: "<unk>", 1: "<s>", 2: "</s>", 3: "[INST]", 4: "[/INST]", 5: "[AVAILABLE_TOOLS]",
                        6: "[/AVAILABLE_TOOLS]", 7: "[TOOL_RESULTS]", 8: "[/TOOL_RESULTS]", 9: "[TOOL_CALLS]",
                        10: "[IMG]", 11: "<pad>", 12: "[IMG_BREAK]", 13: "[IMG_END]", 14: "[PREFIX]",
                        15: "[MIDDLE]", 16: "[SUFFIX]", 17: "[SYSTEM_PROMPT]", 18: "[/SYSTEM_PROMPT]",
                        19: "[TOOL_CONTENT]", 20: "[ARGS]", 21: "[CALL_ID]", 24: "[AUDIO]", 25: "[BEGIN_AUDIO]",
                        34: "[TRANSCRIBE]"}
TINY_TEKKEN_SPECIAL_COUNT = 36


def write_tiny_tekken(directory: str | os.PathLike) -> Path:
    """A tekken.json in Mistral's schema (version v11, an audio section sized like the tiny Voxtral's: 8 tokens
    per second of 16 kHz audio, padded to 1 s chunks) that mistral-common loads."""
    import base64

    f = TINY_VOXTRAL_FEATURES
    specials = [{"rank": i, "token_str": TINY_TEKKEN_SPECIALS.get(i, f"<SPECIAL_{i}>"), "is_control": True}
                for i in range(TINY_TEKKEN_SPECIAL_COUNT)]
    vocab = [{"rank": b, "token_bytes": base64.b64encode(bytes([b])).decode(), "token_str": None}
             for b in range(256)]
    content = {
        "config": {"pattern": r"\s?\S+|\s+", "num_vocab_tokens": 256, "default_vocab_size": 256 + len(specials),
                   "default_num_special_tokens": len(specials), "version": "v11"},
        "vocab": vocab,
        "special_tokens": specials,
        "audio": {"sampling_rate": f["sampling_rate"], "frame_rate": f["sampling_rate"] / (f["hop_length"] * 8),
                  "audio_encoding_config": {"num_mel_bins": TINY_VOXTRAL_SIZES["num_mel_bins"],
                                            "hop_length": f["hop_length"], "window_size": f["n_fft"]},
                  "chunk_length_s": float(f["chunk_length"])},
    }
    path = Path(directory) / "tekken.json"
    _write_json(path, content)
    return path
