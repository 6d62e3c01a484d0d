"""The one error hierarchy of faster-dia.

Library code raises these; the command line prints their message on one line and the server maps each
class to an HTTP status and the OpenAI error body.
"""

from __future__ import annotations


class FasterDiaError(Exception):
    """Base class of every error faster-dia raises on purpose."""

    #: OpenAI-style error type, used by the server.
    error_type = "server_error"
    #: HTTP status the server answers with.
    http_status = 500

    def __init__(self, message: str, *, param: str | None = None, code: str | None = None):
        super().__init__(message)
        self.message = message
        self.param = param
        self.code = code


class InvalidInputError(FasterDiaError, ValueError):
    """Something the user gave (a script, a parameter, an audio prompt) cannot be used."""

    error_type = "invalid_request_error"
    http_status = 400


class ModelNotFoundError(FasterDiaError, FileNotFoundError):
    """A model or codec cannot be found locally or in the Hub cache."""

    error_type = "invalid_request_error"
    http_status = 404


class NotFoundError(FasterDiaError, LookupError):
    """Something the request names (a voice, a file) does not exist."""

    error_type = "invalid_request_error"
    http_status = 404


class ConflictError(FasterDiaError):
    """The request would replace something that exists (a voice of the same name)."""

    error_type = "invalid_request_error"
    http_status = 409


class PayloadTooLargeError(FasterDiaError):
    """An upload is larger than the limit."""

    error_type = "invalid_request_error"
    http_status = 413


class CheckpointError(FasterDiaError):
    """A checkpoint exists but its files do not match any supported layout."""

    error_type = "server_error"
    http_status = 500


class OverloadedError(FasterDiaError):
    """The request queue is full. ``retry_after`` suggests how many seconds to wait."""

    error_type = "server_error"
    http_status = 503

    def __init__(self, message: str, *, retry_after: int = 1, param: str | None = None, code: str | None = "overloaded"):
        super().__init__(message, param=param, code=code)
        self.retry_after = retry_after


class CancelledError(FasterDiaError):
    """A request was cancelled before it finished."""

    error_type = "server_error"
    http_status = 499
