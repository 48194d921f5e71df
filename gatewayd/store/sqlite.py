"""The embedded engine: one SQLite file in the state directory.

WAL mode: readers never wait for the writer, and a process killed in the middle of a write leaves a file
that the next open recovers on its own (the unfinished transaction is simply not there). ``synchronous``
is NORMAL: a commit survives a crash of the process, though the last ones may be lost on a power cut.

One connection, serialised by a lock, so an engine may be used from worker threads. A lock held by another
process is waited for at most ``busy_timeout_seconds``. The store's own schema version is the file's
``user_version``; another component's is the ``meta`` row ``<component>_schema``.
"""

from __future__ import annotations

import contextlib
import os
import sqlite3
import threading
import time
from collections.abc import Iterator
from pathlib import Path

from gatewayd.errors import StoreError
from gatewayd.store.engine import SQLITE, Migrations, Session, newer_schema_message

STORE_DIR_MODE = 0o700
STORE_FILE_MODE = 0o600
DEFAULT_BUSY_TIMEOUT_SECONDS = 0.2
#: how often opening a new store retries its switch to WAL while another connection holds the file
WAL_SWITCH_RETRY_SECONDS = 0.01
STORE_COMPONENT = "store"


class SqliteEngine:
    """See the module docstring. Open with ``SqliteEngine.open``; ``close`` when done."""

    kind = SQLITE

    def __init__(self, path: Path, connection: sqlite3.Connection, busy_timeout_seconds: float) -> None:
        self.path = path
        self.display = str(path)
        self._connection: sqlite3.Connection | None = connection
        self._lock = threading.Lock()
        self._busy_timeout_seconds = busy_timeout_seconds

    @classmethod
    def open(cls, path: Path, *, busy_timeout_seconds: float = DEFAULT_BUSY_TIMEOUT_SECONDS) -> SqliteEngine:
        """Open (creating if needed: directory 0700, file 0600) in WAL mode. Raises StoreError saying why the
        file cannot be used (permissions, not a database, no WAL on its file system)."""
        try:
            path.parent.mkdir(mode=STORE_DIR_MODE, parents=True, exist_ok=True)
            # Create the file with its mode, but never open an existing one outside SQLite: closing any
            # descriptor of a file drops every POSIX lock this process holds on it, including the locks of
            # the other connections open in this process (the writer's), which corrupts their locking.
            with contextlib.suppress(FileExistsError):
                os.close(os.open(path, os.O_RDWR | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, STORE_FILE_MODE))
        except OSError as exc:
            raise StoreError(f"cannot create the store {path}: {exc.strerror or exc}") from exc
        try:
            connection = sqlite3.connect(
                path, timeout=busy_timeout_seconds, isolation_level=None, check_same_thread=False
            )
        except sqlite3.Error as exc:
            raise StoreError(f"cannot open the store {path}: {exc}") from exc
        engine = cls(path, connection, busy_timeout_seconds)
        try:
            with engine.session("open the store") as conn:
                _use_wal(conn, path, busy_timeout_seconds)  # type: ignore[arg-type]
        except BaseException:
            engine.close()
            raise
        return engine

    def close(self) -> None:
        with self._lock:
            if self._connection is not None:
                with contextlib.suppress(sqlite3.Error):
                    self._connection.close()
                self._connection = None

    @contextlib.contextmanager
    def session(self, action: str) -> Iterator[Session]:
        """The connection, held alone, with sqlite3's errors translated into StoreError."""
        with self._lock:
            if self._connection is None:
                raise StoreError(f"cannot {action}: the store {self.path} is closed")
            try:
                yield self._connection  # type: ignore[misc]
            except sqlite3.Error as exc:
                raise StoreError(f"cannot {action}: {_describe(exc)} ({self.path})") from exc

    @contextlib.contextmanager
    def transaction(self, action: str, *, exclusive: bool = True) -> Iterator[Session]:
        """BEGIN IMMEDIATE takes the write lock up front (waiting at most the busy timeout), so it never
        fails half way for lack of it; every SQLite write transaction is exclusive."""
        with self.session(action) as session:
            conn: sqlite3.Connection = session  # type: ignore[assignment]
            conn.execute("BEGIN IMMEDIATE")
            try:
                yield session
                conn.execute("COMMIT")
            except BaseException:
                _rollback(conn)
                raise

    def migrate(self, migrations: Migrations) -> None:
        with self.session(f"read the {migrations.component} schema version") as session:
            if _version(session, migrations.component) == migrations.version:
                return
        with self.transaction(f"create the {migrations.component} schema") as session:
            conn: sqlite3.Connection = session  # type: ignore[assignment]
            found = _version(session, migrations.component)  # another process may have migrated meanwhile
            if found > migrations.version:
                message = newer_schema_message(self.display, migrations.component, found, migrations.version)
                raise StoreError(message)
            for script in migrations.scripts[found:]:
                for statement in script.split(";"):
                    if statement.strip():
                        conn.execute(statement)
            if migrations.component == STORE_COMPONENT:
                conn.execute(f"PRAGMA user_version = {migrations.version}")
            else:
                conn.execute(
                    "INSERT INTO meta (name, value) VALUES (?, ?)"
                    " ON CONFLICT (name) DO UPDATE SET value = excluded.value",
                    (f"{migrations.component}_schema", migrations.version),
                )


def _version(session: Session, component: str) -> int:
    if component == STORE_COMPONENT:
        return int(session.execute("PRAGMA user_version").fetchone()[0])
    if not session.execute("SELECT 1 FROM sqlite_master WHERE name = 'meta'").fetchone():
        return 0
    row = session.execute("SELECT value FROM meta WHERE name = ?", (f"{component}_schema",)).fetchone()
    return int(row[0]) if row else 0


def _use_wal(conn: sqlite3.Connection, path: Path, busy_timeout_seconds: float) -> None:
    # Switching a new file to WAL needs a moment alone with it and does not wait on the busy timeout
    # (another connection of this process, or another process, may be creating the schema): retry.
    deadline = time.monotonic() + busy_timeout_seconds
    while True:
        try:
            (mode,) = conn.execute("PRAGMA journal_mode = WAL").fetchone()
            break
        except sqlite3.OperationalError as exc:
            if "locked" not in str(exc) or time.monotonic() >= deadline:
                raise
            time.sleep(WAL_SWITCH_RETRY_SECONDS)
    if str(mode).lower() != "wal":
        raise StoreError(f"cannot use the store {path}: its file system does not support WAL mode")
    conn.execute("PRAGMA synchronous = NORMAL")


def _rollback(conn: sqlite3.Connection) -> None:
    """End the transaction in progress, if any (a failed COMMIT leaves it open)."""
    if conn.in_transaction:
        with contextlib.suppress(sqlite3.Error):
            conn.execute("ROLLBACK")


def _describe(exc: sqlite3.Error) -> str:
    text = str(exc)
    if "locked" in text or "busy" in text:
        return "the store is locked by another process"
    if isinstance(exc, sqlite3.DatabaseError) and "not a database" in text:
        return "the file is not a gatewayd store (not an SQLite database, or corrupt)"
    return text
