"""The FastAPI application: OpenAI's ``/v1/audio/speech`` plus the discovery routes clients probe."""

from __future__ import annotations

import base64
import json
import logging
import time
from collections.abc import AsyncIterator, Iterable
from dataclasses import dataclass, field
from functools import partial

import anyio
from fastapi import FastAPI, Request
from fastapi.responses import Response, StreamingResponse

from .. import __version__
from ..api import TextToSpeech
from ..audio import CONTENT_TYPES, PCM_SAMPLE_RATE, check_speed, normalize_format
from ..errors import FasterDiaError, ModelNotFoundError
from .errors import error_body, install_error_handlers, request_id_of
from .jobs import Admission, Output, SpeechJob
from .middleware import ApiKeyAuth, BodyLimit, RequestContext, StreamAborted
from .schemas import (
    AudioModel,
    AudioModelList,
    ErrorResponse,
    Health,
    ModelCard,
    ModelList,
    SpeechRequest,
    Voice,
    VoiceList,
)

log = logging.getLogger("faster_dia.server")

#: Names OpenAI clients send by default; all of them select the one loaded model.
MODEL_ALIASES = ("dia", "tts-1", "tts-1-hd", "gpt-4o-mini-tts")
#: The voice list clients get. Every voice name is accepted and sounds alike for now (the seed decides).
VOICES = (Voice(id="dia", name="Dia (the voice follows the seed; pin it with seed)"),)
DEFAULT_MAX_BODY_BYTES = 1 << 20

_ERRORS = {status: {"model": ErrorResponse} for status in (400, 401, 404, 413, 500, 503)}


@dataclass
class ServerState:
    tts: TextToSpeech
    admission: Admission
    chunk_frames: int
    default_seed: int | None = None
    created: int = field(default_factory=lambda: int(time.time()))

    @property
    def model_ids(self) -> list[str]:
        return list(dict.fromkeys([self.tts.model_id, *MODEL_ALIASES]))

    def resolve_model(self, name: str | None) -> str:
        if name is None or name in self.model_ids:
            return self.tts.model_id
        raise ModelNotFoundError(
            f"The model '{name}' does not exist on this server; use one of: {', '.join(self.model_ids)}.",
            param="model", code="model_not_found",
        )


def create_app(
    tts: TextToSpeech,
    *,
    api_keys: Iterable[str] = (),
    max_queue: int = 8,
    max_concurrent: int | None = None,
    chunk_frames: int = 32,
    default_seed: int | None = None,
    max_body_bytes: int = DEFAULT_MAX_BODY_BYTES,
) -> FastAPI:
    """An OpenAI-compatible speech server around a loaded model.

    ``max_queue`` requests may wait while ``max_concurrent`` generate; more get 503. By default as many
    generate at once as the model decodes in one batch (one where it runs calls one after another). ``chunk_frames`` is the audio carried per streamed chunk (86 frames = 1 s).
    ``default_seed`` is used by requests that send no seed, so clients that cannot send one (Open WebUI,
    SillyTavern) still get the same voice on every request.
    """
    if max_concurrent is None:
        max_concurrent = int(getattr(getattr(tts, "engine", None), "max_batch", 1))
    state = ServerState(tts=tts, admission=Admission(max_queue=max_queue, max_concurrent=max_concurrent),
                        chunk_frames=chunk_frames, default_seed=default_seed)
    app = FastAPI(title="faster-dia", version=__version__,
                  description="OpenAI-compatible text-to-speech with the Nari Labs Dia models.")
    app.state.server = state
    install_error_handlers(app)
    # Added innermost first: RequestContext wraps everything, so 401/413 answers carry a request id too.
    app.add_middleware(BodyLimit, max_bytes=max_body_bytes)
    app.add_middleware(ApiKeyAuth, keys=list(api_keys))
    app.add_middleware(RequestContext)

    @app.get("/health", response_model=Health)
    async def health() -> Health:
        return Health(model=tts.model_id, device=str(tts.device), sample_rate=tts.sample_rate,
                      in_flight=state.admission.in_flight, max_queue=state.admission.max_queue)

    @app.get("/v1/models", response_model=ModelList)
    async def list_models() -> ModelList:
        return ModelList(data=[ModelCard(id=i, created=state.created) for i in state.model_ids])

    @app.get("/v1/models/{model_id:path}", response_model=ModelCard, responses=_ERRORS)
    async def get_model(model_id: str) -> ModelCard:
        state.resolve_model(model_id)
        return ModelCard(id=model_id, created=state.created)

    @app.get("/v1/audio/models", response_model=AudioModelList)
    async def list_audio_models() -> AudioModelList:
        return AudioModelList(models=[AudioModel(id=i) for i in state.model_ids])

    @app.get("/v1/audio/voices", response_model=VoiceList)
    async def list_voices() -> VoiceList:
        return VoiceList(voices=list(VOICES))

    @app.post(
        "/v1/audio/speech",
        responses={**_ERRORS, 200: {"content": {"audio/mpeg": {}, "text/event-stream": {}},
                                    "description": "audio, streamed while it is generated"}},
        response_class=Response,
    )
    async def create_speech(body: SpeechRequest, request: Request) -> Response:
        return await _speak(state, body, request)

    return app


# ---------------------------------------------------------------------- the speech route


@dataclass
class _RequestLog:
    """Collects the numbers of the one log line each speech request gets."""

    request_id: str
    model: str
    input_bytes: int
    started: float = field(default_factory=time.perf_counter)
    first_byte: float | None = None

    def line(self, status: str, audio_seconds: float = 0.0) -> None:
        total = time.perf_counter() - self.started
        ttfb = f"{self.first_byte - self.started:.3f}s" if self.first_byte is not None else "-"
        speed = f"{audio_seconds / total:.2f}x" if total > 0 and audio_seconds else "-"
        log.info("speech %s %s model=%s input_bytes=%d audio=%.2fs ttfb=%s total=%.3fs realtime=%s",
                 self.request_id, status, self.model, self.input_bytes, audio_seconds, ttfb, total, speed)


async def _speak(state: ServerState, body: SpeechRequest, request: Request) -> Response:
    request_id = request_id_of(request)
    record = _RequestLog(request_id, body.model or "default", len((body.input or body.text or "").encode()))
    try:
        state.resolve_model(body.model)
        script = body.script()
        fmt = normalize_format(body.response_format)
        speed = check_speed(body.speed_value())
        state.admission.admit()
    except FasterDiaError as exc:
        record.line(f"error {exc.http_status}")
        raise
    job: SpeechJob | None = None
    try:
        kwargs = body.generation_kwargs()
        if body.seed is None and state.default_seed is not None:
            kwargs["seed"] = state.default_seed
        stream = await anyio.to_thread.run_sync(partial(
            state.tts.stream, script, chunk_frames=state.chunk_frames, **kwargs))
        record.input_bytes = stream.input_tokens
        sse = body.stream_format == "sse"
        job = SpeechJob(stream, Output(fmt, speed, whole_file=not body.stream and not sse), state.admission,
                        request_id=request_id)
        disconnected, first = await _first_or_disconnect(job, request)
    except BaseException as exc:
        if job is not None:
            job.cancel()
        else:
            state.admission.leave()
        if isinstance(exc, FasterDiaError):
            record.line(f"error {exc.http_status}")
        elif isinstance(exc, Exception):
            record.line("error 500")
        raise
    if disconnected:
        job.cancel()
        record.line("cancelled")
        return Response(status_code=499)
    record.first_byte = time.perf_counter()

    headers = {"X-Seed": str(stream.seed), "Cache-Control": "no-cache", "X-Accel-Buffering": "no"}
    content_type = _content_type(fmt)
    if job.output.whole_file:
        # The worker sends the finished file as one piece, then the end marker.
        data = first or b""
        while (more := await job.next()) is not None:
            data += more
        record.line("ok", job.audio_seconds)
        return Response(data, media_type=content_type, headers=headers)
    if sse:
        return StreamingResponse(_sse_body(job, first, record), media_type="text/event-stream", headers=headers)
    return StreamingResponse(_audio_body(job, first, record), media_type=content_type, headers=headers)


def _content_type(fmt: str) -> str:
    if fmt == "pcm":
        # OpenAI clients assume 24 kHz without being told; say it anyway for everyone else.
        return f"{CONTENT_TYPES['pcm']};rate={PCM_SAMPLE_RATE}"
    return CONTENT_TYPES[fmt]


async def _first_or_disconnect(job: SpeechJob, request: Request) -> tuple[bool, bytes | None]:
    """The job's first bytes, unless the client leaves first (then generation is cancelled early, even
    while the request still waits for its turn)."""
    disconnected = False
    outcome: list[bytes | None] = []
    failure: list[BaseException] = []

    async with anyio.create_task_group() as group:

        async def watch() -> None:
            nonlocal disconnected
            while True:
                message = await request.receive()
                if message["type"] == "http.disconnect":
                    disconnected = True
                    group.cancel_scope.cancel()
                    return

        group.start_soon(watch)
        try:
            outcome.append(await job.first())
        except Exception as exc:  # raised outside the task group so it is not wrapped in a group
            failure.append(exc)
        group.cancel_scope.cancel()
    if failure:
        raise failure[0]
    return disconnected, (outcome[0] if outcome else None)


async def _audio_body(job: SpeechJob, first: bytes | None, record: _RequestLog) -> AsyncIterator[bytes]:
    status = "cancelled"
    try:
        data = first
        while data is not None:
            yield data
            data = await job.next()
        status = "ok"
    except Exception as exc:
        status = "error 500"
        log.error("request %s failed while streaming", record.request_id, exc_info=exc)
        # The status line is gone already; dropping the connection is how the client learns of it.
        raise StreamAborted() from exc
    finally:
        # Also reached when the client disconnects (cancellation) or the response is abandoned.
        job.cancel()
        record.line(status, job.audio_seconds)


async def _sse_body(job: SpeechJob, first: bytes | None, record: _RequestLog) -> AsyncIterator[bytes]:
    def event(payload: dict) -> bytes:
        return f"data: {json.dumps(payload)}\n\n".encode()

    status = "cancelled"
    try:
        data = first
        while data is not None:
            yield event({"type": "speech.audio.delta", "audio": base64.b64encode(data).decode()})
            data = await job.next()
        frames = int(job.stream.frames)
        yield event({"type": "speech.audio.done", "usage": {
            "input_tokens": job.stream.input_tokens, "output_tokens": frames,
            "total_tokens": job.stream.input_tokens + frames,
        }})
        status = "ok"
    except Exception as exc:
        status = "error 500"
        log.error("request %s failed while streaming", record.request_id, exc_info=exc)
        # OpenAI defines no error event; this one follows the delta/done naming and the error body shape.
        failure = error_body(f"Generation failed (request id {record.request_id}).", "server_error")
        yield event({"type": "speech.audio.error", **failure})
    finally:
        job.cancel()
        record.line(status, job.audio_seconds)

