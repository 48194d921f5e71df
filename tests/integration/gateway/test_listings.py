"""Listings and health endpoints: /v1/models, /api/tags, /api/ps, /api/version, /healthz, /readyz, /status,
and unknown endpoints, as the official clients (or a plain HTTP client) see them."""

from __future__ import annotations

import json
import socket
from collections.abc import Iterator
from dataclasses import dataclass

import httpx
import ollama
import openai
import pytest

from gatewayd import __version__
from gatewayd.config import Backend, BackendKind, Config, Route, RouteTarget
from gatewayd.gateway.core.metadata import model_digest
from tests.support.fake_backend import FakeBackend, running_fake_backend
from tests.support.gateway import RunningGateway, running_gateway


@dataclass
class Setup:
    gateway: RunningGateway
    fake: FakeBackend


def closed_port_url() -> str:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return f"http://127.0.0.1:{probe.getsockname()[1]}"


@pytest.fixture(scope="module")
def setup() -> Iterator[Setup]:
    """ "up" serves m1 (and, as discovered, its model list); "down" declares m2 but cannot be reached."""
    with running_fake_backend(models=("m1", "extra")) as fake:
        config = Config(
            backends=(
                Backend(id="up", url=fake.url, kind=BackendKind.OPENAI),
                Backend(
                    id="down",
                    url=closed_port_url().replace("://", "://user:s3cret@"),
                    kind=BackendKind.OLLAMA,
                    models=("m2",),
                ),
            ),
            routes=(
                Route(
                    model="chat",
                    targets=(RouteTarget(backend="down", model="m2"), RouteTarget(backend="up", model="m1")),
                ),
            ),
        )
        with running_gateway(config) as gateway:
            yield Setup(gateway, fake)


@pytest.fixture
def gw(setup: Setup) -> RunningGateway:
    return setup.gateway


def test_openai_model_list(gw: RunningGateway) -> None:
    with openai.OpenAI(base_url=gw.openai_url, api_key="x", max_retries=0) as client:
        models = list(client.models.list())
    assert [m.id for m in models] == ["chat", "extra", "m1", "m2"]  # routes first, then by name
    assert {m.object for m in models} == {"model"}
    assert all(isinstance(m.created, int) and m.owned_by == "gatewayd" for m in models)
    raw = httpx.get(gw.openai_url + "/models").json()
    assert raw["object"] == "list"
    by_id = {m["id"]: m for m in raw["data"]}
    assert by_id["chat"]["backends"] == [{"backend": "down", "model": "m2"}, {"backend": "up", "model": "m1"}]
    assert by_id["chat"]["state"] == "running"
    assert by_id["m2"]["state"] == "unavailable"


def test_ollama_tags(gw: RunningGateway) -> None:
    with ollama.Client(host=gw.url) as client:
        listed = client.list()
    assert [m.model for m in listed.models] == ["chat", "extra", "m1", "m2"]
    # an OpenAI-kind backend's listing gives no date or size: none is made up
    assert all(m.modified_at is None and m.size is None for m in listed.models)
    # but every model has a digest (Ollama's own CLI crashes without one): sha256 of "gatewayd/<name>"
    assert [m.digest for m in listed.models] == [model_digest(m.model or "") for m in listed.models]
    assert all(len(m.digest or "") == 64 for m in listed.models)


def test_ollama_ps_lists_only_models_with_a_live_backend(gw: RunningGateway) -> None:
    with ollama.Client(host=gw.url) as client:
        running = client.ps()
    assert [m.model for m in running.models] == ["chat", "extra", "m1"]
    assert [m.name for m in running.models] == ["chat", "extra", "m1"]
    assert [m.digest for m in running.models] == [model_digest(m.model or "") for m in running.models]


def test_ollama_version(gw: RunningGateway) -> None:
    response = httpx.get(gw.url + "/api/version")
    assert response.status_code == 200
    body = response.json()
    assert body["gatewayd"] == __version__
    assert tuple(int(part) for part in body["version"].split(".")) >= (0, 5, 0)


def test_healthz(gw: RunningGateway) -> None:
    response = httpx.get(gw.url + "/healthz")
    assert response.status_code == 200
    assert response.json() == {"status": "ok"}


def test_status(gw: RunningGateway) -> None:
    status = httpx.get(gw.url + "/status").json()
    assert status["generation"] == 1
    assert status["draining"] is False
    assert status["instance"]["pid"] == 0
    assert (status["backends_up"], status["backends_total"]) == (1, 2)
    assert status["in_flight"] >= 1  # this request
    assert (status["queued"], status["streams"]) == (0, 0)
    backends = {row["id"]: row for row in status["backends"]}
    assert backends["up"]["state"] == "up"
    assert backends["up"]["models"] == ["m1", "extra"]
    # an OpenAI-kind backend with no max_concurrency is unbounded; an Ollama one has its kind's default
    assert (backends["up"]["max_concurrency"], backends["up"]["concurrency_source"]) == (None, "unbounded")
    assert (backends["down"]["max_concurrency"], backends["down"]["concurrency_source"]) == (4, "default")
    assert backends["down"]["state"] == "down"
    assert backends["down"]["last_error"]
    assert backends["down"]["url"].startswith("http://127.0.0.1:")  # credentials in a url are not shown
    assert "s3cret" not in json.dumps(status)
    assert [row["name"] for row in status["models"]] == ["chat", "extra", "m1", "m2"]
    assert status["models"][0]["routed"] is True


@pytest.mark.parametrize(("path", "dialect"), [("/v1/nothing", "openai"), ("/api/nothing", "ollama")])
def test_an_unknown_endpoint_is_a_404_in_its_dialect(gw: RunningGateway, path: str, dialect: str) -> None:
    response = httpx.get(gw.url + path)
    assert response.status_code == 404
    error = response.json()["error"]
    if dialect == "openai":
        assert error["code"] == "not_found"
        assert path in error["message"]
    else:
        assert isinstance(error, str)
        assert path in error


def test_readyz_answers_503_once_draining(gw: RunningGateway) -> None:
    """Last in this module: the generation it drains is shared."""
    ready = httpx.get(gw.url + "/readyz")
    assert ready.status_code == 200
    assert ready.json()["status"] == "ready"

    gw.call(gw.generation.mark_draining)

    draining = httpx.get(gw.url + "/readyz")
    assert draining.status_code == 503
    assert draining.json()["status"] == "draining"
    assert httpx.get(gw.url + "/healthz").status_code == 200
    assert httpx.get(gw.url + "/status").json()["draining"] is True


@pytest.mark.parametrize(
    "path", ["/healthz", "/readyz", "/metrics", "/status", "/v1/models", "/api/tags", "/nope"]
)
def test_every_endpoint_answers_with_a_request_id(gw: RunningGateway, path: str) -> None:
    assert len(httpx.get(gw.url + path).headers["x-request-id"]) == 16
    assert httpx.get(gw.url + path, headers={"X-Request-Id": "mine-1"}).headers["x-request-id"] == "mine-1"
