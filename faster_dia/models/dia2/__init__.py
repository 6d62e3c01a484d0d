"""Dia2 (``nari-labs/Dia2-1B``, ``nari-labs/Dia2-2B``). Importing this package is cheap: the registry asks
:func:`recognizes` before anything heavy is loaded."""

from __future__ import annotations

from typing import Any

#: Name of the family in the registry, the server's listings and logs.
FAMILY = "dia2"


def recognizes(config: dict[str, Any]) -> bool:
    """Whether a parsed ``config.json`` has the Dia2 schema: ``data``, ``model`` and ``runtime`` blocks.

    The Dia-1.6B nari config has ``version``/``model``/``data`` but no ``runtime``; the transformers DiaConfig
    has ``encoder_config``/``decoder_config``."""
    return all(isinstance(config.get(key), dict) for key in ("data", "model", "runtime"))


def load(model, **options):
    from .tts import load as load_dia2

    return load_dia2(model, **options)
