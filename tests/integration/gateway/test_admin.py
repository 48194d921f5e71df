"""The admin surface for backends through the real gateway: GET /admin/backends, POST .../start and .../stop,
with the test model server run as a real managed command."""

from __future__ import annotations

import json
import sys
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from contextlib import AbstractContextManager as ContextManager
from pathlib import Path
from typing import Any

import httpx
import pytest

from gatewayd.config import Backend, Group, ManagedSettings
from gatewayd.gateway.core.scheduler import MemberState
from tests.support.fake_backend import running_fake_backend
from tests.support.gateway import RunningGateway
from tests.support.managed import FAKE_COMMAND, managed_backend, managed_gateway
from tests.support.process import process_alive

pytestmark = pytest.mark.slow

MODEL = "m"
FAKE = FAKE_COMMAND


def managed(backend_id: str = "local", model: str = MODEL, **changes: object) -> Backend:
    return managed_backend(backend_id, model, **changes)


def gateway(tmp_path: Path, *backends: Backend, **changes: object) -> ContextManager[RunningGateway]:
    return managed_gateway(tmp_path, *backends, **changes)


def rows(gw: RunningGateway) -> dict[str, dict[str, Any]]:
    response = httpx.get(gw.url + "/admin/backends", timeout=10)
    assert response.status_code == 200, response.text
    return {row["id"]: row for row in response.json()}


def post(gw: RunningGateway, backend_id: str, action: str) -> httpx.Response:
    return httpx.post(f"{gw.url}/admin/backends/{backend_id}/{action}", timeout=60)


def wait_until(predicate: Callable[[], bool], what: str, timeout: float = 20.0) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.05)


def test_start_then_stop_a_managed_backend(tmp_path: Path) -> None:
    with gateway(tmp_path, managed()) as gw:
        before = rows(gw)["local"]
        assert before["state"] == "sleeping"
        assert before["managed"] is True
        assert before["pid"] is None
        assert before["models"] == [MODEL]
        assert before["uptime_seconds"] is None

        started = post(gw, "local", "start")
        assert started.status_code == 200, started.text
        row = started.json()
        assert row["state"] == "running"
        pid = row["pid"]
        assert isinstance(pid, int)
        assert process_alive(pid)
        assert row["port"] == gw.call(lambda: gw.factory.manager.units["local"].port)
        assert rows(gw)["local"]["state"] == "running"
        assert rows(gw)["local"]["uptime_seconds"] >= 0
        # the server answers on its port: the gateway routes to it without starting another
        chat = {"model": MODEL, "messages": [{"role": "user", "content": "hi"}]}
        assert httpx.post(gw.openai_url + "/chat/completions", json=chat, timeout=30).status_code == 200
        assert rows(gw)["local"]["pid"] == pid

        again = post(gw, "local", "start")  # already running: the same server
        assert again.status_code == 200
        assert again.json()["pid"] == pid

        stopped = post(gw, "local", "stop")
        assert stopped.status_code == 200, stopped.text
        assert stopped.json()["state"] == "sleeping"
        assert stopped.json()["pid"] is None
        assert not process_alive(pid)
        assert rows(gw)["local"]["state"] == "sleeping"


def test_stop_waits_for_the_requests_in_flight(tmp_path: Path) -> None:
    slow = json.dumps({"first_byte_delay_seconds": 1.0})
    backend = managed(command=(*FAKE, MODEL, "--behaviour", slow))
    chat = {"model": MODEL, "messages": [{"role": "user", "content": "hi"}]}
    with gateway(tmp_path, backend) as gw, ThreadPoolExecutor(1) as pool:
        assert post(gw, "local", "start").status_code == 200
        reply = pool.submit(httpx.post, gw.openai_url + "/chat/completions", json=chat, timeout=30)
        wait_until(lambda: rows(gw)["local"]["in_flight"] == 1, "the request to be in flight")
        stopped = post(gw, "local", "stop")
        assert reply.result(timeout=30).status_code == 200  # not cut by the stop
        assert stopped.status_code == 200
        assert stopped.json()["state"] == "sleeping"
        assert stopped.json()["in_flight"] == 0


def test_unknown_and_unmanaged_backends_are_refused(tmp_path: Path) -> None:
    with (
        running_fake_backend(models=["u"]) as upstream,
        gateway(tmp_path, managed(), Backend(id="plain", url=upstream.url, models=("u",))) as gw,
    ):
        listed = rows(gw)
        assert set(listed) == {"local", "plain"}
        assert listed["plain"]["managed"] is False
        assert listed["plain"]["pid"] is None
        for action in ("start", "stop"):
            unknown = post(gw, "nope", action)
            assert unknown.status_code == 404
            assert unknown.json()["error"]["code"] == "not_found"
            assert "nope" in unknown.json()["error"]["message"]
            plain = post(gw, "plain", action)
            assert plain.status_code == 409
            error = plain.json()["error"]
            assert error["code"] == "not_managed"
            assert "plain" in error["message"]
        assert rows(gw)["local"]["state"] == "sleeping"  # nothing was started


def test_a_failing_command_answers_503_with_its_exit_code(tmp_path: Path) -> None:
    failing = managed(command=(sys.executable, "-c", "print('no GPU found'); raise SystemExit(3)"))
    with gateway(tmp_path, failing, managed=ManagedSettings(failed_start_backoff_seconds=0.5)) as gw:
        response = post(gw, "local", "start")
        assert response.status_code == 503
        error = response.json()["error"]
        assert error["code"] == "backend_unavailable"
        assert "exited with code 3" in error["message"]
        assert "no GPU found" in error["message"]
        row = rows(gw)["local"]
        assert row["state"] == "failed"
        assert "exited with code 3" in row["last_error"]
        assert row["pid"] is None


def test_group_members_start_and_stop_through_the_scheduler(tmp_path: Path) -> None:
    members = (managed("a", "ma", group="gpu"), managed("b", "mb", group="gpu"))
    with gateway(tmp_path, *members, groups=(Group(name="gpu", max_running=1),)) as gw:
        driver = gw.factory.manager.groups["gpu"]

        def member_state(name: str) -> MemberState:
            state: MemberState = gw.call(lambda: driver.scheduler.state(name))
            return state

        started = post(gw, "a", "start")
        assert started.status_code == 200, started.text
        assert started.json()["state"] == "running"
        assert started.json()["group"] == "gpu"
        assert member_state("a") is MemberState.RUNNING
        pid_a = started.json()["pid"]

        full = post(gw, "b", "start")
        assert full.status_code == 409
        assert full.json()["error"]["code"] == "group_full"
        assert "a running" in full.json()["error"]["message"]
        assert member_state("b") is MemberState.STOPPED
        assert rows(gw)["b"]["state"] == "sleeping"
        assert process_alive(pid_a)

        stopped = post(gw, "a", "stop")
        assert stopped.status_code == 200, stopped.text
        assert stopped.json()["state"] == "sleeping"
        assert member_state("a") is MemberState.STOPPED
        assert not process_alive(pid_a)

        started_b = post(gw, "b", "start")
        assert started_b.status_code == 200, started_b.text
        assert member_state("b") is MemberState.RUNNING
        # a request for a's model swaps b out as the scheduler decides: the slot accounting is intact
        chat = {"model": "ma", "messages": [{"role": "user", "content": "hi"}]}
        assert httpx.post(gw.openai_url + "/chat/completions", json=chat, timeout=30).status_code == 200
        wait_until(lambda: member_state("b") is MemberState.STOPPED, "b to be evicted")
        assert member_state("a") is MemberState.RUNNING
        assert rows(gw)["a"]["state"] == "running"
