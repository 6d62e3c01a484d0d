"""The FastAPI application: shared state, middleware, and the routers under server/routes/.

A route module defines ``router`` and reads the :class:`ServerState` through ``state_of(request)``; a new
endpoint is a new module listed in ``ROUTERS``.
"""

from __future__ import annotations

import asyncio
import contextlib
import importlib
import logging
import os
import time
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

from fastapi import FastAPI, Request

from .. import __version__
from ..asr import LazyRecognizer
from ..errors import FasterDiaError
from ..voices import MAX_UPLOAD_BYTES, VoiceLibrary
from .docs import install_docs
from .errors import install_error_handlers
from .hosted import Hosted, HostedApiKeyAuth
from .metrics import Metrics, RequestCounter
from .middleware import ApiKeyAuth, BodyLimit, HeadAsGet, RequestContext
from .pricing import Pricing
from .registry import HostedModel, ModelRegistry

log = logging.getLogger("faster_dia.server")

DEFAULT_MAX_BODY_BYTES = 1 << 20
#: Routes that take audio uploads: they get a body limit of the largest audio file plus the form around it.
UPLOAD_PATHS = ("/v1/voices", "/v1/audio/voices", "/v1/audio/transcriptions", "/v1/audio/translations",
                "/v1/tasks", "/v1/dia", "/v1/chat/completions")
#: Audio per streamed chunk. Small enough for a quick first byte, large enough that a chunk's codec decode
#: and encode cost little per second of audio; the same for every family.
DEFAULT_CHUNK_SECONDS = 0.37

ROUTERS = ("speech", "realtime", "models", "health", "metrics", "transcriptions", "voices", "ui", "tasks", "files", "dia", "chat")


@dataclass
class ServerState:
    models: ModelRegistry
    metrics: Metrics
    chunk_seconds: float | None = None
    chunk_frames: int | None = None  # overrides chunk_seconds (codec frames per chunk)
    default_seed: int | None = None
    metrics_public: bool = False
    created: int = field(default_factory=lambda: int(time.time()))
    asr: LazyRecognizer = field(default_factory=LazyRecognizer)  # speech recognition, loaded on first use
    voices: VoiceLibrary | None = None
    api_keys: tuple[str, ...] = ()  # for the routes the HTTP middleware does not see (WebSockets)
    hosted: Hosted | None = None  # the task API's job store, result files, outbound client, prices
    allow_file_dir: str | os.PathLike | None = None  # file:// audio URLs of chat completions are read only here

    def checked_voices(self, fields: dict[str, Any]) -> dict[str, Any]:
        """``voice`` / ``voices`` from a client, each a built-in name or a stored voice. A client never names a
        file on the server: the models would take a path as a clip to clone."""
        from ..voices import BUILTIN_VOICES

        named = [fields["voice"]] if fields.get("voice") is not None else []
        named += list((fields.get("voices") or {}).values())
        for name in named:
            if not (isinstance(name, str) and name.strip().lower() in BUILTIN_VOICES):
                self.voices.get(name, param="voice" if "voice" in fields else "voices")
        return fields

    async def transcriber(self) -> Any:
        """``(pcm, rate) -> Transcript`` with the server's recognizer, or None when speech recognition is not
        available (clips are then kept untranscribed and transcribed when the recognizer can be loaded)."""
        try:
            recognizer = await self.asr.get()
        except FasterDiaError as exc:
            log.warning("speech recognition is not available: %s", exc.message)
            return None
        return lambda pcm, rate: recognizer.transcribe(pcm, sample_rate=rate)

    @property
    def in_flight(self) -> int:
        return sum(m.active for m in self.models.models)

    def chunking(self) -> dict[str, Any]:
        if self.chunk_frames is not None:
            return {"chunk_frames": self.chunk_frames}
        return {"chunk_seconds": self.chunk_seconds if self.chunk_seconds is not None else DEFAULT_CHUNK_SECONDS}


def state_of(request: Request) -> ServerState:
    return request.app.state.server


def create_app(
    models: Any,
    *,
    api_keys: Iterable[str] = (),
    default_model: str | None = None,
    idle_unload: float | None = None,
    chunk_seconds: float | None = None,
    chunk_frames: int | None = None,
    default_seed: int | None = None,
    metrics_public: bool = False,
    max_body_bytes: int = DEFAULT_MAX_BODY_BYTES,
    asr_model: Any = None,
    voices: VoiceLibrary | str | os.PathLike | None = None,
    data_dir: str | os.PathLike | None = None,
    database: str | None = None,
    allow_outbound: Iterable[str] = (),
    pricing: Pricing | None = None,
    quota: int | None = None,
    allow_file_dir: str | os.PathLike | None = None,
) -> FastAPI:
    """An OpenAI-compatible speech server around one or more models.

    ``models`` is a loaded model (``faster_dia.load(...)``), a list of loaded models, or a
    :class:`ModelRegistry` (which may hold models to load later). Admission (the waiting queue, 503 with
    ``Retry-After``) is each model's engine's. ``chunk_seconds`` is the audio per streamed chunk (or
    ``chunk_frames`` in codec frames). ``default_seed`` is used by requests that send no seed, so clients
    that cannot send one (Open WebUI, SillyTavern) still get the same voice on every request. ``/metrics``
    needs a key when keys are set, unless ``metrics_public``. ``asr_model`` is the Whisper model of
    ``/v1/audio/transcriptions`` (see ``faster_dia.asr.load``; None: the default), loaded on first use; it
    also transcribes voices and voice prompts given without a transcript. ``voices`` is the voice library (a
    directory or a :class:`~faster_dia.voices.VoiceLibrary`; default :func:`~faster_dia.voices.default_voices_dir`),
    shared by every hosted model. The task API (``/v1/tasks``) keeps its job store and result files in
    ``data_dir`` (default :func:`~faster_dia.server.hosted.default_data_dir`), the job store in ``database`` if
    given (a URL: ``postgresql://...``, shared by replicas that share ``data_dir`` too; default
    ``$FASTER_DIA_DATABASE``, else SQLite in ``data_dir``); its webhooks, uploads and audio URLs
    may reach non-public addresses only in the ``allow_outbound`` networks (CIDR); ``pricing`` prices its results;
    ``quota`` bounds ``/v1/dia`` requests per API key and day. Chat completions read ``file://`` audio URLs only
    under ``allow_file_dir`` (None: never).
    """
    api_keys = tuple(key for key in api_keys if key)
    if isinstance(models, ModelRegistry):
        registry = models
    else:
        loaded = list(models) if isinstance(models, (list, tuple)) else [models]
        registry = ModelRegistry([HostedModel(tts=tts) for tts in loaded], default=default_model,
                                 idle_unload=idle_unload)
    state = ServerState(models=registry, metrics=Metrics(registry), chunk_seconds=chunk_seconds,
                        chunk_frames=chunk_frames, default_seed=default_seed, metrics_public=metrics_public,
                        asr=asr_model if isinstance(asr_model, LazyRecognizer) else LazyRecognizer(asr_model),
                        api_keys=api_keys, allow_file_dir=allow_file_dir)

    if not isinstance(voices, VoiceLibrary):
        voices = VoiceLibrary(voices)
    state.voices = voices
    state.hosted = Hosted(data_dir, database=database, allow_outbound=allow_outbound, pricing=pricing,
                          quota=quota)
    registry.share(voices=voices, asr=state.asr)

    @contextlib.asynccontextmanager
    async def lifespan(app: FastAPI):
        unloader = asyncio.create_task(registry.unload_idle())
        await state.hosted.start()
        try:
            yield
        finally:
            unloader.cancel()
            await state.hosted.stop()

    app = FastAPI(title="faster-dia", version=__version__, docs_url=None, redoc_url=None, lifespan=lifespan,
                  description="OpenAI-compatible text-to-speech with the Nari Labs Dia models.")
    app.state.server = state
    install_error_handlers(app)
    install_docs(app)
    public_routes: set[str] = set()
    for name in ROUTERS:
        module = importlib.import_module(f"{__package__}.routes.{name}")
        app.include_router(module.router)
        public_routes |= getattr(module, "PUBLIC_PATHS", set())  # a router's pages that need no key
    # Added innermost first: RequestContext wraps everything, so 401/413 answers carry a request id too.
    app.add_middleware(BodyLimit, max_bytes=max_body_bytes, upload_paths=UPLOAD_PATHS,
                       max_upload_bytes=MAX_UPLOAD_BYTES + (1 << 20))
    public = ApiKeyAuth.PUBLIC_PATHS | public_routes | ({"/metrics"} if metrics_public else set())
    app.add_middleware(HostedApiKeyAuth, keys=list(api_keys), public_paths=public)
    app.add_middleware(HeadAsGet)
    app.add_middleware(RequestCounter, metrics=state.metrics)
    app.add_middleware(RequestContext)
    return app
