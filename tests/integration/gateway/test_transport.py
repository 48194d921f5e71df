"""The upstream transport against a raw TCP server that drops requests: what is retried and what is not."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import anyio
import anyio.abc
import pytest

from gatewayd.config import Timeouts
from gatewayd.errors import BackendRefused, BackendUnavailable, Draining
from gatewayd.gateway.backends.transport import Transport

pytestmark = pytest.mark.anyio

OK = b"HTTP/1.1 200 OK\r\ncontent-type: text/plain\r\ncontent-length: 2\r\n\r\nok"


class DroppingServer:
    """Answers the first ``answered_per_connection`` requests of each connection, then closes the connection
    on the next request without answering (or, with ``hang_with``, sends those bytes and then nothing more,
    holding the connection open). Counts connections and requests received."""

    def __init__(self, answered_per_connection: int, *, hang_with: bytes | None = None) -> None:
        self.answered_per_connection = answered_per_connection
        self.hang_with = hang_with
        self.connections = 0
        self.requests = 0

    async def handle(self, stream: anyio.abc.SocketStream) -> None:
        self.connections += 1
        answered = 0
        buffer = b""
        async with stream:
            while True:
                while b"\r\n\r\n" not in buffer:
                    try:
                        buffer += await stream.receive()
                    except (anyio.EndOfStream, anyio.BrokenResourceError):
                        return
                head, _, buffer = buffer.partition(b"\r\n\r\n")
                length = next(
                    (int(line.split(b":")[1]) for line in head.split(b"\r\n")
                     if line.lower().startswith(b"content-length:")),
                    0,
                )  # fmt: skip
                while len(buffer) < length:
                    buffer += await stream.receive()
                buffer = buffer[length:]
                self.requests += 1
                if answered >= self.answered_per_connection:
                    if self.hang_with is not None:
                        await stream.send(self.hang_with)
                        await anyio.sleep_forever()
                    return  # closes without answering
                answered += 1
                await stream.send(OK)


@asynccontextmanager
async def serving(server: DroppingServer) -> AsyncIterator[str]:
    listener = await anyio.create_tcp_listener(local_host="127.0.0.1", local_port=0)
    async with listener, anyio.create_task_group() as tg:
        tg.start_soon(listener.serve, server.handle)
        port = listener.extra(anyio.abc.SocketAttribute.local_port)
        yield f"http://127.0.0.1:{port}/v1/chat/completions"
        tg.cancel_scope.cancel()


async def test_a_post_dropped_on_a_fresh_connection_is_not_sent_twice() -> None:
    server = DroppingServer(answered_per_connection=0)
    async with serving(server) as url, Transport() as transport:
        with pytest.raises(BackendUnavailable, match="backend b"):
            await transport.open("POST", url, backend="b", timeouts=Timeouts(), body=b"{}")
    assert server.requests == 1


async def test_a_post_dropped_on_a_reused_connection_is_sent_again_on_a_fresh_one() -> None:
    server = DroppingServer(answered_per_connection=1)
    async with serving(server) as url, Transport() as transport:
        first = await transport.open("POST", url, backend="b", timeouts=Timeouts(), body=b"{}")
        assert await first.read() == b"ok"
        first.close()
        second = await transport.open("POST", url, backend="b", timeouts=Timeouts(), body=b"{}")
        assert await second.read() == b"ok"
        second.close()
    assert server.connections == 2
    assert server.requests == 3  # answered, dropped on the reused connection, answered on the fresh one


async def test_a_request_after_the_transport_closed_is_a_draining_error() -> None:
    server = DroppingServer(answered_per_connection=1)
    async with serving(server) as url:
        async with Transport() as transport:
            pass
        with pytest.raises(Draining, match="gateway is restarting"):
            await transport.open("POST", url, backend="b", timeouts=Timeouts(), body=b"{}")
    assert server.requests == 0


async def test_a_request_waiting_on_a_reused_connection_when_the_transport_closes_is_a_draining_error() -> (
    None
):
    """The gateway's own shutdown closing the pool under a request is not the backend's fault (and the
    retry on a reused connection must not hit the closed session: aiohttp's RuntimeError)."""
    server = DroppingServer(answered_per_connection=1, hang_with=b"")
    async with serving(server) as url:
        transport = Transport()
        await transport.__aenter__()
        warm = await transport.open("POST", url, backend="b", timeouts=Timeouts(), body=b"{}")
        assert await warm.read() == b"ok"
        warm.close()
        caught: list[BaseException] = []

        async def waiting() -> None:
            try:
                await transport.open("POST", url, backend="b", timeouts=Timeouts(), body=b"{}")
            except Exception as error:
                caught.append(error)

        async with anyio.create_task_group() as tg:
            tg.start_soon(waiting)
            with anyio.fail_after(10):
                while server.requests < 2:
                    await anyio.sleep(0.01)
            await transport.__aexit__(None, None, None)
    assert len(caught) == 1
    assert isinstance(caught[0], Draining), repr(caught[0])
    assert "gateway is restarting" in caught[0].message
    assert server.connections == 1


async def test_a_body_cut_by_the_transport_closing_is_a_draining_error() -> None:
    head = b"HTTP/1.1 200 OK\r\ncontent-type: text/plain\r\ncontent-length: 100\r\n\r\nsome"
    server = DroppingServer(answered_per_connection=0, hang_with=head)
    async with serving(server) as url:
        transport = Transport()
        await transport.__aenter__()
        response = await transport.open("POST", url, backend="b", timeouts=Timeouts(), body=b"{}")
        caught: list[BaseException] = []
        chunks: list[bytes] = []

        async def reading() -> None:
            try:
                async for chunk in response.chunks():
                    chunks.append(chunk)
            except Exception as error:
                caught.append(error)

        async with anyio.create_task_group() as tg:
            tg.start_soon(reading)
            with anyio.fail_after(10):
                while not chunks:  # the reader now waits for the rest of the body
                    await anyio.sleep(0.01)
            await transport.__aexit__(None, None, None)
        response.abort()
    assert len(caught) == 1
    assert isinstance(caught[0], Draining), repr(caught[0])


async def test_a_refused_connection_is_a_backend_refused_error() -> None:
    listener = await anyio.create_tcp_listener(local_host="127.0.0.1", local_port=0)
    port = listener.extra(anyio.abc.SocketAttribute.local_port)
    await listener.aclose()  # nothing listens there any more
    async with Transport() as transport:
        with pytest.raises(BackendRefused, match="backend b is unreachable"):
            await transport.open(
                "POST", f"http://127.0.0.1:{port}/v1/x", backend="b", timeouts=Timeouts(), body=b"{}"
            )


class RecordingServer(DroppingServer):
    """Answers every request and keeps each request head's header names and values (lower-cased names)."""

    def __init__(self) -> None:
        super().__init__(answered_per_connection=1_000_000)
        self.heads: list[dict[str, str]] = []

    async def handle(self, stream: anyio.abc.SocketStream) -> None:
        buffer = b""
        async with stream:
            while True:
                while b"\r\n\r\n" not in buffer:
                    try:
                        buffer += await stream.receive()
                    except (anyio.EndOfStream, anyio.BrokenResourceError):
                        return
                head, _, buffer = buffer.partition(b"\r\n\r\n")
                fields = dict(
                    (name.strip().lower().decode(), value.strip().decode())
                    for name, _, value in (line.partition(b":") for line in head.split(b"\r\n")[1:])
                )
                length = int(fields.get("content-length", "0"))
                while len(buffer) < length:
                    buffer += await stream.receive()
                buffer = buffer[length:]
                self.heads.append(fields)
                await stream.send(OK)


async def test_an_upstream_request_carries_no_user_agent_and_no_accept_encoding() -> None:
    """The backend gets the caller's headers, Accept: */* and the body's own headers; aiohttp's User-Agent and
    Accept-Encoding defaults stay out, on every request of a pooled connection."""
    server = RecordingServer()
    async with serving(server) as url, Transport() as transport:
        for _ in range(2):
            response = await transport.open(
                "POST", url, backend="b", timeouts=Timeouts(), headers={"X-Extra": "1"}, body=b"{}"
            )
            assert await response.read() == b"ok"
            response.close()
    assert len(server.heads) == 2
    for head in server.heads:
        assert "user-agent" not in head
        assert "accept-encoding" not in head
        assert head["accept"] == "*/*"
        assert head["x-extra"] == "1"
        assert head["content-length"] == "2"
