"""The durable job store, on SQLite and on PostgreSQL (a throwaway server, tests/postgres.py): tasks and results,
webhook deliveries queued with their results and claimed once, restart recovery by owner, expiry, quota, state that
survives reopening, concurrent writers from threads and from two stores on one database."""

from __future__ import annotations

import os
import socket
import sqlite3
import subprocess
import sys
import threading
from collections import Counter

import pytest
from postgres import database  # noqa: F401 (a fixture)

from faster_dia.errors import InvalidInputError
from faster_dia.server.jobstore import ERROR, PROCESSING, SUCCESS, JobStore


class Clock:
    def __init__(self, now: float = 1_000_000.0):
        self.now = now

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def clock():
    return Clock()


@pytest.fixture
def store(database, clock):  # noqa: F811
    store = JobStore(database, clock=clock)
    yield store
    store.close()


def create(store: JobStore, task_uuid: str, results: int = 2, webhook: str | None = None) -> bool:
    return store.create_task(task_uuid, task_type="audioInference", model="dia", number_results=results,
                             webhook_url=webhook, retain_seconds=3600)


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def restarted(uuid: str, i: int) -> tuple[dict, dict]:
    return {"code": "serverRestarted", "i": i}, {"errors": [{"code": "serverRestarted"}]}


def test_a_path_is_an_sqlite_file_in_wal_mode(tmp_path):
    JobStore(tmp_path / "tasks.sqlite3").close()
    mode = sqlite3.connect(tmp_path / "tasks.sqlite3").execute("PRAGMA journal_mode").fetchone()[0]
    assert mode == "wal"


def test_a_task_uuid_is_taken_once(store):
    assert create(store, "a")
    assert not create(store, "a")
    task = store.get_task("a")
    assert (task.status, task.number_results, [r.status for r in task.results]) == (PROCESSING, 2, [PROCESSING] * 2)
    assert store.get_task("b") is None


def test_results_settle_the_task(store):
    create(store, "ok")
    store.finish_result("ok", 1, status=SUCCESS, body={"seed": 2})
    assert store.get_task("ok").status == PROCESSING
    store.finish_result("ok", 0, status=SUCCESS, body={"seed": 1})
    task = store.get_task("ok")
    assert task.status == SUCCESS and [r.body for r in task.results] == [{"seed": 1}, {"seed": 2}]
    # A result is recorded once: a late second outcome is ignored.
    store.finish_result("ok", 0, status=ERROR, body={"code": "late"})
    assert store.get_task("ok").results[0].body == {"seed": 1}

    create(store, "mixed")
    store.finish_result("mixed", 0, status=SUCCESS, body={})
    store.finish_result("mixed", 1, status=ERROR, body={"code": "x"})
    assert store.get_task("mixed").status == ERROR


def test_webhooks_are_queued_with_their_results_and_retried(store, clock):
    create(store, "hooked", webhook="http://example.com/hook")
    create(store, "quiet")
    store.finish_result("hooked", 0, status=SUCCESS, body={"i": 0}, webhook_body={"data": [{"i": 0}]})
    store.finish_result("quiet", 0, status=SUCCESS, body={"i": 0}, webhook_body={"data": [{"i": 0}]})
    (due,) = store.due_deliveries()
    assert (due.task_uuid, due.url, due.body, due.attempts) == ("hooked", "http://example.com/hook",
                                                                {"data": [{"i": 0}]}, 0)
    store.delivery_failed(due.id, "HTTP 500", clock.now + 10)
    assert store.due_deliveries() == [] and store.next_delivery_time() == clock.now + 10
    clock.now += 10
    (again,) = store.due_deliveries()
    assert again.attempts == 1
    store.delivery_done(again.id)
    assert store.due_deliveries() == [] and store.next_delivery_time() is None


def test_a_delivery_given_up_is_not_due_again(store, clock):
    create(store, "t", webhook="http://example.com/hook")
    store.finish_result("t", 0, status=SUCCESS, body={}, webhook_body={"data": []})
    (due,) = store.due_deliveries()
    store.delivery_failed(due.id, "HTTP 500", None)
    clock.now += 1e6
    assert store.due_deliveries() == []


def test_restart_fails_unfinished_results_and_queues_their_webhooks(database, clock):  # noqa: F811
    first = JobStore(database, clock=clock)
    first.join()
    create(first, "half", webhook="http://example.com/hook")
    first.finish_result("half", 0, status=SUCCESS, body={"seed": 1}, webhook_body={"data": [{"seed": 1}]})
    create(first, "done", results=1)
    first.finish_result("done", 0, status=SUCCESS, body={"seed": 5})
    first.release()
    first.close()  # the server stops here, with result 1 of "half" unfinished and its first webhook pending

    second = JobStore(database, clock=clock)
    assert second.fail_unfinished(restarted) == ["half"]
    task = second.get_task("half")
    assert task.status == ERROR and [r.status for r in task.results] == [SUCCESS, ERROR]
    assert task.results[1].body == {"code": "serverRestarted", "i": 1}
    assert second.get_task("done").status == SUCCESS
    assert [d.body for d in second.due_deliveries()] == [{"data": [{"seed": 1}]},
                                                         {"errors": [{"code": "serverRestarted"}]}]
    assert second.fail_unfinished(lambda uuid, i: ({}, {})) == []
    second.close()


def test_a_starting_store_leaves_a_live_owners_work_alone(database, clock):  # noqa: F811
    running, starting = JobStore(database, clock=clock), JobStore(database, clock=clock)
    running.join()
    create(running, "busy")
    starting.join()
    assert starting.fail_unfinished(restarted) == [] and starting.get_task("busy").status == PROCESSING
    assert starting.live_owners() == {running.owner, starting.owner}
    # Heartbeats keep an owner alive; one that stops sending them is gone after owner_timeout.
    clock.now += running.owner_timeout - 1
    assert running.heartbeat()
    clock.now += 2
    assert starting.fail_unfinished(restarted) == []
    clock.now += running.owner_timeout
    assert starting.heartbeat()
    assert starting.live_owners() == {starting.owner}
    assert starting.fail_unfinished(restarted) == ["busy"]
    assert [r.body for r in starting.get_task("busy").results] == [{"code": "serverRestarted", "i": i} for i in (0, 1)]
    # An owner that stopped cleanly is gone at once; the others' own work is untouched.
    create(starting, "mine")
    running.join()
    create(running, "theirs")
    running.release()
    assert not running.heartbeat()  # one still on its way when the owner stops does not bring it back
    assert starting.fail_unfinished(restarted) == ["theirs"]
    assert starting.get_task("mine").status == PROCESSING
    running.close()
    starting.close()


CRASH = """
import os, sys
from faster_dia.server.jobstore import JobStore
store = JobStore(sys.argv[1])
store.join()
store.create_task("crashed", task_type="audioInference", model="dia", number_results=1, webhook_url=None,
                  retain_seconds=60)
os._exit(0)  # no release: as if killed
"""


def test_a_crashed_process_on_this_machine_is_gone_at_once(database):  # noqa: F811
    subprocess.run([sys.executable, "-c", CRASH, database], check=True, timeout=60)
    store = JobStore(database)
    try:
        store.join()
        assert store.live_owners() == {store.owner}  # its heartbeat is fresh, but its process is gone
        assert store.fail_unfinished(restarted) == ["crashed"]
    finally:
        store.close()


def test_two_stores_claim_each_delivery_once(database, clock):  # noqa: F811
    stores = [JobStore(database, clock=clock) for _ in range(2)]
    create(stores[0], "t", results=40, webhook="http://example.com/hook")
    for i in range(40):
        stores[i % 2].finish_result("t", i, status=SUCCESS, body={}, webhook_body={"data": [i]})
    claims: list[int] = []

    def claim(store: JobStore) -> None:
        while batch := store.due_deliveries(limit=3):
            claims.extend(d.body["data"][0] for d in batch)

    threads = [threading.Thread(target=claim, args=(stores[i % 2],)) for i in range(6)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert sorted(claims) == list(range(40))
    # A claim lapses after its lease (its claimer died unseen): due again, once.
    clock.now += stores[0].delivery_lease
    assert len(stores[1].due_deliveries(limit=100)) == 40 and stores[0].due_deliveries() == []
    # The claims of an owner that stops, or is found gone, are due again at once.
    stores[0].join()
    stores[1].release()
    assert len(stores[0].due_deliveries(limit=100)) == 40
    stores[1].join()
    assert stores[1].fail_unfinished(restarted) == [] and stores[1].due_deliveries() == []
    clock.now += stores[0].owner_timeout + 1
    stores[1].heartbeat()
    stores[1].fail_unfinished(restarted)
    assert len(stores[1].due_deliveries(limit=100)) == 40
    for store in stores:
        store.close()


def test_results_finishing_together_settle_their_task(database):  # noqa: F811
    stores = [JobStore(database) for _ in range(2)]
    for t in range(8):
        create(stores[0], f"t{t}", results=2)
    barrier = threading.Barrier(16)

    def finish(i: int) -> None:
        barrier.wait()  # the two results of each task finish as nearly together as threads can
        stores[i % 2].finish_result(f"t{i // 2}", i % 2, status=SUCCESS, body={"i": i})

    threads = [threading.Thread(target=finish, args=(i,)) for i in range(16)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    for t in range(8):
        task = stores[1].get_task(f"t{t}")
        assert task.status == SUCCESS and [r.body["i"] for r in task.results] == [2 * t, 2 * t + 1]
    for store in stores:
        store.close()


def test_files_expire_and_are_swept(store, clock):
    store.add_file("f.mp3", task_uuid="t", path="/data/f.mp3", content_type="audio/mpeg", expires=clock.now + 60)
    assert store.get_file("f.mp3").path == "/data/f.mp3"
    assert store.sweep() == []
    clock.now += 60
    assert store.get_file("f.mp3") is None  # expired: unknown at once, before any sweep
    assert store.sweep() == ["/data/f.mp3"]
    assert store.sweep() == []


def test_old_tasks_are_forgotten_unless_a_webhook_is_pending(store, clock):
    create(store, "old", results=1)
    store.finish_result("old", 0, status=SUCCESS, body={})
    create(store, "pending", results=1, webhook="http://example.com/hook")
    store.finish_result("pending", 0, status=SUCCESS, body={}, webhook_body={"data": []})
    create(store, "running", results=1)
    clock.now += 3601
    store.sweep()
    assert store.get_task("old") is None
    assert store.get_task("pending") is not None and store.get_task("running") is not None
    (due,) = store.due_deliveries()
    store.delivery_done(due.id)
    store.sweep()
    assert store.get_task("pending") is None
    assert create(store, "old")  # a forgotten UUID is free again


def test_quota_counts_per_key_and_day(store):
    assert [store.take_quota("k", "2026-01-01", 2) for _ in range(3)] == [True, True, False]
    assert store.take_quota("other", "2026-01-01", 2)
    assert store.take_quota("k", "2026-01-02", 2)
    assert not store.take_quota("k", "2026-01-02", 0)


def test_concurrent_writers_from_two_stores(database):  # noqa: F811
    stores = [JobStore(database) for _ in range(2)]
    created, counted = [], []

    def work(i: int) -> None:
        store = stores[i % 2]
        created.append(create(store, "same"))
        create(store, f"own-{i}")
        counted.extend(store.take_quota("k", "2026-01-01", 5) for _ in range(2))

    threads = [threading.Thread(target=work, args=(i,)) for i in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert sorted(created) == [False] * 7 + [True]
    assert all(stores[1].get_task(f"own-{i}") is not None for i in range(8))
    assert Counter(counted) == {True: 5, False: 11}
    for store in stores:
        store.close()


def test_a_file_from_before_owners_is_upgraded(tmp_path):
    path = tmp_path / "tasks.sqlite3"
    with sqlite3.connect(path) as old:
        old.executescript("""
            CREATE TABLE tasks (task_uuid TEXT PRIMARY KEY, task_type TEXT NOT NULL, model TEXT NOT NULL,
                status TEXT NOT NULL, number_results INTEGER NOT NULL, webhook_url TEXT, created REAL NOT NULL,
                retain_until REAL NOT NULL);
            CREATE TABLE results (task_uuid TEXT NOT NULL REFERENCES tasks(task_uuid) ON DELETE CASCADE,
                result_index INTEGER NOT NULL, status TEXT NOT NULL, body TEXT, finished REAL,
                PRIMARY KEY (task_uuid, result_index));
            INSERT INTO tasks VALUES ('old', 'audioInference', 'dia', 'processing', 1, NULL, 0, 1e12);
            INSERT INTO results (task_uuid, result_index, status) VALUES ('old', 0, 'processing');
        """)
    store = JobStore(path)
    store.join()
    assert store.fail_unfinished(restarted) == ["old"]
    store.close()


def test_a_database_that_cannot_be_used_is_named(tmp_path):
    port = free_port()  # nothing listens on it
    for target, words in ((f"postgresql://user:secret@127.0.0.1:{port}/db", f"user:***@127.0.0.1:{port}/db"),
                          ("mysql://host/db", "SQLite (sqlite:///path) or PostgreSQL"),
                          ("sqlite://", "in-memory"),
                          ("postgresql://user:secret@host:notaport/db", "user:***@host:notaport/db is not a URL"),
                          (f"sqlite:///{tmp_path}/file/sub/tasks.sqlite3", "Cannot use the database")):
        if "file/sub" in target:
            (tmp_path / "file").write_text("a file where a directory should be")
        with pytest.raises(InvalidInputError) as error:
            JobStore(target)
        assert words in error.value.message and "secret" not in error.value.message, error.value.message


def test_replicas_share_the_store_and_fail_only_a_stopped_ones_work(database, tmp_path):  # noqa: F811
    """Two servers' task API state (Hosted) on one database and data directory, with their background loops: a
    starting replica leaves the other's running task alone, a file one writes the other serves, and when the
    task's replica stops, the other fails the task and delivers its webhook, once."""
    import asyncio
    import time
    from pathlib import Path

    from receivers import Receiver
    from servers import WAIT, running

    from faster_dia.server.hosted import Hosted

    async def until(condition, what: str):
        deadline = time.monotonic() + WAIT
        while not (value := await condition()):
            assert time.monotonic() < deadline, f"timed out waiting for {what}"
            await asyncio.sleep(0.02)
        return value

    async def settled(hosted):
        task = await hosted.db(hosted.store.get_task, "t")
        return task if task.status == ERROR else None

    receiver = Receiver()

    async def replicas(hook: str) -> None:
        first, second = (Hosted(tmp_path, database=database, allow_outbound=["127.0.0.1/32"]) for _ in range(2))
        for hosted in (first, second):
            hosted.heartbeat_seconds = hosted.retry_seconds = 0.05
        await first.start()
        await first.db(first.store.create_task, "t", task_type="audioInference", model="dia", number_results=1,
                       webhook_url=hook, retain_seconds=60)
        await second.start()
        await asyncio.sleep(0.2)  # a few heartbeat rounds of both
        assert (await second.db(second.store.get_task, "t")).status == PROCESSING
        file_id = await first.db(first.save_file, b"audio", task_uuid="t", extension=".mp3",
                                 content_type="audio/mpeg", ttl=60)
        assert Path((await second.db(second.store.get_file, file_id)).path).read_bytes() == b"audio"
        await first.stop()
        task = await until(lambda: settled(second), "the stopped replica's task to fail")
        assert task.results[0].body["code"] == "serverRestarted"
        await until(lambda: asyncio.sleep(0, receiver.webhooks.get("replica")), "the webhook")
        await asyncio.sleep(0.2)  # time for a second delivery, were there one
        # The gone replica's scratch files go once they are older than a starting replica's could be.
        (first.scratch_dir / "clip.wav").write_bytes(b"left behind")
        os.utime(first.scratch_dir, (0, 0))
        await until(lambda: asyncio.sleep(0, not first.scratch_dir.exists()), "the scratch files to go")
        assert second.scratch_dir.is_dir()
        await second.stop()

    with running(receiver.app) as url:
        asyncio.run(replicas(f"{url}/hook/replica"))
    assert [hook["errors"][0]["code"] for hook in receiver.webhooks["replica"]] == ["serverRestarted"]


def test_serve_checks_the_database_before_any_model_loads(database, tmp_path, capsys, monkeypatch):  # noqa: F811
    from faster_dia.cli import main

    serve = ["serve", "--model", str(tmp_path / "no-model"), "--data-dir", str(tmp_path), "--port", str(free_port())]
    assert main([*serve, "--database", "mysql://host/db"]) == 2
    assert "The database must be SQLite (sqlite:///path) or PostgreSQL" in capsys.readouterr().err
    monkeypatch.setenv("FASTER_DIA_DATABASE", "postgresql://user:secret@127.0.0.1:1/db")
    assert main(serve) == 2
    error = capsys.readouterr().err
    assert "Cannot use the database" in error and "user:***@127.0.0.1:1/db" in error and "secret" not in error
    # A usable database passes (its tables made); the missing model is what stops this one.
    assert main([*serve, "--database", database]) == 2
    error = capsys.readouterr().err
    assert "no-model' is not an existing local directory" in error and "Cannot use the database" not in error
    assert JobStore(database).get_task("none") is None
