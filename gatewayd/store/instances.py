"""The fleet's roster: one heartbeat row per gatewayd instance sharing the store.

Every instance writes its row (name, version, load, last heartbeat) every few seconds, off the request
path; any instance reads the rows written lately to list the fleet. A row is keyed by the instance's name
and carries the start time of the process that wrote it, so the instance that stops deletes its own row
only, never that of a newer process of the same name. Times are epoch seconds from the writer's clock:
machines of one fleet keep their clocks in step (NTP), as their TLS already needs.

The table lives in the store file beside keys and usage with its own schema version
(``meta.fleet_schema``), like the jobs table, so its migrations never renumber the store's own. Every
method blocks; callers run them in a worker thread. sqlite3's errors become StoreError here.
"""

from __future__ import annotations

import contextlib
import json
import sqlite3
import threading
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol

from gatewayd.errors import StoreError
from gatewayd.store.db import Store

FLEET_SCHEMA_VERSION = 1
#: FLEET_MIGRATIONS[n] takes the fleet tables from version n to n + 1
FLEET_MIGRATIONS = (
    """
    CREATE TABLE IF NOT EXISTS instances (
        name TEXT PRIMARY KEY,
        version TEXT NOT NULL,
        pid INTEGER NOT NULL,
        started_at REAL NOT NULL,
        heartbeat_at REAL NOT NULL,
        load TEXT NOT NULL
    );
    CREATE INDEX IF NOT EXISTS instances_by_heartbeat ON instances (heartbeat_at);
    """,
)
#: rows not written for this long are deleted by the next heartbeat of any instance (an instance that was
#: killed leaves its row behind; it drops out of the roster long before, after ``fleet.seen_window_seconds``)
STALE_ROW_SECONDS = 86_400.0


@dataclass(frozen=True, slots=True)
class InstanceBeat:
    """One instance's heartbeat row."""

    name: str
    version: str
    pid: int
    #: when the process that writes the row started (epoch seconds)
    started_at: float
    #: when the row was last written (epoch seconds, the writer's clock)
    heartbeat_at: float
    #: what the instance carries right now: requests in flight, queued, streams open (small integers)
    load: Mapping[str, int] = field(default_factory=dict)


class InstanceStore(Protocol):
    """What the heartbeat needs from a store engine."""

    def beat(self, row: InstanceBeat) -> None:
        """Write (insert or replace) the row of ``row.name``, and delete rows stale for STALE_ROW_SECONDS."""

    def seen_since(self, since: float) -> list[InstanceBeat]:
        """Every row written at or after ``since`` (epoch seconds), by name."""

    def leave(self, name: str, started_at: float) -> None:
        """Delete the row of ``name`` if the process that started at ``started_at`` wrote it."""

    def close(self) -> None: ...


class SqliteInstanceStore:
    """The roster in the SQLite store file (one machine: several instances on one file)."""

    def __init__(self, path: Path, *, busy_timeout_seconds: float) -> None:
        Store.open(path, busy_timeout_seconds=busy_timeout_seconds).close()  # the file and its own schema
        self.path = path
        self._lock = threading.Lock()
        try:
            self._conn: sqlite3.Connection | None = sqlite3.connect(
                path, timeout=busy_timeout_seconds, isolation_level=None, check_same_thread=False
            )
        except sqlite3.Error as exc:
            raise StoreError(f"cannot open the store {path}: {exc}") from exc
        try:
            with self._locked("open the store") as conn:
                conn.execute("PRAGMA synchronous = NORMAL")  # as the store's own connections
            with self._transaction("create the instances table") as conn:
                self._migrate(conn)
        except BaseException:
            self.close()
            raise

    def _migrate(self, conn: sqlite3.Connection) -> None:
        row = conn.execute("SELECT value FROM meta WHERE name = 'fleet_schema'").fetchone()
        version = int(row[0]) if row else 0
        if version > FLEET_SCHEMA_VERSION:
            raise StoreError(
                f"the fleet tables in {self.path} were written by a newer gatewayd (fleet schema {version}; "
                f"this one knows {FLEET_SCHEMA_VERSION}); upgrade gatewayd"
            )
        for script in FLEET_MIGRATIONS[version:]:
            for statement in script.split(";"):
                if statement.strip():
                    conn.execute(statement)
        conn.execute(
            "INSERT OR REPLACE INTO meta (name, value) VALUES ('fleet_schema', ?)", (FLEET_SCHEMA_VERSION,)
        )

    def beat(self, row: InstanceBeat) -> None:
        load = json.dumps(dict(row.load), separators=(",", ":"))
        with self._transaction("write the heartbeat") as conn:
            conn.execute(
                "INSERT OR REPLACE INTO instances (name, version, pid, started_at, heartbeat_at, load)"
                " VALUES (?, ?, ?, ?, ?, ?)",
                (row.name, row.version, row.pid, row.started_at, row.heartbeat_at, load),
            )
            stale = row.heartbeat_at - STALE_ROW_SECONDS
            conn.execute("DELETE FROM instances WHERE heartbeat_at < ?", (stale,))

    def seen_since(self, since: float) -> list[InstanceBeat]:
        with self._locked("read the fleet") as conn:
            rows = conn.execute(
                "SELECT name, version, pid, started_at, heartbeat_at, load FROM instances"
                " WHERE heartbeat_at >= ? ORDER BY name",
                (since,),
            ).fetchall()
        return [
            InstanceBeat(name, version, pid, started_at, heartbeat_at, _load(load))
            for name, version, pid, started_at, heartbeat_at, load in rows
        ]

    def leave(self, name: str, started_at: float) -> None:
        with self._transaction("remove this instance from the fleet") as conn:
            conn.execute("DELETE FROM instances WHERE name = ? AND started_at = ?", (name, started_at))

    def close(self) -> None:
        with self._lock:
            if self._conn is not None:
                with contextlib.suppress(sqlite3.Error):
                    self._conn.close()
                self._conn = None

    @contextlib.contextmanager
    def _locked(self, action: str) -> Iterator[sqlite3.Connection]:
        with self._lock:
            if self._conn is None:
                raise StoreError(f"cannot {action}: the store {self.path} is closed")
            try:
                yield self._conn
            except sqlite3.Error as exc:
                raise StoreError(f"cannot {action}: {exc} ({self.path})") from exc

    @contextlib.contextmanager
    def _transaction(self, action: str) -> Iterator[sqlite3.Connection]:
        with self._locked(action) as conn:
            conn.execute("BEGIN IMMEDIATE")
            try:
                yield conn
                conn.execute("COMMIT")
            except BaseException:
                if conn.in_transaction:
                    with contextlib.suppress(sqlite3.Error):
                        conn.execute("ROLLBACK")
                raise


def _load(text: str) -> dict[str, int]:
    """A row's load; a row that is not what this version writes shows no load rather than failing."""
    try:
        value = json.loads(text)
    except ValueError:
        return {}
    if not isinstance(value, dict):
        return {}
    return {str(k): v for k, v in value.items() if isinstance(v, int) and not isinstance(v, bool)}
