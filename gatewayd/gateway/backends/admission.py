"""Admission to one backend: its concurrency limit's slots and a bounded FIFO queue of waiting requests."""

from __future__ import annotations

from collections import deque

import anyio

from gatewayd.errors import Overloaded


class _Waiter:
    __slots__ = ("event", "granted")

    def __init__(self) -> None:
        self.event = anyio.Event()
        self.granted = False


class Admission:
    """Slots of one backend within one generation.

    ``acquire`` takes a slot at once when one is free, else waits in FIFO order; ``priority`` waiters
    (embedding requests: short, and often on the path of an interactive tool) are served before every other
    waiter, FIFO among themselves, so they never wait behind generation requests. It raises Overloaded when
    the queue already holds ``queue_size`` waiters or the wait exceeds ``queue_timeout_seconds``. A waiter
    that is cancelled (its client disconnected) leaves the queue; a slot granted to it in the same instant is
    passed on. Every successful ``acquire`` must be paired with one ``release``.

    ``capacity`` None is unbounded: every request is admitted at once and nothing queues. ``set_capacity``
    changes the limit live (a probe learned a new one): ``in_flight`` stays the one count of admitted
    requests, so a raise admits waiters at once and a cut lets the requests above it finish while new ones
    wait until ``in_flight`` is under the new limit."""

    __slots__ = (
        "_queue",
        "_queue_size",
        "_queue_timeout",
        "_retry_after",
        "_urgent",
        "capacity",
        "in_flight",
    )

    def __init__(
        self,
        *,
        capacity: int | None,
        queue_size: int,
        queue_timeout_seconds: float,
        retry_after_seconds: float,
    ) -> None:
        self.capacity = capacity
        self.in_flight = 0
        self._queue: deque[_Waiter] = deque()
        self._urgent: deque[_Waiter] = deque()
        self._queue_size = queue_size
        self._queue_timeout = queue_timeout_seconds
        self._retry_after = retry_after_seconds

    @property
    def queued(self) -> int:
        return len(self._queue) + len(self._urgent)

    def _has_room(self) -> bool:
        return self.capacity is None or self.in_flight < self.capacity

    @property
    def queue_full(self) -> bool:
        """No free slot and no room left to wait for one (never, when unbounded)."""
        return not self._has_room() and self.queued >= self._queue_size

    @property
    def free(self) -> int | None:
        """Slots free now; None when unbounded."""
        return None if self.capacity is None else max(self.capacity - self.in_flight, 0)

    def set_capacity(self, capacity: int | None) -> None:
        """The new limit in force; waiters it makes room for are admitted now."""
        self.capacity = capacity
        self._admit_waiters()

    def try_acquire(self) -> bool:
        if self._has_room() and not self._queue and not self._urgent:
            self.in_flight += 1
            return True
        return False

    async def acquire(self, backend: str, *, priority: bool = False) -> None:
        if self.try_acquire():
            return
        if self.queued >= self._queue_size:
            raise Overloaded(
                f"backend {backend} is at capacity and its queue is full ({self._queue_size} waiting)",
                retry_after=self._retry_after,
            )
        waiter = _Waiter()
        queue = self._urgent if priority else self._queue
        queue.append(waiter)
        try:
            with anyio.move_on_after(self._queue_timeout):
                await waiter.event.wait()
        except BaseException:
            if waiter.granted:
                self.release()  # granted in the same instant it was cancelled: pass the slot on
            else:
                queue.remove(waiter)
            raise
        if not waiter.granted:
            queue.remove(waiter)
            raise Overloaded(
                f"no slot on backend {backend} within {self._queue_timeout:g} s",
                retry_after=self._retry_after,
            )

    def release(self) -> None:
        self.in_flight -= 1
        self._admit_waiters()

    def _admit_waiters(self) -> None:
        while self._has_room() and (queue := self._urgent or self._queue):
            waiter = queue.popleft()
            waiter.granted = True  # counted as admitted before it runs: no one can take its slot
            self.in_flight += 1
            waiter.event.set()
