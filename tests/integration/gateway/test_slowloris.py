"""A slowloris flood on loopback: many sockets that each send half a request head and then nothing.

With ``server.max_connections`` far below the flood and a short ``server.header_timeout_seconds``, a normal
client still gets /healthz and a chat completion while the flood is open, the gateway never holds more than
the cap, and every flood socket is closed by the gateway (the oldest ones to make room, the rest after the
header timeout). bench/bench_slowloris.py runs the full-size flood (20,000 sockets) and measures memory.
"""

from __future__ import annotations

import select
import socket
import time
from collections.abc import Iterator

import httpx
import openai
import pytest

from gatewayd.config import Backend, BackendKind, Config, ServerSettings
from tests.support.fake_backend import running_fake_backend
from tests.support.gateway import RunningGateway, running_gateway

MODEL = "m"
FLOOD = 400
MAX_CONNECTIONS = 64
HEADER_TIMEOUT_SECONDS = 1.0
PARTIAL_HEAD = b"GET /healthz HTTP/1.1\r\nHost: x\r\n"
#: generous bounds for a loaded CI machine; on an idle one each takes milliseconds
ANSWER_DEADLINE_SECONDS = 10.0
CLOSE_DEADLINE_SECONDS = 30.0


@pytest.fixture
def gw() -> Iterator[RunningGateway]:
    with running_fake_backend(models=(MODEL,)) as fake:
        config = Config(
            server=ServerSettings(
                max_connections=MAX_CONNECTIONS,
                header_timeout_seconds=HEADER_TIMEOUT_SECONDS,
                keep_alive_timeout_seconds=600.0,  # so only the header timeout can close the flood
            ),
            backends=(Backend(id="a", url=fake.url, kind=BackendKind.OPENAI, models=(MODEL,)),),
        )
        with running_gateway(config) as gateway:
            yield gateway


def open_flood(port: int, count: int) -> list[socket.socket]:
    flood = []
    for _ in range(count):
        sock = socket.create_connection(("127.0.0.1", port))
        sock.sendall(PARTIAL_HEAD)
        flood.append(sock)
    return flood


def closed_by_peer(sock: socket.socket) -> bool:
    readable, _, _ = select.select([sock], [], [], 0)
    if not readable:
        return False
    try:
        return sock.recv(1024) == b""
    except ConnectionError:
        return True


def test_a_slowloris_flood_neither_locks_out_a_client_nor_outlives_the_header_timeout(
    gw: RunningGateway,
) -> None:
    assert gw.server is not None
    flood = open_flood(gw.port, FLOOD)
    try:
        started = time.monotonic()
        with httpx.Client(timeout=ANSWER_DEADLINE_SECONDS) as client:
            assert client.get(gw.url + "/healthz").status_code == 200
        with openai.OpenAI(
            base_url=gw.openai_url, api_key="x", max_retries=0, timeout=ANSWER_DEADLINE_SECONDS
        ) as client:
            reply = client.chat.completions.create(model=MODEL, messages=[{"role": "user", "content": "hi"}])
        assert reply.choices[0].message.content
        answered_in = time.monotonic() - started
        assert answered_in < ANSWER_DEADLINE_SECONDS
        assert gw.call(lambda: gw.server.connections) <= MAX_CONNECTIONS + 1  # type: ignore[union-attr]

        # every flood socket is closed by the gateway: most made room at the cap, the rest time out
        open_ones = list(flood)
        deadline = time.monotonic() + CLOSE_DEADLINE_SECONDS
        while open_ones:
            assert time.monotonic() < deadline, f"{len(open_ones)} flood sockets still open"
            open_ones = [sock for sock in open_ones if not closed_by_peer(sock)]
            time.sleep(0.05)
        assert time.monotonic() - started >= HEADER_TIMEOUT_SECONDS * 0.9  # the last ones waited for it
        deadline = time.monotonic() + CLOSE_DEADLINE_SECONDS
        while gw.call(lambda: gw.server.connections) != 0:  # type: ignore[union-attr]
            assert time.monotonic() < deadline
            time.sleep(0.05)

        # a second flood is handled the same way
        second = open_flood(gw.port, FLOOD)
        flood.extend(second)
        with httpx.Client(timeout=ANSWER_DEADLINE_SECONDS) as client:
            assert client.get(gw.url + "/healthz").status_code == 200
        assert gw.call(lambda: gw.server.connections) <= MAX_CONNECTIONS + 1  # type: ignore[union-attr]
    finally:
        for sock in flood:
            sock.close()
