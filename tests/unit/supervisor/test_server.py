"""HttpServer against real sockets on 127.0.0.1, under the stock asyncio loop and under uvloop."""

from __future__ import annotations

import socket
import time
from collections.abc import AsyncIterator, Iterator
from typing import Any

import anyio
import httpx
import pytest

from gatewayd.config import ServerSettings
from gatewayd.supervisor.server import HttpServer, ServerState

pytestmark = pytest.mark.anyio


@pytest.fixture(
    params=[
        pytest.param(("asyncio", {"use_uvloop": False}), id="asyncio"),
        pytest.param(("asyncio", {"use_uvloop": True}), id="uvloop"),
    ]
)
def anyio_backend(request: pytest.FixtureRequest) -> Any:
    return request.param


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
    """/hang waits until released; /boom raises; everything else answers its path."""

    def __init__(self) -> None:
        self.release = anyio.Event()
        self.hanging = 0

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            return
        if scope["path"] == "/boom":
            raise RuntimeError("boom")
        if scope["path"] == "/hang":
            self.hanging += 1
            await self.release.wait()
        body = scope["path"].encode()
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


async def wait_until(predicate: Any, timeout: float = 5.0) -> None:
    with anyio.fail_after(timeout):
        while not predicate():
            await anyio.sleep(0.005)


async def read_until_eof(stream: anyio.abc.SocketStream) -> bytes:
    """Reads until the peer closes; returns what was read."""
    data = b""
    try:
        while True:
            data += await stream.receive()
    except anyio.EndOfStream:
        return data


@pytest.fixture
async def running(listener: socket.socket) -> AsyncIterator[tuple[HttpServer, App, anyio.CancelScope]]:
    app = App()
    server = HttpServer(listener, app, ServerSettings(keep_alive_timeout_seconds=30))
    async with anyio.create_task_group() as tg:
        await tg.start(server.serve)
        yield server, app, tg.cancel_scope
        app.release.set()
        tg.cancel_scope.cancel()


async def test_serves_keep_alive_requests_on_one_connection(
    listener: socket.socket, running: tuple[HttpServer, App, anyio.CancelScope]
) -> None:
    server, _, _ = running
    assert server.state is ServerState.ACCEPTING
    async with httpx.AsyncClient() as client:
        for index in range(5):
            response = await client.get(url(listener, f"/r{index}"))
            assert response.status_code == 200
            assert response.text == f"/r{index}"
        assert server.connections == 1


async def test_an_app_error_answers_500_and_the_server_keeps_serving(
    listener: socket.socket, running: tuple[HttpServer, App, anyio.CancelScope]
) -> None:
    async with httpx.AsyncClient() as client:
        assert (await client.get(url(listener, "/boom"))).status_code == 500
        assert (await client.get(url(listener, "/ok"))).text == "/ok"


async def test_stop_accepting_leaves_open_connections_served_and_new_ones_queued(
    listener: socket.socket, running: tuple[HttpServer, App, anyio.CancelScope]
) -> None:
    server, _, _ = running
    async with httpx.AsyncClient() as client:
        assert (await client.get(url(listener, "/before"))).status_code == 200
        server.stop_accepting()
        assert server.state is ServerState.NOT_ACCEPTING
        # the kept-alive connection still works
        assert (await client.get(url(listener, "/after"))).text == "/after"
    # a new connection completes the TCP handshake (kernel queue) but nobody answers it
    async with httpx.AsyncClient(timeout=httpx.Timeout(0.3)) as fresh:
        with pytest.raises(httpx.ReadTimeout):
            await fresh.get(url(listener, "/queued"))
    assert listener.fileno() != -1


async def test_listener_survives_a_server_and_serves_the_next_one(listener: socket.socket) -> None:
    for round_ in range(3):
        app = App()
        server = HttpServer(listener, app, ServerSettings())
        async with anyio.create_task_group() as tg:
            await tg.start(server.serve)
            async with httpx.AsyncClient() as client:
                assert (await client.get(url(listener, f"/round{round_}"))).status_code == 200
            tg.cancel_scope.cancel()
        assert server.state is ServerState.CLOSED
        assert listener.fileno() != -1


async def test_close_idle_closes_idle_connections_and_lets_busy_ones_finish(
    listener: socket.socket, running: tuple[HttpServer, App, anyio.CancelScope]
) -> None:
    server, app, _ = running
    with pytest.raises(RuntimeError, match="stop_accepting"):
        await server.close_idle()
    host, port = listener.getsockname()
    idle = await anyio.connect_tcp(host, port)
    await idle.send(b"GET /idle HTTP/1.1\r\nhost: x\r\n\r\n")
    first = await idle.receive()
    assert first.startswith(b"HTTP/1.1 200")
    results: list[int] = []

    async def busy() -> None:
        async with httpx.AsyncClient() as client:
            results.append((await client.get(url(listener, "/hang"))).status_code)

    async with anyio.create_task_group() as tg:
        tg.start_soon(busy)
        await wait_until(lambda: app.hanging == 1)
        assert server.connections == 2
        server.stop_accepting()
        await server.close_idle()
        # the idle keep-alive connection is closed by the server: EOF
        with anyio.fail_after(5):
            assert await read_until_eof(idle) == b""
        await wait_until(lambda: server.connections == 1)
        app.release.set()
    assert results == [200]
    assert await server.wait_closed(5.0)
    await idle.aclose()


async def test_wait_closed_is_bounded_and_cancel_aborts_connections(listener: socket.socket) -> None:
    app = App()
    server = HttpServer(listener, app, ServerSettings())
    outcomes: list[object] = []

    async def hang() -> None:
        try:
            async with httpx.AsyncClient() as client:
                outcomes.append((await client.get(url(listener, "/hang"))).status_code)
        except httpx.HTTPError as error:
            outcomes.append(error)

    async with anyio.create_task_group() as outer:
        outer.start_soon(hang)
        async with anyio.create_task_group() as tg:
            await tg.start(server.serve)
            await wait_until(lambda: app.hanging == 1)
            server.stop_accepting()
            await server.close_idle()
            started = time.monotonic()
            assert not await server.wait_closed(0.2)
            assert 0.15 < time.monotonic() - started < 2.0
            tg.cancel_scope.cancel()
        assert server.connections == 0
    # the cancelled request ends at once: an error answer or a dropped connection, never a hang
    assert len(outcomes) == 1
    assert outcomes[0] == 500 or isinstance(outcomes[0], httpx.RemoteProtocolError | httpx.ReadError)


async def test_a_reloaded_keep_alive_timeout_applies_to_the_next_idle_period(
    listener: socket.socket, running: tuple[HttpServer, App, anyio.CancelScope]
) -> None:
    server, _, _ = running
    server.apply_settings(ServerSettings(keep_alive_timeout_seconds=0.2, backlog=64))
    host, port = listener.getsockname()
    idle = await anyio.connect_tcp(host, port)
    await idle.send(b"GET /x HTTP/1.1\r\nhost: x\r\n\r\n")
    started = time.monotonic()
    with anyio.fail_after(5):
        data = await read_until_eof(idle)
    assert data.startswith(b"HTTP/1.1 200")
    assert time.monotonic() - started < 2  # not the 30 s the server started with
    await idle.aclose()
