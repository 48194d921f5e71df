"""The dispatcher called as an ASGI app: pinning, in-flight counts, lifespan, 503/413, Connection: close."""

from __future__ import annotations

import gc
import json
import time
import weakref
from collections.abc import Mapping
from typing import Any

import anyio
import pytest

from gatewayd.supervisor.dispatcher import Dispatcher, GenerationSlot

pytestmark = pytest.mark.anyio


class Gen:
    """A generation whose requests to /wait block until ``release`` is set; /read reads the whole body."""

    def __init__(self, name: str) -> None:
        self.name = name
        self.release = anyio.Event()
        self.entered = 0

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        self.entered += 1
        if scope["path"] == "/boom":
            raise RuntimeError("boom")
        if scope["path"] == "/wait":
            await self.release.wait()
        if scope["path"] == "/read":
            while (await receive()).get("more_body"):
                pass
        headers = [(b"connection", b"keep-alive")] if scope["path"] == "/keep" else []
        await send({"type": "http.response.start", "status": 200, "headers": headers})
        await send({"type": "http.response.body", "body": self.name.encode()})

    def mark_draining(self) -> None:
        pass

    def end_streams(self) -> None:
        pass

    def status(self) -> Mapping[str, object]:
        return {}


def http_scope(path: str, *, headers: list[tuple[bytes, bytes]] | None = None, version: str = "1.1") -> Any:
    return {"type": "http", "path": path, "http_version": version, "headers": headers or []}


class Exchange:
    """Drives one request through an ASGI app and records what it sent."""

    def __init__(self, body_chunks: list[bytes] | None = None) -> None:
        self.sent: list[dict[str, Any]] = []
        self._chunks = list(body_chunks or [b""])

    async def receive(self) -> dict[str, Any]:
        if self._chunks:
            chunk = self._chunks.pop(0)
            return {"type": "http.request", "body": chunk, "more_body": bool(self._chunks)}
        await anyio.sleep_forever()
        raise AssertionError

    async def send(self, message: Any) -> None:
        self.sent.append(dict(message))

    @property
    def status(self) -> int:
        return int(self.sent[0]["status"])

    @property
    def headers(self) -> dict[bytes, bytes]:
        return dict(self.sent[0].get("headers", []))

    @property
    def body(self) -> bytes:
        return b"".join(message.get("body", b"") for message in self.sent[1:])


def slot(gen: Gen, number: int) -> GenerationSlot:
    return GenerationSlot(gen, number=number)


async def test_no_generation_answers_503_with_retry_after() -> None:
    dispatcher = Dispatcher()
    exchange = Exchange()
    await dispatcher(http_scope("/x"), exchange.receive, exchange.send)
    assert exchange.status == 503
    assert exchange.headers[b"retry-after"] == b"1"
    assert json.loads(exchange.body)["error"]["code"] == "gateway_starting"


async def test_requests_are_pinned_to_the_generation_current_when_they_arrived() -> None:
    dispatcher = Dispatcher()
    old_gen, new_gen = Gen("old"), Gen("new")
    old_slot = slot(old_gen, 1)
    assert dispatcher.swap(old_slot) is None
    slow = Exchange()
    async with anyio.create_task_group() as tg:
        tg.start_soon(dispatcher, http_scope("/wait"), slow.receive, slow.send)
        with anyio.fail_after(5):
            while old_slot.in_flight == 0:
                await anyio.sleep(0.001)
        new_slot = slot(new_gen, 2)
        assert dispatcher.swap(new_slot) is old_slot
        assert dispatcher.current is new_slot
        fast = Exchange()
        await dispatcher(http_scope("/fast"), fast.receive, fast.send)
        assert fast.body == b"new"
        assert old_slot.in_flight == 1
        assert dispatcher.in_flight == 1
        # bounded wait: the old generation is still busy
        started = time.monotonic()
        assert not await old_slot.wait_idle(0.05)
        assert time.monotonic() - started >= 0.04
        old_gen.release.set()
        assert await old_slot.wait_idle(5)
    assert slow.body == b"old"
    assert old_slot.in_flight == 0
    assert new_slot.in_flight == 0
    assert dispatcher.in_flight == 0


async def test_a_swapped_out_idle_generation_is_not_kept_alive() -> None:
    dispatcher = Dispatcher()
    dead: list[weakref.ref[Gen]] = []
    for number in range(1, 6):
        gen = Gen(str(number))
        dispatcher.swap(slot(gen, number))
        exchange = Exchange()
        await dispatcher(http_scope("/x"), exchange.receive, exchange.send)
        assert exchange.body == str(number).encode()
        dead.append(weakref.ref(gen))
        del gen
    dispatcher.swap(None)
    gc.collect()
    assert [ref() for ref in dead] == [None] * 5


async def test_a_failing_request_still_leaves_the_in_flight_count() -> None:
    dispatcher = Dispatcher()
    current = slot(Gen("g"), 1)
    dispatcher.swap(current)
    exchange = Exchange()
    with pytest.raises(RuntimeError, match="boom"):
        await dispatcher(http_scope("/boom"), exchange.receive, exchange.send)
    assert current.in_flight == 0
    assert await current.wait_idle(0)


async def test_lifespan_is_answered_by_the_dispatcher() -> None:
    dispatcher = Dispatcher()
    incoming = [{"type": "lifespan.startup"}, {"type": "lifespan.shutdown"}]
    sent: list[Any] = []

    async def receive() -> Any:
        return incoming.pop(0)

    async def send(message: Any) -> None:
        sent.append(message)

    with anyio.fail_after(5):
        await dispatcher({"type": "lifespan"}, receive, send)
    assert [message["type"] for message in sent] == [
        "lifespan.startup.complete",
        "lifespan.shutdown.complete",
    ]


async def test_connection_close_mode_marks_http1_responses_only() -> None:
    dispatcher = Dispatcher()
    dispatcher.swap(slot(Gen("g"), 1))
    plain = Exchange()
    await dispatcher(http_scope("/x"), plain.receive, plain.send)
    assert b"connection" not in plain.headers

    dispatcher.connection_close = True
    closing = Exchange()
    await dispatcher(http_scope("/keep"), closing.receive, closing.send)
    assert [value for name, value in closing.sent[0]["headers"] if name == b"connection"] == [b"close"]

    http2 = Exchange()
    await dispatcher(http_scope("/x", version="2"), http2.receive, http2.send)
    assert b"connection" not in http2.headers


async def test_without_a_limit_bodies_are_the_generations_business() -> None:
    dispatcher = Dispatcher()
    gen = Gen("g")
    dispatcher.swap(slot(gen, 1))
    big = Exchange([b"x" * 100_000, b"y" * 100_000])
    await dispatcher(http_scope("/read", headers=[(b"content-length", b"200000")]), big.receive, big.send)
    assert big.status == 200
    assert gen.entered == 1
