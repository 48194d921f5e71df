"""One refresh shared by many callers, at most one per interval, never missing a change made before a call."""

from __future__ import annotations

import math
from collections.abc import Awaitable, Callable

import anyio


class CoalescedRefresh:
    """Runs ``action`` (a re-read of some store) on demand for any number of callers.

    ``request()`` returns once a run that *began after the call* has finished: a caller that changed the
    store just before calling sees its change, even if a run that began before the change was in progress
    when it called (it waits for the next one). Callers that arrive while a run is in progress or waiting
    share that next run; runs never overlap, and each begins at least ``min_interval_seconds()`` after the
    one before, so a flood of calls costs one run per interval. The interval is read at each run (a reload
    may change it).

    An ``action`` that raises or is cancelled does not count as finished: the next waiter runs it again.
    """

    def __init__(
        self,
        action: Callable[[], Awaitable[None]],
        *,
        min_interval_seconds: Callable[[], float],
        clock: Callable[[], float] = anyio.current_time,
    ) -> None:
        self._action = action
        self._min_interval_seconds = min_interval_seconds
        self._clock = clock
        self._lock = anyio.Lock()
        #: runs begun, and the number of the last one that finished
        self.runs = 0
        self._finished = 0
        self._last_began = -math.inf

    async def request(self) -> None:
        """Return once a run that began after this call has finished (raises what that run raised)."""
        wanted = self.runs + 1  # any run numbered this or later begins after now
        async with self._lock:
            if self._finished >= wanted:
                return  # another caller's run began after this call and has finished
            wait = self._last_began + self._min_interval_seconds() - self._clock()
            if wait > 0:
                await anyio.sleep(wait)
            self.runs += 1
            number = self.runs
            self._last_began = self._clock()
            await self._action()
            self._finished = number
