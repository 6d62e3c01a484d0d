"""Voxtral (``mistralai/Voxtral-Mini-3B-2507``, ``mistralai/Voxtral-Small-24B-2507``): audio in, text out. Importing
this package is cheap: the registry asks :func:`recognizes` before anything heavy is loaded."""

from __future__ import annotations

from typing import Any

#: Name of the family in the registry, the server's listings and logs.
FAMILY = "voxtral"


def recognizes(config: dict[str, Any]) -> bool:
    """Whether a parsed config is Voxtral's: transformers' ``VoxtralConfig`` (``model_type`` "voxtral") or
    Mistral's native params.json (a text model with a Whisper audio encoder under ``multimodal``)."""
    multimodal = config.get("multimodal")
    return config.get("model_type") == "voxtral" or (
        isinstance(multimodal, dict) and isinstance(multimodal.get("whisper_model_args"), dict))


def load(model, **options):
    from .chat import load as load_voxtral

    return load_voxtral(model, **options)
