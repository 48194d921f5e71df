"""Who is calling, whether they may, and what they used: keys, limits and the usage record, process-wide.

One ``Guard`` lives as long as the gateway factory, so a reload keeps the key cache, the limit windows and
the usage buffer. Keys are looked up in an in-memory cache of the store's active keys (by their SHA-256
digest), refreshed when the store's change counter moves (checked every ``KEY_REFRESH_INTERVAL_SECONDS``,
and at once after a change made through this process's admin API or a nudge on POST /keys/refresh; nudges
are coalesced to one re-read per ``auth.key_refresh_min_interval_seconds``, since that endpoint is public).
If the store cannot be read, the keys already known keep working: a storage problem never becomes an
outage. After a restart the limit windows and budgets are restored from the usage record.

When ``auth.mode`` is off, ``authenticate`` returns None without looking at anything, so the hot path pays
one comparison.
"""

from __future__ import annotations

import hmac
import logging
import time
from collections.abc import Callable, Iterable, Mapping
from pathlib import Path
from typing import TypeVar

import anyio
import anyio.abc
import anyio.to_thread

from gatewayd.config import AuthMode, AuthSettings, Config
from gatewayd.errors import (
    AdminRequired,
    BadRequest,
    GatewaydError,
    HttpError,
    KeyNotFound,
    NotFound,
    StoreError,
    Unauthorized,
)
from gatewayd.gateway.coalesce import CoalescedRefresh
from gatewayd.gateway.core.limits import Grant, KeyPolicy, Limiter, estimate_tokens
from gatewayd.gateway.core.profile import bearer
from gatewayd.gateway.metrics import Metrics
from gatewayd.store.db import Store
from gatewayd.store.keys import KeyRecord, hash_key, parse_expiry
from gatewayd.store.usage import UsageRecord, UsageWriter

log = logging.getLogger("gatewayd.auth")

#: how often the store's change counter is read (a key revoked by another process is refused after this)
KEY_REFRESH_INTERVAL_SECONDS = 0.5
#: limit windows restored after a restart cover this much of the recent usage record
RATE_WINDOW_SECONDS = 60.0
DB_FILE = "gatewayd.db"
_KEY_FIELDS = frozenset({"name", "models", "rpm", "tpm", "max_concurrency", "budget_tokens", "expires"})
T = TypeVar("T")
#: token counts a backend reports are capped at this (a broken or hostile backend must not overflow them)
MAX_REPORTED_TOKENS = 2**31 - 1
#: the largest limit the admin API takes (SQLite integers are 64-bit)
MAX_LIMIT = 2**53
#: the guard's own store reads and imports run off the request path: they may wait for a writer this long
STORE_BUSY_TIMEOUT_SECONDS = 5.0


class Guard:
    """Authentication, limits and usage for every generation of the process."""

    def __init__(self, state_dir: Path, metrics: Metrics) -> None:
        self.db_path = state_dir / DB_FILE
        self.metrics = metrics
        self.settings = AuthSettings()
        self.limiter = Limiter()
        self.usage = UsageWriter(self.db_path)
        usage = self.usage
        metrics.store_backlog.sources.append(lambda: [((), float(usage.backlog))])
        metrics.store_written.sources.append(lambda: [((), float(usage.written_total))])
        metrics.store_dropped.sources.append(lambda: [((), float(usage.dropped_total))])
        metrics.store_write_seconds.sources.append(lambda: [((), usage.last_flush_seconds or 0.0)])
        self._keys: dict[bytes, KeyRecord] = {}
        self._counter: int | None = None
        self._refresh_now = anyio.Event()
        self._nudges = CoalescedRefresh(
            lambda: self._refresh(force=True),
            min_interval_seconds=lambda: self.settings.key_refresh_min_interval_seconds,
        )
        #: full re-reads of the active keys from the store (for tests and diagnostics)
        self.key_reads = 0
        #: whether the last read of the store failed (its warning is logged once per outage)
        self._store_unreadable = False
        #: keys whose limit state was restored from the usage record (set once the restore is done)
        self._restored: dict[str, anyio.Event] = {}
        self._store: Store | None = None

    # -- lifetime -----------------------------------------------------------------------------------

    async def run(self, *, task_status: anyio.abc.TaskStatus[None] = anyio.TASK_STATUS_IGNORED) -> None:
        """Keep the key cache fresh and write usage until cancelled (then flush what is buffered)."""
        async with anyio.create_task_group() as tg:
            await tg.start(self.usage.run)
            task_status.started()
            try:
                while True:
                    await self._refresh()
                    with anyio.move_on_after(KEY_REFRESH_INTERVAL_SECONDS):
                        await self._refresh_now.wait()
                    self._refresh_now = anyio.Event()
            finally:
                tg.cancel_scope.cancel()
                if self._store is not None:
                    self._store.close()

    async def configure(self, config: Config) -> list[str]:
        """Take a new config's auth settings and import its declared keys. Returns warnings to log (keys
        removed from the file that are still valid in the store). A store that cannot be used is a warning
        too: the keys already known keep working."""
        self.settings = config.auth
        self.usage.configure(config.usage)
        warnings: list[str] = []
        if config.auth.mode is AuthMode.KEYS or config.keys:
            try:
                report = await anyio.to_thread.run_sync(self._store_now().import_keys, config.keys)
            except GatewaydError as error:
                return [f"cannot import the config's keys: {error}"]
            parts = [
                f"{label} {', '.join(names)}"
                for label, names in (
                    ("imported", report.imported),
                    ("updated", report.updated),
                    ("unchanged", report.unchanged),
                )
                if names
            ]
            if parts:
                log.info("keys from the config: %s", "; ".join(parts))
            for revoked in report.revoked:
                warnings.append(
                    f"key '{revoked}' is declared in the config but was revoked; it stays revoked "
                    "(declare a new key to replace it)"
                )
            for orphan in report.orphans:
                warnings.append(
                    f"key '{orphan.name}' ({orphan.prefix}...) is no longer in the config but is still "
                    f"valid; revoke it with 'gatewayd keys revoke {orphan.id}' if it should stop working"
                )
            await self._refresh(force=True)
        return warnings

    async def refresh_keys(self) -> None:
        """Re-read the keys (a key was created or revoked, here or by the CLI); returns once a re-read that
        began after the call is done, so the change is seen. Concurrent calls share one re-read, and
        re-reads are at least ``auth.key_refresh_min_interval_seconds`` apart (see CoalescedRefresh)."""
        await self._nudges.request()

    async def list_keys(self) -> list[KeyRecord]:
        return await self._in_store(lambda store: store.list_keys())

    async def create_key(self, body: object) -> tuple[KeyRecord, str]:
        """Create a key from an admin API request body. Raises BadRequest saying what is wrong."""
        if not isinstance(body, dict) or not isinstance(body.get("name"), str) or not body["name"].strip():
            raise BadRequest("send a JSON object with at least a non-empty 'name'", param="name")
        unknown = set(body) - _KEY_FIELDS
        if unknown:
            raise BadRequest(f"unknown field(s): {', '.join(sorted(unknown))}")
        limits: dict[str, int | None] = {}
        for field in ("rpm", "tpm", "max_concurrency", "budget_tokens"):
            value = body.get(field)
            if value is not None and (
                not isinstance(value, int) or isinstance(value, bool) or not 1 <= value <= MAX_LIMIT
            ):
                raise BadRequest(f"'{field}' must be a whole number from 1 to {MAX_LIMIT}", param=field)
            limits[field] = value
        models = body.get("models")
        if models is not None and (
            not isinstance(models, list) or not all(isinstance(m, str) and m for m in models)
        ):
            raise BadRequest("'models' must be a list of model names", param="models")
        expires_at = None
        if body.get("expires") is not None:
            try:
                expires_at = parse_expiry(str(body["expires"]))
            except ValueError as error:
                raise BadRequest(str(error), param="expires") from None
        name = body["name"]
        created = await self._in_store(
            lambda store: store.create_key(
                name=name,
                models=tuple(models) if models is not None else None,
                rpm=limits["rpm"],
                tpm=limits["tpm"],
                max_concurrency=limits["max_concurrency"],
                budget_tokens=limits["budget_tokens"],
                expires_at=expires_at,
                source="api",
            )
        )
        await self.refresh_keys()
        return created

    async def revoke_key(self, ref: str) -> KeyRecord:
        """Revoke a key; refused from the moment this returns. Raises NotFound."""
        try:
            record = await self._in_store(lambda store: store.revoke_key(ref))
        except KeyNotFound as error:
            raise NotFound(error.message) from None
        self.limiter.forget(record.id)
        self._restored.pop(record.id, None)
        await self.refresh_keys()
        return record

    async def _in_store(self, action: Callable[[Store], T]) -> T:
        """Run a store action in a worker thread; a StoreError becomes a 503 for the admin API."""
        try:
            return await anyio.to_thread.run_sync(lambda: action(self._store_now()))
        except KeyNotFound:
            raise
        except ValueError as error:
            raise BadRequest(str(error)) from None
        except StoreError as error:
            if "ambiguous" in error.message:
                raise HttpError(error.message, status=409, code="ambiguous_key") from None
            raise HttpError(f"the key store cannot be used: {error.message}", status=503) from error

    def _store_now(self) -> Store:
        if self._store is None:
            self._store = Store.open(self.db_path, busy_timeout_seconds=STORE_BUSY_TIMEOUT_SECONDS)
        return self._store

    async def _refresh(self, *, force: bool = False) -> None:
        if self.settings.mode is AuthMode.OFF and not force:
            return  # nothing reads the key cache with auth off: no store reads every half second
        try:
            store = await anyio.to_thread.run_sync(self._store_now)
            counter = await anyio.to_thread.run_sync(store.change_counter)
            if counter == self._counter and not force:
                return
            self.key_reads += 1
            keys = await anyio.to_thread.run_sync(store.all_active_keys)
        except (GatewaydError, OSError) as error:
            if not self._store_unreadable:
                log.warning(
                    "cannot read keys from %s (%s): the keys already known keep working", self.db_path, error
                )
            self._store_unreadable = True
            self._counter = None
            return
        if self._store_unreadable:
            log.info("keys: %s can be read again", self.db_path)
            self._store_unreadable = False
        gone = {record.id for record in self._keys.values()} - {record.id for record in keys.values()}
        for key_id in gone:
            self.limiter.forget(key_id)
            self._restored.pop(key_id, None)
        self._keys, self._counter = keys, counter

    # -- requests -----------------------------------------------------------------------------------

    def authenticate(
        self,
        headers: Iterable[tuple[bytes, bytes]],
        read_key: Callable[[Iterable[tuple[bytes, bytes]]], str | None] = bearer,
    ) -> KeyRecord | None:
        """The caller's key, read from ``headers`` by ``read_key`` (the endpoint's dialect says where its
        clients send it); None when auth is off. Raises Unauthorized (no key, unknown, revoked or
        expired: the message does not say which, nor echo the key)."""
        if self.settings.mode is AuthMode.OFF:
            return None
        token = read_key(headers)
        if token is None:
            raise Unauthorized("this gateway requires an API key: send it as 'Authorization: Bearer <key>'")
        digest = hash_key(token)
        record = self._keys.get(digest)
        if record is None or not record.active:
            self.metrics.auth_failures.inc(())
            raise Unauthorized("invalid API key (unknown, revoked or expired)")
        return record

    def key_by_id(self, key_id: str) -> KeyRecord | None:
        """The active key with this id, from the cache (a job runs under the key that submitted it)."""
        for record in self._keys.values():
            if record.id == key_id and record.active:
                return record
        return None

    def is_admin(self, headers: Iterable[tuple[bytes, bytes]]) -> bool:
        """The request carries the admin token (which also reads what keys may read)."""
        token = self.settings.admin_token
        given = bearer(headers) if token is not None else None
        return given is not None and token is not None and hmac.compare_digest(given.encode(), token.encode())

    def require_admin(self, headers: Iterable[tuple[bytes, bytes]]) -> None:
        """Admin endpoints: the admin token when one is set; with none, open only while auth is off (and
        gatewayd is on loopback). Raises AdminRequired."""
        token = self.settings.admin_token
        if token is None:
            if self.settings.mode is AuthMode.OFF:
                return
            raise AdminRequired("the admin API is disabled: set auth.admin_token to use it")
        given = bearer(headers)
        if given is None or not hmac.compare_digest(given.encode(), token.encode()):
            raise AdminRequired("the admin API needs the admin token: 'Authorization: Bearer <admin token>'")

    async def admit(self, key: KeyRecord | None, model: str, body_chars: int) -> Grant | None:
        """Apply the key's limits (raises ModelNotAllowed, BudgetExceeded, RateLimited). None without a
        key."""
        if key is None:
            return None
        restored = self._restored.get(key.id)
        if restored is None:
            restored = self._restored[key.id] = anyio.Event()
            try:
                if not await self._restore(key.id):
                    del self._restored[key.id]  # the next request tries again
            finally:
                restored.set()
        else:
            await restored.wait()  # every request of a key waits for its first one's restore
        policy = KeyPolicy(
            key_id=key.id,
            models=key.models,
            rpm=key.rpm,
            tpm=key.tpm,
            max_concurrency=key.max_concurrency,
            budget_tokens=key.budget_tokens,
            name=key.name,
        )
        try:
            return self.limiter.admit(
                policy, model, time.time(), estimated_tokens=estimate_tokens(body_chars)
            )
        except GatewaydError as error:
            self.metrics.limit_rejections.inc((key.name, getattr(error, "code", None) or "limit"))
            raise

    def finish(
        self,
        key: KeyRecord | None,
        grant: Grant | None,
        *,
        model: str,
        backend: str | None,
        prompt_tokens: int,
        completion_tokens: int,
        latency_seconds: float,
        ttft_seconds: float | None,
        status: int,
        attempts: int,
    ) -> None:
        """Account for a finished request: limit windows, the usage record, per-key metrics. Never raises,
        never blocks (the usage record is written later, in batches)."""
        now = time.time()
        # a backend's numbers are not trusted to be sane: bounded, so no counter or column can overflow
        prompt_tokens = min(max(prompt_tokens, 0), MAX_REPORTED_TOKENS)
        completion_tokens = min(max(completion_tokens, 0), MAX_REPORTED_TOKENS)
        tokens = prompt_tokens + completion_tokens
        if grant is not None:
            # counted from what the backend reported; estimated when it reported nothing
            self.limiter.finish(grant, tokens if tokens else grant.estimated_tokens, now)
        self.usage.add(
            UsageRecord(
                time=now,
                key_id=None if key is None else key.id,
                model=model,
                backend=backend,
                prompt_tokens=prompt_tokens,
                completion_tokens=completion_tokens,
                latency_seconds=latency_seconds,
                ttft_seconds=ttft_seconds,
                status=status,
                attempts=attempts,
            )
        )
        if key is not None:
            self.metrics.key_requests.inc((key.name, str(status)))
            if tokens:
                self.metrics.key_tokens.inc((key.name,), tokens)

    async def _restore(self, key_id: str) -> bool:
        """After a restart, this key's recent requests and total use from the usage record. False when the
        record could not be read (the limits then run from what this process has seen)."""
        since = time.time() - RATE_WINDOW_SECONDS
        try:
            store = await anyio.to_thread.run_sync(self._store_now)
            recent = await anyio.to_thread.run_sync(store.recent_usage, since)
            used = await anyio.to_thread.run_sync(store.tokens_used, key_id)
        except (GatewaydError, OSError) as error:
            log.warning("cannot restore the limits of key %s from the usage record: %s", key_id, error)
            return False
        events = [(at, tokens) for owner, at, tokens in recent if owner == key_id]
        # the usage buffer holds nothing of this key yet: its first request in this process is being admitted
        self.limiter.restore(key_id, events, used)
        return True

    def rate_headers(self, grant: Grant | None) -> Mapping[str, str]:
        return {} if grant is None else grant.headers
