"""Request and response bodies of the HTTP API, as pydantic models.

The speech request is OpenAI's ``CreateSpeechRequest`` plus Dia's own sampling fields (which the openai
client sends through ``extra_body``) and the names hosted Dia APIs use (``text``, ``speed_factor``,
``cfg_filter_top_k``). Unknown fields are ignored rather than rejected: clients routinely send extras.
Types are strict (``seed: true`` or ``stream: "yes"`` are errors, not 1 and True); each family checks the
ranges of its sampling fields and ignores the fields that do not apply to it.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, StrictBool, StrictInt, field_validator, model_validator

from ..audio import MAX_SPEED, MIN_SPEED
from ..errors import InvalidInputError
from ..speech import MAX_SEED
from .errors import reject_surrogates

#: OpenAI's limit on ``input``.
MAX_INPUT_CHARS = 4096
#: Same limit as OpenAI puts on ``instructions``.
MAX_INSTRUCTIONS_CHARS = 4096

Number = Annotated[float, Field(strict=True)] | StrictInt


class VoiceRef(BaseModel):
    """OpenAI's custom-voice form of ``voice``: ``{"id": "voice_..."}``."""

    model_config = ConfigDict(extra="ignore")

    id: str


class SpeechRequest(BaseModel):
    """Body of ``POST /v1/audio/speech``."""

    model_config = ConfigDict(extra="ignore")

    model: str | None = Field(None, description="a model id or alias from /v1/models; tts-1, tts-1-hd and "
                                                "gpt-4o-mini-tts pick the default model")
    input: str = Field(description=f"the script, at most {MAX_INPUT_CHARS} characters (alias: text)")
    voice: str | VoiceRef | None = Field(
        None, description="a stored voice (name or id, see /v1/voices) or a built-in name (alloy, echo, ...: a "
                          "fixed voice of the model, chosen by seed)")
    voices: dict[str, str | VoiceRef] | None = Field(
        None, description='a voice per speaker, e.g. {"S1": "alice", "S2": "bob"} (instead of voice)')
    instructions: str | None = Field(None, description="accepted and ignored: Dia takes no style prompt")
    response_format: str = Field("mp3", description="mp3, opus, aac, flac, wav or pcm (24 kHz s16le)")
    speed: Number | None = Field(None, description=f"{MIN_SPEED} to {MAX_SPEED}, default 1.0 (alias: speed_factor)")
    stream_format: Literal["audio", "sse"] = Field(
        "audio", description="sse: server-sent events with base64 audio deltas (and word events for Dia2)")
    stream: StrictBool = Field(True, description="false: send the whole file at the end, with complete headers")

    seed: StrictInt | None = Field(None, ge=-1, le=MAX_SEED,
                                   description="omit (or -1) for a random seed; the one used is in X-Seed")
    temperature: Number | None = Field(None, description="0–5, 0 greedy; Dia2: text and audio")
    top_p: Number | None = Field(None, description="(0, 1]; Dia-1.6B only, ignored for Dia2")
    top_k: StrictInt | None = Field(None, description="1–65536; Dia-1.6B: guidance filter (alias: "
                                                      "cfg_filter_top_k); Dia2: top-k of text and audio")
    cfg_filter_top_k: StrictInt | None = Field(None, description="Dia-1.6B: alias of top_k; Dia2: the "
                                                                 "guidance filter size (cfg_filter_k)")
    cfg_scale: Number | None = Field(None, description="classifier-free guidance, 0–30 (Dia2: above 0)")
    max_new_tokens: StrictInt | None = Field(
        None, description="Dia-1.6B: decoder steps (86 ≈ 1 s, at most 3071); Dia2: frames (12.5 = 1 s, at most 1500)")

    @model_validator(mode="before")
    @classmethod
    def _aliases(cls, data: Any) -> Any:
        """``text`` stands for ``input`` and ``speed_factor`` for ``speed`` (the names hosted Dia APIs use)."""
        if isinstance(data, dict):
            data = dict(data)
            if data.get("input") is None and data.get("text") is not None:
                data["input"] = data["text"]
            if data.get("speed") is None and data.get("speed_factor") is not None:
                data["speed"] = data["speed_factor"]
            if "input" in data and data["input"] is None:
                del data["input"]
        return data

    @field_validator("model", "input", "instructions", "response_format")
    @classmethod
    def _valid_text(cls, value: str | None, info) -> str | None:
        return None if value is None else reject_surrogates(value, info.field_name)

    @field_validator("voice")
    @classmethod
    def _valid_voice(cls, value: str | VoiceRef | None) -> str | VoiceRef | None:
        if value is not None:
            reject_surrogates(value.id if isinstance(value, VoiceRef) else value, "voice")
        return value

    @field_validator("voices")
    @classmethod
    def _valid_voices(cls, value: dict[str, str | VoiceRef] | None) -> dict[str, str | VoiceRef] | None:
        for key, voice in (value or {}).items():
            reject_surrogates(key, "voices")
            reject_surrogates(voice.id if isinstance(voice, VoiceRef) else voice, "voices")
        return value

    @field_validator("input", "instructions")
    @classmethod
    def _short_enough(cls, value: str | None, info) -> str | None:
        limit = MAX_INPUT_CHARS if info.field_name == "input" else MAX_INSTRUCTIONS_CHARS
        if value is not None and len(value) > limit:
            raise ValueError(f"{info.field_name} is {len(value)} characters long; the limit is {limit}")
        return value

    def check_consistent(self) -> None:
        if self.stream_format == "sse" and not self.stream:
            raise InvalidInputError(
                "stream_format 'sse' sends events while the audio is generated; it cannot be combined with "
                "stream: false. Drop one of them.", param="stream_format")

    def speed_value(self) -> float:
        return 1.0 if self.speed is None else float(self.speed)

    def voice_id(self) -> str | None:
        return self.voice.id if isinstance(self.voice, VoiceRef) else self.voice

    def voice_fields(self) -> dict[str, Any]:
        """``voice`` / ``voices`` as the models take them (names or ids)."""
        fields: dict[str, Any] = {}
        if self.voice is not None:
            fields["voice"] = self.voice_id()
        if self.voices is not None:
            fields["voices"] = {k: v.id if isinstance(v, VoiceRef) else v for k, v in self.voices.items()}
        return fields

    def sampling_fields(self) -> dict[str, Any]:
        """The sampling fields the client set (the model's family maps them onto its own options)."""
        fields = {name: getattr(self, name) for name in
                  ("temperature", "top_p", "top_k", "cfg_filter_top_k", "cfg_scale", "max_new_tokens")}
        if self.seed is not None and self.seed != -1:
            fields["seed"] = self.seed
        return {name: value for name, value in fields.items() if value is not None}


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
    family: str | None = None
    sample_rate: int | None = None
    state: str | None = None


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


class ModelHealth(BaseModel):
    id: str
    aliases: list[str]
    family: str
    state: Literal["unloaded", "loading", "loaded", "failed"]
    device: str | None = None
    sample_rate: int | None = None
    waiting: int = 0
    running: int = 0
    max_batch: int | None = None
    quantize: str | None = None  # the quantized weight mode it was loaded with (faster_dia.load(quantize=...))
    weight_bytes: int | None = None  # its network's weights as held in memory (quantized ones as stored)


class Health(BaseModel):
    status: Literal["ok"] = "ok"
    model: str  # the default model's id
    device: str | None
    sample_rate: int | None
    in_flight: int  # speech requests in progress, all models
    max_queue: int | None
    models: list[ModelHealth]


class WordTimestamp(BaseModel):
    word: str
    start: float


class SpeechWithTimestamps(BaseModel):
    """``POST /v1/audio/speech/with-timestamps``: the whole file and the words' start times."""

    audio_base64: str
    content_type: str
    format: str
    sample_rate: int
    duration: float
    seed: int
    words: list[WordTimestamp]
