"""The open client connections of one HTTP server, by phase, oldest first: what the header timeout and the
connection cap act on.

A connection is in one of three phases. AWAITING_HEAD from its accept, and again from the first byte of a
next request on a keep-alive connection, until its request head is complete: it must complete within
``server.header_timeout_seconds`` or it is closed (a slowloris client sends a partial head and then nothing).
BUSY from a complete head until its response has been sent: a slow body upload or a long stream is never cut
by the header timeout. IDLE between requests on a keep-alive connection (``keep_alive_timeout_seconds``
bounds it, in hypercorn).

At ``server.max_connections``, a new connection makes room by closing the oldest connection that has not sent
a complete request head, else the oldest idle keep-alive one; when every connection is busy, the new one is
refused. So sockets that hold a connection open without asking for anything can never lock out a client that
does ask, and the memory they can take is bounded by the cap.

Pure bookkeeping (no IO): each connection brings the callable that closes it.
"""

from __future__ import annotations

import enum
import time
from collections.abc import Callable


class Phase(enum.Enum):
    AWAITING_HEAD = "awaiting-head"  # accepted, or a next request started: its head must arrive in time
    BUSY = "busy"  # a request head has arrived; its body and its response take as long as they take
    IDLE = "idle"  # keep-alive, between requests, no byte of the next one yet
    CLOSED = "closed"  # closed by us or gone; no longer tracked


class Connection:
    """One tracked connection: its phase and since when (``time.monotonic()``)."""

    __slots__ = ("_close", "_registry", "phase", "since")

    def __init__(self, registry: Connections, close: Callable[[], None], now: float) -> None:
        self._registry = registry
        self._close = close
        self.phase = Phase.AWAITING_HEAD
        self.since = now

    def head_complete(self) -> None:
        """A request head has been parsed (hypercorn: ``Updated(idle=False)``)."""
        self._registry.move(self, Phase.BUSY)

    def response_done(self) -> None:
        """The response is sent and the connection is kept alive (hypercorn: ``Updated(idle=True)``)."""
        self._registry.move(self, Phase.IDLE)

    def data_received(self) -> None:
        """Bytes arrived. On an idle connection they start the next request: its head is now awaited."""
        if self.phase is Phase.IDLE:
            self._registry.move(self, Phase.AWAITING_HEAD)

    def close(self) -> None:
        """Stop tracking and close the connection (idempotent)."""
        if self.phase is not Phase.CLOSED:
            self._registry.forget(self)
            self._close()

    def forget(self) -> None:
        """The connection ended on its own: stop tracking it (idempotent)."""
        if self.phase is not Phase.CLOSED:
            self._registry.forget(self)


class Connections:
    """Tracked connections per phase, each phase in the order its connections entered it (a dict keeps
    insertion order, so the oldest is the first key and every move is O(1))."""

    def __init__(self, clock: Callable[[], float] = time.monotonic) -> None:
        self._clock = clock
        self._by_phase: dict[Phase, dict[Connection, None]] = {
            phase: {} for phase in Phase if phase is not Phase.CLOSED
        }

    def __len__(self) -> int:
        return sum(len(each) for each in self._by_phase.values())

    def count(self, phase: Phase) -> int:
        return len(self._by_phase[phase])

    def add(self, close: Callable[[], None]) -> Connection:
        """Track a newly accepted connection (AWAITING_HEAD); ``close`` closes it."""
        connection = Connection(self, close, self._clock())
        self._by_phase[Phase.AWAITING_HEAD][connection] = None
        return connection

    def move(self, connection: Connection, phase: Phase) -> None:
        if connection.phase is Phase.CLOSED:
            return
        del self._by_phase[connection.phase][connection]
        connection.phase = phase
        connection.since = self._clock()
        self._by_phase[phase][connection] = None

    def forget(self, connection: Connection) -> None:
        if connection.phase is not Phase.CLOSED:
            del self._by_phase[connection.phase][connection]
            connection.phase = Phase.CLOSED

    def evict_one(self) -> bool:
        """Close the oldest connection without a complete request head, else the oldest idle one, to make
        room for a new connection. False when every connection is busy (nothing was closed)."""
        for phase in (Phase.AWAITING_HEAD, Phase.IDLE):
            for connection in self._by_phase[phase]:
                connection.close()
                return True
        return False

    def close_late_heads(self, timeout: float) -> tuple[int, float | None]:
        """Close every connection that has awaited its request head for ``timeout`` seconds or more.
        Returns how many were closed and when (monotonic) the next one would be due (None: none waiting)."""
        deadline = self._clock() - timeout
        waiting = self._by_phase[Phase.AWAITING_HEAD]
        closed = 0
        while waiting:
            oldest = next(iter(waiting))
            if oldest.since > deadline:
                return closed, oldest.since + timeout
            oldest.close()
            closed += 1
        return closed, None
