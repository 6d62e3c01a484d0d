"""The durable job store: tasks and results, webhook deliveries queued with their results, restart recovery,
expiry, quota, and state that survives reopening the file."""

from __future__ import annotations

import sqlite3
import threading

import pytest

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
def store(tmp_path, clock):
    store = JobStore(tmp_path / "tasks.sqlite3", clock=clock)
    yield store
    store.close()


def create(store: JobStore, task_uuid: str, results: int = 2, webhook: str | None = None) -> bool:
    return store.create_task(task_uuid, task_type="audioInference", model="dia", number_results=results,
                             webhook_url=webhook, retain_seconds=3600)


def test_the_file_is_sqlite_in_wal_mode(store, tmp_path):
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


def test_restart_fails_unfinished_results_and_queues_their_webhooks(tmp_path, clock):
    path = tmp_path / "tasks.sqlite3"
    first = JobStore(path, clock=clock)
    create(first, "half", webhook="http://example.com/hook")
    first.finish_result("half", 0, status=SUCCESS, body={"seed": 1}, webhook_body={"data": [{"seed": 1}]})
    create(first, "done", results=1)
    first.finish_result("done", 0, status=SUCCESS, body={"seed": 5})
    first.close()  # the process ends here, with result 1 of "half" unfinished and its first webhook pending

    second = JobStore(path, clock=clock)
    touched = second.fail_unfinished(lambda uuid, i: ({"code": "serverRestarted", "i": i},
                                                      {"errors": [{"code": "serverRestarted"}]}))
    assert touched == ["half"]
    task = second.get_task("half")
    assert task.status == ERROR and [r.status for r in task.results] == [SUCCESS, ERROR]
    assert task.results[1].body == {"code": "serverRestarted", "i": 1}
    assert second.get_task("done").status == SUCCESS
    assert [d.body for d in second.due_deliveries()] == [{"data": [{"seed": 1}]},
                                                         {"errors": [{"code": "serverRestarted"}]}]
    assert second.fail_unfinished(lambda uuid, i: ({}, {})) == []
    second.close()


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


def test_concurrent_writers_from_threads(store):
    results = []

    def reserve(i: int) -> None:
        results.append(create(store, "same"))
        create(store, f"own-{i}")

    threads = [threading.Thread(target=reserve, args=(i,)) for i in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert sorted(results) == [False] * 7 + [True]
    assert all(store.get_task(f"own-{i}") is not None for i in range(8))
