"""A storage problem never becomes an outage: with the store locked by another process (a real child
holding ``BEGIN EXCLUSIVE``) or unavailable, ``add`` keeps returning at once and usage waits in memory,
then is written once, without duplicates; a stop while locked still writes everything once the lock goes;
and a writer killed with SIGKILL in the middle of its writes leaves a store that opens cleanly and holds
only whole transactions."""

from __future__ import annotations

import os
import signal
import sqlite3
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import anyio
import anyio.to_thread
import pytest

from gatewayd.store import Store, UsageRecord, UsageWriter, hash_key
from tests.support.fake_backend import REPO_ROOT

pytestmark = pytest.mark.anyio

WAIT_SECONDS = 20.0
#: holds the write lock of the store given as argv[1] until a line arrives on stdin
LOCK_HOLDER = """
import sqlite3, sys
conn = sqlite3.connect(sys.argv[1], isolation_level=None)
conn.execute("BEGIN EXCLUSIVE")
print("locked", flush=True)
sys.stdin.readline()
conn.execute("COMMIT")
conn.close()
"""
#: writes batches of ROWS records (batch n: model "b<n>") to argv[1] forever, printing n after each commit
ROWS_PER_BATCH = 2000
ENDLESS_WRITER = f"""
import sys
from pathlib import Path
from gatewayd.store import Store, UsageRecord
store = Store.open(Path(sys.argv[1]), busy_timeout_seconds=5)
batch = 0
while True:
    rows = [UsageRecord(time=1.0, key_id=None, model=f"b{{batch}}", backend=None, prompt_tokens=i,
                        completion_tokens=0, latency_seconds=0.0, ttft_seconds=None, status=200, attempts=1)
            for i in range({ROWS_PER_BATCH})]
    store.insert_usage(rows)
    print(batch, flush=True)
    batch += 1
"""
#: batches the killed writer must have reported as committed before it is killed
BATCHES_BEFORE_KILL = 10


class LockHolder:
    """A child process holding the store's write lock until ``release``."""

    def __init__(self, path: Path) -> None:
        self.process = subprocess.Popen(
            [sys.executable, "-c", LOCK_HOLDER, str(path)],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
        )
        assert self.process.stdout is not None
        assert self.process.stdout.readline().strip() == "locked"

    def release(self) -> None:
        if self.process.returncode is None:
            assert self.process.stdin is not None
            self.process.stdin.write("\n")
            self.process.stdin.close()
            assert self.process.wait(timeout=WAIT_SECONDS) == 0
        assert self.process.stdout is not None
        self.process.stdout.close()


@pytest.fixture
def store_path(tmp_path: Path) -> Path:
    path = tmp_path / "state" / "gatewayd.db"
    Store.open(path).close()
    return path


@pytest.fixture
def lock_holder(store_path: Path) -> Iterator[LockHolder]:
    holder = LockHolder(store_path)
    yield holder
    holder.release()


def record(index: int) -> UsageRecord:
    return UsageRecord(
        time=time.time() + index,  # recent: the writer prunes what is past its retention
        key_id=None,
        model=f"m{index}",
        backend="gpu",
        prompt_tokens=index,
        completion_tokens=0,
        latency_seconds=0.5,
        ttft_seconds=None,
        status=200,
        attempts=1,
    )


def counts(path: Path) -> tuple[int, int]:
    """(rows, distinct models) in the store: equal when nothing was written twice."""
    store = Store.open(path)
    try:
        rows = store.usage_summary(by="model")
    finally:
        store.close()
    return sum(row.requests for row in rows), len(rows)


def writer(path: Path, **overrides: float) -> UsageWriter:
    settings: dict[str, float] = {
        "flush_interval_seconds": 0.02,
        "busy_timeout_seconds": 0.02,
        "retry_max_seconds": 0.1,
        "final_flush_timeout_seconds": WAIT_SECONDS,
    }
    settings.update(overrides)
    return UsageWriter(path, **settings)  # type: ignore[arg-type]


async def wait_until(condition: Callable[[], bool]) -> None:
    with anyio.fail_after(WAIT_SECONDS):
        while not condition():
            await anyio.sleep(0.01)


async def test_a_locked_store_buffers_usage_and_writes_it_once_released(
    store_path: Path, lock_holder: LockHolder
) -> None:
    usage = writer(store_path)
    async with anyio.create_task_group() as tg:
        await tg.start(usage.run)
        for i in range(100):
            usage.add(record(i))
        assert usage.backlog == 100  # add only buffers
        await wait_until(lambda: usage.failed_flushes_total >= 3)
        assert usage.written_total == 0
        for i in range(100, 150):
            usage.add(record(i))
        assert usage.backlog == 150
        assert counts(store_path) == (0, 0)  # readers are not blocked by the writer's lock (WAL)

        await anyio.to_thread.run_sync(lock_holder.release)
        await wait_until(lambda: usage.written_total == 150)
        assert usage.backlog == 0
        assert usage.dropped_total == 0
        tg.cancel_scope.cancel()
    assert counts(store_path) == (150, 150)


async def test_a_stop_while_locked_writes_everything_once_the_lock_goes(
    store_path: Path, lock_holder: LockHolder
) -> None:
    usage = writer(store_path)
    async with anyio.create_task_group() as tg:
        stop = anyio.CancelScope()

        async def run_until_stopped() -> None:
            with stop:
                await usage.run()

        tg.start_soon(run_until_stopped)
        for i in range(40):
            usage.add(record(i))
        await wait_until(lambda: usage.failed_flushes_total >= 1)
        stop.cancel()
        failed = usage.failed_flushes_total
        await wait_until(lambda: usage.failed_flushes_total > failed)  # the final flush meets the lock
        await anyio.to_thread.run_sync(lock_holder.release)
    assert usage.written_total == 40
    assert counts(store_path) == (40, 40)


async def test_an_unavailable_store_buffers_until_it_can_be_created(tmp_path: Path) -> None:
    blocker = tmp_path / "state"
    blocker.write_text("a file where the state directory should be")
    path = blocker / "gatewayd.db"
    usage = writer(path)
    async with anyio.create_task_group() as tg:
        await tg.start(usage.run)
        for i in range(10):
            usage.add(record(i))
        await wait_until(lambda: usage.failed_flushes_total >= 2)
        assert usage.backlog == 10
        blocker.unlink()
        await wait_until(lambda: usage.written_total == 10)
        tg.cancel_scope.cancel()
    assert counts(path) == (10, 10)


def test_a_writer_killed_in_the_middle_of_writes_leaves_a_consistent_store(store_path: Path) -> None:
    child = subprocess.Popen(
        [sys.executable, "-c", ENDLESS_WRITER, str(store_path)],
        cwd=REPO_ROOT,
        stdout=subprocess.PIPE,
        text=True,
    )
    assert child.stdout is not None
    reported = [int(child.stdout.readline()) for _ in range(BATCHES_BEFORE_KILL)]
    os.kill(child.pid, signal.SIGKILL)
    assert child.wait(timeout=WAIT_SECONDS) == -signal.SIGKILL
    child.stdout.close()

    store = Store.open(store_path)
    try:
        rows = {row.group: row.requests for row in store.usage_summary(by="model")}
        batches = sorted(int(group.removeprefix("b")) for group in rows)
        assert batches == list(range(len(batches)))  # no gap: commits are in order
        assert len(batches) >= len(reported)  # every commit reported survived
        assert set(rows.values()) == {ROWS_PER_BATCH}  # no half-written transaction
        store.insert_usage([record(1)])  # and it takes writes again
        key, secret = store.create_key(name="after-the-crash")
        assert store.key_by_hash(hash_key(secret)) == key
    finally:
        store.close()
    conn = sqlite3.connect(store_path)
    try:
        assert conn.execute("PRAGMA integrity_check").fetchall() == [("ok",)]
    finally:
        conn.close()
