"""Managed model servers across the life of a real gatewayd: reloads, a fresh-PID respawn, a kill -9 of
gatewayd, and a stop. The test model server runs as the managed command."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from gatewayd.supervisor.sentinel import last_outcome
from tests.support.managed import kill_left_servers
from tests.support.process import REPO_ROOT, GatewaydProcess, process_alive, wait_for

pytestmark = pytest.mark.slow

MODEL = "m"
CHAT = {"model": MODEL, "messages": [{"role": "user", "content": "hi"}], "stream": False}


def config_text(*, env: str = "", restart: str = "") -> str:
    argv = [sys.executable, "-m", "tests.support.fake_backend", "--port", "${PORT}", "--models", MODEL]
    command = json.dumps(argv)
    return (
        f"{restart}"
        "backends:\n"
        "  - id: local\n"
        "    kind: openai\n"
        f"    command: {command}\n"
        f"    cwd: {json.dumps(str(REPO_ROOT))}\n"
        f"    models: [{MODEL}]\n"
        "    start_timeout_seconds: 30\n"
        f"{env}"
    )


RESPAWN = "restart:\n  respawn_ready_timeout_seconds: 30\n  handoff_close_seconds: 0.5\n"


def record(gw: GatewaydProcess) -> dict[str, object] | None:
    path = gw.state_dir / "backends" / "local.json"
    try:
        return dict(json.loads(path.read_text()))
    except (FileNotFoundError, ValueError):
        return None


def server_pid(gw: GatewaydProcess) -> int:
    found = record(gw)
    assert found is not None, "no record of the managed server"
    return int(found["pid"])  # type: ignore[call-overload]


def chat(gw: GatewaydProcess) -> httpx.Response:
    return httpx.post(gw.url("/api/chat"), json=CHAT, timeout=60)


def listening(port: int) -> bool:
    with socket.socket() as probe:
        probe.settimeout(1)
        return probe.connect_ex(("127.0.0.1", port)) == 0


@pytest.fixture
def config(tmp_path: Path) -> Iterator[Path]:
    """The config file; at the end every server a test left behind is killed (they run in sessions of
    their own, out of reach of the gatewayd process group the harness kills)."""
    path = tmp_path / "config.yaml"
    path.write_text(config_text())
    yield path
    kill_left_servers(tmp_path / "state")


def reload(gw: GatewaydProcess, outcomes_before: int) -> None:
    gw.signal(signal.SIGUSR1)
    wait_for(
        lambda: (
            (o := last_outcome(gw.state_dir, gw.port)) is not None and o.generation == outcomes_before + 2
        ),
        timeout=20,
        what="the reload",
    )


def test_a_reload_keeps_an_unchanged_server_and_replaces_a_changed_one(tmp_path: Path, config: Path) -> None:
    with GatewaydProcess.gatewayd(tmp_path, config) as gw:
        gw.wait_ready()
        assert chat(gw).status_code == 200
        first = server_pid(gw)
        reload(gw, 0)
        assert chat(gw).status_code == 200
        assert server_pid(gw) == first  # unchanged definition: the same process serves on
        config.write_text(config_text(env="    env: {FLAVOUR: new}\n"))
        reload(gw, 1)
        wait_for(lambda: not process_alive(first), timeout=20, what="the changed server to be stopped")
        assert chat(gw).status_code == 200
        assert server_pid(gw) != first
        assert gw.stop() == 0
        assert record(gw) is None  # a clean stop stops the servers it runs


def test_a_respawned_gatewayd_adopts_the_running_server(tmp_path: Path, config: Path) -> None:
    config.write_text(config_text(restart=RESPAWN))
    with GatewaydProcess.gatewayd(tmp_path, config) as gw:
        gw.wait_ready()
        assert chat(gw).status_code == 200
        server = server_pid(gw)
        old_pid = gw.pid
        result = subprocess.run(
            [sys.executable, "-m", "gatewayd", "restart", "--respawn", "--port", str(gw.port),
             "--state-dir", str(gw.state_dir)],
            cwd=REPO_ROOT, capture_output=True, text=True, timeout=60, check=False,
        )  # fmt: skip
        assert result.returncode == 0, result
        assert gw.wait_exit() == 0  # the old gatewayd handed over and exited
        holder = gw.record()
        assert holder is not None
        assert holder.pid != old_pid
        assert process_alive(server)
        assert server_pid(gw) == server  # adopted, not restarted
        assert chat(gw).status_code == 200
        assert "adopted backend local" in gw.logs()
        os.kill(holder.pid, signal.SIGTERM)
        wait_for(lambda: not process_alive(server), timeout=20, what="the adopted server to be stopped")


def test_after_gatewayd_is_killed_the_next_one_adopts_or_stops_what_it_left(
    tmp_path: Path, config: Path
) -> None:
    first = GatewaydProcess.gatewayd(tmp_path, config, name="first")
    with first:
        first.wait_ready()
        assert chat(first).status_code == 200
        server = server_pid(first)
        found = record(first)
        assert found is not None
        port = int(found["port"])  # type: ignore[call-overload]
        os.kill(first.pid, signal.SIGKILL)
        first.wait_exit()
    assert process_alive(server)  # killed with gatewayd's process group, its server lives on
    # the same config: the next gatewayd adopts it
    second = GatewaydProcess.gatewayd(tmp_path, config, name="second", port=first.port)
    with second:
        second.wait_ready()
        assert chat(second).status_code == 200
        assert server_pid(second) == server
        os.kill(second.pid, signal.SIGKILL)
        second.wait_exit()
    # another definition: the next gatewayd cannot use it, so it stops it and frees its port
    config.write_text(config_text(env="    env: {FLAVOUR: other}\n"))
    third = GatewaydProcess.gatewayd(tmp_path, config, name="third", port=first.port)
    with third:
        third.wait_ready()
        wait_for(lambda: not process_alive(server), timeout=20, what="the orphan to be stopped")
        assert not listening(port)
        assert chat(third).status_code == 200
        assert server_pid(third) != server
        assert third.stop() == 0
