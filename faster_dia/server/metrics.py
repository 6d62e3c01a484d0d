"""Prometheus metrics of one server (``GET /metrics``), in a registry of its own.

Request counts come from an ASGI middleware (by route template, so unknown paths do not grow the label
set); speech timings are observed by the speech route; the state of each model (queue, running requests,
batch slots, step rate, load time, CUDA memory) is read from the engines when the metrics are scraped.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import TYPE_CHECKING

from prometheus_client import CollectorRegistry, Counter, Histogram
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from starlette.types import ASGIApp, Message, Receive, Scope, Send

if TYPE_CHECKING:
    from .registry import ModelRegistry

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"


class Metrics:
    def __init__(self, models: ModelRegistry):
        self.registry = CollectorRegistry()
        self.requests = Counter("faster_dia_requests", "HTTP requests by route and status code",
                                ["route", "method", "status"], registry=self.registry)
        self.time_to_first_audio = Histogram(
            "faster_dia_time_to_first_audio_seconds", "Seconds from a speech request to its first audio bytes",
            ["model"], registry=self.registry,
            buckets=(0.05, 0.1, 0.2, 0.3, 0.5, 0.75, 1, 1.5, 2, 3, 5, 10, 30, 60))
        self.realtime_multiple = Histogram(
            "faster_dia_realtime_multiple", "Seconds of audio per second of wall time, per finished speech request",
            ["model"], registry=self.registry, buckets=(0.25, 0.5, 1, 1.5, 2, 3, 5, 10, 20, 50, 100))
        self.audio_seconds = Counter("faster_dia_audio_seconds", "Seconds of audio sent to clients", ["model"],
                                     registry=self.registry)
        self.registry.register(_ModelCollector(models))

    def observe_speech(self, model: str, *, first_audio: float | None, audio_seconds: float, total: float) -> None:
        if first_audio is not None:
            self.time_to_first_audio.labels(model).observe(first_audio)
        if audio_seconds > 0:
            self.audio_seconds.labels(model).inc(audio_seconds)
            if total > 0:
                self.realtime_multiple.labels(model).observe(audio_seconds / total)

    def add_labels(self, **labels: str) -> None:
        """Give every series these constant labels from now on: a replica's name, so that the series of the
        replicas of one deployment can be scraped together and told apart."""
        labelled = CollectorRegistry(auto_describe=False)
        labelled.register(_Labelled(self.registry, labels))
        self.registry = labelled


class _Labelled:
    """Every sample of another registry with constant labels added."""

    def __init__(self, inner: CollectorRegistry, labels: dict[str, str]):
        self.inner = inner
        self.labels = labels

    def collect(self) -> Iterator[Metric]:
        for metric in self.inner.collect():
            out = Metric(metric.name, metric.documentation, metric.type, metric.unit)
            for sample in metric.samples:
                out.add_sample(sample.name, {**sample.labels, **self.labels}, sample.value, sample.timestamp,
                               sample.exemplar)
            yield out


class _ModelCollector:
    """Gauges read from each hosted model at scrape time."""

    def __init__(self, models: ModelRegistry):
        self.models = models

    def collect(self) -> Iterator[Metric]:
        loaded = GaugeMetricFamily("faster_dia_model_loaded", "1 while the model is in memory", labels=["model", "family"])
        load_time = GaugeMetricFamily("faster_dia_model_load_seconds", "Seconds the last load of the model took",
                                      labels=["model"])
        waiting = GaugeMetricFamily("faster_dia_requests_waiting", "Requests waiting for a batch slot", labels=["model"])
        running = GaugeMetricFamily("faster_dia_requests_running", "Requests being generated", labels=["model"])
        slots = GaugeMetricFamily("faster_dia_batch_slots_in_use", "Batch slots holding a request", labels=["model"])
        capacity = GaugeMetricFamily("faster_dia_batch_slots", "Batch slots of the model", labels=["model"])
        rate = GaugeMetricFamily("faster_dia_decoder_steps_per_second", "Recent decoder steps per second while busy",
                                 labels=["model"])
        steps = CounterMetricFamily("faster_dia_decoder_steps", "Decoder steps run since the model loaded",
                                    labels=["model"])
        devices: set[str] = set()
        for model in self.models.models:
            loaded.add_metric([model.id, model.family], 1.0 if model.tts is not None else 0.0)
            if model.load_seconds is not None:
                load_time.add_metric([model.id], model.load_seconds)
            if model.tts is None:
                continue
            stats = model.tts.engine.stats()
            waiting.add_metric([model.id], stats.waiting)
            running.add_metric([model.id], stats.running)
            slots.add_metric([model.id], stats.max_batch - model.tts.engine.generator.free_slots)
            capacity.add_metric([model.id], stats.max_batch)
            rate.add_metric([model.id], stats.steps_per_second)
            steps.add_metric([model.id], stats.steps)
            if model.tts.device.type == "cuda":
                devices.add(str(model.tts.device))
        yield from (loaded, load_time, waiting, running, slots, capacity, rate, steps)
        if devices:
            import torch

            memory = GaugeMetricFamily("faster_dia_cuda_memory_allocated_bytes", "CUDA memory allocated by tensors",
                                       labels=["device"])
            for device in sorted(devices):
                memory.add_metric([device], torch.cuda.memory_allocated(device))
            yield memory


class RequestCounter:
    """Counts every HTTP request by route template, method and status (including refusals by the
    middleware further in, such as 401 and 413)."""

    def __init__(self, app: ASGIApp, metrics: Metrics):
        self.app = app
        self.metrics = metrics

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        status = 500

        async def send_and_note(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            await send(message)

        try:
            await self.app(scope, receive, send_and_note)
        finally:
            route = scope.get("route")
            path = getattr(route, "path", None) or "unmatched"
            self.metrics.requests.labels(path, scope.get("method", ""), str(status)).inc()
