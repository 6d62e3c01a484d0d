"""faster-dia: fast inference and serving for the Nari Labs Dia dialogue text-to-speech models.

Names are imported on first use, so ``import faster_dia`` is quick and errors that need no model (a missing
checkpoint, a bad option) are reported before torch is loaded.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

from .errors import (
    CancelledError,
    CheckpointError,
    ConflictError,
    FasterDiaError,
    InvalidInputError,
    ModelNotFoundError,
    NotFoundError,
    OverloadedError,
    PayloadTooLargeError,
)

__version__ = "0.1.0"

_LAZY = {
    "DEFAULT_MODEL": "faster_dia.loading",
    "load": "faster_dia.loading",
    "AsyncSpeechStream": "faster_dia.speech",
    "Progress": "faster_dia.speech",
    "Speech": "faster_dia.speech",
    "SpeechModel": "faster_dia.speech",
    "SpeechStream": "faster_dia.speech",
    "Dia1TextToSpeech": "faster_dia.models.dia1.tts",
    "TextToSpeech": "faster_dia.models.dia1.tts",
    "Dia2TextToSpeech": "faster_dia.models.dia2.tts",
    "Voice": "faster_dia.voices",
    "VoiceLibrary": "faster_dia.voices",
}

if TYPE_CHECKING:
    from .loading import DEFAULT_MODEL, load
    from .models.dia1.tts import Dia1TextToSpeech, TextToSpeech
    from .models.dia2.tts import Dia2TextToSpeech
    from .speech import AsyncSpeechStream, Progress, Speech, SpeechModel, SpeechStream
    from .voices import Voice, VoiceLibrary


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        value = getattr(importlib.import_module(_LAZY[name]), name)
        globals()[name] = value
        return value
    raise AttributeError(f"module 'faster_dia' has no attribute {name!r}")


__all__ = [
    "DEFAULT_MODEL",
    "AsyncSpeechStream",
    "CancelledError",
    "CheckpointError",
    "ConflictError",
    "Dia1TextToSpeech",
    "Dia2TextToSpeech",
    "FasterDiaError",
    "InvalidInputError",
    "ModelNotFoundError",
    "NotFoundError",
    "OverloadedError",
    "PayloadTooLargeError",
    "Progress",
    "Speech",
    "SpeechModel",
    "SpeechStream",
    "TextToSpeech",
    "Voice",
    "VoiceLibrary",
    "load",
]
