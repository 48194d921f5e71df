"""The store itself: one SQLite file in the state directory holding API keys and usage records.

WAL mode: readers never wait for the writer, and a process killed in the middle of a write leaves a file
that the next open recovers on its own (the unfinished transaction is simply not there). ``synchronous``
is NORMAL: a commit survives a crash of the process, though the last ones may be lost on a power cut.

Every method is blocking and serialised on one connection by a lock, so a Store may be used from worker
threads (``anyio.to_thread.run_sync``). Every ``sqlite3`` error is translated into ``StoreError`` here.
A lock held by another process is waited for at most ``busy_timeout_seconds``; the usage writer keeps a
short one and retries later, so a locked store never holds up a request.
"""

from __future__ import annotations

import array
import collections
import contextlib
import hmac
import operator
import os
import sqlite3
import threading
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import TYPE_CHECKING

from gatewayd.config import ApiKey
from gatewayd.errors import KeyNotFound, StoreError
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

if TYPE_CHECKING:
    from gatewayd.store.usage import UsageRecord

STORE_DIR_MODE = 0o700
STORE_FILE_MODE = 0o600
DEFAULT_BUSY_TIMEOUT_SECONDS = 0.2
#: rows deleted per transaction by ``prune_usage``, so a large prune never holds the write lock for long
PRUNE_CHUNK_ROWS = 10_000
#: ``usage_summary(by=...)`` accepts these
SUMMARY_GROUPS = ("key", "model", "backend")
#: shown for usage without a key (auth off) or without a backend (refused before routing)
NO_GROUP = "-"

SCHEMA_VERSION = 1
#: MIGRATIONS[n] takes a file from user_version n to n + 1
MIGRATIONS = (
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

#: how often opening a new store retries its switch to WAL while another connection holds the file
WAL_SWITCH_RETRY_SECONDS = 0.01


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
    """One connection to the store file. Open with ``Store.open``; ``close`` when done."""

    def __init__(self, path: Path, connection: sqlite3.Connection) -> None:
        self.path = path
        self._connection: sqlite3.Connection | None = connection
        self._lock = threading.Lock()

    @classmethod
    def open(cls, path: Path, *, busy_timeout_seconds: float = DEFAULT_BUSY_TIMEOUT_SECONDS) -> Store:
        """Open (creating if needed: directory 0700, file 0600) and bring the schema up to date.

        Raises StoreError saying why the file cannot be used (permissions, not a database, locked past
        ``busy_timeout_seconds`` while the schema is created, written by a newer gatewayd)."""
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
        store = cls(path, connection)
        try:
            with store._locked("open the store") as conn:
                _prepare(conn, path, busy_timeout_seconds)
        except BaseException:
            store.close()
            raise
        return store

    def close(self) -> None:
        """Close the connection (waiting for a call in progress). Later calls raise StoreError."""
        with self._lock:
            if self._connection is not None:
                with contextlib.suppress(sqlite3.Error):
                    self._connection.close()
                self._connection = None

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
        with self._transaction("create a key") as conn:
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
        with self._locked("list the keys") as conn:
            rows = conn.execute(f"SELECT {_KEY_COLUMNS} FROM keys{where} ORDER BY created_at, id").fetchall()
        return [KeyRecord.from_row(row) for row in rows]

    def revoke_key(self, ref: str) -> KeyRecord:
        """Revoke the key ``ref`` names: its id, its prefix (with or without "gwd-"), the whole secret, or
        its name. Only keys not yet revoked are candidates by prefix or name; when every match is already
        revoked the newest of them is returned unchanged (revoking twice is not an error).

        Raises KeyNotFound when nothing matches, StoreError when several live keys do."""
        digest = hash_key(ref)
        body = ref.removeprefix(KEY_PREFIX)
        with self._transaction("revoke a key") as conn:
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
        with self._locked("look a key up") as conn:
            row = conn.execute(f"SELECT hash, {_KEY_COLUMNS} FROM keys WHERE hash = ?", (digest,)).fetchone()
        if row is None or not hmac.compare_digest(bytes(row[0]), digest):
            return None
        return KeyRecord.from_row(row[1:])

    def all_active_keys(self) -> dict[bytes, KeyRecord]:
        """Digest -> record of every key active now, for an in-memory cache. (A dict lookup by digest
        leaks nothing useful: an attacker learns about SHA-256 digests, not about secrets.)"""
        now = time.time()
        with self._locked("load the keys") as conn:
            rows = conn.execute(f"SELECT hash, {_KEY_COLUMNS} FROM keys WHERE revoked_at IS NULL").fetchall()
        records = ((bytes(row[0]), KeyRecord.from_row(row[1:])) for row in rows)
        return {digest: record for digest, record in records if record.active_at(now)}

    def change_counter(self) -> int:
        """A number that grows with every change to the keys, made by any process: poll it to know when
        a cache of ``all_active_keys`` is stale."""
        with self._locked("read the key change counter") as conn:
            row = conn.execute("SELECT value FROM meta WHERE name = 'key_changes'").fetchone()
        return int(row[0]) if row else 0

    def import_keys(self, declared: Sequence[ApiKey]) -> ImportReport:
        """Bring the keys declared in the config file into the store, in one transaction (see
        ``keys.plan_import`` for how they are matched). Raises ConfigError for duplicate names or secrets
        or a bad expiry (nothing is written then), StoreError if the store cannot be written."""
        with self._transaction("import the configured keys") as conn:
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
        with self._transaction("store a response") as conn:
            conn.execute(
                "INSERT OR REPLACE INTO responses (id, created_at, items) VALUES (?, ?, ?)",
                (response_id, created_at, items),
            )
            conn.execute(
                "DELETE FROM responses WHERE id IN"
                " (SELECT id FROM responses ORDER BY created_at DESC LIMIT -1 OFFSET ?)",
                (keep,),
            )

    def load_response(self, response_id: str, *, newer_than: float) -> str | None:
        """The conversation of a response stored after ``newer_than`` (epoch seconds), or None."""
        with self._locked("read a response") as conn:
            row = conn.execute(
                "SELECT items FROM responses WHERE id = ? AND created_at >= ?", (response_id, newer_than)
            ).fetchone()
        return None if row is None else str(row[0])

    def prune_responses(self, older_than: float) -> int:
        """Delete the responses stored before ``older_than``; returns how many went."""
        with self._transaction("prune responses") as conn:
            return conn.execute("DELETE FROM responses WHERE created_at < ?", (older_than,)).rowcount

    # -- usage ---------------------------------------------------------------------------------------------

    def insert_usage(self, rows: Sequence[UsageRecord]) -> None:
        """Write ``rows`` in one transaction: all of them or, on error, none."""
        values = [_usage_values(row) for row in rows]
        with self._transaction("write usage records") as conn:
            conn.executemany(_INSERT_USAGE, values)

    def usage_summary(self, *, since: float | None = None, by: str = "model") -> list[UsageRow]:
        """Usage since ``since`` (epoch seconds; None = all kept), one row per key, model or backend,
        busiest first. Raises ValueError for another ``by``."""
        if by not in SUMMARY_GROUPS:
            raise ValueError(f"cannot summarise usage by '{by}' (one of {', '.join(SUMMARY_GROUPS)})")
        column = _SUMMARY_COLUMN[by]
        where, bounds = ("", ()) if since is None else (" WHERE time >= ?", (since,))
        latencies: dict[str | None, array.array[float]] = collections.defaultdict(lambda: array.array("d"))
        with self._locked("summarise usage") as conn:
            totals = conn.execute(
                f"SELECT {column}, count(*), sum(status >= 400), sum(prompt_tokens), sum(completion_tokens),"
                f" avg(latency_seconds), avg(ttft_seconds) FROM usage{where} GROUP BY {column}",
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
                requests=requests,
                errors=errors or 0,
                prompt_tokens=prompt or 0,
                completion_tokens=completion or 0,
                avg_latency_seconds=latency,
                p50_latency_seconds=p50.get(group, latency),
                p95_latency_seconds=p95.get(group, latency),
                avg_ttft_seconds=ttft,
            )
            for group, requests, errors, prompt, completion, latency, ttft in totals
        ]
        result.sort(key=lambda row: (-row.requests, row.group))
        return result

    def tokens_used(self, key_id: str, since: float | None = None) -> int:
        """Prompt plus completion tokens recorded for ``key_id`` since ``since`` (None = all kept)."""
        with self._locked("count tokens") as conn:
            row = conn.execute(
                "SELECT coalesce(sum(prompt_tokens + completion_tokens), 0) FROM usage"
                " WHERE key_id = ? AND time >= ?",
                (key_id, _lower_bound(since)),
            ).fetchone()
        return int(row[0])

    def recent_usage(self, since: float) -> list[tuple[str, float, int]]:
        """(key id, time, tokens) of every keyed request since ``since`` that its limits admitted, oldest
        first: what rate windows are rebuilt from after a restart."""
        with self._locked("read recent usage") as conn:
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
            with self._transaction("prune usage") as conn:
                cursor = conn.execute(
                    "DELETE FROM usage WHERE id IN (SELECT id FROM usage WHERE time < ? LIMIT ?)",
                    (older_than, PRUNE_CHUNK_ROWS),
                )
            deleted += cursor.rowcount
            if cursor.rowcount < PRUNE_CHUNK_ROWS:
                return deleted

    # -- plumbing ------------------------------------------------------------------------------------------

    @contextlib.contextmanager
    def _locked(self, action: str) -> Iterator[sqlite3.Connection]:
        """The connection, held alone, with sqlite3's errors translated into StoreError."""
        with self._lock:
            if self._connection is None:
                raise StoreError(f"cannot {action}: the store {self.path} is closed")
            try:
                yield self._connection
            except sqlite3.Error as exc:
                raise StoreError(f"cannot {action}: {_describe(exc)} ({self.path})") from exc

    @contextlib.contextmanager
    def _transaction(self, action: str) -> Iterator[sqlite3.Connection]:
        """A write transaction: BEGIN IMMEDIATE takes the write lock up front (waiting at most the busy
        timeout), so it never fails half way for lack of it. Rolled back on any exception."""
        with self._locked(action) as conn:
            conn.execute("BEGIN IMMEDIATE")
            try:
                yield conn
                conn.execute("COMMIT")
            except BaseException:
                _rollback(conn)
                raise


def _prepare(conn: sqlite3.Connection, path: Path, busy_timeout_seconds: float) -> None:
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
    if _user_version(conn) == SCHEMA_VERSION:
        return
    conn.execute("BEGIN IMMEDIATE")
    try:
        version = _user_version(conn)  # another process may have created the schema meanwhile
        if version > SCHEMA_VERSION:
            raise StoreError(
                f"the store {path} was written by a newer gatewayd (schema {version}; this one knows "
                f"{SCHEMA_VERSION}); upgrade gatewayd or point it at another state directory"
            )
        for script in MIGRATIONS[version:]:
            for statement in script.split(";"):
                if statement.strip():
                    conn.execute(statement)
        conn.execute(f"PRAGMA user_version = {SCHEMA_VERSION}")
        conn.execute("COMMIT")
    except BaseException:
        _rollback(conn)
        raise


def _rollback(conn: sqlite3.Connection) -> None:
    """End the transaction in progress, if any (a failed COMMIT leaves it open)."""
    if conn.in_transaction:
        with contextlib.suppress(sqlite3.Error):
            conn.execute("ROLLBACK")


def _user_version(conn: sqlite3.Connection) -> int:
    return int(conn.execute("PRAGMA user_version").fetchone()[0])


def _describe(exc: sqlite3.Error) -> str:
    text = str(exc)
    if "locked" in text or "busy" in text:
        return "the store is locked by another process"
    if isinstance(exc, sqlite3.DatabaseError) and "not a database" in text:
        return "the file is not a gatewayd store (not an SQLite database, or corrupt)"
    return text


def _bump_key_changes(conn: sqlite3.Connection) -> None:
    conn.execute("UPDATE meta SET value = value + 1 WHERE name = 'key_changes'")


def _write_key(conn: sqlite3.Connection, write: KeyWrite) -> None:
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
