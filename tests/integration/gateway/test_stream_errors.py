"""Errors a backend reports inside a stream it translates: every event before the error reaches the
client, in order, then the client dialect's error event; and such an error is the model's answer, not a
failure of the backend, whichever dialect the client speaks."""

from __future__ import annotations

from collections.abc import Callable

import ollama
import openai
import pytest
from openai.types.chat import ChatCompletionMessageParam

from gatewayd.config import Backend, BackendKind, Config, HealthSettings
from gatewayd.gateway.core.health import BackendState
from tests.support.fake_backend import FakeBackend
from tests.support.fake_http import STREAM_ERROR_MESSAGE
from tests.support.fake_replies import reply_text, split_chunks
from tests.support.fixtures import FakeBackendFactory
from tests.support.gateway import RunningGateway

GatewayFactory = Callable[[Config], RunningGateway]
PROMPT = "hello there"
MESSAGES: list[ChatCompletionMessageParam] = [{"role": "user", "content": PROMPT}]
CHUNKS = 8
PIECES = split_chunks(reply_text(PROMPT), CHUNKS)
REPORTED = f"backend reported an error: {STREAM_ERROR_MESSAGE}"


def backend(fake: FakeBackend) -> Backend:
    return Backend(id="a", url=fake.url, kind=BackendKind(fake.kind.value), models=("m",))


def openai_pieces(gw: RunningGateway) -> tuple[list[str], openai.APIError]:
    """What an openai client streaming a chat from ``m`` received before the error it raised."""
    received: list[str] = []

    def read() -> None:
        for chunk in client.chat.completions.create(model="m", messages=MESSAGES, stream=True):
            received.append(chunk.choices[0].delta.content or "" if chunk.choices else "")

    client = openai.OpenAI(base_url=gw.openai_url, api_key="x", max_retries=0, timeout=10)
    with client, pytest.raises(openai.APIError) as caught:
        read()
    return received, caught.value


def ollama_pieces(gw: RunningGateway) -> tuple[list[str], ollama.ResponseError]:
    """What an ollama client streaming a chat from ``m`` received before the error it raised."""
    received: list[str] = []

    def read() -> None:
        for part in client.chat(model="m", messages=MESSAGES, stream=True):
            received.append(part.message.content or "")

    with ollama.Client(host=gw.url, timeout=10) as client, pytest.raises(ollama.ResponseError) as caught:
        read()
    return received, caught.value


@pytest.mark.parametrize("before", [3, 0], ids=["mid-stream", "first-read"])
def test_an_openai_client_gets_every_event_read_with_an_ollama_error_then_the_error(
    fake_backend_factory: FakeBackendFactory, gateway_factory: GatewayFactory, before: int
) -> None:
    fake = fake_backend_factory(models=("m",), kind="ollama", chunks=CHUNKS, error_after_chunks=before)
    gw = gateway_factory(Config(backends=(backend(fake),)))

    received, error = openai_pieces(gw)

    assert "".join(received) == "".join(PIECES[: before + 1])  # with the piece written with the error
    assert error.message == REPORTED


@pytest.mark.parametrize("before", [3, 0], ids=["mid-stream", "first-read"])
def test_an_ollama_client_gets_every_event_read_with_an_openai_error_then_the_error(
    fake_backend_factory: FakeBackendFactory, gateway_factory: GatewayFactory, before: int
) -> None:
    fake = fake_backend_factory(models=("m",), kind="openai", chunks=CHUNKS, error_after_chunks=before)
    gw = gateway_factory(Config(backends=(backend(fake),)))

    received, error = ollama_pieces(gw)

    assert "".join(received) == "".join(PIECES[: before + 1])
    assert error.error == REPORTED


@pytest.mark.parametrize(
    ("kind", "client"),
    [("ollama", "openai"), ("openai", "ollama"), ("openai", "openai"), ("ollama", "ollama")],
    ids=["translated-to-openai", "translated-to-ollama", "relayed-openai", "relayed-ollama"],
)
def test_a_reported_error_does_not_count_against_the_backend(
    fake_backend_factory: FakeBackendFactory, gateway_factory: GatewayFactory, kind: str, client: str
) -> None:
    fake = fake_backend_factory(models=("m",), kind=kind, chunks=CHUNKS, error_after_chunks=1)
    health = HealthSettings(failure_threshold=2)
    gw = gateway_factory(Config(backends=(backend(fake),), health=health))

    for _ in range(health.failure_threshold + 1):
        received, _error = openai_pieces(gw) if client == "openai" else ollama_pieces(gw)
        assert "".join(received) == "".join(PIECES[:2])

    runtime_health = gw.call(lambda: gw.generation.pool.runtimes["a"].health)
    assert runtime_health.state is BackendState.UP
    assert runtime_health.failures == 0
