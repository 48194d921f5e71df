"""The store itself: API keys, usage records and /v1/responses conversations, on either engine.

``Store`` holds the logic once and runs it on an ``Engine`` (``gatewayd.store.engine``): the SQLite file in
the state directory, or a PostgreSQL database shared by several instances. The statements are written in the
SQL both speak; only the schema (``MIGRATIONS``) is written per engine.

Every method is blocking and thread-safe, so a Store may be used from worker threads
(``anyio.to_thread.run_sync``); every driver error reaches the caller as ``StoreError``. A SQLite lock held
by another process is waited for at most ``busy_timeout_seconds``; the usage writer keeps a short one and
retries later, so a locked store never holds up a request.
"""

from __future__ import annotations

import array
import collections
import hmac
import operator
import time
from collections.abc import Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import TYPE_CHECKING

from gatewayd.config import ApiKey
from gatewayd.errors import KeyNotFound, StoreError
from gatewayd.store.engine import POSTGRESQL, SQLITE, Engine, Migrations, Session
from gatewayd.store.keys import (
    KEY_COLUMNS,
    KEY_PREFIX,
    SOURCES,
    ImportReport,
    KeyRecord,
    KeyWrite,
    StoredKey,
    display_prefix,
    generate_key_id,
    generate_secret,
    hash_key,
    plan_import,
)
from gatewayd.store.sqlite import DEFAULT_BUSY_TIMEOUT_SECONDS, STORE_DIR_MODE, STORE_FILE_MODE
from gatewayd.store.target import StoreTarget, open_engine

if TYPE_CHECKING:
    from gatewayd.store.usage import UsageRecord

__all__ = ["DEFAULT_BUSY_TIMEOUT_SECONDS", "STORE_DIR_MODE", "STORE_FILE_MODE", "Store", "UsageRow"]

#: rows deleted per transaction by ``prune_usage``, so a large prune never holds the write lock for long
PRUNE_CHUNK_ROWS = 10_000
#: ``usage_summary(by=...)`` accepts these
SUMMARY_GROUPS = ("key", "model", "backend")
#: shown for usage without a key (auth off) or without a backend (refused before routing)
NO_GROUP = "-"

#: the SQLite schema: _SQLITE_SCRIPTS[n] takes a file from user_version n to n + 1
_SQLITE_SCRIPTS = (
    """
    CREATE TABLE IF NOT EXISTS keys (
        id TEXT PRIMARY KEY,
        name TEXT NOT NULL,
        hash BLOB NOT NULL UNIQUE,
        prefix TEXT NOT NULL,
        models TEXT,
        rpm INTEGER,
        tpm INTEGER,
        max_concurrency INTEGER,
        budget_tokens INTEGER,
        expires_at REAL,
        revoked_at REAL,
        created_at REAL NOT NULL,
        source TEXT NOT NULL
    );
    CREATE TABLE IF NOT EXISTS meta (name TEXT PRIMARY KEY, value INTEGER NOT NULL);
    INSERT OR IGNORE INTO meta (name, value) VALUES ('key_changes', 0);
    CREATE TABLE IF NOT EXISTS usage (
        id INTEGER PRIMARY KEY,
        time REAL NOT NULL,
        key_id TEXT,
        model TEXT NOT NULL,
        backend TEXT,
        prompt_tokens INTEGER NOT NULL,
        completion_tokens INTEGER NOT NULL,
        latency_seconds REAL NOT NULL,
        ttft_seconds REAL,
        status INTEGER NOT NULL,
        attempts INTEGER NOT NULL
    );
    CREATE INDEX IF NOT EXISTS usage_by_time ON usage (time);
    CREATE INDEX IF NOT EXISTS usage_by_key ON usage (key_id, time);
    """,
    """
    CREATE TABLE IF NOT EXISTS responses (
        id TEXT PRIMARY KEY,
        created_at REAL NOT NULL,
        items TEXT NOT NULL
    );
    CREATE INDEX IF NOT EXISTS responses_by_time ON responses (created_at);
    """,
)
#: the same schema in PostgreSQL's types (a version of one is the same version of the other)
_POSTGRES_SCRIPTS = (
    """
    CREATE TABLE IF NOT EXISTS keys (
        id TEXT PRIMARY KEY,
        name TEXT NOT NULL,
        hash BYTEA NOT NULL UNIQUE,
        prefix TEXT NOT NULL,
        models TEXT,
        rpm BIGINT,
        tpm BIGINT,
        max_concurrency BIGINT,
        budget_tokens BIGINT,
        expires_at DOUBLE PRECISION,
        revoked_at DOUBLE PRECISION,
        created_at DOUBLE PRECISION NOT NULL,
        source TEXT NOT NULL
    );
    CREATE TABLE IF NOT EXISTS meta (name TEXT PRIMARY KEY, value BIGINT NOT NULL);
    INSERT INTO meta (name, value) VALUES ('key_changes', 0) ON CONFLICT (name) DO NOTHING;
    CREATE TABLE IF NOT EXISTS usage (
        id BIGSERIAL PRIMARY KEY,
        time DOUBLE PRECISION NOT NULL,
        key_id TEXT,
        model TEXT NOT NULL,
        backend TEXT,
        prompt_tokens BIGINT NOT NULL,
        completion_tokens BIGINT NOT NULL,
        latency_seconds DOUBLE PRECISION NOT NULL,
        ttft_seconds DOUBLE PRECISION,
        status INTEGER NOT NULL,
        attempts INTEGER NOT NULL
    );
    CREATE INDEX IF NOT EXISTS usage_by_time ON usage (time);
    CREATE INDEX IF NOT EXISTS usage_by_key ON usage (key_id, time);
    """,
    """
    CREATE TABLE IF NOT EXISTS responses (
        id TEXT PRIMARY KEY,
        created_at DOUBLE PRECISION NOT NULL,
        items TEXT NOT NULL
    );
    CREATE INDEX IF NOT EXISTS responses_by_time ON responses (created_at);
    """,
)
#: the store's schema on each engine
MIGRATIONS = {
    SQLITE: Migrations("store", _SQLITE_SCRIPTS),
    POSTGRESQL: Migrations("store", _POSTGRES_SCRIPTS),
}
SCHEMA_VERSION = len(_SQLITE_SCRIPTS)

#: a UsageRecord's fields, which are also the usage table's columns
USAGE_COLUMNS = (
    "time",
    "key_id",
    "model",
    "backend",
    "prompt_tokens",
    "completion_tokens",
    "latency_seconds",
    "ttft_seconds",
    "status",
    "attempts",
)
_KEY_COLUMNS = ", ".join(KEY_COLUMNS)
_INSERT_KEY = f"INSERT INTO keys (hash, {_KEY_COLUMNS}) VALUES (?{', ?' * len(KEY_COLUMNS)})"
_REPLACE_KEY = f"UPDATE keys SET hash = ?, {', '.join(f'{c} = ?' for c in KEY_COLUMNS[1:])} WHERE id = ?"
_INSERT_USAGE = f"INSERT INTO usage ({', '.join(USAGE_COLUMNS)}) VALUES (?{', ?' * (len(USAGE_COLUMNS) - 1)})"
_usage_values = operator.attrgetter(*USAGE_COLUMNS)
_SUMMARY_COLUMN = {"key": "key_id", "model": "model", "backend": "backend"}


@dataclass(frozen=True)
class UsageRow:
    """One line of a usage summary. Latencies are in seconds; percentiles are nearest-rank."""

    #: the key's name (with its id when two keys share a name), the model, or the backend; "-" for none
    group: str
    requests: int
    #: requests answered with status >= 400
    errors: int
    prompt_tokens: int
    completion_tokens: int
    avg_latency_seconds: float
    p50_latency_seconds: float
    p95_latency_seconds: float
    #: None when no request of the group reported a first token
    avg_ttft_seconds: float | None


class Store:
    """The store on one engine. Open with ``Store.open`` (a SQLite file) or ``Store.connect`` (any target);
    ``close`` when done."""

    def __init__(self, engine: Engine) -> None:
        self.engine = engine

    @property
    def display(self) -> str:
        """Where the store is, without credentials."""
        return self.engine.display

    @classmethod
    def open(cls, path: Path, *, busy_timeout_seconds: float = DEFAULT_BUSY_TIMEOUT_SECONDS) -> Store:
        """The SQLite store at ``path`` (created if needed: directory 0700, file 0600), schema up to date.

        Raises StoreError saying why the file cannot be used (permissions, not a database, locked past
        ``busy_timeout_seconds`` while the schema is created, written by a newer gatewayd)."""
        return cls.connect(StoreTarget.sqlite(path), busy_timeout_seconds=busy_timeout_seconds)

    @classmethod
    def connect(
        cls, target: StoreTarget, *, busy_timeout_seconds: float = DEFAULT_BUSY_TIMEOUT_SECONDS
    ) -> Store:
        """The store ``target`` names, its schema brought up to date (safe when several processes start at
        once). Raises StoreError saying why it cannot be used; a schema newer than this gatewayd's is refused
        with both versions named."""
        engine = open_engine(target, busy_timeout_seconds=busy_timeout_seconds)
        try:
            engine.migrate(MIGRATIONS[engine.kind])
        except BaseException:
            engine.close()
            raise
        return cls(engine)

    def close(self) -> None:
        """Close the connections (waiting for a call in progress). Later calls raise StoreError."""
        self.engine.close()

    # -- keys ----------------------------------------------------------------------------------------------

    def create_key(
        self,
        *,
        name: str,
        models: Sequence[str] | None = None,
        rpm: int | None = None,
        tpm: int | None = None,
        max_concurrency: int | None = None,
        budget_tokens: int | None = None,
        expires_at: float | None = None,
        source: str = "cli",
        secret: str | None = None,
    ) -> tuple[KeyRecord, str]:
        """Store a new key; returns its record and its secret (generated unless given), which is never
        stored and cannot be shown again. Raises StoreError if the secret is already a key's."""
        if not name.strip():
            raise ValueError("a key needs a name")
        if source not in SOURCES:
            raise ValueError(f"unknown key source '{source}' (one of {', '.join(SOURCES)})")
        secret = generate_secret() if secret is None else secret
        record = KeyRecord(
            id=generate_key_id(),
            name=name,
            prefix=display_prefix(secret),
            models=tuple(models) if models is not None else None,
            rpm=rpm,
            tpm=tpm,
            max_concurrency=max_concurrency,
            budget_tokens=budget_tokens,
            expires_at=expires_at,
            revoked_at=None,
            created_at=time.time(),
            source=source,
        )
        digest = hash_key(secret)
        with self.engine.transaction("create a key") as conn:
            if conn.execute("SELECT 1 FROM keys WHERE hash = ?", (digest,)).fetchone():
                raise StoreError("a key with this secret already exists")
            while conn.execute("SELECT 1 FROM keys WHERE id = ?", (record.id,)).fetchone():
                record = replace(record, id=generate_key_id())
            conn.execute(_INSERT_KEY, (digest, *record.to_row()))
            _bump_key_changes(conn)
        return record, secret

    def list_keys(self, *, include_revoked: bool = True) -> list[KeyRecord]:
        """Every key, oldest first."""
        where = "" if include_revoked else " WHERE revoked_at IS NULL"
        with self.engine.session("list the keys") as conn:
            rows = conn.execute(f"SELECT {_KEY_COLUMNS} FROM keys{where} ORDER BY created_at, id").fetchall()
        return [KeyRecord.from_row(row) for row in rows]

    def revoke_key(self, ref: str) -> KeyRecord:
        """Revoke the key ``ref`` names: its id, its prefix (with or without "gwd-"), the whole secret, or
        its name. Only keys not yet revoked are candidates by prefix or name; when every match is already
        revoked the newest of them is returned unchanged (revoking twice is not an error).

        Raises KeyNotFound when nothing matches, StoreError when several live keys do."""
        digest = hash_key(ref)
        body = ref.removeprefix(KEY_PREFIX)
        with self.engine.transaction("revoke a key") as conn:
            rows = conn.execute(f"SELECT hash, {_KEY_COLUMNS} FROM keys ORDER BY created_at, id").fetchall()
            keys = [(bytes(row[0]), KeyRecord.from_row(row[1:])) for row in rows]
            by_id = [record for _, record in keys if record.id == ref]
            matches = by_id or [
                record
                for key_hash, record in keys
                if hmac.compare_digest(key_hash, digest)
                or (record.prefix and record.prefix == body)
                or record.name == ref
            ]
            live = [record for record in matches if record.revoked_at is None]
            if not matches:
                raise KeyNotFound(ref)
            if len(live) > 1:
                listed = ", ".join(f"{record.id} ({record.name}, {record.prefix}…)" for record in live)
                raise StoreError(f"'{ref}' is ambiguous: it matches {len(live)} keys: {listed}; give an id")
            if not live:
                return max(matches, key=lambda record: record.revoked_at or 0.0)
            revoked = replace(live[0], revoked_at=time.time())
            conn.execute("UPDATE keys SET revoked_at = ? WHERE id = ?", (revoked.revoked_at, revoked.id))
            _bump_key_changes(conn)
        return revoked

    def key_by_hash(self, digest: bytes) -> KeyRecord | None:
        """The key whose secret hashes to ``digest``, active or not (the caller tells the client which)."""
        with self.engine.session("look a key up") as conn:
            row = conn.execute(f"SELECT hash, {_KEY_COLUMNS} FROM keys WHERE hash = ?", (digest,)).fetchone()
        if row is None or not hmac.compare_digest(bytes(row[0]), digest):
            return None
        return KeyRecord.from_row(row[1:])

    def all_active_keys(self) -> dict[bytes, KeyRecord]:
        """Digest -> record of every key active now, for an in-memory cache. (A dict lookup by digest
        leaks nothing useful: an attacker learns about SHA-256 digests, not about secrets.)"""
        now = time.time()
        with self.engine.session("load the keys") as conn:
            rows = conn.execute(f"SELECT hash, {_KEY_COLUMNS} FROM keys WHERE revoked_at IS NULL").fetchall()
        records = ((bytes(row[0]), KeyRecord.from_row(row[1:])) for row in rows)
        return {digest: record for digest, record in records if record.active_at(now)}

    def change_counter(self) -> int:
        """A number that grows with every change to the keys, made by any process: poll it to know when
        a cache of ``all_active_keys`` is stale."""
        with self.engine.session("read the key change counter") as conn:
            row = conn.execute("SELECT value FROM meta WHERE name = 'key_changes'").fetchone()
        return int(row[0]) if row else 0

    def import_keys(self, declared: Sequence[ApiKey]) -> ImportReport:
        """Bring the keys declared in the config file into the store, in one transaction (see
        ``keys.plan_import`` for how they are matched). Raises ConfigError for duplicate names or secrets
        or a bad expiry (nothing is written then), StoreError if the store cannot be written."""
        with self.engine.transaction("import the configured keys") as conn:
            rows = conn.execute(f"SELECT hash, {_KEY_COLUMNS} FROM keys").fetchall()
            stored = [StoredKey(KeyRecord.from_row(row[1:]), bytes(row[0])) for row in rows]
            writes, report = plan_import(stored, declared, now=time.time())
            for write in writes:
                _write_key(conn, write)
            if writes:
                _bump_key_changes(conn)
        return report

    # -- responses (/v1/responses conversations) ------------------------------------------------------------

    def save_response(self, response_id: str, created_at: float, items: str, *, keep: int) -> None:
        """Store a response's conversation (``items``: JSON text), keeping the newest ``keep`` only."""
        with self.engine.transaction("store a response") as conn:
            conn.execute(
                "INSERT INTO responses (id, created_at, items) VALUES (?, ?, ?) ON CONFLICT (id)"
                " DO UPDATE SET created_at = excluded.created_at, items = excluded.items",
                (response_id, created_at, items),
            )
            conn.execute(
                "DELETE FROM responses WHERE id NOT IN"
                " (SELECT id FROM responses ORDER BY created_at DESC LIMIT ?)",
                (keep,),
            )

    def load_response(self, response_id: str, *, newer_than: float) -> str | None:
        """The conversation of a response stored after ``newer_than`` (epoch seconds), or None."""
        with self.engine.session("read a response") as conn:
            row = conn.execute(
                "SELECT items FROM responses WHERE id = ? AND created_at >= ?", (response_id, newer_than)
            ).fetchone()
        return None if row is None else str(row[0])

    def prune_responses(self, older_than: float) -> int:
        """Delete the responses stored before ``older_than``; returns how many went."""
        with self.engine.transaction("prune responses", exclusive=False) as conn:
            return conn.execute("DELETE FROM responses WHERE created_at < ?", (older_than,)).rowcount

    # -- usage ---------------------------------------------------------------------------------------------

    def insert_usage(self, rows: Sequence[UsageRecord]) -> None:
        """Write ``rows`` in one transaction: all of them or, on error, none."""
        values = [_usage_values(row) for row in rows]
        with self.engine.transaction("write usage records", exclusive=False) as conn:
            conn.executemany(_INSERT_USAGE, values)

    def usage_summary(self, *, since: float | None = None, by: str = "model") -> list[UsageRow]:
        """Usage since ``since`` (epoch seconds; None = all kept), one row per key, model or backend,
        busiest first. Raises ValueError for another ``by``."""
        if by not in SUMMARY_GROUPS:
            raise ValueError(f"cannot summarise usage by '{by}' (one of {', '.join(SUMMARY_GROUPS)})")
        column = _SUMMARY_COLUMN[by]
        where, bounds = ("", ()) if since is None else (" WHERE time >= ?", (since,))
        latencies: dict[str | None, array.array[float]] = collections.defaultdict(lambda: array.array("d"))
        with self.engine.session("summarise usage") as conn:
            totals = conn.execute(
                f"SELECT {column}, count(*), sum(CASE WHEN status >= 400 THEN 1 ELSE 0 END),"
                f" sum(prompt_tokens), sum(completion_tokens), avg(latency_seconds), avg(ttft_seconds)"
                f" FROM usage{where} GROUP BY {column}",
                bounds,
            ).fetchall()
            # percentiles in Python: twice as fast as SQLite's window functions, 8 bytes a request
            for group, latency in conn.execute(f"SELECT {column}, latency_seconds FROM usage{where}", bounds):
                latencies[group].append(latency)
            names = dict(conn.execute("SELECT id, name FROM keys").fetchall()) if by == "key" else {}
        p50: dict[str | None, float] = {}
        p95: dict[str | None, float] = {}
        for group, values in latencies.items():
            ordered = sorted(values)
            p50[group] = ordered[_nearest_rank(len(ordered), 50) - 1]
            p95[group] = ordered[_nearest_rank(len(ordered), 95) - 1]
        labels = _labels([row[0] for row in totals], names if by == "key" else None)
        result = [
            UsageRow(
                group=labels[group],
                # PostgreSQL sums integers as numeric: every figure is made a plain int or float
                requests=int(requests),
                errors=int(errors or 0),
                prompt_tokens=int(prompt or 0),
                completion_tokens=int(completion or 0),
                avg_latency_seconds=float(latency),
                p50_latency_seconds=p50.get(group, float(latency)),
                p95_latency_seconds=p95.get(group, float(latency)),
                avg_ttft_seconds=None if ttft is None else float(ttft),
            )
            for group, requests, errors, prompt, completion, latency, ttft in totals
        ]
        result.sort(key=lambda row: (-row.requests, row.group))
        return result

    def tokens_used(self, key_id: str, since: float | None = None) -> int:
        """Prompt plus completion tokens recorded for ``key_id`` since ``since`` (None = all kept)."""
        with self.engine.session("count tokens") as conn:
            row = conn.execute(
                "SELECT coalesce(sum(prompt_tokens + completion_tokens), 0) FROM usage"
                " WHERE key_id = ? AND time >= ?",
                (key_id, _lower_bound(since)),
            ).fetchone()
        return int(row[0])

    def recent_usage(self, since: float) -> list[tuple[str, float, int]]:
        """(key id, time, tokens) of every keyed request since ``since`` that its limits admitted, oldest
        first: what rate windows are rebuilt from after a restart."""
        with self.engine.session("read recent usage") as conn:
            rows = conn.execute(
                "SELECT key_id, time, prompt_tokens + completion_tokens FROM usage"
                " WHERE time >= ? AND key_id IS NOT NULL AND status NOT IN (401, 402, 403, 429)"
                " ORDER BY time",
                (since,),
            ).fetchall()
        return [(str(key_id), float(when), int(tokens)) for key_id, when, tokens in rows]

    def prune_usage(self, older_than: float) -> int:
        """Delete usage recorded before ``older_than`` (epoch seconds), PRUNE_CHUNK_ROWS per transaction;
        returns how many rows went."""
        deleted = 0
        while True:
            with self.engine.transaction("prune usage", exclusive=False) as conn:
                cursor = conn.execute(
                    "DELETE FROM usage WHERE id IN (SELECT id FROM usage WHERE time < ? LIMIT ?)",
                    (older_than, PRUNE_CHUNK_ROWS),
                )
            deleted += cursor.rowcount
            if cursor.rowcount < PRUNE_CHUNK_ROWS:
                return deleted


def _bump_key_changes(conn: Session) -> None:
    conn.execute("UPDATE meta SET value = value + 1 WHERE name = 'key_changes'")


def _write_key(conn: Session, write: KeyWrite) -> None:
    values = write.record.to_row()
    if write.insert:
        conn.execute(_INSERT_KEY, (write.digest, *values))
    else:
        conn.execute(_REPLACE_KEY, (write.digest, *values[1:], values[0]))


def _lower_bound(since: float | None) -> float:
    return float("-inf") if since is None else since


def _labels(groups: Sequence[str | None], names: dict[str, str] | None) -> dict[str | None, str]:
    """Display labels: "-" for none; for keys (``names`` given) the name, with the id when two keys
    share a name."""
    labels = {group: NO_GROUP if group is None else group for group in groups}
    if names is None:
        return labels
    labels.update({group: names.get(group, group) for group in groups if group is not None})
    seen = collections.Counter(labels.values())
    return {
        group: f"{label} ({group})" if group is not None and seen[label] > 1 else label
        for group, label in labels.items()
    }


def _nearest_rank(count: int, percent: int) -> int:
    """The 1-based rank of the ``percent``th percentile of ``count`` values (nearest-rank method)."""
    return (count * percent + 99) // 100
