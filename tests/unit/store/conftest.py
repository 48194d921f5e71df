"""Every store test that is not about the SQLite file itself runs on both engines: ``open_store()`` opens
a new connection to one store, the SQLite file of the test or a fresh PostgreSQL database (see
tests/support/postgres.py for when that one is skipped)."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from gatewayd.config import StoreSettings
from gatewayd.store import Store
from gatewayd.store.target import StoreTarget, resolve_target

StoreOpener = Callable[[], Store]


@pytest.fixture(params=["sqlite", "postgresql"])
def store_target(request: pytest.FixtureRequest, tmp_path: Path) -> StoreTarget:
    if request.param == "sqlite":
        return StoreTarget.sqlite(tmp_path / "state" / "gatewayd.db")
    url: str = request.getfixturevalue("postgres_url")
    return resolve_target(StoreSettings(url=url), tmp_path)


@pytest.fixture
def open_store(store_target: StoreTarget) -> Iterator[StoreOpener]:
    opened: list[Store] = []

    def open_one() -> Store:
        store = Store.connect(store_target)
        opened.append(store)
        return store

    yield open_one
    for store in opened:
        store.close()
