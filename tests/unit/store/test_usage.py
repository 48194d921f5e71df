"""Usage records in a real store file: summaries by key, model and backend, ``since``, retention; and the
batching writer: written within a flush interval or as soon as a batch waits, flushed on a clean stop,
bounded by max_buffer."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import anyio
import pytest

from gatewayd.config import UsageSettings
from gatewayd.store import Store, UsageRecord, UsageWriter
from gatewayd.store.target import StoreTarget
from tests.unit.store.conftest import StoreOpener

#: long enough never to fire in a test that does not wait for it
NEVER_SECONDS = 600.0
WAIT_SECONDS = 10.0
NOW = 1_800_000_000.0


def record(
    index: int,
    *,
    time: float = NOW,
    key_id: str | None = None,
    model: str = "llama",
    backend: str | None = "gpu",
    status: int = 200,
    latency: float = 1.0,
    ttft: float | None = 0.1,
) -> UsageRecord:
    return UsageRecord(
        time=time,
        key_id=key_id,
        model=model,
        backend=backend,
        prompt_tokens=10 * index,
        completion_tokens=index,
        latency_seconds=latency,
        ttft_seconds=ttft,
        status=status,
        attempts=1,
    )


def stored_rows(target: StoreTarget) -> list[tuple[object, ...]]:
    """(model, prompt_tokens) of every stored record, read through a connection of the test's own."""
    store = Store.connect(target)
    try:
        with store.engine.session("read usage") as session:
            rows = session.execute("SELECT model, prompt_tokens FROM usage ORDER BY id").fetchall()
        return [(model, int(tokens)) for model, tokens in rows]
    finally:
        store.close()


async def wait_until(condition: Callable[[], bool]) -> None:
    with anyio.fail_after(WAIT_SECONDS):
        while not condition():
            await anyio.sleep(0.01)


def test_summary_by_model_backend_and_key(open_store: StoreOpener) -> None:
    store = open_store()
    alice, _ = store.create_key(name="alice")
    rows = [record(i, key_id=alice.id, latency=float(i)) for i in range(1, 21)]  # llama on gpu, 1..20 s
    rows += [
        record(1, model="qwen", backend="cpu", status=503, ttft=None),
        record(2, model="qwen", backend=None),
    ]
    store.insert_usage(rows)

    by_model = {row.group: row for row in store.usage_summary(by="model")}
    llama = by_model["llama"]
    assert (llama.requests, llama.errors, llama.prompt_tokens, llama.completion_tokens) == (20, 0, 2100, 210)
    assert llama.avg_latency_seconds == pytest.approx(10.5)
    assert llama.p50_latency_seconds == 10.0
    assert llama.p95_latency_seconds == 19.0
    assert llama.avg_ttft_seconds == pytest.approx(0.1)
    qwen = by_model["qwen"]
    assert (qwen.requests, qwen.errors) == (2, 1)

    by_backend = {row.group: row.requests for row in store.usage_summary(by="backend")}
    assert by_backend == {"gpu": 20, "cpu": 1, "-": 1}
    by_key = [(row.group, row.requests) for row in store.usage_summary(by="key")]
    assert by_key == [("alice", 20), ("-", 2)]  # busiest first
    with pytest.raises(ValueError, match="by 'user'"):
        store.usage_summary(by="user")


def test_two_keys_with_one_name_are_told_apart(open_store: StoreOpener) -> None:
    store = open_store()
    one, _ = store.create_key(name="team")
    two, _ = store.create_key(name="team")
    store.insert_usage([record(1, key_id=one.id), record(1, key_id=two.id)])
    groups = {row.group for row in store.usage_summary(by="key")}
    assert groups == {f"team ({one.id})", f"team ({two.id})"}


def test_since_tokens_recent_usage_and_retention(open_store: StoreOpener) -> None:
    store = open_store()
    old = [record(1, time=NOW - 100 * 86_400, key_id="k_1"), record(2, time=NOW - 86_400, key_id="k_1")]
    new = [record(3, time=NOW - 60, key_id="k_1"), record(4, time=NOW, key_id="k_2"), record(5, time=NOW)]
    store.insert_usage(old + new)

    (recent,) = store.usage_summary(since=NOW - 3600, by="model")
    assert recent.requests == 3
    assert store.usage_summary(since=NOW + 1) == []
    assert store.tokens_used("k_1") == 11 + 22 + 33
    assert store.tokens_used("k_1", since=NOW - 3600) == 33
    assert store.recent_usage(NOW - 3600) == [("k_1", NOW - 60, 33), ("k_2", NOW, 44)]

    assert store.prune_usage(NOW - 90 * 86_400) == 1
    assert store.prune_usage(NOW - 90 * 86_400) == 0
    assert store.tokens_used("k_1") == 22 + 33


@pytest.mark.anyio
async def test_records_are_written_within_a_flush_interval(store_target: StoreTarget) -> None:
    writer = UsageWriter(store_target, flush_interval_seconds=0.05)
    async with anyio.create_task_group() as tg:
        await tg.start(writer.run)
        for i in range(3):
            writer.add(record(i, model=f"m{i}"))
        await wait_until(lambda: writer.written_total == 3)
        assert writer.backlog == 0
        assert writer.last_flush_seconds is not None
        assert stored_rows(store_target) == [("m0", 0), ("m1", 10), ("m2", 20)]
        tg.cancel_scope.cancel()


@pytest.mark.anyio
async def test_a_full_batch_is_written_before_the_interval(store_target: StoreTarget) -> None:
    writer = UsageWriter(store_target, flush_interval_seconds=NEVER_SECONDS, batch_size=5)
    async with anyio.create_task_group() as tg:
        await tg.start(writer.run)
        for i in range(5):
            writer.add(record(i))
        await wait_until(lambda: writer.written_total == 5)
        tg.cancel_scope.cancel()
    assert len(stored_rows(store_target)) == 5


@pytest.mark.anyio
async def test_a_clean_stop_writes_what_is_buffered(store_target: StoreTarget) -> None:
    writer = UsageWriter(store_target, flush_interval_seconds=NEVER_SECONDS)
    async with anyio.create_task_group() as tg:
        await tg.start(writer.run)
        for i in range(7):
            writer.add(record(i, model=f"m{i}"))
        tg.cancel_scope.cancel()
    assert writer.written_total == 7
    assert writer.backlog == 0
    assert [model for model, _ in stored_rows(store_target)] == [f"m{i}" for i in range(7)]


@pytest.mark.anyio
async def test_past_max_buffer_the_oldest_are_dropped_and_counted(store_target: StoreTarget) -> None:
    writer = UsageWriter(store_target, flush_interval_seconds=NEVER_SECONDS, max_buffer=3)
    for i in range(5):
        writer.add(record(i, model=f"m{i}"))
    assert (writer.backlog, writer.dropped_total) == (3, 2)
    async with anyio.create_task_group() as tg:
        await tg.start(writer.run)
        tg.cancel_scope.cancel()
    assert [model for model, _ in stored_rows(store_target)] == ["m2", "m3", "m4"]


@pytest.mark.anyio
async def test_old_records_are_pruned_past_the_retention(store_target: StoreTarget) -> None:
    store = Store.connect(store_target)
    store.insert_usage([record(1, time=NOW - 3 * 86_400, model="old"), record(2, time=NOW, model="new")])
    store.close()
    writer = UsageWriter(store_target, flush_interval_seconds=0.05, retention_days=2, clock=lambda: NOW)
    async with anyio.create_task_group() as tg:
        await tg.start(writer.run)
        await wait_until(lambda: [model for model, _ in stored_rows(store_target)] == ["new"])
        tg.cancel_scope.cancel()


def test_configure_takes_new_settings() -> None:
    writer = UsageWriter(Path("unused.db"), max_buffer=10)
    writer.configure(UsageSettings(max_buffer=2, batch_size=1, flush_interval_seconds=0.5, retention_days=1))
    for i in range(4):
        writer.add(record(i))
    assert (writer.backlog, writer.dropped_total) == (2, 2)
