"""Two real gatewayd processes on one SQLite store (one state directory, two ports): each writes its
heartbeat, /status and ``gatewayd status`` list both with their version and load, and an instance that
stops leaves the fleet at once (its row is deleted), not after the window."""

from __future__ import annotations

import json
import socket
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from gatewayd import __version__
from tests.support.fake_backend import spawned_fake_backend
from tests.support.process import GatewaydProcess, wait_for
from tests.support.process import gatewayd_cli as cli

pytestmark = pytest.mark.slow

MODEL = "m"


@pytest.fixture
def upstream() -> Iterator[str]:
    with spawned_fake_backend(models=(MODEL,)) as (_, url):
        yield url


def write_config(path: Path, upstream: str) -> Path:
    path.write_text(
        "fleet:\n  heartbeat_interval_seconds: 0.2\n"
        f"backends:\n  - id: b\n    url: {upstream}\n    models: [{MODEL}]\n"
    )
    return path


def fleet_of(gw: GatewaydProcess) -> dict[str, dict[str, object]]:
    try:
        rows = gw.get("/status").json()["fleet"]
    except httpx.HTTPError:
        return {}
    return {row["name"]: row for row in rows}


def test_two_instances_on_one_store_see_each_other(tmp_path: Path, upstream: str) -> None:
    config = write_config(tmp_path / "config.yaml", upstream)
    state = tmp_path / "state"
    with (
        GatewaydProcess.gatewayd(tmp_path, config, state_dir=state, name="a") as a,
        GatewaydProcess.gatewayd(tmp_path, config, state_dir=state, name="b") as b,
    ):
        a.wait_ready()
        b.wait_ready()
        host = socket.gethostname()
        names = {f"{host}:{a.port}", f"{host}:{b.port}"}
        for gw in (a, b):
            seen = wait_for(
                lambda gw=gw: (fleet := fleet_of(gw)) and set(fleet) == names and fleet,
                timeout=20,
                what=f"the fleet seen from port {gw.port} to hold both instances",
            )
            own = seen[f"{host}:{gw.port}"]
            other = seen[(names - {f"{host}:{gw.port}"}).pop()]
            assert own["self"] is True
            assert other["self"] is False
            assert other["version"] == __version__
            assert set(other["load"]) == {"in_flight", "queued", "streams"}  # type: ignore[arg-type]
            assert isinstance(other["last_heartbeat"], float)

        report = cli("status", "--port", str(a.port), "--json", state_dir=state)
        assert report.returncode == 0, report.stderr
        listed = json.loads(report.stdout)
        assert listed["name"] == f"{host}:{a.port}"
        assert {row["name"] for row in listed["fleet"]} == names
        table = cli("status", "--port", str(a.port), state_dir=state)
        assert "2 instance(s) seen" in table.stdout, table.stdout
        assert f"{host}:{b.port}" in table.stdout

        assert b.stop() == 0
        wait_for(
            lambda: set(fleet_of(a)) == {f"{host}:{a.port}"},
            timeout=20,
            what="the stopped instance to leave the fleet",
        )


def test_an_instance_named_in_its_config_is_listed_by_that_name(tmp_path: Path, upstream: str) -> None:
    config = write_config(tmp_path / "config.yaml", upstream)
    named = tmp_path / "named.yaml"
    named.write_text(config.read_text() + "server:\n  instance_name: gw-west\n")
    state = tmp_path / "state"
    with (
        GatewaydProcess.gatewayd(tmp_path, config, state_dir=state, name="a") as a,
        GatewaydProcess.gatewayd(tmp_path, named, state_dir=state, name="b") as b,
    ):
        a.wait_ready()
        b.wait_ready()
        wait_for(lambda: "gw-west" in fleet_of(a), timeout=20, what="gw-west in the fleet seen by the other")
        assert b.get("/healthz").headers["X-Gatewayd-Instance"] == "gw-west"
