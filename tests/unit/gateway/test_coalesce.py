"""CoalescedRefresh with a store stand-in whose reads the test holds open, so every interleaving is
reached by events rather than by timing."""

from __future__ import annotations

import anyio
import pytest

from gatewayd.gateway.coalesce import CoalescedRefresh


class Store:
    """A value that changes (a key revoked), and reads of it that block until the test lets them end."""

    def __init__(self) -> None:
        self.version = 1
        self.seen: list[int] = []  # what each read saw, in order
        self.gate = anyio.Event()
        self.reading = anyio.Event()

    async def read(self) -> None:
        version = self.version  # a read sees the store as it was when it began
        self.reading.set()
        await self.gate.wait()
        self.seen.append(version)


def test_a_call_made_while_a_read_is_running_waits_for_the_next_read_and_sees_the_change() -> None:
    async def main() -> None:
        store = Store()
        refresh = CoalescedRefresh(store.read, min_interval_seconds=lambda: 0.0)
        seen_by_caller: list[int] = []

        async def after_change() -> None:
            await refresh.request()
            seen_by_caller.append(store.seen[-1])

        async with anyio.create_task_group() as tg:
            tg.start_soon(refresh.request)  # a nudge: its read begins before the change
            await store.reading.wait()
            store.version = 2  # the CLI revokes a key...
            tg.start_soon(after_change)  # ...and nudges while the first read still runs
            await anyio.wait_all_tasks_blocked()
            store.gate.set()
        assert store.seen == [1, 2]
        assert seen_by_caller == [2]
        assert refresh.runs == 2

    anyio.run(main)


def test_calls_that_arrive_during_a_read_share_the_next_one() -> None:
    async def main() -> None:
        store = Store()
        refresh = CoalescedRefresh(store.read, min_interval_seconds=lambda: 0.0)
        async with anyio.create_task_group() as tg:
            tg.start_soon(refresh.request)
            await store.reading.wait()
            for _ in range(50):
                tg.start_soon(refresh.request)
            await anyio.wait_all_tasks_blocked()
            store.gate.set()
        assert refresh.runs == 2

    anyio.run(main)


def test_reads_are_at_least_the_interval_apart() -> None:
    async def main() -> None:
        store = Store()
        store.gate.set()
        began: list[float] = []

        async def read() -> None:
            began.append(anyio.current_time())
            await store.read()

        refresh = CoalescedRefresh(read, min_interval_seconds=lambda: 0.2)
        for _ in range(3):
            await refresh.request()
        assert refresh.runs == 3
        assert began[1] - began[0] >= 0.2
        assert began[2] - began[1] >= 0.2

    anyio.run(main)


def test_a_read_that_fails_is_not_taken_as_done_by_those_waiting_for_it() -> None:
    async def main() -> None:
        calls = 0

        async def flaky() -> None:
            nonlocal calls
            calls += 1
            if calls == 1:
                raise OSError("store unreadable")

        refresh = CoalescedRefresh(flaky, min_interval_seconds=lambda: 0.0)
        with pytest.raises(OSError, match="unreadable"):
            await refresh.request()
        await refresh.request()
        assert calls == 2

    anyio.run(main)
