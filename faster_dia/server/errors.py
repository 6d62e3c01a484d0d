"""Every error leaves the server in OpenAI's shape: ``{"error": {"message", "type", "param", "code"}}``.

Clients (the openai SDK, Open WebUI) read ``error.message``; the SDK picks its exception class from the
status code and retries 408/409/429/5xx, honouring ``Retry-After``.
"""

from __future__ import annotations

import logging
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

from ..errors import FasterDiaError, InvalidInputError, OverloadedError

log = logging.getLogger("faster_dia.server")

#: What a client sees for a fault of the server itself; the details go to the log only.
INTERNAL_MESSAGE = "The server had an error while processing the request (request id {request_id})."


def _encodable(text: str | None) -> str | None:
    """``text`` with anything UTF-8 cannot carry (a lone UTF-16 surrogate, which JSON lets a client send)
    written as a backslash escape: an error message that echoes the client's input must still encode."""
    if text is None:
        return None
    return text.encode("utf-8", "backslashreplace").decode("utf-8")


def error_body(message: str, type_: str, param: str | None = None, code: str | None = None) -> dict[str, Any]:
    return {"error": {"message": _encodable(message), "type": _encodable(type_), "param": _encodable(param),
                      "code": _encodable(code)}}


def error_response(
    status: int, message: str, type_: str, param: str | None = None, code: str | None = None,
    headers: dict[str, str] | None = None,
) -> JSONResponse:
    return JSONResponse(error_body(message, type_, param, code), status_code=status, headers=headers)


def reject_surrogates(value: str, param: str) -> str:
    """``value`` unchanged, or InvalidInputError (400) if it holds an unpaired UTF-16 surrogate.

    JSON can escape one (``"\\ud800"``) and Python decodes it into a str that no encoder accepts, so the
    text would fail deep inside tokenizing instead of at the boundary. InvalidInputError is a ValueError, so
    inside a pydantic validator it becomes an ordinary validation error of ``param``.
    """
    try:
        value.encode("utf-8")
    except UnicodeEncodeError as exc:
        raise InvalidInputError(
            f"'{param}' contains an unpaired UTF-16 surrogate at character {exc.start}; send valid Unicode text.",
            param=param, code="invalid_value",
        ) from None
    return value


def request_id_of(request: Request) -> str:
    return getattr(request.state, "request_id", "-")


def library_error_response(exc: FasterDiaError, request_id: str) -> JSONResponse:
    """The response for a library error, through the class's ``http_status`` and ``error_type``."""
    status = exc.http_status
    headers: dict[str, str] = {}
    if isinstance(exc, OverloadedError):
        headers["Retry-After"] = str(exc.retry_after)
        return error_response(status, exc.message, exc.error_type, exc.param, exc.code or "overloaded", headers)
    if status >= 500:
        # A deliberate library error can still carry paths or internals: log it, answer generically.
        log.error("request %s failed: %s: %s", request_id, type(exc).__name__, _encodable(exc.message))
        return error_response(status, INTERNAL_MESSAGE.format(request_id=request_id), exc.error_type)
    return error_response(status, exc.message, exc.error_type, exc.param, exc.code)


def _validation_message(exc: RequestValidationError) -> tuple[str, str | None]:
    errors = exc.errors()
    if not errors:
        return "The request body is not valid.", None
    first = errors[0]
    loc = [str(part) for part in first.get("loc", ()) if part != "body"]
    # loc is e.g. ("body", "speed") or ("body", "voice", "str"): the field is its first element.
    param = loc[0] if loc and not loc[0].isdigit() else None
    if first.get("type") == "json_invalid":
        return "The request body is not valid JSON.", None
    if first.get("type") == "model_attributes_type" or param is None:
        return "The request body must be a JSON object.", None
    return f"Invalid value for '{param}': {first.get('msg', 'invalid')}.", param


def install_error_handlers(app: FastAPI) -> None:
    @app.exception_handler(FasterDiaError)
    async def _library_error(request: Request, exc: FasterDiaError) -> JSONResponse:
        return library_error_response(exc, request_id_of(request))

    @app.exception_handler(RequestValidationError)
    async def _validation_error(request: Request, exc: RequestValidationError) -> JSONResponse:
        # OpenAI answers 400 for any malformed request; FastAPI's default 422 {"detail": ...} breaks clients.
        message, param = _validation_message(exc)
        return error_response(400, message, "invalid_request_error", param, "invalid_value" if param else None)

    @app.exception_handler(StarletteHTTPException)
    async def _http_error(request: Request, exc: StarletteHTTPException) -> JSONResponse:
        if exc.status_code == 404:
            message = f"Unknown route: {request.method} {request.url.path}."
            code = "unknown_url"
        elif exc.status_code == 405:
            message = f"Method {request.method} is not allowed on {request.url.path}."
            code = "method_not_allowed"
        else:
            message, code = str(exc.detail), None
        type_ = "server_error" if exc.status_code >= 500 else "invalid_request_error"
        return error_response(exc.status_code, message, type_, None, code, dict(exc.headers or {}))
