"""OpenAI's ``POST /v1/audio/speech`` (audio streamed while it is generated, or SSE events, or the whole
file) and ``POST /v1/audio/speech/with-timestamps`` (the whole file plus the words' start times, the shape
hosted APIs use).

Nothing here holds a thread: the request's audio comes from the model's ``astream`` (events awaited on the
event loop), and codec decoding, tempo change and encoding run in the shared output pool.
"""

from __future__ import annotations

import base64
import json
import logging
import time
from collections.abc import AsyncIterator
from functools import partial
from typing import Any

import anyio
from fastapi import APIRouter, Request
from fastapi.responses import Response, StreamingResponse

from ...audio import CONTENT_TYPES, PCM_SAMPLE_RATE, check_speed, normalize_format
from ...audio.output import AudioOutput
from ...errors import FasterDiaError, InvalidInputError
from ...speech import in_output_pool
from ..app import ServerState, state_of
from ..errors import error_body, request_id_of
from ..middleware import StreamAborted
from ..registry import HostedModel
from ..schemas import ErrorResponse, SpeechRequest, SpeechWithTimestamps, WordTimestamp

log = logging.getLogger("faster_dia.server")

router = APIRouter()

_ERRORS = {status: {"model": ErrorResponse} for status in (400, 401, 404, 413, 500, 503)}


@router.post(
    "/v1/audio/speech",
    responses={**_ERRORS, 200: {"content": {"audio/mpeg": {}, "text/event-stream": {}},
                                "description": "audio, streamed while it is generated"}},
    response_class=Response,
)
async def create_speech(body: SpeechRequest, request: Request) -> Response:
    body.check_consistent()
    sse = body.stream_format == "sse"
    run = await SpeechRun.start(request, body, whole_file=not body.stream and not sse)
    disconnected, first = await _first_or_disconnect(run, request)
    if disconnected:
        await run.end("cancelled")
        return Response(status_code=499)
    headers = {"X-Seed": str(run.stream.seed), "Cache-Control": "no-cache", "X-Accel-Buffering": "no"}
    if run.output.whole_file:
        await run.end("ok")
        return Response(first or b"", media_type=_content_type(run.output.fmt), headers=headers)
    if sse:
        return StreamingResponse(_sse_body(run, first), media_type="text/event-stream", headers=headers)
    return StreamingResponse(_audio_body(run, first), media_type=_content_type(run.output.fmt), headers=headers)


@router.post("/v1/audio/speech/with-timestamps", response_model=SpeechWithTimestamps, responses=_ERRORS)
async def create_speech_with_timestamps(body: SpeechRequest, request: Request) -> SpeechWithTimestamps:
    """The whole file as base64 with each word's start (seconds). Dia2 times its words as it speaks them;
    Dia-1.6B has no word timing and answers an empty list."""
    run = await SpeechRun.start(request, body, whole_file=True)
    disconnected, data = await _first_or_disconnect(run, request)
    if disconnected:
        await run.end("cancelled")
        return Response(status_code=499)
    await run.end("ok")
    speed = run.output.speed
    return SpeechWithTimestamps(
        audio_base64=base64.b64encode(data or b"").decode(), content_type=_content_type(run.output.fmt),
        format=run.output.fmt, sample_rate=_output_rate(run), duration=run.output.audio_seconds,
        seed=run.stream.seed, words=[WordTimestamp(word=w, start=round(s / speed, 3)) for w, s in run.stream.words],
    )


class SpeechRun:
    """One speech request from admission to its last byte: the model's async stream, the output stage, and
    the numbers for the log line and the metrics."""

    def __init__(self, state: ServerState, hosted: HostedModel, stream: Any, output: AudioOutput, request_id: str):
        self.state = state
        self.hosted = hosted
        self.stream = stream
        self.output = output
        self.request_id = request_id
        self.started = time.perf_counter()
        self.first_byte: float | None = None
        self._done = False  # the output is closed (every byte produced)
        self._ended = False

    @classmethod
    async def start(cls, request: Request, body: SpeechRequest, *, whole_file: bool) -> SpeechRun:
        state = state_of(request)
        request_id = request_id_of(request)
        started = time.perf_counter()
        try:
            hosted = state.models.resolve(body.model)
            if hosted.family == "voxtral":  # audio in, text out: the chat and transcription routes serve it
                raise InvalidInputError(f"The model {hosted.id!r} understands speech and makes no audio; use "
                                        "/v1/chat/completions or /v1/audio/transcriptions.", param="model")
            fmt = normalize_format(body.response_format)
            speed = check_speed(body.speed_value())
            tts = await hosted.get()
            fields = body.sampling_fields()
            if "seed" not in fields and state.default_seed is not None:
                fields["seed"] = state.default_seed
            # A family that takes no voices ignores them, as it ignores other fields that do not apply to it.
            voices = {k: v for k, v in state.checked_voices(body.voice_fields()).items() if k in tts.option_defaults()}
            options = {**tts.openai_options(fields), **voices}
            hosted.acquire()
            try:
                # Preparing a request may encode a voice clip or transcribe one: not on the event loop.
                stream = await in_output_pool(partial(tts.astream, body.input, **state.chunking(), **options))
            except BaseException:
                hosted.release()
                raise
        except FasterDiaError as exc:
            _log_line(request_id, body.model or "default", f"error {exc.http_status}", started)
            raise
        hosted.last_used = time.monotonic()
        output = AudioOutput(fmt, tts.sample_rate, speed=speed, whole_file=whole_file)
        run = cls(state, hosted, stream, output, request_id)
        run.started = started
        return run

    async def next(self) -> bytes | None:
        """The next encoded bytes, or None once everything was sent."""
        while not self._done:
            try:
                chunk = await self.stream.__anext__()
            except StopAsyncIteration:
                self._done = True
                tail = await in_output_pool(self.output.close)
                return tail or None
            data = await in_output_pool(self.output.push, chunk)
            if data:
                return data
        return None

    async def end(self, status: str) -> None:
        """Once, whatever happened: cancel what still runs, free the encoder, log and count."""
        if self._ended:
            return
        self._ended = True
        await self.stream.aclose()
        if not self._done:
            self.output.abandon()
        self.hosted.release()
        total = time.perf_counter() - self.started
        first = None if self.first_byte is None else self.first_byte - self.started
        if status == "ok":
            self.state.metrics.observe_speech(self.hosted.id, first_audio=first,
                                              audio_seconds=self.output.audio_seconds, total=total)
        _log_line(self.request_id, self.hosted.id, status, self.started, audio_seconds=self.output.audio_seconds,
                  first_byte=first, input_tokens=self.stream.input_tokens)


def _log_line(request_id: str, model: str, status: str, started: float, *, audio_seconds: float = 0.0,
              first_byte: float | None = None, input_tokens: int | None = None) -> None:
    total = time.perf_counter() - started
    ttfb = f"{first_byte:.3f}s" if first_byte is not None else "-"
    speed = f"{audio_seconds / total:.2f}x" if total > 0 and audio_seconds else "-"
    tokens = "-" if input_tokens is None else str(input_tokens)
    log.info("speech %s %s model=%s input_tokens=%s audio=%.2fs ttfb=%s total=%.3fs realtime=%s",
             request_id, status, model, tokens, audio_seconds, ttfb, total, speed)


def _content_type(fmt: str) -> str:
    if fmt == "pcm":
        # OpenAI clients assume 24 kHz without being told; say it anyway for everyone else.
        return f"{CONTENT_TYPES['pcm']};rate={PCM_SAMPLE_RATE}"
    return CONTENT_TYPES[fmt]


def _output_rate(run: SpeechRun) -> int:
    return PCM_SAMPLE_RATE if run.output.fmt == "pcm" else run.output.sample_rate


async def _first_or_disconnect(run: SpeechRun, request: Request) -> tuple[bool, bytes | None]:
    """The run's first bytes (for a whole file: all of them), unless the client leaves first; then generation
    is cancelled early, even while the request still waits for a batch slot."""
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
            outcome.append(await run.next())
            run.first_byte = time.perf_counter()
        except Exception as exc:  # raised outside the task group so it is not wrapped in a group
            failure.append(exc)
        group.cancel_scope.cancel()
    if failure:
        await run.end(f"error {getattr(failure[0], 'http_status', 500)}")
        raise failure[0]
    return disconnected, (outcome[0] if outcome else None)


async def _audio_body(run: SpeechRun, first: bytes | None) -> AsyncIterator[bytes]:
    status = "cancelled"
    try:
        data = first
        while data is not None:
            yield data
            data = await run.next()
        status = "ok"
    except Exception as exc:
        status = "error 500"
        log.error("request %s failed while streaming", run.request_id, exc_info=exc)
        # The status line is gone already; dropping the connection is how the client learns of it.
        raise StreamAborted() from exc
    finally:
        # Also reached when the client disconnects (cancellation) or the response is abandoned.
        with anyio.CancelScope(shield=True):
            await run.end(status)


async def _sse_body(run: SpeechRun, first: bytes | None) -> AsyncIterator[bytes]:
    def event(payload: dict) -> bytes:
        return f"data: {json.dumps(payload)}\n\n".encode()

    status = "cancelled"
    words_sent = 0
    speed = run.output.speed
    try:
        data = first
        while data is not None:
            yield event({"type": "speech.audio.delta", "audio": base64.b64encode(data).decode()})
            # Dia2 decides each word's time as it speaks it: pass the new ones on (times after the speed change).
            words = run.stream.words
            for word, start in words[words_sent:]:
                yield event({"type": "speech.word", "word": word, "start": round(start / speed, 3)})
            words_sent = len(words)
            data = await run.next()
        for word, start in run.stream.words[words_sent:]:
            yield event({"type": "speech.word", "word": word, "start": round(start / speed, 3)})
        frames = int(run.stream.frames)
        yield event({"type": "speech.audio.done", "usage": {
            "input_tokens": run.stream.input_tokens, "output_tokens": frames,
            "total_tokens": run.stream.input_tokens + frames,
        }})
        status = "ok"
    except Exception as exc:
        status = "error 500"
        log.error("request %s failed while streaming", run.request_id, exc_info=exc)
        # OpenAI defines no error event; this one follows the delta/done naming and the error body shape.
        failure = error_body(f"Generation failed (request id {run.request_id}).", "server_error")
        yield event({"type": "speech.audio.error", **failure})
    finally:
        with anyio.CancelScope(shield=True):
            await run.end(status)
