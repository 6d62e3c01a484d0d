"""The OpenAI-compatible HTTP server (``faster-dia serve``); needs the ``server`` extra.

:func:`create_app` builds the FastAPI application around loaded models or a :class:`ModelRegistry`;
:func:`serve` hosts models by reference (loading them at start, or on first use with ``lazy``).
"""

from __future__ import annotations

import logging
import os
import socket
from collections.abc import Iterable, Sequence

from .app import create_app
from .pricing import Pricing
from .registry import OPENAI_NAMES, ModelRegistry, ModelSpec

__all__ = ["OPENAI_NAMES", "ModelRegistry", "ModelSpec", "Pricing", "create_app", "serve"]

log = logging.getLogger("faster_dia.server")


def serve(
    specs: Sequence[ModelSpec],
    *,
    sock: socket.socket,
    api_keys: Iterable[str] = (),
    default_model: str | None = None,
    lazy: bool = False,
    idle_unload: float | None = None,
    chunk_seconds: float | None = None,
    default_seed: int | None = None,
    metrics_public: bool = False,
    voices: str | os.PathLike | None = None,
    asr_model: str | None = None,
    data_dir: str | os.PathLike | None = None,
    database: str | None = None,
    allow_outbound: Iterable[str] = (),
    pricing: Pricing | None = None,
    quota: int | None = None,
    allow_file_dir: str | os.PathLike | None = None,
    log_level: str = "info",
) -> None:
    """Serve ``specs`` on the already bound ``sock`` until interrupted. Without ``lazy`` every model is loaded
    before the first request is accepted (a model that fails to load stops the server with its error)."""
    import uvicorn

    from .uvicorn_config import uvicorn_config

    registry = ModelRegistry.from_specs(list(specs), default=default_model, idle_unload=idle_unload)
    if not lazy:
        registry.load_all()
    app = create_app(registry, api_keys=api_keys, chunk_seconds=chunk_seconds, default_seed=default_seed,
                     metrics_public=metrics_public, voices=voices, asr_model=asr_model, data_dir=data_dir,
                     database=database, allow_outbound=allow_outbound, pricing=pricing, quota=quota,
                     allow_file_dir=allow_file_dir)
    host, port = sock.getsockname()[:2]
    log.info("serving %s on http://%s:%d", ", ".join(m.id for m in registry.models), host, port)
    # One process: several uvicorn workers would each load their own copy of every model.
    try:
        uvicorn.Server(uvicorn_config(app, log_level=log_level)).run(sockets=[sock])
    finally:
        registry.close()
