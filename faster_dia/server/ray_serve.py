"""The HTTP API of :func:`~faster_dia.server.create_app` over N replicas on Ray Serve (the ``ray`` extra).

Each replica is one Serve replica of the deployment ``FasterDia``: a process with its own models, engines and
continuous batching, running the whole FastAPI application (Serve's FastAPI ingress, built in the replica
after the models load), so every route — streaming audio, SSE, the WebSocket text stream, voices, tasks,
metrics — works unchanged through Serve's HTTP proxy.

Routing: Serve's default router picks the less loaded of two replicas by the ongoing requests each replica
reports, and never sends a replica more than ``max_ongoing_requests``. That is set to two batches of the
engine (``2 × max_batch``): one batch decoding and one waiting in the engine's queue, so a slot that frees is
filled at once from the replica's own queue, while requests beyond that wait in Serve's queue for whichever
replica frees first instead of being dealt round-robin to a busy one. An HTTP request holds one engine
request for its life (a long script's later chunks may take a few slots at once; the engine's queue absorbs
them), so ongoing requests is the engine's load as the router sees it, live, where routing stats reported by
the replicas (``record_routing_stats`` with a custom router) would arrive on a period and lag a burst. The same figure drives autoscaling
(``target_ongoing_requests`` = ``max_batch``: a replica whose batch is full asks for another).

Shared state: the voice library (``voices``), the task API's data directory (``data_dir``) and its database
(``database``) are passed to every replica and must be paths (or a database URL) that every replica reaches.

``build_app(args)`` is the application builder for ``serve run faster_dia.server.ray_serve:build_app`` and
for config files (``faster-dia ray-config``); ``run(...)`` is ``faster-dia serve --ray``.
"""

from __future__ import annotations

import inspect
import json
import logging
import os
import signal
import sys
import time
from collections.abc import Iterable
from dataclasses import asdict, dataclass, field
from typing import Any

from ..errors import FasterDiaError

log = logging.getLogger("faster_dia.server")

DEPLOYMENT = "FasterDia"
APP_NAME = "faster-dia"
#: Response header naming the replica that answered (the Serve replica id, as in the ``replica`` metric label).
REPLICA_HEADER = "x-faster-dia-replica"
#: ``max_batch`` of each replica when none is given: the engine's own default on CPU; on GPUs a moderate size
#: (``--max-batch`` uses a large GPU fully). It is fixed up front because the router's bound is made from it,
#: where plain ``serve`` sizes it to the free memory after loading.
DEFAULT_MAX_BATCH = {"cpu": 4, "gpu": 16}


@dataclass
class ServerOptions:
    """What every replica builds its server from: the models and the options of ``create_app``. Plain values
    only, so that it travels as a Serve config file's ``args``."""

    models: list[dict[str, Any]]  # {"model": ref, "options": {faster_dia.load options}}
    default_model: str | None = None
    lazy: bool = False
    idle_unload: float | None = None
    chunk_seconds: float | None = None
    default_seed: int | None = None
    metrics_public: bool = False
    voices: str | None = None
    asr_model: str | None = None
    data_dir: str | None = None
    database: str | None = None
    allow_outbound: list[str] = field(default_factory=list)
    price_per_audio_second: float = 0.0
    price_per_gpu_second: float = 0.0
    quota: int | None = None
    allow_file_dir: str | None = None

    @classmethod
    def from_args(cls, args: dict[str, Any]) -> ServerOptions:
        """Checked options from a config file's ``args`` (a ``models`` entry may be just the model's name)."""
        known = set(inspect.signature(cls).parameters)
        unknown = sorted(set(args) - known)
        if unknown:
            raise FasterDiaError(f"Unknown faster-dia application args: {', '.join(unknown)} "
                                 f"(known: {', '.join(sorted(known))}).")
        if not args.get("models"):
            raise FasterDiaError("The faster-dia application args need 'models': a list of {model, options}.")
        models = [m if isinstance(m, dict) else {"model": str(m)} for m in args["models"]]
        for m in models:
            if not isinstance(m.get("model"), str):
                raise FasterDiaError(f"Each entry of 'models' needs a 'model' (Hub id or directory), got {m!r}.")
        return cls(**{**args, "models": models})

    def as_args(self) -> dict[str, Any]:
        """The args of a config file: only what differs from the defaults, so the file stays readable."""
        defaults = ServerOptions(models=[])
        return {k: v for k, v in asdict(self).items() if k == "models" or v != getattr(defaults, k)}


def deployment_options(*, max_batch: int, replicas: int = 1, min_replicas: int | None = None,
                       max_replicas: int | None = None, gpus_per_replica: float = 0.0,
                       cpus_per_replica: float = 1.0, upscale_delay_s: float | None = None,
                       downscale_delay_s: float | None = None) -> dict[str, Any]:
    """The options of the ``FasterDia`` deployment (``Deployment.options`` / a config file's ``deployments``)."""
    if replicas < 1:
        raise FasterDiaError("--replicas must be 1 or more.")
    if gpus_per_replica < 0 or cpus_per_replica <= 0:
        raise FasterDiaError("--gpus-per-replica must be 0 or more and --cpus-per-replica above 0.")
    options: dict[str, Any] = {
        "name": DEPLOYMENT,
        "max_ongoing_requests": 2 * max_batch,
        "ray_actor_options": {"num_cpus": cpus_per_replica, "num_gpus": gpus_per_replica},
        # A replica loads its models before it is healthy; the real checkpoints take minutes on a cold disk.
        "health_check_period_s": 10.0,
        "health_check_timeout_s": 60.0,
        "graceful_shutdown_timeout_s": 30.0,
    }
    if min_replicas is None and max_replicas is None:
        options["num_replicas"] = replicas
        return options
    low = 1 if min_replicas is None else min_replicas
    high = max(low, replicas) if max_replicas is None else max_replicas
    if not 0 <= low <= high or high < 1:
        raise FasterDiaError(f"Autoscaling needs 0 <= --min-replicas <= --max-replicas and --max-replicas >= 1, "
                             f"got {low} and {high}.")
    autoscaling: dict[str, Any] = {"min_replicas": low, "max_replicas": high,
                                   "initial_replicas": min(max(low, 1), high),
                                   # A replica with a full batch is at its target: one more request wants a replica.
                                   "target_ongoing_requests": max_batch}
    if upscale_delay_s is not None:
        autoscaling["upscale_delay_s"] = upscale_delay_s
    if downscale_delay_s is not None:
        autoscaling["downscale_delay_s"] = downscale_delay_s
    options["autoscaling_config"] = autoscaling
    return options


class ReplicaHeader:
    """ASGI middleware: every HTTP response names the replica that made it (``x-faster-dia-replica``)."""

    def __init__(self, app: Any, replica: str):
        self.app = app
        self.header = (REPLICA_HEADER.encode(), replica.encode())

    async def __call__(self, scope, receive, send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return

        async def send_named(message) -> None:
            if message["type"] == "http.response.start":
                message = {**message, "headers": [*message.get("headers", []), self.header]}
            await send(message)

        await self.app(scope, receive, send_named)


#: Ray Serve reads this variable in its HTTP proxy process (set it in the cluster's environment: ``run`` does so
#: for the cluster it starts; docs/deployment.md shows KubeRay's) and adds the middlewares the function returns.
PROXY_CALLBACK_ENV = "RAY_SERVE_HTTP_PROXY_CALLBACK_IMPORT_PATH"
PROXY_CALLBACK = f"{__name__}:proxy_middlewares"


def proxy_middlewares() -> list:
    """The middlewares of Serve's HTTP proxy (through :data:`PROXY_CALLBACK_ENV`)."""
    from starlette.middleware import Middleware

    return [Middleware(ReplicaLoss)]


class ReplicaLoss:
    """Proxy middleware: a request whose replica dies ends with a clean error instead of a cut connection.

    When a replica's process dies, Serve's proxy answers a request that has no response yet with a bare 500 (or
    nothing at all) and simply stops a response that has begun. Here the first becomes a 503 in OpenAI's error
    shape with ``Retry-After`` (the other replicas take the retry, and Serve starts a new one), an SSE stream
    gets the server's ``speech.audio.error`` event, and a raw audio stream is left without its final chunk, so
    the client sees a broken transfer rather than a short file that looks complete (as the plain server does).
    """

    MESSAGE = "The replica serving this request stopped; retry the request."

    def __init__(self, app: Any):
        self.app = app

    async def __call__(self, scope, receive, send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = finished = sse = False
        held: dict | None = None  # a start message of the proxy's own bare 500, answered here instead

        async def watch(message) -> None:
            nonlocal started, finished, sse, held
            if message["type"] == "http.response.start":
                headers = dict(message.get("headers") or [])
                sse = headers.get(b"content-type", b"").startswith(b"text/event-stream")
                # faster-dia's own answers always name their replica; the proxy's do not.
                if message["status"] == 500 and REPLICA_HEADER.encode() not in headers:
                    held = message
                    return
                started = True
            elif message["type"] == "http.response.body":
                if held is not None:
                    return
                finished = not message.get("more_body", False)
            await send(message)

        try:
            await self.app(scope, receive, watch)
        except Exception:  # the proxy's failure to reach the replica: answered below
            log.warning("request to a replica failed", exc_info=True)
        if finished:
            return
        from .errors import error_body

        failure = error_body(self.MESSAGE, "server_error", code="replica_unavailable")
        try:
            if not started:
                body = json.dumps(failure).encode()
                await send({"type": "http.response.start", "status": 503,
                            "headers": [(b"content-type", b"application/json"), (b"retry-after", b"1"),
                                        (b"content-length", str(len(body)).encode())]})
                await send({"type": "http.response.body", "body": body})
            elif sse:
                event = json.dumps({"type": "speech.audio.error", **failure})
                await send({"type": "http.response.body", "body": f"data: {event}\n\n".encode()})
        except OSError:  # the client has gone (a disconnect also ends a response unfinished)
            pass


class RayMetricsExport:
    """A replica's ``/metrics``, mirrored into Ray's metrics every few seconds.

    Through the proxy a scrape of ``/metrics`` reaches one replica. Ray's metrics agent on every node exports
    what the replicas of that node record with ``ray.serve.metrics`` (Serve tags each series with its
    deployment, replica and application), so scraping the nodes' metrics ports gets every replica's series,
    named ``ray_`` + the faster-dia name. Every sample becomes a gauge (counters and histogram buckets keep
    their cumulative values, so ``rate()`` and ``histogram_quantile()`` work on them as on the originals).
    """

    PERIOD_S = 5.0

    def __init__(self, metrics: Any):
        self.metrics = metrics
        self.gauges: dict[str, Any] = {}

    def export(self) -> None:
        from ray.serve.metrics import Gauge

        for metric in self.metrics.registry.collect():
            for sample in metric.samples:
                if sample.name.endswith("_created"):
                    continue
                # Serve adds the replica tag itself (and reserves the name).
                tags = {k: v for k, v in sample.labels.items() if k != "replica"}
                gauge = self.gauges.get(sample.name)
                if gauge is None:
                    gauge = self.gauges[sample.name] = Gauge(sample.name, description=metric.documentation,
                                                             tag_keys=tuple(sorted(tags)))
                gauge.set(sample.value, tags=tags)

    def start(self) -> None:
        import threading

        def loop() -> None:
            while True:
                try:
                    self.export()
                except Exception:  # metrics must never take a replica down
                    log.warning("exporting metrics to Ray failed", exc_info=True)
                time.sleep(self.PERIOD_S)

        threading.Thread(target=loop, name="faster-dia-ray-metrics", daemon=True).start()


class FasterDiaReplica:
    """One replica: its own models and engines, and the whole HTTP application around them."""

    def __init__(self, options: dict[str, Any]):
        from .registry import ModelRegistry, ModelSpec

        self.options = ServerOptions.from_args(options)
        self.replica = _replica_id()
        specs = [ModelSpec(m["model"], dict(m.get("options") or {})) for m in self.options.models]
        self.registry = ModelRegistry.from_specs(specs, default=self.options.default_model,
                                                 idle_unload=self.options.idle_unload)
        if not self.options.lazy:
            self.registry.load_all()
        log.info("replica %s: %s loaded", self.replica, ", ".join(m.id for m in self.registry.models))

    def __serve_build_asgi_app__(self):
        from .app import create_app
        from .pricing import Pricing

        o = self.options
        # Keys come from the environment of the replica (runtime_env env_vars, a Kubernetes secret), never
        # from the config file.
        keys = [k.strip() for k in os.environ.get("FASTER_DIA_API_KEYS", "").split(",") if k.strip()]
        app = create_app(self.registry, api_keys=keys, chunk_seconds=o.chunk_seconds, default_seed=o.default_seed,
                         metrics_public=o.metrics_public, voices=o.voices, asr_model=o.asr_model,
                         data_dir=o.data_dir, database=o.database, allow_outbound=o.allow_outbound,
                         pricing=Pricing(per_audio_second=o.price_per_audio_second,
                                         per_gpu_second=o.price_per_gpu_second),
                         quota=o.quota, allow_file_dir=o.allow_file_dir)
        app.state.server.metrics.add_labels(replica=self.replica)
        RayMetricsExport(app.state.server.metrics).start()
        app.add_middleware(ReplicaHeader, replica=self.replica)
        return app

    def __del__(self):
        registry = getattr(self, "registry", None)
        if registry is not None:
            registry.close()


def _replica_id() -> str:
    from ray import serve

    try:
        return serve.get_replica_context().replica_tag
    except Exception:  # outside a replica (tests of the class itself)
        return f"pid{os.getpid()}"


def _deployment():
    from ray import serve

    return serve.deployment(serve.ingress()(FasterDiaReplica), name=DEPLOYMENT)


def build_app(args: dict[str, Any]):
    """The application builder: ``args`` are :class:`ServerOptions` fields plus an optional ``deployment``
    (the options of :func:`deployment_options`); a config file's ``deployments`` section overrides them."""
    args = dict(args)
    deployment = args.pop("deployment", None) or {}
    options = ServerOptions.from_args(args)
    return _deployment().options(**deployment).bind(asdict(options))


def config_file(options: ServerOptions, deployment: dict[str, Any], *, host: str = "0.0.0.0", port: int = 8000,
                name: str = APP_NAME) -> dict[str, Any]:
    """A Ray Serve config file (``serve run serve.yaml``, KubeRay's ``serveConfigV2``) for these options."""
    return {
        "proxy_location": "EveryNode",
        "http_options": {"host": host, "port": port},
        "applications": [{
            "name": name,
            "route_prefix": "/",
            "import_path": f"{__name__}:build_app",
            "args": options.as_args(),
            "deployments": [deployment],
        }],
    }


def run(options: ServerOptions, deployment: dict[str, Any], *, host: str, port: int,
        address: str | None = None, num_cpus: int | None = None) -> None:
    """Start a local Ray cluster (or join the one at ``address``), run the application on ``host:port`` through
    Serve's proxy, and wait until interrupted. On the way out a local cluster is shut down; on a cluster that
    was joined only this application is deleted."""
    import ray
    from ray import serve

    init: dict[str, Any] = {"include_dashboard": False, "logging_level": logging.WARNING}
    if address is not None:
        init["address"] = address
    else:
        # The cluster started here inherits this environment, its proxy included.
        os.environ.setdefault(PROXY_CALLBACK_ENV, PROXY_CALLBACK)
        if host in ("127.0.0.1", "localhost"):
            init["_node_ip_address"] = "127.0.0.1"
        if num_cpus is not None:
            init["num_cpus"] = num_cpus
    ray.init(**init)
    # A service manager stops with SIGTERM: leave through the same path as Ctrl-C, so the cluster goes too.
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
    try:
        serve.start(http_options={"host": host, "port": port})
        serve.run(_deployment().options(**deployment).bind(asdict(options)), name=APP_NAME, route_prefix="/")
        log.info("serving %s on http://%s:%d", DEPLOYMENT, host, port)
        while True:
            time.sleep(3600)
    finally:
        try:
            if address is None:
                serve.shutdown()
            else:
                serve.delete(APP_NAME)
        finally:
            ray.shutdown()


def model_entries(models: Iterable[str], codecs: Iterable[str | None], load_options: dict[str, Any]) -> list[dict]:
    """``models`` of :class:`ServerOptions` from the command line's repeated ``--model`` / ``--codec``."""
    entries = []
    for model, codec in zip(models, codecs, strict=True):
        options = {k: v for k, v in {**load_options, "codec": codec}.items() if v is not None}
        entries.append({"model": str(model), "options": options})
    return entries
