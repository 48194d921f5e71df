"""The warm standby (``restart.warm_standby``) of a real run loop: a respawn hands over to it with nothing
refused, it is replaced once the new process serves, a dead one means a cold child, an unhealthy one an
in-process restart, and a stop leaves none behind."""

from __future__ import annotations

import json
import signal
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import httpx
import pytest

from gatewayd.supervisor.sentinel import ReloadOutcome, last_outcome
from tests.support.fake_backend import running_fake_backend
from tests.support.load import HttpLoad
from tests.support.process import GatewaydProcess, gatewayd_cli, process_alive, wait_for

pytestmark = pytest.mark.slow

#: a generous ready bound (a loaded CI machine may take seconds to start a process), a short handoff
STANDBY = (
    "restart:\n  mode: respawn\n  warm_standby: true\n  respawn_ready_timeout_seconds: 30\n"
    "  handoff_close_seconds: 0.5\n"
)


def standby_of(gw: GatewaydProcess) -> Mapping[str, Any] | None:
    standby = gw.get("/status").json()["instance"]["standby"]
    assert standby is None or isinstance(standby, dict)
    return standby


def waiting_standby(gw: GatewaydProcess, *, other_than: int | None = None) -> Mapping[str, Any]:
    """The standby /status reports once it waits (and, with ``other_than``, is a new one)."""
    found: dict[str, Any] = {}

    def waiting() -> bool:
        standby = standby_of(gw)
        if standby is None or standby["state"] != "waiting" or standby["pid"] == other_than:
            return False
        found.update(standby)
        return True

    wait_for(waiting, timeout=60, what="a warm standby waiting")
    return found


def serving_pid(gw: GatewaydProcess) -> int:
    return int(gw.get("/status").json()["instance"]["pid"])


def respawn(gw: GatewaydProcess, holder: int) -> ReloadOutcome:
    """SIGUSR1 to ``holder`` (restart.mode: respawn); the outcome once another pid serves."""
    gw.signal(signal.SIGUSR1, pid=holder)
    wait_for(
        lambda: (r := gw.record()) is not None and r.pid != holder and serving_pid(gw) == r.pid,
        timeout=60,
        what="the respawned process to serve",
    )
    wait_for(lambda: not process_alive(holder), timeout=30, what=f"the old pid {holder} to exit")
    outcome = last_outcome(gw.state_dir, gw.port)
    assert outcome is not None
    assert outcome.old_pid == holder
    return outcome


def test_respawns_hand_over_to_the_standby_under_load_and_each_new_process_starts_another(
    tmp_path: Path,
) -> None:
    with GatewaydProcess.test_app(tmp_path, marker="v1", extra_config=STANDBY) as gw:
        gw.wait_ready()
        holder = gw.pid
        standby = waiting_standby(gw)
        assert standby["rss_bytes"] > 1_000_000  # its memory is shown
        with HttpLoad(gw.url("/config"), keepalive_clients=4, fresh_clients=4) as load:
            load.wait_for_requests(50)
            for _ in range(2):
                outcome = respawn(gw, holder)
                assert (outcome.outcome, outcome.mode) == ("ok", "respawn")
                assert "via the warm standby" in outcome.message
                assert outcome.new_pid == standby["pid"]  # the standby took over: no cold start
                holder = outcome.new_pid
                standby = waiting_standby(gw, other_than=holder)  # and the new process has its own
                load.wait_for_requests(50)
        load.result.assert_clean(minimum=150)
        record = gw.record()
        assert record is not None
        assert (record.restarts, record.generation) == (2, 3)
        gw.stop()


def test_a_dead_standby_means_a_cold_respawn_and_is_replaced(tmp_path: Path) -> None:
    with GatewaydProcess.test_app(tmp_path, marker="v1", extra_config=STANDBY) as gw:
        gw.wait_ready()
        dead = waiting_standby(gw)["pid"]
        gw.signal(signal.SIGKILL, pid=dead)
        # killed but unreaped (the parent reaps it when it looks): /status then reports it exited
        wait_for(lambda: (s := standby_of(gw)) is not None and s["state"] == "exited", timeout=30,
                 what="the standby reported as exited")  # fmt: skip
        with HttpLoad(gw.url("/config"), keepalive_clients=2, fresh_clients=2) as load:
            load.wait_for_requests(20)
            outcome = respawn(gw, gw.pid)
            load.wait_for_requests(20)
        load.result.assert_clean(minimum=40)
        assert (outcome.outcome, outcome.mode) == ("ok", "respawn")
        assert f"respawned cold (warm standby pid {dead} unavailable)" in outcome.message
        assert outcome.new_pid != dead
        assert "had exited" in gw.logs()
        assert waiting_standby(gw)["pid"] not in (dead, outcome.new_pid)
        gw.stop()


def test_a_standby_that_fails_after_the_handoff_falls_back_to_an_in_process_restart(tmp_path: Path) -> None:
    # GATEWAYD_TEST_CHILD=exit: a process that was handed over exits with code 3 instead of serving
    with GatewaydProcess.test_app(
        tmp_path, marker="v1", extra_config=STANDBY, env={"GATEWAYD_TEST_CHILD": "exit"}
    ) as gw:
        gw.wait_ready()
        first = waiting_standby(gw)["pid"]
        with HttpLoad(gw.url("/config"), keepalive_clients=2, fresh_clients=2) as load:
            gw.signal(signal.SIGUSR1)
            wait_for(lambda: gw.get("/config").json()["generation"] == 2, timeout=60, what="the fallback")
            load.wait_for_requests(20)
        load.result.assert_clean(minimum=20)
        outcome = last_outcome(gw.state_dir, gw.port)
        assert outcome is not None
        assert outcome.outcome == "fallback"
        assert f"child pid {first} exited with code 3" in outcome.message
        assert serving_pid(gw) == gw.pid
        assert not process_alive(first)
        assert waiting_standby(gw, other_than=first)["pid"] != gw.pid  # a new standby for the next respawn
        gw.stop()


def test_a_stop_or_a_config_without_warm_standby_leaves_no_standby(tmp_path: Path) -> None:
    with GatewaydProcess.test_app(tmp_path, marker="v1", extra_config=STANDBY) as gw:
        gw.wait_ready()
        first = waiting_standby(gw)["pid"]
        assert gw.config_path is not None
        gw.config_path.write_text(gw.config_path.read_text().replace("mode: respawn", "mode: in-process")
                                  .replace("warm_standby: true", "warm_standby: false"))  # fmt: skip
        gw.signal(signal.SIGUSR1)
        wait_for(lambda: gw.get("/config").json()["generation"] == 2, timeout=30, what="the reload")
        wait_for(lambda: not process_alive(first), timeout=30, what="the standby to be dismissed")
        assert standby_of(gw) is None
        gw.config_path.write_text(
            gw.config_path.read_text().replace("warm_standby: false", "warm_standby: true")
        )
        gw.signal(signal.SIGUSR1)
        second = waiting_standby(gw)["pid"]
        assert gw.stop() == 0
        wait_for(lambda: not process_alive(second), timeout=30, what="the standby to exit with the instance")


def test_the_real_gateway_respawns_through_its_standby_with_no_failed_request(tmp_path: Path) -> None:
    with running_fake_backend(models=("fake-model",)) as backend:
        config = tmp_path / "config.yaml"
        config.write_text(
            "discovery:\n  enabled: false\n" + STANDBY
            + f"backends:\n  - id: fake\n    url: {backend.url}\n    models: [fake-model]\n"
        )  # fmt: skip
        with GatewaydProcess.gatewayd(tmp_path, config) as gw:
            gw.wait_ready()
            standby = waiting_standby(gw)
            with HttpLoad(gw.url("/v1/models"), keepalive_clients=4, fresh_clients=4) as load:
                load.wait_for_requests(50)
                outcome = respawn(gw, gw.pid)
                load.wait_for_requests(50)
            load.result.assert_clean(minimum=100)
            assert "via the warm standby" in outcome.message
            assert outcome.new_pid == standby["pid"]
            chat = httpx.post(
                gw.url("/v1/chat/completions"),
                json={"model": "fake-model", "messages": [{"role": "user", "content": "hi"}]},
                timeout=30,
            )
            assert chat.status_code == 200, chat.text
            # `gatewayd status` shows the new process's standby and what it costs
            standby = waiting_standby(gw, other_than=outcome.new_pid)
            report = json.loads(gatewayd_cli("status", "--json", state_dir=gw.state_dir).stdout)
            assert report["standby"]["pid"] == standby["pid"]
            assert report["standby"]["rss_bytes"] > 1_000_000
            table = gatewayd_cli("status", state_dir=gw.state_dir)
            assert table.returncode == 0, table
            assert f"pid {standby['pid']}, waiting, " in table.stdout
            assert "MiB resident" in table.stdout
            gw.stop()
