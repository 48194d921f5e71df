"""A backend's 429 reaches the client with what it needs to wait and retry: the backend's Retry-After
and x-ratelimit-* headers, in the client's dialect or translated, also when every candidate answered
429 and the last answer is returned."""

from __future__ import annotations

from collections.abc import Callable

import httpx
import openai
import pytest

from gatewayd.config import Backend, BackendKind, Config
from tests.support.fake_backend import FakeBackend
from tests.support.fake_http import RATE_LIMIT_HEADERS
from tests.support.fixtures import FakeBackendFactory
from tests.support.gateway import RunningGateway

GatewayFactory = Callable[[Config], RunningGateway]
MESSAGES = [{"role": "user", "content": "hi"}]


def backend(backend_id: str, fake: FakeBackend) -> Backend:
    return Backend(id=backend_id, url=fake.url, kind=BackendKind(fake.kind.value), models=("m",))


@pytest.mark.parametrize("kind", ["openai", "ollama"], ids=["same-dialect", "translated"])
def test_an_openai_client_gets_the_backends_retry_after_and_rate_limits(
    fake_backend_factory: FakeBackendFactory, gateway_factory: GatewayFactory, kind: str
) -> None:
    limited = fake_backend_factory(models=("m",), kind=kind, fail_status=429, retry_after=7)
    gw = gateway_factory(Config(backends=(backend("a", limited),)))

    with (
        openai.OpenAI(base_url=gw.openai_url, api_key="x", max_retries=0, timeout=10) as client,
        pytest.raises(openai.RateLimitError) as caught,
    ):
        client.chat.completions.create(model="m", messages=MESSAGES)  # type: ignore[arg-type]

    headers = caught.value.response.headers
    assert headers["retry-after"] == "7"
    if kind == "openai":  # Ollama sends no rate-limit headers
        for name, value in RATE_LIMIT_HEADERS.items():
            assert headers[name] == value


def test_an_ollama_client_gets_an_openai_backends_retry_after_and_rate_limits(
    fake_backend_factory: FakeBackendFactory, gateway_factory: GatewayFactory
) -> None:
    limited = fake_backend_factory(models=("m",), kind="openai", fail_status=429, retry_after=7)
    gw = gateway_factory(Config(backends=(backend("a", limited),)))

    response = httpx.post(f"{gw.url}/api/chat", json={"model": "m", "messages": MESSAGES, "stream": False})

    assert response.status_code == 429
    assert isinstance(response.json()["error"], str)
    assert response.headers["retry-after"] == "7"
    assert response.headers["x-ratelimit-remaining-requests"] == "0"


def test_when_every_candidate_answers_429_the_last_ones_headers_are_passed_on(
    fake_backend_factory: FakeBackendFactory, gateway_factory: GatewayFactory
) -> None:
    first = fake_backend_factory(models=("m",), fail_status=429, retry_after=3)
    second = fake_backend_factory(models=("m",), fail_status=429, retry_after=9)
    gw = gateway_factory(Config(backends=(backend("a", first), backend("b", second))))

    response = httpx.post(f"{gw.url}/v1/chat/completions", json={"model": "m", "messages": MESSAGES})

    assert response.status_code == 429
    assert response.headers["x-gatewayd-attempts"] == "2"
    backend_id = response.headers["x-gatewayd-backend"]
    assert response.headers["retry-after"] == {"a": "3", "b": "9"}[backend_id]
    assert response.headers["x-ratelimit-remaining-requests"] == "0"
    assert len(response.headers.get_list("retry-after")) == 1
