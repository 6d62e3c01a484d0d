"""The durable state of the hosted task API, in SQLite: tasks, their results, the files results are served
from, webhook deliveries still to make, and quota counts.

The interface is small on purpose, so that another database (SQLAlchemy on PostgreSQL, say) can stand behind
it; the task API uses nothing else:

==============================================  ==========================================================
``create_task(uuid, ...) -> bool``              reserve a task UUID with its results (False: in use)
``get_task(uuid) -> TaskRecord | None``         a task and its results
``finish_result(uuid, index, ...)``             record one result (success or error) and, in the same
                                                transaction, its webhook delivery
``fail_unfinished(error) -> list[str]``         after a restart: every result still processing fails (and
                                                its webhook is queued); the UUIDs of the tasks touched
``add_file / get_file``                         result files and their expiry
``due_deliveries / delivery_done /              webhook deliveries: the ones due, success, a failed attempt
delivery_failed``
``sweep() -> list[str]``                        forget expired files (their paths are returned for deleting)
                                                and tasks past their retention
``take_quota(key, day, limit) -> bool``         count one use against a daily limit (False: none left)
==============================================  ==========================================================

Bodies (results, errors, webhook payloads) are JSON documents the store keeps as given. Times are seconds since
the epoch from ``clock`` (``time.time``; tests move it). Every method is one transaction and is safe to call
from any thread; the SQLite file is in WAL mode, so readers never wait for the writer.
"""

from __future__ import annotations

import datetime
import json
import sqlite3
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

PROCESSING, SUCCESS, ERROR = "processing", "success", "error"

_SCHEMA = """
CREATE TABLE IF NOT EXISTS tasks (
    task_uuid TEXT PRIMARY KEY,
    task_type TEXT NOT NULL,
    model TEXT NOT NULL,
    status TEXT NOT NULL,
    number_results INTEGER NOT NULL,
    webhook_url TEXT,
    created REAL NOT NULL,
    retain_until REAL NOT NULL
);
CREATE TABLE IF NOT EXISTS results (
    task_uuid TEXT NOT NULL REFERENCES tasks(task_uuid) ON DELETE CASCADE,
    result_index INTEGER NOT NULL,
    status TEXT NOT NULL,
    body TEXT,
    finished REAL,
    PRIMARY KEY (task_uuid, result_index)
);
CREATE TABLE IF NOT EXISTS files (
    file_id TEXT PRIMARY KEY,
    task_uuid TEXT NOT NULL,
    path TEXT NOT NULL,
    content_type TEXT NOT NULL,
    expires REAL NOT NULL
);
CREATE INDEX IF NOT EXISTS files_by_expiry ON files (expires);
CREATE TABLE IF NOT EXISTS deliveries (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    task_uuid TEXT NOT NULL,
    url TEXT NOT NULL,
    body TEXT NOT NULL,
    attempts INTEGER NOT NULL DEFAULT 0,
    next_attempt REAL NOT NULL,
    state TEXT NOT NULL DEFAULT 'pending',
    last_error TEXT
);
CREATE INDEX IF NOT EXISTS deliveries_due ON deliveries (state, next_attempt);
CREATE TABLE IF NOT EXISTS usage (
    key TEXT NOT NULL,
    day TEXT NOT NULL,
    count INTEGER NOT NULL,
    PRIMARY KEY (key, day)
);
"""


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


class JobStore:
    """Tasks, results, files and deliveries in the SQLite file ``path`` (created if missing)."""

    def __init__(self, path: str | Path, *, clock: Callable[[], float] = time.time):
        self.path = Path(path)
        self.clock = clock
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._lock = threading.Lock()
        self._db = sqlite3.connect(self.path, check_same_thread=False, isolation_level=None, timeout=30.0)
        self._db.execute("PRAGMA journal_mode=WAL")
        # WAL with NORMAL: a commit survives a crash of the process; a power cut may lose the last commits.
        self._db.execute("PRAGMA synchronous=NORMAL")
        self._db.execute("PRAGMA foreign_keys=ON")
        self._db.executescript(_SCHEMA)

    def close(self) -> None:
        with self._lock:
            self._db.close()

    def _transaction(self):
        return _Transaction(self._db, self._lock)

    # ------------------------------------------------------------------ tasks

    def create_task(self, task_uuid: str, *, task_type: str, model: str, number_results: int,
                    webhook_url: str | None, retain_seconds: float) -> bool:
        """Reserve ``task_uuid`` with ``number_results`` results, all processing. False if the UUID is in use
        (by any task the store still holds, whatever its outcome)."""
        now = self.clock()
        with self._transaction() as db:
            try:
                db.execute("INSERT INTO tasks VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
                           (task_uuid, task_type, model, PROCESSING, number_results, webhook_url, now,
                            now + retain_seconds))
            except sqlite3.IntegrityError:
                return False
            db.executemany("INSERT INTO results (task_uuid, result_index, status) VALUES (?, ?, ?)",
                           [(task_uuid, i, PROCESSING) for i in range(number_results)])
        return True

    def get_task(self, task_uuid: str) -> TaskRecord | None:
        with self._transaction() as db:
            row = db.execute("SELECT task_uuid, task_type, model, status, number_results, webhook_url, created "
                             "FROM tasks WHERE task_uuid = ?", (task_uuid,)).fetchone()
            if row is None:
                return None
            results = db.execute("SELECT result_index, status, body FROM results WHERE task_uuid = ? "
                                 "ORDER BY result_index", (task_uuid,)).fetchall()
        return TaskRecord(*row, results=[ResultRecord(i, s, None if b is None else json.loads(b))
                                         for i, s, b in results])

    def finish_result(self, task_uuid: str, index: int, *, status: str, body: dict[str, Any],
                      webhook_body: dict[str, Any] | None = None) -> None:
        """Record result ``index`` (``success`` or ``error``) once; with ``webhook_body`` and a webhook URL on the
        task, its delivery is queued in the same transaction, so a recorded result is always delivered."""
        now = self.clock()
        with self._transaction() as db:
            changed = db.execute("UPDATE results SET status = ?, body = ?, finished = ? WHERE task_uuid = ? AND "
                                 "result_index = ? AND status = ?",
                                 (status, json.dumps(body), now, task_uuid, index, PROCESSING)).rowcount
            if not changed:
                return
            if webhook_body is not None:
                self._queue_webhook(db, task_uuid, webhook_body, now)
            self._settle(db, task_uuid)

    def fail_unfinished(self, error: Callable[[str, int], tuple[dict[str, Any], dict[str, Any]]]) -> list[str]:
        """Fail every result still processing (a restart found them: their generation is gone). ``error(uuid,
        index)`` gives the result's error body and its webhook body. Returns the UUIDs of the tasks touched."""
        now = self.clock()
        with self._transaction() as db:
            rows = db.execute("SELECT task_uuid, result_index FROM results WHERE status = ? "
                              "ORDER BY task_uuid, result_index", (PROCESSING,)).fetchall()
            for task_uuid, index in rows:
                body, webhook_body = error(task_uuid, index)
                db.execute("UPDATE results SET status = ?, body = ?, finished = ? WHERE task_uuid = ? AND "
                           "result_index = ?", (ERROR, json.dumps(body), now, task_uuid, index))
                self._queue_webhook(db, task_uuid, webhook_body, now)
            touched = sorted({task_uuid for task_uuid, _ in rows})
            for task_uuid in touched:
                self._settle(db, task_uuid)
        return touched

    @staticmethod
    def _queue_webhook(db: sqlite3.Connection, task_uuid: str, body: dict[str, Any], now: float) -> None:
        row = db.execute("SELECT webhook_url FROM tasks WHERE task_uuid = ?", (task_uuid,)).fetchone()
        if row is not None and row[0]:
            db.execute("INSERT INTO deliveries (task_uuid, url, body, next_attempt) VALUES (?, ?, ?, ?)",
                       (task_uuid, row[0], json.dumps(body), now))

    @staticmethod
    def _settle(db: sqlite3.Connection, task_uuid: str) -> None:
        statuses = {s for (s,) in db.execute("SELECT status FROM results WHERE task_uuid = ?", (task_uuid,))}
        if PROCESSING not in statuses:
            db.execute("UPDATE tasks SET status = ? WHERE task_uuid = ?",
                       (ERROR if ERROR in statuses else SUCCESS, task_uuid))

    # ------------------------------------------------------------------ files

    def add_file(self, file_id: str, *, task_uuid: str, path: str, content_type: str, expires: float) -> None:
        with self._transaction() as db:
            db.execute("INSERT INTO files VALUES (?, ?, ?, ?, ?)", (file_id, task_uuid, path, content_type, expires))

    def get_file(self, file_id: str) -> FileRecord | None:
        """The file, unless it is unknown or expired."""
        with self._transaction() as db:
            row = db.execute("SELECT file_id, task_uuid, path, content_type, expires FROM files WHERE file_id = ? "
                             "AND expires > ?", (file_id, self.clock())).fetchone()
        return None if row is None else FileRecord(*row)

    # ------------------------------------------------------------------ webhook deliveries

    def due_deliveries(self, limit: int = 32) -> list[Delivery]:
        """Pending deliveries whose next attempt is due, oldest first."""
        with self._transaction() as db:
            rows = db.execute("SELECT id, task_uuid, url, body, attempts FROM deliveries WHERE state = 'pending' "
                              "AND next_attempt <= ? ORDER BY next_attempt, id LIMIT ?",
                              (self.clock(), limit)).fetchall()
        return [Delivery(i, u, url, json.loads(b), a) for i, u, url, b, a in rows]

    def next_delivery_time(self) -> float | None:
        with self._transaction() as db:
            row = db.execute("SELECT MIN(next_attempt) FROM deliveries WHERE state = 'pending'").fetchone()
        return row[0]

    def delivery_done(self, delivery_id: int) -> None:
        with self._transaction() as db:
            db.execute("UPDATE deliveries SET state = 'done', attempts = attempts + 1 WHERE id = ?", (delivery_id,))

    def delivery_failed(self, delivery_id: int, error: str, retry_at: float | None) -> None:
        """One failed attempt; tried again at ``retry_at``, or given up for good when it is None."""
        with self._transaction() as db:
            db.execute("UPDATE deliveries SET attempts = attempts + 1, last_error = ?, state = ?, "
                       "next_attempt = COALESCE(?, next_attempt) WHERE id = ?",
                       (error, "pending" if retry_at is not None else "failed", retry_at, delivery_id))

    # ------------------------------------------------------------------ expiry

    def sweep(self) -> list[str]:
        """Forget expired files and finished tasks past their retention (with their results and deliveries);
        returns the paths of the forgotten files, for the caller to delete."""
        now = self.clock()
        with self._transaction() as db:
            paths = [p for (p,) in db.execute("SELECT path FROM files WHERE expires <= ?", (now,))]
            db.execute("DELETE FROM files WHERE expires <= ?", (now,))
            old = "SELECT task_uuid FROM tasks WHERE retain_until <= ? AND status != ?"
            db.execute(f"DELETE FROM deliveries WHERE state != 'pending' AND task_uuid IN ({old})", (now, PROCESSING))
            db.execute(f"DELETE FROM results WHERE task_uuid IN ({old})", (now, PROCESSING))
            db.execute("DELETE FROM tasks WHERE retain_until <= ? AND status != ? AND task_uuid NOT IN "
                       "(SELECT task_uuid FROM deliveries)", (now, PROCESSING))
        return paths

    # ------------------------------------------------------------------ quota

    def take_quota(self, key: str, day: str, limit: int) -> bool:
        """Count one use of ``key`` on ``day``; False (and nothing counted) when ``limit`` uses were made."""
        with self._transaction() as db:
            row = db.execute("SELECT count FROM usage WHERE key = ? AND day = ?", (key, day)).fetchone()
            if row is not None and row[0] >= limit:
                return False
            db.execute("INSERT INTO usage VALUES (?, ?, 1) ON CONFLICT (key, day) DO UPDATE SET count = count + 1",
                       (key, day))
            db.execute("DELETE FROM usage WHERE day < ?", (_days_ago(day, 7),))
        return True


class _Transaction:
    """``with``: the store's lock and one SQLite transaction (committed, or rolled back on an exception)."""

    def __init__(self, db: sqlite3.Connection, lock: threading.Lock):
        self._db, self._lock = db, lock

    def __enter__(self) -> sqlite3.Connection:
        self._lock.acquire()
        try:
            self._db.execute("BEGIN IMMEDIATE")
        except BaseException:
            self._lock.release()
            raise
        return self._db

    def __exit__(self, kind, exc, tb) -> None:
        try:
            self._db.execute("COMMIT" if kind is None else "ROLLBACK")
        finally:
            self._lock.release()


def _days_ago(day: str, days: int) -> str:
    return (datetime.date.fromisoformat(day) - datetime.timedelta(days=days)).isoformat()
