"""Request and response bodies of the HTTP API, as pydantic models.

The speech request is OpenAI's ``CreateSpeechRequest`` plus Dia's own sampling fields (which the openai
client sends through ``extra_body``) and the names hosted Dia APIs use (``text``, ``speed_factor``,
``cfg_filter_top_k``). Unknown fields are ignored rather than rejected: clients routinely send extras.
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from ..audio import MAX_SPEED, MIN_SPEED
from ..errors import InvalidInputError

#: OpenAI's limit on ``input``; the model's own limit (1024 script bytes) is checked by the library.
MAX_INPUT_CHARS = 4096
#: Same limit as OpenAI puts on ``instructions``.
MAX_INSTRUCTIONS_CHARS = 4096


class VoiceRef(BaseModel):
    """OpenAI's custom-voice form of ``voice``: ``{"id": "voice_..."}``."""

    model_config = ConfigDict(extra="ignore")

    id: str


class SpeechRequest(BaseModel):
    """Body of ``POST /v1/audio/speech``."""

    model_config = ConfigDict(extra="ignore")

    model: str | None = Field(None, description="tts-1, tts-1-hd, dia or the loaded model's id")
    input: str | None = Field(None, description=f"the script, at most {MAX_INPUT_CHARS} characters")
    text: str | None = Field(None, description="alias of input")
    voice: str | VoiceRef | None = Field(None, description="accepted; every voice currently sounds alike")
    instructions: str | None = Field(None, description="accepted and ignored: Dia takes no style prompt")
    response_format: str = Field("mp3", description="mp3, opus, aac, flac, wav or pcm (24 kHz s16le)")
    speed: float | None = Field(None, description=f"{MIN_SPEED} to {MAX_SPEED}, default 1.0")
    speed_factor: float | None = Field(None, description="alias of speed")
    stream_format: Literal["audio", "sse"] = "audio"
    stream: bool = Field(True, description="false: send the whole file at the end, with complete headers")

    seed: int | None = Field(None, description="omit (or -1) for a random seed; the one used is in X-Seed")
    temperature: float | None = Field(None, ge=0.0)
    top_p: float | None = Field(None, gt=0.0, le=1.0)
    top_k: int | None = Field(None, ge=1)
    cfg_filter_top_k: int | None = Field(None, ge=1, description="alias of top_k")
    cfg_scale: float | None = Field(None, ge=0.0)
    max_new_tokens: int | None = Field(None, ge=1, description="decoder steps allowed (86 = 1 s of audio)")

    def script(self) -> str:
        """The text to speak, from ``input`` or its alias ``text``."""
        value = self.input if self.input is not None else self.text
        if value is None:
            raise InvalidInputError("The request has no input: send the text to speak in 'input'.", param="input")
        if len(value) > MAX_INPUT_CHARS:
            raise InvalidInputError(
                f"input is {len(value)} characters long; the limit is {MAX_INPUT_CHARS}.", param="input"
            )
        if self.instructions is not None and len(self.instructions) > MAX_INSTRUCTIONS_CHARS:
            raise InvalidInputError(
                f"instructions is {len(self.instructions)} characters long; the limit is {MAX_INSTRUCTIONS_CHARS}.",
                param="instructions",
            )
        return value

    def speed_value(self) -> float:
        return self.speed if self.speed is not None else (self.speed_factor if self.speed_factor is not None else 1.0)

    def voice_id(self) -> str | None:
        return self.voice.id if isinstance(self.voice, VoiceRef) else self.voice

    def generation_kwargs(self) -> dict[str, Any]:
        """Keyword arguments for ``TextToSpeech.stream``: only what the client set, so the library's
        defaults apply to the rest."""
        kwargs: dict[str, Any] = {}
        if self.seed is not None and self.seed != -1:
            kwargs["seed"] = self.seed
        top_k = self.top_k if self.top_k is not None else self.cfg_filter_top_k
        if top_k is not None:
            kwargs["top_k"] = top_k
        for name in ("temperature", "top_p", "cfg_scale", "max_new_tokens"):
            value = getattr(self, name)
            if value is not None:
                kwargs[name] = value
        return kwargs


class ErrorDetail(BaseModel):
    message: str
    type: str
    param: str | None = None
    code: str | None = None


class ErrorResponse(BaseModel):
    error: ErrorDetail


class ModelCard(BaseModel):
    id: str
    object: Literal["model"] = "model"
    created: int
    owned_by: str = "faster-dia"


class ModelList(BaseModel):
    object: Literal["list"] = "list"
    data: list[ModelCard]


class AudioModel(BaseModel):
    id: str


class AudioModelList(BaseModel):
    models: list[AudioModel]


class Voice(BaseModel):
    id: str
    name: str


class VoiceList(BaseModel):
    voices: list[Voice]


class Health(BaseModel):
    status: Literal["ok"] = "ok"
    model: str
    device: str
    sample_rate: int
    in_flight: int
    max_queue: int
