"""What the hosted-style APIs (``/v1/tasks``, ``/v1/dia``) share: the data directory with its job store and
result files, the outbound client, prices and quota, the background work (webhook deliveries, expiry), what a
restart does, and the credential forms those APIs accept.

A restart does not resume unfinished tasks: their generation lived in the model's batch slots and is gone,
the voice clips fetched for them were temporary, and the client may have moved on; re-running them unasked
would spend the GPU on work nobody may collect, and a task that crashed the server would crash it again. So
every result a stopped server left processing is failed with ``serverRestarted`` (its webhook, if any, is told
so) when a server starts (this one again, or another), finished results are kept and served until their TTL,
and webhook deliveries still pending are made. A client resends a failed task with a new ``taskUUID``.

Several servers (replicas behind one proxy) may share the job store (a PostgreSQL ``database``) and the data
directory (a path every replica reaches, like the voice library): a task is polled, its files served and its
webhooks delivered by any replica. Each server is an owner in the store, alive while its heartbeat is fresh; a
server fails, at start and with every heartbeat, only the unfinished results of owners that are gone (stopped,
crashed on this machine, or silent for the store's ``owner_timeout``), so the others' running work goes on. Voice
clips fetched for a task and files being written live in the owner's own scratch directory, removed once the owner
is gone.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import contextlib
import hashlib
import json
import logging
import os
import re
import secrets
import shutil
import time
from collections.abc import Iterable
from functools import partial
from pathlib import Path
from typing import Any

import anyio
from starlette.types import Message, Receive, Scope, Send

from ..errors import InvalidInputError
from ..voices import MAX_NAME_CHARS, MAX_SECONDS, MAX_UPLOAD_BYTES, container_suffix
from .jobstore import JobStore
from .middleware import ApiKeyAuth, _header, _send_json
from .outbound import Outbound, OutboundError
from .pricing import Pricing

log = logging.getLogger("faster_dia.server")

#: Environment variable naming the data directory.
DATA_DIR_ENV = "FASTER_DIA_DATA_DIR"
#: Environment variable with the job store's database URL (default: tasks.sqlite3 in the data directory).
DATABASE_ENV = "FASTER_DIA_DATABASE"
#: How long a finished task (its results, for polling) is kept; result files have their own TTL.
TASK_RETENTION_SECONDS = 24 * 3600
#: Webhook attempts before a delivery is given up, and the wait before the first retry (doubling, at most
#: MAX_RETRY_SECONDS).
WEBHOOK_ATTEMPTS = 8
RETRY_SECONDS = 1.0
MAX_RETRY_SECONDS = 300.0
#: Upload attempts (HTTP PUT) per result; an upload that keeps failing fails its result.
UPLOAD_ATTEMPTS = 3
#: Seconds between sweeps for expired files and tasks.
SWEEP_SECONDS = 60.0
#: Seconds between heartbeats; each also fails the unfinished results of owners found gone (well within the
#: store's owner timeout, so that a live server is never taken for gone).
HEARTBEAT_SECONDS = 10.0


def default_data_dir() -> Path:
    """``$FASTER_DIA_DATA_DIR``, else ``$XDG_DATA_HOME/faster-dia/server`` (``~/.local/share/...``)."""
    if os.environ.get(DATA_DIR_ENV):
        return Path(os.environ[DATA_DIR_ENV]).expanduser()
    data = os.environ.get("XDG_DATA_HOME") or os.path.join("~", ".local", "share")
    return Path(data).expanduser() / "faster-dia" / "server"


def restart_error(task_uuid: str) -> dict[str, Any]:
    """The error of a result that a restart found unfinished, in the task API's shape."""
    return {"code": "serverRestarted", "type": "serverError", "parameter": None, "taskUUID": task_uuid,
            "message": "The server that was generating this result stopped; send the task again with a new "
                       "taskUUID."}


class Hosted:
    """The hosted APIs' state, owned by the app; ``start`` and ``stop`` run in its lifespan.

    ``database`` is the job store's URL (``postgresql://...`` or ``sqlite:///path``; default ``$FASTER_DIA_DATABASE``,
    else ``tasks.sqlite3`` in the data directory). Servers that share a database must share the data directory."""

    def __init__(self, data_dir: str | os.PathLike | None = None, *, database: str | None = None,
                 allow_outbound: Iterable[str] = (), pricing: Pricing | None = None, quota: int | None = None):
        self.data_dir = Path(data_dir) if data_dir is not None else default_data_dir()
        self.files_dir = self.data_dir / "files"
        self.scratch_root = self.data_dir / "scratch"
        try:
            for directory in (self.files_dir, self.scratch_root):
                directory.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise InvalidInputError(f"Cannot use {self.data_dir} as the data directory: {exc.strerror or exc}.",
                                    param="data_dir") from exc
        self.store = JobStore(database or os.environ.get(DATABASE_ENV) or self.data_dir / "tasks.sqlite3")
        # This server's voice clips fetched for running tasks, and result files being written.
        self.scratch_dir = self.scratch_root / self.store.owner
        self.outbound = Outbound(allow_outbound)
        self.pricing = pricing or Pricing()
        if quota is not None and (isinstance(quota, bool) or not isinstance(quota, int) or quota < 0):
            raise InvalidInputError("quota must be a whole number of requests, 0 or more.", param="quota")
        self.quota = quota
        self.retry_seconds = RETRY_SECONDS
        self.sweep_seconds = SWEEP_SECONDS
        self.heartbeat_seconds = HEARTBEAT_SECONDS
        self.task_retention = TASK_RETENTION_SECONDS
        self._jobs: set[asyncio.Task] = set()
        self._loops: list[asyncio.Task] = []
        self._wake: asyncio.Event | None = None

    def now(self) -> float:
        return self.store.clock()

    async def db(self, method: Any, *args: Any, **kwargs: Any) -> Any:
        """Run a job store call off the event loop (it may wait for the disk)."""
        return await anyio.to_thread.run_sync(lambda: method(*args, **kwargs))

    # ------------------------------------------------------------------ lifecycle

    async def start(self) -> None:
        """Fail the results that gone owners (a previous run of this server among them) left unfinished, join the
        live owners, then start delivering, sweeping and sending heartbeats."""
        self._wake = asyncio.Event()
        await self._fail_gone_owners()
        await self.db(self.store.join)
        await anyio.to_thread.run_sync(partial(self.scratch_dir.mkdir, exist_ok=True))
        self._loops = [asyncio.create_task(self._deliver_forever()), asyncio.create_task(self._sweep_forever()),
                       asyncio.create_task(self._heartbeat_forever())]

    async def stop(self) -> None:
        for task in [*self._loops, *self._jobs]:
            task.cancel()
        for task in [*self._loops, *self._jobs]:
            with contextlib.suppress(BaseException):
                await task
        # Gone from now on: whatever this server left unfinished is failed by the next server to look (this one
        # restarted, or another replica), without waiting out the owner timeout.
        try:
            await self.db(self.store.release)
        except Exception:
            log.exception("the job store did not hear that this server stops; its tasks fail when its heartbeat "
                          "is old")
        await self.outbound.aclose()  # the store stays open: an app may be started again

    async def _fail_gone_owners(self) -> None:
        def failure(task_uuid: str, index: int) -> tuple[dict, dict]:
            error = restart_error(task_uuid)
            return error, {"errors": [error]}

        failed = await self.db(self.store.fail_unfinished, failure)
        if failed:
            log.warning("tasks %s were unfinished when the server running them stopped; their open results failed",
                        ", ".join(failed))
            self.wake_deliveries()
        live = await self.db(self.store.live_owners)
        await anyio.to_thread.run_sync(self._remove_gone_scratch, live)

    def _remove_gone_scratch(self, live: set[str]) -> None:
        """Remove the scratch directories of gone owners. One younger than the owner timeout is spared: its owner
        may be starting, not yet heartbeating."""
        young = time.time() - self.store.owner_timeout
        for entry in self.scratch_root.iterdir():
            if entry.name in live:
                continue
            with contextlib.suppress(OSError):
                if entry.stat().st_mtime < young:
                    shutil.rmtree(entry) if entry.is_dir() else entry.unlink()

    async def _heartbeat_forever(self) -> None:
        while True:
            await asyncio.sleep(self.heartbeat_seconds)
            try:
                if not await self.db(self.store.heartbeat):
                    # Taken for gone long enough to be forgotten (a pause, the database out of reach): its tasks
                    # were failed; it serves new ones.
                    log.warning("this server was taken for stopped by the job store; joining again")
                    await self.db(self.store.join)
                await self._fail_gone_owners()
            except Exception:
                log.exception("the job store's heartbeat failed")

    def spawn(self, coroutine: Any) -> asyncio.Task:
        """Run a task's work in the background, kept referenced until it ends (cancelled at shutdown)."""
        job = asyncio.create_task(coroutine)
        self._jobs.add(job)
        job.add_done_callback(self._jobs.discard)
        return job

    # ------------------------------------------------------------------ result files

    def save_file(self, data: bytes, *, task_uuid: str, extension: str, content_type: str, ttl: float) -> str:
        """Keep ``data`` for ``ttl`` seconds; returns its unguessable id (the name under /v1/files/)."""
        file_id = secrets.token_urlsafe(24) + extension
        path = self.files_dir / file_id
        # The row first: a crash before the file is written leaves a row without a file (a 404), never a file
        # nobody will delete.
        self.store.add_file(file_id, task_uuid=task_uuid, path=str(path), content_type=content_type,
                            expires=self.now() + ttl)
        staging = self.scratch_dir / f"partial-{file_id}"  # same file system: the rename is atomic
        staging.write_bytes(data)
        os.replace(staging, path)
        return file_id

    async def sweep(self) -> None:
        """Delete expired files and forget old tasks."""
        for path in await self.db(self.store.sweep):
            with contextlib.suppress(FileNotFoundError):
                os.unlink(path)

    async def _sweep_forever(self) -> None:
        while True:
            try:
                await self.sweep()
            except Exception:
                log.exception("sweeping expired results failed")
            await asyncio.sleep(self.sweep_seconds)

    # ------------------------------------------------------------------ webhooks

    def wake_deliveries(self) -> None:
        if self._wake is not None:
            self._wake.set()

    async def _deliver_forever(self) -> None:
        while True:
            self._wake.clear()
            try:
                due = await self.db(self.store.due_deliveries)
                await asyncio.gather(*(self._deliver(d) for d in due))
                upcoming = await self.db(self.store.next_delivery_time)
            except Exception:
                log.exception("webhook deliveries failed")
                upcoming = None
            if due:
                continue
            wait = 5.0 if upcoming is None else min(5.0, max(0.0, upcoming - self.now()))
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wake.wait(), wait)

    async def _deliver(self, delivery: Any) -> None:
        attempt = delivery.attempts + 1
        try:
            status = await self.outbound.post_json(delivery.url, delivery.body, param="webhookURL")
            error = None if 200 <= status < 300 else f"HTTP {status}"
        except OutboundError as exc:
            error = exc.message
        if error is None:
            log.info("webhook %s delivered (attempt %d)", delivery.task_uuid, attempt)
            await self.db(self.store.delivery_done, delivery.id)
            return
        if attempt >= WEBHOOK_ATTEMPTS:
            log.warning("webhook %s failed: %s (attempt %d); given up", delivery.task_uuid, error, attempt)
            await self.db(self.store.delivery_failed, delivery.id, error, None)
            return
        wait = min(self.retry_seconds * 2 ** (attempt - 1), MAX_RETRY_SECONDS)
        log.warning("webhook %s failed: %s (attempt %d); retrying in %.1f s", delivery.task_uuid, error, attempt, wait)
        await self.db(self.store.delivery_failed, delivery.id, error, self.now() + wait)

    # ------------------------------------------------------------------ uploads

    async def upload(self, url: str, data: bytes, content_type: str, task_uuid: str) -> None:
        """PUT a result file to the client's ``uploadEndpoint``, retried; OutboundError when it keeps failing."""
        for attempt in range(1, UPLOAD_ATTEMPTS + 1):
            try:
                status = await self.outbound.put(url, data, content_type=content_type, param="uploadEndpoint")
                if 200 <= status < 300:
                    log.info("upload %s done (attempt %d)", task_uuid, attempt)
                    return
                error = OutboundError(f"The upload endpoint answered HTTP {status}.", param="uploadEndpoint",
                                      code="upload_failed")
            except OutboundError as exc:
                error = exc
            log.warning("upload %s failed: %s (attempt %d)", task_uuid, error.message, attempt)
            if attempt < UPLOAD_ATTEMPTS:
                await asyncio.sleep(self.retry_seconds * 2 ** (attempt - 1))
        raise error

    # ------------------------------------------------------------------ voice clips

    async def audio_reference(self, value: Any, param: str, voices: Any = None) -> Any:
        """A voice reference as the hosted APIs take it: a stored voice's name or id (the :class:`Voice`), or
        audio as an http(s) URL (fetched, SSRF-safe), a data URI or base64, kept in a scratch file (its path)
        until :meth:`discard` — the models transcribe a clip's path automatically."""
        if not isinstance(value, str) or not value.strip():
            raise InvalidInputError(f"{param} must be a non-empty string.", param=param)
        value = value.strip()
        if value.startswith("data:"):
            header, comma, payload = value.partition(",")
            if not comma or not header.endswith(";base64"):
                raise InvalidInputError(f"{param} is a data URI without base64 data.", param=param)
            return await self.keep_clip(_base64(payload, param), param)
        if value.lower().startswith(("http://", "https://")):
            return await self.keep_clip(await self.outbound.get(value, param=param, max_bytes=MAX_UPLOAD_BYTES), param)
        voice = voices.find(value) if voices is not None and len(value) <= MAX_NAME_CHARS else None
        if voice is not None:
            return voice
        if len(value) >= 64 and _BASE64.fullmatch(value):
            return await self.keep_clip(_base64(value, param), param)
        raise InvalidInputError(f"{param} is not a stored voice, an http(s) URL, a data URI or base64 audio.",
                                param=param)

    async def keep_clip(self, data: bytes, param: str) -> Path:
        """``data`` (an audio file) in a scratch file, once it is known to decode as a clip of at most
        MAX_SECONDS seconds."""
        from ..audio import decode_audio
        from ..speech import in_output_pool

        if len(data) > MAX_UPLOAD_BYTES:
            raise InvalidInputError(f"{param} is over the {MAX_UPLOAD_BYTES >> 20} MiB limit.", param=param)
        await in_output_pool(partial(decode_audio, data, max_seconds=MAX_SECONDS + 0.5, max_bytes=MAX_UPLOAD_BYTES,
                                     param=param))
        path = self.scratch_dir / f"{secrets.token_hex(16)}{container_suffix(data) or '.audio'}"
        await anyio.to_thread.run_sync(path.write_bytes, data)
        return path

    @staticmethod
    def discard(references: Iterable[Any]) -> None:
        for reference in references:
            if isinstance(reference, Path):
                with contextlib.suppress(OSError):
                    reference.unlink()

    # ------------------------------------------------------------------ quota

    async def take_quota(self, key: str | None) -> bool:
        """Count one request of ``key`` (an API key; None: callers without one) against today's quota."""
        if self.quota is None:
            return True
        who = "anonymous" if key is None else hashlib.sha256(key.encode()).hexdigest()[:32]
        day = time.strftime("%Y-%m-%d", time.gmtime(self.now()))
        return await self.db(self.store.take_quota, who, day, self.quota)


_BASE64 = re.compile(r"[A-Za-z0-9+/_\-\s]+={0,2}\s*")


_URL_SAFE = str.maketrans("-_", "+/")


def _base64(text: str, param: str) -> bytes:
    compact = re.sub(r"\s+", "", text)
    try:
        # Either alphabet (standard or URL-safe), padding optional.
        return base64.b64decode((compact + "=" * (-len(compact) % 4)).translate(_URL_SAFE), validate=True)
    except (binascii.Error, ValueError) as exc:
        raise InvalidInputError(f"{param} is not valid base64.", param=param) from exc


def voice_options(tts: Any, references: list[Any]) -> dict[str, Any]:
    """The model options that give speaker 1 (and 2) the voices of ``references`` (stored voices or clip
    paths): Dia-1.6B's ``voices``; Dia2's voice prefixes, a stored voice with its transcript."""
    if not references:
        return {}
    if tts.family == "dia2":
        options: dict[str, Any] = {}
        for n, reference in enumerate(references, 1):
            if isinstance(reference, Path):
                options[f"prefix_speaker_{n}"] = str(reference)
                continue
            options[f"prefix_speaker_{n}"] = str(reference.audio_path)
            if reference.words:
                options[f"prefix_transcript_{n}"] = [tuple(w) for w in reference.words]
            elif reference.transcript:
                options[f"prefix_transcript_{n}"] = re.sub(r"^\s*\[S[12]\]\s*", "", reference.transcript)
        return options
    return {"voices": {f"S{n}": str(r) if isinstance(r, Path) else r.id for n, r in enumerate(references, 1)}}


# ---------------------------------------------------------------------- credentials

#: How much of a /v1/tasks body is read to find a leading authentication task (it is small and comes first).
_AUTH_PREFIX_BYTES = 64 * 1024


class HostedApiKeyAuth(ApiKeyAuth):
    """:class:`~faster_dia.server.middleware.ApiKeyAuth` plus the credential forms of the hosted APIs:

    - ``/v1/dia`` takes Segmind's ``x-api-key`` header as well as ``Authorization: Bearer``;
    - ``/v1/tasks`` takes a leading ``{"taskType": "authentication", "apiKey": ...}`` task instead of the header
      (Runware's form), and answers 401 in the task API's own error shape;
    - result files under ``/v1/files/`` need no key: their ids are unguessable, like presigned URLs, so that a
      client can hand a result's URL on."""

    PUBLIC_PREFIXES = (*ApiKeyAuth.PUBLIC_PREFIXES, "/v1/files/")

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or not self.keys or scope.get("method") != "POST":
            await super().__call__(scope, receive, send)
            return
        path = scope.get("path", "")
        if path == "/v1/dia" and _header(scope, b"authorization") is None:
            key = _header(scope, b"x-api-key")
            if key is not None:
                scope = {**scope, "headers": [*scope.get("headers", ()), (b"authorization", b"Bearer " + key.strip())]}
        elif path == "/v1/tasks" and not self._authorized(scope):
            await self._task_credentials(scope, receive, send)
            return
        await super().__call__(scope, receive, send)

    async def _task_credentials(self, scope: Scope, receive: Receive, send: Send) -> None:
        read: list[Message] = []
        prefix = b""
        complete = False
        key: bytes | None = None
        while len(prefix) <= _AUTH_PREFIX_BYTES:
            message = await receive()
            read.append(message)
            if message["type"] == "http.disconnect":
                return
            prefix += message.get("body", b"")
            complete = not message.get("more_body", False)
            found, key = _leading_api_key(prefix)
            if found or complete:
                break
        if key is not None:
            token = key.strip()
            matched = False
            for known in self.keys:
                matched |= secrets.compare_digest(token, known)
            if matched:
                replay = list(read)

                async def replayed() -> Message:
                    return replay.pop(0) if replay else await receive()

                await self.app(scope, replayed, send)
                return
        wrong = key is not None or _header(scope, b"authorization") is not None
        message = ("Incorrect API key provided." if wrong else
                   "No API key provided: send 'Authorization: Bearer YOUR_KEY' or start the task array with "
                   '{"taskType": "authentication", "apiKey": "YOUR_KEY"}.')
        await _send_json(send, 401, {"errors": [{"code": "invalidApiKey", "message": message, "parameter": "apiKey",
                                                 "type": "authentication", "taskUUID": None}]},
                         [(b"www-authenticate", b"Bearer")])


def _leading_api_key(prefix: bytes) -> tuple[bool, bytes | None]:
    """(decided, key): the apiKey of an authentication task that opens the JSON array in ``prefix``.
    Undecided while the first element may still be incomplete."""
    text = prefix.decode("utf-8", errors="ignore").lstrip()
    if not text:
        return False, None
    if not text.startswith("["):
        return True, None
    try:
        first, _ = json.JSONDecoder().raw_decode(text[1:].lstrip())
    except ValueError:
        return False, None
    if isinstance(first, dict) and first.get("taskType") == "authentication" and isinstance(first.get("apiKey"), str):
        return True, first["apiKey"].encode()
    return True, None
