"""Fallback before the first byte: connection errors, 5xx and 429 move a request to the next backend,
other upstream errors are passed on in the client's dialect, and attempts are bounded."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import httpx
import ollama
import openai
import pytest
from openai.types.chat import ChatCompletionMessageParam

from gatewayd.config import Backend, BackendKind, Config, Limits
from tests.support.fake_backend import FakeBackend
from tests.support.fake_replies import reply_text
from tests.support.fixtures import FakeBackendFactory
from tests.support.gateway import RunningGateway

GatewayFactory = Callable[[Config], RunningGateway]
MODEL = "m"
MESSAGES: list[ChatCompletionMessageParam] = [{"role": "user", "content": "hello"}]
CHAT = "/v1/chat/completions"


def backend(backend_id: str, fake: FakeBackend) -> Backend:
    return Backend(id=backend_id, url=fake.url, kind=BackendKind(fake.kind.value), models=(MODEL,))


def chat(gw: RunningGateway, **headers: str) -> httpx.Response:
    body = {"model": MODEL, "messages": MESSAGES}
    return httpx.post(gw.openai_url + "/chat/completions", json=body, headers=headers)


def openai_client(gw: RunningGateway) -> openai.OpenAI:
    return openai.OpenAI(base_url=gw.openai_url, api_key="x", max_retries=0, timeout=10)


def test_connection_refused_falls_back_to_the_next_backend(
    fake_backend_factory: FakeBackendFactory, gateway_factory: GatewayFactory
) -> None:
    first, second = fake_backend_factory(models=(MODEL,)), fake_backend_factory(models=(MODEL,))
    gw = gateway_factory(Config(backends=(backend("a", first), backend("b", second))))
    first.close()  # probed up at start; now its port refuses connections

    response = chat(gw)

    assert response.status_code == 200
    assert response.headers["x-gatewayd-backend"] == "b"
    assert response.headers["x-gatewayd-attempts"] == "2"
    assert response.json()["choices"][0]["message"]["content"] == reply_text("hello")


@pytest.mark.parametrize("status", [500, 502, 503, 429])
def test_a_retryable_status_before_the_first_byte_falls_back(
    fake_backend_factory: FakeBackendFactory, gateway_factory: GatewayFactory, status: int
) -> None:
    first = fake_backend_factory(models=(MODEL,), fail_status=status)
    second = fake_backend_factory(models=(MODEL,))
    gw = gateway_factory(Config(backends=(backend("a", first), backend("b", second))))

    with openai_client(gw) as client:
        raw = client.chat.completions.with_raw_response.create(model=MODEL, messages=MESSAGES)

    assert raw.parse().choices[0].message.content == reply_text("hello")
    assert raw.headers["x-gatewayd-backend"] == "b"
    assert raw.headers["x-gatewayd-attempts"] == "2"
    assert first.stats().count(CHAT) == 1
    assert second.stats().count(CHAT) == 1


def test_a_stream_falls_back_before_its_first_byte(
    fake_backend_factory: FakeBackendFactory, gateway_factory: GatewayFactory
) -> None:
    first = fake_backend_factory(models=(MODEL,), fail_status=503)
    second = fake_backend_factory(models=(MODEL,))
    gw = gateway_factory(Config(backends=(backend("a", first), backend("b", second))))

    with openai_client(gw) as client:
        stream = client.chat.completions.create(model=MODEL, messages=MESSAGES, stream=True)
        text = "".join(chunk.choices[0].delta.content or "" for chunk in stream)

    assert text == reply_text("hello")
    assert stream.response.headers["x-gatewayd-backend"] == "b"
    assert stream.response.headers["x-gatewayd-attempts"] == "2"


def test_fallback_crosses_dialects(
    fake_backend_factory: FakeBackendFactory, gateway_factory: GatewayFactory
) -> None:
    first = fake_backend_factory(models=(MODEL,), kind="ollama", fail_status=500)
    second = fake_backend_factory(models=(MODEL,), kind="openai")
    gw = gateway_factory(Config(backends=(backend("a", first), backend("b", second))))

    with ollama.Client(host=gw.url) as client:
        parts = list(client.chat(model=MODEL, messages=MESSAGES, stream=True))

    assert "".join(p.message.content or "" for p in parts) == reply_text("hello")
    assert first.stats().count("/api/chat") == 1
    assert second.stats().count(CHAT) == 1


def test_a_400_from_the_backend_is_passed_on_to_an_openai_client_and_not_retried(
    fake_backend_factory: FakeBackendFactory, gateway_factory: GatewayFactory
) -> None:
    first = fake_backend_factory(models=(MODEL,), fail_status=400)
    second = fake_backend_factory(models=(MODEL,))
    gw = gateway_factory(Config(backends=(backend("a", first), backend("b", second))))

    with openai_client(gw) as client, pytest.raises(openai.BadRequestError) as caught:
        client.chat.completions.create(model=MODEL, messages=MESSAGES)

    assert caught.value.status_code == 400
    assert caught.value.body == {
        "message": "fake backend failure (HTTP 400)",
        "type": "invalid_request_error",
        "param": None,
        "code": None,
    }
    assert caught.value.response.headers["x-gatewayd-backend"] == "a"
    assert "x-gatewayd-attempts" not in caught.value.response.headers
    assert second.stats().count(CHAT) == 0


@pytest.mark.parametrize("kind", ["openai", "ollama"])
def test_a_400_from_the_backend_reaches_an_ollama_client_in_its_dialect(
    fake_backend_factory: FakeBackendFactory, gateway_factory: GatewayFactory, kind: str
) -> None:
    first = fake_backend_factory(models=(MODEL,), kind=kind, fail_status=400)
    second = fake_backend_factory(models=(MODEL,))
    gw = gateway_factory(Config(backends=(backend("a", first), backend("b", second))))

    response = httpx.post(gw.url + "/api/chat", json={"model": MODEL, "messages": MESSAGES})
    assert response.status_code == 400
    assert response.json() == {"error": "fake backend failure (HTTP 400)"}
    with ollama.Client(host=gw.url) as client, pytest.raises(ollama.ResponseError) as caught:
        client.chat(model=MODEL, messages=MESSAGES)
    assert caught.value.status_code == 400
    assert caught.value.error == "fake backend failure (HTTP 400)"
    assert second.stats().total_requests - second.stats().count("/v1/models") == 0


def test_an_ollama_backend_error_reaches_an_openai_client_as_an_error_object(
    fake_backend_factory: FakeBackendFactory, gateway_factory: GatewayFactory
) -> None:
    only = fake_backend_factory(models=(MODEL,), kind="ollama", fail_status=422)
    gw = gateway_factory(Config(backends=(backend("a", only),)))

    response = chat(gw)

    assert response.status_code == 422
    error: dict[str, Any] = response.json()["error"]
    assert error["message"] == "fake backend failure (HTTP 422)"
    assert error["type"] == "invalid_request_error"


def test_attempts_are_bounded_by_max_attempts(
    fake_backend_factory: FakeBackendFactory, gateway_factory: GatewayFactory
) -> None:
    fakes = [fake_backend_factory(models=(MODEL,), fail_status=500) for _ in range(3)]
    config = Config(
        backends=tuple(backend(name, fake) for name, fake in zip("abc", fakes, strict=True)),
        limits=Limits(max_attempts=2),
    )
    gw = gateway_factory(config)

    response = chat(gw, **{"X-Request-Id": "bounded"})

    assert response.status_code == 500
    assert response.headers["x-gatewayd-attempts"] == "2"
    assert response.headers["x-gatewayd-backend"] == "b"  # whose answer is passed on
    assert response.headers["x-request-id"] == "bounded"
    assert response.json()["error"]["message"] == "fake backend failure (HTTP 500)"
    assert [fake.stats().count(CHAT) for fake in fakes] == [1, 1, 0]


def test_every_backend_unreachable_is_a_503_naming_the_last_error(
    fake_backend_factory: FakeBackendFactory, gateway_factory: GatewayFactory
) -> None:
    first, second = fake_backend_factory(models=(MODEL,)), fake_backend_factory(models=(MODEL,))
    gw = gateway_factory(Config(backends=(backend("a", first), backend("b", second))))
    first.close()
    second.close()

    response = chat(gw)

    assert response.status_code == 503
    assert response.headers["x-gatewayd-attempts"] == "2"
    assert response.headers["x-gatewayd-backend"] == "b"
    error = response.json()["error"]
    assert error["code"] == "backend_unavailable"
    assert "backend b is unreachable" in error["message"]
