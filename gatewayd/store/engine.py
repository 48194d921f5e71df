"""The one seam between the store's logic and the database it runs on.

``gatewayd.store.db.Store`` (keys, usage, responses) and the job store are written once, against an
``Engine``: it hands out a ``Session`` for reads and for transactions, runs versioned migrations, and
translates its driver's errors into ``StoreError``. Statements are written with ``?`` placeholders in the SQL
both engines speak; an engine rewrites them for its driver. Two engines implement it:

- ``gatewayd.store.sqlite.SqliteEngine``: one file in the state directory (WAL), one connection serialised
  by a lock; a write transaction takes the file's write lock up front (BEGIN IMMEDIATE);
- ``gatewayd.store.postgres.PostgresEngine``: a pool of connections to a PostgreSQL database shared by
  several gatewayd instances; an exclusive transaction takes a transaction-level advisory lock, which is
  the same guarantee (writers of keys are serialised across the fleet).

Every method blocks; callers run them in a worker thread.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from contextlib import AbstractContextManager
from dataclasses import dataclass
from typing import Any, Protocol

#: Engine.kind values
SQLITE = "sqlite"
POSTGRESQL = "postgresql"


class Cursor(Protocol):
    """What a statement returns (sqlite3's and psycopg's cursors both are one)."""

    @property
    def rowcount(self) -> int: ...

    def fetchone(self) -> Any: ...

    def fetchall(self) -> list[Any]: ...

    def __iter__(self) -> Iterator[Any]: ...


class Session(Protocol):
    """One connection, held by one caller for the span of a ``with`` block."""

    def execute(self, sql: str, params: Sequence[object] = ()) -> Cursor: ...

    def executemany(self, sql: str, rows: Sequence[Sequence[object]]) -> None: ...


@dataclass(frozen=True, slots=True)
class Migrations:
    """The schema of one part of the store (``component``): ``scripts[n]`` takes it from version n to n + 1
    (statements separated by ``;``). Each part keeps its own version, so adding a part never renumbers
    another's."""

    component: str
    scripts: tuple[str, ...]

    @property
    def version(self) -> int:
        return len(self.scripts)


class Engine(Protocol):
    """See the module docstring. Raises StoreError (never a driver's exception) from every method."""

    #: SQLITE or POSTGRESQL
    kind: str
    #: where the store is, safe to show anywhere: a file path, or a URL without its credentials
    display: str

    def session(self, action: str) -> AbstractContextManager[Session]:
        """A connection for reads (each statement sees what is committed). ``action`` ("list the keys")
        makes the error message: "cannot list the keys: ..."."""
        ...

    def transaction(self, action: str, *, exclusive: bool = True) -> AbstractContextManager[Session]:
        """A transaction, committed when the block ends, rolled back on any exception. ``exclusive``: no
        other exclusive transaction on the same store (in any process, on any host) runs at the same time,
        so read-then-write logic (create a key unless its secret exists) is safe."""
        ...

    def migrate(self, migrations: Migrations) -> None:
        """Bring ``migrations.component`` up to ``migrations.version``; safe when several processes start
        at once. Raises StoreError naming both versions when the store's is newer than this gatewayd's."""
        ...

    def close(self) -> None:
        """Release the connections (waiting for a call in progress). Later calls raise StoreError."""
        ...


def newer_schema_message(display: str, component: str, found: int, known: int) -> str:
    part = "store" if component == "store" else f"{component} store"
    return (
        f"the {part} at {display} was written by a newer gatewayd (schema {found}; this one knows "
        f"{known}); upgrade gatewayd, or point it at another store"
    )
