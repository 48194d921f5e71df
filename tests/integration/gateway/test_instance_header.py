"""Every response names the instance that answered (X-Gatewayd-Instance): the inference endpoints' raw
path, their errors and streams, the Quart routes, their errors, and the access edge's own refusals."""

from __future__ import annotations

import socket
from collections.abc import Iterator

import httpx
import openai
import pytest

from gatewayd.config import Backend, BackendKind, Config, ServerSettings
from tests.support.fake_backend import running_fake_backend
from tests.support.gateway import RunningGateway, running_gateway

MODEL = "m"
NAME = "gw-east-1"
HEADER = "X-Gatewayd-Instance"


@pytest.fixture(scope="module")
def gateway() -> Iterator[RunningGateway]:
    with running_fake_backend(models=(MODEL,)) as fake:
        config = Config(
            server=ServerSettings(instance_name=NAME),
            backends=(Backend(id="b", url=fake.url, kind=BackendKind.OPENAI, models=(MODEL,)),),
        )
        with running_gateway(config) as running:
            yield running


def chat(stream: bool, model: str = MODEL) -> dict[str, object]:
    return {"model": model, "messages": [{"role": "user", "content": "hi"}], "stream": stream}


@pytest.mark.parametrize(
    ("method", "path", "body", "status"),
    [
        ("POST", "/v1/chat/completions", chat(False), 200),
        ("POST", "/v1/chat/completions", chat(False, "no-such-model"), 404),
        ("POST", "/v1/chat/completions", None, 400),  # not JSON
        ("POST", "/api/chat", chat(False), 200),
        ("GET", "/v1/models", None, 200),
        ("GET", "/status", None, 200),
        ("GET", "/healthz", None, 200),
        ("GET", "/", None, 200),
        ("GET", "/no/such/route", None, 404),
    ],
)
def test_every_answer_names_the_instance(
    gateway: RunningGateway, method: str, path: str, body: object, status: int
) -> None:
    kwargs: dict[str, object] = {"json": body} if body is not None else {}
    if method == "POST" and body is None:
        kwargs = {"content": b"{not json"}
    response = httpx.request(method, gateway.url + path, timeout=30, **kwargs)  # type: ignore[arg-type]
    assert response.status_code == status, response.text
    assert response.headers[HEADER] == NAME
    assert response.headers.get_list(HEADER) == [NAME]  # once, not once per layer


def test_a_stream_names_the_instance(gateway: RunningGateway) -> None:
    with httpx.stream("POST", gateway.url + "/v1/chat/completions", json=chat(True), timeout=30) as response:
        assert response.status_code == 200
        assert response.headers[HEADER] == NAME
        assert b"[DONE]" in b"".join(response.iter_bytes())


def test_the_official_client_sees_it(gateway: RunningGateway) -> None:
    client = openai.OpenAI(base_url=gateway.openai_url, api_key="unused", max_retries=0)
    raw = client.chat.completions.with_raw_response.create(
        model=MODEL, messages=[{"role": "user", "content": "hi"}]
    )
    assert raw.headers[HEADER] == NAME


def test_a_refusal_of_the_access_edge_names_it(gateway: RunningGateway) -> None:
    """A Host that is not this machine (DNS rebinding) is refused before any route: still named."""
    response = httpx.get(gateway.url + "/v1/models", headers={"Host": "evil.example"}, timeout=30)
    assert response.status_code == 403
    assert response.headers[HEADER] == NAME


def test_the_default_name_is_host_and_port() -> None:
    with running_fake_backend(models=(MODEL,)) as fake:
        config = Config(backends=(Backend(id="b", url=fake.url, kind=BackendKind.OPENAI, models=(MODEL,)),))
        with running_gateway(config) as running:
            response = httpx.get(running.url + "/healthz", timeout=30)
            assert response.headers[HEADER] == f"{socket.gethostname()}:{running.port}"
            assert httpx.get(running.url + "/status", timeout=30).json()["instance"]["name"] == (
                f"{socket.gethostname()}:{running.port}"
            )
