"""The real ``gatewayd run`` in front of the fake model server, driven by the official clients, through
signals, reloads and respawns: what an operator sees when nothing may be dropped."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import ollama
import openai
import pytest

from tests.support.fake_backend import FakeBackend, running_fake_backend
from tests.support.process import REPO_ROOT, GatewaydProcess, process_alive, wait_for

pytestmark = pytest.mark.slow


def write_config(path: Path, backend_url: str, *, alias: str = "alias", drain_seconds: float = 20.0) -> Path:
    path.write_text(
        f"""
shutdown:
  drain_timeout_seconds: {drain_seconds}
  force_exit_seconds: {drain_seconds + 5}
backends:
  - id: fake
    url: {backend_url}
    models: [fake-model]
    max_concurrency: 64
routes:
  - model: {alias}
    targets: [{{backend: fake, model: fake-model}}]
"""
    )
    return path


@pytest.fixture
def backend() -> Iterator[FakeBackend]:
    with running_fake_backend(models=("fake-model",), chunks=8) as fake:
        yield fake


@pytest.fixture
def instance(tmp_path: Path, backend: FakeBackend) -> Iterator[GatewaydProcess]:
    config = write_config(tmp_path / "config.yaml", backend.url)
    with GatewaydProcess.gatewayd(tmp_path, config) as gw:
        gw.wait_ready()
        yield gw


def client(gw: GatewaydProcess) -> openai.OpenAI:
    return openai.OpenAI(base_url=gw.url("/v1"), api_key="unused", max_retries=0, timeout=30)


def cli(gw: GatewaydProcess, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "gatewayd", *args, "--state-dir", str(gw.state_dir), "--port", str(gw.port)],
        cwd=REPO_ROOT,
        capture_output=True,
        text=True,
        timeout=60,
    )


class SlowStream(threading.Thread):
    """Reads one slow stream through the openai client, recording the chunks and any error."""

    def __init__(self, gw: GatewaydProcess, model: str = "alias") -> None:
        super().__init__(daemon=True)
        self.gw = gw
        self.model = model
        self.text = ""
        self.chunks = 0
        self.error: BaseException | None = None
        self.first_chunk = threading.Event()

    def run(self) -> None:
        try:
            stream = client(self.gw).chat.completions.create(
                model=self.model, messages=[{"role": "user", "content": "slow one"}], stream=True
            )
            for chunk in stream:
                if chunk.choices and chunk.choices[0].delta.content:
                    self.text += chunk.choices[0].delta.content
                    self.chunks += 1
                    self.first_chunk.set()
        except BaseException as error:
            self.error = error
            self.first_chunk.set()


def test_sigterm_lets_a_stream_in_flight_finish_then_exits_0(
    instance: GatewaydProcess, backend: FakeBackend
) -> None:
    backend.set(chunk_delay_seconds=0.15)
    stream = SlowStream(instance)
    stream.start()
    assert stream.first_chunk.wait(10)
    instance.signal(signal.SIGTERM)
    stream.join(30)
    assert stream.error is None
    assert stream.text == "fake reply to: slow one"
    assert instance.wait_exit(30) == 0


def test_reload_under_load_drops_nothing_and_applies_the_new_config(
    tmp_path: Path, instance: GatewaydProcess, backend: FakeBackend
) -> None:
    assert instance.config_path is not None
    errors: list[str] = []
    done = threading.Event()
    answered = [0]

    def worker() -> None:
        api = client(instance)
        while not done.is_set():
            try:
                reply = api.chat.completions.create(
                    model="fake-model", messages=[{"role": "user", "content": "x"}]
                )
                assert reply.choices[0].message.content == "fake reply to: x"
                answered[0] += 1
            except Exception as error:
                errors.append(repr(error))

    workers = [threading.Thread(target=worker, daemon=True) for _ in range(8)]
    for thread in workers:
        thread.start()
    backend.set(chunk_delay_seconds=0.1)
    stream = SlowStream(instance)
    stream.start()
    assert stream.first_chunk.wait(10)
    for round_number in range(3):
        write_config(instance.config_path, backend.url, alias=f"alias{round_number}")
        result = cli(instance, "restart")
        assert result.returncode == 0, result.stdout + result.stderr
    done.set()
    for thread in workers:
        thread.join(30)
    stream.join(30)
    assert errors == []
    assert answered[0] > 0
    assert stream.error is None
    assert stream.text == "fake reply to: slow one"
    models = {m["id"] for m in instance.get("/v1/models").json()["data"]}
    assert "alias2" in models
    assert "alias" not in models
    reply = client(instance).chat.completions.create(
        model="alias2", messages=[{"role": "user", "content": "y"}]
    )
    assert reply.choices[0].message.content == "fake reply to: y"


def test_bad_config_keeps_the_old_one_serving_and_restart_says_why(
    instance: GatewaydProcess, backend: FakeBackend
) -> None:
    assert instance.config_path is not None
    instance.config_path.write_text(instance.config_path.read_text() + "\nbackendz: []\n")
    result = cli(instance, "restart")
    assert result.returncode != 0
    output = result.stdout + result.stderr
    assert "backendz" in output
    assert "did you mean 'backends'" in output
    reply = client(instance).chat.completions.create(
        model="alias", messages=[{"role": "user", "content": "z"}]
    )
    assert reply.choices[0].message.content == "fake reply to: z"
    status = json.loads(cli(instance, "status", "--json").stdout)
    assert status["generation"] == 1


def test_respawn_hands_over_to_a_new_pid_while_a_stream_finishes_on_the_old_one(
    instance: GatewaydProcess, backend: FakeBackend
) -> None:
    old_pid = instance.pid
    backend.set(chunk_delay_seconds=0.1)
    stream = SlowStream(instance)
    stream.start()
    assert stream.first_chunk.wait(10)
    result = cli(instance, "restart", "--respawn")
    assert result.returncode == 0, result.stdout + result.stderr
    record = instance.record()
    assert record is not None
    assert record.pid != old_pid
    stream.join(30)
    assert stream.error is None
    assert stream.text == "fake reply to: slow one"
    wait_for(lambda: not process_alive(old_pid), timeout=30, what="the old process to exit")
    backend.set(chunk_delay_seconds=0.0)
    response = httpx.post(
        instance.url("/api/chat"),
        json={"model": "alias", "messages": [{"role": "user", "content": "after"}], "stream": False},
        timeout=10,
    )
    assert response.status_code == 200
    assert response.json()["message"]["content"] == "fake reply to: after"
    instance.signal(signal.SIGTERM, pid=record.pid)
    wait_for(lambda: not process_alive(record.pid), timeout=30, what="the child to exit")


def test_drain_timeout_ends_a_stream_with_a_shutdown_event(tmp_path: Path, backend: FakeBackend) -> None:
    config = write_config(tmp_path / "config.yaml", backend.url, drain_seconds=1.0)
    with GatewaydProcess.gatewayd(tmp_path, config) as gw:
        gw.wait_ready()
        backend.set(chunk_delay_seconds=1.0, chunks=60)
        ollama_client = ollama.Client(host=gw.url(""), timeout=30)
        received: list[str] = []
        failure: list[BaseException] = []

        def read() -> None:
            try:
                for part in ollama_client.chat(
                    model="alias", messages=[{"role": "user", "content": "long"}], stream=True
                ):
                    received.append(part.message.content)
            except BaseException as error:
                failure.append(error)

        reader = threading.Thread(target=read, daemon=True)
        reader.start()
        wait_for(lambda: bool(received), timeout=10, what="the first chunk")
        started = time.monotonic()
        gw.signal(signal.SIGTERM)
        reader.join(20)
        assert gw.wait_exit(20) == 0
        assert time.monotonic() - started < 10
        assert failure
        assert isinstance(failure[0], ollama.ResponseError)
        assert "shutting down" in str(failure[0])


def test_models_command_lists_the_live_routes(instance: GatewaydProcess) -> None:
    result = cli(instance, "models", "--json")
    assert result.returncode == 0, result.stderr
    listed = json.loads(result.stdout)
    names = {row["name"]: row for row in listed["models"]}
    assert names["alias"]["backends"] == [{"backend": "fake", "model": "fake-model"}]
    assert names["alias"]["state"] == "running"
    assert "fake-model" in names
