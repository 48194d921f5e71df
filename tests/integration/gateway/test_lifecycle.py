"""Ollama's load and unload requests (``ollama run``, ``ollama stop``) through the real gateway, with the
official ollama client: answered with ``done_reason`` "load"/"unload" and never sent upstream as a
generation; a load starts a managed backend, an unload lets it sleep once idle."""

from __future__ import annotations

import json
import sys
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import ollama
import pytest

from gatewayd.config import Backend, BackendKind, Config, ManagedSettings
from tests.support.fake_backend import FakeBackend, running_fake_backend
from tests.support.gateway import RunningGateway, running_gateway
from tests.support.managed import FAKE_COMMAND, managed_backend, managed_gateway

MODEL = "m"
GENERATIONS = ("/v1/chat/completions", "/v1/completions", "/api/chat", "/api/generate")


@pytest.fixture(scope="module")
def openai_backend() -> Iterator[tuple[RunningGateway, FakeBackend]]:
    with running_fake_backend(models=(MODEL,)) as fake:
        config = Config(backends=(Backend(id="llama", url=fake.url, kind=BackendKind.LLAMA_SERVER),))
        with running_gateway(config) as gw:
            yield gw, fake


def generations(fake: FakeBackend) -> int:
    stats = fake.stats()
    return sum(stats.count(path) for path in GENERATIONS)


def test_a_generate_without_prompt_is_a_load_and_nothing_is_generated(
    openai_backend: tuple[RunningGateway, FakeBackend],
) -> None:
    gw, fake = openai_backend
    fake.reset_stats()
    with ollama.Client(host=gw.url, timeout=30) as client:
        loaded = client.generate(model=MODEL)
        assert (loaded.done, loaded.done_reason, loaded.response) == (True, "load", "")
        assert loaded.model == MODEL
        unloaded = client.generate(model=MODEL, keep_alive=0)
        assert (unloaded.done, unloaded.done_reason) == (True, "unload")
        chat = client.chat(model=MODEL, messages=[])
        assert (chat.done, chat.done_reason, chat.message.content) == (True, "load", "")
        assert chat.message.role == "assistant"
        streamed = list(client.generate(model=MODEL, prompt="", stream=True, keep_alive="5m"))
        assert [(part.done, part.done_reason) for part in streamed] == [(True, "load")]
        stopped = list(client.chat(model=MODEL, messages=[], stream=True, keep_alive=0))
        assert [(part.done, part.done_reason) for part in stopped] == [(True, "unload")]
    assert generations(fake) == 0


def test_the_answer_streams_as_one_ndjson_line_or_is_one_object(
    openai_backend: tuple[RunningGateway, FakeBackend],
) -> None:
    gw, _ = openai_backend
    streamed = httpx.post(gw.url + "/api/generate", json={"model": MODEL}, timeout=30)
    assert streamed.status_code == 200
    assert streamed.headers["content-type"] == "application/x-ndjson"
    assert streamed.headers["x-gatewayd-backend"] == "llama"
    assert streamed.text.endswith("\n")
    assert streamed.text.count("\n") == 1
    assert json.loads(streamed.text)["done_reason"] == "load"
    whole = httpx.post(
        gw.url + "/api/chat", json={"model": MODEL, "messages": [], "stream": False}, timeout=30
    )
    assert whole.headers["content-type"] == "application/json"
    body = whole.json()
    assert body["done"] is True
    assert body["done_reason"] == "load"
    assert body["message"] == {"role": "assistant", "content": ""}


def test_a_generation_still_goes_upstream(openai_backend: tuple[RunningGateway, FakeBackend]) -> None:
    gw, fake = openai_backend
    fake.reset_stats()
    with ollama.Client(host=gw.url, timeout=30) as client:
        answer = client.generate(model=MODEL, prompt="hello there")
    assert answer.response
    assert answer.done_reason == "stop"
    assert generations(fake) == 1


def test_a_load_of_an_unknown_model_is_a_404_and_a_bad_keep_alive_a_400(
    openai_backend: tuple[RunningGateway, FakeBackend],
) -> None:
    gw, _ = openai_backend
    with ollama.Client(host=gw.url, timeout=30) as client:
        with pytest.raises(ollama.ResponseError) as missing:
            client.generate(model="nope")
        assert missing.value.status_code == 404
        with pytest.raises(ollama.ResponseError) as bad:
            client.generate(model=MODEL, keep_alive="five minutes")
        assert bad.value.status_code == 400
        assert "keep_alive" in bad.value.error


def test_an_ollama_backend_gets_the_load_as_it_is() -> None:
    with running_fake_backend(models=(MODEL,), kind="ollama") as fake:
        config = Config(backends=(Backend(id="ol", url=fake.url, kind=BackendKind.OLLAMA),))
        with running_gateway(config) as gw, ollama.Client(host=gw.url, timeout=30) as client:
            loaded = client.generate(model=MODEL)
            assert loaded.done_reason == "load"
            sent = fake.stats().last_body["/api/generate"]
            assert sent["model"] == MODEL
            assert not sent.get("prompt")


# -- managed backends -------------------------------------------------------------------------------


def unit_state(gw: RunningGateway) -> str:
    unit = gw.factory.manager.unit("local")
    assert unit is not None
    return str(gw.call(lambda: unit.state.value))


def wait_until(predicate: object, timeout: float = 30.0, what: str = "condition") -> None:
    deadline = time.monotonic() + timeout
    while not predicate():  # type: ignore[operator]
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.05)


def fake_stats(gw: RunningGateway) -> dict[str, int]:
    unit = gw.factory.manager.unit("local")
    assert unit is not None
    requests: dict[str, int] = httpx.get(unit.backend.url + "/_fake/stats", timeout=10).json()["requests"]
    return requests


@pytest.mark.slow
def test_a_load_starts_a_managed_backend_and_an_unload_lets_it_sleep(tmp_path: Path) -> None:
    with managed_gateway(tmp_path, managed_backend("local", MODEL)) as gw:
        assert unit_state(gw) == "sleeping"
        with ollama.Client(host=gw.url, timeout=60) as client:
            loaded = client.generate(model=MODEL)
            assert loaded.done_reason == "load"
            assert unit_state(gw) == "running"  # answered once the server was ready
            assert not any(path in fake_stats(gw) for path in GENERATIONS)
            unloaded = client.chat(model=MODEL, messages=[], keep_alive=0)
            assert unloaded.done_reason == "unload"
        wait_until(lambda: unit_state(gw) == "sleeping", what="the unloaded backend to sleep")


@pytest.mark.slow
def test_an_unload_waits_for_the_requests_in_flight(tmp_path: Path) -> None:
    slow = managed_backend(
        "local",
        MODEL,
        command=(*FAKE_COMMAND, MODEL, "--behaviour", '{"chunks": 40, "chunk_delay_seconds": 0.05}'),
    )
    with managed_gateway(tmp_path, slow) as gw, ollama.Client(host=gw.url, timeout=60) as client:
        stream = client.chat(model=MODEL, messages=[{"role": "user", "content": "hi"}], stream=True)
        parts = iter(stream)
        first = next(parts)
        assert not first.done
        assert client.generate(model=MODEL, keep_alive=0).done_reason == "unload"
        rest = list(parts)
        assert rest[-1].done
        assert rest[-1].done_reason == "stop"
        assert len(rest) > 5  # it was still streaming when the unload came, and ended normally
        wait_until(lambda: unit_state(gw) == "sleeping", what="the unloaded backend to sleep")


@pytest.mark.slow
def test_keep_alive_sets_the_idle_time_of_that_use(tmp_path: Path) -> None:
    with managed_gateway(tmp_path, managed_backend("local", MODEL, idle_ttl_seconds=900.0)) as gw:
        unit = gw.factory.manager.unit("local")
        assert unit is not None
        with ollama.Client(host=gw.url, timeout=60) as client:
            assert client.generate(model=MODEL, keep_alive=-1).done_reason == "load"
            assert gw.call(lambda: unit.idle_limit_seconds) == float("inf")
            (running,) = client.ps().models
            assert running.expires_at is None  # never put to sleep
            client.generate(model=MODEL, prompt="hello")  # a use without keep_alive: idle_ttl_seconds again
            assert gw.call(lambda: unit.idle_limit_seconds) == 900.0
            (running,) = client.ps().models
            assert running.expires_at is not None
            assert 800 < running.expires_at.timestamp() - time.time() <= 901
            assert client.generate(model=MODEL, prompt="hello", keep_alive="1s").response
        wait_until(lambda: unit_state(gw) == "sleeping", what="the backend to sleep after its keep_alive")


@pytest.mark.slow
def test_a_load_whose_start_fails_is_a_503_in_ollamas_shape(tmp_path: Path) -> None:
    failing = managed_backend("local", MODEL, command=(sys.executable, "-c", "raise SystemExit(3)"))
    with (
        managed_gateway(tmp_path, failing, managed=ManagedSettings(failed_start_backoff_seconds=30.0)) as gw,
        ThreadPoolExecutor(3) as pool,
    ):
        responses = list(
            pool.map(
                lambda _: httpx.post(gw.url + "/api/generate", json={"model": MODEL}, timeout=60), range(3)
            )
        )
        assert [r.status_code for r in responses] == [503] * 3
        assert all("exited with code 3" in r.json()["error"] for r in responses)
