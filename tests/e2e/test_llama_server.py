"""gatewayd in front of the real llama.cpp llama-server, loaded with a tiny generated model
(tests/support/tiny_gguf.py): as a managed backend that gatewayd starts on demand and stops with itself, and
as a plain backend whose model is discovered.

Skipped unless a llama-server binary is found (GATEWAYD_LLAMA_SERVER, else where scripts/build-llama-server
puts it, else llama-server on PATH) and the ``gguf`` package is installed.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
from collections.abc import Iterator
from pathlib import Path

import anthropic
import httpx
import ollama
import openai
import pytest
from openai.types.chat import ChatCompletionMessageParam

from tests.support.managed import kill_left_servers
from tests.support.process import GatewaydProcess, free_port, process_alive, wait_for

MODEL = "tiny"
BACKEND_ID = "llama"
#: llama-server's parallel slots: /status reports them all idle between requests
SLOTS = 2
MAX_TOKENS = 4
#: loading the tiny model takes well under a second; this bounds a slow shared machine
START_TIMEOUT_SECONDS = 30.0


def find_llama_server() -> str | None:
    """The llama-server binary to test against, or None."""
    explicit = os.environ.get("GATEWAYD_LLAMA_SERVER")
    if explicit:
        return explicit if os.access(explicit, os.X_OK) else None
    cache = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    built = Path(os.environ.get("GATEWAYD_LLAMA_CACHE") or Path(cache, "gatewayd", "llama-server"))
    if os.access(built / "llama-server", os.X_OK):
        return str(built / "llama-server")
    return shutil.which("llama-server")


LLAMA_SERVER = find_llama_server()

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(
        LLAMA_SERVER is None,
        reason="no llama-server binary (scripts/build-llama-server builds one; or set GATEWAYD_LLAMA_SERVER)",
    ),
]


def server_args(binary: str, port: str, model_path: str) -> list[str]:
    return [
        binary, "--port", port, "-m", model_path, "-c", "256", "--parallel", str(SLOTS),
        "--threads", "1", "--slots", "--alias", MODEL,
    ]  # fmt: skip


@pytest.fixture
def model_path(tmp_path: Path) -> Path:
    pytest.importorskip("gguf", reason="the gguf package writes the test model (pip install gguf)")
    from tests.support.tiny_gguf import write_tiny_gguf

    return write_tiny_gguf(tmp_path / "tiny.gguf")


@pytest.fixture
def managed_config(tmp_path: Path, model_path: Path) -> Iterator[Path]:
    """A config with one managed llama-server. At the end, a server a failed test left behind is killed
    through its record (it runs in a session of its own, out of reach of gatewayd's process group)."""
    assert LLAMA_SERVER is not None
    path = tmp_path / "config.yaml"
    path.write_text(
        "health:\n"
        "  probe_interval_busy_seconds: 0.2\n"
        "  probe_interval_idle_seconds: 0.2\n"
        "backends:\n"
        f"  - id: {BACKEND_ID}\n"
        "    kind: llama-server\n"
        f"    command: {json.dumps(server_args(LLAMA_SERVER, '${PORT}', '${MODEL_PATH}'))}\n"
        f"    model_path: {json.dumps(str(model_path))}\n"
        f"    models: [{MODEL}]\n"
        f"    start_timeout_seconds: {START_TIMEOUT_SECONDS}\n"
    )
    yield path
    kill_left_servers(tmp_path / "state")


def record(gw: GatewaydProcess) -> dict[str, object] | None:
    try:
        return dict(json.loads((gw.state_dir / "backends" / f"{BACKEND_ID}.json").read_text()))
    except (FileNotFoundError, ValueError):
        return None


def openai_client(gw: GatewaydProcess) -> openai.OpenAI:
    return openai.OpenAI(base_url=gw.url("/v1"), api_key="unused", max_retries=0, timeout=60)


def backend_row(gw: GatewaydProcess) -> dict[str, object]:
    rows = gw.get("/status").json()["backends"]
    return next(row for row in rows if row["id"] == BACKEND_ID)


def user(text: str) -> list[ChatCompletionMessageParam]:
    return [{"role": "user", "content": text}]


def test_a_managed_llama_server_serves_both_dialects(managed_config: Path, tmp_path: Path) -> None:
    with GatewaydProcess.gatewayd(tmp_path, managed_config) as gw, openai_client(gw) as client:
        gw.wait_ready()
        assert record(gw) is None  # started on demand, not before

        raw = client.chat.completions.with_raw_response.create(
            model=MODEL, messages=user("Say hello."), max_tokens=MAX_TOKENS
        )
        assert raw.headers["x-gatewayd-backend"] == BACKEND_ID
        completion = raw.parse()
        choice = completion.choices[0]
        assert choice.message.content is not None
        assert choice.message.content.split() == ["tiny"] * MAX_TOKENS  # what the tiny model always says
        assert choice.finish_reason == "length"
        assert completion.usage is not None
        assert completion.usage.completion_tokens == MAX_TOKENS
        assert record(gw) is not None

        with client.chat.completions.with_streaming_response.create(
            model=MODEL, messages=user("Again, streamed."), max_tokens=MAX_TOKENS, stream=True
        ) as streamed:
            assert streamed.headers["x-gatewayd-backend"] == BACKEND_ID
            chunks = list(streamed.parse())
        text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
        assert text.split() == ["tiny"] * MAX_TOKENS
        assert [c.choices[0].finish_reason for c in chunks if c.choices][-1] == "length"

        with ollama.Client(host=gw.url(), timeout=60) as oll:
            answer = oll.chat(
                model=MODEL, messages=[{"role": "user", "content": "And in Ollama's dialect?"}],
                options={"num_predict": MAX_TOKENS},
            )  # fmt: skip
        assert answer.message.content is not None
        assert answer.message.content.split() == ["tiny"] * MAX_TOKENS
        assert answer.done

        # the probes read llama-server's /slots: every slot is idle once the requests are done
        wait_for(lambda: backend_row(gw)["idle_slots"] == SLOTS, timeout=10, what="idle slots in /status")
        row = backend_row(gw)
        assert row["kind"] == "llama-server"
        assert row["state"] == "up"
        assert MODEL in row["models"]  # type: ignore[operator]


def test_a_managed_llama_server_serves_messages_and_responses(managed_config: Path, tmp_path: Path) -> None:
    """/v1/messages and /v1/responses translated for llama-server's chat completions; count_tokens counted
    by its own tokenizer."""
    with GatewaydProcess.gatewayd(tmp_path, managed_config) as gw:
        gw.wait_ready()
        ask = [{"role": "user", "content": "Say hello."}]
        with anthropic.Anthropic(base_url=gw.url(), api_key="unused", max_retries=0, timeout=60) as claude:
            message = claude.messages.create(model=MODEL, max_tokens=MAX_TOKENS, messages=ask)  # type: ignore[arg-type]
            assert message.content[0].text.split() == ["tiny"] * MAX_TOKENS  # type: ignore[union-attr]
            assert message.stop_reason == "max_tokens"
            with claude.messages.stream(model=MODEL, max_tokens=MAX_TOKENS, messages=ask) as stream:  # type: ignore[arg-type]
                assert "".join(stream.text_stream).split() == ["tiny"] * MAX_TOKENS
            counted = claude.messages.with_raw_response.count_tokens(model=MODEL, messages=ask)  # type: ignore[arg-type]
            assert counted.headers["x-gatewayd-token-count"] == "backend"
            assert counted.parse().input_tokens > 0
        with openai_client(gw) as client:
            response = client.responses.create(model=MODEL, input="Say hello.", max_output_tokens=MAX_TOKENS)
            assert response.output_text.split() == ["tiny"] * MAX_TOKENS
            assert response.status == "incomplete"
            with client.responses.stream(model=MODEL, input="Again.", max_output_tokens=MAX_TOKENS) as stream:
                events = list(stream)
            text = "".join(e.delta for e in events if e.type == "response.output_text.delta")
            assert text.split() == ["tiny"] * MAX_TOKENS
            assert events[-1].type == "response.incomplete"  # the token limit, as OpenAI reports it


def test_stopping_gatewayd_stops_its_llama_server(managed_config: Path, tmp_path: Path) -> None:
    with GatewaydProcess.gatewayd(tmp_path, managed_config) as gw, openai_client(gw) as client:
        gw.wait_ready()
        client.chat.completions.create(model=MODEL, messages=user("hi"), max_tokens=1)
        found = record(gw)
        assert found is not None
        server = int(found["pid"])  # type: ignore[call-overload]
        assert process_alive(server)
        assert gw.stop() == 0
        wait_for(lambda: not process_alive(server), timeout=20, what="llama-server to exit")
        assert record(gw) is None


def test_a_plain_llama_server_backend_has_its_model_discovered(model_path: Path, tmp_path: Path) -> None:
    assert LLAMA_SERVER is not None
    port = free_port()
    with (tmp_path / "llama-server.log").open("wb") as log:
        server = subprocess.Popen(
            server_args(LLAMA_SERVER, str(port), str(model_path)),
            stdin=subprocess.DEVNULL, stdout=log, stderr=log, start_new_session=True,
        )  # fmt: skip
    try:
        wait_for(lambda: _healthy(port), timeout=START_TIMEOUT_SECONDS, what="llama-server to load the model")
        config = tmp_path / "plain.yaml"
        config.write_text(
            f"backends:\n  - id: {BACKEND_ID}\n    kind: llama-server\n    url: http://127.0.0.1:{port}\n"
        )
        with GatewaydProcess.gatewayd(tmp_path, config) as gw, openai_client(gw) as client:
            gw.wait_ready()
            # no models: in the config: the name comes from llama-server's /v1/models (its --alias)
            assert MODEL in [model.id for model in client.models.list()]
            completion = client.chat.completions.create(
                model=MODEL, messages=user("hi"), max_tokens=MAX_TOKENS
            )
            assert completion.choices[0].message.content is not None
            assert completion.choices[0].message.content.split() == ["tiny"] * MAX_TOKENS
            assert gw.stop() == 0
        assert server.poll() is None  # gatewayd leaves a server it did not start alone
    finally:
        os.killpg(server.pid, signal.SIGKILL)
        server.wait(10)


def _healthy(port: int) -> bool:
    try:
        return httpx.get(f"http://127.0.0.1:{port}/health", timeout=1).status_code == 200
    except httpx.HTTPError:
        return False
