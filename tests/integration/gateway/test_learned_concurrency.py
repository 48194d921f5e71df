"""The concurrency limit each backend is given when its config sets none, learned from the backend itself:
llama-server's slots (/props ``total_slots``, else the number of /slots) through the real gateway against
fake llama-servers, vLLM unbounded, an explicit ``max_concurrency`` winning, and a limit that changes at a
probe (a restarted server with more or fewer slots) adjusting admission live."""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Any

import httpx
import pytest

from gatewayd.config import Backend, BackendKind, Config, HealthSettings, Limits
from tests.support.fake_backend import FakeBackend
from tests.support.fixtures import FakeBackendFactory
from tests.support.gateway import RunningGateway

GatewayFactory = Callable[[Config], RunningGateway]
MODEL = "m"
CHAT_BODY = {"model": MODEL, "messages": [{"role": "user", "content": "hello"}], "stream": False}
WAIT_SECONDS = 10.0
#: probes often enough that a changed slot count is seen soon
HEALTH = HealthSettings(probe_interval_busy_seconds=0.05, probe_interval_idle_seconds=0.05)
#: clients sent at once to the unbounded backend
MANY = 16


def config(fake: FakeBackend, *, max_concurrency: int | None = None, queue_size: int = 8) -> Config:
    backend = Backend(
        id="a",
        url=fake.url,
        kind=BackendKind(fake.kind.value),
        models=(MODEL,),
        max_concurrency=max_concurrency,
    )
    return Config(backends=(backend,), health=HEALTH, limits=Limits(queue_size=queue_size))


@pytest.fixture
def pool() -> Iterator[ThreadPoolExecutor]:
    with ThreadPoolExecutor(max_workers=MANY + 2) as executor:
        yield executor


def submit_chat(pool: ThreadPoolExecutor, gw: RunningGateway) -> Future[httpx.Response]:
    return pool.submit(httpx.post, gw.url + "/v1/chat/completions", json=CHAT_BODY, timeout=WAIT_SECONDS * 2)


def row(gw: RunningGateway) -> dict[str, Any]:
    """The backend's row of /status, as the status page and ``gatewayd backends`` read it."""
    rows = httpx.get(gw.url + "/status", timeout=WAIT_SECONDS).json()["backends"]
    return dict(next(r for r in rows if r["id"] == "a"))


def admitted(gw: RunningGateway) -> tuple[int, int]:
    """The backend's (in flight, queued) as its admission counts them."""
    admission = gw.call(lambda: gw.generation.pool.runtimes["a"].admission)
    return int(admission.in_flight), int(admission.queued)


def wait_until(condition: Callable[[], bool], what: str) -> None:
    deadline = time.monotonic() + WAIT_SECONDS
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting until {what}")
        time.sleep(0.005)


def wait_for_limit(gw: RunningGateway, limit: int | None, source: str) -> None:
    wait_until(
        lambda: (r := row(gw))["max_concurrency"] == limit and r["concurrency_source"] == source,
        f"the limit in force is {limit} from {source}",
    )


def test_a_llama_server_is_sent_as_many_requests_as_it_has_slots(
    fake_backend_factory: FakeBackendFactory, gateway_factory: GatewayFactory, pool: ThreadPoolExecutor
) -> None:
    fake = fake_backend_factory(models=(MODEL,), kind="llama-server", max_concurrency=6, hang=True)
    gw = gateway_factory(config(fake))
    wait_for_limit(gw, 6, "props")

    futures = [submit_chat(pool, gw) for _ in range(7)]
    fake.wait_for(lambda stats: stats.in_flight == 6, timeout_seconds=WAIT_SECONDS)
    wait_until(lambda: admitted(gw) == (6, 1), "the seventh request is queued")
    assert row(gw)["queued"] == 1

    fake.set(hang=False)
    assert [future.result().status_code for future in futures] == [200] * 7
    assert fake.stats().peak_in_flight == 6


def test_without_total_slots_in_props_the_slots_are_counted(
    fake_backend_factory: FakeBackendFactory, gateway_factory: GatewayFactory, pool: ThreadPoolExecutor
) -> None:
    fake = fake_backend_factory(
        models=(MODEL,), kind="llama-server", max_concurrency=2, props_total_slots=False, hang=True
    )
    gw = gateway_factory(config(fake))
    wait_for_limit(gw, 2, "slots")

    futures = [submit_chat(pool, gw) for _ in range(3)]
    fake.wait_for(lambda stats: stats.in_flight == 2, timeout_seconds=WAIT_SECONDS)
    wait_until(lambda: admitted(gw) == (2, 1), "the third request is queued")
    fake.set(hang=False)
    assert [future.result().status_code for future in futures] == [200] * 3
    assert fake.stats().peak_in_flight == 2


def test_vllm_is_unbounded_every_request_reaches_it_at_once(
    fake_backend_factory: FakeBackendFactory, gateway_factory: GatewayFactory, pool: ThreadPoolExecutor
) -> None:
    fake = fake_backend_factory(models=(MODEL,), kind="vllm", hang=True)
    gw = gateway_factory(config(fake, queue_size=1))  # a queue of one: nothing may wait in it
    wait_for_limit(gw, None, "unbounded")

    futures = [submit_chat(pool, gw) for _ in range(MANY)]
    fake.wait_for(lambda stats: stats.in_flight == MANY, timeout_seconds=WAIT_SECONDS)
    assert admitted(gw) == (MANY, 0)
    assert row(gw)["state"] == "up"  # a busy unbounded backend is not seen as full

    fake.set(hang=False)
    assert [future.result().status_code for future in futures] == [200] * MANY
    wait_until(lambda: admitted(gw) == (0, 0), "every request is released")


def test_an_explicit_max_concurrency_wins_over_the_slots(
    fake_backend_factory: FakeBackendFactory, gateway_factory: GatewayFactory, pool: ThreadPoolExecutor
) -> None:
    fake = fake_backend_factory(models=(MODEL,), kind="llama-server", max_concurrency=5, hang=True)
    gw = gateway_factory(config(fake, max_concurrency=2))
    wait_for_limit(gw, 2, "config")
    wait_until(lambda: fake.stats().count("/props") >= 1, "the server was probed")

    futures = [submit_chat(pool, gw) for _ in range(3)]
    fake.wait_for(lambda stats: stats.in_flight == 2, timeout_seconds=WAIT_SECONDS)
    wait_until(lambda: admitted(gw) == (2, 1), "the third request is queued")
    assert (row(gw)["max_concurrency"], row(gw)["concurrency_source"]) == (2, "config")
    fake.set(hang=False)
    assert [future.result().status_code for future in futures] == [200] * 3
    assert fake.stats().peak_in_flight == 2


def test_a_limit_learned_again_at_a_probe_adjusts_admission_live(
    fake_backend_factory: FakeBackendFactory, gateway_factory: GatewayFactory, pool: ThreadPoolExecutor
) -> None:
    fake = fake_backend_factory(models=(MODEL,), kind="llama-server", max_concurrency=2, hang=True)
    gw = gateway_factory(config(fake))
    wait_for_limit(gw, 2, "props")
    futures = [submit_chat(pool, gw) for _ in range(3)]
    fake.wait_for(lambda stats: stats.in_flight == 2, timeout_seconds=WAIT_SECONDS)
    wait_until(lambda: admitted(gw) == (2, 1), "the third request is queued")

    # restarted with more slots: the waiting request is admitted, counted once
    fake.set(max_concurrency=3)
    fake.wait_for(lambda stats: stats.in_flight == 3, timeout_seconds=WAIT_SECONDS)
    wait_until(lambda: admitted(gw) == (3, 0), "the queued request is admitted")
    assert row(gw)["max_concurrency"] == 3

    # and with fewer: the requests above the new limit finish, a new one waits for room under it
    fake.set(max_concurrency=1)
    wait_for_limit(gw, 1, "props")
    futures.append(submit_chat(pool, gw))
    wait_until(lambda: admitted(gw) == (3, 1), "the fourth request is queued")
    assert fake.stats().in_flight == 3

    fake.set(hang=False)
    assert [future.result().status_code for future in futures] == [200] * 4
    wait_until(lambda: admitted(gw) == (0, 0), "every slot is released")
    assert fake.stats().peak_in_flight == 3
    assert fake.stats().count("/v1/chat/completions") == 4
