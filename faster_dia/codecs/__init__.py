"""Audio codecs (DAC for Dia-1.6B, Mimi for Dia2), loaded through transformers."""

from __future__ import annotations

import os

import torch

from ..errors import CheckpointError
from ..hub import open_repo


def load_transformers_codec(model_class, codec: str | os.PathLike, *, revision: str | None, device, label: str):
    """A transformers-format codec (config.json + model.safetensors) from a Hub id or directory, in float32:
    codecs are small, and reduced precision audibly colours the waveform. Returns (model, repo name)."""
    from transformers.utils import logging as hf_logging

    repo = open_repo(codec, revision=revision, what="codec")
    config_path = repo.get("config.json")
    repo.get("model.safetensors")
    bars = hf_logging.is_progress_bar_enabled()
    hf_logging.disable_progress_bar()  # loading a small codec needs no bar of its own
    try:
        model = model_class.from_pretrained(config_path.parent)
    except Exception as exc:  # transformers raises many kinds; the user needs one sentence
        raise CheckpointError(f"Could not load the {label} codec from {repo.name}: {exc}") from exc
    finally:
        if bars:
            hf_logging.enable_progress_bar()
    return model.to(device=device, dtype=torch.float32), repo.name
