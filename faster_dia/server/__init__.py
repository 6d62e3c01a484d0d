"""The OpenAI-compatible HTTP server (``faster-dia serve``); needs the ``server`` extra.

:func:`create_app` builds the FastAPI application around a loaded :class:`~faster_dia.TextToSpeech`;
:func:`run` serves it with uvicorn.
"""

from __future__ import annotations

from collections.abc import Iterable

from ..api import TextToSpeech
from .app import MODEL_ALIASES, create_app

__all__ = ["MODEL_ALIASES", "create_app", "run"]


def run(
    tts: TextToSpeech,
    *,
    host: str = "127.0.0.1",
    port: int = 8000,
    api_keys: Iterable[str] = (),
    max_queue: int = 8,
    chunk_frames: int = 32,
    default_seed: int | None = None,
    log_level: str = "info",
) -> None:
    """Serve ``tts`` until interrupted."""
    import uvicorn

    app = create_app(tts, api_keys=api_keys, max_queue=max_queue, chunk_frames=chunk_frames,
                     default_seed=default_seed)
    # One process, one model: several uvicorn workers would each load their own copy.
    uvicorn.run(app, host=host, port=port, log_level=log_level, workers=1)
