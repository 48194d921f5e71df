"""Backend health through the real gateway: passive failure detection from live traffic, probes that put a
failing backend down and bring a recovered one back, and llama-server's loading state."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable

import httpx

from gatewayd.config import Backend, BackendKind, Config, HealthSettings
from gatewayd.gateway.core.health import BackendState
from tests.support.fake_backend import FakeBackend
from tests.support.fixtures import FakeBackendFactory
from tests.support.gateway import RunningGateway

GatewayFactory = Callable[[Config], RunningGateway]
MODEL = "m"
CHAT = "/v1/chat/completions"
#: probes run this often in tests that wait for them
FAST_PROBE_SECONDS = 0.05
WAIT_SECONDS = 5.0


def backend(backend_id: str, fake: FakeBackend) -> Backend:
    return Backend(id=backend_id, url=fake.url, kind=BackendKind(fake.kind.value), models=(MODEL,))


def state(gw: RunningGateway, backend_id: str) -> BackendState:
    return gw.call(lambda: gw.generation.pool.runtimes[backend_id].health.state)


def wait_for_state(gw: RunningGateway, backend_id: str, wanted: BackendState) -> None:
    deadline = time.monotonic() + WAIT_SECONDS
    while (current := state(gw, backend_id)) is not wanted:
        if time.monotonic() > deadline:
            raise AssertionError(f"backend {backend_id} stayed {current.value}, expected {wanted.value}")
        time.sleep(0.01)


def chat(gw: RunningGateway) -> httpx.Response:
    return httpx.post(
        gw.openai_url + "/chat/completions",
        json={"model": MODEL, "messages": [{"role": "user", "content": "hi"}]},
        timeout=10,
    )


def test_consecutive_request_failures_put_a_backend_down_and_it_is_skipped(
    fake_backend_factory: FakeBackendFactory, gateway_factory: GatewayFactory
) -> None:
    failing = fake_backend_factory(models=(MODEL,), fail_status=500)
    healthy = fake_backend_factory(models=(MODEL,))
    settings = HealthSettings(failure_threshold=2, cooldown_seconds=60.0)
    gw = gateway_factory(Config(backends=(backend("a", failing), backend("b", healthy)), health=settings))

    first, second = chat(gw), chat(gw)
    assert [r.headers["x-gatewayd-attempts"] for r in (first, second)] == ["2", "2"]
    assert state(gw, "a") is BackendState.DOWN

    third = chat(gw)

    assert third.status_code == 200
    assert third.headers["x-gatewayd-backend"] == "b"
    assert "x-gatewayd-attempts" not in third.headers
    assert failing.stats().count(CHAT) == 2
    assert gw.call(gw.generation.status)["backends_up"] == 1
    assert 'gatewayd_backend_up{backend="a",state="down"} 0' in httpx.get(gw.url + "/metrics").text


def test_client_errors_do_not_count_against_a_backend(
    fake_backend_factory: FakeBackendFactory, gateway_factory: GatewayFactory
) -> None:
    rejecting = fake_backend_factory(models=(MODEL,), fail_status=400)
    gw = gateway_factory(
        Config(backends=(backend("a", rejecting),), health=HealthSettings(failure_threshold=2))
    )

    assert [chat(gw).status_code for _ in range(3)] == [400, 400, 400]
    assert state(gw, "a") is BackendState.UP


def test_a_probe_brings_a_backend_back_after_its_cooldown(
    fake_backend_factory: FakeBackendFactory, gateway_factory: GatewayFactory
) -> None:
    failing = fake_backend_factory(models=(MODEL,), fail_status=503)
    healthy = fake_backend_factory(models=(MODEL,))
    settings = HealthSettings(
        failure_threshold=1,
        cooldown_seconds=0.3,
        probe_interval_busy_seconds=FAST_PROBE_SECONDS,
        probe_interval_idle_seconds=FAST_PROBE_SECONDS,
    )
    gw = gateway_factory(Config(backends=(backend("a", failing), backend("b", healthy)), health=settings))
    assert chat(gw).headers["x-gatewayd-backend"] == "b"
    assert state(gw, "a") is BackendState.DOWN
    failing.set(fail_status=None)
    down_at = time.monotonic()

    wait_for_state(gw, "a", BackendState.UP)

    assert time.monotonic() - down_at >= 0.25  # probes during the cooldown did not bring it back early
    response = chat(gw)
    assert response.headers["x-gatewayd-backend"] == "a"
    assert "x-gatewayd-attempts" not in response.headers


def test_failing_probes_put_an_idle_backend_down_and_passing_ones_bring_it_back(
    fake_backend_factory: FakeBackendFactory, gateway_factory: GatewayFactory
) -> None:
    flaky = fake_backend_factory(models=(MODEL,))
    healthy = fake_backend_factory(models=(MODEL,))
    settings = HealthSettings(
        failure_threshold=2,
        probe_interval_busy_seconds=FAST_PROBE_SECONDS,
        probe_interval_idle_seconds=FAST_PROBE_SECONDS,
    )
    gw = gateway_factory(Config(backends=(backend("a", flaky), backend("b", healthy)), health=settings))
    assert state(gw, "a") is BackendState.UP

    flaky.set(fail_probes=True, fail_status=503)
    wait_for_state(gw, "a", BackendState.DOWN)
    assert chat(gw).headers["x-gatewayd-backend"] == "b"
    assert flaky.stats().count(CHAT) == 0

    flaky.set(fail_probes=False, fail_status=None)
    wait_for_state(gw, "a", BackendState.UP)
    assert chat(gw).headers["x-gatewayd-backend"] == "a"
    assert flaky.stats().count(CHAT) == 1


def test_a_loading_llama_server_is_not_routed_to_until_it_has_loaded(
    fake_backend_factory: FakeBackendFactory, gateway_factory: GatewayFactory
) -> None:
    loading = fake_backend_factory(models=(MODEL,), kind="llama-server", loading=True)
    ready = fake_backend_factory(models=(MODEL,))
    settings = HealthSettings(probe_interval_busy_seconds=FAST_PROBE_SECONDS)
    gw = gateway_factory(Config(backends=(backend("llama", loading), backend("b", ready)), health=settings))

    response = chat(gw)

    assert response.headers["x-gatewayd-backend"] == "b"
    assert "x-gatewayd-attempts" not in response.headers
    assert loading.stats().count(CHAT) == 0
    assert loading.stats().count("/health") >= 1
    rows = {row["id"]: row for row in httpx.get(gw.url + "/status").json()["backends"]}
    assert rows["llama"]["state"] == "down"
    assert "loading model" in rows["llama"]["last_error"]

    loading.set(loading=False)
    wait_for_state(gw, "llama", BackendState.UP)
    assert chat(gw).headers["x-gatewayd-backend"] == "llama"


def test_llama_server_slots_are_read_by_its_probe(
    fake_backend_factory: FakeBackendFactory, gateway_factory: GatewayFactory
) -> None:
    llama = fake_backend_factory(models=(MODEL,), kind="llama-server", max_concurrency=3)
    gw = gateway_factory(Config(backends=(backend("llama", llama),)))

    rows = httpx.get(gw.url + "/status").json()["backends"]

    assert rows[0]["idle_slots"] == 3
    assert llama.stats().count("/slots") >= 1


def test_a_llama_server_configured_with_a_v1_url_is_probed_at_its_root(
    fake_backend_factory: FakeBackendFactory, gateway_factory: GatewayFactory
) -> None:
    llama = fake_backend_factory(models=(MODEL,), kind="llama-server", max_concurrency=2)
    config = Backend(id="llama", url=llama.url + "/v1/", kind=BackendKind.LLAMA_SERVER, models=(MODEL,))
    gw = gateway_factory(Config(backends=(config,)))

    row = httpx.get(gw.url + "/status").json()["backends"][0]

    assert row["state"] == "up"
    assert row["idle_slots"] == 2
    assert llama.stats().count("/health") >= 1
    assert llama.stats().count("/v1/health") == 0
    assert chat(gw).headers["x-gatewayd-backend"] == "llama"


def test_a_llama_server_with_every_slot_busy_is_degraded_and_routed_to_after_one_with_room(
    fake_backend_factory: FakeBackendFactory, gateway_factory: GatewayFactory
) -> None:
    busy = fake_backend_factory(models=(MODEL,), kind="llama-server", max_concurrency=1, hang=True)
    free = fake_backend_factory(models=(MODEL,), kind="llama-server", max_concurrency=1)
    body = {"model": MODEL, "messages": [{"role": "user", "content": "hi"}]}
    # another client of the same llama-server holds its only slot
    holder = threading.Thread(target=lambda: httpx.post(busy.url + CHAT, json=body, timeout=30))
    holder.start()
    deadline = time.monotonic() + WAIT_SECONDS
    while busy.stats().in_flight == 0 and time.monotonic() < deadline:
        time.sleep(0.01)
    settings = HealthSettings(
        probe_interval_busy_seconds=FAST_PROBE_SECONDS, probe_interval_idle_seconds=FAST_PROBE_SECONDS
    )
    gw = gateway_factory(Config(backends=(backend("busy", busy), backend("free", free)), health=settings))
    wait_for_state(gw, "busy", BackendState.DEGRADED)

    assert all(chat(gw).headers["x-gatewayd-backend"] == "free" for _ in range(3))

    busy.set(hang=False)
    holder.join(10)
    wait_for_state(gw, "busy", BackendState.UP)
