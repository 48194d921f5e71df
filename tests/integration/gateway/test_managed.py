"""Managed backends through the real gateway: the test model server run as a real managed command, started
on demand, shared by concurrent requests, put to sleep when idle, restarted after a crash."""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from contextlib import AbstractContextManager as ContextManager
from pathlib import Path

import httpx
import ollama
import openai
import pytest
from openai.types.chat import ChatCompletionMessageParam

from gatewayd.config import Backend, BackendKind, ManagedSettings, Wake
from tests.support.gateway import RunningGateway
from tests.support.managed import FAKE_COMMAND, managed_backend, managed_gateway
from tests.support.process import REPO_ROOT, free_port

pytestmark = pytest.mark.slow

MODEL = "m"
MESSAGES: list[ChatCompletionMessageParam] = [{"role": "user", "content": "hi"}]
CHAT = {"model": MODEL, "messages": MESSAGES}
FAKE = (*FAKE_COMMAND, MODEL)


def managed(backend_id: str = "local", **changes: object) -> Backend:
    return managed_backend(backend_id, MODEL, **changes)


def gateway(tmp_path: Path, *backends: Backend, **changes: object) -> ContextManager[RunningGateway]:
    return managed_gateway(tmp_path, *backends, **changes)


def log_of(tmp_path: Path, backend_id: str = "local") -> str:
    path = tmp_path / "state" / "backends" / f"{backend_id}.log"
    return path.read_text() if path.exists() else ""


def unit_state(gw: RunningGateway, backend_id: str = "local") -> str:
    unit = gw.factory.manager.unit(backend_id)
    assert unit is not None
    return str(gw.call(lambda: unit.state.value))


def unit_pid(gw: RunningGateway, backend_id: str = "local") -> int | None:
    unit = gw.factory.manager.unit(backend_id)
    assert unit is not None
    pid: int | None = gw.call(lambda: unit.pid)
    return pid


def wait_until(predicate: object, timeout: float = 20.0, what: str = "condition") -> None:
    deadline = time.monotonic() + timeout
    while not predicate():  # type: ignore[operator]
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.05)


def listed_state(gw: RunningGateway) -> str:
    models = httpx.get(gw.url + "/v1/models", timeout=10).json()["data"]
    return str(next(model["state"] for model in models if model["id"] == MODEL))


def ollama_client(gw: RunningGateway) -> ollama.Client:
    return ollama.Client(host=gw.url, timeout=60)


def chat(gw: RunningGateway) -> httpx.Response:
    return httpx.post(gw.openai_url + "/chat/completions", json=CHAT, timeout=60)


def port_is_free(port: int) -> bool:
    """Nothing listens there: a server may bind it (as servers do, with SO_REUSEADDR, since connections the
    old one closed may sit in TIME_WAIT)."""
    with socket.socket() as probe:
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            probe.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


def test_ten_concurrent_requests_for_a_sleeping_backend_start_it_once(tmp_path: Path) -> None:
    with gateway(tmp_path, managed()) as gw:
        assert unit_state(gw) == "sleeping"
        assert listed_state(gw) == "sleeping"
        with ThreadPoolExecutor(10) as pool:
            responses = list(pool.map(lambda _: chat(gw), range(10)))
        assert [r.status_code for r in responses] == [200] * 10
        assert {r.headers["x-gatewayd-backend"] for r in responses} == {"local"}
        assert log_of(tmp_path).count("listening on") == 1
        assert unit_state(gw) == "running"
        assert listed_state(gw) == "running"
        models = httpx.get(gw.url + "/api/ps", timeout=10).json()["models"]
        assert [model["name"] for model in models] == [MODEL]


def test_a_command_that_exits_at_once_fails_every_waiter_alike_then_is_tried_again(tmp_path: Path) -> None:
    failing = managed(command=(sys.executable, "-c", "print('no GPU found'); raise SystemExit(3)"))
    settings = ManagedSettings(failed_start_backoff_seconds=1.0)
    with gateway(tmp_path, failing, managed=settings) as gw:
        with ThreadPoolExecutor(5) as pool:
            responses = list(pool.map(lambda _: chat(gw), range(5)))
        assert [r.status_code for r in responses] == [503] * 5
        messages = {r.json()["error"]["message"] for r in responses}
        assert len(messages) == 1
        (message,) = messages
        assert "exited with code 3 before it was ready" in message
        assert "no GPU found" in message
        assert log_of(tmp_path).count("no GPU found") == 1
        assert listed_state(gw) == "failed"
        # within the backoff: the same answer, no new start
        again = httpx.post(gw.openai_url + "/chat/completions", json=CHAT, timeout=60)
        assert again.status_code == 503
        assert again.json()["error"]["message"] == message
        assert log_of(tmp_path).count("no GPU found") == 1
        time.sleep(1.2)
        later = httpx.post(gw.openai_url + "/chat/completions", json=CHAT, timeout=60)
        assert later.status_code == 503
        assert log_of(tmp_path).count("no GPU found") == 2
        ollama = httpx.post(gw.url + "/api/chat", json={**CHAT, "stream": False}, timeout=60)
        assert ollama.status_code == 503
        assert "exited with code 3" in ollama.json()["error"]


def test_an_idle_backend_is_stopped_and_its_port_freed(tmp_path: Path) -> None:
    with gateway(tmp_path, managed(idle_ttl_seconds=1.0)) as gw:
        assert httpx.post(gw.openai_url + "/chat/completions", json=CHAT, timeout=60).status_code == 200
        pid = unit_pid(gw)
        unit = gw.factory.manager.unit("local")
        assert unit is not None
        assert unit.port is not None
        port = unit.port
        assert pid is not None
        assert not port_is_free(port)
        wait_until(lambda: unit_state(gw) == "sleeping", what="the idle backend to sleep")
        assert port_is_free(port)
        with pytest.raises(ProcessLookupError):
            os.kill(pid, 0)
        assert not (tmp_path / "state" / "backends" / "local.json").exists()
        # and it wakes again on the next request
        assert httpx.post(gw.openai_url + "/chat/completions", json=CHAT, timeout=60).status_code == 200
        assert log_of(tmp_path).count("listening on") == 2


def test_a_server_killed_mid_stream_ends_the_stream_cleanly_and_is_restarted(tmp_path: Path) -> None:
    slow = managed(
        command=(*FAKE, "--behaviour", '{"chunks": 200, "chunk_delay_seconds": 0.02}'),
    )
    with (
        gateway(tmp_path, slow) as gw,
        openai.OpenAI(base_url=gw.openai_url, api_key="x", max_retries=0) as client,
    ):
        stream = client.chat.completions.create(model=MODEL, messages=MESSAGES, stream=True)
        chunks = iter(stream)
        for _ in range(5):
            next(chunks)
        pid = unit_pid(gw)
        assert pid is not None
        os.kill(pid, signal.SIGKILL)
        with pytest.raises(openai.APIError):
            list(chunks)  # the rest of the stream ends in an error event, not a normal end
        wait_until(lambda: unit_state(gw) == "sleeping", what="the crash to be noticed")
        answer = client.chat.completions.create(model=MODEL, messages=MESSAGES)
        assert answer.choices[0].message.content
        new_pid = unit_pid(gw)
        assert new_pid is not None
        assert new_pid != pid


#: a crash restarts the server after 0.2 s (0.4 s after a second crash in a row)
QUICK_RESTART = ManagedSettings(restart_backoff_seconds=0.2)


def test_the_request_right_after_a_kill_restarts_the_server_and_is_served(tmp_path: Path) -> None:
    """No wait between the kill -9 and the next request: it is refused by the dead server before the
    watcher's next poll, the manager looks at the process at once and starts it again for that request."""
    slow = managed(command=(*FAKE, "--behaviour", '{"chunks": 200, "chunk_delay_seconds": 0.02}'))
    with (
        gateway(tmp_path, slow, managed=QUICK_RESTART) as gw,
        openai.OpenAI(base_url=gw.openai_url, api_key="x", max_retries=0) as client,
    ):
        chunks = iter(client.chat.completions.create(model=MODEL, messages=MESSAGES, stream=True))
        next(chunks)
        pid = unit_pid(gw)
        assert pid is not None
        os.kill(pid, signal.SIGKILL)
        with pytest.raises(openai.APIError):
            list(chunks)
        answer = chat(gw)  # at once
        assert answer.status_code == 200, answer.text
        assert answer.headers["x-gatewayd-backend"] == "local"
        assert "x-gatewayd-attempts" not in answer.headers
        new_pid = unit_pid(gw)
        assert new_pid is not None
        assert new_pid != pid
        assert log_of(tmp_path).count("listening on") == 2


def test_a_server_that_keeps_crashing_is_not_waited_for_past_its_first_backoff(tmp_path: Path) -> None:
    """The first crash in a row is waited for (1 s); during the second one's backoff (2 s) requests get a
    503 naming it, while the restart is under way."""
    with gateway(tmp_path, managed(), managed=ManagedSettings(restart_backoff_seconds=1.0)) as gw:
        assert chat(gw).status_code == 200
        for crash in (1, 2):
            pid = unit_pid(gw)
            assert pid is not None
            os.kill(pid, signal.SIGKILL)
            answer = chat(gw)
            if crash == 1:
                assert answer.status_code == 200, answer.text  # restarted after 1 s, for this request
        assert answer.status_code == 503
        assert "crashed 2 times in a row" in answer.json()["error"]["message"]
        assert "managed.restart_backoff_seconds" in answer.json()["error"]["message"]
        assert answer.headers["retry-after"] in ("1", "2")  # what is left of the 2 s
        # the restart was started meanwhile: a request after the backoff is served
        wait_until(lambda: unit_state(gw) == "running", what="the restart after the backoff")
        assert chat(gw).status_code == 200


def test_a_woken_server_that_went_away_is_woken_again_by_the_next_request(tmp_path: Path) -> None:
    port = free_port()
    pid_file = tmp_path / "woken.pid"
    server = [*FAKE[:4], str(port), *FAKE[5:]]
    wake_script = (
        "import subprocess, sys; "
        f"p = subprocess.Popen({server!r}, cwd={str(REPO_ROOT)!r}, start_new_session=True, "
        "stdout=subprocess.DEVNULL); "
        f"open({str(pid_file)!r}, 'w').write(str(p.pid))"
    )
    remote = Backend(
        id="remote",
        url=f"http://127.0.0.1:{port}",
        kind=BackendKind.OPENAI,
        models=(MODEL,),
        wake=Wake(command=(sys.executable, "-c", wake_script)),
        start_timeout_seconds=30.0,
    )
    try:
        with gateway(tmp_path, remote) as gw:
            assert chat(gw).status_code == 200
            first = int(pid_file.read_text())
            os.killpg(first, signal.SIGKILL)  # it went to sleep on its own, as far as gatewayd can tell
            wait_until(lambda: port_is_free(port), what="the server to be gone")
            answer = chat(gw)
            assert answer.status_code == 200, answer.text
            assert int(pid_file.read_text()) != first  # the wake command ran again
    finally:
        if pid_file.exists():
            with contextlib.suppress(ProcessLookupError):
                os.killpg(int(pid_file.read_text()), signal.SIGKILL)


PROGRESS = ManagedSettings(stream_progress=True, progress_interval_seconds=0.2)
#: a llama-server that reports "loading model" for 1.5 s after it starts
loading = managed(
    kind=BackendKind.LLAMA_SERVER, command=(*FAKE, "--kind", "llama-server", "--load-seconds", "1.5")
)


def test_a_stream_waiting_for_its_server_to_load_gets_keep_alive_events(tmp_path: Path) -> None:
    loading = managed(
        kind=BackendKind.LLAMA_SERVER, command=(*FAKE, "--kind", "llama-server", "--load-seconds", "1.5")
    )
    with gateway(tmp_path, loading, managed=PROGRESS) as gw:
        body = {**CHAT, "stream": True}
        with httpx.stream("POST", gw.openai_url + "/chat/completions", json=body, timeout=60) as response:
            assert response.status_code == 200
            assert response.headers["x-gatewayd-backend"] == "local"
            lines = [line for line in response.iter_lines() if line]
        comments = [line for line in lines if line.startswith(":")]
        assert comments
        assert all(line == ": gatewayd: starting backend local" for line in comments)
        assert lines[: len(comments)] == comments  # all before the first event
        assert lines[-1] == "data: [DONE]"


def test_an_ollama_stream_waiting_for_its_server_gets_empty_messages(tmp_path: Path) -> None:
    with gateway(tmp_path, loading, managed=PROGRESS) as gw, ollama_client(gw) as client:
        parts = list(client.chat(model=MODEL, messages=MESSAGES, stream=True))
    keepalives = [part for part in parts if not part.message.content and not part.done]
    assert keepalives
    assert parts[: len(keepalives)] == keepalives
    assert "".join(part.message.content or "" for part in parts)
    assert parts[-1].done


def test_a_failed_start_after_keep_alive_events_ends_the_stream_with_an_error_event(tmp_path: Path) -> None:
    slow_failure = managed(command=(sys.executable, "-c", "import time; time.sleep(1); raise SystemExit(4)"))
    with (
        gateway(tmp_path, slow_failure, managed=PROGRESS) as gw,
        openai.OpenAI(base_url=gw.openai_url, api_key="x", max_retries=0) as client,
    ):
        stream = client.chat.completions.create(model=MODEL, messages=MESSAGES, stream=True)
        with pytest.raises(openai.APIError, match="exited with code 4"):
            list(stream)


def test_a_sleeping_remote_server_is_woken_by_its_wake_command(tmp_path: Path) -> None:
    port = free_port()
    pid_file = tmp_path / "woken.pid"
    server = [*FAKE[:4], str(port), *FAKE[5:]]
    wake_script = (
        "import subprocess, sys; "
        f"p = subprocess.Popen({server!r}, cwd={str(REPO_ROOT)!r}, start_new_session=True, "
        "stdout=subprocess.DEVNULL); "
        f"open({str(pid_file)!r}, 'w').write(str(p.pid))"
    )
    remote = Backend(
        id="remote",
        url=f"http://127.0.0.1:{port}",
        kind=BackendKind.OPENAI,
        models=(MODEL,),
        wake=Wake(command=(sys.executable, "-c", wake_script)),
        start_timeout_seconds=30.0,
    )
    try:
        with gateway(tmp_path, remote) as gw:
            assert listed_state(gw) == "sleeping"
            with ThreadPoolExecutor(4) as pool:
                responses = list(pool.map(lambda _: chat(gw), range(4)))
            assert [r.status_code for r in responses] == [200] * 4, responses[0].text
            assert {r.headers["x-gatewayd-backend"] for r in responses} == {"remote"}
            assert pid_file.exists()  # woken once: a second wake would have rewritten it after a failure
            assert listed_state(gw) == "running"
    finally:
        if pid_file.exists():
            os.killpg(int(pid_file.read_text()), signal.SIGKILL)


def test_a_wake_command_that_fails_is_a_clear_503(tmp_path: Path) -> None:
    remote = Backend(
        id="remote",
        url=f"http://127.0.0.1:{free_port()}",
        kind=BackendKind.OPENAI,
        models=(MODEL,),
        wake=Wake(command=(sys.executable, "-c", "import sys; sys.exit('no route to host')")),
    )
    with gateway(tmp_path, remote) as gw:
        response = chat(gw)
    assert response.status_code == 503
    message = response.json()["error"]["message"]
    assert "the wake command exited with code 1" in message
    assert "no route to host" in message


def test_a_request_its_kind_cannot_serve_does_not_start_a_sleeping_backend(tmp_path: Path) -> None:
    vllm = managed(kind=BackendKind.VLLM)  # vLLM cannot fill in the middle
    with gateway(tmp_path, vllm) as gw:
        body = {"model": MODEL, "prompt": "def f(", "suffix": "return 1"}
        response = httpx.post(gw.openai_url + "/completions", json=body, timeout=10)

        assert response.status_code == 400
        assert response.json()["error"]["message"].startswith(
            "backend local (vllm) cannot fill in the middle"
        )
        assert unit_state(gw) == "sleeping"
        assert log_of(tmp_path) == ""
