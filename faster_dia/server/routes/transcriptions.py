"""OpenAI's ``POST /v1/audio/transcriptions`` and ``POST /v1/audio/translations`` on the server's Whisper
model (``ServerState.asr``, loaded on the first request that needs it).

Multipart fields as OpenAI's: ``file``, ``model`` ("whisper-1" or the recognizer's own name), ``language``,
``prompt``, ``temperature`` (0–1), ``response_format`` (json, text, srt, verbose_json, vtt),
``timestamp_granularities[]`` (word and/or segment, with verbose_json) and ``stream`` (SSE events
``transcript.text.delta`` per decoded segment, then ``transcript.text.done``). Decoding the upload and
recognition run in worker threads, at most ``LazyRecognizer.MAX_CONCURRENT`` at a time.
"""

from __future__ import annotations

import functools
import json
import logging
import math
import time
from collections.abc import AsyncIterator, Iterator
from typing import Any

import anyio
from fastapi import APIRouter, File, Form, Request, UploadFile
from fastapi.responses import JSONResponse, PlainTextResponse, Response, StreamingResponse
from pydantic import BaseModel

from ...asr import LazyRecognizer, Segment, Transcript
from ...errors import InvalidInputError, ModelNotFoundError, PayloadTooLargeError
from ..app import state_of
from ..errors import error_body, request_id_of
from ..schemas import ErrorResponse

log = logging.getLogger("faster_dia.server")

router = APIRouter()

#: OpenAI's upload limit; the app's body limit for upload routes allows it plus the form around it.
MAX_UPLOAD_BYTES = 25 * 1024 * 1024
#: The model name OpenAI clients send; it means the server's recognizer.
OPENAI_MODEL = "whisper-1"
RESPONSE_FORMATS = ("json", "text", "srt", "verbose_json", "vtt")
GRANULARITIES = ("word", "segment")

_ERRORS = {status: {"model": ErrorResponse} for status in (400, 401, 404, 413, 500)}


# ---------------------------------------------------------------------- response bodies (for /docs)


class TranscriptionUsage(BaseModel):
    type: str = "duration"
    seconds: int


class Transcription(BaseModel):
    text: str
    usage: TranscriptionUsage | None = None


class TranscriptionWord(BaseModel):
    word: str
    start: float
    end: float


class TranscriptionSegment(BaseModel):
    id: int
    seek: int
    start: float
    end: float
    text: str
    tokens: list[int]
    temperature: float
    avg_logprob: float
    compression_ratio: float
    no_speech_prob: float


class TranscriptionVerbose(BaseModel):
    task: str
    language: str
    duration: float
    text: str
    segments: list[TranscriptionSegment] | None = None
    words: list[TranscriptionWord] | None = None
    usage: TranscriptionUsage | None = None


def _responses(json_model: type[BaseModel]) -> dict:
    return {**_ERRORS, 200: {"model": json_model, "content": {
        "text/plain": {}, "text/vtt": {}, "text/event-stream": {}}}}


# ---------------------------------------------------------------------- routes


@router.post("/v1/audio/transcriptions", responses=_responses(TranscriptionVerbose), response_class=Response)
async def create_transcription(
    request: Request,
    file: UploadFile | None = File(None, description="The audio: flac, mp3, mp4, m4a, ogg, wav, webm, ..."),
    model: str = Form(..., description=f"'{OPENAI_MODEL}' or the server's speech recognition model id"),
    language: str | None = Form(None, description="ISO-639-1 code of the spoken language; detected if omitted"),
    prompt: str | None = Form(None, description="Text in the style or vocabulary to expect"),
    response_format: str = Form("json", description=", ".join(RESPONSE_FORMATS)),
    temperature: float = Form(0.0, description="0 to 1; 0: beam search, sampling hotter only where it fails"),
    timestamp_granularities: list[str] | None = Form(
        None, alias="timestamp_granularities[]", description="word and/or segment (verbose_json only)"),
    stream: bool = Form(False, description="Send the text as server-sent events while it is decoded"),
) -> Response:
    granularities = list(timestamp_granularities or ()) + (await request.form()).getlist("timestamp_granularities")
    return await _run(request, "transcribe", file=file, model=model, language=language, prompt=prompt,
                      response_format=response_format, temperature=temperature,
                      granularities=[g for g in granularities if isinstance(g, str)], stream=stream)


@router.post("/v1/audio/translations", responses=_responses(TranscriptionVerbose), response_class=Response)
async def create_translation(
    request: Request,
    file: UploadFile | None = File(None, description="The audio: flac, mp3, mp4, m4a, ogg, wav, webm, ..."),
    model: str = Form(..., description=f"'{OPENAI_MODEL}' or the server's speech recognition model id"),
    prompt: str | None = Form(None, description="Text in English in the style or vocabulary to expect"),
    response_format: str = Form("json", description=", ".join(RESPONSE_FORMATS)),
    temperature: float = Form(0.0, description="0 to 1; 0: beam search, sampling hotter only where it fails"),
) -> Response:
    """English text of speech in any language Whisper knows (multilingual models only)."""
    return await _run(request, "translate", file=file, model=model, language=None, prompt=prompt,
                      response_format=response_format, temperature=temperature, granularities=[], stream=False)


# ---------------------------------------------------------------------- the request


async def _run(request: Request, task: str, *, file: UploadFile | None, model: str, language: str | None,
               prompt: str | None, response_format: str, temperature: float, granularities: list[str],
               stream: bool) -> Response:
    started = time.perf_counter()
    request_id = request_id_of(request)
    lazy: LazyRecognizer = state_of(request).asr
    if task == "transcribe" and model not in (OPENAI_MODEL, lazy.model_id):
        hosted = _hosted_voxtral(request, model)
        if hosted is not None:
            return await _run_voxtral(request, hosted, file=file, language=language, response_format=response_format,
                                      temperature=temperature, stream=stream, started=started)
    _check_model(model, lazy)
    fmt = _check_format(response_format, stream)
    if not 0.0 <= temperature <= 1.0:  # also false for NaN
        raise InvalidInputError(f"temperature must be from 0 to 1, got {temperature}.", param="temperature")
    granularities = _check_granularities(granularities, fmt)
    data = await _read_upload(file)
    recognizer = await lazy.get()
    options = dict(language=language, prompt=prompt, temperature=temperature, task=task,
                   word_timestamps="word" in granularities)

    if stream:
        segments = await anyio.to_thread.run_sync(
            functools.partial(recognizer.transcribe_segments, data, **options), limiter=lazy.limiter)
        return StreamingResponse(_sse_body(segments, lazy, request_id, recognizer.model_id, started),
                                 media_type="text/event-stream",
                                 headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"})

    transcript = await anyio.to_thread.run_sync(
        functools.partial(recognizer.transcribe, data, **options), limiter=lazy.limiter)
    _log_line(request_id, task, recognizer.model_id, transcript.duration, started)
    return _response(transcript, fmt, task, granularities)


def _check_model(model: str, lazy: LazyRecognizer) -> None:
    if model in (OPENAI_MODEL, lazy.model_id):
        return
    raise ModelNotFoundError(
        f"The model {model!r} does not exist here; speech recognition answers to {OPENAI_MODEL!r} and "
        f"{lazy.model_id!r}.", param="model", code="model_not_found")


def _check_format(response_format: str, stream: bool) -> str:
    fmt = response_format.strip().lower()
    if fmt not in RESPONSE_FORMATS:
        raise InvalidInputError(
            f"Unsupported response_format {response_format!r}; use one of {', '.join(RESPONSE_FORMATS)}.",
            param="response_format")
    if stream and fmt not in ("json", "text"):
        raise InvalidInputError(
            f"stream=true sends the text as server-sent events; it works with response_format json or text, "
            f"not {fmt}.", param="stream")
    return fmt


def _check_granularities(values: list[str], fmt: str) -> list[str]:
    chosen = []
    for value in values:
        name = value.strip().lower()
        if name not in GRANULARITIES:
            raise InvalidInputError(
                f"Unsupported timestamp granularity {value!r}; use word and/or segment.",
                param="timestamp_granularities[]")
        if name not in chosen:
            chosen.append(name)
    if chosen and fmt != "verbose_json":
        raise InvalidInputError("timestamp_granularities[] needs response_format verbose_json.",
                                param="timestamp_granularities[]")
    return chosen or ["segment"]


async def _read_upload(file: UploadFile | None) -> bytes:
    if file is None:
        raise InvalidInputError("No audio file: send the recording as the multipart field 'file'.", param="file")
    if file.size is None or file.size <= MAX_UPLOAD_BYTES:
        data = await file.read(MAX_UPLOAD_BYTES + 1)
        if len(data) <= MAX_UPLOAD_BYTES:
            return data
    raise PayloadTooLargeError(
        f"The audio file is larger than the limit of {MAX_UPLOAD_BYTES >> 20} MiB; upload a shorter or more "
        "compressed recording.", param="file", code="request_too_large")


def _log_line(request_id: str, task: str, model: str, audio_seconds: float, started: float,
              status: str = "ok") -> None:
    total = time.perf_counter() - started
    speed = f"{audio_seconds / total:.1f}x" if total > 0 and audio_seconds else "-"
    log.info("%s %s %s model=%s audio=%.2fs total=%.3fs realtime=%s", task, request_id, status, model,
             audio_seconds, total, speed)


# ---------------------------------------------------------------------- answers


def _usage(duration: float) -> TranscriptionUsage:
    # OpenAI bills whole seconds and reports them so.
    return TranscriptionUsage(seconds=math.ceil(duration))


def _response(transcript: Transcript, fmt: str, task: str, granularities: list[str]) -> Response:
    if fmt == "text":
        return PlainTextResponse(transcript.text + "\n")
    if fmt == "srt":
        return PlainTextResponse(srt(transcript.segments))
    if fmt == "vtt":
        return PlainTextResponse(vtt(transcript.segments), media_type="text/vtt")
    usage = _usage(transcript.duration) if task == "transcribe" else None
    if fmt == "json":
        body: BaseModel = Transcription(text=transcript.text, usage=usage)
    else:
        body = TranscriptionVerbose(
            task=task, language=language_name(transcript.language), duration=round(transcript.duration, 3),
            text=transcript.text, usage=usage,
            segments=[_segment(s) for s in transcript.segments] if "segment" in granularities else None,
            words=[TranscriptionWord(word=w.word, start=w.start, end=w.end) for w in transcript.words]
            if "word" in granularities else None,
        )
    return JSONResponse(body.model_dump(exclude_none=True))


def _segment(segment: Segment) -> TranscriptionSegment:
    return TranscriptionSegment(
        id=segment.id, seek=segment.seek, start=segment.start, end=segment.end, text=segment.text,
        tokens=segment.tokens, temperature=segment.temperature, avg_logprob=segment.avg_logprob,
        compression_ratio=segment.compression_ratio, no_speech_prob=segment.no_speech_prob,
    )


@functools.cache
def _language_names() -> dict[str, str]:
    try:
        from transformers.models.whisper.tokenization_whisper import LANGUAGES
    except ImportError:
        return {}
    return dict(LANGUAGES)


def language_name(code: str) -> str:
    """OpenAI's verbose_json names the language in words ("english"); the code where the name is unknown."""
    return _language_names().get(code, code)


def _timestamp(seconds: float, separator: str) -> str:
    millis = round(max(seconds, 0.0) * 1000)
    hours, millis = divmod(millis, 3_600_000)
    minutes, millis = divmod(millis, 60_000)
    secs, millis = divmod(millis, 1000)
    return f"{hours:02d}:{minutes:02d}:{secs:02d}{separator}{millis:03d}"


def srt(segments: list[Segment]) -> str:
    """SubRip captions, one per segment."""
    return "".join(
        f"{n}\n{_timestamp(s.start, ',')} --> {_timestamp(s.end, ',')}\n{s.text.strip()}\n\n"
        for n, s in enumerate(segments, start=1))


def vtt(segments: list[Segment]) -> str:
    """WebVTT captions, one per segment."""
    return "WEBVTT\n\n" + "".join(
        f"{_timestamp(s.start, '.')} --> {_timestamp(s.end, '.')}\n{s.text.strip()}\n\n" for s in segments)


# ---------------------------------------------------------------------- streaming


def _next_or_none(segments: Iterator[Segment]) -> Segment | None:
    return next(segments, None)


async def _sse_body(segments: Iterator[Segment], lazy: LazyRecognizer, request_id: str, model_id: str,
                    started: float) -> AsyncIterator[bytes]:
    """``transcript.text.delta`` as each segment is decoded, then ``transcript.text.done``; the deltas join
    into the final text."""

    def event(payload: dict[str, Any]) -> bytes:
        return f"data: {json.dumps(payload)}\n\n".encode()

    sent = ""
    raw = ""
    end = 0.0
    status = "cancelled"
    try:
        while True:
            segment = await anyio.to_thread.run_sync(_next_or_none, segments, limiter=lazy.limiter)
            if segment is None:
                break
            end = segment.end
            raw += segment.text
            text = raw.lstrip()
            if len(text) > len(sent):
                yield event({"type": "transcript.text.delta", "delta": text[len(sent):]})
                sent = text
        yield event({"type": "transcript.text.done", "text": raw.strip()})
        status = "ok"
    except Exception as exc:
        status = "error 500"
        log.error("request %s failed while streaming a transcript", request_id, exc_info=exc)
        failure = error_body(f"Transcription failed (request id {request_id}).", "server_error")
        yield event({"type": "transcript.text.error", **failure})
    finally:
        with anyio.CancelScope(shield=True):
            close = getattr(segments, "close", None)
            if close is not None:
                await anyio.to_thread.run_sync(close)
        _log_line(request_id, "transcribe", model_id, end, started, status)


# ---------------------------------------------------------------------- Voxtral's transcription mode


def _hosted_voxtral(request: Request, model: str) -> Any:
    """The hosted Voxtral model a transcription request names, or None (then the Whisper path answers)."""
    try:
        hosted = state_of(request).models.resolve(model)
    except ModelNotFoundError:
        return None
    return hosted if hosted.family == "voxtral" else None


async def _run_voxtral(request: Request, hosted: Any, *, file: UploadFile | None, language: str | None,
                       response_format: str, temperature: float, stream: bool, started: float) -> Response:
    """A Voxtral model id: its transcription mode (``[TRANSCRIBE]`` prompt, language optional), answered in the
    same formats as Whisper's; the whole audio is one segment (Voxtral gives no timestamps)."""
    request_id = request_id_of(request)
    fmt = _check_format(response_format, stream)
    if not 0.0 <= temperature <= 1.0:
        raise InvalidInputError(f"temperature must be from 0 to 1, got {temperature}.", param="temperature")
    data = await _read_upload(file)
    model = await hosted.get()
    prepared = await anyio.to_thread.run_sync(functools.partial(
        model.prepare_transcription, data, language=language or None, temperature=temperature))
    duration = prepared.audio_seconds
    hosted.acquire()
    if stream:
        return StreamingResponse(_voxtral_sse(model.astream_prepared(prepared), hosted, request_id, duration, started),
                                 media_type="text/event-stream",
                                 headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"})
    try:
        result = None
        async for item in model.astream_prepared(prepared):
            result = item
    finally:
        hosted.release()
    text = result.text.strip()
    _log_line(request_id, "transcribe", hosted.id, duration, started)
    segment = Segment(id=0, start=0.0, end=round(duration, 3), text=" " + text, words=[], avg_logprob=0.0,
                      no_speech_prob=0.0, temperature=temperature)
    transcript = Transcript(text=text, language=language or "", duration=duration, segments=[segment], words=[])
    return _response(transcript, fmt, "transcribe", ["segment"])


async def _voxtral_sse(items: AsyncIterator[Any], hosted: Any, request_id: str, duration: float,
                       started: float) -> AsyncIterator[bytes]:
    def event(payload: dict[str, Any]) -> bytes:
        return f"data: {json.dumps(payload)}\n\n".encode()

    status = "cancelled"
    sent = ""
    try:
        async for item in items:
            if isinstance(item, str):
                text = (sent + item).lstrip()
                if len(text) > len(sent):
                    yield event({"type": "transcript.text.delta", "delta": text[len(sent):]})
                    sent = text
                continue
            yield event({"type": "transcript.text.done", "text": item.text.strip()})
        status = "ok"
    except Exception as exc:
        status = "error 500"
        log.error("request %s failed while streaming a transcript", request_id, exc_info=exc)
        yield event({"type": "transcript.text.error",
                     **error_body(f"Transcription failed (request id {request_id}).", "server_error")})
    finally:
        hosted.release()
        await items.aclose()
        _log_line(request_id, "transcribe", hosted.id, duration, started, status)
