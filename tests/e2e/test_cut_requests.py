"""Requests cut by the gateway's own restart, with a real gatewayd and the real CLI: the client is told the
gateway is restarting (503 in its dialect, Retry-After), and its key's slot is released; and whatever a run
of requests, dropped clients, server deaths, reloads and a respawn does, every slot comes back."""

from __future__ import annotations

import contextlib
import functools
import json
import os
import random
import signal
import sys
import threading
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.support.fake_backend import spawned_fake_backend
from tests.support.managed import kill_left_servers
from tests.support.process import REPO_ROOT, GatewaydProcess, gatewayd_cli, wait_for

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


# --- the invariant: whatever happens to requests, every slot comes back -------------------------------

#: seeds of the random runs (each run is bounded: STEPS steps of at most three operations)
SEEDS = (7, 2026)
STEPS = 8
ACTIONS = ("request", "request", "drop", "kill", "reload", "respawn")
#: statuses a request may end with while the run breaks things (never a 500, never an empty body)
EXPECTED_STATUSES = frozenset({200, 429, 502, 503, 504})
GROUP_MODEL = "mm"
#: backend a answers in about a second: longer than the drain, so reloads cut requests waiting for it
SLOW_UPSTREAM = {"first_byte_delay_seconds": 2.0, "chunks": 20, "chunk_delay_seconds": 0.02}


def invariant_config(tmp_path: Path, upstream: str) -> Path:
    argv = [sys.executable, "-m", "tests.support.fake_backend", "--port", "${PORT}", "--models", GROUP_MODEL,
            "--behaviour", json.dumps({"chunks": 20, "chunk_delay_seconds": 0.02})]  # fmt: skip
    config = tmp_path / "config.yaml"
    config.write_text(
        f"auth:\n  mode: keys\n  admin_token: {ADMIN_TOKEN}\n"
        "restart:\n  drain_timeout_seconds: 0.3\n  respawn_ready_timeout_seconds: 30\n"
        "limits:\n  queue_size: 2\n  queue_timeout_seconds: 2\n"
        "managed:\n  restart_backoff_seconds: 0.1\n"
        "groups:\n  - name: gpu\n    max_running: 1\n"
        "backends:\n"
        f"  - id: a\n    url: {upstream}\n    models: [{MODEL}]\n    max_concurrency: 1\n"
        f"  - id: local\n    kind: openai\n    command: {json.dumps(argv)}\n"
        f"    cwd: {json.dumps(str(REPO_ROOT))}\n    models: [{GROUP_MODEL}]\n    group: gpu\n"
        "    max_concurrency: 1\n    start_timeout_seconds: 30\n"
    )
    return config


class Operation(threading.Thread):
    """One client request on a thread: whole, or a stream the client drops after its first line."""

    def __init__(self, gw: GatewaydProcess, key: str, *, model: str, path: str, drop: bool) -> None:
        super().__init__(daemon=True)
        self.gw, self.key, self.model, self.path, self.drop = gw, key, model, path, drop
        self.outcome: tuple[int, str] | None = None
        self.start()

    def run(self) -> None:
        body = {"model": self.model, "messages": [{"role": "user", "content": "hi"}], "stream": self.drop}
        headers = {"Authorization": f"Bearer {self.key}"}
        try:
            with (
                httpx.Client(timeout=30) as client,
                client.stream("POST", self.gw.url(self.path), json=body, headers=headers) as response,
            ):
                if self.drop and response.status_code == 200:
                    next(response.iter_lines())
                    self.outcome = (200, "dropped")
                    return  # leaving the block closes the connection mid-stream
                self.outcome = (response.status_code, response.read().decode())
        except httpx.HTTPError as error:  # the connection was cut: a stream's end during a respawn
            self.outcome = (0, repr(error))


def admin(gw: GatewaydProcess, path: str) -> Any:
    return httpx.get(gw.url(path), headers={"Authorization": f"Bearer {ADMIN_TOKEN}"}, timeout=10).json()


def settled(gw: GatewaydProcess) -> bool:
    """Nothing in flight or queued anywhere: the generation, every backend, the group's queue."""
    try:
        status = admin(gw, "/status")
        rows = admin(gw, "/admin/backends")
    except (httpx.HTTPError, ValueError, KeyError):
        return False
    return (
        status["in_flight"] == 1  # the /status request itself
        and status["queued"] == 0
        and all(row["in_flight"] == 0 and row["queued"] == 0 for row in rows)
    )


def arrived(gw: GatewaydProcess, running: list[Operation]) -> bool:
    """Every request launched is in the gateway (or already answered)."""
    try:
        in_flight = admin(gw, "/status")["in_flight"] - 1
    except (httpx.HTTPError, ValueError, KeyError):
        return False
    return in_flight >= sum(1 for operation in running if operation.outcome is None)


def kill_managed_server(gw: GatewaydProcess) -> None:
    rows = admin(gw, "/admin/backends")
    pid = next(row["pid"] for row in rows if row["id"] == "local")
    if pid is not None:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)


@pytest.mark.parametrize("seed", SEEDS)
def test_after_random_requests_drops_deaths_and_reloads_every_slot_is_free(tmp_path: Path, seed: int) -> None:
    rng = random.Random(seed)
    with spawned_fake_backend(models=(MODEL,), behaviour=SLOW_UPSTREAM) as (_, upstream):
        config = invariant_config(tmp_path, upstream)
        with GatewaydProcess.gatewayd(tmp_path, config, env={"GATEWAYD_CONFIG": str(config)}) as gw:
            try:
                gw.wait_ready()
                created = gatewayd_cli(
                    "keys",
                    "create",
                    "--name",
                    "k",
                    "--max-concurrency",
                    "2",
                    "--json",
                    state_dir=gw.state_dir,
                )
                assert created.returncode == 0, created.stderr
                key = json.loads(created.stdout)["key"]
                respawned = False
                outcomes: list[tuple[int, str]] = []
                for _ in range(STEPS):
                    actions = [rng.choice(ACTIONS) for _ in range(rng.randint(1, 3))]
                    running = [
                        Operation(
                            gw,
                            key,
                            model=rng.choice((MODEL, GROUP_MODEL)),
                            path=rng.choice(("/v1/chat/completions", "/api/chat")),
                            drop=action == "drop",
                        )
                        for action in actions
                        if action in ("request", "drop")
                    ]
                    if len(running) < len(actions):  # the disruptions hit requests under way
                        wait_for(
                            functools.partial(arrived, gw, running), timeout=20, what="the requests to arrive"
                        )
                    for action in actions:
                        if action == "kill":
                            kill_managed_server(gw)
                        elif action in ("reload", "respawn"):
                            args = ("--respawn",) if action == "respawn" and not respawned else ()
                            respawned = respawned or bool(args)
                            result = gatewayd_cli(
                                "restart", *args, state_dir=gw.state_dir, env={"GATEWAYD_CONFIG": str(config)}
                            )
                            assert result.returncode == 0, result.stdout + result.stderr
                    for operation in running:
                        operation.join(60)
                        assert operation.outcome is not None
                        outcomes.append(operation.outcome)
                for status, body in outcomes:
                    if status == 0:
                        continue
                    assert status in EXPECTED_STATUSES, body
                    if status != 200:
                        assert json.loads(body)["error"], body  # an error body in the dialect, never empty
                wait_for(lambda: settled(gw), timeout=30, what="every counter back to zero")
                # a server killed twice in a row is restarted after its backoff: wait for it to serve
                wait_for(lambda: chat_model(gw, key, GROUP_MODEL).status_code == 200, timeout=30,
                         what="the managed server to serve again")  # fmt: skip
                # the key's concurrency (2) is whole again, and the group admits again
                with ThreadPoolExecutor(2) as pool:
                    answers = list(
                        pool.map(
                            lambda model: chat_model(gw, key, model), (MODEL, GROUP_MODEL, MODEL, GROUP_MODEL)
                        )
                    )
                assert [a.status_code for a in answers] == [200] * 4, [a.text[-300:] for a in answers]
                assert "Traceback" not in gw.logs()
            finally:
                kill_left_servers(gw.state_dir)


def chat_model(gw: GatewaydProcess, key: str, model: str) -> httpx.Response:
    body = {"model": model, "messages": [{"role": "user", "content": "hi"}], "stream": False}
    headers = {"Authorization": f"Bearer {key}"}
    return httpx.post(gw.url("/v1/chat/completions"), json=body, headers=headers, timeout=60)
