"""What the engine seam guarantees beyond the shared store tests: migrations safe when several processes
start at once, a newer schema refused with both versions named, and credentials never shown."""

from __future__ import annotations

import threading
from pathlib import Path

import pytest

from gatewayd.config import StoreSettings
from gatewayd.errors import StoreError
from gatewayd.store import Store
from gatewayd.store.db import MIGRATIONS, SCHEMA_VERSION
from gatewayd.store.engine import POSTGRESQL, SQLITE
from gatewayd.store.target import StoreTarget, redact_url, resolve_target

STARTERS = 6


def test_both_engines_know_the_same_schema_versions() -> None:
    assert MIGRATIONS[SQLITE].version == MIGRATIONS[POSTGRESQL].version == SCHEMA_VERSION


def test_many_instances_migrating_at_once_all_start(store_target: StoreTarget) -> None:
    errors: list[BaseException] = []
    stores: list[Store] = []
    barrier = threading.Barrier(STARTERS)

    def start() -> None:
        barrier.wait()
        try:
            stores.append(Store.connect(store_target, busy_timeout_seconds=10))
        except BaseException as error:
            errors.append(error)

    threads = [threading.Thread(target=start) for _ in range(STARTERS)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert errors == []
    record, _ = stores[0].create_key(name="after")
    assert all(store.list_keys() == [record] for store in stores)
    for store in stores:
        store.close()


def test_a_newer_postgres_schema_is_refused_naming_both_versions(postgres_url: str, tmp_path: Path) -> None:
    target = resolve_target(StoreSettings(url=postgres_url), tmp_path)
    store = Store.connect(target)
    with store.engine.session("test") as session:
        session.execute("UPDATE gatewayd_schema SET version = 99 WHERE component = 'store'")
    store.close()
    with pytest.raises(StoreError, match=f"schema 99; this one knows {SCHEMA_VERSION}"):
        Store.connect(target)


def test_a_password_is_taken_from_the_settings_and_never_shown(postgres_url: str, tmp_path: Path) -> None:
    target = resolve_target(StoreSettings(url=postgres_url, password="s3cret-pass"), tmp_path)
    assert "s3cret" not in repr(target)
    store = Store.connect(target)  # trust authentication ignores it; it must still reach libpq intact
    store.close()


@pytest.mark.parametrize(
    ("url", "shown"),
    [
        ("postgresql://gw:hunter2@db.example:5432/gw", "postgresql://gw:***@db.example:5432/gw"),
        (
            "postgresql://gw@db/gw?password=hunter2&sslmode=require",
            "postgresql://gw@db/gw?password=***&sslmode=require",
        ),
        ("postgresql:///gw?service=gatewayd", "postgresql:///gw?service=gatewayd"),
    ],
)
def test_store_urls_are_shown_without_credentials(url: str, shown: str, tmp_path: Path) -> None:
    assert redact_url(url) == shown
    assert resolve_target(StoreSettings(url=url), tmp_path).display == shown


def test_an_unreachable_database_fails_within_the_timeout(tmp_path: Path) -> None:
    from tests.support.process import free_port

    url = f"postgresql://nobody@127.0.0.1:{free_port()}/none"
    target = resolve_target(StoreSettings(url=url, connect_timeout_seconds=0.5), tmp_path)
    with pytest.raises(StoreError, match="cannot be reached"):
        Store.connect(target)


def test_a_url_that_is_not_postgres_says_what_is_expected(tmp_path: Path) -> None:
    with pytest.raises(StoreError, match=r"postgresql://"):
        resolve_target(StoreSettings(url="mysql://u:pw@db/x"), tmp_path)
