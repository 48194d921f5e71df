"""What a serving process imports: every start and every fresh-PID respawn pays for its imports before it can
serve, so ``gatewayd run`` imports only what serving needs. The CLI's HTTP client (httpx, for ``status``,
``backends`` ...) and rich (tables; a terminal's log handler) stay out of a process whose logs go to a file.

The real ``gatewayd run`` is started with ``PYTHONPROFILEIMPORTTIME=1`` (the environment form of ``python -X
importtime``), serves a request, respawns once, and stops; the import lines both processes wrote to the log
name every module they imported."""

from __future__ import annotations

import re
import signal
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from tests.support.fake_backend import FakeBackend, running_fake_backend
from tests.support.process import GatewaydProcess, process_alive, wait_for

pytestmark = pytest.mark.slow

#: top-level packages a serving process must not import
NOT_FOR_SERVING = ("httpx", "httpcore", "rich", "pygments")
_IMPORT_LINE = re.compile(r"^import time:\s+\d+ \|\s+\d+ \|\s*(\S+)$", re.MULTILINE)


@pytest.fixture
def backend() -> Iterator[FakeBackend]:
    with running_fake_backend(models=("fake-model",)) as fake:
        yield fake


def imported_packages(log: str) -> set[str]:
    return {name.split(".")[0] for name in _IMPORT_LINE.findall(log)}


def test_a_serving_process_and_its_respawned_child_import_no_cli_only_package(
    tmp_path: Path, backend: FakeBackend
) -> None:
    config = tmp_path / "config.yaml"
    config.write_text(
        "restart:\n  mode: respawn\n"
        f"backends:\n  - id: fake\n    url: {backend.url}\n    models: [fake-model]\n"
    )
    with GatewaydProcess.gatewayd(tmp_path, config, env={"PYTHONPROFILEIMPORTTIME": "1"}) as gw:
        gw.wait_ready()
        old_pid = gw.pid
        models = httpx.get(gw.url("/v1/models"), timeout=10)
        assert models.status_code == 200, models.text
        gw.signal(signal.SIGUSR1)

        def child_serves() -> bool:
            record = gw.record()
            return record is not None and record.pid != old_pid and not process_alive(old_pid)

        wait_for(child_serves, timeout=60, what="the respawned child to take over")
        gw.stop()
    log = gw.logs()
    # both processes wrote their import lines: the parent's and the child's command line ran the CLI
    assert len(re.findall(r"\|\s*gatewayd\.cli\.main$", log, re.MULTILINE)) == 2, log[-4000:]
    packages = imported_packages(log)
    assert {"quart", "hypercorn", "aiohttp"} <= packages
    assert sorted(packages.intersection(NOT_FOR_SERVING)) == []
