"""In-process reloads of a real run loop (the supervisor test app in a subprocess), with real signals."""

from __future__ import annotations

import json
import signal
import threading
import time
from pathlib import Path

import httpx
import pytest

from gatewayd.supervisor.sentinel import last_outcome, outcome_history
from tests.support.load import HttpLoad
from tests.support.process import GatewaydProcess, gatewayd_cli, wait_for
from tests.support.supervisor_apps import write_config

pytestmark = pytest.mark.slow


def rewrite(gw: GatewaydProcess, marker: str, extra: str = "") -> None:
    assert gw.config_path is not None
    write_config(gw.config_path, marker=marker, port=gw.port, extra=extra)


def marker(gw: GatewaydProcess) -> str:
    return str(gw.get("/config").json()["marker"])


def reload_and_wait(gw: GatewaydProcess, *, outcomes_before: int) -> None:
    gw.signal(signal.SIGUSR1)
    wait_for(
        lambda: len(outcome_history(gw.state_dir, gw.port)) > outcomes_before,
        timeout=10,
        what="a reload outcome",
    )


@pytest.mark.parametrize("loop_args", [(), ("--no-uvloop",)], ids=["uvloop", "asyncio"])
def test_reloads_under_load_fail_nothing_and_apply_the_new_config(
    tmp_path: Path, loop_args: tuple[str, ...]
) -> None:
    with GatewaydProcess.test_app(tmp_path, marker="v0", args=loop_args) as gw:
        gw.wait_ready()
        with HttpLoad(gw.url("/config"), keepalive_clients=6, fresh_clients=6) as load:
            load.wait_for_requests(50)
            for index in range(1, 6):
                rewrite(gw, f"v{index}")
                signalled = time.monotonic()
                gw.signal(signal.SIGUSR1)
                wait_for(lambda index=index: marker(gw) == f"v{index}", timeout=5, what=f"config v{index}")
                assert time.monotonic() - signalled < 3.0  # bench/bench_restart.py measures the 1 s target
                load.wait_for_requests(30)
        load.result.assert_clean(minimum=200)
        # a generation serves before its reload's outcome is recorded: wait for the last outcome
        wait_for(lambda: len(outcome_history(gw.state_dir, gw.port)) == 5, timeout=10, what="5 outcomes")
        history = outcome_history(gw.state_dir, gw.port)
        assert [outcome.outcome for outcome in history] == ["ok"] * 5
        assert gw.get("/config").json()["generation"] == 6
        record = gw.record()
        assert record is not None
        assert record.generation == 6
        assert gw.stop() == 0


def test_a_stream_started_before_a_reload_completes_with_all_its_chunks(tmp_path: Path) -> None:
    # the stop's drain bound is far shorter than the stream: a reload drains for restart.drain_timeout_seconds
    bounds = "shutdown:\n  drain_timeout_seconds: 0.3\n  force_exit_seconds: 5\n"
    with GatewaydProcess.test_app(tmp_path, marker="old", extra_config=bounds) as gw:
        gw.wait_ready()
        lines: list[str] = []
        headers: dict[str, str] = {}

        def stream() -> None:
            with (
                httpx.Client(timeout=30) as client,
                client.stream("GET", gw.url("/stream?chunks=15&delay=0.1")) as r,
            ):
                headers.update(r.headers)
                lines.extend(r.iter_lines())

        reader = threading.Thread(target=stream)
        reader.start()
        wait_for(lambda: headers, timeout=5, what="the stream to start")
        rewrite(gw, "new", extra=bounds)
        gw.signal(signal.SIGUSR1)
        wait_for(lambda: marker(gw) == "new", timeout=5, what="the new config")
        reader.join(30)
        assert headers["x-generation"] == "1"
        assert lines == [f"chunk {index}" for index in range(15)] + ["done"]
        assert gw.stop() == 0


def test_an_invalid_config_is_rejected_and_the_old_one_keeps_serving(tmp_path: Path) -> None:
    with GatewaydProcess.test_app(tmp_path, marker="good") as gw:
        gw.wait_ready()
        assert gw.config_path is not None
        gw.config_path.write_text(f"server:\n  port: {gw.port}\n  max_body_bytez: 3\nbackends: nope\n")
        result = gatewayd_cli("restart", "--port", str(gw.port), state_dir=gw.state_dir)
        assert result.returncode == 1, result
        assert "config rejected" in result.stderr
        assert "max_body_bytez" in result.stderr
        assert marker(gw) == "good"
        outcome = last_outcome(gw.state_dir, gw.port)
        assert outcome is not None
        assert outcome.outcome == "rejected"
        assert any("max_body_bytez" in error for error in outcome.errors)
        assert "max_body_bytez" in gw.logs()
        # the loop is not stuck: a valid config reloads next time
        rewrite(gw, "fixed")
        result = gatewayd_cli("restart", "--port", str(gw.port), state_dir=gw.state_dir)
        assert result.returncode == 0, result
        assert "reloaded" in result.stdout
        assert marker(gw) == "fixed"
        assert gw.stop() == 0


@pytest.mark.parametrize("text", ["", "# everything was cut\n"], ids=["empty", "only comments"])
def test_a_config_file_cut_to_nothing_is_rejected_and_the_old_one_keeps_serving(
    tmp_path: Path, text: str
) -> None:
    with GatewaydProcess.test_app(tmp_path, marker="good") as gw:
        gw.wait_ready()
        assert gw.config_path is not None
        gw.config_path.write_text(text)
        result = gatewayd_cli("restart", "--port", str(gw.port), state_dir=gw.state_dir)
        assert result.returncode == 1, result
        assert "config rejected" in result.stderr
        assert "holds no settings" in result.stderr
        assert "gatewayd init" in result.stderr  # how to fix it
        assert marker(gw) == "good"
        assert gw.get("/config").json()["generation"] == 1
        assert gw.stop() == 0


def test_a_reload_that_turns_auth_off_is_refused_until_asked_for_on_purpose(tmp_path: Path) -> None:
    keys = "auth:\n  mode: keys\n  admin_token: admin-0123456789abcdef\n"
    with GatewaydProcess.test_app(tmp_path, marker="locked", extra_config=keys) as gw:
        gw.wait_ready()
        rewrite(gw, "open", extra="  - id: second\n    url: http://127.0.0.1:9\n")  # no auth: section
        refused = gatewayd_cli("restart", "--port", str(gw.port), state_dir=gw.state_dir)
        assert refused.returncode == 1, refused
        assert "lowers protection" in refused.stderr
        assert "auth.mode goes from keys to off" in refused.stderr
        assert "auth.admin_token is removed" in refused.stderr
        assert "gatewayd restart --allow-weaker" in refused.stderr
        assert "changes not applied" in refused.stderr
        assert marker(gw) == "locked"
        outcome = last_outcome(gw.state_dir, gw.port)
        assert outcome is not None
        assert outcome.outcome == "rejected"
        assert len(outcome.errors) == 2
        # a plain signal (kill, systemd) is refused the same way
        reload_and_wait(gw, outcomes_before=1)
        assert marker(gw) == "locked"
        assert [o.outcome for o in outcome_history(gw.state_dir, gw.port)] == ["rejected", "rejected"]
        applied = gatewayd_cli("restart", "--allow-weaker", "--port", str(gw.port), state_dir=gw.state_dir)
        assert applied.returncode == 0, applied
        assert "reloaded" in applied.stdout
        assert "protection lowered on purpose" in applied.stdout
        assert marker(gw) == "open"
        assert "protection lowered on purpose" in gw.logs()
        assert gw.stop() == 0


def test_restart_prints_what_the_reload_changed(tmp_path: Path) -> None:
    two = "  - id: kept\n    url: http://127.0.0.1:9\n  - id: dropped\n    url: http://127.0.0.1:9\n"
    with GatewaydProcess.test_app(tmp_path, marker="first", extra_config=two) as gw:
        gw.wait_ready()
        assert gw.config_path is not None
        gw.config_path.write_text(
            f"server:\n  host: 127.0.0.1\n  port: {gw.port}\nlimits:\n  max_attempts: 1\nbackends:\n"
            "  - id: first\n    url: http://127.0.0.1:9\n"
            "  - id: kept\n    url: http://127.0.0.1:10\n"
            "  - id: added\n    url: http://127.0.0.1:9\n"
        )
        result = gatewayd_cli("restart", "--port", str(gw.port), state_dir=gw.state_dir)
        assert result.returncode == 0, result
        lines = [line.strip() for line in result.stdout.splitlines()]
        backends = next(line for line in lines if line.startswith("backends:"))
        assert "added added" in backends
        assert "removed dropped" in backends
        assert "changed kept" in backends
        assert "first" not in backends
        assert "settings: limits" in lines
        outcome = last_outcome(gw.state_dir, gw.port)
        assert outcome is not None
        assert outcome.changes is not None
        assert outcome.changes.backends.removed == ("dropped",)
        assert gw.stop() == 0


def test_a_generation_that_fails_to_start_leaves_the_old_one_serving_and_reloads_go_on(
    tmp_path: Path,
) -> None:
    with GatewaydProcess.test_app(tmp_path, marker="good") as gw:
        gw.wait_ready()
        rewrite(gw, "fail-start")
        reload_and_wait(gw, outcomes_before=0)
        outcome = last_outcome(gw.state_dir, gw.port)
        assert outcome is not None
        assert outcome.outcome == "error"
        assert "refuses to start" in outcome.message
        assert marker(gw) == "good"
        # the bundle is written before the outcome is recorded, and the outcome names it
        assert outcome.bundle is not None, "a failed reload writes a diagnostic bundle"
        bundle = Path(outcome.bundle)
        assert bundle.parent == gw.state_dir / "diagnostics"
        assert "reload-failed" in bundle.name
        assert "refuses to start" in bundle.read_text()
        rewrite(gw, "after")
        reload_and_wait(gw, outcomes_before=1)
        assert marker(gw) == "after"
        assert gw.stop() == 0


def test_twenty_reload_signals_in_a_second_are_coalesced(tmp_path: Path) -> None:
    with GatewaydProcess.test_app(tmp_path, marker="start-delay-0.2") as gw:
        gw.wait_ready()
        rewrite(gw, "start-delay-0.2", extra="  - id: burst\n    url: http://127.0.0.1:9\n")
        for _ in range(20):
            gw.signal(signal.SIGUSR1)
            time.sleep(0.05)
        gw.wait_log("coalesced")
        # quiet for a while: every pending reload has run
        wait_for(
            lambda: "reload (" in gw.logs() and _settled(gw),
            timeout=20,
            what="the reloads to settle",
        )
        reloads = len(outcome_history(gw.state_dir, gw.port))
        # each reload takes >= 0.2 s (its generation's start delay) and the burst lasts ~1 s: the signals
        # that arrive meanwhile collapse into one pending reload, so there are at most about 1 / 0.2 + 1
        assert 1 <= reloads <= 7
        assert all(outcome.outcome == "ok" for outcome in outcome_history(gw.state_dir, gw.port))
        assert gw.get("/healthz").status_code == 200
        rewrite(gw, "later")
        reload_and_wait(gw, outcomes_before=reloads)
        assert marker(gw) == "later"
        assert gw.stop() == 0


def _settled(gw: GatewaydProcess) -> bool:
    before = len(outcome_history(gw.state_dir, gw.port))
    time.sleep(0.6)
    return len(outcome_history(gw.state_dir, gw.port)) == before and gw.logs().count("reload (") == before


def test_a_reload_requested_during_startup_runs_after_startup(tmp_path: Path) -> None:
    with GatewaydProcess.test_app(tmp_path, marker="start-delay-1.5") as gw:
        wait_for(lambda: "starting the gateway" in gw.logs(), timeout=10, what="the listener")
        rewrite(gw, "second")
        gw.signal(signal.SIGUSR1)
        gw.wait_ready()
        wait_for(lambda: marker(gw) == "second", timeout=10, what="the reload after startup")
        assert gw.get("/config").json()["generation"] == 2
        assert gw.stop() == 0


def test_a_reload_signal_sent_as_soon_as_the_lock_record_appears_does_not_kill_the_process(
    tmp_path: Path,
) -> None:
    # a CLI finds an instance through its lock record: the record appears before the event loop runs, and a
    # signal in that window must wait for the run loop rather than take its default action (terminate)
    with GatewaydProcess.test_app(tmp_path, marker="early") as gw:
        wait_for(lambda: gw.record() is not None, timeout=10, interval=0.001, what="the lock record")
        gw.signal(signal.SIGUSR1)
        gw.wait_ready()
        wait_for(lambda: gw.get("/config").json()["generation"] == 2, timeout=10, what="the reload")
        assert gw.stop() == 0


def test_sighup_reloads_too_and_a_listen_change_is_warned_about(tmp_path: Path) -> None:
    with GatewaydProcess.test_app(tmp_path, marker="v1") as gw:
        gw.wait_ready()
        assert gw.config_path is not None
        gw.config_path.write_text(
            f"server:\n  host: 127.0.0.1\n  port: {gw.port + 1}\nbackends:\n  - id: v2\n    url: http://127.0.0.1:9\n"
        )
        gw.signal(signal.SIGHUP)
        wait_for(lambda: marker(gw) == "v2", timeout=5, what="the SIGHUP reload")
        assert "a reload keeps the listening socket" in gw.logs()
        assert json.loads(gw.get("/status").text)["instance"]["listen"] == f"127.0.0.1:{gw.port}"
        assert gw.stop() == 0


def test_an_exception_anywhere_in_a_reload_is_recorded_and_the_next_reload_works(tmp_path: Path) -> None:
    with GatewaydProcess.test_app(tmp_path, marker="good") as gw:
        gw.wait_ready()
        assert gw.config_path is not None
        gw.config_path.write_text(gw.config_path.read_text() + "# crash-load\n")
        reload_and_wait(gw, outcomes_before=0)
        outcome = last_outcome(gw.state_dir, gw.port)
        assert outcome is not None
        assert outcome.outcome == "error"
        assert "load_config crashed" in outcome.message
        assert marker(gw) == "good"
        rewrite(gw, "next")
        reload_and_wait(gw, outcomes_before=1)
        assert marker(gw) == "next"
        assert gw.stop() == 0


def test_a_serving_generation_that_dies_is_replaced_from_the_same_config(tmp_path: Path) -> None:
    with GatewaydProcess.test_app(tmp_path, marker="same") as gw:
        gw.wait_ready()
        rewrite(gw, "edited-but-not-reloaded")  # the replacement serves what was serving, not the file
        assert gw.get("/crash").status_code == 200
        wait_for(lambda: gw.get("/config").json()["generation"] == 2, timeout=10, what="the replacement")
        # the new generation serves before its outcome is recorded: wait for the outcome itself
        wait_for(lambda: outcome_history(gw.state_dir, gw.port), timeout=10, what="the recovery outcome")
        assert marker(gw) == "same"
        logs = gw.logs()
        assert "generation 1 failed" in logs
        assert "crashed (/crash)" in logs
        outcome = last_outcome(gw.state_dir, gw.port)
        assert outcome is not None
        assert (outcome.reason, outcome.outcome) == ("recovery", "ok")
        assert outcome.bundle is not None
        assert "generation-failed" in Path(outcome.bundle).name
        assert "crashed (/crash)" in Path(outcome.bundle).read_text()
        assert gw.stop() == 0
