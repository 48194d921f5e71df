"""X-Gatewayd-Preferred-Backend: a client that wants to stay on the backend holding its KV cache.

Honoured unless that backend is down or saturated; what became of it is said in the
``x-gatewayd-preferred-backend`` response header.
"""

from __future__ import annotations

import socket
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor

import httpx
import openai
from openai.types.chat import ChatCompletionMessageParam

from gatewayd.config import Backend, BackendKind, Config
from tests.support.fake_backend import FakeBackend
from tests.support.fixtures import FakeBackendFactory
from tests.support.gateway import RunningGateway

GatewayFactory = Callable[[Config], RunningGateway]
MODEL = "m"
MESSAGES: list[ChatCompletionMessageParam] = [{"role": "user", "content": "hello"}]
PREFER = "X-Gatewayd-Preferred-Backend"


def backend(backend_id: str, url: str, *, max_concurrency: int = 4) -> Backend:
    return Backend(
        id=backend_id, url=url, kind=BackendKind.OPENAI, models=(MODEL,), max_concurrency=max_concurrency
    )


def closed_port_url() -> str:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return f"http://127.0.0.1:{probe.getsockname()[1]}"


def two_backends(gateway_factory: GatewayFactory, a: FakeBackend, b_url: str, **b: int) -> RunningGateway:
    return gateway_factory(Config(backends=(backend("a", a.url), backend("b", b_url, **b))))


def chat(gw: RunningGateway, path: str = "/v1/chat/completions", **headers: str) -> httpx.Response:
    body = {"model": MODEL, "messages": MESSAGES, "stream": False}
    return httpx.post(gw.url + path, json=body, headers=headers, timeout=10)


def test_without_a_preference_the_first_backend_serves(
    fake_backend_factory: FakeBackendFactory, gateway_factory: GatewayFactory
) -> None:
    a, b = fake_backend_factory(models=(MODEL,)), fake_backend_factory(models=(MODEL,))
    gw = two_backends(gateway_factory, a, b.url)
    response = chat(gw)
    assert response.headers["x-gatewayd-backend"] == "a"
    assert "x-gatewayd-preferred-backend" not in response.headers


def test_a_preferred_backend_serves_even_when_second_in_order(
    fake_backend_factory: FakeBackendFactory, gateway_factory: GatewayFactory
) -> None:
    a, b = fake_backend_factory(models=(MODEL,)), fake_backend_factory(models=(MODEL,))
    gw = two_backends(gateway_factory, a, b.url)

    for path in ("/v1/chat/completions", "/api/chat"):
        response = chat(gw, path, **{PREFER: "b"})
        assert response.status_code == 200
        assert response.headers["x-gatewayd-backend"] == "b"
        assert response.headers["x-gatewayd-preferred-backend"] == "honoured"

    with openai.OpenAI(base_url=gw.openai_url, api_key="x", max_retries=0) as client:
        stream = client.chat.completions.create(
            model=MODEL,
            messages=MESSAGES,
            stream=True,
            extra_headers={PREFER: "b"},
        )
        assert stream.response.headers["x-gatewayd-backend"] == "b"
        assert stream.response.headers["x-gatewayd-preferred-backend"] == "honoured"
        list(stream)
    assert a.stats().count("/v1/chat/completions") == 0
    assert b.stats().count("/v1/chat/completions") == 3


def test_a_saturated_preferred_backend_is_passed_over_and_said_so(
    fake_backend_factory: FakeBackendFactory, gateway_factory: GatewayFactory
) -> None:
    a = fake_backend_factory(models=(MODEL,))
    b = fake_backend_factory(models=(MODEL,), hang=True)
    gw = two_backends(gateway_factory, a, b.url, max_concurrency=1)

    with ThreadPoolExecutor(max_workers=1) as pool:
        holding = pool.submit(chat, gw, **{PREFER: "b"})
        b.wait_for(lambda stats: stats.in_flight == 1)

        response = chat(gw, "/api/chat", **{PREFER: "b"})

        b.set(hang=False)
        assert holding.result().headers["x-gatewayd-backend"] == "b"
    assert response.status_code == 200
    assert response.headers["x-gatewayd-backend"] == "a"
    assert response.headers["x-gatewayd-preferred-backend"] == "saturated"


def test_a_down_preferred_backend_is_passed_over_and_said_so(
    fake_backend_factory: FakeBackendFactory, gateway_factory: GatewayFactory
) -> None:
    a = fake_backend_factory(models=(MODEL,))
    gw = two_backends(gateway_factory, a, closed_port_url())  # its first probe fails: down

    response = chat(gw, **{PREFER: "b"})

    assert response.status_code == 200
    assert response.headers["x-gatewayd-backend"] == "a"
    assert response.headers["x-gatewayd-preferred-backend"] == "down"
    assert "x-gatewayd-attempts" not in response.headers  # b was not even tried


def test_a_preferred_backend_that_does_not_serve_the_model_is_said_so(
    fake_backend_factory: FakeBackendFactory, gateway_factory: GatewayFactory
) -> None:
    a, b = fake_backend_factory(models=(MODEL,)), fake_backend_factory(models=(MODEL,))
    gw = two_backends(gateway_factory, a, b.url)
    response = chat(gw, **{PREFER: "elsewhere"})
    assert response.headers["x-gatewayd-backend"] == "a"
    assert response.headers["x-gatewayd-preferred-backend"] == "not-a-candidate"
