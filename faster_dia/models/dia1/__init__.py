"""Dia-1.6B (``nari-labs/Dia-1.6B``, ``nari-labs/Dia-1.6B-0626``). Importing this package is cheap: the
registry asks :func:`recognizes` before anything heavy is loaded."""

from __future__ import annotations

from typing import Any

#: Name of the family in the registry, the server's listings and logs.
FAMILY = "dia1"


def recognizes(config: dict[str, Any]) -> bool:
    """Whether a parsed ``config.json`` is a Dia-1.6B one: the nari v0.1 schema (``model`` + ``data``
    blocks with an encoder and decoder) or transformers' ``DiaConfig`` (``model_type: dia``)."""
    if config.get("model_type") == "dia" or "DiaForConditionalGeneration" in (config.get("architectures") or ()):
        return True
    model = config.get("model")
    return isinstance(model, dict) and isinstance(config.get("data"), dict) and "runtime" not in config \
        and "encoder" in model and "decoder" in model


def load(model, **options):
    from .tts import load as load_dia1

    return load_dia1(model, **options)
