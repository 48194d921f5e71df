"""HttpServer's header timeout and connection cap, against real sockets on 127.0.0.1."""

from __future__ import annotations

import socket
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager
from typing import Any

import anyio
import anyio.abc
import httpx
import pytest

from gatewayd.config import ServerSettings
from gatewayd.supervisor.server import HttpServer

pytestmark = pytest.mark.anyio

HEADER_TIMEOUT = 0.3
PARTIAL_HEAD = b"GET /healthz HTTP/1.1\r\nHost: x\r\n"
#: long enough for any of these tests on a loaded machine, far below keep_alive_timeout_seconds
DEADLINE = 10.0


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


@pytest.fixture
def listener() -> Iterator[socket.socket]:
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind(("127.0.0.1", 0))
    sock.listen(128)
    sock.setblocking(False)
    yield sock
    sock.close()


class App:
    """/hang waits until released; /echo answers its body; /stream sends 5 chunks 0.2 s apart (over the
    header timeout); anything else answers its path."""

    def __init__(self) -> None:
        self.release = anyio.Event()
        self.hanging = 0

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            return
        path = scope["path"]
        body = path.encode()
        if path == "/hang":
            self.hanging += 1
            await self.release.wait()
        elif path == "/echo":
            body = b""
            while True:
                message = await receive()
                body += message.get("body", b"")
                if not message.get("more_body"):
                    break
        elif path == "/stream":
            await send({"type": "http.response.start", "status": 200, "headers": []})
            for index in range(5):
                await anyio.sleep(HEADER_TIMEOUT * 2 / 3)
                await send({"type": "http.response.body", "body": b"%d" % index, "more_body": True})
            await send({"type": "http.response.body", "body": b""})
            return
        await send(
            {
                "type": "http.response.start",
                "status": 200,
                "headers": [(b"content-length", b"%d" % len(body))],
            }
        )
        await send({"type": "http.response.body", "body": body})


def url(sock: socket.socket, path: str) -> str:
    host, port = sock.getsockname()
    return f"http://{host}:{port}{path}"


async def connect(sock: socket.socket) -> anyio.abc.SocketStream:
    host, port = sock.getsockname()
    return await anyio.connect_tcp(host, port)


async def read_until_eof(stream: anyio.abc.SocketStream) -> bytes:
    data = b""
    try:
        while True:
            data += await stream.receive()
    except (anyio.EndOfStream, anyio.BrokenResourceError, ConnectionError):
        return data


async def wait_until(predicate: Any, timeout: float = DEADLINE) -> None:
    with anyio.fail_after(timeout):
        while not predicate():
            await anyio.sleep(0.005)


@asynccontextmanager
async def serve(listener: socket.socket, settings: ServerSettings) -> AsyncIterator[tuple[HttpServer, App]]:
    app = App()
    server = HttpServer(listener, app, settings)
    async with anyio.create_task_group() as tg:
        await tg.start(server.serve)
        yield server, app
        app.release.set()
        tg.cancel_scope.cancel()


@pytest.fixture
async def running(listener: socket.socket) -> AsyncIterator[tuple[HttpServer, App]]:
    settings = ServerSettings(keep_alive_timeout_seconds=60, header_timeout_seconds=HEADER_TIMEOUT)
    async with serve(listener, settings) as each:
        yield each


@pytest.mark.parametrize("sent", [PARTIAL_HEAD, b""], ids=["partial-head", "nothing"])
async def test_a_connection_without_a_complete_head_is_closed_after_the_header_timeout(
    listener: socket.socket, running: tuple[HttpServer, App], sent: bytes
) -> None:
    server, _ = running
    stream = await connect(listener)
    if sent:
        await stream.send(sent)
    start = anyio.current_time()
    with anyio.fail_after(DEADLINE):  # keep-alive (60 s) would close it much later
        assert await read_until_eof(stream) == b""
    assert anyio.current_time() - start >= HEADER_TIMEOUT * 0.9
    await wait_until(lambda: server.connections == 0)
    await stream.aclose()


async def test_a_slow_body_and_a_long_stream_are_not_cut_by_the_header_timeout(
    listener: socket.socket, running: tuple[HttpServer, App]
) -> None:
    stream = await connect(listener)
    body = b"0123456789"
    await stream.send(b"POST /echo HTTP/1.1\r\nHost: x\r\nContent-Length: %d\r\n\r\n" % len(body))
    for index in range(0, len(body), 2):  # 5 parts, over the header timeout in all
        await anyio.sleep(HEADER_TIMEOUT / 3)
        await stream.send(body[index : index + 2])
    await stream.send(b"GET /stream HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
    with anyio.fail_after(DEADLINE):
        answer = await read_until_eof(stream)
    assert answer.startswith(b"HTTP/1.1 200")
    assert answer.count(b"HTTP/1.1 200") == 2
    assert b"\r\n\r\n0123456789" in answer
    assert b"1\r\n0\r\n1\r\n1\r\n1\r\n2\r\n1\r\n3\r\n1\r\n4\r\n0\r\n\r\n" in answer  # every chunk
    await stream.aclose()


async def test_an_idle_keep_alive_connection_is_bound_by_keep_alive_but_a_late_next_head_is_closed(
    listener: socket.socket, running: tuple[HttpServer, App]
) -> None:
    stream = await connect(listener)
    await stream.send(b"GET /first HTTP/1.1\r\nHost: x\r\n\r\n")
    with anyio.fail_after(DEADLINE):
        first = b""
        while not first.endswith(b"/first"):
            first += await stream.receive()
    # idle longer than the header timeout: keep-alive (60 s) applies, the connection stays open
    await anyio.sleep(HEADER_TIMEOUT * 3)
    await stream.send(b"GET /second HTTP/1.1\r\nHost: x\r\n\r\n")
    with anyio.fail_after(DEADLINE):
        second = b""
        while not second.endswith(b"/second"):
            second += await stream.receive()
    # a next request that starts and stalls is closed after the header timeout
    await stream.send(PARTIAL_HEAD)
    with anyio.fail_after(DEADLINE):
        assert await read_until_eof(stream) == b""
    await stream.aclose()


async def test_at_the_cap_a_new_client_closes_the_oldest_incomplete_connection(
    listener: socket.socket,
) -> None:
    settings = ServerSettings(header_timeout_seconds=60, max_connections=4)
    async with serve(listener, settings) as (server, _):
        flood = []
        for _ in range(4):
            flood.append(await connect(listener))
            await flood[-1].send(PARTIAL_HEAD)
        await wait_until(lambda: server.connections == 4)
        async with httpx.AsyncClient() as client:
            response = await client.get(url(listener, "/healthz"), timeout=DEADLINE)
        assert response.status_code == 200
        with anyio.fail_after(DEADLINE):  # the oldest partial head made room
            assert await read_until_eof(flood[0]) == b""
        await wait_until(lambda: server.connections <= 4)
        assert server.max_connections == 4
        for stream in flood:
            await stream.aclose()


async def test_at_the_cap_with_every_connection_busy_a_new_one_gets_503(listener: socket.socket) -> None:
    settings = ServerSettings(header_timeout_seconds=60, max_connections=2)
    async with serve(listener, settings) as (server, app):
        async with httpx.AsyncClient() as client, anyio.create_task_group() as tg:
            for _ in range(2):
                tg.start_soon(client.get, url(listener, "/hang"))
            await wait_until(lambda: app.hanging == 2)
            stream = await connect(listener)
            with anyio.fail_after(DEADLINE):
                answer = await read_until_eof(stream)
            assert answer.startswith(b"HTTP/1.1 503")
            assert b"server.max_connections" in answer
            await stream.aclose()
            app.release.set()
        assert server.connections <= 2


class EarlyAnswer:
    """Answers 403 without reading the request body, as an auth check does."""

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            return
        status = 403 if scope["path"] == "/refuse" else 200
        if status == 200:
            while (await receive()).get("more_body"):
                pass
        await send({"type": "http.response.start", "status": status, "headers": [(b"content-length", b"2")]})
        await send({"type": "http.response.body", "body": b"no" if status == 403 else b"ok"})


async def test_an_answer_before_the_body_is_read_closes_the_connection_and_says_so(
    listener: socket.socket,
) -> None:
    server = HttpServer(listener, EarlyAnswer(), ServerSettings())
    async with anyio.create_task_group() as tg:
        await tg.start(server.serve)
        stream = await connect(listener)
        # the head first, the body a moment later: the app has answered before the body arrives
        await stream.send(b"POST /refuse HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\n\r\n")
        with anyio.fail_after(DEADLINE):
            head = b""
            while b"\r\n\r\n" not in head:
                head += await stream.receive()
        assert head.startswith(b"HTTP/1.1 403")
        assert b"connection: close" in head.lower()  # else a client reuses a connection about to close
        await stream.aclose()
        async with httpx.AsyncClient() as client:  # a body read to the end keeps the connection
            response = await client.post(url(listener, "/ok"), content=b"hello")
            assert response.headers.get("connection") != "close"
            assert (await client.post(url(listener, "/ok"), content=b"again")).text == "ok"
            assert server.connections == 1
        tg.cancel_scope.cancel()
