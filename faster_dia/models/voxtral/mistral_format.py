"""Mistral's native Voxtral layout: ``params.json``, ``consolidated.safetensors``, ``tekken.json``.

The weights are converted once at load time to transformers' names and conventions, so one network serves both
layouts: decoder q/k rows are regrouped from the interleaved RoPE pairs Mistral's code rotates to the
rotate-half layout transformers (and :mod:`faster_dia.models.layers`) rotates; the encoder's learned positions,
absent from the native file, are Whisper's sinusoids (what transformers' conversion stores).
"""

from __future__ import annotations

import math
import re
from typing import Any

import torch

from faster_dia.errors import CheckpointError
from faster_dia.models.checkpoint_io import (
    ConfigReader,
    check_tensors,
    json_object,
    read_json,
    read_safetensors,
)
from faster_dia.models.voxtral.config import VoxtralConfig

MISTRAL_PARAMS_FILE = "params.json"
MISTRAL_WEIGHTS_FILE = "consolidated.safetensors"
#: The audio placeholder of the tekken vocabulary ("[AUDIO]"), as transformers' conversion records it.
MISTRAL_AUDIO_TOKEN_ID = 24

_ENCODER = "mm_whisper_embeddings.whisper_encoder."
# native name pattern → transformers name (first match wins)
_NAMES = (
    (r"^output\.weight$", r"language_model.lm_head.weight"),
    (r"^norm\.weight$", r"language_model.model.norm.weight"),
    (r"^(?:mm_whisper_embeddings\.)?tok_embeddings\.weight$", r"language_model.model.embed_tokens.weight"),
    (r"^layers\.(\d+)\.attention_norm\.weight$", r"language_model.model.layers.\1.input_layernorm.weight"),
    (r"^layers\.(\d+)\.ffn_norm\.weight$", r"language_model.model.layers.\1.post_attention_layernorm.weight"),
    (r"^layers\.(\d+)\.attention\.w([qkvo])\.weight$", r"language_model.model.layers.\1.self_attn.\2_proj.weight"),
    (r"^layers\.(\d+)\.feed_forward\.w1\.weight$", r"language_model.model.layers.\1.mlp.gate_proj.weight"),
    (r"^layers\.(\d+)\.feed_forward\.w2\.weight$", r"language_model.model.layers.\1.mlp.down_proj.weight"),
    (r"^layers\.(\d+)\.feed_forward\.w3\.weight$", r"language_model.model.layers.\1.mlp.up_proj.weight"),
    (rf"^{_ENCODER}conv_layers\.([01])\.(weight|bias)$", r"audio_tower.conv{\1}.\2"),
    (rf"^{_ENCODER}transformer\.norm\.(weight|bias)$", r"audio_tower.layer_norm.\1"),
    (rf"^{_ENCODER}transformer\.layers\.(\d+)\.attention\.w([qkv])\.(weight|bias)$",
     r"audio_tower.layers.\1.self_attn.\2_proj.\3"),
    (rf"^{_ENCODER}transformer\.layers\.(\d+)\.attention\.wo\.(weight|bias)$", r"audio_tower.layers.\1.self_attn.out_proj.\2"),
    (rf"^{_ENCODER}transformer\.layers\.(\d+)\.attention_norm\.(weight|bias)$",
     r"audio_tower.layers.\1.self_attn_layer_norm.\2"),
    (rf"^{_ENCODER}transformer\.layers\.(\d+)\.feed_forward\.w([12])\.(weight|bias)$", r"audio_tower.layers.\1.fc\2.\3"),
    (rf"^{_ENCODER}transformer\.layers\.(\d+)\.ffn_norm\.(weight|bias)$", r"audio_tower.layers.\1.final_layer_norm.\2"),
    (r"^mm_whisper_embeddings\.audio_language_projection\.0\.weight$", r"multi_modal_projector.linear_1.weight"),
    (r"^mm_whisper_embeddings\.audio_language_projection\.2\.weight$", r"multi_modal_projector.linear_2.weight"),
)


def whisper_sinusoids(length: int, channels: int, max_timescale: float = 10000.0) -> torch.Tensor:
    """Whisper's fixed positional table [length, channels]: sines then cosines of geometric timescales."""
    increment = math.log(max_timescale) / (channels // 2 - 1)
    inv_timescales = torch.exp(-increment * torch.arange(channels // 2, dtype=torch.float32))
    scaled = torch.arange(length, dtype=torch.float32)[:, None] * inv_timescales[None, :]
    return torch.cat([scaled.sin(), scaled.cos()], dim=1)


def parse_params(raw: Any, *, source: str = MISTRAL_PARAMS_FILE) -> VoxtralConfig:
    raw = json_object(raw, "model config", source)
    r = ConfigReader(source, collect_missing=True)
    multimodal = r.block(raw, "multimodal", "")
    whisper = r.block(multimodal, "whisper_model_args", "multimodal.") if multimodal else {}
    w = "multimodal.whisper_model_args."
    encoder = r.block(whisper, "encoder_args", w) if whisper else {}
    audio = r.block(encoder, "audio_encoding_args", w + "encoder_args.") if encoder else {}
    downsample = r.block(whisper, "downsample_args", w) if whisper else {}
    e = w + "encoder_args."
    dim = r.value(raw, "dim", "", int)
    heads = r.value(raw, "n_heads", "", int)
    audio_dim = r.value(encoder, "dim", e, int)
    factor = r.value(downsample, "downsample_factor", w + "downsample_args.", int)
    config = VoxtralConfig(
        audio_hidden_size=audio_dim,
        audio_intermediate_size=r.value(encoder, "hidden_dim", e, int),
        audio_layers=r.value(encoder, "n_layers", e, int),
        audio_heads=r.value(encoder, "n_heads", e, int),
        num_mel_bins=r.value(audio, "num_mel_bins", e + "audio_encoding_args.", int),
        max_source_positions=r.value(encoder, "max_source_positions", e, int, 1500),
        downsample_factor=factor,
        vocab_size=r.value(raw, "vocab_size", "", int),
        hidden_size=dim,
        intermediate_size=r.value(raw, "hidden_dim", "", int),
        layers=r.value(raw, "n_layers", "", int),
        heads=heads,
        kv_heads=r.value(raw, "n_kv_heads", "", int, heads),
        head_dim=r.value(raw, "head_dim", "", int, dim // max(heads, 1)),
        rope_theta=r.value(raw, "rope_theta", "", float, 1e8),
        rms_norm_eps=r.value(raw, "norm_eps", "", float, 1e-5),
        max_position_embeddings=r.value(raw, "max_seq_len", "", int, 131072),
        tie_word_embeddings=r.value(raw, "tied_embeddings", "", bool, False),
        audio_token_id=MISTRAL_AUDIO_TOKEN_ID,
    )
    r.raise_missing()
    if config.audio_intermediate_size != factor * audio_dim:
        # transformers' port reads both the encoder MLP width and the projector input from one field.
        raise CheckpointError(f"The model config {source} has an encoder hidden_dim of "
                              f"{config.audio_intermediate_size}, not downsample_factor × dim = {factor * audio_dim}.")
    from faster_dia.models.voxtral.checkpoint import check_config

    check_config(config, source)
    return config


def _rope_rows(weight: torch.Tensor, heads: int, *, to_rotate_half: bool) -> torch.Tensor:
    """Regroup a q/k projection's rows between interleaved pairs (native) and rotate-half (transformers)."""
    rows, cols = weight.shape
    half = rows // heads // 2
    if to_rotate_half:
        return weight.view(heads, half, 2, cols).transpose(1, 2).reshape(rows, cols)
    return weight.view(heads, 2, half, cols).transpose(1, 2).reshape(rows, cols)


def to_transformers_names(native: dict[str, torch.Tensor], config: VoxtralConfig) -> dict[str, torch.Tensor]:
    """Native tensors → transformers names and conventions; unknown or duplicated names are errors."""
    out: dict[str, torch.Tensor] = {}
    unknown = []
    for name, tensor in native.items():
        for pattern, replacement in _NAMES:
            new, hits = re.subn(pattern, replacement, name)
            if hits:
                break
        else:
            unknown.append(name)
            continue
        new = new.replace("conv{0}", "conv1").replace("conv{1}", "conv2")
        if new in out:
            raise CheckpointError(f"The native weights hold {new} twice (again as {name}).")
        if new.startswith("language_model.") and new.endswith(("q_proj.weight", "k_proj.weight")):
            heads = config.heads if "q_proj" in new else config.kv_heads
            tensor = _rope_rows(tensor, heads, to_rotate_half=True)
        out[new] = tensor
    if unknown:
        from faster_dia.models.checkpoint_io import name_list

        raise CheckpointError(f"The native Voxtral weights hold tensors of no known role: {name_list(sorted(unknown))}.")
    out["audio_tower.embed_positions.weight"] = whisper_sinusoids(config.max_source_positions, config.audio_hidden_size)
    return out


def to_mistral_names(tensors: dict[str, torch.Tensor], config: VoxtralConfig) -> dict[str, torch.Tensor]:
    """transformers names → native ones (for writing test checkpoints); the inverse of
    :func:`to_transformers_names` for weights whose positions are the sinusoids."""
    inverse = {}
    for i in range(config.layers):
        p, n = f"language_model.model.layers.{i}.", f"layers.{i}."
        inverse.update({p + "input_layernorm.weight": n + "attention_norm.weight",
                        p + "post_attention_layernorm.weight": n + "ffn_norm.weight",
                        p + "mlp.gate_proj.weight": n + "feed_forward.w1.weight",
                        p + "mlp.down_proj.weight": n + "feed_forward.w2.weight",
                        p + "mlp.up_proj.weight": n + "feed_forward.w3.weight"})
        for x in "qkvo":
            inverse[p + f"self_attn.{x}_proj.weight"] = n + f"attention.w{x}.weight"
    for i in range(config.audio_layers):
        p, n = f"audio_tower.layers.{i}.", f"{_ENCODER}transformer.layers.{i}."
        for kind in ("weight", "bias"):
            for x in "qkv":
                inverse[p + f"self_attn.{x}_proj.{kind}"] = n + f"attention.w{x}.{kind}"
            inverse[p + f"self_attn.out_proj.{kind}"] = n + f"attention.wo.{kind}"
            inverse[p + f"self_attn_layer_norm.{kind}"] = n + f"attention_norm.{kind}"
            inverse[p + f"final_layer_norm.{kind}"] = n + f"ffn_norm.{kind}"
            inverse[p + f"fc1.{kind}"] = n + f"feed_forward.w1.{kind}"
            inverse[p + f"fc2.{kind}"] = n + f"feed_forward.w2.{kind}"
    for kind in ("weight", "bias"):
        inverse[f"audio_tower.conv1.{kind}"] = f"{_ENCODER}conv_layers.0.{kind}"
        inverse[f"audio_tower.conv2.{kind}"] = f"{_ENCODER}conv_layers.1.{kind}"
        inverse[f"audio_tower.layer_norm.{kind}"] = f"{_ENCODER}transformer.norm.{kind}"
    inverse.update({"language_model.lm_head.weight": "output.weight",
                    "language_model.model.norm.weight": "norm.weight",
                    "language_model.model.embed_tokens.weight": "mm_whisper_embeddings.tok_embeddings.weight",
                    "multi_modal_projector.linear_1.weight": "mm_whisper_embeddings.audio_language_projection.0.weight",
                    "multi_modal_projector.linear_2.weight": "mm_whisper_embeddings.audio_language_projection.2.weight"})
    native = {}
    for name, tensor in tensors.items():
        if name == "audio_tower.embed_positions.weight":
            continue
        if name.startswith("language_model.") and name.endswith(("q_proj.weight", "k_proj.weight")):
            heads = config.heads if "q_proj" in name else config.kv_heads
            tensor = _rope_rows(tensor, heads, to_rotate_half=False)
        native[inverse[name]] = tensor
    return native


def mistral_params_json(config: VoxtralConfig, *, sampling_rate: int = 16000, hop_length: int = 160,
                        window_size: int = 400) -> dict[str, Any]:
    """The params.json of ``config`` in Mistral's schema."""
    c = config
    return {
        "dim": c.hidden_size, "n_layers": c.layers, "head_dim": c.head_dim, "hidden_dim": c.intermediate_size,
        "n_heads": c.heads, "n_kv_heads": c.kv_heads, "rope_theta": c.rope_theta, "norm_eps": c.rms_norm_eps,
        "vocab_size": c.vocab_size, "max_seq_len": c.max_position_embeddings,
        "multimodal": {"whisper_model_args": {
            "encoder_args": {
                "audio_encoding_args": {"sampling_rate": sampling_rate, "num_mel_bins": c.num_mel_bins,
                                        "hop_length": hop_length, "window_size": window_size},
                "dim": c.audio_hidden_size, "n_layers": c.audio_layers, "head_dim": c.audio_hidden_size // c.audio_heads,
                "hidden_dim": c.audio_intermediate_size, "n_heads": c.audio_heads, "vocab_size": 51866,
                "max_source_positions": c.max_source_positions,
            },
            "downsample_args": {"downsample_factor": c.downsample_factor},
        }},
    }


def load_mistral(repo):
    """Read a native-layout checkpoint (``repo`` from :func:`faster_dia.hub.open_repo`)."""
    from faster_dia.models.voxtral.checkpoint import LoadedVoxtralCheckpoint, expected_shapes

    params_path = repo.get(MISTRAL_PARAMS_FILE)
    config = parse_params(read_json(params_path, "model config"), source=str(params_path))
    if not repo.has(MISTRAL_WEIGHTS_FILE):
        raise CheckpointError(f"{params_path.parent} has a Voxtral {MISTRAL_PARAMS_FILE} but no {MISTRAL_WEIGHTS_FILE}.")
    native = read_safetensors([repo.get(MISTRAL_WEIGHTS_FILE)])
    tensors = to_transformers_names(native, config)
    check_tensors(tensors, expected_shapes(config), f"native Voxtral weights in {MISTRAL_WEIGHTS_FILE}")
    return LoadedVoxtralCheckpoint(config, tensors, params_path.parent, "mistral")
