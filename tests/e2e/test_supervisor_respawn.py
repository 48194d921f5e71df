"""Fresh-PID respawn of a real run loop: the child inherits the socket and the lock; unhealthy children are
killed and the reload falls back to in process."""

from __future__ import annotations

import signal
import subprocess
import sys
from pathlib import Path

import pytest

from gatewayd.supervisor.sentinel import last_outcome
from tests.support.load import HttpLoad
from tests.support.process import REPO_ROOT, GatewaydProcess, Stream, process_alive, wait_for
from tests.support.supervisor_apps import write_config

pytestmark = pytest.mark.slow

#: a generous ready bound (a loaded CI machine may take seconds to start a child), a short handoff
FAST_RESPAWN = "restart:\n  respawn_ready_timeout_seconds: 30\n  handoff_close_seconds: 0.5\n"
#: for children that are never ready
SHORT_READY = "restart:\n  respawn_ready_timeout_seconds: 2\n  handoff_close_seconds: 0.5\n"


def restart_cli(gw: GatewaydProcess, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [
            sys.executable,
            "-m",
            "gatewayd",
            "restart",
            *args,
            "--port",
            str(gw.port),
            "--state-dir",
            str(gw.state_dir),
        ],
        cwd=REPO_ROOT,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


def serving_pid(gw: GatewaydProcess) -> int:
    return int(gw.get("/config").json()["pid"])


def test_respawn_under_load_hands_over_to_a_new_pid_with_nothing_refused(tmp_path: Path) -> None:
    with GatewaydProcess.test_app(tmp_path, marker="v1", extra_config=FAST_RESPAWN) as gw:
        gw.wait_ready()
        old_pid = gw.pid
        with HttpLoad(gw.url("/config"), keepalive_clients=6, fresh_clients=6) as load:
            load.wait_for_requests(50)
            write_config(gw.config_path, marker="v2", port=gw.port, extra=FAST_RESPAWN)  # type: ignore[arg-type]
            result = restart_cli(gw, "--respawn")
            assert result.returncode == 0, result
            assert "respawned" in result.stdout
            assert gw.wait_exit() == 0  # the old process drains and exits 0
            load.wait_for_requests(100)
        load.result.assert_clean(minimum=200)
        record = gw.record()
        assert record is not None
        assert record.pid != old_pid
        assert record.restarts == 1
        assert record.generation == 2
        assert serving_pid(gw) == record.pid
        assert gw.get("/config").json()["marker"] == "v2"
        assert not process_alive(old_pid)
        outcome = last_outcome(gw.state_dir, gw.port)
        assert outcome is not None
        assert (outcome.outcome, outcome.mode, outcome.old_pid, outcome.new_pid) == (
            "ok",
            "respawn",
            old_pid,
            record.pid,
        )
        assert gw.stop() == 0
        wait_for(lambda: not process_alive(record.pid), timeout=10, what="the child to exit")


def test_respawns_chain_and_restart_mode_respawn_makes_sigusr1_respawn(tmp_path: Path) -> None:
    config = FAST_RESPAWN + "  mode: respawn\n"
    with GatewaydProcess.test_app(tmp_path, marker="v1", extra_config=config) as gw:
        gw.wait_ready()
        pids = [gw.pid]
        with HttpLoad(gw.url("/config"), keepalive_clients=4, fresh_clients=4) as load:
            for round_ in range(3):
                holder = pids[-1]
                gw.signal(signal.SIGUSR1, pid=holder)
                wait_for(
                    lambda holder=holder: (
                        (r := gw.record()) is not None and r.pid != holder and serving_pid(gw) == r.pid
                    ),
                    timeout=40,
                    what=f"respawn {round_ + 1}",
                )
                record = gw.record()
                assert record is not None
                pids.append(record.pid)
                wait_for(
                    lambda holder=holder: not process_alive(holder), timeout=10, what="the old pid to exit"
                )
                load.wait_for_requests(30)
        load.result.assert_clean(minimum=100)
        record = gw.record()
        assert record is not None
        assert record.restarts == 3
        assert record.generation == 4
        assert len(set(pids)) == 4
        gw.stop()


def test_a_child_that_never_becomes_ready_is_killed_and_the_reload_falls_back(tmp_path: Path) -> None:
    with GatewaydProcess.test_app(
        tmp_path, marker="v1", extra_config=SHORT_READY, env={"GATEWAYD_TEST_CHILD": "hang"}
    ) as gw:
        gw.wait_ready()
        write_config(gw.config_path, marker="v2", port=gw.port, extra=SHORT_READY)  # type: ignore[arg-type]
        with HttpLoad(gw.url("/config"), keepalive_clients=2, fresh_clients=2) as load:
            result = restart_cli(gw, "--respawn")
        load.result.assert_clean()
        assert result.returncode == 0, result  # the new config is in effect, in process
        assert "respawn failed" in result.stdout
        outcome = last_outcome(gw.state_dir, gw.port)
        assert outcome is not None
        assert outcome.outcome == "fallback"
        assert "restart-unhealthy" in outcome.message
        assert "not ready within 2s" in outcome.message
        assert outcome.new_pid == gw.pid
        assert serving_pid(gw) == gw.pid
        assert gw.get("/config").json()["marker"] == "v2"
        record = gw.record()
        assert record is not None
        assert record.pid == gw.pid
        child_pid = int(outcome.message.split("child pid ")[1].split()[0])
        assert not process_alive(child_pid)
        assert list((gw.state_dir / "diagnostics").glob("bundle-*respawn-failed*.json"))
        assert gw.stop() == 0


def test_a_child_that_exits_at_once_falls_back_quickly(tmp_path: Path) -> None:
    with GatewaydProcess.test_app(
        tmp_path, marker="v1", extra_config=FAST_RESPAWN, env={"GATEWAYD_TEST_CHILD": "exit"}
    ) as gw:
        gw.wait_ready()
        result = restart_cli(gw, "--respawn")
        assert result.returncode == 0, result
        outcome = last_outcome(gw.state_dir, gw.port)
        assert outcome is not None
        assert outcome.outcome == "fallback"
        assert "exited with code 3" in outcome.message
        # far below respawn_ready_timeout_seconds (30): the child's exit was noticed, not waited out (a
        # tighter bound only measures how loaded the machine is)
        assert outcome.duration_seconds < 10
        assert gw.get("/config").json()["generation"] == 2
        assert gw.stop() == 0


def test_under_launchd_a_respawn_request_restarts_in_process(tmp_path: Path) -> None:
    with GatewaydProcess.test_app(tmp_path, marker="v1", env={"GATEWAYD_SUPERVISOR": "launchd"}) as gw:
        gw.wait_ready()
        result = restart_cli(gw, "--respawn")
        assert result.returncode == 0, result
        outcome = last_outcome(gw.state_dir, gw.port)
        assert outcome is not None
        assert (outcome.outcome, outcome.mode, outcome.new_pid) == ("ok", "in-process", gw.pid)
        assert "launchd" in outcome.message
        assert serving_pid(gw) == gw.pid
        assert gw.stop() == 0


def test_a_reload_signal_reaching_the_old_process_during_the_handoff_is_forwarded(tmp_path: Path) -> None:
    slow_handoff = "restart:\n  handoff_close_seconds: 3\n"
    with GatewaydProcess.test_app(tmp_path, marker="v1", extra_config=slow_handoff) as gw:
        gw.wait_ready()
        result = restart_cli(gw, "--respawn")
        assert result.returncode == 0, result
        assert gw.proc is not None
        assert gw.proc.poll() is None  # still handing off
        gw.signal(signal.SIGUSR1)  # to the old pid, as a CLI that read the record a moment earlier would
        wait_for(lambda: gw.get("/config").json()["generation"] == 3, timeout=10, what="the child's reload")
        assert serving_pid(gw) != gw.pid
        assert "forwarded to pid" in gw.logs()
        assert gw.wait_exit() == 0
        gw.stop()


def test_after_a_handoff_the_old_process_drains_long_streams_until_a_stop_cuts_them_short(
    tmp_path: Path,
) -> None:
    # a respawn's old process drains for restart.drain_timeout_seconds, not the stop's short bound; a
    # SIGINT then (a first one: no hard exit) ends the drain within shutdown.drain_timeout_seconds
    bounds = FAST_RESPAWN + "shutdown:\n  drain_timeout_seconds: 0.5\n  force_exit_seconds: 5\n"
    with GatewaydProcess.test_app(tmp_path, marker="v1", extra_config=bounds) as gw:
        gw.wait_ready()
        old_pid = gw.pid
        stream = Stream(gw.url("/stream?chunks=1000&delay=0.05"))
        wait_for(lambda: len(stream.lines) >= 2, timeout=5, what="the stream")
        result = restart_cli(gw, "--respawn")
        assert result.returncode == 0, result
        wait_for(lambda: serving_pid(gw) != old_pid, timeout=10, what="the child to serve")
        seen = len(stream.lines)
        wait_for(lambda: len(stream.lines) >= seen + 30, timeout=10, what="the stream to go on past 1 s")
        assert process_alive(old_pid)  # still draining
        gw.signal(signal.SIGINT)
        assert gw.wait_exit(timeout=5) == 0
        stream.join()
        assert stream.error is None
        assert stream.lines[-1] == "shutdown"
        assert gw.stop() == 0
