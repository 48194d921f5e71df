"""end_streams(): when drain time is up, every open stream gets a final shutdown event in its dialect and
closes cleanly, and its upstream request is dropped."""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Iterator

import httpx
import ollama
import openai
import pytest
from openai.types.chat import ChatCompletionChunk, ChatCompletionMessageParam

from gatewayd.config import Backend, BackendKind, Config
from tests.support.fake_backend import FakeBackend
from tests.support.fixtures import FakeBackendFactory
from tests.support.gateway import RunningGateway

GatewayFactory = Callable[[Config], RunningGateway]
MODEL = "m"
MESSAGES: list[ChatCompletionMessageParam] = [{"role": "user", "content": "a long story"}]


def slow_gateway(
    fake_backend_factory: FakeBackendFactory, gateway_factory: GatewayFactory, kind: str = "openai"
) -> tuple[RunningGateway, FakeBackend]:
    fake = fake_backend_factory(models=(MODEL,), kind=kind, chunks=200, chunk_delay_seconds=0.05)
    backend = Backend(id="a", url=fake.url, kind=BackendKind(kind), models=(MODEL,))
    return gateway_factory(Config(backends=(backend,))), fake


def consume(stream: Iterator[ChatCompletionChunk] | Iterator[ollama.ChatResponse], gw: RunningGateway) -> int:
    """Read one part, end every stream of the generation, then read on; returns the parts read."""
    count = 1
    next(stream)
    gw.call(gw.generation.end_streams)
    for _ in stream:
        count += 1
    return count


@pytest.mark.parametrize("kind", ["openai", "ollama"])
def test_an_openai_stream_ends_with_a_shutdown_error(
    fake_backend_factory: FakeBackendFactory, gateway_factory: GatewayFactory, kind: str
) -> None:
    gw, fake = slow_gateway(fake_backend_factory, gateway_factory, kind)

    with openai.OpenAI(base_url=gw.openai_url, api_key="x", max_retries=0) as client:
        stream = client.chat.completions.create(model=MODEL, messages=MESSAGES, stream=True)
        with pytest.raises(openai.APIError) as caught:
            consume(iter(stream), gw)

    assert "shutting down" in caught.value.message
    assert isinstance(caught.value.body, dict)
    assert caught.value.body["code"] == "gateway_shutdown"
    fake.wait_for(lambda stats: stats.disconnects == 1 and stats.in_flight == 0)


@pytest.mark.parametrize("kind", ["openai", "ollama"])
def test_an_ollama_stream_ends_with_a_shutdown_error(
    fake_backend_factory: FakeBackendFactory, gateway_factory: GatewayFactory, kind: str
) -> None:
    gw, fake = slow_gateway(fake_backend_factory, gateway_factory, kind)

    with ollama.Client(host=gw.url) as client, pytest.raises(ollama.ResponseError) as caught:
        consume(iter(client.chat(model=MODEL, messages=MESSAGES, stream=True)), gw)

    assert "shutting down" in caught.value.error
    fake.wait_for(lambda stats: stats.disconnects == 1 and stats.in_flight == 0)


@pytest.mark.parametrize("path", ["/v1/chat/completions", "/api/chat"])
def test_the_shutdown_event_is_the_last_one_and_the_body_ends_cleanly(
    fake_backend_factory: FakeBackendFactory, gateway_factory: GatewayFactory, path: str
) -> None:
    gw, _ = slow_gateway(fake_backend_factory, gateway_factory)

    with httpx.stream(
        "POST", gw.url + path, json={"model": MODEL, "messages": MESSAGES, "stream": True}
    ) as r:
        lines = r.iter_lines()
        first = next(lines)
        gw.call(gw.generation.end_streams)
        rest = [line for line in lines if line]  # httpx raises if the chunked body is cut short

    events = [first, *rest]
    if path.startswith("/v1/"):
        assert all(line.startswith("data: ") for line in events)
        payloads = [line.removeprefix("data: ") for line in events]
        assert "[DONE]" not in payloads
        last = json.loads(payloads[-1])
        assert last["error"]["code"] == "gateway_shutdown"
    else:
        last = json.loads(events[-1])
        assert "shutting down" in last["error"]
    assert all("error" not in json.loads(line.removeprefix("data: ")) for line in events[:-1])
    assert gw.call(gw.generation.status)["streams"] == 0


def test_a_stream_begun_after_end_streams_ends_at_once(
    fake_backend_factory: FakeBackendFactory, gateway_factory: GatewayFactory
) -> None:
    """Refused with 503 if nothing was sent yet, else ended by the shutdown event right after its first
    event (which of the two depends on whether the backend's first bytes were already in)."""
    gw, _ = slow_gateway(fake_backend_factory, gateway_factory)
    gw.call(gw.generation.end_streams)

    body = {"model": MODEL, "messages": MESSAGES, "stream": True}
    started = time.monotonic()
    response = httpx.post(gw.url + "/v1/chat/completions", json=body)

    assert time.monotonic() - started < 1.0  # the stream had ~10 s to go
    if response.status_code == 503:
        assert response.json()["error"]["code"] == "gateway_draining"
    else:
        assert response.status_code == 200
        payloads = [line.removeprefix("data: ") for line in response.text.splitlines() if line]
        assert json.loads(payloads[-1])["error"]["code"] == "gateway_shutdown"
