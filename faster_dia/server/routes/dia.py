"""``POST /v1/dia``: Dia in the shape of the hosted Dia APIs (Segmind's page; Replicate's and DeepInfra's take the
same knobs): a JSON or multipart body with ``text``, ``seed``, ``top_p``, ``cfg_scale``, ``temperature``,
``input_audio`` (a voice to clone: an uploaded file, or a URL), ``speed_factor``, ``max_new_tokens`` and
``cfg_filter_top_k``, answered with the audio file itself.

Errors have the OpenAI body the rest of the server uses (Segmind documents status codes only): 400 for a value
out of its range (naming the field), 401 for a missing or wrong key (``x-api-key`` or ``Authorization:
Bearer``), 406 when the key's daily quota is spent (``--quota``).
"""

from __future__ import annotations

import logging
import math
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from fastapi import APIRouter, Request
from fastapi.responses import Response
from starlette.datastructures import UploadFile

from ...audio import change_speed
from ...errors import FasterDiaError, InvalidInputError
from ...speech import MAX_SEED, in_output_pool
from ..app import state_of
from ..audio_settings import encode_output, output_spec
from ..errors import reject_surrogates, request_id_of
from ..hosted import voice_options
from ..schemas import MAX_INPUT_CHARS, ErrorResponse

log = logging.getLogger("faster_dia.server")

router = APIRouter()

#: field → (low, high, integer?), the hosted page's ranges.
RANGES: dict[str, tuple[float, float, bool]] = {
    "top_p": (0.1, 1.0, False),
    "cfg_scale": (1.0, 5.0, False),
    "temperature": (0.1, 2.0, False),
    "speed_factor": (0.5, 1.5, False),
    "max_new_tokens": (500, 4096, True),
    "cfg_filter_top_k": (10, 100, True),
}
#: The hosted page's defaults where it states one (Dia-1.6B models; Dia2 keeps its own).
PAGE_DEFAULTS = {"temperature": 1.3, "top_p": 0.95}
#: Dia-1.6B decoder steps per second of audio: ``max_new_tokens`` is counted in them, and becomes Dia2 frames.
DIA1_STEPS_PER_SECOND = 86
DIA2_FRAMES_PER_SECOND = 12.5
DIA2_MAX_FRAMES = 1500


class QuotaExceededError(FasterDiaError):
    """The caller's daily quota is spent (Segmind's 406, "Not enough credits")."""

    error_type = "invalid_request_error"
    http_status = 406


@dataclass
class DiaRequest:
    text: str
    seed: int | None
    sampling: dict[str, Any]  # the OpenAI-shaped sampling fields the client set
    speed: float
    output_format: str
    model: str | None
    input_audio: Any  # UploadFile, a URL / data URI / voice name, or None
    transcript: str | None

    @classmethod
    def parse(cls, fields: dict[str, Any], *, form: bool) -> DiaRequest:
        text = fields.get("text")
        if not isinstance(text, str) or not text.strip():
            raise InvalidInputError("text is required: the script, e.g. '[S1] Hello. [S2] Hi!'.", param="text")
        reject_surrogates(text, "text")
        if len(text) > MAX_INPUT_CHARS:
            raise InvalidInputError(f"text is {len(text)} characters long; the limit is {MAX_INPUT_CHARS}.",
                                    param="text")
        sampling = {}
        for name, (low, high, integer) in RANGES.items():
            value = _value(fields.get(name), name, integer=integer, form=form)
            if value is None:
                continue
            if not low <= value <= high:
                raise InvalidInputError(f"{name} must be between {low:g} and {high:g}, got {value:g}.", param=name)
            sampling[name] = value
        seed = _value(fields.get("seed"), "seed", integer=True, form=form)
        if seed is not None and not -1 <= seed <= MAX_SEED:
            raise InvalidInputError(f"seed must be between 0 and {MAX_SEED} (blank or -1: random).", param="seed")
        speed = sampling.pop("speed_factor", 1.0)
        output_format = fields.get("output_format") or "wav"
        model = fields.get("model") or None
        transcript = fields.get("speaker_transcript") or None
        for name, value in (("output_format", output_format), ("model", model), ("speaker_transcript", transcript)):
            if value is not None and not isinstance(value, str):
                raise InvalidInputError(f"{name} must be text.", param=name)
            if value is not None:
                reject_surrogates(value, name)
        return cls(text=text, seed=None if seed in (None, -1) else int(seed), sampling=sampling, speed=float(speed),
                   output_format=output_format, model=model, input_audio=fields.get("input_audio") or None,
                   transcript=transcript)

    def options(self, tts: Any, default_seed: int | None) -> dict[str, Any]:
        fields = dict(self.sampling)
        dia2 = tts.family == "dia2"
        if not dia2:
            fields = {**PAGE_DEFAULTS, **fields}
        steps = fields.pop("max_new_tokens", None)
        if steps is not None:
            if dia2:
                fields["max_new_tokens"] = min(math.ceil(steps * DIA2_FRAMES_PER_SECOND / DIA1_STEPS_PER_SECOND),
                                               DIA2_MAX_FRAMES)
            elif steps < tts.config.audio_length - 1:
                fields["max_new_tokens"] = int(steps)
            # else: more than the model's context holds, which is what it does without a limit
        seed = self.seed if self.seed is not None else default_seed
        if seed is not None:
            fields["seed"] = seed
        return tts.openai_options(fields)


def _value(value: Any, name: str, *, integer: bool, form: bool) -> float | int | None:
    """A number from JSON (a number) or a form (its text); blank is absent."""
    if value is None or (isinstance(value, str) and not value.strip()):
        return None
    if form and isinstance(value, str):
        try:
            value = int(value) if integer else float(value)
        except ValueError:
            kind = "an integer" if integer else "a number"
            raise InvalidInputError(f"{name} must be {kind}, got {value!r}.", param=name) from None
    if isinstance(value, bool) or not isinstance(value, (int, float)) or (integer and not isinstance(value, int)):
        kind = "an integer" if integer else "a number"
        raise InvalidInputError(f"{name} must be {kind}, got {value!r}.", param=name)
    if not math.isfinite(value):
        raise InvalidInputError(f"{name} must be a finite number.", param=name)
    return value


async def _fields(request: Request) -> tuple[dict[str, Any], bool]:
    content_type = request.headers.get("content-type", "").split(";")[0].strip().lower()
    if content_type in ("multipart/form-data", "application/x-www-form-urlencoded"):
        form = await request.form(max_files=1, max_fields=32)
        return dict(form.items()), True
    try:
        body = await request.json()
    except (ValueError, UnicodeDecodeError):
        raise InvalidInputError("The request body is not valid JSON (or send multipart/form-data).") from None
    if not isinstance(body, dict):
        raise InvalidInputError("The request body must be a JSON object.")
    return body, False


@router.post("/v1/dia", response_class=Response, openapi_extra={"requestBody": {"required": True, "content": {
                 "application/json": {"schema": {"type": "object", "required": ["text"]}},
                 "multipart/form-data": {"schema": {"type": "object", "required": ["text"], "properties": {
                     "input_audio": {"type": "string", "format": "binary"}}}}}}},
             responses={**{s: {"model": ErrorResponse} for s in (400, 401, 404, 406, 413, 503, 500)},
                        200: {"content": {"audio/wav": {}}, "description": "the audio file"}})
async def dia(request: Request) -> Response:
    """Speech from a dialogue script, with an optional voice to clone (``input_audio``: a multipart file or a
    URL); the audio comes back as a file (``output_format``, default wav)."""
    state = state_of(request)
    hosted = state.hosted
    started = time.perf_counter()
    fields, form = await _fields(request)
    body = DiaRequest.parse(fields, form=form)
    hosted_model = state.models.resolve(body.model or ("dia" if "dia" in state.models.names() else None))
    tts = await hosted_model.get()
    spec = output_spec(body.output_format, None, tts.sample_rate, format_param="output_format")
    options = body.options(tts, state.default_seed)
    type(tts).check_options(options)
    references: list[Any] = []
    hosted_model.acquire()
    try:
        audio = body.input_audio
        if isinstance(audio, UploadFile):
            references.append(await hosted.keep_clip(await audio.read(), "input_audio"))
        elif audio is not None:
            references.append(await hosted.audio_reference(audio, "input_audio", state.voices))
        options.update(voice_options(tts, references))
        if body.transcript is not None and references and isinstance(references[0], Path):
            options.update({"prefix_transcript_1": body.transcript} if tts.family == "dia2"
                           else _dia1_prompt(options, body.transcript))
        # Counted once the request is known to be good, just before the work.
        key = request.headers.get("authorization", "").partition(" ")[2].strip() or None
        if not await hosted.take_quota(key):
            raise QuotaExceededError("Not enough credits: the daily quota of this API key is used up.",
                                     code="insufficient_credits")
        speech = await tts.agenerate(body.text, **options)
        pcm = await in_output_pool(change_speed, speech.audio, speech.sample_rate, body.speed)
        data = await in_output_pool(encode_output, pcm, speech.sample_rate, spec)
    finally:
        hosted_model.release()
        hosted.discard(references)
    log.info("dia %s ok model=%s audio=%.2fs total=%.3fs", request_id_of(request), hosted_model.id,
             len(pcm) / speech.sample_rate, time.perf_counter() - started)
    return Response(data, media_type=spec.content_type, headers={"X-Seed": str(speech.seed)})


def _dia1_prompt(options: dict[str, Any], transcript: str) -> dict[str, Any]:
    """A Dia-1.6B clip given with its transcript: the clip as the audio prompt, so that the transcript goes with
    it (a clip in ``voices`` is transcribed instead)."""
    clip = options.pop("voices")["S1"]
    return {"audio_prompt": clip, "audio_prompt_transcript": transcript}
