"""Admission to one backend: slots, the bounded FIFO queue, its wait timeout, and cancelled waiters."""

from __future__ import annotations

import anyio
import anyio.lowlevel
import pytest

from gatewayd.errors import Overloaded
from gatewayd.gateway.backends.admission import Admission

pytestmark = pytest.mark.anyio

#: long enough never to fire in a test that does not wait for it
NEVER_SECONDS = 60.0


def admission(
    capacity: int = 1, queue_size: int = 2, queue_timeout: float = NEVER_SECONDS, retry_after: float = 3.0
) -> Admission:
    return Admission(
        capacity=capacity,
        queue_size=queue_size,
        queue_timeout_seconds=queue_timeout,
        retry_after_seconds=retry_after,
    )


async def wait_queued(slots: Admission, count: int) -> None:
    with anyio.fail_after(5):
        while slots.queued != count:
            await anyio.lowlevel.checkpoint()


async def test_slots_are_taken_at_once_up_to_capacity() -> None:
    slots = admission(capacity=2)
    await slots.acquire("b")
    assert slots.try_acquire()
    assert slots.in_flight == 2
    assert slots.free == 0
    assert not slots.try_acquire()
    slots.release()
    slots.release()
    assert slots.in_flight == 0
    assert slots.free == 2


async def test_a_full_queue_refuses_at_once_with_retry_after() -> None:
    slots = admission(capacity=1, queue_size=1, retry_after=3.0)
    await slots.acquire("b")
    async with anyio.create_task_group() as tg:
        tg.start_soon(slots.acquire, "b")
        await wait_queued(slots, 1)
        with pytest.raises(Overloaded) as caught:
            await slots.acquire("b")
        assert caught.value.retry_after == 3.0
        assert "queue is full" in caught.value.message
        slots.release()  # the waiter gets the slot
    assert slots.in_flight == 1
    assert slots.queued == 0


async def test_a_zero_queue_refuses_whenever_no_slot_is_free() -> None:
    slots = admission(capacity=1, queue_size=0)
    await slots.acquire("b")
    with pytest.raises(Overloaded):
        await slots.acquire("b")


async def test_a_wait_past_the_queue_timeout_is_refused_and_leaves_the_queue() -> None:
    slots = admission(capacity=1, queue_timeout=0.05, retry_after=1.0)
    await slots.acquire("b")
    started = anyio.current_time()
    with pytest.raises(Overloaded) as caught:
        await slots.acquire("b")
    assert anyio.current_time() - started >= 0.05
    assert "within 0.05 s" in caught.value.message
    assert caught.value.retry_after == 1.0
    assert slots.queued == 0
    assert slots.in_flight == 1


async def test_waiters_are_served_in_arrival_order() -> None:
    slots = admission(capacity=1, queue_size=3)
    order: list[int] = []
    await slots.acquire("b")

    async def wait(number: int) -> None:
        await slots.acquire("b")
        order.append(number)

    async with anyio.create_task_group() as tg:
        for number in range(3):
            tg.start_soon(wait, number)
            await wait_queued(slots, number + 1)
        for _ in range(3):
            slots.release()
            await anyio.lowlevel.checkpoint()
    assert order == [0, 1, 2]
    assert slots.in_flight == 1


async def test_a_free_slot_is_not_taken_ahead_of_waiters() -> None:
    slots = admission(capacity=1, queue_size=2)
    await slots.acquire("b")
    async with anyio.create_task_group() as tg:
        tg.start_soon(slots.acquire, "b")
        await wait_queued(slots, 1)
        slots.release()  # handed to the waiter, which has not run yet
        assert not slots.try_acquire()
    assert slots.in_flight == 1


async def test_a_cancelled_waiter_leaves_the_queue() -> None:
    slots = admission(capacity=1, queue_size=1)
    await slots.acquire("b")
    async with anyio.create_task_group() as tg:
        tg.start_soon(slots.acquire, "b")
        await wait_queued(slots, 1)
        tg.cancel_scope.cancel()
    assert slots.queued == 0
    slots.release()
    assert slots.in_flight == 0
    await slots.acquire("b")  # the queue has room again
    assert slots.in_flight == 1


async def test_a_slot_granted_to_a_waiter_cancelled_in_the_same_instant_is_passed_on() -> None:
    slots = admission(capacity=1, queue_size=2)
    await slots.acquire("b")
    second_got_it = anyio.Event()

    async def second() -> None:
        await slots.acquire("b")
        second_got_it.set()

    first_scope = anyio.CancelScope()
    async with anyio.create_task_group() as tg:
        tg.start_soon(_acquire_in, first_scope, slots)
        await wait_queued(slots, 1)
        tg.start_soon(second)
        await wait_queued(slots, 2)
        first_scope.cancel()  # the first waiter's cancellation is on its way...
        slots.release()  # ...when the slot is granted to it, before it runs again
        with anyio.fail_after(5):
            await second_got_it.wait()
    assert slots.in_flight == 1
    assert slots.queued == 0


async def _acquire_in(scope: anyio.CancelScope, slots: Admission) -> None:
    with scope:
        await slots.acquire("b")
        pytest.fail("the cancelled waiter must not keep the slot")


async def test_priority_waiters_are_served_before_the_others_fifo_among_themselves() -> None:
    slots = admission(capacity=1, queue_size=10)
    await slots.acquire("b")
    order: list[str] = []

    async def wait(name: str, priority: bool) -> None:
        await slots.acquire("b", priority=priority)
        order.append(name)

    async with anyio.create_task_group() as tg:
        for index, (name, priority) in enumerate(
            [("chat-1", False), ("embed-1", True), ("chat-2", False), ("embed-2", True)]
        ):
            tg.start_soon(wait, name, priority)
            await wait_queued(slots, index + 1)
        for served in range(4):
            slots.release()
            with anyio.fail_after(5):
                while len(order) <= served:
                    await anyio.lowlevel.checkpoint()
    assert order == ["embed-1", "embed-2", "chat-1", "chat-2"]


async def test_unbounded_admits_every_request_at_once_and_is_never_full() -> None:
    slots = Admission(capacity=None, queue_size=0, queue_timeout_seconds=NEVER_SECONDS, retry_after_seconds=1)
    for _ in range(100):
        await slots.acquire("b")
    assert (slots.in_flight, slots.queued, slots.free, slots.queue_full) == (100, 0, None, False)
    for _ in range(100):
        slots.release()
    assert slots.in_flight == 0


async def test_a_raised_capacity_admits_waiters_at_once_counted_once() -> None:
    slots = admission(capacity=1, queue_size=4)
    await slots.acquire("b")
    admitted: list[int] = []
    async with anyio.create_task_group() as tg:
        for n in range(3):
            tg.start_soon(lambda n=n: _acquire_then_note(slots, n, admitted))
        await wait_queued(slots, 3)
        slots.set_capacity(3)  # room for two of the three, in arrival order
        assert (slots.in_flight, slots.queued) == (3, 1)
        slots.set_capacity(None)  # unbounded: the last one too
        assert (slots.in_flight, slots.queued) == (4, 0)
    assert admitted == [0, 1, 2]
    for _ in range(4):
        slots.release()
    assert slots.in_flight == 0


async def test_a_cut_capacity_lets_the_admitted_finish_and_new_ones_wait_under_it() -> None:
    slots = admission(capacity=3, queue_size=4)
    for _ in range(3):
        await slots.acquire("b")
    slots.set_capacity(1)
    assert slots.free == 0
    assert not slots.queue_full
    admitted: list[int] = []
    async with anyio.create_task_group() as tg:
        tg.start_soon(lambda: _acquire_then_note(slots, 0, admitted))
        await wait_queued(slots, 1)
        slots.release()
        slots.release()  # one still in flight: at the new limit, the waiter still waits
        assert (slots.in_flight, slots.queued) == (1, 1)
        slots.release()
    assert admitted == [0]
    assert (slots.in_flight, slots.queued) == (1, 0)


async def _acquire_then_note(slots: Admission, n: int, admitted: list[int]) -> None:
    await slots.acquire("b")
    admitted.append(n)
