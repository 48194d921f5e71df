"""Which store a process uses: ``store.url`` from the config, or by default the SQLite file in the state
directory; and the form of its address that may be shown (logs, /status, ``gatewayd status``).

``StoreTarget`` is a plain value (no connection); ``open_engine`` opens an engine for it. psycopg is imported
only when a PostgreSQL target is opened, so a gatewayd on SQLite never loads it.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import urlsplit

from gatewayd.config import StoreSettings
from gatewayd.config.redaction import redact_url
from gatewayd.errors import StoreError
from gatewayd.store.engine import POSTGRESQL, SQLITE, Engine

#: the SQLite file in the state directory (the default store)
DB_FILE = "gatewayd.db"
POSTGRES_SCHEMES = ("postgresql", "postgres")


@dataclass(frozen=True, slots=True)
class StoreTarget:
    """A store: the SQLite file ``path``, or the PostgreSQL database ``url``."""

    kind: str
    path: Path | None = None
    url: str | None = field(default=None, repr=False)
    password: str | None = field(default=None, repr=False)
    connect_timeout_seconds: float = 5.0
    pool_size: int = 4

    @classmethod
    def sqlite(cls, path: Path) -> StoreTarget:
        return cls(kind=SQLITE, path=path)

    @property
    def display(self) -> str:
        """Where the store is, without credentials: safe for logs and status output."""
        if self.kind == SQLITE:
            return str(self.path)
        return redact_url(self.url or "")

    @property
    def shared(self) -> bool:
        """Several instances may use the store at once (PostgreSQL)."""
        return self.kind == POSTGRESQL


def resolve_target(settings: StoreSettings, state_dir: Path) -> StoreTarget:
    """The store ``settings`` name; the SQLite file in ``state_dir`` when ``store.url`` is not set."""
    if settings.url is None:
        return StoreTarget.sqlite(state_dir / DB_FILE)
    scheme = urlsplit(settings.url).scheme.lower()
    if scheme == "sqlite":
        # sqlite:///absolute/path or sqlite:relative/path
        return StoreTarget.sqlite(Path(settings.url.split(":", 1)[1].removeprefix("//")))
    if scheme not in POSTGRES_SCHEMES:
        raise StoreError(
            f"store.url must be a postgresql:// URL (or sqlite:///path), not '{redact_url(settings.url)}'"
        )
    return StoreTarget(
        kind=POSTGRESQL,
        url=settings.url,
        password=settings.password,
        connect_timeout_seconds=settings.connect_timeout_seconds,
        pool_size=settings.pool_size,
    )


def open_engine(target: StoreTarget, *, busy_timeout_seconds: float = 0.2) -> Engine:
    """An engine for ``target`` (``busy_timeout_seconds``: how long SQLite waits for another writer).
    Raises StoreError saying why it cannot be used."""
    if target.kind == SQLITE:
        from gatewayd.store.sqlite import SqliteEngine

        assert target.path is not None
        return SqliteEngine.open(target.path, busy_timeout_seconds=busy_timeout_seconds)
    try:
        from gatewayd.store.postgres import PostgresEngine
    except ImportError as exc:  # pragma: no cover (psycopg is a dependency)
        raise StoreError(f"a PostgreSQL store needs psycopg: {exc}") from exc
    assert target.url is not None
    return PostgresEngine(
        target.url,
        display=target.display,
        password=target.password,
        connect_timeout_seconds=target.connect_timeout_seconds,
        pool_size=target.pool_size,
    )


__all__ = ["DB_FILE", "StoreTarget", "open_engine", "redact_url", "resolve_target"]
