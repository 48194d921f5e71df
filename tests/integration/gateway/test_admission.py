"""Admission through the real gateway: per-backend slots, the bounded queue and its wait timeout, and what
a client that goes away (while queued, or mid-stream) frees."""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
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
CHAT_BODY = {"model": MODEL, "messages": MESSAGES, "stream": False}
RETRY_AFTER_SECONDS = 3.0
WAIT_SECONDS = 5.0


def config(fake: FakeBackend, *, max_concurrency: int = 1, **limits: Any) -> Config:
    return Config(
        backends=(
            Backend(
                id="a",
                url=fake.url,
                kind=BackendKind(fake.kind.value),
                models=(MODEL,),
                max_concurrency=max_concurrency,
            ),
        ),
        limits=Limits(**{"queue_size": 1, "retry_after_seconds": RETRY_AFTER_SECONDS, **limits}),
    )


def status(gw: RunningGateway) -> dict[str, Any]:
    return dict(gw.call(gw.generation.status))


def backend_in_flight(gw: RunningGateway) -> int:
    return int(gw.call(lambda: gw.generation.pool.runtimes["a"].admission.in_flight))


def wait_until(condition: Callable[[], bool], what: str, timeout: float = WAIT_SECONDS) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting until {what}")
        time.sleep(0.005)


@pytest.fixture
def pool() -> Iterator[ThreadPoolExecutor]:
    with ThreadPoolExecutor(max_workers=4) as executor:
        yield executor


def submit_chat(
    pool: ThreadPoolExecutor, gw: RunningGateway, path: str = "/v1/chat/completions"
) -> Future[httpx.Response]:
    return pool.submit(httpx.post, gw.url + path, json=CHAT_BODY, timeout=WAIT_SECONDS * 2)


def fill_slot_and_queue(
    pool: ThreadPoolExecutor, gw: RunningGateway, fake: FakeBackend
) -> list[Future[httpx.Response]]:
    """One request holding the only slot (hanging at the backend), one waiting in the queue."""
    first = submit_chat(pool, gw)
    fake.wait_for(lambda stats: stats.in_flight == 1)
    second = submit_chat(pool, gw, "/api/chat")
    wait_until(lambda: status(gw)["queued"] == 1, "the second request is queued")
    return [first, second]


def test_a_full_queue_is_a_429_with_retry_after_for_openai_clients(
    fake_backend_factory: FakeBackendFactory, gateway_factory: GatewayFactory, pool: ThreadPoolExecutor
) -> None:
    fake = fake_backend_factory(models=(MODEL,), hang=True)
    gw = gateway_factory(config(fake))
    waiting = fill_slot_and_queue(pool, gw, fake)

    with (
        openai.OpenAI(base_url=gw.openai_url, api_key="x", max_retries=0) as client,
        pytest.raises(openai.RateLimitError) as caught,
    ):
        client.chat.completions.create(model=MODEL, messages=MESSAGES)

    assert caught.value.status_code == 429
    assert caught.value.code == "gateway_overloaded"
    assert caught.value.response.headers["retry-after"] == "3"
    assert "queue is full" in caught.value.message
    fake.set(hang=False)
    assert [future.result().status_code for future in waiting] == [200, 200]
    assert fake.stats().count("/v1/chat/completions") == 2


def test_a_full_queue_is_a_503_with_retry_after_for_ollama_clients(
    fake_backend_factory: FakeBackendFactory, gateway_factory: GatewayFactory, pool: ThreadPoolExecutor
) -> None:
    fake = fake_backend_factory(models=(MODEL,), hang=True)
    gw = gateway_factory(config(fake))
    waiting = fill_slot_and_queue(pool, gw, fake)

    response = httpx.post(gw.url + "/api/chat", json=CHAT_BODY)
    with ollama.Client(host=gw.url) as client, pytest.raises(ollama.ResponseError) as caught:
        client.chat(model=MODEL, messages=MESSAGES)

    assert response.status_code == 503
    assert response.headers["retry-after"] == "3"
    assert "queue is full" in response.json()["error"]
    assert caught.value.status_code == 503
    fake.set(hang=False)
    assert [future.result().status_code for future in waiting] == [200, 200]


def test_a_wait_past_the_queue_timeout_is_a_429(
    fake_backend_factory: FakeBackendFactory, gateway_factory: GatewayFactory, pool: ThreadPoolExecutor
) -> None:
    fake = fake_backend_factory(models=(MODEL,), hang=True)
    gw = gateway_factory(config(fake, queue_timeout_seconds=0.3))
    first = submit_chat(pool, gw)
    fake.wait_for(lambda stats: stats.in_flight == 1)

    started = time.monotonic()
    response = httpx.post(gw.openai_url + "/chat/completions", json=CHAT_BODY)
    waited = time.monotonic() - started

    assert response.status_code == 429
    assert response.headers["retry-after"] == "3"
    assert response.json()["error"]["message"] == "no slot on backend a within 0.3 s"
    assert 0.3 <= waited < 2.0
    assert status(gw)["queued"] == 0
    fake.set(hang=False)
    assert first.result().status_code == 200


def test_requests_up_to_max_concurrency_reach_the_backend_together(
    fake_backend_factory: FakeBackendFactory, gateway_factory: GatewayFactory, pool: ThreadPoolExecutor
) -> None:
    fake = fake_backend_factory(models=(MODEL,), hang=True)
    gw = gateway_factory(config(fake, max_concurrency=2, queue_size=4))
    futures = [submit_chat(pool, gw) for _ in range(3)]
    fake.wait_for(lambda stats: stats.in_flight == 2)
    wait_until(lambda: status(gw)["queued"] == 1, "the third request is queued")
    assert status(gw)["in_flight"] == 3

    fake.set(hang=False)

    assert [future.result().status_code for future in futures] == [200, 200, 200]
    assert fake.stats().peak_in_flight == 2


def test_a_client_that_disconnects_while_queued_leaves_the_queue(
    fake_backend_factory: FakeBackendFactory, gateway_factory: GatewayFactory, pool: ThreadPoolExecutor
) -> None:
    fake = fake_backend_factory(models=(MODEL,), hang=True)
    gw = gateway_factory(config(fake))
    first = submit_chat(pool, gw)
    fake.wait_for(lambda stats: stats.in_flight == 1)

    def give_up_while_queued() -> None:
        with (
            httpx.Client(timeout=httpx.Timeout(WAIT_SECONDS, read=0.5)) as client,
            pytest.raises(httpx.ReadTimeout),
        ):
            client.post(gw.url + "/api/chat", json=CHAT_BODY)

    queued = pool.submit(give_up_while_queued)
    wait_until(lambda: status(gw)["queued"] == 1, "the second request is queued")
    queued.result()
    wait_until(lambda: status(gw)["queued"] == 0, "the queue is empty again")

    fake.set(hang=False)
    assert first.result().status_code == 200
    wait_until(lambda: backend_in_flight(gw) == 0, "the slot is free")
    assert fake.stats().count("/v1/chat/completions") == 1  # the queued request never reached it


@pytest.mark.parametrize("path", ["/v1/chat/completions", "/api/chat"])
def test_a_client_that_disconnects_mid_stream_cancels_the_upstream_at_once(
    fake_backend_factory: FakeBackendFactory, gateway_factory: GatewayFactory, path: str
) -> None:
    fake = fake_backend_factory(models=(MODEL,), chunks=200, chunk_delay_seconds=0.05)
    gw = gateway_factory(config(fake))

    with httpx.stream("POST", gw.url + path, json={**CHAT_BODY, "stream": True}) as response:
        assert response.status_code == 200
        lines = response.iter_lines()  # kept: dropping it would close the connection at once
        next(lines)
        assert status(gw)["streams"] == 1
        assert backend_in_flight(gw) == 1
        closed = time.monotonic()
    # leaving the block closes the connection mid-stream

    stats = fake.wait_for(lambda stats: stats.disconnects == 1 and stats.in_flight == 0, timeout_seconds=2.0)
    assert time.monotonic() - closed < 2.0  # the stream had ~10 s to go
    assert stats.count("/v1/chat/completions") == 1
    wait_until(lambda: status(gw)["in_flight"] == 0 and backend_in_flight(gw) == 0, "nothing is in flight")
    assert status(gw)["streams"] == 0

    fake.set(chunks=8, chunk_delay_seconds=0.0)
    started = time.monotonic()
    response = httpx.post(gw.url + path, json=CHAT_BODY)  # the only slot is free again
    assert response.status_code == 200
    assert time.monotonic() - started < 1.0
    assert reply_text("hello") in response.text


def test_a_full_queue_moves_the_request_to_a_candidate_with_room_to_wait(
    fake_backend_factory: FakeBackendFactory, gateway_factory: GatewayFactory
) -> None:
    first = fake_backend_factory(models=(MODEL,), hang=True)
    second = fake_backend_factory(models=(MODEL,), hang=True)
    gw = gateway_factory(
        Config(
            backends=tuple(
                Backend(id=name, url=fake.url, models=(MODEL,), max_concurrency=1)
                for name, fake in (("a", first), ("b", second))
            ),
            limits=Limits(queue_size=1, retry_after_seconds=RETRY_AFTER_SECONDS),
        )
    )

    def queued(backend: str) -> int:
        return int(gw.call(lambda: gw.generation.pool.runtimes[backend].admission.queued))

    with ThreadPoolExecutor(max_workers=8) as executor:
        running = [submit_chat(executor, gw), submit_chat(executor, gw)]
        wait_until(
            lambda: first.stats().in_flight == 1 and second.stats().in_flight == 1, "both backends busy"
        )
        waiting = [submit_chat(executor, gw)]
        wait_until(lambda: queued("a") + queued("b") == 1, "one request queued")
        waiting.append(submit_chat(executor, gw))
        wait_until(lambda: queued("a") == 1 and queued("b") == 1, "one request queued on each backend")
        rejected = submit_chat(executor, gw).result(timeout=WAIT_SECONDS)
        assert rejected.status_code == 429
        assert rejected.headers["retry-after"] == "3"
        first.set(hang=False)
        second.set(hang=False)
        for future in running + waiting:
            assert future.result(timeout=WAIT_SECONDS).status_code == 200
