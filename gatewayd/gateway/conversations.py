"""The conversations of ``/v1/responses`` kept for ``previous_response_id``.

A response asked with ``store`` not false is kept (its request's input items, then its output items) in the
store's ``responses`` table for ``responses.retention_seconds``, at most ``responses.max_stored`` of them. A
later request naming it gets that conversation put before its own ``input``, as OpenAI's API does; an id
that is unknown, expired, or was answered with ``store: false`` is a 404 in OpenAI's shape.

When the store cannot be used (no state directory, a locked or unreadable file), conversations are kept in
memory, with the same bounds, for the life of the process, and that is logged once.
"""

from __future__ import annotations

import collections
import json
import logging
import threading
import time
from pathlib import Path
from typing import Any

import anyio.to_thread

from gatewayd.config import ResponsesSettings
from gatewayd.errors import StoreError
from gatewayd.store.db import Store

log = logging.getLogger("gatewayd.responses")

#: how long a save may wait for another writer of the store file
STORE_BUSY_TIMEOUT_SECONDS = 5.0


class Conversations:
    """Process-wide (kept across reloads); the bounds come from each generation's settings."""

    def __init__(self, db_path: Path) -> None:
        self._db_path = db_path
        self._store: Store | None = None
        self._failed = False
        self._memory: collections.OrderedDict[str, tuple[float, str]] = collections.OrderedDict()
        #: loads and saves run in worker threads: one at a time touches the store handle and the memory
        self._lock = threading.Lock()

    def _open(self) -> Store | None:
        if self._store is None and not self._failed:
            try:
                self._store = Store.open(self._db_path, busy_timeout_seconds=STORE_BUSY_TIMEOUT_SECONDS)
            except StoreError as error:
                self._failed = True
                log.warning("responses are kept in memory only: %s", error.message)
        return self._store

    async def load(self, response_id: str, settings: ResponsesSettings) -> list[Any] | None:
        """The stored conversation of ``response_id`` (a list of items), None when there is none."""
        newer_than = time.time() - settings.retention_seconds
        text = await anyio.to_thread.run_sync(self._load, response_id, newer_than)
        if text is None:
            return None
        items = json.loads(text)
        return items if isinstance(items, list) else None

    def _load(self, response_id: str, newer_than: float) -> str | None:
        with self._lock:
            return self._load_locked(response_id, newer_than)

    def _load_locked(self, response_id: str, newer_than: float) -> str | None:
        store = self._open()
        if store is not None:
            try:
                return store.load_response(response_id, newer_than=newer_than)
            except StoreError as error:
                log.warning("cannot read stored response %s: %s", response_id, error.message)
        kept = self._memory.get(response_id)
        return kept[1] if kept is not None and kept[0] >= newer_than else None

    async def save(self, response_id: str, items: list[Any], settings: ResponsesSettings) -> None:
        """Keep ``items`` as the conversation of ``response_id`` (never raises for a store fault: the
        response itself was served; a lost conversation is logged)."""
        text = json.dumps(items, separators=(",", ":"), ensure_ascii=False)
        await anyio.to_thread.run_sync(self._save, response_id, text, settings)

    def _save(self, response_id: str, text: str, settings: ResponsesSettings) -> None:
        with self._lock:
            self._save_locked(response_id, text, settings)

    def _save_locked(self, response_id: str, text: str, settings: ResponsesSettings) -> None:
        now = time.time()
        store = self._open()
        if store is not None:
            try:
                store.save_response(response_id, now, text, keep=settings.max_stored)
                store.prune_responses(now - settings.retention_seconds)
                return
            except StoreError as error:
                log.warning("cannot store response %s: %s", response_id, error.message)
        self._memory[response_id] = (now, text)
        while len(self._memory) > settings.max_stored:
            self._memory.popitem(last=False)
        while self._memory:
            oldest = next(iter(self._memory.values()))
            if oldest[0] >= now - settings.retention_seconds:
                break
            self._memory.popitem(last=False)

    def close(self) -> None:
        with self._lock:
            if self._store is not None:
                self._store.close()
                self._store = None
