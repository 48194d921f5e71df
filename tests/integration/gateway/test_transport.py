"""The upstream transport against a raw TCP server that drops requests: what is retried and what is not."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import anyio
import anyio.abc
import pytest

from gatewayd.config import Timeouts
from gatewayd.errors import BackendUnavailable, Draining
from gatewayd.gateway.backends.transport import Transport

pytestmark = pytest.mark.anyio

OK = b"HTTP/1.1 200 OK\r\ncontent-type: text/plain\r\ncontent-length: 2\r\n\r\nok"


class DroppingServer:
    """Answers the first ``answered_per_connection`` requests of each connection, then closes the connection
    on the next request without answering. Counts connections and requests received."""

    def __init__(self, answered_per_connection: int) -> None:
        self.answered_per_connection = answered_per_connection
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
        with pytest.raises(Draining, match="closed"):
            await transport.open("POST", url, backend="b", timeouts=Timeouts(), body=b"{}")
    assert server.requests == 0
