"""The status page and what it reads, through the real gateway: GET / and /ui (one document that loads
nothing from elsewhere, with a policy that lets exactly its own script and style run), GET /status/activity
after real requests (each model's generation speed included), and POST /admin/reload where no run loop
handles SIGHUP."""

from __future__ import annotations

import base64
import hashlib
import re
from collections.abc import Iterator
from dataclasses import dataclass
from html.parser import HTMLParser
from typing import Any

import httpx
import ollama
import openai
import pytest

from gatewayd.config import Backend, BackendKind, Config
from tests.support.fake_backend import FakeBackend, running_fake_backend
from tests.support.gateway import RunningGateway, running_gateway
from tests.support.process import wait_for

SECRET = "sk-this-must-never-show-up"


class Links(HTMLParser):
    """Every URL-valued attribute of the document's elements, and the tags seen."""

    def __init__(self, page: str) -> None:
        super().__init__()
        self.urls: list[str] = []
        self.tags: list[str] = []
        self.feed(page)
        self.close()

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        self.tags.append(tag)
        self.urls += [value or "" for name, value in attrs if name in ("src", "href", "action", "srcset")]


@dataclass
class Setup:
    gateway: RunningGateway
    fake: FakeBackend


@pytest.fixture(scope="module")
def setup() -> Iterator[Setup]:
    with running_fake_backend(models=("m1",)) as fake:
        config = Config(backends=(Backend(id="fake", url=fake.url, kind=BackendKind.OPENAI),))
        with running_gateway(config) as gateway:
            yield Setup(gateway, fake)


def get(setup: Setup, path: str) -> httpx.Response:
    return httpx.get(setup.gateway.url + path, timeout=10)


@pytest.mark.parametrize("path", ["/", "/ui"])
def test_the_page_is_one_document_that_loads_nothing_from_elsewhere(setup: Setup, path: str) -> None:
    response = get(setup, path)
    assert response.status_code == 200
    assert response.headers["content-type"] == "text/html; charset=utf-8"
    page = response.text
    for part in ('id="backends"', 'id="models"', 'id="recent"', 'id="chart-requests"', 'id="chart-latency"'):
        assert part in page
    assert "http://" not in page
    assert "https://" not in page
    links = Links(page)
    assert links.urls == ["data:,"]  # the empty favicon; the stylesheet and the script are inlined
    assert links.tags.count("script") == 1
    assert links.tags.count("style") == 1
    assert "iframe" not in links.tags


def test_the_policy_allows_exactly_the_inline_script_and_style(setup: Setup) -> None:
    response = get(setup, "/")
    policy = dict(
        part.strip().split(" ", 1) for part in response.headers["content-security-policy"].split(";")
    )
    scripts = re.findall(r"<script>(.*?)</script>", response.text, re.DOTALL)
    styles = re.findall(r"<style>(.*?)</style>", response.text, re.DOTALL)
    assert len(scripts) == 1
    assert len(styles) == 1
    assert policy["script-src"] == f"'{sha256(scripts[0])}'"
    assert policy["style-src"] == f"'{sha256(styles[0])}'"
    assert policy["default-src"] == "'none'"
    assert policy["connect-src"] == "'self'"


def sha256(text: str) -> str:
    return "sha256-" + base64.b64encode(hashlib.sha256(text.encode()).digest()).decode()


def test_activity_lists_recent_requests_and_counts_them_per_second(setup: Setup) -> None:
    url = setup.gateway.url
    headers = {"Authorization": f"Bearer {SECRET}"}
    body: dict[str, Any] = {"model": "m1", "messages": [{"role": "user", "content": "hi"}]}
    with httpx.Client(timeout=10, headers=headers) as client:
        assert client.post(f"{url}/v1/chat/completions", json=body).status_code == 200
        assert client.post(f"{url}/v1/chat/completions", json={**body, "stream": True}).status_code == 200
        assert client.post(f"{url}/api/chat", json={**body, "stream": False}).status_code == 200
        assert client.post(f"{url}/v1/chat/completions", json={**body, "model": SECRET}).status_code == 404

    def counted() -> dict[str, Any] | None:
        activity: dict[str, Any] = get(setup, "/status/activity").json()
        return activity if sum(activity["series"]["requests"]) >= 4 else None

    # the series covers complete seconds only: wait for the second of the last request to end
    activity = wait_for(counted, timeout=5, what="the requests to be counted")
    assert SECRET not in get(setup, "/status/activity").text
    series = activity["series"]
    window = activity["window_seconds"]
    assert series["step_seconds"] == 1
    for name in ("requests", "errors", "latency_p50_ms", "latency_p95_ms"):
        assert len(series[name]) == window
    assert sum(series["requests"]) == 4
    assert sum(series["errors"]) == 0  # a 404 is the client's mistake
    busy = [i for i, count in enumerate(series["requests"]) if count]
    assert all(series["latency_p50_ms"][i] > 0 for i in busy)
    assert all(series["latency_p95_ms"][i] >= series["latency_p50_ms"][i] for i in busy)
    assert all(series["latency_p50_ms"][i] is None for i in range(window) if i not in busy)

    recent = activity["recent"]
    assert [(r["api"], r["model"], r["backend"], r["status"], r["stream"]) for r in recent] == [
        ("openai.chat", "-", "-", 404, False),
        ("ollama.chat", "m1", "fake", 200, False),
        ("openai.chat", "m1", "fake", 200, True),
        ("openai.chat", "m1", "fake", 200, False),
    ]
    assert set(recent[0]) == {"time", "api", "model", "backend", "status", "stream", "latency_ms", "ttft_ms"}
    assert recent[2]["ttft_ms"] is not None
    assert 0 < recent[2]["ttft_ms"] <= recent[2]["latency_ms"]
    assert recent[0]["time"] >= recent[-1]["time"]


def test_activity_belongs_to_the_process_not_the_generation(setup: Setup) -> None:
    assert setup.gateway.generation.activity is setup.gateway.factory.activity


def test_reload_is_refused_where_no_run_loop_handles_sighup(setup: Setup) -> None:
    response = httpx.post(setup.gateway.url + "/admin/reload", timeout=10)
    assert response.status_code == 503
    assert "run loop" in response.json()["error"]["message"]


def test_activity_gives_each_models_generation_speed() -> None:
    """Completion tokens over the time spent generating them: a stream's time after its first byte, an
    answer's whole latency (one request per model, so each figure can be checked against its request)."""
    behaviour = {"chunks": 8, "chunk_delay_seconds": 0.05, "first_byte_delay_seconds": 0.2}
    with running_fake_backend(models=("streamed", "whole"), **behaviour) as fake:
        config = Config(backends=(Backend(id="fake", url=fake.url, kind=BackendKind.OPENAI),))
        with running_gateway(config) as gateway:
            with openai.OpenAI(base_url=gateway.url + "/v1", api_key="x", max_retries=0) as client:
                chunks = client.chat.completions.create(
                    model="streamed",
                    messages=[{"role": "user", "content": "hi"}],
                    stream=True,
                    stream_options={"include_usage": True},
                )
                assert [chunk.usage.completion_tokens for chunk in chunks if chunk.usage] == [8]
            with ollama.Client(host=gateway.url) as other:
                assert other.chat(model="whole", messages=[{"role": "user", "content": "hi"}]).eval_count == 8

            def both() -> dict[str, Any] | None:
                activity: dict[str, Any] = httpx.get(gateway.url + "/status/activity", timeout=10).json()
                return activity if len(activity["models"]) == 2 else None

            activity = wait_for(both, timeout=5, what="both requests to be counted")

    recent = {entry["model"]: entry for entry in activity["recent"]}
    streamed, whole = activity["models"]["streamed"], activity["models"]["whole"]
    assert streamed["completion_tokens"] == whole["completion_tokens"] == 8
    after_first_byte = (recent["streamed"]["latency_ms"] - recent["streamed"]["ttft_ms"]) / 1000
    assert streamed["generation_seconds"] == pytest.approx(after_first_byte, abs=0.002)
    assert streamed["generation_seconds"] >= 7 * behaviour["chunk_delay_seconds"]  # 7 pauses between 8 chunks
    assert whole["generation_seconds"] == pytest.approx(recent["whole"]["latency_ms"] / 1000, abs=0.002)
    for speed in (streamed, whole):
        assert speed["tokens_per_second"] == pytest.approx(8 / speed["generation_seconds"], rel=0.01)
