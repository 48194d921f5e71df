"""The one ASGI app the server serves for the whole life of the process.

It holds the current generation and hands each HTTP request to the generation that was current when the
request arrived (the request is *pinned* to it), counting in-flight requests per generation so the run loop
can wait for an old generation to go idle after a swap. It also does the few things that are about the
process rather than about a generation: it answers lifespan scopes itself (generations are started by the
run loop, not by the server), answers 503 while no generation is published, and during a respawn handoff
adds ``Connection: close`` to every HTTP/1 response so keep-alive clients reconnect (to the child).

Request bodies are the generation's business: the gateway refuses an oversize body in the client's dialect.
"""

from __future__ import annotations

import json
from collections.abc import Iterable

import anyio

from gatewayd.supervisor.contract import Generation, Message, Receive, Scope, Send

#: Retry-After sent with the 503 answered while no generation is published (during startup)
NO_GENERATION_RETRY_AFTER_SECONDS = 1
_HTTP1_VERSIONS = frozenset({"1.0", "1.1"})
#: what a request cut off by its generation's close is told (the gateway ends its own requests sooner)
CUT_OFF_MESSAGE = "the gateway is restarting or shutting down; retry the request"
#: bound on sending that answer
CUT_OFF_SEND_SECONDS = 1.0


class GenerationSlot:
    """A published generation as the dispatcher sees it: the app, its number, and how many requests are
    pinned to it right now. A fresh slot (and so a fresh idle Event) per generation."""

    def __init__(self, generation: Generation, *, number: int) -> None:
        self.generation = generation
        self.number = number
        self._in_flight = 0
        self._idle: anyio.Event | None = None

    @property
    def in_flight(self) -> int:
        return self._in_flight

    def enter(self) -> None:
        self._in_flight += 1

    def leave(self) -> None:
        self._in_flight -= 1
        if self._in_flight == 0 and self._idle is not None:
            self._idle.set()
            self._idle = None

    async def wait_idle(self, timeout: float) -> bool:
        """Wait up to ``timeout`` seconds until no request is pinned to this slot. True if idle.

        Only meaningful once the slot is no longer current (else new requests keep arriving)."""
        with anyio.move_on_after(timeout):
            while self._in_flight:
                if self._idle is None:
                    self._idle = anyio.Event()
                await self._idle.wait()
        return self._in_flight == 0


class Dispatcher:
    """Routes every request of the process to a generation. Not thread-safe: used from the event loop."""

    def __init__(self) -> None:
        self._current: GenerationSlot | None = None
        self._slots: set[GenerationSlot] = set()
        #: when True every HTTP/1 response carries ``Connection: close`` (respawn handoff)
        self.connection_close = False

    @property
    def current(self) -> GenerationSlot | None:
        return self._current

    @property
    def in_flight(self) -> int:
        """Requests in flight across every generation still alive."""
        return sum(slot.in_flight for slot in self._slots)

    def swap(self, slot: GenerationSlot | None) -> GenerationSlot | None:
        """Publish ``slot``: requests arriving from now on go to it. Returns the slot it replaced, whose
        requests in flight keep running on it."""
        old, self._current = self._current, slot
        if old is not None and old.in_flight == 0:
            self._slots.discard(old)  # nothing pinned to it: forget it now, not at its next request
        return old

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        kind = scope["type"]
        if kind == "lifespan":
            await _answer_lifespan(receive, send)
            return
        if kind != "http":
            await send({"type": "websocket.close", "code": 1000})
            return
        if self.connection_close and scope.get("http_version") in _HTTP1_VERSIONS:
            send = _with_connection_close(send)
        slot = self._current
        if slot is None:
            await _send_json(
                send,
                503,
                _error_body("gatewayd is starting; retry shortly", "server_error", "gateway_starting"),
                extra_headers=[(b"retry-after", str(NO_GENERATION_RETRY_AFTER_SECONDS).encode())],
            )
            return
        self._slots.add(slot)
        slot.enter()
        try:
            await slot.generation(scope, receive, send)
        except anyio.get_cancelled_exc_class():
            # cut off: its generation closed (a stop or reload past its drain bound) before it answered
            with anyio.CancelScope(shield=True):
                await _answer_cut_off(send)
            raise
        finally:
            self._leave(slot)

    def _leave(self, slot: GenerationSlot) -> None:
        slot.leave()
        if slot.in_flight == 0 and slot is not self._current:
            self._slots.discard(slot)


async def _answer_lifespan(receive: Receive, send: Send) -> None:
    while True:
        message = await receive()
        if message["type"] == "lifespan.startup":
            await send({"type": "lifespan.startup.complete"})
        elif message["type"] == "lifespan.shutdown":
            await send({"type": "lifespan.shutdown.complete"})
            return


def _with_connection_close(send: Send) -> Send:
    async def send_closing(message: Message) -> None:
        if message["type"] == "http.response.start":
            headers = [
                (name, value) for name, value in message.get("headers", ()) if name.lower() != b"connection"
            ]
            headers.append((b"connection", b"close"))
            message = {**message, "headers": headers}
        await send(message)

    return send_closing


async def _answer_cut_off(send: Send) -> None:
    """503 with Retry-After for a request its generation cut off, unless its response had started (the
    server then refuses a second start, and the client sees the response end early)."""
    body = _error_body(CUT_OFF_MESSAGE, "server_error", "gateway_draining")
    try:
        with anyio.move_on_after(CUT_OFF_SEND_SECONDS):
            await _send_json(
                send,
                503,
                body,
                extra_headers=[
                    (b"retry-after", str(NO_GENERATION_RETRY_AFTER_SECONDS).encode()),
                    (b"connection", b"close"),
                ],
            )
    except Exception:  # the response had started, or the connection is gone: nothing to add
        pass


def _error_body(message: str, type_: str, code: str | None) -> dict[str, object]:
    return {"error": {"message": message, "type": type_, "param": None, "code": code}}


async def _send_json(
    send: Send, status: int, body: dict[str, object], *, extra_headers: Iterable[tuple[bytes, bytes]] = ()
) -> None:
    payload = json.dumps(body).encode()
    headers = [
        (b"content-type", b"application/json"),
        (b"content-length", str(len(payload)).encode()),
        *extra_headers,
    ]
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": payload})
