"""Managed backends in tests: the test model server as a managed command, an in-process gateway with
state in tmp_path, and cleanup of servers a test leaves behind."""

from __future__ import annotations

import json
import os
import signal
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import replace
from pathlib import Path

from gatewayd.config import Backend, BackendKind, Config, HealthSettings
from tests.support.gateway import RunningGateway, running_gateway
from tests.support.process import REPO_ROOT

#: the test model server as a managed command, on the port gatewayd picks; append the served model(s)
FAKE_COMMAND = (sys.executable, "-m", "tests.support.fake_backend", "--port", "${PORT}", "--models")


def managed_backend(backend_id: str = "local", model: str = "m", **changes: object) -> Backend:
    """A managed OpenAI-dialect backend running the test model server for ``model``."""
    backend = Backend(
        id=backend_id,
        kind=BackendKind.OPENAI,
        command=(*FAKE_COMMAND, model),
        cwd=str(REPO_ROOT),
        models=(model,),
        start_timeout_seconds=30.0,
    )
    return replace(backend, **changes)  # type: ignore[arg-type]


@contextmanager
def managed_gateway(tmp_path: Path, *backends: Backend, **changes: object) -> Iterator[RunningGateway]:
    """An in-process gateway over ``backends`` with its state directory in ``tmp_path`` (fast idle
    probes); ``changes`` replace top-level config sections."""
    config = replace(
        Config(backends=backends, health=HealthSettings(probe_interval_idle_seconds=0.2)), **changes
    )  # type: ignore[arg-type]
    with running_gateway(config, state_dir=tmp_path / "state") as gw:
        yield gw


def kill_left_servers(state_dir: Path) -> None:
    """SIGKILL the process group of every managed server still recorded in ``state_dir``: they run in
    sessions of their own, out of reach of the gatewayd process group a harness kills."""
    for leftover in (state_dir / "backends").glob("*.json"):
        try:
            os.killpg(int(json.loads(leftover.read_text())["pgid"]), signal.SIGKILL)
        except (ProcessLookupError, ValueError, KeyError):
            pass
