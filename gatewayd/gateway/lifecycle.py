"""Ollama's load and unload requests (``ollama run``, ``ollama stop``), answered without a generation.

``Lifecycle`` stands in front of the relay at the inference edge: a generate without a prompt or a chat
without messages (see ``core.lifecycle``) is answered here, every other request goes on to the relay.

- A model whose backends are all of the Ollama kind gets the request as it is: Ollama loads and unloads
  models itself.
- Otherwise a load starts (or wakes) the backend the request would be routed to, when gatewayd runs or
  wakes it, and answers once that backend is ready (a failed start is the usual 503); a backend that is
  neither is only checked to be routable. Nothing is sent upstream.
- An unload (``keep_alive`` 0) lets every managed backend of the model sleep once its requests are done
  (in-flight requests are not cut); it starts nothing.
- ``keep_alive`` on an Ollama chat or generate request (a load or a generation) sets how long the backend
  that served it may stay idle after it: it replaces ``idle_ttl_seconds`` until the backend's next use,
  which sets it again (Ollama's rule: each request says how long the model stays loaded after it).
  Negative = forever.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, MutableMapping, Sequence
from typing import Any

from gatewayd.config import BackendKind
from gatewayd.errors import ModelNotFound
from gatewayd.gateway.backends.pool import BackendPool
from gatewayd.gateway.core.framing import Framing
from gatewayd.gateway.core.inventory import Target
from gatewayd.gateway.core.jsontext import dumps
from gatewayd.gateway.core.lifecycle import (
    Action,
    LifecycleRequest,
    keep_alive_seconds,
    lifecycle_request,
    lifecycle_response,
)
from gatewayd.gateway.dialects.registry import Api
from gatewayd.gateway.relay import Exchange, Relay

Send = Callable[[MutableMapping[str, Any]], Awaitable[None]]

#: the requests that may be lifecycle requests, or carry a keep_alive
_CHAT_AND_GENERATE = frozenset({Api.OLLAMA_CHAT, Api.OLLAMA_GENERATE})


class Lifecycle:
    """The relay of one generation, with Ollama's lifecycle requests answered in front of it. Same
    contract as ``Relay.relay``: raises a RequestError only while nothing has been sent."""

    def __init__(self, relay: Relay, pool: BackendPool) -> None:
        self._relay = relay
        self._pool = pool

    async def count_tokens(self, exchange: Exchange) -> tuple[int, str]:
        """As ``Relay.count_tokens``: a count is no lifecycle request."""
        return await self._relay.count_tokens(exchange)

    async def relay(self, exchange: Exchange, send: Send) -> None:
        if exchange.api not in _CHAT_AND_GENERATE:  # a set lookup: this runs on every request
            await self._relay.relay(exchange, send)
            return
        request = lifecycle_request(exchange.body, chat=exchange.api is Api.OLLAMA_CHAT)
        if request is None:
            keep_alive = keep_alive_seconds(exchange.body.get("keep_alive"))
            await self._relay.relay(exchange, send)
            if keep_alive is not None and exchange.backend is not None:
                self._keep_alive(exchange.backend, keep_alive)
            return
        if request.action is Action.UNLOAD:
            await self._unload(exchange, request, send)
        else:
            await self._load(exchange, request, send)

    async def _load(self, exchange: Exchange, request: LifecycleRequest, send: Send) -> None:
        candidates = await self._relay.candidates(exchange)  # ModelNotFound, BackendUnavailable
        if self._all_ollama(candidates):
            await self._relay.relay(exchange, send)
            return
        target = candidates[0]
        exchange.backend = target.backend
        exchange.attempts = 1
        unit = self._pool.runtimes[target.backend].unit
        if unit is not None:
            async with unit.use():  # starts or wakes it (or waits for its group's turn); BackendUnavailable
                pass
        if request.keep_alive_seconds is not None:
            self._keep_alive(target.backend, request.keep_alive_seconds)
        await self._answer(exchange, Action.LOAD, send)

    async def _unload(self, exchange: Exchange, request: LifecycleRequest, send: Send) -> None:
        targets = self._pool.inventory.targets(exchange.model)
        if not targets and await self._pool.refresh_models():
            targets = self._pool.inventory.targets(exchange.model)
        if not targets:
            raise ModelNotFound(f"model '{exchange.model}' is not served by any backend", param="model")
        if self._all_ollama(targets):
            await self._relay.relay(exchange, send)
            return
        for target in targets:
            self._keep_alive(target.backend, 0.0)
        exchange.backend = targets[0].backend
        await self._answer(exchange, Action.UNLOAD, send)

    def _all_ollama(self, targets: Sequence[Target]) -> bool:
        runtimes = self._pool.runtimes
        return all(runtimes[t.backend].config.kind is BackendKind.OLLAMA for t in targets)

    def _keep_alive(self, backend: str, seconds: float) -> None:
        runtime = self._pool.runtimes.get(backend)
        if runtime is not None and runtime.unit is not None:
            runtime.unit.keep_alive_seconds = seconds

    async def _answer(self, exchange: Exchange, action: Action, send: Send) -> None:
        """Ollama's final object, as one NDJSON line when the client streams (one JSON object otherwise)."""
        body = dumps(
            lifecycle_response(exchange.model, action, chat=exchange.api is Api.OLLAMA_CHAT)
        ).encode()
        if exchange.stream:
            body += b"\n"
            content_type = Framing.NDJSON.content_type.encode()
        else:
            content_type = b"application/json"
        headers = exchange.response_headers(content_type)
        headers.append((b"content-length", str(len(body)).encode()))
        exchange.status = 200
        exchange.started = True
        await send({"type": "http.response.start", "status": 200, "headers": headers})
        await send({"type": "http.response.body", "body": body, "more_body": False})
