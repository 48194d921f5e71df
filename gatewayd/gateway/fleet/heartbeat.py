"""This instance's heartbeat in the store, and the fleet it sees there.

One ``Heartbeat`` lives as long as the gateway factory (a reload keeps it). Its task writes this instance's
row every ``fleet.heartbeat_interval_seconds`` and reads back the rows written within
``fleet.seen_window_seconds``; /status shows that last reading, so a request never waits for the store.
The load it writes is summed over the generations alive (a reload's old one still draining included).
A store that cannot be written is logged once per outage and tried again at the next beat; the roster
shown meanwhile is the last one read, with this instance's own row kept current. On a clean stop the row is
deleted, so the fleet drops the instance at once instead of after the window.
"""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import anyio
import anyio.abc
import anyio.to_thread

from gatewayd import __version__
from gatewayd.config import Config, FleetSettings
from gatewayd.errors import GatewaydError
from gatewayd.gateway.fleet.identity import instance_name
from gatewayd.store.instances import InstanceBeat, InstanceStore, SqliteInstanceStore

log = logging.getLogger("gatewayd.fleet")

#: the heartbeat's store calls may wait for another writer this long (off the request path)
STORE_BUSY_TIMEOUT_SECONDS = 5.0
#: a clean stop spends at most this long deleting this instance's row
LEAVE_TIMEOUT_SECONDS = 2.0
#: the load figures written in the row (summed over the live generations' status)
LOAD_FIELDS = ("in_flight", "queued", "streams")

LoadSource = Callable[[], Mapping[str, object]]


class Heartbeat:
    """Writes this instance's row and keeps the last roster read. Not thread-safe: the event loop's."""

    def __init__(
        self,
        db_path: Path,
        *,
        open_store: Callable[[], InstanceStore] | None = None,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.db_path = db_path
        self._open_store = open_store or (
            lambda: SqliteInstanceStore(db_path, busy_timeout_seconds=STORE_BUSY_TIMEOUT_SECONDS)
        )
        self._clock = clock
        self.settings = FleetSettings()
        self.name: str | None = None
        self.started_at = clock()
        self._sources: list[LoadSource] = []
        self._roster: list[InstanceBeat] = []
        self._store: InstanceStore | None = None
        #: the name this process's row was last written under (a reload may rename the instance)
        self._written: str | None = None
        self._failing = False
        self._wake = anyio.Event()
        #: heartbeats written (for tests and diagnostics)
        self.beats = 0

    def configure(self, config: Config) -> None:
        """Take a (new) config's name and fleet settings; the next beat comes at once."""
        self.settings = config.fleet
        self.name = instance_name(config.server)
        self._wake.set()

    def add_load(self, source: LoadSource) -> None:
        """Count a generation's load (its ``status()``) while it lives; ``remove_load`` when it closes."""
        self._sources.append(source)

    def remove_load(self, source: LoadSource) -> None:
        self._sources.remove(source)

    def load(self) -> dict[str, int]:
        totals = dict.fromkeys(LOAD_FIELDS, 0)
        for source in self._sources:
            status = source()
            for name in LOAD_FIELDS:
                value = status.get(name)
                if isinstance(value, int):
                    totals[name] += value
        return totals

    async def run(self, *, task_status: anyio.abc.TaskStatus[None] = anyio.TASK_STATUS_IGNORED) -> None:
        """Beat until cancelled; then delete this instance's row (bounded, shielded) and close the store."""
        task_status.started()
        try:
            while True:
                if self.name is not None:
                    await self._beat()
                with anyio.move_on_after(self.settings.heartbeat_interval_seconds):
                    await self._wake.wait()
                self._wake = anyio.Event()
        finally:
            with anyio.CancelScope(shield=True), anyio.move_on_after(LEAVE_TIMEOUT_SECONDS):
                await anyio.to_thread.run_sync(self._leave, abandon_on_cancel=True)

    def roster(self) -> list[dict[str, Any]]:
        """The instances seen within ``fleet.seen_window_seconds``, by name, as /status shows them: this
        instance always (with its current load), the others as their last heartbeat read said."""
        now = self._clock()
        since = now - self.settings.seen_window_seconds
        rows = {row.name: row for row in self._roster if row.heartbeat_at >= since}
        if self.name is not None:
            rows[self.name] = self._own_row(now)
        return [
            {
                "name": row.name,
                "version": row.version,
                "load": dict(row.load),
                "last_heartbeat": row.heartbeat_at,
                "age_seconds": round(max(now - row.heartbeat_at, 0.0), 1),
                "self": row.name == self.name,
            }
            for row in sorted(rows.values(), key=lambda row: row.name)
        ]

    def _own_row(self, now: float) -> InstanceBeat:
        assert self.name is not None
        return InstanceBeat(self.name, __version__, os.getpid(), self.started_at, now, self.load())

    async def _beat(self) -> None:
        row = self._own_row(self._clock())
        since = row.heartbeat_at - self.settings.seen_window_seconds
        try:
            self._roster = await anyio.to_thread.run_sync(self._write_and_read, row, since)
        except (GatewaydError, OSError) as error:
            if not self._failing:
                log.warning("fleet: cannot write this instance's heartbeat to %s: %s", self.db_path, error)
            self._failing = True
            return
        if self._failing:
            log.info("fleet: the heartbeat is written again")
            self._failing = False
        self.beats += 1

    def _write_and_read(self, row: InstanceBeat, since: float) -> list[InstanceBeat]:
        """(Worker thread.) Write the row, drop the one of a previous name, read the roster."""
        if self._store is None:
            self._store = self._open_store()
        if self._written is not None and self._written != row.name:
            self._store.leave(self._written, self.started_at)
        self._store.beat(row)
        self._written = row.name
        return self._store.seen_since(since)

    def _leave(self) -> None:
        """(Worker thread.) Delete this instance's row and close the store; errors only logged."""
        store, self._store = self._store, None
        if store is None:
            return
        try:
            if self._written is not None:
                store.leave(self._written, self.started_at)
        except (GatewaydError, OSError) as error:
            log.info("fleet: could not remove this instance from the fleet (it ages out): %s", error)
        finally:
            store.close()
