"""Zero-config discovery of model servers on loopback, and the inventory refresh an unknown model triggers."""

from __future__ import annotations

import socket
import time
from collections.abc import Callable

import httpx
import ollama
import openai
from openai.types.chat import ChatCompletionMessageParam

from gatewayd.config import Backend, BackendKind, Config, DiscoverySettings, HealthSettings
from tests.support.fake_backend import FakeBackend
from tests.support.fake_replies import reply_text
from tests.support.fixtures import FakeBackendFactory
from tests.support.gateway import RunningGateway

GatewayFactory = Callable[[Config], RunningGateway]
MESSAGES: list[ChatCompletionMessageParam] = [{"role": "user", "content": "hello"}]
WAIT_SECONDS = 5.0
#: probe loops in these tests never run a second round on their own
NO_REPROBE = HealthSettings(probe_interval_idle_seconds=60.0, probe_interval_busy_seconds=60.0)


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def discovering(*ports: tuple[int, BackendKind]) -> Config:
    return Config(
        discovery=DiscoverySettings(enabled=True, host="127.0.0.1", ports=ports, interval_seconds=0.2),
        health=NO_REPROBE,
    )


def listed_models(gw: RunningGateway) -> list[str]:
    return [model["id"] for model in httpx.get(gw.openai_url + "/models").json()["data"]]


def test_discovery_finds_a_running_server_and_serves_its_models(
    fake_backend_factory: FakeBackendFactory, gateway_factory: GatewayFactory
) -> None:
    fake = fake_backend_factory(models=("llama3:latest", "qwen"), kind="ollama")
    gw = gateway_factory(
        discovering((fake.port, BackendKind.OLLAMA), (free_port(), BackendKind.LLAMA_SERVER))
    )

    assert sorted(listed_models(gw)) == ["llama3:latest", "qwen"]
    with openai.OpenAI(base_url=gw.openai_url, api_key="x", max_retries=0) as client:
        raw = client.chat.completions.with_raw_response.create(model="llama3", messages=MESSAGES)
    assert raw.parse().choices[0].message.content == reply_text("hello")
    assert raw.headers["x-gatewayd-backend"] == f"ollama-{fake.port}"
    assert fake.stats().last_body["/api/chat"]["model"] == "llama3:latest"
    status = gw.call(gw.generation.status)
    assert (status["backends_total"], status["backends_up"]) == (1, 1)


def test_a_server_started_later_is_found_by_the_periodic_recheck(gateway_factory: GatewayFactory) -> None:
    later_port = free_port()
    gw = gateway_factory(discovering((later_port, BackendKind.OPENAI)))
    assert gw.call(gw.generation.status)["backends_total"] == 0
    assert listed_models(gw) == []

    with FakeBackend(models=("late-model",), port=later_port):
        deadline = time.monotonic() + WAIT_SECONDS
        while "late-model" not in listed_models(gw):
            assert time.monotonic() < deadline, "the server started later was never discovered"
            time.sleep(0.05)
        with ollama.Client(host=gw.url) as client:
            answer = client.chat(model="late-model", messages=MESSAGES)
    assert answer.message.content == reply_text("hello")


def test_an_unknown_model_refreshes_the_inventory_once_before_a_404(gateway_factory: GatewayFactory) -> None:
    later_port = free_port()
    backend = Backend(id="a", url=f"http://127.0.0.1:{later_port}", kind=BackendKind.OPENAI)
    with FakeBackend(models=("first",), port=later_port):
        gw = gateway_factory(Config(backends=(backend,), health=NO_REPROBE))
        assert listed_models(gw) == ["first"]
    with FakeBackend(models=("first", "added"), port=later_port) as restarted:
        # the same server now also serves "added"; only an unknown-model refresh can tell the gateway
        response = httpx.post(
            gw.openai_url + "/chat/completions", json={"model": "added", "messages": MESSAGES}
        )
        assert response.status_code == 200
        assert response.json()["choices"][0]["message"]["content"] == reply_text("hello")
        assert restarted.stats().count("/v1/models") == 1

        missing = httpx.post(gw.url + "/api/chat", json={"model": "missing", "messages": MESSAGES})
        assert missing.status_code == 404
        assert missing.json() == {"error": "model 'missing' is not served by any backend"}
        # refreshes are rate-limited (discovery.refresh_min_interval_seconds): no second probe yet
        assert restarted.stats().count("/v1/models") == 1
    assert sorted(listed_models(gw)) == ["added", "first"]


def test_with_nothing_found_the_gateway_still_serves_and_answers_404(gateway_factory: GatewayFactory) -> None:
    later_port = free_port()
    gw = gateway_factory(discovering((later_port, BackendKind.OLLAMA)))

    assert httpx.get(gw.url + "/readyz").status_code == 200
    response = httpx.post(gw.url + "/api/generate", json={"model": "anything", "prompt": "hi"})
    assert response.status_code == 404
    assert "anything" in response.json()["error"]
