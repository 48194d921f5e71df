"""``gatewayd backends`` (list, start, stop) as a user runs it, against a real ``gatewayd run`` whose config
has a managed backend: the test model server as its command."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest

from tests.support.process import REPO_ROOT, GatewaydProcess, gatewayd_cli, process_alive, wait_for

pytestmark = pytest.mark.slow

#: the slots the managed llama-server (the test model server as one) reports once it runs
SLOTS = 3

CONFIG = f"""\
discovery:
  enabled: false
health:
  probe_interval_busy_seconds: 0.1
  probe_interval_idle_seconds: 0.1
backends:
  - id: local
    kind: llama-server
    command: [{sys.executable}, -m, tests.support.fake_backend, --port, "${{PORT}}", --models, m,
              --kind, llama-server, --behaviour, '{{"max_concurrency": {SLOTS}}}']
    cwd: {REPO_ROOT}
    models: [m]
    start_timeout_seconds: 30
  - id: broken
    command: [{sys.executable}, -c, "raise SystemExit(3)"]
    models: [x]
"""


def test_backends_lists_starts_and_stops_a_managed_backend(tmp_path: Path) -> None:
    config = tmp_path / "config.yaml"
    config.write_text(CONFIG)
    with GatewaydProcess.gatewayd(tmp_path, config) as gw:
        gw.wait_ready()
        state = gw.state_dir

        table = gatewayd_cli("backends", state_dir=state)
        assert table.returncode == 0, table
        assert "local" in table.stdout
        assert "sleeping" in table.stdout
        assert f"port {gw.port}" in table.stdout  # names the instance it asked
        # the limit in force and its source: a llama-server not yet running has its kind's default, a
        # backend of the openai kind is unbounded
        assert "4 (default)" in table.stdout
        assert "unbounded" in table.stdout

        start = gatewayd_cli("backends", "start", "local", state_dir=state)
        assert start.returncode == 0, start
        assert "started backend local: running" in start.stdout

        listed = gatewayd_cli("backends", "--json", state_dir=state)
        assert listed.returncode == 0, listed
        row = next(r for r in json.loads(listed.stdout) if r["id"] == "local")
        assert row["state"] == "running"
        pid = row["pid"]
        assert isinstance(pid, int)
        assert process_alive(pid)
        assert f"pid {pid}" in start.stdout

        def learned() -> dict[str, object] | None:
            rows = json.loads(gatewayd_cli("backends", "--json", state_dir=state).stdout)
            local = next(r for r in rows if r["id"] == "local")
            return local if local["concurrency_source"] == "props" else None

        local = wait_for(learned, timeout=30, what="the slots learned from the running server")
        assert local["max_concurrency"] == SLOTS
        table = gatewayd_cli("backends", state_dir=state)
        assert f"{SLOTS} (props)" in table.stdout

        stop = gatewayd_cli("backends", "stop", "local", state_dir=state)
        assert stop.returncode == 0, stop
        assert "stopped backend local: sleeping" in stop.stdout
        assert not process_alive(pid)

        unknown = gatewayd_cli("backends", "start", "nope", state_dir=state)
        assert unknown.returncode == 1
        assert "no backend 'nope'" in unknown.stderr

        broken = gatewayd_cli("backends", "start", "broken", state_dir=state)
        assert broken.returncode == 1
        assert "could not start" in broken.stderr
        assert "exited with code 3" in broken.stderr
        assert gw.stop() == 0


def test_backends_says_clearly_when_nothing_runs(tmp_path: Path) -> None:
    for command in (["backends"], ["backends", "--json"], ["backends", "start", "local"]):
        result = gatewayd_cli(*command, state_dir=tmp_path / "state")
        assert result.returncode == 3, (command, result)
        assert "not running" in result.stderr
        assert "gatewayd run" in result.stderr
