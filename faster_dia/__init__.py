"""faster-dia: fast inference and serving for the Nari Labs Dia dialogue text-to-speech models."""

from .api import (
    DEFAULT_MODEL,
    Dia2TextToSpeech,
    Progress,
    Speech,
    SpeechModel,
    SpeechStream,
    TextToSpeech,
    load,
)
from .errors import (
    CancelledError,
    CheckpointError,
    FasterDiaError,
    InvalidInputError,
    ModelNotFoundError,
    OverloadedError,
)

__version__ = "0.1.0"

__all__ = [
    "DEFAULT_MODEL",
    "Dia2TextToSpeech",
    "CancelledError",
    "CheckpointError",
    "FasterDiaError",
    "InvalidInputError",
    "ModelNotFoundError",
    "OverloadedError",
    "Progress",
    "Speech",
    "SpeechModel",
    "SpeechStream",
    "TextToSpeech",
    "load",
]
