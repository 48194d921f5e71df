"""The fastest simple upstream for benchmarks: a raw asyncio Protocol speaking just enough HTTP/1.1.

- ``POST /v1/chat/completions``: a fixed small JSON completion, or, when the body contains ``"stream": true``,
  ``STREAM_CHUNKS`` SSE chunks ``--chunk-delay-ms`` apart (the first at once), then ``data: [DONE]``;
- ``GET /v1/models``: one model, ``bench``; ``GET /health``: ``{"status": "ok"}``; anything else: 404.

Keep-alive unless the client sends ``Connection: close``; requests on one connection are answered in order.
Timers are loop callbacks (no task per request), so the upstream costs as little CPU as possible and the
figures measure the proxy in front of it.

Run: ``python bench/upstream.py --port 0 [--chunk-delay-ms 5]``; prints ``listening on http://HOST:PORT``.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import re
import signal
import sys
from collections.abc import Sequence
from typing import cast

STREAM_CHUNKS = 64
DEFAULT_CHUNK_DELAY_MS = 5.0
#: a request head larger than this is refused (the connection is closed)
MAX_HEAD_BYTES = 64 * 1024

_COMPLETION = json.dumps(
    {
        "id": "chatcmpl-bench",
        "object": "chat.completion",
        "created": 1700000000,
        "model": "bench",
        "choices": [
            {
                "index": 0,
                "message": {"role": "assistant", "content": "Hello from the bench upstream."},
                "finish_reason": "stop",
            }
        ],
        "usage": {"prompt_tokens": 5, "completion_tokens": 7, "total_tokens": 12},
    },
    separators=(",", ":"),
).encode()
_MODELS = json.dumps(
    {
        "object": "list",
        "data": [{"id": "bench", "object": "model", "created": 1700000000, "owned_by": "bench"}],
    },
    separators=(",", ":"),
).encode()
_HEALTH = b'{"status":"ok"}'
_NOT_FOUND = b'{"error":{"message":"not found","type":"invalid_request_error","param":null,"code":null}}'


def _chunk_event(index: int) -> bytes:
    delta = {"role": "assistant", "content": ""} if index == 0 else {"content": f"tok{index} "}
    finish = "stop" if index == STREAM_CHUNKS - 1 else None
    event = {
        "id": "chatcmpl-bench",
        "object": "chat.completion.chunk",
        "created": 1700000000,
        "model": "bench",
        "choices": [{"index": 0, "delta": delta, "finish_reason": finish}],
    }
    return b"data: " + json.dumps(event, separators=(",", ":")).encode() + b"\n\n"


def _chunked(payload: bytes) -> bytes:
    return b"%x\r\n%s\r\n" % (len(payload), payload)


_STREAM_FRAMES = [_chunked(_chunk_event(index)) for index in range(STREAM_CHUNKS)]
_STREAM_END = _chunked(b"data: [DONE]\n\n") + b"0\r\n\r\n"
_STREAM_FLAG = re.compile(rb'"stream"\s*:\s*true')


def _response(status: bytes, body: bytes, *, keep_alive: bool) -> bytes:
    connection = b"keep-alive" if keep_alive else b"close"
    return (
        b"HTTP/1.1 "
        + status
        + b"\r\nContent-Type: application/json\r\nContent-Length: "
        + str(len(body)).encode()
        + b"\r\nConnection: "
        + connection
        + b"\r\n\r\n"
        + body
    )


class UpstreamProtocol(asyncio.Protocol):
    """One client connection. Parses request heads and Content-Length bodies; no chunked request bodies."""

    def __init__(self, chunk_delay_seconds: float) -> None:
        self._chunk_delay_seconds = chunk_delay_seconds
        self._transport: asyncio.Transport | None = None
        self._buffer = bytearray()
        self._streaming: asyncio.TimerHandle | None = None
        self._busy = False

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self._transport = cast(asyncio.Transport, transport)  # uvloop's transports do not subclass it

    def connection_lost(self, exc: Exception | None) -> None:
        if self._streaming is not None:
            self._streaming.cancel()
            self._streaming = None
        self._transport = None

    def data_received(self, data: bytes) -> None:
        self._buffer += data
        if not self._busy:
            self._process()

    def _process(self) -> None:
        """Answer every complete request in the buffer, stopping while a stream is in progress."""
        while self._transport is not None and not self._busy:
            head_end = self._buffer.find(b"\r\n\r\n")
            if head_end < 0:
                if len(self._buffer) > MAX_HEAD_BYTES:
                    self._transport.close()
                return
            head = bytes(self._buffer[:head_end]).lower()
            length = 0
            match = re.search(rb"\r\ncontent-length:\s*(\d+)", head)
            if match:
                length = int(match.group(1))
            total = head_end + 4 + length
            if len(self._buffer) < total:
                return
            body = bytes(self._buffer[head_end + 4 : total])
            del self._buffer[:total]
            keep_alive = b"\r\nconnection: close" not in head
            self._answer(head, body, keep_alive=keep_alive)

    def _answer(self, head: bytes, body: bytes, *, keep_alive: bool) -> None:
        assert self._transport is not None
        request_line = head.split(b"\r\n", 1)[0]
        if request_line.startswith(b"post /v1/chat/completions"):
            if _STREAM_FLAG.search(body):
                self._start_stream(keep_alive=keep_alive)
                return
            self._transport.write(_response(b"200 OK", _COMPLETION, keep_alive=keep_alive))
        elif request_line.startswith(b"get /v1/models"):
            self._transport.write(_response(b"200 OK", _MODELS, keep_alive=keep_alive))
        elif request_line.startswith(b"get /health"):
            self._transport.write(_response(b"200 OK", _HEALTH, keep_alive=keep_alive))
        else:
            self._transport.write(_response(b"404 Not Found", _NOT_FOUND, keep_alive=keep_alive))
        if not keep_alive:
            self._transport.close()

    def _start_stream(self, *, keep_alive: bool) -> None:
        assert self._transport is not None
        self._busy = True
        connection = b"keep-alive" if keep_alive else b"close"
        self._transport.write(
            b"HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\nCache-Control: no-cache\r\n"
            b"Transfer-Encoding: chunked\r\nConnection: " + connection + b"\r\n\r\n" + _STREAM_FRAMES[0]
        )
        self._schedule(1, keep_alive)

    def _schedule(self, index: int, keep_alive: bool) -> None:
        loop = asyncio.get_running_loop()
        self._streaming = loop.call_later(self._chunk_delay_seconds, self._send_chunk, index, keep_alive)

    def _send_chunk(self, index: int, keep_alive: bool) -> None:
        self._streaming = None
        if self._transport is None:
            return
        self._transport.write(_STREAM_FRAMES[index])
        if index + 1 < STREAM_CHUNKS:
            self._schedule(index + 1, keep_alive)
            return
        self._transport.write(_STREAM_END)
        self._busy = False
        if not keep_alive:
            self._transport.close()
            return
        self._process()


async def serve(host: str, port: int, chunk_delay_seconds: float) -> None:
    """Listen until SIGTERM/SIGINT. Prints ``listening on URL`` once bound."""
    loop = asyncio.get_running_loop()
    server = await loop.create_server(
        lambda: UpstreamProtocol(chunk_delay_seconds), host, port, backlog=4096, reuse_address=True
    )
    stop = asyncio.Event()
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, stop.set)
    bound_port = server.sockets[0].getsockname()[1]
    print(f"listening on http://{host}:{bound_port}", flush=True)
    async with server:
        await stop.wait()


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Minimal fast OpenAI-style upstream for benchmarks.")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=0, help="0 picks a free port")
    parser.add_argument("--chunk-delay-ms", type=float, default=DEFAULT_CHUNK_DELAY_MS)
    args = parser.parse_args(argv)
    try:
        import uvloop
    except ImportError:
        asyncio.run(serve(args.host, args.port, args.chunk_delay_ms / 1000))
    else:
        uvloop.run(serve(args.host, args.port, args.chunk_delay_ms / 1000))
    return 0


if __name__ == "__main__":
    sys.exit(main())
