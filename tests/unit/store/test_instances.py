"""The fleet's roster in the SQLite store: heartbeat rows written, read within a window, left by their
own process only, and refused from a newer schema."""

from __future__ import annotations

import sqlite3
from pathlib import Path

import pytest

from gatewayd.errors import StoreError
from gatewayd.store.instances import STALE_ROW_SECONDS, InstanceBeat, SqliteInstanceStore


def beat(name: str, at: float, *, started: float = 1.0, in_flight: int = 0) -> InstanceBeat:
    return InstanceBeat(name, "1.0", 42, started, at, {"in_flight": in_flight, "queued": 0, "streams": 0})


@pytest.fixture
def store(tmp_path: Path) -> SqliteInstanceStore:
    opened = SqliteInstanceStore(tmp_path / "gatewayd.db", busy_timeout_seconds=5)
    yield opened  # type: ignore[misc]
    opened.close()


def test_rows_are_read_within_the_window_with_their_load(store: SqliteInstanceStore) -> None:
    store.beat(beat("a", 100.0, in_flight=3))
    store.beat(beat("b", 70.0))
    assert [row.name for row in store.seen_since(80.0)] == ["a"]
    (a,) = store.seen_since(80.0)
    assert a.load["in_flight"] == 3
    store.beat(beat("b", 101.0))  # b beats again: one row per name, the latest
    assert [(row.name, row.heartbeat_at) for row in store.seen_since(80.0)] == [("a", 100.0), ("b", 101.0)]


def test_an_instance_leaves_only_its_own_row(store: SqliteInstanceStore) -> None:
    store.beat(beat("a", 100.0, started=1.0))
    store.beat(beat("a", 101.0, started=2.0))  # a newer process of the same name took the row over
    store.leave("a", 1.0)  # the old one stops late: the new one's row stays
    assert [row.started_at for row in store.seen_since(0.0)] == [2.0]
    store.leave("a", 2.0)
    assert store.seen_since(0.0) == []


def test_rows_stale_for_a_day_are_deleted(store: SqliteInstanceStore) -> None:
    store.beat(beat("killed", 1000.0))
    store.beat(beat("alive", 1000.0 + STALE_ROW_SECONDS + 1))
    assert [row.name for row in store.seen_since(0.0)] == ["alive"]


def test_two_instances_share_one_file(tmp_path: Path) -> None:
    one = SqliteInstanceStore(tmp_path / "gatewayd.db", busy_timeout_seconds=5)
    two = SqliteInstanceStore(tmp_path / "gatewayd.db", busy_timeout_seconds=5)
    try:
        one.beat(beat("a", 10.0))
        two.beat(beat("b", 10.0))
        assert [row.name for row in one.seen_since(0.0)] == ["a", "b"]
    finally:
        one.close()
        two.close()


def test_a_newer_fleet_schema_is_refused_naming_both_versions(tmp_path: Path) -> None:
    SqliteInstanceStore(tmp_path / "gatewayd.db", busy_timeout_seconds=5).close()
    with sqlite3.connect(tmp_path / "gatewayd.db") as conn:
        conn.execute("UPDATE meta SET value = 9 WHERE name = 'fleet_schema'")
    with pytest.raises(StoreError, match=r"fleet schema 9; this one knows 1"):
        SqliteInstanceStore(tmp_path / "gatewayd.db", busy_timeout_seconds=5)
