"""``/v1/audio/speech/stream``: a WebSocket that takes text while an LLM writes it and sends audio back as soon
as it exists (see docs/server.md, "Streaming text in").

Client → server, JSON text messages: ``session.start`` (model, voice, response_format, sampling fields) first,
then any number of ``text.append`` {text}, ``text.flush``, and ``text.end``. Server → client: audio as binary
messages, ``{"type": "word", "word", "start"}`` (Dia2's word times as they are decided), ``{"type": "done",
"usage"}``, and ``{"type": "error", "error": {...}}`` (OpenAI's error body) before it closes. API keys: the
``Authorization`` header or a ``token`` query parameter (browsers cannot set headers on a WebSocket).
"""

from __future__ import annotations

import json
import logging
import secrets
from functools import partial
from typing import Any, Literal

import anyio
from fastapi import APIRouter, WebSocket, WebSocketDisconnect
from pydantic import BaseModel, ConfigDict, Field, StrictInt, ValidationError

from ...audio import normalize_format
from ...audio.output import AudioOutput
from ...errors import FasterDiaError, InvalidInputError
from ...speech import MAX_SEED, in_output_pool
from ..errors import error_body
from ..schemas import Number, VoiceRef

log = logging.getLogger("faster_dia.server")

router = APIRouter()

#: The largest client message (a text piece is far smaller).
MAX_MESSAGE_BYTES = 64 * 1024
#: A session that receives nothing for this long is closed (seconds).
IDLE_TIMEOUT = 60.0
#: Formats a session can stream (containers that need their whole length up front are left out).
STREAM_FORMATS = ("pcm", "opus", "mp3", "wav")


class SessionStart(BaseModel):
    """The first message of a session."""

    model_config = ConfigDict(extra="forbid")

    type: Literal["session.start"]
    model: str | None = None
    voice: str | VoiceRef | None = None
    voices: dict[str, str | VoiceRef] | None = None
    response_format: str = "pcm"
    seed: StrictInt | None = Field(None, ge=-1, le=MAX_SEED)
    temperature: Number | None = None
    top_p: Number | None = None
    top_k: StrictInt | None = None
    cfg_filter_top_k: StrictInt | None = None
    cfg_scale: Number | None = None
    max_new_tokens: StrictInt | None = None
    continuity: Literal["first", "previous"] | None = None


class _Closed(Exception):
    """The session is over (the client left, or it was closed after an error)."""


@router.websocket("/v1/audio/speech/stream")
async def speech_stream(socket: WebSocket) -> None:
    state = socket.app.state.server
    await socket.accept()
    session = _Session(socket, state)
    try:
        await session.run()
    except _Closed:
        pass
    except WebSocketDisconnect:
        pass
    finally:
        await session.end()


class _Session:
    def __init__(self, socket: WebSocket, state: Any):
        self.socket = socket
        self.state = state
        self.stream: Any = None
        self.hosted: Any = None
        self.words_sent = 0

    async def run(self) -> None:
        if not self._authorized():
            await self.fail(InvalidInputError("No valid API key: send 'Authorization: Bearer KEY' or ?token=KEY.",
                                              code="invalid_api_key"), close_code=1008)
        start = await self.receive()
        try:
            fields = SessionStart.model_validate(start)
        except ValidationError as exc:
            first = exc.errors()[0]
            param = ".".join(str(p) for p in first.get("loc", ())) or None
            if start.get("type") != "session.start":
                await self.fail(InvalidInputError("The first message must be {\"type\": \"session.start\", ...}.",
                                                  param="type"))
            await self.fail(InvalidInputError(f"Invalid value for '{param}': {first.get('msg')}.", param=param))
        try:
            await self.open(fields)
        except FasterDiaError as exc:
            await self.fail(exc)
        async with anyio.create_task_group() as group:
            group.start_soon(self.send_audio, group.cancel_scope)
            try:
                await self.read_text()
            except (_Closed, WebSocketDisconnect):
                group.cancel_scope.cancel()  # the audio is not wanted any more

    def _authorized(self) -> bool:
        keys = [k.encode() for k in self.state.api_keys]
        if not keys:
            return True
        header = self.socket.headers.get("authorization", "")
        scheme, _, token = header.partition(" ")
        given = token.strip() if scheme.lower() == "bearer" else self.socket.query_params.get("token", "")
        matched = False
        for key in keys:
            matched |= secrets.compare_digest(given.encode(), key)
        return matched

    async def open(self, fields: SessionStart) -> None:
        fmt = normalize_format(fields.response_format)
        if fmt not in STREAM_FORMATS:
            raise InvalidInputError(f"A text session streams {', '.join(STREAM_FORMATS)}; got {fmt!r}.",
                                    param="response_format")
        self.hosted = self.state.models.resolve(fields.model)
        if self.hosted.family == "voxtral":  # audio in, text out: nothing to speak with
            self.hosted = None
            raise InvalidInputError("This model understands speech and makes no audio; a text session needs a "
                                    "speech model.", param="model")
        tts = await self.hosted.get()
        sampling = {k: v for k, v in fields.model_dump().items() if v is not None and k not in (
            "type", "model", "voice", "voices", "response_format", "continuity")}
        if sampling.get("seed") == -1:
            del sampling["seed"]
        if "seed" not in sampling and self.state.default_seed is not None:
            sampling["seed"] = self.state.default_seed
        options = tts.openai_options(sampling)
        defaults = tts.option_defaults()
        named: dict[str, Any] = {}
        if fields.voice is not None:
            named["voice"] = fields.voice.id if isinstance(fields.voice, VoiceRef) else fields.voice
        if fields.voices is not None:
            named["voices"] = {k: v.id if isinstance(v, VoiceRef) else v for k, v in fields.voices.items()}
        options.update({k: v for k, v in self.state.checked_voices(named).items() if k in defaults})
        if fields.continuity is not None:
            options["continuity"] = fields.continuity
        self.hosted.acquire()
        try:
            self.stream = await in_output_pool(partial(tts.aopen_text_stream, **self.state.chunking(), **options))
        except BaseException:
            self.hosted.release()
            self.hosted = None
            raise
        self.output = AudioOutput(fmt, tts.sample_rate)

    async def receive(self) -> dict[str, Any]:
        with anyio.move_on_after(IDLE_TIMEOUT) as scope:
            message = await self.socket.receive()
        if scope.cancelled_caught:
            await self.fail(InvalidInputError(f"No message for {IDLE_TIMEOUT:g} s: the session is closed.",
                                              code="idle_timeout"))
        if message["type"] == "websocket.disconnect":
            raise _Closed
        raw = message.get("text")
        if raw is None:
            raw = (message.get("bytes") or b"").decode("utf-8", "replace")
        if len(raw.encode("utf-8", "replace")) > MAX_MESSAGE_BYTES:
            await self.fail(InvalidInputError(f"Messages may be at most {MAX_MESSAGE_BYTES} bytes.",
                                              code="message_too_large"))
        try:
            data = json.loads(raw)
        except ValueError:
            await self.fail(InvalidInputError("Messages must be JSON objects.", code="invalid_json"))
        if not isinstance(data, dict) or not isinstance(data.get("type"), str):
            await self.fail(InvalidInputError("Messages must be JSON objects with a 'type'.", param="type"))
        return data

    async def read_text(self) -> None:
        while True:
            message = await self.receive()
            kind = message["type"]
            try:
                if kind == "text.append":
                    if not isinstance(message.get("text"), str):
                        raise InvalidInputError("text.append needs 'text', a string.", param="text")
                    self.stream.append(message["text"])
                elif kind == "text.flush":
                    self.stream.flush()
                elif kind == "text.end":
                    self.stream.end()
                    return
                else:
                    raise InvalidInputError(f"Unknown message type {kind!r}: use text.append, text.flush or "
                                            "text.end.", param="type")
            except FasterDiaError as exc:
                await self.fail(exc)

    async def send_audio(self, scope: anyio.CancelScope) -> None:
        try:
            async for audio in self.stream:
                data = await in_output_pool(self.output.push, audio)
                if data:
                    await self.socket.send_bytes(data)
                await self.send_words()
            tail = await in_output_pool(self.output.close)
            if tail:
                await self.socket.send_bytes(tail)
            await self.send_words()
            frames = int(self.stream.frames)
            await self.socket.send_json({"type": "done", "usage": {
                "input_characters": self.stream.text_chars, "output_tokens": frames,
                "audio_seconds": round(self.output.audio_seconds, 3)}})
            await self.socket.close()
        except FasterDiaError as exc:
            try:
                await self.fail(exc)
            except _Closed:
                pass
        except (_Closed, WebSocketDisconnect, RuntimeError):
            pass  # the client left while audio was on its way
        except Exception:
            log.exception("text session failed while streaming")
            try:
                await self.fail(FasterDiaError("Generation failed."))
            except _Closed:
                pass
        finally:
            scope.cancel()

    async def send_words(self) -> None:
        words = self.stream.words
        for word, start in words[self.words_sent:]:
            await self.socket.send_json({"type": "word", "word": word, "start": start})
        self.words_sent = len(words)

    async def fail(self, exc: FasterDiaError, *, close_code: int = 1000) -> None:
        """Tell the client what went wrong (OpenAI's error body), close, and end the session."""
        message = exc.message if exc.http_status < 500 else "The server had an error while streaming."
        try:
            await self.socket.send_json({"type": "error", **error_body(message, exc.error_type, exc.param, exc.code)})
            await self.socket.close(code=close_code)
        except (WebSocketDisconnect, RuntimeError):
            pass
        raise _Closed

    async def end(self) -> None:
        """Free the batch slot at once, whatever ended the session."""
        if self.stream is not None:
            self.stream.close()
            self.output.abandon()  # nothing to release when it was closed cleanly
            self.stream = None
        if self.hosted is not None:
            self.hosted.release()
            self.hosted = None
