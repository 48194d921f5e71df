"""Admission to one backend: ``max_concurrency`` slots and a bounded FIFO queue of waiting requests."""

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
    passed on. Every successful ``acquire`` must be paired with one ``release``."""

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
        self, *, capacity: int, queue_size: int, queue_timeout_seconds: float, retry_after_seconds: float
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

    @property
    def queue_full(self) -> bool:
        """No free slot and no room left to wait for one."""
        return self.in_flight >= self.capacity and self.queued >= self._queue_size

    @property
    def free(self) -> int:
        return max(self.capacity - self.in_flight, 0)

    def try_acquire(self) -> bool:
        if self.in_flight < self.capacity and not self._queue and not self._urgent:
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
        queue = self._urgent or self._queue
        if queue:
            waiter = queue.popleft()
            waiter.granted = True  # the slot moves to the waiter: in_flight is unchanged
            waiter.event.set()
        else:
            self.in_flight -= 1
