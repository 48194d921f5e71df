"""``gatewayd run``, ``restart``, ``stop`` and ``status`` as a user runs them, against real instances."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tests.support.process import GatewaydProcess, free_port, gatewayd_cli, process_alive

pytestmark = pytest.mark.slow


def test_every_command_says_clearly_when_nothing_runs(tmp_path: Path) -> None:
    for command in (["status"], ["status", "--json"], ["stop"], ["restart"], ["restart", "--port", "9"]):
        result = gatewayd_cli(*command, state_dir=tmp_path / "state")
        assert result.returncode == 3, (command, result)
        assert "not running" in result.stderr
        assert "gatewayd run" in result.stderr


def test_the_real_gatewayd_run_reports_status_reloads_and_stops(tmp_path: Path) -> None:
    config = tmp_path / "config.yaml"
    config.write_text("discovery:\n  enabled: false\n")
    with GatewaydProcess.gatewayd(tmp_path, config) as gw:
        gw.wait_ready()
        status = gatewayd_cli("status", "--json", state_dir=gw.state_dir)
        assert status.returncode == 0, status
        report = json.loads(status.stdout)
        assert report["pid"] == gw.pid
        assert report["live"] is True
        assert report["generation"] == 1
        assert report["listen"] == f"127.0.0.1:{gw.port}"
        assert report["config_path"] == str(config)
        assert report["last_reload"] is None
        assert report["backends_total"] == 0
        assert report["standby"] is None  # restart.warm_standby is off by default

        restart = gatewayd_cli("restart", state_dir=gw.state_dir)
        assert restart.returncode == 0, restart
        assert "reloaded" in restart.stdout
        table = gatewayd_cli("status", state_dir=gw.state_dir)
        assert table.returncode == 0, table
        assert str(gw.pid) in table.stdout
        assert "ok at" in table.stdout  # the last reload
        assert json.loads(gatewayd_cli("status", "--json", state_dir=gw.state_dir).stdout)["generation"] == 2

        stop = gatewayd_cli("stop", state_dir=gw.state_dir)
        assert stop.returncode == 0, stop
        assert f"stopped gatewayd (pid {gw.pid}" in stop.stdout
        assert not process_alive(gw.pid)
        assert gw.wait_exit() == 0


def test_status_degrades_to_the_lock_record_when_the_instance_does_not_answer_status(tmp_path: Path) -> None:
    with GatewaydProcess.test_app(tmp_path) as gw:
        gw.wait_ready()
        gw.signal(19)  # SIGSTOP: alive, holds the lock, answers nothing
        try:
            result = gatewayd_cli("status", "--json", state_dir=gw.state_dir)
        finally:
            gw.signal(18)  # SIGCONT
        assert result.returncode == 0, result
        report = json.loads(result.stdout)
        assert report["live"] is False
        assert report["pid"] == gw.pid
        assert report["in_flight"] is None
        assert gw.stop() == 0


def test_with_several_instances_port_picks_one(tmp_path: Path) -> None:
    state = tmp_path / "state"
    with (
        GatewaydProcess.test_app(tmp_path, marker="a", state_dir=state, name="a") as a,
        GatewaydProcess.test_app(tmp_path, marker="b", state_dir=state, name="b") as b,
    ):
        a.wait_ready()
        b.wait_ready()
        ambiguous = gatewayd_cli("status", state_dir=state)
        assert ambiguous.returncode == 1
        assert "several gatewayd instances" in ambiguous.stderr
        assert "--port" in ambiguous.stderr
        picked = json.loads(gatewayd_cli("status", "--json", "--port", str(b.port), state_dir=state).stdout)
        assert picked["pid"] == b.pid
        assert gatewayd_cli("stop", "--port", str(a.port), state_dir=state).returncode == 0
        assert a.wait_exit() == 0
        assert b.get("/healthz").status_code == 200
        # one left: no --port needed
        assert json.loads(gatewayd_cli("status", "--json", state_dir=state).stdout)["pid"] == b.pid
        assert b.stop() == 0


def test_under_systemd_a_second_run_exits_78(tmp_path: Path) -> None:
    config = tmp_path / "config.yaml"
    config.write_text("discovery:\n  enabled: false\n")
    port = free_port()
    with GatewaydProcess.gatewayd(tmp_path, config, port=port, name="first") as first:
        first.wait_ready()
        with GatewaydProcess.gatewayd(
            tmp_path, config, port=port, env={"GATEWAYD_SUPERVISOR": "systemd"}, name="second"
        ) as second:
            assert second.wait_exit(20) == 78
            assert f"pid {first.pid}" in second.logs()
        with GatewaydProcess.gatewayd(tmp_path, config, port=port, name="third") as third:
            assert third.wait_exit(20) == 1
        assert first.stop() == 0


def test_an_unusable_state_directory_is_a_clear_error_not_a_traceback(tmp_path: Path) -> None:
    blocker = tmp_path / "a-file"
    blocker.write_text("not a directory")
    result = gatewayd_cli("run", "--port", str(free_port()), state_dir=blocker / "state")
    assert result.returncode == 1
    assert f"cannot use the state directory {blocker / 'state'}" in result.stderr
    assert "--state-dir" in result.stderr
    assert "Traceback" not in result.stderr


def test_run_refuses_a_config_file_that_holds_no_settings(tmp_path: Path) -> None:
    empty = tmp_path / "config.yaml"
    empty.write_text("# auth:\n#   mode: keys\n")
    result = gatewayd_cli("run", "--config", str(empty), "--port", str(free_port()), state_dir=tmp_path / "s")
    assert result.returncode == 1
    assert f"{empty}: the file holds no settings" in result.stderr
    assert "Traceback" not in result.stderr


def test_run_with_url_credentials_and_an_api_key_names_the_backend_not_a_task_group(tmp_path: Path) -> None:
    config = tmp_path / "config.yaml"
    config.write_text("backends:\n  - id: cloud\n    url: http://me:pw@127.0.0.1:9\n    api_key: sk-x\n")
    port = str(free_port())
    result = gatewayd_cli("run", "--config", str(config), "--port", port, state_dir=tmp_path / "s")
    assert result.returncode == 1
    assert "backend 'cloud'" in result.stderr
    assert "TaskGroup" not in result.stderr
    assert "Traceback" not in result.stderr
