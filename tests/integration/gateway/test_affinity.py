"""Session affinity: with ``affinity.enabled`` a conversation keeps landing on the replica that served its
first turn (where its KV cache is), keyed by a session header or by its leading messages, and moves when
that replica goes down. What the pin table said is in the ``x-gatewayd-affinity`` response header.

Two replicas serve one model; ``b`` weighs more, so without affinity an idle ``b`` goes first.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import replace
from pathlib import Path
from typing import Any

import httpx
import openai
import pytest

from gatewayd.config import AffinitySettings, Backend, BackendKind, Config, HealthSettings
from gatewayd.gateway.core.health import BackendState
from gatewayd.gateway.service import GatewayFactory
from tests.support.fake_backend import FakeBackend
from tests.support.fixtures import FakeBackendFactory
from tests.support.gateway import RunningGateway

StartGateway = Callable[[Config], RunningGateway]
MODEL = "m"
AFFINITY = "x-gatewayd-affinity"
PREFER = "X-Gatewayd-Preferred-Backend"
SYSTEM = {"role": "system", "content": "You are a geography tutor who answers in one sentence."}
TURN_1 = [SYSTEM, {"role": "user", "content": "Which seas does the Rhine flow into?"}]
TURN_2 = [
    *TURN_1,
    {"role": "assistant", "content": "The North Sea."},
    {"role": "user", "content": "And the Danube?"},
]
TURN_3 = [*TURN_2, {"role": "assistant", "content": "The Black Sea."}, {"role": "user", "content": "Po?"}]
OTHER = [SYSTEM, {"role": "user", "content": "Name the longest river in South America, please."}]


def affinity_config(a: FakeBackend, b: FakeBackend, *, enabled: bool = True, **health: Any) -> Config:
    return Config(
        backends=(
            Backend(id="a", url=a.url, kind=BackendKind.OPENAI, models=(MODEL,)),
            Backend(id="b", url=b.url, kind=BackendKind.OPENAI, models=(MODEL,), weight=2.0),
        ),
        affinity=AffinitySettings(enabled=enabled),
        health=HealthSettings(**health),
    )


def chat(gw: RunningGateway, messages: list[dict[str, str]], **headers: str) -> httpx.Response:
    body = {"model": MODEL, "messages": messages, "stream": False}
    response = httpx.post(gw.openai_url + "/chat/completions", json=body, headers=headers, timeout=10)
    assert response.status_code == 200, response.text
    return response


def served(response: httpx.Response) -> tuple[str | None, str]:
    """(what affinity said, which backend answered)."""
    return response.headers.get(AFFINITY), response.headers["x-gatewayd-backend"]


@contextmanager
def request_held_on(gw: RunningGateway, fake: FakeBackend, backend_id: str) -> Iterator[None]:
    """One request in flight on ``fake`` for the duration of the block: it takes a free slot there while
    requests that arrive after it are answered at once (``fail_times=1`` clears the hang for them)."""
    fake.set(hang=True, fail_times=1)
    with ThreadPoolExecutor(max_workers=1) as pool:
        holding: Future[httpx.Response] = pool.submit(chat, gw, OTHER, **{PREFER: backend_id})
        fake.wait_for(lambda stats: stats.in_flight == 1)
        try:
            yield
        finally:
            fake.set(hang=False)
            assert holding.result().headers["x-gatewayd-backend"] == backend_id


def test_the_next_turn_stays_even_when_the_other_replica_has_more_room(
    fake_backend_factory: FakeBackendFactory, gateway_factory: StartGateway
) -> None:
    a, b = fake_backend_factory(models=(MODEL,)), fake_backend_factory(models=(MODEL,))
    gw = gateway_factory(affinity_config(a, b))

    assert served(chat(gw, TURN_1)) == ("miss", "b")  # b weighs more
    with request_held_on(gw, b, "b"):
        assert served(chat(gw, OTHER + TURN_2[2:])) == ("miss", "a")  # a new conversation: a has more room
        assert served(chat(gw, TURN_2)) == ("hit", "b")
    assert served(chat(gw, TURN_3)) == ("hit", "b")
    assert b.stats().count("/v1/chat/completions") == 4  # three turns and the held request


def test_the_next_turn_stays_on_the_replica_that_weighs_less(
    fake_backend_factory: FakeBackendFactory, gateway_factory: StartGateway
) -> None:
    a, b = fake_backend_factory(models=(MODEL,)), fake_backend_factory(models=(MODEL,))
    gw = gateway_factory(affinity_config(a, b))

    with request_held_on(gw, b, "b"):
        assert served(chat(gw, TURN_1)) == ("miss", "a")  # b is busier
    assert served(chat(gw, OTHER)) == ("miss", "b")  # both idle again: b goes first
    assert served(chat(gw, TURN_2)) == ("hit", "a")


def test_a_session_header_keys_the_conversation_whatever_its_messages(
    fake_backend_factory: FakeBackendFactory, gateway_factory: StartGateway
) -> None:
    a, b = fake_backend_factory(models=(MODEL,)), fake_backend_factory(models=(MODEL,))
    gw = gateway_factory(affinity_config(a, b))
    session = {"x-session-id": "3f1c9a52-session"}

    with request_held_on(gw, b, "b"):
        assert served(chat(gw, [{"role": "user", "content": "hi"}], **session)) == ("miss", "a")
    with openai.OpenAI(base_url=gw.openai_url, api_key="x", max_retries=0, timeout=10) as client:
        stream = client.chat.completions.create(
            model=MODEL,
            messages=[{"role": "user", "content": "something else entirely"}],
            stream=True,
            extra_headers=session,
        )
        assert stream.response.headers[AFFINITY] == "hit"
        assert stream.response.headers["x-gatewayd-backend"] == "a"
        assert "".join(chunk.choices[0].delta.content or "" for chunk in stream if chunk.choices)
    assert served(chat(gw, [{"role": "user", "content": "hi"}], **{"x-session-id": "another"})) == (
        "miss",
        "b",
    )


def test_a_conversation_moves_when_its_replica_goes_down(
    fake_backend_factory: FakeBackendFactory, gateway_factory: StartGateway
) -> None:
    a, b = fake_backend_factory(models=(MODEL,)), fake_backend_factory(models=(MODEL,))
    gw = gateway_factory(affinity_config(a, b, failure_threshold=1, cooldown_seconds=600.0))
    assert served(chat(gw, TURN_1)) == ("miss", "b")

    b.set(fail_status=503)  # one failed request puts b down (threshold 1) for the cooldown
    assert served(chat(gw, OTHER, **{PREFER: "b"})) == (None, "a")
    assert gw.call(lambda: gw.generation.pool.runtimes["b"].health.state) is BackendState.DOWN
    b.set(fail_status=None)

    assert served(chat(gw, TURN_2)) == ("repin", "a")
    assert served(chat(gw, TURN_3)) == ("hit", "a")


def test_a_preferred_backend_wins_and_pins_nothing(
    fake_backend_factory: FakeBackendFactory, gateway_factory: StartGateway
) -> None:
    a, b = fake_backend_factory(models=(MODEL,)), fake_backend_factory(models=(MODEL,))
    gw = gateway_factory(affinity_config(a, b))

    assert served(chat(gw, TURN_1, **{PREFER: "a"})) == (None, "a")
    assert served(chat(gw, TURN_2)) == ("miss", "b")


def test_a_request_too_short_to_key_is_routed_as_usual_without_the_header(
    fake_backend_factory: FakeBackendFactory, gateway_factory: StartGateway
) -> None:
    a, b = fake_backend_factory(models=(MODEL,)), fake_backend_factory(models=(MODEL,))
    gw = gateway_factory(affinity_config(a, b))

    for _ in range(2):
        assert served(chat(gw, [{"role": "user", "content": "hi"}])) == (None, "b")


def test_disabled_affinity_neither_pins_nor_says_so(
    fake_backend_factory: FakeBackendFactory, gateway_factory: StartGateway
) -> None:
    a, b = fake_backend_factory(models=(MODEL,)), fake_backend_factory(models=(MODEL,))
    gw = gateway_factory(affinity_config(a, b, enabled=False))

    with request_held_on(gw, b, "b"):
        assert served(chat(gw, TURN_1, **{"x-session-id": "s"})) == (None, "a")
    assert served(chat(gw, TURN_2, **{"x-session-id": "s"})) == (None, "b")


def test_the_pins_outlive_a_reload_unless_their_bounds_change(tmp_path: Path) -> None:
    factory = GatewayFactory(state_dir=tmp_path)
    settings = AffinitySettings(enabled=True)

    table = factory.affinity_table(settings)
    table.pin("conversation", "b", now=0.0)

    assert factory.affinity_table(replace(settings, leading_messages=3)) is table
    assert factory.affinity_table(settings).pinned("conversation", now=1.0) == "b"
    resized = factory.affinity_table(replace(settings, max_entries=10))
    assert resized is not table
    assert resized.pinned("conversation", now=1.0) is None
    assert factory.affinity_table(replace(settings, max_entries=10, ttl_seconds=5.0)) is not resized


@pytest.mark.parametrize("path", ["/v1/chat/completions", "/api/chat"])
def test_each_dialect_is_keyed_alike(
    fake_backend_factory: FakeBackendFactory, gateway_factory: StartGateway, path: str
) -> None:
    a, b = fake_backend_factory(models=(MODEL,)), fake_backend_factory(models=(MODEL,))
    gw = gateway_factory(affinity_config(a, b))

    for messages, expected in ((TURN_1, "miss"), (TURN_2, "hit")):
        body = {"model": MODEL, "messages": messages, "stream": False}
        response = httpx.post(gw.url + path, json=body, timeout=10)
        assert response.status_code == 200
        assert served(response) == (expected, "b")


class _Instance:
    def snapshot(self) -> dict[str, object]:
        return {"pid": 0, "generation": 1, "mode": "test"}


@pytest.mark.anyio
async def test_a_conversation_stays_put_across_a_reload(
    fake_backend_factory: FakeBackendFactory, tmp_path: Path
) -> None:
    a, b = fake_backend_factory(models=(MODEL,)), fake_backend_factory(models=(MODEL,))
    config = affinity_config(a, b)
    # the reloaded config weighs a more: only the pin keeps the conversation on b
    reloaded = replace(config, backends=(replace(config.backends[0], weight=3.0), config.backends[1]))
    factory = GatewayFactory(state_dir=tmp_path)

    async def turn(number: int, config: Config, messages: list[dict[str, str]]) -> tuple[str | None, str]:
        async with (
            factory.generation(config, number=number, instance=_Instance()) as generation,
            httpx.AsyncClient(transport=httpx.ASGITransport(app=generation), base_url="http://gw") as client,
        ):
            body = {"model": MODEL, "messages": messages, "stream": False}
            response = await client.post("/v1/chat/completions", json=body)
            assert response.status_code == 200, response.text
            return served(response)

    async with factory.lifetime():
        assert await turn(1, config, TURN_1) == ("miss", "b")
        assert await turn(2, reloaded, TURN_2) == ("hit", "b")
        assert await turn(3, reloaded, OTHER) == ("miss", "a")
