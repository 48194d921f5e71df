"""The shared engine: a PostgreSQL database that several gatewayd instances use at once.

psycopg 3 with its connection pool (psycopg_pool): each call borrows a connection for the span of one
``session`` or ``transaction`` block and gives it back, so worker threads of one process share a few
connections; a connection cut by a restart of the server is thrown away when it is given back, and the pool
reconnects in the background. Waiting for a connection is bounded by ``connect_timeout_seconds``: with the
database down a call fails within that bound (StoreError), it never hangs.

Exclusive transactions take one transaction-level advisory lock (``pg_advisory_xact_lock``), which
serialises them across every instance as SQLite's BEGIN IMMEDIATE does on one machine. Migrations run in
one transaction under another advisory lock: when several instances start at once, one migrates and the
others wait for it, then find the schema current. Schema versions are kept per component in the table
``gatewayd_schema``.

This module imports psycopg; ``gatewayd.store.target`` imports it only when a PostgreSQL store is named.
"""

from __future__ import annotations

import contextlib
import threading
from collections.abc import Iterator, Sequence
from typing import Any

import psycopg
import psycopg_pool

from gatewayd.errors import StoreError
from gatewayd.store.engine import POSTGRESQL, Cursor, Migrations, Session, newer_schema_message

#: advisory lock keys (any 64-bit numbers other software on the database is unlikely to pick)
WRITE_LOCK_KEY = 0x6761_7465_7764_0001
MIGRATION_LOCK_KEY = 0x6761_7465_7764_0002
APPLICATION_NAME = "gatewayd"
_SCHEMA_TABLE = """
CREATE TABLE IF NOT EXISTS gatewayd_schema (component TEXT PRIMARY KEY, version INTEGER NOT NULL)
"""
#: libpq's own connect timeout, whole seconds (it takes no less than 2)
MIN_LIBPQ_CONNECT_TIMEOUT_SECONDS = 2


class _PgSession:
    """A psycopg connection that takes the store's ``?`` placeholders."""

    def __init__(self, conn: psycopg.Connection[Any], translated: dict[str, str]) -> None:
        self._conn = conn
        self._translated = translated

    def _sql(self, sql: str) -> str:
        text = self._translated.get(sql)
        if text is None:
            text = self._translated[sql] = sql.replace("%", "%%").replace("?", "%s")
        return text

    def execute(self, sql: str, params: Sequence[object] = ()) -> Cursor:
        return self._conn.execute(self._sql(sql), params)

    def executemany(self, sql: str, rows: Sequence[Sequence[object]]) -> None:
        with self._conn.cursor() as cursor:
            cursor.executemany(self._sql(sql), rows)


class PostgresEngine:
    """See the module docstring. ``display`` is the URL without credentials (the only form ever shown)."""

    kind = POSTGRESQL

    def __init__(
        self,
        url: str,
        *,
        display: str,
        password: str | None = None,
        connect_timeout_seconds: float = 5.0,
        pool_size: int = 4,
    ) -> None:
        self.display = display
        self._timeout = connect_timeout_seconds
        self._translated: dict[str, str] = {}
        self._lock = threading.Lock()
        kwargs: dict[str, Any] = {
            "autocommit": True,
            "application_name": APPLICATION_NAME,
            "connect_timeout": max(MIN_LIBPQ_CONNECT_TIMEOUT_SECONDS, round(connect_timeout_seconds)),
        }
        if password is not None:
            kwargs["password"] = password
        try:
            self._pool: psycopg_pool.ConnectionPool[Any] | None = psycopg_pool.ConnectionPool(
                url,
                kwargs=kwargs,
                min_size=1,
                max_size=max(1, pool_size),
                timeout=connect_timeout_seconds,
                # keep trying for as long as the database is away: it is expected back
                reconnect_timeout=float("inf"),
                name="gatewayd-store",
                open=False,
            )
            self._pool.open(wait=False)
        except (psycopg.Error, psycopg_pool.PoolTimeout) as exc:
            raise StoreError(f"cannot use the store {display}: {_describe(exc)}") from exc

    def close(self) -> None:
        with self._lock:
            pool, self._pool = self._pool, None
        if pool is not None:
            pool.close(timeout=self._timeout)

    @contextlib.contextmanager
    def _connection(self, action: str) -> Iterator[psycopg.Connection[Any]]:
        pool = self._pool
        if pool is None:
            raise StoreError(f"cannot {action}: the store {self.display} is closed")
        try:
            with pool.connection(timeout=self._timeout) as conn:
                yield conn
        except (psycopg.Error, psycopg_pool.PoolTimeout) as exc:
            raise StoreError(f"cannot {action}: {_describe(exc)} ({self.display})") from exc

    @contextlib.contextmanager
    def session(self, action: str) -> Iterator[Session]:
        with self._connection(action) as conn:
            yield _PgSession(conn, self._translated)

    @contextlib.contextmanager
    def transaction(self, action: str, *, exclusive: bool = True) -> Iterator[Session]:
        with self._connection(action) as conn, conn.transaction():
            if exclusive:
                conn.execute("SELECT pg_advisory_xact_lock(%s)", (WRITE_LOCK_KEY,))
            yield _PgSession(conn, self._translated)

    def migrate(self, migrations: Migrations) -> None:
        component = migrations.component
        with self.transaction(f"create the {component} schema", exclusive=False) as session:
            session.execute("SELECT pg_advisory_xact_lock(?)", (MIGRATION_LOCK_KEY,))
            session.execute(_SCHEMA_TABLE)
            row = session.execute(
                "SELECT version FROM gatewayd_schema WHERE component = ?", (component,)
            ).fetchone()
            found = int(row[0]) if row else 0
            if found > migrations.version:
                raise StoreError(newer_schema_message(self.display, component, found, migrations.version))
            if found == migrations.version:
                return
            for script in migrations.scripts[found:]:
                for statement in script.split(";"):
                    if statement.strip():
                        session.execute(statement)
            session.execute(
                "INSERT INTO gatewayd_schema (component, version) VALUES (?, ?)"
                " ON CONFLICT (component) DO UPDATE SET version = excluded.version",
                (component, migrations.version),
            )

    def notify(self, channel: str) -> None:
        """NOTIFY ``channel`` (committed at once: sessions are autocommit)."""
        with self.session(f"notify {channel}") as session:
            session.execute(f"NOTIFY {channel}")


def _describe(exc: BaseException) -> str:
    if isinstance(exc, psycopg_pool.PoolTimeout):
        return "the database cannot be reached (no connection within the timeout)"
    if isinstance(exc, psycopg.OperationalError):
        return (
            f"the database cannot be reached: {str(exc).strip().splitlines()[0] if str(exc).strip() else exc}"
        )
    return str(exc).strip() or type(exc).__name__
