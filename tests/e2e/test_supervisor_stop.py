"""Stopping a real run loop: drain, end streams, force-exit watchdog, second SIGINT, signals during a stop."""

from __future__ import annotations

import json
import signal
import socket
import time
from pathlib import Path

import pytest

from tests.support.process import GatewaydProcess, Request, Stream, wait_for

pytestmark = pytest.mark.slow


def in_flight(gw: GatewaydProcess) -> int:
    # the /status request itself is one of them
    return int(json.loads(gw.get("/status").text)["in_flight"]) - 1


def test_sigterm_lets_a_stream_in_flight_complete_then_exits_0(tmp_path: Path) -> None:
    with GatewaydProcess.test_app(tmp_path) as gw:
        gw.wait_ready()
        stream = Stream(gw.url("/stream?chunks=12&delay=0.1"))
        slow = Request(gw.url("/slow?seconds=0.8"))
        wait_for(lambda: stream.lines and in_flight(gw) == 2, timeout=5, what="both requests in flight")
        gw.signal(signal.SIGTERM)
        assert gw.wait_exit() == 0
        stream.join()
        slow.join()
        assert stream.error is None
        assert stream.lines == [f"chunk {index}" for index in range(12)] + ["done"]
        assert slow.status == 200
        assert gw.record() is None  # the lock record goes with a clean stop


def test_a_stream_longer_than_the_drain_bound_gets_a_shutdown_line(tmp_path: Path) -> None:
    drain = "shutdown:\n  drain_timeout_seconds: 0.5\n"
    with GatewaydProcess.test_app(tmp_path, extra_config=drain) as gw:
        gw.wait_ready()
        stream = Stream(gw.url("/stream?chunks=1000&delay=0.05"))
        wait_for(lambda: len(stream.lines) >= 2, timeout=5, what="the stream")
        signalled = time.monotonic()
        gw.signal(signal.SIGTERM)
        assert gw.wait_exit() == 0
        assert time.monotonic() - signalled < 4
        stream.join()
        assert stream.error is None
        assert stream.lines[-1] == "shutdown"
        assert "ending open streams" in gw.logs()


def test_a_request_that_ignores_cancellation_trips_the_force_exit_watchdog(tmp_path: Path) -> None:
    bounds = "shutdown:\n  drain_timeout_seconds: 0.3\n  force_exit_seconds: 2\n"
    with GatewaydProcess.test_app(tmp_path, extra_config=bounds) as gw:
        gw.wait_ready()
        stuck = Request(gw.url("/hang?shield=1"))
        wait_for(lambda: in_flight(gw) == 1, timeout=5, what="the stuck request")
        signalled = time.monotonic()
        gw.signal(signal.SIGTERM)
        assert gw.wait_exit() == 1
        elapsed = time.monotonic() - signalled
        assert 1.9 < elapsed < 5
        bundles = list((gw.state_dir / "diagnostics").glob("bundle-*force-exit*.json"))
        assert len(bundles) == 1
        bundle = json.loads(bundles[0].read_text())
        assert bundle["reason"] == "force-exit"
        assert "1 request(s) in flight" in json.dumps(bundle["error"])
        assert bundles[0].stat().st_mode & 0o777 == 0o600
        stuck.join()
        assert stuck.error is not None


def test_a_wedged_event_loop_is_ended_by_the_watchdog_thread(tmp_path: Path) -> None:
    bounds = "shutdown:\n  drain_timeout_seconds: 1\n  force_exit_seconds: 2\n"
    with GatewaydProcess.test_app(tmp_path, extra_config=bounds) as gw:
        gw.wait_ready()
        Request(gw.url("/wedge?on_drain=1"))  # blocks the event loop for good once the stop begins
        wait_for(lambda: in_flight(gw) == 1, timeout=5, what="the request")
        signalled = time.monotonic()
        gw.signal(signal.SIGTERM)
        assert gw.wait_exit() == 1
        assert 1.9 < time.monotonic() - signalled < 5
        assert list((gw.state_dir / "diagnostics").glob("bundle-*force-exit*.json"))


def test_a_cancellable_request_over_the_bound_is_cut_off_and_the_stop_is_clean(tmp_path: Path) -> None:
    drain = "shutdown:\n  drain_timeout_seconds: 0.3\n"
    with GatewaydProcess.test_app(tmp_path, extra_config=drain) as gw:
        gw.wait_ready()
        hung = Request(gw.url("/hang"))
        wait_for(lambda: in_flight(gw) == 1, timeout=5, what="the request")
        gw.signal(signal.SIGTERM)
        assert gw.wait_exit() == 0
        hung.join()
        # told the gateway is going away, not handed a bare 500 or a dropped connection
        assert hung.error is None
        assert hung.response is not None
        assert hung.response.status_code == 503
        assert hung.response.headers["retry-after"] == "1"
        assert hung.response.json()["error"]["code"] == "gateway_draining"
        assert "restarting or shutting down" in hung.response.json()["error"]["message"]
        assert "cut off" in gw.logs()


def test_a_second_sigint_exits_at_once(tmp_path: Path) -> None:
    with GatewaydProcess.test_app(tmp_path) as gw:
        gw.wait_ready()
        Request(gw.url("/hang?shield=1"))
        wait_for(lambda: in_flight(gw) == 1, timeout=5, what="the request")
        gw.signal(signal.SIGINT)
        gw.wait_log("SIGINT: stopping")
        signalled = time.monotonic()
        gw.signal(signal.SIGINT)
        assert gw.wait_exit() == 130
        assert time.monotonic() - signalled < 2


def test_signals_during_a_stop_are_logged_and_ignored(tmp_path: Path) -> None:
    with GatewaydProcess.test_app(tmp_path) as gw:
        gw.wait_ready()
        slow = Request(gw.url("/slow?seconds=1.5"))
        wait_for(lambda: in_flight(gw) == 1, timeout=5, what="the request")
        gw.signal(signal.SIGTERM)
        gw.wait_log("SIGTERM: stopping")
        gw.signal(signal.SIGUSR1)
        gw.signal(signal.SIGHUP)
        gw.signal(signal.SIGTERM)
        assert gw.wait_exit() == 0
        slow.join()
        assert slow.status == 200
        logs = gw.logs()
        assert "SIGUSR1 ignored: stopping" in logs
        assert "SIGHUP ignored: stopping" in logs
        assert "SIGTERM ignored: already stopping" in logs
        assert "reload (" not in logs


def test_new_connections_are_not_accepted_once_the_stop_begins_but_keep_alive_in_flight_finish(
    tmp_path: Path,
) -> None:
    with GatewaydProcess.test_app(tmp_path) as gw:
        gw.wait_ready()
        slow = Request(gw.url("/slow?seconds=1"))
        wait_for(lambda: in_flight(gw) == 1, timeout=5, what="the request")
        gw.signal(signal.SIGTERM)
        gw.wait_log("SIGTERM: stopping")
        time.sleep(0.2)
        # the kernel still queues the connection (the socket stays open, for a respawned child), but
        # gatewayd no longer accepts it: it is never answered, then reset when the process exits
        with socket.create_connection(("127.0.0.1", gw.port), timeout=5) as late:
            late.sendall(b"GET /healthz HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n")
            late.settimeout(0.5)
            with pytest.raises(TimeoutError):
                late.recv(1)
            assert gw.wait_exit() == 0
            late.settimeout(5)
            try:
                assert late.recv(1) == b""
            except ConnectionResetError:
                pass
        slow.join()
        assert slow.status == 200
