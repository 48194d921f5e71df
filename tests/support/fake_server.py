"""The fake model server on the running event loop: the aiohttp app, its fault-injecting middleware, the
``/_fake/*`` control endpoints, and ``serve_fake``, which owns the listening socket.

The middleware runs for every request except ``/_fake/*``. In order, it: counts the request (path, body,
headers), takes the request's behaviour snapshot (counting ``fail_times``), then for a model request (or any
request under ``fail_probes``) hangs, waits ``first_byte_delay_seconds``, fails with ``fail_status`` or
answers garbage, as scripted; ``loading`` turns away every non-probe request with a 503.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from contextlib import asynccontextmanager
from typing import Any

import anyio
from aiohttp import web

from tests.support import fake_ollama, fake_openai, fake_probes
from tests.support.fake_behaviour import Behaviour, BehaviourControl
from tests.support.fake_http import (
    BEHAVIOUR,
    BODY,
    INFERENCE_PATHS,
    MODEL_PATHS,
    PROBE_PATHS,
    STATE,
    Dialect,
    FakeState,
    Kind,
    dialect_error,
    dialect_of,
    dumps,
    wants_stream,
)
from tests.support.fake_stats import Stats, StatsRecorder

#: on close, requests still being answered get this long before they are cancelled (twice, by aiohttp)
SHUTDOWN_GRACE_SECONDS = 0.1
GARBAGE_BODY = b"<html><body>502 this is not JSON {{{"
GARBAGE_SSE = b'data: {"id": "chatcmpl-garbage", "choices": [{"delta": \n\ndata: ~~~ not json ~~~\n\n'
GARBAGE_NDJSON = b'{"model": "garbage", "message": {"content": \n~~~ not json ~~~\n'

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


def _parse_body(raw: bytes) -> Any:
    if not raw:
        return None
    try:
        return json.loads(raw)
    except ValueError:
        return raw.decode("utf-8", errors="replace")


@web.middleware
async def _fake_middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
    if request.path.startswith("/_fake/"):
        return await handler(request)
    state = request.app[STATE]
    path = request.path
    body = _parse_body(await request.read())
    state.stats.record_request(path, body, request.headers)
    streaming = wants_stream(path, body)
    faultable = path in MODEL_PATHS or state.control.current.fail_probes
    behaviour = state.control.admit(streaming=streaming) if faultable else state.control.current
    request[BEHAVIOUR] = behaviour
    request[BODY] = body
    in_flight = path in INFERENCE_PATHS
    if in_flight:
        state.stats.enter()
    try:
        if behaviour.loading and path not in PROBE_PATHS:
            return dialect_error(dialect_of(path), 503, "Loading model", behaviour)
        if faultable:
            if behaviour.hang:
                await state.control.wait_released()
            if behaviour.first_byte_delay_seconds > 0:
                await anyio.sleep(behaviour.first_byte_delay_seconds)
            if behaviour.fail_status is not None:
                message = f"fake backend failure (HTTP {behaviour.fail_status})"
                return dialect_error(dialect_of(path), behaviour.fail_status, message, behaviour)
            if behaviour.garbage:
                return _garbage(dialect_of(path), streaming=streaming)
        return await handler(request)
    except asyncio.CancelledError:
        # aiohttp cancels the handler when the client's connection is lost (handler_cancellation=True)
        state.stats.record_disconnect()
        raise
    finally:
        if in_flight:
            state.stats.leave()


def _garbage(dialect: Dialect, *, streaming: bool) -> web.Response:
    if not streaming:
        return web.Response(body=GARBAGE_BODY, content_type="application/json")
    if dialect is Dialect.OLLAMA:
        return web.Response(body=GARBAGE_NDJSON, headers={"Content-Type": "application/x-ndjson"})
    return web.Response(body=GARBAGE_SSE, headers={"Content-Type": "text/event-stream"})


control_routes = web.RouteTableDef()


@control_routes.get("/_fake/stats")
async def _get_stats(request: web.Request) -> web.Response:
    return web.json_response(request.app[STATE].stats.snapshot().as_json(), dumps=dumps)


@control_routes.post("/_fake/stats/reset")
async def _reset_stats(request: web.Request) -> web.Response:
    request.app[STATE].stats.reset()
    return web.json_response(request.app[STATE].stats.snapshot().as_json(), dumps=dumps)


@control_routes.get("/_fake/behaviour")
async def _get_behaviour(request: web.Request) -> web.Response:
    return web.json_response(request.app[STATE].control.current.as_json(), dumps=dumps)


@control_routes.post("/_fake/behaviour")
async def _update_behaviour(request: web.Request) -> web.Response:
    """Partial update: the JSON object's fields replace the current ones. 400 ``{"error"}`` if invalid."""
    try:
        changes = await request.json()
    except ValueError:
        return web.json_response({"error": "body must be a JSON object"}, status=400, dumps=dumps)
    if not isinstance(changes, dict):
        return web.json_response({"error": "body must be a JSON object"}, status=400, dumps=dumps)
    try:
        behaviour = request.app[STATE].control.update(changes)
    except ValueError as error:
        return web.json_response({"error": str(error)}, status=400, dumps=dumps)
    return web.json_response(behaviour.as_json(), dumps=dumps)


def build_app(state: FakeState) -> web.Application:
    app = web.Application(middlewares=[_fake_middleware])
    app[STATE] = state
    app.add_routes(control_routes)
    app.add_routes(fake_openai.routes)
    app.add_routes(fake_ollama.routes)
    app.add_routes(fake_probes.routes)
    return app


class FakeServer:
    """A listening fake server, as seen from its own event loop (methods must be called on that loop)."""

    def __init__(self, state: FakeState, host: str, port: int) -> None:
        self._state = state
        self.host = host
        self.port = port
        self.url = f"http://{host}:{port}"

    @property
    def models(self) -> tuple[str, ...]:
        return self._state.models

    @property
    def kind(self) -> Kind:
        return self._state.kind

    @property
    def behaviour(self) -> Behaviour:
        return self._state.control.current

    def set(self, **changes: Any) -> Behaviour:
        """Partial behaviour update; raises ValueError (changing nothing) for an invalid field."""
        return self._state.control.update(changes)

    def stats(self) -> Stats:
        return self._state.stats.snapshot()

    def reset_stats(self) -> None:
        self._state.stats.reset()


@asynccontextmanager
async def serve_fake(
    *,
    models: Sequence[str] = ("fake-model",),
    kind: Kind | str = Kind.OPENAI,
    behaviour: Behaviour | None = None,
    host: str = "127.0.0.1",
    port: int = 0,
) -> AsyncIterator[FakeServer]:
    """Listen on ``host:port`` (0 picks a free port) and serve until the block exits.

    On exit the listener closes first; requests still being answered get ``SHUTDOWN_GRACE_SECONDS`` and are
    then cancelled. Raises OSError if the address cannot be bound.
    """
    state = FakeState(
        models=tuple(models),
        kind=Kind(kind),
        control=BehaviourControl(behaviour or Behaviour()),
        stats=StatsRecorder(),
    )
    runner = web.AppRunner(
        build_app(state), handler_cancellation=True, shutdown_timeout=SHUTDOWN_GRACE_SECONDS, access_log=None
    )
    await runner.setup()
    try:
        site = web.TCPSite(runner, host, port)
        await site.start()
        bound_port = runner.addresses[0][1]
        yield FakeServer(state, host, bound_port)
    finally:
        with anyio.CancelScope(shield=True):
            await runner.cleanup()
