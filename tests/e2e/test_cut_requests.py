"""A request cut by the gateway's own restart, with a real gatewayd and the real CLI: the client is told the
gateway is restarting (503 in its dialect, Retry-After), and its key's slot is released."""

from __future__ import annotations

import json
import threading
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from tests.support.fake_backend import spawned_fake_backend
from tests.support.process import GatewaydProcess, gatewayd_cli, wait_for

pytestmark = pytest.mark.slow

MODEL = "m"
#: the backend takes this long to answer: a restart's 1 s drain cuts the request
ANSWER_DELAY_SECONDS = 5.0


@pytest.fixture
def slow_upstream() -> Iterator[str]:
    behaviour = {"first_byte_delay_seconds": ANSWER_DELAY_SECONDS}
    with spawned_fake_backend(models=(MODEL,), behaviour=behaviour) as (_, url):
        yield url


def chat(gw: GatewaydProcess, key: str) -> httpx.Response:
    body = {"model": MODEL, "messages": [{"role": "user", "content": "hello"}], "stream": False}
    return httpx.post(gw.url("/api/chat"), json=body, headers={"Authorization": f"Bearer {key}"}, timeout=30)


ADMIN_TOKEN = "admin-token-for-the-test"


def in_flight(gw: GatewaydProcess) -> int:
    status = httpx.get(gw.url("/status"), headers={"Authorization": f"Bearer {ADMIN_TOKEN}"}, timeout=10)
    return int(status.json()["in_flight"]) - 1  # the /status request itself


def test_a_request_cut_by_a_restart_gets_a_503_and_its_key_slot_back(
    tmp_path: Path, slow_upstream: str
) -> None:
    config = tmp_path / "config.yaml"
    config.write_text(
        f"auth:\n  mode: keys\n  admin_token: {ADMIN_TOKEN}\n"
        "restart:\n  drain_timeout_seconds: 1\n"
        f"backends:\n  - id: main\n    url: {slow_upstream}\n    models: [{MODEL}]\n"
    )
    with GatewaydProcess.gatewayd(tmp_path, config, env={"GATEWAYD_CONFIG": str(config)}) as gw:
        gw.wait_ready()
        created = gatewayd_cli(
            "keys", "create", "--name", "one", "--max-concurrency", "1", "--json", state_dir=gw.state_dir
        )
        assert created.returncode == 0, created.stderr
        key = json.loads(created.stdout)["key"]
        assert chat(gw, key).status_code == 200  # (5 s) the pool holds a connection to the backend now

        answers: list[httpx.Response] = []
        cut = threading.Thread(target=lambda: answers.append(chat(gw, key)))
        cut.start()
        wait_for(lambda: in_flight(gw) == 1, timeout=10, what="the request in flight")
        restarted = gatewayd_cli("restart", state_dir=gw.state_dir, env={"GATEWAYD_CONFIG": str(config)})
        assert restarted.returncode == 0, restarted.stdout + restarted.stderr
        cut.join(30)

        assert len(answers) == 1
        answer = answers[0]
        assert answer.status_code == 503, answer.text
        assert set(answer.json()) == {"error"}  # Ollama's error shape
        assert "gateway is restarting" in answer.json()["error"]
        assert "backend" not in answer.json()["error"]
        assert int(answer.headers["retry-after"]) >= 1
        assert chat(gw, key).status_code == 200  # its concurrency slot was given back
