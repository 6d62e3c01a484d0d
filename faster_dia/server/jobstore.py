"""The durable state of the hosted task API: tasks, their results, the files results are served from, webhook
deliveries still to make, quota counts, and the server processes (owners) that run tasks. On SQLAlchemy Core: an
SQLite file by default, or PostgreSQL, which several server replicas can share.

The task API uses nothing else:

==============================================  ==========================================================
``create_task(uuid, ...) -> bool``              reserve a task UUID with its results, owned by this store's
                                                ``owner`` (False: the UUID is in use)
``get_task(uuid) -> TaskRecord | None``         a task and its results
``finish_result(uuid, index, ...)``             record one result (success or error) and, in the same
                                                transaction, its webhook delivery
``join() / heartbeat() / release()``            this owner is alive / still is (every few seconds) / has
                                                stopped
``fail_unfinished(error) -> list[str]``         every result still processing whose owner is gone fails (and
                                                its webhook is queued), the deliveries such an owner was
                                                attempting are due again; the UUIDs of the tasks touched
``live_owners() -> set[str]``                   the owners alive now
``add_file / get_file``                         result files and their expiry
``due_deliveries / delivery_done /              webhook deliveries: claim the ones due, success, a failed
delivery_failed``                               attempt
``sweep() -> list[str]``                        forget expired files (their paths are returned for deleting)
                                                and tasks past their retention
``take_quota(key, day, limit) -> bool``         count one use against a daily limit (False: none left)
==============================================  ==========================================================

Bodies (results, errors, webhook payloads) are JSON documents the store keeps as given. Times are seconds since
the epoch from ``clock`` (``time.time``; tests move it); replicas on several hosts compare each other's
heartbeats, so their clocks must agree to well within ``owner_timeout`` (NTP does). Every method is one
transaction and is safe to call from any thread.

Several processes may share one database. Each store is one owner (a random id): the tasks it creates are its
own, and it proves it is alive with :meth:`join`, then :meth:`heartbeat`. An owner is gone when its last heartbeat
is older than ``owner_timeout``, when it released itself (a clean stop), when it never joined, or at once when it
was a process on this machine that no longer exists (a crashed server restarted on the same machine fails its
leftovers without waiting out the timeout). Only a gone owner's unfinished results are failed, so a starting
replica leaves the others' running work alone. Webhook deliveries are claimed for ``delivery_lease`` seconds
(``FOR UPDATE SKIP LOCKED`` on PostgreSQL; SQLite takes its one write lock), so two replicas never make the same
attempt; the claims of an owner found gone are due again at once, and any claim when its lease runs out.

SQLite: WAL mode (readers never wait for the writer), one writer at a time (``BEGIN IMMEDIATE``). PostgreSQL:
read committed, with the rows a decision depends on locked (the task while its results settle, the due
deliveries while they are claimed) and quota counted in one conditional upsert.
"""

from __future__ import annotations

import datetime
import json
import os
import re
import socket
import threading
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import sqlalchemy as sa
from sqlalchemy.dialects import postgresql, sqlite

from ..errors import InvalidInputError

PROCESSING, SUCCESS, ERROR = "processing", "success", "error"

#: An owner whose heartbeat is older than this is gone (its unfinished results fail).
OWNER_TIMEOUT_SECONDS = 60.0
#: How long a claimed webhook delivery stays claimed: longer than one attempt may take (the outbound client's
#: deadline), so that only a dead claimer's delivery is claimed again.
DELIVERY_LEASE_SECONDS = 120.0

_metadata = sa.MetaData()
_id = sa.BigInteger().with_variant(sa.Integer(), "sqlite")  # SQLite's AUTOINCREMENT needs INTEGER exactly

tasks = sa.Table(
    "tasks", _metadata,
    sa.Column("task_uuid", sa.Text, primary_key=True),
    sa.Column("task_type", sa.Text, nullable=False),
    sa.Column("model", sa.Text, nullable=False),
    sa.Column("status", sa.Text, nullable=False),
    sa.Column("number_results", sa.Integer, nullable=False),
    sa.Column("webhook_url", sa.Text),
    sa.Column("created", sa.Float, nullable=False),
    sa.Column("retain_until", sa.Float, nullable=False),
    sa.Column("owner", sa.Text),  # the store that runs it (added to older files by _migrate)
    sa.Index("tasks_by_status", "status"),
)
results = sa.Table(
    "results", _metadata,
    sa.Column("task_uuid", sa.Text, sa.ForeignKey("tasks.task_uuid", ondelete="CASCADE"), primary_key=True),
    sa.Column("result_index", sa.Integer, primary_key=True),
    sa.Column("status", sa.Text, nullable=False),
    sa.Column("body", sa.Text),
    sa.Column("finished", sa.Float),
)
files = sa.Table(
    "files", _metadata,
    sa.Column("file_id", sa.Text, primary_key=True),
    sa.Column("task_uuid", sa.Text, nullable=False),
    sa.Column("path", sa.Text, nullable=False),
    sa.Column("content_type", sa.Text, nullable=False),
    sa.Column("expires", sa.Float, nullable=False),
    sa.Index("files_by_expiry", "expires"),
)
deliveries = sa.Table(
    "deliveries", _metadata,
    sa.Column("id", _id, primary_key=True, autoincrement=True),
    sa.Column("task_uuid", sa.Text, nullable=False),
    sa.Column("url", sa.Text, nullable=False),
    sa.Column("body", sa.Text, nullable=False),
    sa.Column("attempts", sa.Integer, nullable=False, server_default="0"),
    sa.Column("next_attempt", sa.Float, nullable=False),  # also the end of a claim's lease
    sa.Column("state", sa.Text, nullable=False, server_default="pending"),
    sa.Column("last_error", sa.Text),
    sa.Column("claimed_by", sa.Text),  # the owner making the attempt now
    sa.Index("deliveries_due", "state", "next_attempt"),
    sqlite_autoincrement=True,
)
usage = sa.Table(
    "usage", _metadata,
    sa.Column("key", sa.Text, primary_key=True),
    sa.Column("day", sa.Text, primary_key=True),
    sa.Column("count", sa.Integer, nullable=False),
)
owners = sa.Table(
    "owners", _metadata,
    sa.Column("owner", sa.Text, primary_key=True),
    sa.Column("machine", sa.Text),  # see _machine(); with pid, lets a store on the same machine see a crash
    sa.Column("pid", sa.Integer),
    sa.Column("heartbeat", sa.Float, nullable=False),
)


@dataclass
class ResultRecord:
    index: int
    status: str  # processing | success | error
    body: dict[str, Any] | None  # the result, or the error, as answered


@dataclass
class TaskRecord:
    task_uuid: str
    task_type: str
    model: str
    status: str  # processing until every result is in; then success, or error if any result failed
    number_results: int
    webhook_url: str | None
    created: float
    results: list[ResultRecord] = field(default_factory=list)


@dataclass
class FileRecord:
    file_id: str
    task_uuid: str
    path: str
    content_type: str
    expires: float


@dataclass
class Delivery:
    id: int
    task_uuid: str
    url: str
    body: dict[str, Any]
    attempts: int  # made so far


def database_url(target: str | os.PathLike) -> sa.URL:
    """``target`` as a database URL: a path is an SQLite file; ``postgresql://`` (or ``postgres://``) gets the
    psycopg 3 driver. Only SQLite and PostgreSQL are accepted (the store's upserts and locks are theirs)."""
    if isinstance(target, os.PathLike) or "://" not in str(target):
        return sa.URL.create("sqlite", database=str(Path(target).expanduser()))
    try:
        url = sa.make_url(str(target))
    except (sa.exc.ArgumentError, ValueError) as exc:
        shown = re.sub(r"(//[^/@:]*:)[^/@]*@", r"\1***@", str(target))  # no password in logs
        raise InvalidInputError(f"The database URL {shown} is not a URL SQLAlchemy can read ({exc}).",
                                param="database") from exc
    backend, _, driver = url.drivername.partition("+")
    if backend in ("postgresql", "postgres"):
        return url.set(drivername=f"postgresql+{driver or 'psycopg'}")
    if backend == "sqlite":
        if not url.database or url.database == ":memory:":
            raise InvalidInputError("An SQLite database URL needs a file (sqlite:///path/to/tasks.sqlite3): an "
                                    "in-memory database is one per connection and forgets everything.",
                                    param="database")
        return url
    raise InvalidInputError(f"The database must be SQLite (sqlite:///path) or PostgreSQL (postgresql://...), got "
                            f"{url.drivername}://.", param="database")


class JobStore:
    """Tasks, results, files and deliveries in ``target``: an SQLite file path, or a database URL
    (``sqlite:///path``, ``postgresql://user:password@host/db``). The schema is created if missing.

    ``owner`` names this store's process among those sharing the database (default: a new random id).
    A database that cannot be used raises :class:`~faster_dia.errors.InvalidInputError` naming it."""

    def __init__(self, target: str | os.PathLike, *, clock: Callable[[], float] = time.time,
                 owner: str | None = None, owner_timeout: float = OWNER_TIMEOUT_SECONDS,
                 delivery_lease: float = DELIVERY_LEASE_SECONDS):
        self.url = database_url(target)
        self.clock = clock
        self.owner = owner or uuid.uuid4().hex
        self.owner_timeout = owner_timeout
        self.delivery_lease = delivery_lease
        # As the user wrote it, less the password and the driver name.
        self.name = self.url.set(drivername=self.url.get_backend_name()).render_as_string(hide_password=True)
        self.sqlite = self.url.get_backend_name() == "sqlite"
        try:
            if self.sqlite:
                Path(self.url.database).expanduser().parent.mkdir(parents=True, exist_ok=True)
                self.engine = sa.create_engine(self.url, connect_args={"timeout": 30.0})
                sa.event.listen(self.engine, "connect", _sqlite_connect)
                sa.event.listen(self.engine, "begin", _sqlite_begin)
            else:
                # pre_ping: a connection the server closed (a restart, an idle timeout) is replaced, not used.
                # The pool's default bound (15 connections) leaves room for several replicas within PostgreSQL's
                # default 100.
                self.engine = sa.create_engine(self.url, pool_pre_ping=True, connect_args={"connect_timeout": 10})
            self._create_schema()
        except ImportError as exc:
            raise InvalidInputError(f"The database {self.name} needs its driver: pip install 'faster-dia[postgres]' "
                                    f"({exc}).", param="database") from exc
        except (sa.exc.SQLAlchemyError, OSError) as exc:
            reason = getattr(exc, "orig", None) or exc
            raise InvalidInputError(f"Cannot use the database {self.name}: {str(reason).strip()}",
                                    param="database") from exc

    def close(self) -> None:
        self.engine.dispose()

    def _create_schema(self) -> None:
        with self.engine.begin() as db:
            if not self.sqlite:
                # Replicas starting together would race to create the same tables; one at a time.
                db.execute(sa.text("SELECT pg_advisory_xact_lock(7253046102)"))
            _metadata.create_all(db)
            # Columns added since the first release (a file from before owners: its tasks have none, which is
            # gone, as a restart).
            for table, column in ((tasks, "owner"), (deliveries, "claimed_by")):
                if column not in {c["name"] for c in sa.inspect(db).get_columns(table.name)}:
                    db.execute(sa.text(f"ALTER TABLE {table.name} ADD COLUMN {column} TEXT"))
            for index in tasks.indexes:
                index.create(db, checkfirst=True)

    def _insert(self, table: sa.Table):
        return (sqlite if self.sqlite else postgresql).insert(table)

    # ------------------------------------------------------------------ tasks

    def create_task(self, task_uuid: str, *, task_type: str, model: str, number_results: int,
                    webhook_url: str | None, retain_seconds: float) -> bool:
        """Reserve ``task_uuid`` with ``number_results`` results, all processing. False if the UUID is in use
        (by any task the store still holds, whatever its outcome)."""
        now = self.clock()
        with self.engine.begin() as db:
            created = db.execute(self._insert(tasks).values(
                task_uuid=task_uuid, task_type=task_type, model=model, status=PROCESSING,
                number_results=number_results, webhook_url=webhook_url, created=now,
                retain_until=now + retain_seconds, owner=self.owner).on_conflict_do_nothing()
                .returning(tasks.c.task_uuid)).first()
            if created is None:
                return False
            db.execute(results.insert(), [{"task_uuid": task_uuid, "result_index": i, "status": PROCESSING}
                                          for i in range(number_results)])
        return True

    def get_task(self, task_uuid: str) -> TaskRecord | None:
        # One statement, so the task and its results are one snapshot.
        query = (sa.select(tasks.c.task_uuid, tasks.c.task_type, tasks.c.model, tasks.c.status,
                           tasks.c.number_results, tasks.c.webhook_url, tasks.c.created,
                           results.c.result_index, results.c.status, results.c.body)
                 .select_from(tasks.outerjoin(results)).where(tasks.c.task_uuid == task_uuid)
                 .order_by(results.c.result_index))
        with self.engine.connect().execution_options(sqlite_begin="DEFERRED") as db:
            rows = db.execute(query).all()
        if not rows:
            return None
        return TaskRecord(*rows[0][:7], results=[ResultRecord(i, s, None if b is None else json.loads(b))
                                                 for *_, i, s, b in rows if i is not None])

    def finish_result(self, task_uuid: str, index: int, *, status: str, body: dict[str, Any],
                      webhook_body: dict[str, Any] | None = None) -> None:
        """Record result ``index`` (``success`` or ``error``) once; with ``webhook_body`` and a webhook URL on the
        task, its delivery is queued in the same transaction, so a recorded result is always delivered."""
        now = self.clock()
        with self.engine.begin() as db:
            # The task row is locked first, so that results finishing together settle the task in turn.
            task = db.execute(sa.select(tasks.c.webhook_url).where(tasks.c.task_uuid == task_uuid)
                              .with_for_update()).first()
            if task is None or not self._record(db, task_uuid, index, status, body, now):
                return
            if webhook_body is not None:
                self._queue_webhook(db, task_uuid, task.webhook_url, webhook_body, now)
            self._settle(db, task_uuid)

    def _record(self, db: sa.Connection, task_uuid: str, index: int, status: str, body: dict, now: float) -> bool:
        """Result ``index`` recorded, unless it was already (False)."""
        return bool(db.execute(results.update().where(
            results.c.task_uuid == task_uuid, results.c.result_index == index, results.c.status == PROCESSING)
            .values(status=status, body=json.dumps(body), finished=now)).rowcount)

    @staticmethod
    def _queue_webhook(db: sa.Connection, task_uuid: str, url: str | None, body: dict[str, Any], now: float) -> None:
        if url:
            db.execute(deliveries.insert().values(task_uuid=task_uuid, url=url, body=json.dumps(body),
                                                  next_attempt=now))

    @staticmethod
    def _settle(db: sa.Connection, task_uuid: str) -> None:
        statuses = set(db.scalars(sa.select(results.c.status).where(results.c.task_uuid == task_uuid)))
        if PROCESSING not in statuses:
            db.execute(tasks.update().where(tasks.c.task_uuid == task_uuid)
                       .values(status=ERROR if ERROR in statuses else SUCCESS))

    # ------------------------------------------------------------------ owners

    def join(self) -> None:
        """This owner is alive, from now on while its heartbeats keep coming."""
        row = {"owner": self.owner, "machine": _machine(), "pid": os.getpid(), "heartbeat": self.clock()}
        with self.engine.begin() as db:
            db.execute(self._insert(owners).values(**row).on_conflict_do_update(
                index_elements=[owners.c.owner], set_={"heartbeat": row["heartbeat"]}))

    def heartbeat(self) -> bool:
        """This owner is still alive; False (and nothing written) when it is not joined: it released itself, or
        was forgotten long gone. Never joins, so a heartbeat still on its way when the owner stops cannot bring
        it back to life after :meth:`release`."""
        with self.engine.begin() as db:
            return bool(db.execute(owners.update().where(owners.c.owner == self.owner)
                                   .values(heartbeat=self.clock())).rowcount)

    def release(self) -> None:
        """This owner has stopped: its unfinished results may be failed at once (by the next store to look), and
        the deliveries it was attempting are due again now."""
        with self.engine.begin() as db:
            db.execute(owners.delete().where(owners.c.owner == self.owner))
            self._unclaim(db, [self.owner])

    def _unclaim(self, db: sa.Connection, claimers: list[str]) -> None:
        db.execute(deliveries.update().where(deliveries.c.state == "pending", deliveries.c.claimed_by.in_(claimers))
                   .values(claimed_by=None, next_attempt=self.clock()))

    def live_owners(self) -> set[str]:
        """The owners alive now: a heartbeat within ``owner_timeout``, and, on this machine, a process that exists."""
        with self.engine.connect().execution_options(sqlite_begin="DEFERRED") as db:
            return self._live_owners(db)

    def _live_owners(self, db: sa.Connection) -> set[str]:
        since = self.clock() - self.owner_timeout
        machine = _machine()
        return {owner for owner, on, pid in db.execute(
                    sa.select(owners.c.owner, owners.c.machine, owners.c.pid).where(owners.c.heartbeat > since))
                if on is None or on != machine or _process_exists(pid)}

    def fail_unfinished(self, error: Callable[[str, int], tuple[dict[str, Any], dict[str, Any]]]) -> list[str]:
        """Fail every result still processing whose owner is gone (its generation is gone with it). ``error(uuid,
        index)`` gives the result's error body and its webhook body. Returns the UUIDs of the tasks touched."""
        now = self.clock()
        touched = []
        with self.engine.begin() as db:
            live = self._live_owners(db)
            # A gone owner's deliveries are due again at once, not when their lease runs out.
            claimers = db.scalars(sa.select(deliveries.c.claimed_by).distinct().where(
                deliveries.c.state == "pending", deliveries.c.claimed_by.is_not(None))).all()
            self._unclaim(db, [owner for owner in claimers if owner not in live])
            leftovers = db.execute(sa.select(tasks.c.task_uuid, tasks.c.owner).where(tasks.c.status == PROCESSING)
                                   .order_by(tasks.c.task_uuid)).all()
            for task_uuid, owner in leftovers:
                if owner in live:
                    continue
                # Locked like finish_result does; a task another store is failing (or its owner finishing) right
                # now is skipped, and looked at again on the next round if still unfinished.
                task = db.execute(sa.select(tasks.c.webhook_url).where(tasks.c.task_uuid == task_uuid)
                                  .with_for_update(skip_locked=True)).first()
                if task is None:
                    continue
                open_results = db.scalars(sa.select(results.c.result_index).where(
                    results.c.task_uuid == task_uuid, results.c.status == PROCESSING)
                    .order_by(results.c.result_index)).all()
                for index in open_results:
                    body, webhook_body = error(task_uuid, index)
                    if self._record(db, task_uuid, index, ERROR, body, now):
                        self._queue_webhook(db, task_uuid, task.webhook_url, webhook_body, now)
                self._settle(db, task_uuid)
                if open_results:
                    touched.append(task_uuid)
        return touched

    # ------------------------------------------------------------------ files

    def add_file(self, file_id: str, *, task_uuid: str, path: str, content_type: str, expires: float) -> None:
        with self.engine.begin() as db:
            db.execute(files.insert().values(file_id=file_id, task_uuid=task_uuid, path=path,
                                             content_type=content_type, expires=expires))

    def get_file(self, file_id: str) -> FileRecord | None:
        """The file, unless it is unknown or expired."""
        with self.engine.connect().execution_options(sqlite_begin="DEFERRED") as db:
            row = db.execute(sa.select(files).where(files.c.file_id == file_id,
                                                    files.c.expires > self.clock())).first()
        return None if row is None else FileRecord(*row)

    # ------------------------------------------------------------------ webhook deliveries

    def due_deliveries(self, limit: int = 32) -> list[Delivery]:
        """Claim the pending deliveries whose next attempt is due, oldest first: they are not due again (for any
        store) for ``delivery_lease`` seconds, unless :meth:`delivery_failed` says when."""
        now = self.clock()
        with self.engine.begin() as db:
            rows = db.execute(sa.select(deliveries.c.id, deliveries.c.task_uuid, deliveries.c.url, deliveries.c.body,
                                        deliveries.c.attempts)
                              .where(deliveries.c.state == "pending", deliveries.c.next_attempt <= now)
                              .order_by(deliveries.c.next_attempt, deliveries.c.id).limit(limit)
                              .with_for_update(skip_locked=True)).all()
            if rows:
                db.execute(deliveries.update().where(deliveries.c.id.in_([r.id for r in rows]))
                           .values(next_attempt=now + self.delivery_lease, claimed_by=self.owner))
        return [Delivery(i, u, url, json.loads(b), a) for i, u, url, b, a in rows]

    def next_delivery_time(self) -> float | None:
        with self.engine.connect().execution_options(sqlite_begin="DEFERRED") as db:
            return db.scalar(sa.select(sa.func.min(deliveries.c.next_attempt)).where(deliveries.c.state == "pending"))

    def delivery_done(self, delivery_id: int) -> None:
        with self.engine.begin() as db:
            db.execute(deliveries.update().where(deliveries.c.id == delivery_id)
                       .values(state="done", attempts=deliveries.c.attempts + 1, claimed_by=None))

    def delivery_failed(self, delivery_id: int, error: str, retry_at: float | None) -> None:
        """One failed attempt; tried again at ``retry_at``, or given up for good when it is None."""
        with self.engine.begin() as db:
            db.execute(deliveries.update().where(deliveries.c.id == delivery_id).values(
                attempts=deliveries.c.attempts + 1, last_error=error, claimed_by=None,
                state="pending" if retry_at is not None else "failed",
                next_attempt=deliveries.c.next_attempt if retry_at is None else retry_at))

    # ------------------------------------------------------------------ expiry

    def sweep(self) -> list[str]:
        """Forget expired files and finished tasks past their retention (with their results and deliveries), and
        owners long gone; returns the paths of the forgotten files, for the caller to delete (each path to one
        caller only, however many stores sweep)."""
        now = self.clock()
        with self.engine.begin() as db:
            paths = list(db.scalars(files.delete().where(files.c.expires <= now).returning(files.c.path)))
            old = sa.select(tasks.c.task_uuid).where(tasks.c.retain_until <= now, tasks.c.status != PROCESSING)
            db.execute(deliveries.delete().where(deliveries.c.state != "pending", deliveries.c.task_uuid.in_(old)))
            db.execute(results.delete().where(results.c.task_uuid.in_(old)))
            db.execute(tasks.delete().where(tasks.c.retain_until <= now, tasks.c.status != PROCESSING,
                                            tasks.c.task_uuid.not_in(sa.select(deliveries.c.task_uuid))))
            # Their tasks are failed already or will be: an owner without a row is gone all the same.
            db.execute(owners.delete().where(owners.c.heartbeat <= now - 10 * self.owner_timeout))
        return paths

    # ------------------------------------------------------------------ quota

    def take_quota(self, key: str, day: str, limit: int) -> bool:
        """Count one use of ``key`` on ``day``; False (and nothing counted) when ``limit`` uses were made."""
        if limit <= 0:
            return False
        with self.engine.begin() as db:
            # One conditional upsert: concurrent requests (on any replica) never count past the limit.
            insert = self._insert(usage).values(key=key, day=day, count=1)
            counted = db.execute(insert.on_conflict_do_update(
                index_elements=[usage.c.key, usage.c.day], set_={"count": usage.c.count + 1},
                where=usage.c.count < limit).returning(usage.c.count)).first()
            db.execute(usage.delete().where(usage.c.day < _days_ago(day, 7)))
        return counted is not None


def _sqlite_connect(connection: Any, _record: Any) -> None:
    # The driver's own transaction handling off: _sqlite_begin starts each transaction.
    connection.isolation_level = None
    connection.execute("PRAGMA journal_mode=WAL")
    # WAL with NORMAL: a commit survives a crash of the process; a power cut may lose the last commits.
    connection.execute("PRAGMA synchronous=NORMAL")
    connection.execute("PRAGMA foreign_keys=ON")


def _sqlite_begin(connection: sa.Connection) -> None:
    # IMMEDIATE takes the write lock at once: two deferred transactions that both go on to write would fail
    # with "database is locked" instead of waiting. Reads ask for DEFERRED (WAL readers wait for nobody).
    connection.exec_driver_sql(f"BEGIN {connection.get_execution_options().get('sqlite_begin', 'IMMEDIATE')}")


_machine_id: str | None = None
_machine_lock = threading.Lock()


def _machine() -> str:
    """This process's machine and process-id namespace: where its process ids mean what they say (the host name
    alone is shared by containers with the host's network, which have their own process ids)."""
    global _machine_id
    with _machine_lock:
        if _machine_id is None:
            parts = [socket.gethostname()]
            try:
                parts.append(Path("/proc/sys/kernel/random/boot_id").read_text().strip())
                parts.append(os.readlink("/proc/self/ns/pid"))
            except OSError:  # not Linux: no namespace to tell containers apart, so no process checks
                parts.append(uuid.uuid4().hex)
            _machine_id = " ".join(parts)
        return _machine_id


def _process_exists(pid: int | None) -> bool:
    if pid is None or pid == os.getpid():
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except OSError:  # exists, owned by someone else
        return True
    return True


def _days_ago(day: str, days: int) -> str:
    return (datetime.date.fromisoformat(day) - datetime.timedelta(days=days)).isoformat()
