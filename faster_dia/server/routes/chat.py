"""``POST /v1/chat/completions`` on a Voxtral model: audio in, text out, in the shape OpenAI and mistral.rs accept.

Messages mix text parts and audio parts: ``input_audio`` (base64 with a format) and ``audio_url`` (a ``data:``
URI, an ``http(s)`` URL fetched with the server's outbound safety rules, or a ``file://`` URL under the directory
given with ``--allow-file-dir``, refused otherwise). ``stream`` sends ``chat.completion.chunk`` server-sent
events ending with ``data: [DONE]``; ``stream_options.include_usage`` adds a last chunk with the token counts.
A client that disconnects cancels its request, in the queue or in its batch slot.
"""

from __future__ import annotations

import base64
import json
import logging
import os
import secrets
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any, Literal
from urllib.parse import unquote, urlparse

import anyio
from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse, StreamingResponse
from pydantic import BaseModel, ConfigDict, Field

from ...audio.decode import DEFAULT_MAX_BYTES
from ...errors import FasterDiaError, InvalidInputError
from ..app import state_of
from ..errors import error_body, request_id_of
from ..schemas import ErrorResponse

log = logging.getLogger("faster_dia.server")

router = APIRouter()

#: The families this route serves (audio in, text out).
CHAT_FAMILIES = ("voxtral",)


class StreamOptions(BaseModel):
    include_usage: bool = False


class ChatCompletionRequest(BaseModel):
    """OpenAI's chat completion body; fields it does not use (penalties, logit_bias, user, ...) are ignored."""

    model_config = ConfigDict(extra="ignore")

    model: str | None = None
    messages: list[dict[str, Any]]
    max_tokens: int | None = Field(None, description="Tokens to generate at most (default: up to the context)")
    max_completion_tokens: int | None = Field(None, description="The newer name of max_tokens")
    temperature: float | None = Field(None, description="0 (the default) is greedy; up to 2")
    top_p: float | None = None
    seed: int | None = None
    stop: str | list[str] | None = None
    n: int | None = Field(None, description="Only 1 is supported")
    stream: bool = False
    stream_options: StreamOptions | None = None


class ChatMessage(BaseModel):
    role: Literal["assistant"] = "assistant"
    content: str


class ChatChoice(BaseModel):
    index: int = 0
    message: ChatMessage
    finish_reason: str


class ChatUsage(BaseModel):
    prompt_tokens: int
    completion_tokens: int
    total_tokens: int


class ChatCompletion(BaseModel):
    id: str
    object: Literal["chat.completion"] = "chat.completion"
    created: int
    model: str
    choices: list[ChatChoice]
    usage: ChatUsage


_ERRORS = {status: {"model": ErrorResponse} for status in (400, 401, 404, 413, 503)}


@router.post("/v1/chat/completions", response_model=ChatCompletion,
             responses={**_ERRORS, 200: {"content": {"text/event-stream": {}}}})
async def create_chat_completion(request: Request, body: ChatCompletionRequest):
    state = state_of(request)
    request_id = request_id_of(request)
    started = time.perf_counter()
    hosted = state.models.resolve(body.model)
    if hosted.family not in CHAT_FAMILIES:
        raise InvalidInputError(
            f"The model {hosted.id!r} generates speech; chat completions need an audio-understanding model "
            f"({', '.join(m.id for m in state.models.models if m.family in CHAT_FAMILIES) or 'none hosted here'}).",
            param="model", code="model_not_supported")
    if body.n not in (None, 1):
        raise InvalidInputError("Only n=1 is supported.", param="n")
    max_tokens = body.max_completion_tokens if body.max_completion_tokens is not None else body.max_tokens
    messages = await _resolve_urls(state, body.messages)
    model = await hosted.get()
    seed = body.seed if body.seed is not None else state.default_seed
    prepared = await anyio.to_thread.run_sync(lambda: model.prepare_chat(
        messages, max_tokens=max_tokens, temperature=body.temperature, top_p=body.top_p, seed=seed, stop=body.stop))
    completion_id = "chatcmpl-" + secrets.token_hex(12)
    created = int(time.time())
    hosted.acquire()
    if body.stream:
        include_usage = bool(body.stream_options and body.stream_options.include_usage)
        events = _sse(model.astream_prepared(prepared), hosted, completion_id, created, include_usage, request_id,
                      started)
        return StreamingResponse(events, media_type="text/event-stream",
                                 headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"})
    try:
        result = None
        async for item in model.astream_prepared(prepared):
            result = item
    finally:
        hosted.release()
    _log_line(request_id, hosted.id, "ok", started, result.completion_tokens)
    completion = ChatCompletion(
        id=completion_id, created=created, model=hosted.id,
        choices=[ChatChoice(message=ChatMessage(content=result.text), finish_reason=result.finish_reason)],
        usage=_usage(result))
    return JSONResponse(completion.model_dump())


def _usage(result: Any) -> ChatUsage:
    return ChatUsage(prompt_tokens=result.prompt_tokens, completion_tokens=result.completion_tokens,
                     total_tokens=result.prompt_tokens + result.completion_tokens)


async def _sse(items: AsyncIterator[Any], hosted: Any, completion_id: str, created: int, include_usage: bool,
               request_id: str, started: float) -> AsyncIterator[bytes]:
    def chunk(delta: dict, finish_reason: str | None = None, **extra: Any) -> bytes:
        payload = {"id": completion_id, "object": "chat.completion.chunk", "created": created, "model": hosted.id,
                   "choices": [{"index": 0, "delta": delta, "finish_reason": finish_reason}], **extra}
        return f"data: {json.dumps(payload)}\n\n".encode()

    status = "cancelled"
    tokens = 0
    try:
        yield chunk({"role": "assistant", "content": ""})
        async for item in items:
            if isinstance(item, str):
                yield chunk({"content": item})
                continue
            tokens = item.completion_tokens
            yield chunk({}, item.finish_reason)
            if include_usage:
                payload = {"id": completion_id, "object": "chat.completion.chunk", "created": created,
                           "model": hosted.id, "choices": [], "usage": _usage(item).model_dump()}
                yield f"data: {json.dumps(payload)}\n\n".encode()
        yield b"data: [DONE]\n\n"
        status = "ok"
    except FasterDiaError as exc:
        status = f"error {exc.http_status}"
        yield f"data: {json.dumps(error_body(exc.message, 'server_error'))}\n\n".encode()
    except Exception as exc:
        status = "error 500"
        log.error("request %s failed while streaming a chat completion", request_id, exc_info=exc)
        yield f"data: {json.dumps(error_body(f'Generation failed (request id {request_id}).', 'server_error'))}\n\n".encode()
    finally:
        hosted.release()
        await items.aclose()
        _log_line(request_id, hosted.id, status, started, tokens)


def _log_line(request_id: str, model: str, status: str, started: float, tokens: int) -> None:
    log.info("chat %s %s model=%s tokens=%d total=%.3fs", request_id, status, model, tokens,
             time.perf_counter() - started)


# ---------------------------------------------------------------------- audio URLs


async def _resolve_urls(state: Any, messages: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Messages with every file:// and http(s) ``audio_url`` replaced by the audio it names (as input_audio);
    data: URIs and everything else are left to the model's own checks."""
    out = []
    for message in messages:
        content = message.get("content") if isinstance(message, dict) else None
        if not isinstance(content, list):
            out.append(message)
            continue
        parts = []
        for part in content:
            url = _audio_url(part)
            if url is None or url.startswith("data:"):
                parts.append(part)
                continue
            data = await _fetch(state, url)
            parts.append({"type": "input_audio", "input_audio": {"data": base64.b64encode(data).decode()}})
        out.append({**message, "content": parts})
    return out


def _audio_url(part: Any) -> str | None:
    if not isinstance(part, dict) or part.get("type") != "audio_url":
        return None
    body = part.get("audio_url")
    url = body.get("url") if isinstance(body, dict) else body
    return url if isinstance(url, str) else None


async def _fetch(state: Any, url: str) -> bytes:
    scheme = urlparse(url).scheme.lower()
    if scheme == "file":
        return await anyio.to_thread.run_sync(_read_allowed_file, state.allow_file_dir, url)
    if scheme in ("http", "https"):
        return await state.hosted.outbound.get(url, param="messages", max_bytes=DEFAULT_MAX_BYTES)
    raise InvalidInputError(f"audio_url must be a data:, http(s): or file: URL, not {scheme or 'a bare path'}.",
                            param="messages")


def _read_allowed_file(allowed: str | os.PathLike | None, url: str) -> bytes:
    if allowed is None:
        raise InvalidInputError("file:// audio URLs are not accepted by this server (see --allow-file-dir).",
                                param="messages", code="file_url_refused")
    parsed = urlparse(url)
    if parsed.netloc not in ("", "localhost"):
        raise InvalidInputError("file:// audio URLs must name a local file.", param="messages")
    root = Path(allowed).resolve()
    path = Path(unquote(parsed.path)).resolve()
    if not path.is_relative_to(root):
        raise InvalidInputError("The file:// audio URL is outside the directory this server may read.",
                                param="messages", code="file_url_refused")
    try:
        with open(path, "rb") as handle:
            data = handle.read(DEFAULT_MAX_BYTES + 1)
    except OSError as exc:
        raise InvalidInputError("The file:// audio URL names no readable file.", param="messages") from exc
    if len(data) > DEFAULT_MAX_BYTES:
        raise InvalidInputError(f"The audio file is larger than {DEFAULT_MAX_BYTES >> 20} MiB.", param="messages")
    return data
