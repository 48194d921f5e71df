"""The JobStore contract, on the SQLite engine (a real file in tmp_path). Written against the interface, so
another engine can run the same tests."""

from __future__ import annotations

import sqlite3
from collections.abc import Iterator
from pathlib import Path

import pytest

from gatewayd.errors import StoreError
from gatewayd.gateway.jobs.model import Delivery, Job, JobState, body_digest, new_job_id
from gatewayd.gateway.jobs.store import ANY_KEY, IdempotencyConflict, JobStore, SqliteJobStore

NOW = 1_700_000_000.0
A, B = "host:1:a", "host:2:b"


@pytest.fixture
def store(tmp_path: Path) -> Iterator[JobStore]:
    opened = SqliteJobStore(tmp_path / "gatewayd.db")
    try:
        yield opened
    finally:
        opened.close()


def new(
    store: JobStore, *, key: str | None = None, priority: int = 0, at: float = NOW, **fields: object
) -> Job:
    job = Job(
        id=new_job_id(), key_id=key, endpoint="/v1/chat/completions", model="m",
        request={"model": "m"}, state=JobState.QUEUED, priority=priority, created_at=at, **fields,  # type: ignore[arg-type]
    )  # fmt: skip
    stored, created = store.submit(job, body_digest(job.endpoint, job.request))
    assert created
    return stored


def test_claims_take_the_highest_priority_then_the_oldest_and_count_an_attempt(store: JobStore) -> None:
    low = new(store, at=NOW)
    high = new(store, priority=5, at=NOW + 1)
    later = new(store, at=NOW + 2)
    claimed = store.claim(A, 2, 30, NOW + 3)
    assert [job.id for job in claimed] == [high.id, low.id]
    assert all(job.state is JobState.RUNNING and job.attempts == 1 for job in claimed)
    assert [job.id for job in store.claim(B, 5, 30, NOW + 3)] == [later.id]
    assert store.claim(B, 5, 30, NOW + 3) == []


def test_only_the_lease_owner_records_the_outcome_and_an_expired_lease_changes_hands(store: JobStore) -> None:
    job = new(store)
    store.claim(A, 1, 30, NOW)
    assert store.claim(B, 1, 30, NOW + 29) == []  # the lease holds
    taken = store.claim(B, 1, 30, NOW + 31)  # A died: its lease ran out
    assert [(j.id, j.attempts) for j in taken] == [(job.id, 2)]
    assert store.finish(job.id, A, JobState.SUCCEEDED, {"late": True}, None, NOW + 40) is None
    done = store.finish(job.id, B, JobState.SUCCEEDED, {"ok": True}, None, NOW + 41)
    assert done is not None
    assert done.result == {"ok": True}
    assert store.finish(job.id, B, JobState.FAILED, None, {"message": "again"}, NOW + 42) is None  # once
    assert store.get(job.id).state is JobState.SUCCEEDED  # type: ignore[union-attr]


def test_renewal_keeps_the_lease_and_reports_a_cancel(store: JobStore) -> None:
    job = new(store)
    store.claim(A, 1, 30, NOW)
    assert store.renew(A, [job.id], NOW + 60) == set()
    assert store.claim(B, 1, 30, NOW + 45) == []
    assert store.cancel(job.id, NOW + 46).state is JobState.RUNNING  # type: ignore[union-attr]
    assert store.renew(A, [job.id], NOW + 90) == {job.id}
    queued = new(store)
    assert store.cancel(queued.id, NOW).state is JobState.CANCELLED  # type: ignore[union-attr]


def test_requeue_waits_for_the_backoff_and_can_take_the_attempt_back(store: JobStore) -> None:
    job = new(store)
    store.claim(A, 1, 30, NOW)
    assert store.requeue(job.id, B, NOW + 10, uncount=False) is None  # not B's
    back = store.requeue(job.id, A, NOW + 10, uncount=True)
    assert back is not None
    assert (back.state, back.attempts) == (JobState.QUEUED, 0)
    assert store.claim(A, 1, 30, NOW + 5) == []
    assert [j.attempts for j in store.claim(A, 1, 30, NOW + 10)] == [1]


def test_recover_puts_back_only_the_jobs_of_dead_owners(store: JobStore) -> None:
    mine, theirs = new(store), new(store)
    store.claim(A, 1, 30, NOW)
    store.claim(B, 1, 30, NOW)
    assert store.recover(lambda owner: owner == A) == 1
    assert store.get(mine.id).state is JobState.QUEUED  # type: ignore[union-attr]
    assert store.get(theirs.id).state is JobState.RUNNING  # type: ignore[union-attr]


def test_idempotency_keys_are_per_key_and_compare_the_body(store: JobStore) -> None:
    first = new(store, key="k1", idempotency_key="x")
    again = Job(id=new_job_id(), key_id="k1", endpoint=first.endpoint, model="m", request=first.request,
                state=JobState.QUEUED, idempotency_key="x")  # fmt: skip
    existing, created = store.submit(again, body_digest(first.endpoint, first.request))
    assert (existing.id, created) == (first.id, False)
    with pytest.raises(IdempotencyConflict):
        store.submit(again, "another digest")
    new(store, key="k2", idempotency_key="x")  # another key's own


def test_pages_are_newest_first_and_scoped_to_a_key(store: JobStore) -> None:
    ids = [new(store, key="k1").id for _ in range(3)]
    other = new(store, key="k2")
    page = store.page(key_id="k1", state=None, model=None, limit=2, after=None)
    assert ([j.id for j in page.jobs], page.has_more) == ([ids[2], ids[1]], True)
    rest = store.page(key_id="k1", state=None, model=None, limit=2, after=ids[1])
    assert ([j.id for j in rest.jobs], rest.has_more) == ([ids[0]], False)
    everyone = store.page(key_id=ANY_KEY, state=JobState.QUEUED, model="m", limit=10, after=None)
    assert everyone.jobs[0].id == other.id
    assert len(everyone.jobs) == 4


def test_webhooks_become_due_on_a_terminal_state_and_retention_waits_for_them(store: JobStore) -> None:
    job = new(store, webhook_url="https://example.com/h", webhook_secret="s")
    store.claim(A, 1, 30, NOW)
    store.finish(job.id, A, JobState.SUCCEEDED, {}, None, NOW)
    assert [j.id for j in store.webhooks_due(NOW, 10)] == [job.id]
    assert store.prune(NOW + 100) == 0  # its delivery is not done
    store.record_delivery(job.id, Delivery(NOW, 500, "the receiver answered 500"), False, NOW + 1)
    assert store.webhooks_due(NOW + 0.5, 10) == []
    store.record_delivery(job.id, Delivery(NOW + 1, 200, None), True, None)
    shown = store.get(job.id)
    assert shown is not None
    assert shown.public()["webhook"] == {
        "url": "https://example.com/h",
        "delivered": True,
        "deliveries": [
            {"at": NOW, "status": 500, "error": "the receiver answered 500"},
            {"at": NOW + 1, "status": 200, "error": None},
        ],
    }
    assert "s" not in str(shown.public().get("webhook_secret"))
    assert store.prune(NOW - 1) == 0
    assert store.prune(NOW + 100) == 1
    assert store.get(job.id) is None


def test_counts_cover_every_state(store: JobStore) -> None:
    new(store)
    counts = store.counts()
    assert counts[JobState.QUEUED] == 1
    assert set(counts) == set(JobState)


def test_a_newer_jobs_schema_is_refused_with_both_versions(tmp_path: Path) -> None:
    path = tmp_path / "gatewayd.db"
    SqliteJobStore(path).close()
    with sqlite3.connect(path) as db:
        db.execute("UPDATE meta SET value = 99 WHERE name = 'jobs_schema'")
    with pytest.raises(StoreError, match="jobs schema 99; this one knows 2"):
        SqliteJobStore(path)
