"""One instance per port; stale locks are taken over; a failed start exits non-zero and releases all."""

from __future__ import annotations

import signal
import socket
import time
from pathlib import Path

import pytest

from tests.support.process import GatewaydProcess, process_alive, wait_for

pytestmark = pytest.mark.slow


def test_a_second_instance_on_the_port_is_refused_naming_the_pid(tmp_path: Path) -> None:
    with GatewaydProcess.test_app(tmp_path, marker="first", name="first") as first:
        first.wait_ready()
        with GatewaydProcess.test_app(
            tmp_path, marker="second", port=first.port, state_dir=first.state_dir, name="second"
        ) as second:
            assert second.wait_exit(10) == 1
            assert f"already running on port {first.port} (pid {first.pid})" in second.logs()
        assert first.get("/config").json()["marker"] == "first"
        assert first.stop() == 0


def test_kill_9_leaves_a_stale_lock_that_the_next_instance_takes_over(tmp_path: Path) -> None:
    with GatewaydProcess.test_app(tmp_path, marker="first", name="first") as first:
        first.wait_ready()
        first.signal(signal.SIGKILL)
        first.wait_exit()
        stale = first.record()
        assert stale is not None
        assert stale.pid == first.pid  # the record survives a kill -9
    with GatewaydProcess.test_app(
        tmp_path, marker="second", port=first.port, state_dir=first.state_dir, name="second"
    ) as second:
        started = time.monotonic()
        second.wait_ready()
        assert time.monotonic() - started < 5
        record = second.record()
        assert record is not None
        assert record.pid == second.pid
        assert second.get("/config").json()["marker"] == "second"
        assert second.stop() == 0


def test_a_first_generation_that_fails_exits_1_and_releases_the_port_and_lock(tmp_path: Path) -> None:
    with GatewaydProcess.test_app(tmp_path, marker="fail-start", name="failing") as failing:
        assert failing.wait_exit(15) == 1
        assert "could not start" in failing.logs()
        assert "refuses to start" in failing.logs()
        assert failing.record() is None
    # both the lock and the port are free at once
    with GatewaydProcess.test_app(
        tmp_path, marker="ok", port=failing.port, state_dir=failing.state_dir, name="next"
    ) as after:
        after.wait_ready()
        assert after.stop() == 0


def test_an_invalid_config_at_startup_exits_1_listing_every_problem(tmp_path: Path) -> None:
    gw = GatewaydProcess.test_app(tmp_path, marker="x")
    assert gw.config_path is not None
    gw.config_path.write_text("server:\n  port: 1\n  bakclog: 5\nshutdown:\n  drain_timeout_seconds: soon\n")
    with gw:
        assert gw.wait_exit(15) == 1
        logs = gw.logs()
        assert "bakclog" in logs
        assert "drain_timeout_seconds" in logs


def test_a_port_taken_by_another_program_is_a_clear_startup_error(tmp_path: Path) -> None:
    with socket.socket() as squatter:
        squatter.bind(("127.0.0.1", 0))
        squatter.listen(1)
        port = squatter.getsockname()[1]
        with GatewaydProcess.test_app(tmp_path, port=port) as gw:
            assert gw.wait_exit(15) == 1
            assert f"cannot listen on 127.0.0.1:{port}" in gw.logs()
            assert "another program is listening there" in gw.logs()
            assert gw.record() is None
    wait_for(lambda: not process_alive(gw.pid), timeout=5, what="exit")
