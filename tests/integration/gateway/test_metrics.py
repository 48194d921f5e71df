"""Observability after real traffic: every gatewayd_* metric family on /metrics with its labels, live
gauges, and one structured access-log line per request."""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor

import httpx
import ollama
import openai
import pytest
from openai.types.chat import ChatCompletionMessageParam
from prometheus_client.openmetrics.parser import text_string_to_metric_families as parse_openmetrics
from prometheus_client.parser import text_string_to_metric_families

from gatewayd.config import Backend, BackendKind, Config
from tests.support.fake_backend import FakeBackend
from tests.support.fake_replies import word_count
from tests.support.fixtures import FakeBackendFactory
from tests.support.gateway import RunningGateway

GatewayFactory = Callable[[Config], RunningGateway]
MODEL = "m"
PROMPT = "count my words please"
MESSAGES: list[ChatCompletionMessageParam] = [{"role": "user", "content": PROMPT}]
CHUNKS = 8
Samples = dict[tuple[str, frozenset[tuple[str, str]]], float]
OPENMETRICS_ACCEPT = (
    "application/openmetrics-text;version=1.0.0;q=0.5,text/plain;version=0.0.4;q=0.3,*/*;q=0.2"
)


def backend(backend_id: str, fake: FakeBackend) -> Backend:
    return Backend(id=backend_id, url=fake.url, kind=BackendKind(fake.kind.value), models=(MODEL,))


def scrape(gw: RunningGateway) -> tuple[str, Samples]:
    response = httpx.get(gw.url + "/metrics")
    assert response.status_code == 200
    assert response.headers["content-type"].startswith("text/plain; version=0.0.4")
    samples: Samples = {}
    for family in text_string_to_metric_families(response.text):
        for found in family.samples:
            samples[(found.name, frozenset(found.labels.items()))] = found.value
    return response.text, samples


def sample(samples: Samples, name: str, **labels: str) -> float:
    return samples[(name, frozenset(labels.items()))]


def scrape_once_counted(gw: RunningGateway, requests: int) -> tuple[str, Samples]:
    """Scrape once ``requests`` answers are counted: a request is counted just after its client has had
    the last byte, so a scrape right after a response may come a moment too early."""
    deadline = time.monotonic() + 5
    while True:
        text, samples = scrape(gw)
        counted = sum(v for (name, _), v in samples.items() if name == "gatewayd_requests_total")
        if counted >= requests:
            return text, samples
        assert time.monotonic() < deadline, f"only {counted} of {requests} requests were ever counted"
        time.sleep(0.01)


def label_names(samples: Samples, name: str) -> set[frozenset[str]]:
    return {frozenset(label for label, _ in labels) for metric, labels in samples if metric == name}


def test_every_metric_family_is_exported_with_its_labels_after_traffic(
    fake_backend_factory: FakeBackendFactory, gateway_factory: GatewayFactory
) -> None:
    failing = fake_backend_factory(models=(MODEL,), fail_status=500)
    serving = fake_backend_factory(models=(MODEL,))
    gw = gateway_factory(Config(backends=(backend("a", failing), backend("b", serving))))

    with openai.OpenAI(base_url=gw.openai_url, api_key="x", max_retries=0) as client:
        client.chat.completions.create(model=MODEL, messages=MESSAGES)
    with ollama.Client(host=gw.url) as client:
        list(client.chat(model=MODEL, messages=MESSAGES, stream=True))
    assert (
        httpx.post(
            gw.openai_url + "/chat/completions", json={"model": "nope", "messages": MESSAGES}
        ).status_code
        == 404
    )

    text, samples = scrape_once_counted(gw, 3)

    for family, kind in [
        ("gatewayd_requests_total", "counter"),
        ("gatewayd_upstream_attempts_total", "counter"),
        ("gatewayd_tokens_total", "counter"),
        ("gatewayd_request_duration_seconds", "histogram"),
        ("gatewayd_time_to_first_token_seconds", "histogram"),
        ("gatewayd_overhead_seconds", "histogram"),
        ("gatewayd_in_flight_requests", "gauge"),
        ("gatewayd_queue_depth", "gauge"),
        ("gatewayd_backend_up", "gauge"),
        ("gatewayd_generation", "gauge"),
    ]:
        assert f"# TYPE {family} {kind}\n" in text
        assert f"# HELP {family} " in text
    assert sample(samples, "gatewayd_requests_total", model=MODEL, backend="b", status="200") == 2
    assert sample(samples, "gatewayd_requests_total", model="-", backend="-", status="404") == 1
    assert sample(samples, "gatewayd_upstream_attempts_total", backend="a", outcome="upstream_error") == 2
    assert sample(samples, "gatewayd_upstream_attempts_total", backend="b", outcome="ok") == 2
    assert sample(samples, "gatewayd_tokens_total", model=MODEL, kind="prompt") == 2 * word_count(PROMPT)
    assert sample(samples, "gatewayd_tokens_total", model=MODEL, kind="completion") == 2 * CHUNKS
    for histogram in ("gatewayd_request_duration_seconds", "gatewayd_time_to_first_token_seconds"):
        assert sample(samples, f"{histogram}_count", model=MODEL) == 2
        assert sample(samples, f"{histogram}_bucket", model=MODEL, le="+Inf") == 2
        assert label_names(samples, f"{histogram}_bucket") == {frozenset({"model", "le"})}
    assert sample(samples, "gatewayd_overhead_seconds_count") == 2
    assert label_names(samples, "gatewayd_overhead_seconds_bucket") == {frozenset({"le"})}
    for backend_id in ("a", "b"):
        assert sample(samples, "gatewayd_in_flight_requests", backend=backend_id) == 0
        assert sample(samples, "gatewayd_queue_depth", backend=backend_id) == 0
        assert sample(samples, "gatewayd_backend_up", backend=backend_id, state="up") == 1
    assert sample(samples, "gatewayd_generation", state="serving") == 1


def test_a_scraper_gets_openmetrics_when_it_asks_and_the_standard_families_either_way(
    fake_backend_factory: FakeBackendFactory, gateway_factory: GatewayFactory
) -> None:
    fake = fake_backend_factory(models=(MODEL,))
    gw = gateway_factory(Config(backends=(backend("a", fake),)))
    with openai.OpenAI(base_url=gw.openai_url, api_key="x", max_retries=0) as client:
        client.chat.completions.create(model=MODEL, messages=MESSAGES)
    _, samples = scrape_once_counted(gw, 1)  # Prometheus text, parsed with prometheus_client's parser

    response = httpx.get(gw.url + "/metrics", headers={"Accept": OPENMETRICS_ACCEPT})
    assert response.status_code == 200
    assert response.headers["content-type"].startswith("application/openmetrics-text; version=1.0.0")
    assert response.text.endswith("# EOF\n")
    families = {family.name: family for family in parse_openmetrics(response.text)}  # strict: no slack
    openmetrics = {
        (s.name, frozenset(s.labels.items())): s.value for f in families.values() for s in f.samples
    }
    assert families["gatewayd_requests"].type == "counter"
    assert (
        openmetrics[
            ("gatewayd_requests_total", frozenset({"model": MODEL, "backend": "a", "status": "200"}.items()))
        ]
        == 1
    )
    assert families["gatewayd_request_duration_seconds"].unit == "seconds"
    assert openmetrics[("gatewayd_request_duration_seconds_count", frozenset({("model", MODEL)}))] == 1

    for found in (samples, openmetrics):
        assert found[("process_resident_memory_bytes", frozenset())] > 0
        assert found[("process_open_fds", frozenset())] > 0
        assert found[("process_cpu_seconds_total", frozenset())] > 0
        assert any(name == "python_info" for name, _ in found)
        assert any(name == "python_gc_collections_total" for name, _ in found)


@pytest.mark.parametrize("client_dialect", ["openai", "ollama"])
def test_the_overhead_histogram_leaves_out_the_backends_wait_for_its_first_token(
    fake_backend_factory: FakeBackendFactory, gateway_factory: GatewayFactory, client_dialect: str
) -> None:
    slow_first_token = 0.5
    fake = fake_backend_factory(models=(MODEL,), first_chunk_delay_seconds=slow_first_token)
    gw = gateway_factory(Config(backends=(backend("b", fake),)))
    chunks: list[object]
    if client_dialect == "openai":  # relayed as bytes
        with openai.OpenAI(base_url=gw.openai_url, api_key="x", max_retries=0) as client:
            chunks = list(client.chat.completions.create(model=MODEL, messages=MESSAGES, stream=True))
    else:  # translated
        with ollama.Client(host=gw.url) as other:
            chunks = list(other.chat(model=MODEL, messages=MESSAGES, stream=True))
    assert len(chunks) > 1

    _, samples = scrape_once_counted(gw, 1)
    assert sample(samples, "gatewayd_time_to_first_token_seconds_sum", model=MODEL) >= slow_first_token
    assert sample(samples, "gatewayd_overhead_seconds_sum") < slow_first_token / 2


def test_gauges_show_requests_in_flight_and_queued(
    fake_backend_factory: FakeBackendFactory, gateway_factory: GatewayFactory
) -> None:
    hanging = fake_backend_factory(models=(MODEL,), hang=True)
    config = Config(backends=(Backend(id="a", url=hanging.url, models=(MODEL,), max_concurrency=1),))
    gw = gateway_factory(config)
    body = {"model": MODEL, "messages": MESSAGES}

    with ThreadPoolExecutor(max_workers=2) as pool:
        futures = [pool.submit(httpx.post, gw.openai_url + "/chat/completions", json=body, timeout=10)]
        hanging.wait_for(lambda stats: stats.in_flight == 1)
        futures.append(pool.submit(httpx.post, gw.openai_url + "/chat/completions", json=body, timeout=10))
        deadline = time.monotonic() + 5
        while sample(scrape(gw)[1], "gatewayd_queue_depth", backend="a") != 1:
            assert time.monotonic() < deadline, "the second request never showed as queued"
            time.sleep(0.01)
        assert sample(scrape(gw)[1], "gatewayd_in_flight_requests", backend="a") == 1
        hanging.set(hang=False)
        assert [future.result().status_code for future in futures] == [200, 200]

    deadline = time.monotonic() + 5  # a slot is freed just after the client has its last byte
    while sample(samples := scrape(gw)[1], "gatewayd_in_flight_requests", backend="a") != 0:
        assert time.monotonic() < deadline, "the in-flight gauge never went back to 0"
        time.sleep(0.01)
    assert sample(samples, "gatewayd_queue_depth", backend="a") == 0


def test_a_down_backend_and_a_draining_generation_show_in_the_gauges(
    fake_backend_factory: FakeBackendFactory, gateway_factory: GatewayFactory
) -> None:
    fake = fake_backend_factory(models=(MODEL,))
    gw = gateway_factory(Config(backends=(backend("a", fake),)))
    fake.close()
    httpx.post(gw.openai_url + "/chat/completions", json={"model": MODEL, "messages": MESSAGES})

    gw.call(gw.generation.mark_draining)
    _, samples = scrape_once_counted(gw, 1)

    assert sample(samples, "gatewayd_generation", state="draining") == 1
    assert sample(samples, "gatewayd_requests_total", model=MODEL, backend="a", status="503") == 1
    assert (
        sample(samples, "gatewayd_upstream_attempts_total", backend="a", outcome="backend_unavailable") == 1
    )


def test_one_structured_access_log_line_per_request(
    fake_backend_factory: FakeBackendFactory,
    gateway_factory: GatewayFactory,
    caplog: pytest.LogCaptureFixture,
) -> None:
    fake = fake_backend_factory(models=(MODEL,))
    gw = gateway_factory(Config(backends=(backend("a", fake),)))
    caplog.set_level(logging.INFO, logger="gatewayd.access")

    body = {"model": MODEL, "messages": MESSAGES, "stream": True, "stream_options": {"include_usage": True}}
    httpx.post(gw.openai_url + "/chat/completions", json=body, headers={"X-Request-Id": "logged-1"})
    httpx.post(gw.url + "/api/chat", json={"model": "nope"}, headers={"X-Request-Id": "logged-2"})

    def access_records() -> list[logging.LogRecord]:
        return [r for r in caplog.records if r.name == "gatewayd.access"]

    deadline = time.monotonic() + 5  # a line is written just after the client has its last byte
    while len(access_records()) < 2:
        assert time.monotonic() < deadline, "the access log lines never came"
        time.sleep(0.01)
    records = access_records()
    assert sorted(r.fields["request_id"] for r in records) == ["logged-1", "logged-2"]  # type: ignore[attr-defined]
    records.sort(key=lambda r: r.fields["request_id"])  # type: ignore[attr-defined]
    served, missing = (r.fields for r in records)  # type: ignore[attr-defined]
    assert served["model"] == MODEL
    assert served["backend"] == "a"
    assert served["status"] == 200
    assert served["stream"] is True
    assert served["attempts"] == 1
    assert served["latency_ms"] >= served["ttft_ms"] > 0
    assert (served["prompt_tokens"], served["completion_tokens"]) == (word_count(PROMPT), CHUNKS)
    assert missing["status"] == 404
    assert missing["attempts"] == 0
    assert "logged-1" in records[0].getMessage()
