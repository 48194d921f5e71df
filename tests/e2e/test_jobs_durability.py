"""Jobs with a real ``gatewayd run``, a fake model server in its own process and the real store file:
kill -9 in the middle of a job and a reload while one runs."""

from __future__ import annotations

import os
import signal
import sqlite3
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from gatewayd.gateway.guard import DB_FILE
from tests.support.fake_backend import spawned_fake_backend
from tests.support.process import GatewaydProcess, free_port, wait_for

pytestmark = pytest.mark.slow

MODEL = "m"
CHAT = {"model": MODEL, "messages": [{"role": "user", "content": "hello"}]}


@pytest.fixture
def upstream() -> Iterator[str]:
    with spawned_fake_backend(models=(MODEL,)) as (_, url):
        yield url


def write_config(path: Path, upstream: str, extra: str = "") -> Path:
    path.write_text(
        "usage:\n  flush_interval_seconds: 0.1\n"
        "jobs:\n  poll_interval_seconds: 0.1\n  lease_seconds: 30\n"
        f"backends:\n  - id: b\n    url: {upstream}\n    models: [{MODEL}]\n{extra}"
    )
    return path


def behave(upstream: str, **changes: Any) -> None:
    assert httpx.post(f"{upstream}/_fake/behaviour", json=changes, timeout=10).status_code == 200


def upstream_in_flight(upstream: str) -> int:
    return int(httpx.get(f"{upstream}/_fake/stats", timeout=10).json()["in_flight"])


def chat_requests(upstream: str) -> int:
    return int(
        httpx.get(f"{upstream}/_fake/stats", timeout=10).json()["requests"].get("/v1/chat/completions", 0)
    )


def show(gw: GatewaydProcess, job_id: str) -> dict[str, Any]:
    return dict(httpx.get(gw.url(f"/v1/jobs/{job_id}"), timeout=10).json())


def successes_recorded(state_dir: Path) -> int:
    with sqlite3.connect(state_dir / DB_FILE) as db:
        return int(
            db.execute("SELECT count(*) FROM usage WHERE status = 200 AND model = ?", (MODEL,)).fetchone()[0]
        )


def test_a_job_cut_by_kill_9_runs_again_after_restart_and_succeeds_once(
    tmp_path: Path, upstream: str
) -> None:
    config = write_config(tmp_path / "config.yaml", upstream)
    with GatewaydProcess.gatewayd(tmp_path, config) as gw:
        gw.wait_ready()
        behave(upstream, hang=True)
        created = httpx.post(
            gw.url("/v1/jobs"), json={"endpoint": "/v1/chat/completions", "request": CHAT}, timeout=10
        )
        assert created.status_code == 202
        job_id = created.json()["id"]
        wait_for(lambda: upstream_in_flight(upstream) == 1, timeout=30, what="the job's request upstream")
        assert show(gw, job_id)["state"] == "running"
        os.kill(gw.pid, signal.SIGKILL)
        gw.wait_exit()
    behave(upstream, hang=False)
    wait_for(lambda: upstream_in_flight(upstream) == 0, timeout=30, what="the cut request to end upstream")
    again = GatewaydProcess.gatewayd(tmp_path, config, name="again", port=free_port())
    with again:
        again.wait_ready()
        done = wait_for(
            lambda: (job := show(again, job_id))["state"] in ("succeeded", "failed") and job,
            timeout=60,
            what="the job to finish after the restart",
        )
        assert done["state"] == "succeeded"
        assert done["attempts"] == 2  # the attempt cut by the crash counts
        assert "went back to the queue" in again.logs()
        wait_for(lambda: successes_recorded(again.state_dir) >= 1, timeout=20, what="the usage record")
        assert again.stop() == 0
    assert successes_recorded(again.state_dir) == 1


def test_a_reload_lets_a_running_job_finish_on_its_generation_without_resending_it(
    tmp_path: Path, upstream: str
) -> None:
    config = write_config(tmp_path / "config.yaml", upstream)
    with GatewaydProcess.gatewayd(tmp_path, config) as gw:
        gw.wait_ready()
        behave(upstream, hang=True)
        created = httpx.post(
            gw.url("/v1/jobs"), json={"endpoint": "/v1/chat/completions", "request": CHAT}, timeout=10
        )
        job_id = created.json()["id"]
        wait_for(lambda: upstream_in_flight(upstream) == 1, timeout=30, what="the job's request upstream")
        sent = chat_requests(upstream)
        gw.signal(signal.SIGHUP)
        wait_for(lambda: httpx.get(gw.url("/status"), timeout=10).json()["generation"] == 2, timeout=30,
                 what="the new generation")  # fmt: skip
        assert show(gw, job_id)["state"] == "running"
        behave(upstream, hang=False)
        done = wait_for(
            lambda: (job := show(gw, job_id))["state"] in ("succeeded", "failed") and job,
            timeout=60,
            what="the job to finish",
        )
        assert done["state"] == "succeeded"
        assert done["attempts"] == 1
        assert chat_requests(upstream) == sent  # never sent again
        assert gw.stop() == 0
