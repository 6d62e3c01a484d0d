"""The public Python surface in one import: ``from faster_dia.api import load, Speech, ...``.

Each piece lives where it belongs (``loading`` for ``load``, ``speech`` for what every family shares, each
family's ``tts`` module for its class); this module gathers them.
"""

from __future__ import annotations

from .loading import (
    DEFAULT_MAX_BATCH_CPU,
    DEFAULT_MAX_BATCH_CUDA_LIMIT,
    DEFAULT_MODEL,
    default_max_batch,
    load,
    max_batch_for_memory,
    pick_device,
    pick_dtype,
)
from .models.dia1.tts import Dia1TextToSpeech, TextToSpeech
from .models.dia2.tts import Dia2TextToSpeech
from .speech import AsyncSpeechStream, Progress, Speech, SpeechModel, SpeechStream

__all__ = [
    "DEFAULT_MAX_BATCH_CPU",
    "DEFAULT_MAX_BATCH_CUDA_LIMIT",
    "DEFAULT_MODEL",
    "AsyncSpeechStream",
    "Dia1TextToSpeech",
    "Dia2TextToSpeech",
    "Progress",
    "Speech",
    "SpeechModel",
    "SpeechStream",
    "TextToSpeech",
    "default_max_batch",
    "load",
    "max_batch_for_memory",
    "pick_device",
    "pick_dtype",
]
