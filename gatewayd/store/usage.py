"""Usage records and the writer that gets them into the store without ever holding up a request.

Requests only append to an in-memory buffer (``UsageWriter.add``). The writer's task writes the buffer in
one transaction per flush (a backlog left by an outage in transactions of at most FLUSH_MAX_ROWS, so the
write lock is never held long), in a worker thread, on its own connection. When the store is locked, slow or
unavailable the rows stay buffered (up to ``max_buffer``; beyond it the oldest are dropped and counted) and
are retried with backoff; a clean stop writes what is left, within FINAL_FLUSH_TIMEOUT_SECONDS.
"""

from __future__ import annotations

import collections
import logging
import sqlite3
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import NamedTuple

import anyio
import anyio.to_thread
from anyio.abc import TaskStatus

from gatewayd.config import UsageSettings
from gatewayd.errors import StoreError
from gatewayd.store.db import Store
from gatewayd.store.target import StoreTarget

log = logging.getLogger("gatewayd.store")

SECONDS_PER_DAY = 86_400.0
#: a clean stop writes what is buffered for at most this long; what is left after it is lost (and logged)
FINAL_FLUSH_TIMEOUT_SECONDS = 5.0
#: rows written in one transaction at most (about 0.1 s of write lock), so that other writers (the CLI
#: creating a key) get their turn while a backlog is caught up
FLUSH_MAX_ROWS = 10_000
#: during a clean stop a failed write is tried again after this long
FINAL_RETRY_INTERVAL_SECONDS = 0.05
#: after a failed write the next one waits twice as long each time, up to this
RETRY_MAX_SECONDS = 30.0
#: old records are pruned about this often (the first time soon after start)
PRUNE_INTERVAL_SECONDS = 3600.0


class UsageRecord(NamedTuple):
    """One request, as recorded when it ends. A tuple: one is built on every request's path, and a named
    tuple is built in a tenth of the time of a frozen dataclass."""

    #: epoch seconds when the request arrived
    time: float
    #: None with auth off
    key_id: str | None
    model: str
    #: None when no backend was tried (refused before routing)
    backend: str | None
    prompt_tokens: int
    completion_tokens: int
    latency_seconds: float
    #: None for a request that produced no token (an error, an embedding)
    ttft_seconds: float | None
    #: the HTTP status sent to the client
    status: int
    #: backends tried
    attempts: int


class UsageWriter:
    """Owns the usage buffer of one process and the task that writes it (``run``).

    ``add`` is called on the event loop's thread. The counters are for metrics: ``backlog`` records waiting
    (including a batch being written), ``written_total``, ``dropped_total`` (lost to ``max_buffer``),
    ``failed_flushes_total``, and ``last_flush_seconds`` (how long the last successful write took)."""

    def __init__(
        self,
        target: StoreTarget | Path,
        *,
        flush_interval_seconds: float = 1.0,
        batch_size: int = 500,
        max_buffer: int = 100_000,
        retention_days: float = 90.0,
        busy_timeout_seconds: float = 0.2,
        final_flush_timeout_seconds: float = FINAL_FLUSH_TIMEOUT_SECONDS,
        retry_max_seconds: float = RETRY_MAX_SECONDS,
        prune_interval_seconds: float = PRUNE_INTERVAL_SECONDS,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.target = target if isinstance(target, StoreTarget) else StoreTarget.sqlite(target)
        self._flush_interval_seconds = flush_interval_seconds
        self._batch_size = max(1, batch_size)
        self._max_buffer = max(1, max_buffer)
        self._retention_seconds = retention_days * SECONDS_PER_DAY
        self._busy_timeout_seconds = busy_timeout_seconds
        self._final_flush_timeout_seconds = final_flush_timeout_seconds
        self._retry_max_seconds = retry_max_seconds
        self._prune_interval_seconds = prune_interval_seconds
        self._clock = clock
        self._buffer: collections.deque[UsageRecord] = collections.deque()
        self._in_flight = 0
        self._wake: anyio.Event | None = None
        self._store: Store | None = None
        self._store_target = self.target
        #: guards opening and closing ``_store``: a thread abandoned at a stop may still be using it
        self._store_lock = threading.Lock()
        self._next_prune = 0.0
        #: failed writes in a row; > 0 means the store is out (one warning when it starts, one line when over)
        self._failures = 0
        self._outage_started = 0.0
        self.written_total = 0
        self.dropped_total = 0
        self.failed_flushes_total = 0
        self.last_flush_seconds: float | None = None

    def use(self, target: StoreTarget) -> None:
        """Write to ``target`` from the next flush on (the store named by the config, once it is known)."""
        self.target = target

    def configure(self, settings: UsageSettings) -> None:
        """Take a new config's usage settings; they apply from the next flush (a smaller ``max_buffer``
        from the next record added or put back)."""
        self._flush_interval_seconds = settings.flush_interval_seconds
        self._batch_size = max(1, settings.batch_size)
        self._max_buffer = max(1, settings.max_buffer)
        self._retention_seconds = settings.retention_days * SECONDS_PER_DAY

    @property
    def backlog(self) -> int:
        return len(self._buffer) + self._in_flight

    def add(self, record: UsageRecord) -> None:
        """Buffer ``record``: O(1), never blocks, never raises. Past ``max_buffer`` the oldest waiting
        record is dropped (and counted)."""
        if self.backlog >= self._max_buffer and self._buffer:
            self._buffer.popleft()
            self.dropped_total += 1
        self._buffer.append(record)
        if len(self._buffer) >= self._batch_size and self._wake is not None and self._failures == 0:
            self._wake.set()

    async def run(self, *, task_status: TaskStatus[None] = anyio.TASK_STATUS_IGNORED) -> None:
        """Write the buffer every flush interval (sooner when a batch is waiting) until cancelled.

        Never raises for a store problem: it logs a warning once per outage and retries with backoff.
        On cancellation it writes what is buffered (shielded, within ``final_flush_timeout_seconds``),
        closes its connection and re-raises the cancellation."""
        self._wake = anyio.Event()
        task_status.started()
        try:
            while True:
                if self._failures:
                    await anyio.sleep(self._retry_delay())
                else:
                    with anyio.move_on_after(self._flush_interval_seconds):
                        await self._wake.wait()
                self._wake = anyio.Event()
                await self._flush_backlog()
                if not self._failures and self._clock() >= self._next_prune:
                    await self._prune()
        finally:
            with anyio.move_on_after(self._final_flush_timeout_seconds, shield=True) as scope:
                await self._final_flush()
            if scope.cancelled_caught and self._buffer:
                log.error(
                    "usage store: %d records could not be written within %.1f s of stopping and are lost",
                    len(self._buffer),
                    self._final_flush_timeout_seconds,
                )
            with anyio.move_on_after(self._final_flush_timeout_seconds, shield=True):
                await anyio.to_thread.run_sync(self._close, abandon_on_cancel=True)

    async def _flush_backlog(self) -> None:
        """Write what is buffered now, FLUSH_MAX_ROWS a transaction, stopping at the first failure."""
        left = len(self._buffer)
        while left > 0 and await self._flush():
            left -= FLUSH_MAX_ROWS

    async def _flush(self) -> bool:
        """Write the oldest FLUSH_MAX_ROWS buffered in one transaction. True when written; False when the
        store refused (the rows go back to the front of the buffer). On cancellation the worker thread is
        abandoned and finishes on its own; its rows are not put back, so they are never written twice."""
        rows = [self._buffer.popleft() for _ in range(min(len(self._buffer), FLUSH_MAX_ROWS))]
        self._in_flight = len(rows)
        started = time.monotonic()
        try:
            await anyio.to_thread.run_sync(self._write, rows, abandon_on_cancel=True)
        except (StoreError, sqlite3.Error) as exc:
            self._in_flight = 0
            self._requeue(rows)
            self._failed(exc)
            return False
        except Exception:  # rows the store cannot take at all (a value out of range): drop, never crash
            self._in_flight = 0
            self.dropped_total += len(rows)
            log.exception("usage store: %d record(s) could not be written and were dropped", len(rows))
            return True
        except anyio.get_cancelled_exc_class():
            self._in_flight = 0
            raise
        self._in_flight = 0
        self.written_total += len(rows)
        self.last_flush_seconds = time.monotonic() - started
        if self._failures:
            log.warning(
                "usage store: writing again after %d failed attempts over %.1f s; %d records were waiting",
                self._failures,
                time.monotonic() - self._outage_started,
                len(rows) + len(self._buffer),
            )
            self._failures = 0
        return True

    async def _final_flush(self) -> None:
        while self._buffer:
            if not await self._flush():
                await anyio.sleep(FINAL_RETRY_INTERVAL_SECONDS)

    async def _prune(self) -> None:
        self._next_prune = self._clock() + self._prune_interval_seconds
        older_than = self._clock() - self._retention_seconds
        try:
            deleted = await anyio.to_thread.run_sync(self._prune_blocking, older_than, abandon_on_cancel=True)
        except (StoreError, sqlite3.Error) as exc:
            log.info("usage store: pruning old records failed (tried again later): %s", exc)
            return
        if deleted:
            log.info("usage store: pruned %d records older than the retention", deleted)

    def _requeue(self, rows: list[UsageRecord]) -> None:
        self._buffer.extendleft(reversed(rows))
        while len(self._buffer) > self._max_buffer:
            self._buffer.popleft()
            self.dropped_total += 1

    def _failed(self, exc: Exception) -> None:
        self.failed_flushes_total += 1
        if self._failures == 0:
            self._outage_started = time.monotonic()
            log.warning(
                "usage store: cannot write (%s); keeping %d records in memory and retrying", exc, self.backlog
            )
        self._failures += 1

    def _retry_delay(self) -> float:
        return min(self._retry_max_seconds, self._flush_interval_seconds * 2 ** min(self._failures - 1, 30))

    # -- worker thread -------------------------------------------------------------------------------------

    def _opened(self) -> Store:
        with self._store_lock:
            if self._store is not None and self._store_target != self.target:
                self._store.close()
                self._store = None
            if self._store is None:
                self._store_target = self.target
                self._store = Store.connect(self.target, busy_timeout_seconds=self._busy_timeout_seconds)
            return self._store

    def _write(self, rows: list[UsageRecord]) -> None:
        self._opened().insert_usage(rows)

    def _prune_blocking(self, older_than: float) -> int:
        return self._opened().prune_usage(older_than)

    def _close(self) -> None:
        with self._store_lock:
            if self._store is not None:
                self._store.close()
                self._store = None
