"""The heartbeat's roster with an injected clock: this instance always listed with its live load, the
others within the window only, a renamed instance's old row dropped, a failing store survived."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import replace
from pathlib import Path

import anyio
import pytest

from gatewayd.config import Config, FleetSettings, ServerSettings
from gatewayd.errors import StoreError
from gatewayd.gateway.fleet.heartbeat import Heartbeat
from gatewayd.store.instances import InstanceBeat, SqliteInstanceStore

pytestmark = pytest.mark.anyio


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def config(name: str) -> Config:
    return Config(server=ServerSettings(instance_name=name), fleet=FleetSettings(seen_window_seconds=30.0))


async def test_the_roster_lists_this_instance_and_peers_within_the_window(tmp_path: Path) -> None:
    clock = Clock()
    db = tmp_path / "gatewayd.db"
    heartbeat = Heartbeat(db, clock=clock)
    heartbeat.configure(config("a"))
    load: Mapping[str, object] = {"in_flight": 2, "queued": 1, "streams": 1, "backends_up": 1}
    heartbeat.add_load(lambda: load)
    heartbeat.add_load(lambda: {"in_flight": 1})  # a reload's old generation, still draining
    peers = SqliteInstanceStore(db, busy_timeout_seconds=5)
    try:
        peers.beat(InstanceBeat("b", "9.9", 7, 1.0, clock.now - 5, {"in_flight": 4}))
        peers.beat(InstanceBeat("gone", "9.9", 8, 1.0, clock.now - 31, {}))
        await heartbeat._beat()
        rows = {row["name"]: row for row in heartbeat.roster()}
        assert set(rows) == {"a", "b"}
        assert rows["a"]["load"] == {"in_flight": 3, "queued": 1, "streams": 1}
        assert rows["a"]["self"] is True
        assert rows["b"] == {
            "name": "b",
            "version": "9.9",
            "load": {"in_flight": 4},
            "last_heartbeat": clock.now - 5,
            "age_seconds": 5.0,
            "self": False,
        }
        assert [row.name for row in peers.seen_since(0.0)] == ["a", "b", "gone"]  # a's row is in the store

        clock.now += 26  # b's last beat is now 31 s old: out of the window, even without a new read
        assert [row["name"] for row in heartbeat.roster()] == ["a"]

        heartbeat.configure(config("a2"))  # a reload renames the instance: the old row goes
        await heartbeat._beat()
        assert "a" not in {row.name for row in peers.seen_since(0.0)}
        heartbeat._leave()
        assert "a2" not in {row.name for row in peers.seen_since(0.0)}
    finally:
        peers.close()


async def test_a_store_that_fails_keeps_the_instance_listed(tmp_path: Path) -> None:
    def broken() -> SqliteInstanceStore:
        raise StoreError("the store is down")

    heartbeat = Heartbeat(tmp_path / "gatewayd.db", open_store=broken)
    heartbeat.configure(config("a"))
    await heartbeat._beat()  # logged, not raised
    assert heartbeat.beats == 0
    assert [row["name"] for row in heartbeat.roster()] == ["a"]


async def test_run_beats_at_its_interval_and_leaves_on_cancel(tmp_path: Path) -> None:
    db = tmp_path / "gatewayd.db"
    heartbeat = Heartbeat(db)
    heartbeat.configure(replace(config("a"), fleet=FleetSettings(heartbeat_interval_seconds=0.05)))
    async with anyio.create_task_group() as tg:
        await tg.start(heartbeat.run)
        with anyio.fail_after(30):
            while heartbeat.beats < 3:
                await anyio.sleep(0.01)
        tg.cancel_scope.cancel()
    peers = SqliteInstanceStore(db, busy_timeout_seconds=5)
    try:
        assert peers.seen_since(0.0) == []
    finally:
        peers.close()
