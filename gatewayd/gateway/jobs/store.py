"""Where jobs are kept: the ``JobStore`` interface and its SQLite engine.

The interface is what a claim-based queue needs from any engine: ``claim`` hands out queued jobs (and
running ones whose lease ran out) under a lease owned by one process, ``renew`` extends it, and every write
that ends a run (``finish``, ``requeue``) names its owner, so a process that lost its lease cannot
overwrite the result of the one that took the job over (the result is written once). A PostgreSQL engine
implements ``claim`` with ``SELECT ... FOR UPDATE SKIP LOCKED``; the SQLite one serialises claims on the
file's write lock (BEGIN IMMEDIATE), which is the same guarantee on one machine.

The jobs table lives in the store file (gatewayd.db, WAL) beside keys and usage, with its own schema
version (``meta.jobs_schema``), so the jobs migrations never renumber the store's own. Every method blocks;
callers run them in a worker thread. sqlite3's errors become StoreError here.
"""

from __future__ import annotations

import contextlib
import json
import sqlite3
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

from gatewayd.errors import StoreError
from gatewayd.gateway.jobs.model import Delivery, Job, JobState
from gatewayd.store.db import Store

JOBS_SCHEMA_VERSION = 2
#: JOBS_MIGRATIONS[n] takes the jobs table from version n to n + 1
JOBS_MIGRATIONS = (
    """
    CREATE TABLE IF NOT EXISTS jobs (
        seq INTEGER PRIMARY KEY AUTOINCREMENT,
        id TEXT NOT NULL UNIQUE,
        key_id TEXT,
        endpoint TEXT NOT NULL,
        model TEXT NOT NULL,
        request TEXT NOT NULL,
        digest TEXT NOT NULL,
        idempotency_key TEXT,
        priority INTEGER NOT NULL,
        state TEXT NOT NULL,
        attempts INTEGER NOT NULL,
        created_at REAL NOT NULL,
        started_at REAL,
        finished_at REAL,
        not_before REAL NOT NULL,
        owner TEXT,
        lease_until REAL,
        cancel_requested INTEGER NOT NULL DEFAULT 0,
        result TEXT,
        error TEXT,
        webhook_url TEXT,
        webhook_secret TEXT,
        webhook_delivered INTEGER NOT NULL DEFAULT 0,
        webhook_attempts INTEGER NOT NULL DEFAULT 0,
        webhook_next REAL,
        deliveries TEXT NOT NULL DEFAULT '[]'
    );
    CREATE INDEX IF NOT EXISTS jobs_by_queue ON jobs (state, priority DESC, seq);
    CREATE INDEX IF NOT EXISTS jobs_by_finish ON jobs (finished_at) WHERE finished_at IS NOT NULL;
    CREATE INDEX IF NOT EXISTS jobs_by_webhook ON jobs (webhook_next) WHERE webhook_next IS NOT NULL;
    CREATE UNIQUE INDEX IF NOT EXISTS jobs_by_idempotency ON jobs (coalesce(key_id, ''), idempotency_key)
        WHERE idempotency_key IS NOT NULL;
    INSERT OR IGNORE INTO meta (name, value) VALUES ('jobs_schema', 0);
    """,
    # OpenAI-compatible batches: uploaded files, batches, and the batch line each job runs
    """
    ALTER TABLE jobs ADD COLUMN batch_id TEXT;
    ALTER TABLE jobs ADD COLUMN custom_id TEXT;
    CREATE INDEX IF NOT EXISTS jobs_by_batch ON jobs (batch_id, seq) WHERE batch_id IS NOT NULL;
    CREATE TABLE IF NOT EXISTS files (
        id TEXT PRIMARY KEY,
        key_id TEXT,
        filename TEXT NOT NULL,
        purpose TEXT NOT NULL,
        bytes INTEGER NOT NULL,
        created_at REAL NOT NULL,
        content BLOB NOT NULL
    );
    CREATE TABLE IF NOT EXISTS batches (
        id TEXT PRIMARY KEY,
        key_id TEXT,
        endpoint TEXT NOT NULL,
        input_file_id TEXT NOT NULL,
        completion_window TEXT NOT NULL,
        status TEXT NOT NULL,
        total INTEGER NOT NULL,
        created_at REAL NOT NULL,
        finished_at REAL,
        cancelling_at REAL,
        output_file_id TEXT,
        error_file_id TEXT,
        metadata TEXT
    );
    """,
)

_COLUMNS = (
    "id, key_id, endpoint, model, request, state, priority, attempts, created_at, started_at, finished_at,"
    " result, error, idempotency_key, webhook_url, webhook_secret, webhook_delivered, deliveries"
)
#: rows deleted per transaction by ``prune``
PRUNE_CHUNK_ROWS = 5_000
#: ``list`` returns at most this many jobs a page
MAX_PAGE = 1_000


class IdempotencyConflict(Exception):
    """The idempotency key was used before with another body (the route answers 409)."""


#: ``list``'s ``key_id`` for "every key's jobs" (the admin token)
ANY_KEY = object()


@dataclass(frozen=True, slots=True)
class Page:
    jobs: list[Job]
    has_more: bool


class JobStore(Protocol):
    """What the runner and the routes need of an engine (see the module docstring). ``now`` is epoch
    seconds; ``owner`` names one process (host:pid:token)."""

    def submit(self, job: Job, digest: str) -> tuple[Job, bool]:
        """Insert ``job``; with an idempotency key already used by the same key, the existing job and
        False (same digest) or IdempotencyConflict (another one)."""
        ...

    def get(self, job_id: str) -> Job | None: ...

    def page(
        self, *, key_id: object, state: JobState | None, model: str | None, limit: int, after: str | None
    ) -> Page: ...

    def claim(self, owner: str, limit: int, lease_seconds: float, now: float) -> list[Job]:
        """Up to ``limit`` runnable jobs, highest priority then oldest first, now running under ``owner``'s
        lease; each claim counts an attempt. Runnable: queued past its backoff, or running with its lease
        out (its process died)."""
        ...

    def renew(self, owner: str, job_ids: Sequence[str], lease_until: float) -> set[str]:
        """Extend ``owner``'s leases; returns the ids of those whose cancellation was asked for."""
        ...

    def finish(
        self, job_id: str, owner: str, state: JobState, result: Any, error: dict[str, Any] | None, now: float
    ) -> Job | None:
        """End ``owner``'s run in a terminal state; None when the job is no longer ``owner``'s."""
        ...

    def requeue(self, job_id: str, owner: str, not_before: float, *, uncount: bool) -> Job | None:
        """Put ``owner``'s running job back in the queue, to run from ``not_before``; ``uncount`` takes
        back the attempt (the request never reached a backend)."""
        ...

    def cancel(self, job_id: str, now: float) -> Job | None:
        """Cancel a queued job at once; mark a running one for cancellation (its owner ends it)."""
        ...

    def recover(self, is_dead: Callable[[str], bool]) -> int:
        """Put back in the queue the running jobs whose owner ``is_dead`` says is gone; how many."""
        ...

    def counts(self) -> dict[JobState, int]: ...

    def oldest_queued(self) -> float | None:
        """When the oldest queued job was submitted."""
        ...

    def webhooks_due(self, now: float, limit: int) -> list[Job]: ...

    def record_delivery(
        self, job_id: str, delivery: Delivery, delivered: bool, next_at: float | None
    ) -> None: ...

    def prune(self, older_than: float) -> int: ...

    def close(self) -> None: ...


class SqliteJobStore:
    """The JobStore of the embedded SQLite file. One connection, serialised by a lock (thread-safe)."""

    def __init__(self, path: Path, *, busy_timeout_seconds: float = 5.0) -> None:
        Store.open(path, busy_timeout_seconds=busy_timeout_seconds).close()  # the file and its own schema
        self.path = path
        self._lock = threading.Lock()
        try:
            self._conn: sqlite3.Connection | None = sqlite3.connect(
                path, timeout=busy_timeout_seconds, isolation_level=None, check_same_thread=False
            )
        except sqlite3.Error as exc:
            raise StoreError(f"cannot open the job store {path}: {exc}") from exc
        try:
            with self._locked("open the job store") as conn:
                # as the store's own connections: WAL, and a commit survives a crash of the process
                # (the last ones may be lost on a power cut); FULL would fsync every job's every change
                conn.execute("PRAGMA synchronous = NORMAL")
            with self._transaction("create the jobs table") as conn:
                self._migrate(conn)
        except BaseException:
            self.close()
            raise

    def _migrate(self, conn: sqlite3.Connection) -> None:
        row = conn.execute("SELECT value FROM meta WHERE name = 'jobs_schema'").fetchone()
        version = int(row[0]) if row else 0
        if version > JOBS_SCHEMA_VERSION:
            raise StoreError(
                f"the jobs in {self.path} were written by a newer gatewayd (jobs schema {version}; this one "
                f"knows {JOBS_SCHEMA_VERSION}); upgrade gatewayd or point it at another state directory"
            )
        for script in JOBS_MIGRATIONS[version:]:
            for statement in script.split(";"):
                if statement.strip():
                    conn.execute(statement)
        conn.execute("UPDATE meta SET value = ? WHERE name = 'jobs_schema'", (JOBS_SCHEMA_VERSION,))

    def close(self) -> None:
        with self._lock:
            if self._conn is not None:
                with contextlib.suppress(sqlite3.Error):
                    self._conn.close()
                self._conn = None

    # -- submission and reading ----------------------------------------------------------------------

    def submit(self, job: Job, digest: str) -> tuple[Job, bool]:
        with self._transaction("submit a job") as conn:
            if job.idempotency_key is not None:
                row = conn.execute(
                    f"SELECT digest, {_COLUMNS} FROM jobs"
                    " WHERE coalesce(key_id, '') = ? AND idempotency_key = ?",
                    (job.key_id or "", job.idempotency_key),
                ).fetchone()
                if row is not None:
                    if row[0] != digest:
                        raise IdempotencyConflict(job.idempotency_key)
                    return _job(row[1:]), False
            conn.execute(
                "INSERT INTO jobs (id, key_id, endpoint, model, request, digest, idempotency_key, priority,"
                " state, attempts, created_at, not_before, webhook_url, webhook_secret)"
                " VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, 0, ?, ?, ?, ?)",
                (
                    job.id,
                    job.key_id,
                    job.endpoint,
                    job.model,
                    json.dumps(job.request),
                    digest,
                    job.idempotency_key,
                    job.priority,
                    JobState.QUEUED.value,
                    job.created_at,
                    job.created_at,
                    job.webhook_url,
                    job.webhook_secret,
                ),
            )
        return job, True

    def get(self, job_id: str) -> Job | None:
        with self._locked("read a job") as conn:
            row = conn.execute(f"SELECT {_COLUMNS} FROM jobs WHERE id = ?", (job_id,)).fetchone()
        return None if row is None else _job(row)

    def page(
        self, *, key_id: object, state: JobState | None, model: str | None, limit: int, after: str | None
    ) -> Page:
        """Newest first; ``after`` is the id of the last job of the previous page."""
        where: list[str] = []
        values: list[Any] = []
        if key_id is not ANY_KEY:
            where.append("coalesce(key_id, '') = ?")
            values.append(key_id or "")
        if state is not None:
            where.append("state = ?")
            values.append(state.value)
        if model is not None:
            where.append("model = ?")
            values.append(model)
        if after is not None:
            where.append("seq < coalesce((SELECT seq FROM jobs WHERE id = ?), -1)")
            values.append(after)
        clause = f" WHERE {' AND '.join(where)}" if where else ""
        limit = max(1, min(limit, MAX_PAGE))
        with self._locked("list jobs") as conn:
            rows = conn.execute(
                f"SELECT {_COLUMNS} FROM jobs{clause} ORDER BY seq DESC LIMIT ?", (*values, limit + 1)
            ).fetchall()
        return Page([_job(row) for row in rows[:limit]], len(rows) > limit)

    def counts(self) -> dict[JobState, int]:
        with self._locked("count jobs") as conn:
            rows = conn.execute("SELECT state, count(*) FROM jobs GROUP BY state").fetchall()
        counted = {state: 0 for state in JobState}
        counted.update({JobState(state): int(count) for state, count in rows})
        return counted

    def oldest_queued(self) -> float | None:
        with self._locked("read the queue") as conn:
            row = conn.execute("SELECT min(created_at) FROM jobs WHERE state = 'queued'").fetchone()
        return None if row is None or row[0] is None else float(row[0])

    # -- running -------------------------------------------------------------------------------------

    def claim(self, owner: str, limit: int, lease_seconds: float, now: float) -> list[Job]:
        if limit <= 0:
            return []
        with self._transaction("claim jobs") as conn:
            ids = [
                row[0]
                for row in conn.execute(
                    "SELECT id FROM jobs WHERE (state = 'queued' AND not_before <= ?)"
                    " OR (state = 'running' AND lease_until < ?)"
                    " ORDER BY priority DESC, seq LIMIT ?",
                    (now, now, limit),
                )
            ]
            for job_id in ids:
                conn.execute(
                    "UPDATE jobs SET state = 'running', owner = ?, lease_until = ?, attempts = attempts + 1,"
                    " started_at = coalesce(started_at, ?) WHERE id = ?",
                    (owner, now + lease_seconds, now, job_id),
                )
            rows = [conn.execute(f"SELECT {_COLUMNS} FROM jobs WHERE id = ?", (i,)).fetchone() for i in ids]
        return [_job(row) for row in rows]

    def renew(self, owner: str, job_ids: Sequence[str], lease_until: float) -> set[str]:
        if not job_ids:
            return set()
        cancelled: set[str] = set()
        with self._transaction("renew job leases") as conn:
            for job_id in job_ids:
                conn.execute(
                    "UPDATE jobs SET lease_until = ? WHERE id = ? AND owner = ? AND state = 'running'",
                    (lease_until, job_id, owner),
                )
                row = conn.execute("SELECT cancel_requested FROM jobs WHERE id = ?", (job_id,)).fetchone()
                if row is not None and row[0]:
                    cancelled.add(job_id)
        return cancelled

    def finish(
        self, job_id: str, owner: str, state: JobState, result: Any, error: dict[str, Any] | None, now: float
    ) -> Job | None:
        with self._transaction("finish a job") as conn:
            cursor = conn.execute(
                "UPDATE jobs SET state = ?, result = ?, error = ?, finished_at = ?, owner = NULL,"
                " lease_until = NULL, webhook_next = CASE WHEN webhook_url IS NULL THEN NULL ELSE ? END"
                " WHERE id = ? AND owner = ? AND state = 'running'",
                (
                    state.value,
                    None if result is None else json.dumps(result),
                    None if error is None else json.dumps(error),
                    now,
                    now,
                    job_id,
                    owner,
                ),
            )
            if cursor.rowcount == 0:
                return None
            row = conn.execute(f"SELECT {_COLUMNS} FROM jobs WHERE id = ?", (job_id,)).fetchone()
        return _job(row)

    def requeue(self, job_id: str, owner: str, not_before: float, *, uncount: bool) -> Job | None:
        with self._transaction("put a job back in the queue") as conn:
            cursor = conn.execute(
                "UPDATE jobs SET state = 'queued', owner = NULL, lease_until = NULL, not_before = ?,"
                " attempts = attempts - ? WHERE id = ? AND owner = ? AND state = 'running'",
                (not_before, 1 if uncount else 0, job_id, owner),
            )
            if cursor.rowcount == 0:
                return None
            row = conn.execute(f"SELECT {_COLUMNS} FROM jobs WHERE id = ?", (job_id,)).fetchone()
        return _job(row)

    def cancel(self, job_id: str, now: float) -> Job | None:
        with self._transaction("cancel a job") as conn:
            conn.execute(
                "UPDATE jobs SET state = 'cancelled', finished_at = ?,"
                " webhook_next = CASE WHEN webhook_url IS NULL THEN NULL ELSE ? END"
                " WHERE id = ? AND state = 'queued'",
                (now, now, job_id),
            )
            conn.execute("UPDATE jobs SET cancel_requested = 1 WHERE id = ? AND state = 'running'", (job_id,))
            row = conn.execute(f"SELECT {_COLUMNS} FROM jobs WHERE id = ?", (job_id,)).fetchone()
        return None if row is None else _job(row)

    def recover(self, is_dead: Callable[[str], bool]) -> int:
        with self._transaction("recover jobs of a dead process") as conn:
            owners = [
                row[0] for row in conn.execute("SELECT DISTINCT owner FROM jobs WHERE state = 'running'")
            ]
            dead = [owner for owner in owners if owner is not None and is_dead(owner)]
            recovered = 0
            for owner in dead:
                cursor = conn.execute(
                    "UPDATE jobs SET state = 'queued', owner = NULL, lease_until = NULL"
                    " WHERE state = 'running' AND owner = ?",
                    (owner,),
                )
                recovered += cursor.rowcount
        return recovered

    # -- webhooks and retention ------------------------------------------------------------------------

    def webhooks_due(self, now: float, limit: int) -> list[Job]:
        with self._locked("read due webhooks") as conn:
            rows = conn.execute(
                f"SELECT {_COLUMNS} FROM jobs WHERE webhook_next IS NOT NULL AND webhook_next <= ?"
                " ORDER BY webhook_next LIMIT ?",
                (now, limit),
            ).fetchall()
        return [_job(row) for row in rows]

    def record_delivery(
        self, job_id: str, delivery: Delivery, delivered: bool, next_at: float | None
    ) -> None:
        with self._transaction("record a webhook delivery") as conn:
            row = conn.execute("SELECT deliveries FROM jobs WHERE id = ?", (job_id,)).fetchone()
            if row is None:
                return
            deliveries = [*json.loads(row[0]), delivery.public()]
            conn.execute(
                "UPDATE jobs SET deliveries = ?, webhook_delivered = ?,"
                " webhook_attempts = webhook_attempts + 1, webhook_next = ? WHERE id = ?",
                (json.dumps(deliveries), int(delivered), next_at, job_id),
            )

    def prune(self, older_than: float) -> int:
        """Delete jobs finished before ``older_than`` whose webhook is done; returns how many."""
        deleted = 0
        while True:
            with self._transaction("prune finished jobs") as conn:
                cursor = conn.execute(
                    "DELETE FROM jobs WHERE seq IN (SELECT seq FROM jobs WHERE finished_at < ?"
                    " AND webhook_next IS NULL LIMIT ?)",
                    (older_than, PRUNE_CHUNK_ROWS),
                )
            deleted += cursor.rowcount
            if cursor.rowcount < PRUNE_CHUNK_ROWS:
                return deleted

    # -- plumbing --------------------------------------------------------------------------------------

    @contextlib.contextmanager
    def _locked(self, action: str) -> Iterator[sqlite3.Connection]:
        with self._lock:
            if self._conn is None:
                raise StoreError(f"cannot {action}: the job store {self.path} is closed")
            try:
                yield self._conn
            except sqlite3.Error as exc:
                raise StoreError(f"cannot {action}: {exc} ({self.path})") from exc

    @contextlib.contextmanager
    def _transaction(self, action: str) -> Iterator[sqlite3.Connection]:
        with self._locked(action) as conn:
            conn.execute("BEGIN IMMEDIATE")
            try:
                yield conn
                conn.execute("COMMIT")
            except BaseException:
                if conn.in_transaction:
                    with contextlib.suppress(sqlite3.Error):
                        conn.execute("ROLLBACK")
                raise


def _job(row: Sequence[Any]) -> Job:
    (job_id, key_id, endpoint, model, request, state, priority, attempts, created, started, finished,
     result, error, idempotency_key, webhook_url, webhook_secret, delivered, deliveries) = row  # fmt: skip
    return Job(
        id=job_id,
        key_id=key_id,
        endpoint=endpoint,
        model=model,
        request=json.loads(request),
        state=JobState(state),
        priority=int(priority),
        attempts=int(attempts),
        created_at=float(created),
        started_at=started,
        finished_at=finished,
        result=None if result is None else json.loads(result),
        error=None if error is None else json.loads(error),
        idempotency_key=idempotency_key,
        webhook_url=webhook_url,
        webhook_secret=webhook_secret,
        webhook_delivered=bool(delivered),
        deliveries=tuple(Delivery(d["at"], d["status"], d["error"]) for d in json.loads(deliveries)),
    )


def now() -> float:
    return time.time()
