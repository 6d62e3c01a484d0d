"""The models a server hosts: ids and aliases, loading at start or on first use, unloading when idle.

Each :class:`HostedModel` is one checkpoint. Requests name it by its id (the Hub id, or the directory name of
a local model: never the server's filesystem path) or a short alias; OpenAI's model names pick the default
model. A model loads in a worker thread while requests for it wait (they are not refused), and a model idle
for ``idle_unload`` seconds gives its memory back and loads again on its next request.
"""

from __future__ import annotations

import asyncio
import gc
import logging
import time
from dataclasses import dataclass, field
from typing import Any

import anyio

from ..errors import InvalidInputError, ModelNotFoundError
from ..loading import family_of, public_id, read_config

log = logging.getLogger("faster_dia.server")

#: Names OpenAI clients send; they pick the default model.
OPENAI_NAMES = ("tts-1", "tts-1-hd", "gpt-4o-mini-tts")
#: Short names of the published checkpoints.
KNOWN_ALIASES = {
    "nari-labs/dia-1.6b": "dia",
    "nari-labs/dia-1.6b-0626": "dia-0626",
    "nari-labs/dia2-1b": "dia2-1b",
    "nari-labs/dia2-2b": "dia2-2b",
}
#: An alias of the first hosted model of each family, so that ``dia`` and ``dia2`` always name something.
FAMILY_ALIASES = {"dia1": "dia", "dia2": "dia2"}
#: The sample rate of each family's codec, shown for models that are not loaded yet.
FAMILY_SAMPLE_RATES = {"dia1": 44100, "dia2": 24000}


@dataclass
class ModelSpec:
    """A model to host: its reference (Hub id or directory) and the options of ``faster_dia.load``."""

    model: str
    options: dict[str, Any] = field(default_factory=dict)


class HostedModel:
    """One model of the server, loaded or not."""

    #: Called with each model once it is loaded (the server gives it the shared voice library and recognizer).
    on_load: Any = None

    def __init__(self, *, spec: ModelSpec | None = None, tts: Any = None, family: str | None = None):
        if spec is None and tts is None:
            raise ValueError("a hosted model needs a spec or a loaded model")
        self.spec = spec
        self.tts = tts
        self.family = family or (tts.family if tts is not None else "")
        self.id = tts.model_id if tts is not None else public_id(spec.model)
        self.aliases: list[str] = []
        self.error: str | None = None
        self.load_seconds: float | None = None
        self.last_used = time.monotonic()
        self.active = 0  # requests in progress
        self._lock: asyncio.Lock | None = None

    @property
    def state(self) -> str:
        if self.tts is not None:
            return "loaded"
        if self.loading:
            return "loading"
        return "failed" if self.error else "unloaded"

    @property
    def sample_rate(self) -> int | None:
        return self.tts.sample_rate if self.tts is not None else FAMILY_SAMPLE_RATES.get(self.family)

    @property
    def device(self) -> str | None:
        if self.tts is not None:
            return str(self.tts.device)
        return None if self.spec is None else self.spec.options.get("device")

    @property
    def quantize(self) -> str | None:
        if self.tts is not None:
            return getattr(self.tts, "quantize", None)
        return None if self.spec is None else self.spec.options.get("quantize")

    @property
    def weight_bytes(self) -> int | None:
        """The loaded network's weight bytes (quantized weights as stored); None when not loaded."""
        network = getattr(self.tts, "model", None)
        from torch import nn

        if not isinstance(network, nn.Module):  # not loaded, or a network that is not a module (Voxtral's)
            return None
        from ..models.quantize import weight_bytes

        return weight_bytes(network)

    @property
    def reloadable(self) -> bool:
        return self.spec is not None

    def load_now(self) -> None:
        """Load in the calling thread (at server start)."""
        import faster_dia

        started = time.perf_counter()
        log.info("loading model %s", self.id)
        try:
            self.tts = faster_dia.load(self.spec.model, **self.spec.options)
        except Exception as exc:
            self.error = str(exc)
            raise
        self.error = None
        if self.on_load is not None:
            self.on_load(self.tts)
        self.load_seconds = time.perf_counter() - started
        log.info("loaded model %s (%s) in %.1f s", self.id, self.family, self.load_seconds)

    def acquire(self) -> None:
        """A request starts using the model: the idle timer leaves it alone until the matching release."""
        self.active += 1
        self.last_used = time.monotonic()

    def release(self) -> None:
        """A request is done with the model; its idle time counts from now."""
        self.active -= 1
        self.last_used = time.monotonic()

    @property
    def loading(self) -> bool:
        """A load is under way: what it publishes belongs to the caller waiting for it, not to the idle timer."""
        return self._lock is not None and self._lock.locked()

    async def get(self) -> Any:
        """The loaded model, loading it first (in a worker thread) if needed; concurrent callers wait for the
        one load."""
        if self.tts is not None:
            return self.tts
        if self._lock is None:
            self._lock = asyncio.Lock()
        async with self._lock:
            if self.tts is None:
                await anyio.to_thread.run_sync(self.load_now)
            # Just loaded counts as just used: the idle timer must not take it from the caller about to use it
            # (set before the lock is released; the timer skips a model while its load holds the lock).
            self.last_used = time.monotonic()
        return self.tts

    def detach(self) -> Any:
        """Take the model out of service (requests from now on load it again); returns it for :meth:`free`.
        Called on the event loop, so no request can pick up a model that is being freed."""
        tts, self.tts = self.tts, None
        if tts is not None:
            log.info("unloading model %s after %.0f s without requests", self.id, time.monotonic() - self.last_used)
        return tts

    def unload(self) -> None:
        """Free the model's memory; the next request loads it again."""
        self.free(self.detach())

    def free(self, tts: Any) -> None:
        """Release a detached model's engine and memory (may run in a worker thread)."""
        if tts is None:
            return
        tts.close()
        del tts
        gc.collect()
        try:
            import torch

            if torch.cuda.is_available():
                torch.cuda.empty_cache()
        except ImportError:  # pragma: no cover - torch is a dependency
            pass
        log.info("unloaded model %s", self.id)


class ModelRegistry:
    """The hosted models, how requests name them, and the idle-unload timer."""

    def __init__(self, models: list[HostedModel], *, default: str | None = None, idle_unload: float | None = None):
        if not models:
            raise ValueError("a server hosts at least one model")
        if idle_unload is not None and idle_unload <= 0:
            raise InvalidInputError("idle_unload must be a positive number of seconds.", param="idle_unload")
        self.models = models
        self.idle_unload = idle_unload
        self._names: dict[str, HostedModel] = {}
        ids = [m.id for m in models]
        for model in models:
            if ids.count(model.id) > 1:
                raise InvalidInputError(f"Two models are called {model.id!r}; host each model once.", param="model")
            self._names[model.id] = model
        for model in models:
            names = [KNOWN_ALIASES.get(model.id.lower()), KNOWN_ALIASES.get(_spec_name(model)),
                     FAMILY_ALIASES.get(model.family)]
            for name in names:
                if name and name not in self._names:
                    self._names[name] = model
                    model.aliases.append(name)
        self.default = self.resolve(default) if default is not None else models[0]
        for name in OPENAI_NAMES:
            self._names.setdefault(name, self.default)
            if self._names[name] is self.default:
                self.default.aliases.append(name)

    @classmethod
    def from_specs(cls, specs: list[ModelSpec], **kwargs: Any) -> ModelRegistry:
        """Hosted models for ``specs``, their families read from their config files (nothing loaded yet)."""
        models = []
        for spec in specs:
            config, source = read_config(spec.model, spec.options.get("revision"))
            models.append(HostedModel(spec=spec, family=family_of(config, source).FAMILY))
        return cls(models, **kwargs)

    def names(self) -> list[str]:
        """Every name a request may use: ids first, then aliases."""
        return [m.id for m in self.models] + [n for m in self.models for n in m.aliases]

    def resolve(self, name: str | None) -> HostedModel:
        if name is None:
            return self.default
        model = self._names.get(name)
        if model is None:
            raise ModelNotFoundError(
                f"The model '{name}' does not exist on this server; use one of: {', '.join(self.names())}.",
                param="model", code="model_not_found",
            )
        return model

    def share(self, *, voices: Any = None, asr: Any = None) -> None:
        """Give every model, loaded now or later, the server's voice library and speech recognizer."""

        def attach(tts: Any) -> None:
            if voices is not None:
                tts.voices = voices
            if asr is not None:
                tts.asr = asr

        for model in self.models:
            model.on_load = attach
            if model.tts is not None:
                attach(model.tts)

    def load_all(self) -> None:
        """Load every model that is not loaded (server start without ``--lazy``)."""
        for model in self.models:
            if model.tts is None:
                model.load_now()

    async def unload_idle(self) -> None:
        """Unload models idle for ``idle_unload`` seconds; runs until cancelled."""
        if self.idle_unload is None:
            return
        while True:
            await asyncio.sleep(min(self.idle_unload / 4, 5.0))
            now = time.monotonic()
            for model in self.models:
                if (model.tts is not None and model.reloadable and model.active == 0 and not model.loading
                        and now - model.last_used >= self.idle_unload):
                    await anyio.to_thread.run_sync(model.free, model.detach())

    def close(self) -> None:
        for model in self.models:
            if model.reloadable:
                model.unload()


def _spec_name(model: HostedModel) -> str | None:
    return None if model.spec is None else str(model.spec.model).lower()
