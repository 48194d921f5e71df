"""The relay: takes one parsed client request to a backend and its answer back to the client.

It owns the attempt loop (fallback only before the client has seen a byte), admission, ordering and
affinity, upstream timeouts, the IO of the answer, the clean ending of a broken or shut-down stream, and
the bookkeeping of the exchange (backend, attempts, time to first token, usage) that the access log and
metrics read afterwards. What happens to the answer's bytes (passed through as they are, or translated)
is decided by the dialect registry's translator and done by the pure stream machine in ``core.stream``.
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
from collections.abc import Awaitable, Callable, Mapping, MutableMapping, Sequence
from types import MappingProxyType
from typing import Any

import anyio

from gatewayd.config import Config
from gatewayd.errors import (
    BackendError,
    BackendRefused,
    BackendReported,
    BackendTimeout,
    BackendUnavailable,
    ModelNotFound,
    Overloaded,
    Unsupported,
    UpstreamStatus,
)
from gatewayd.gateway.backends.kinds import KINDS, auth_headers
from gatewayd.gateway.backends.manager import ManagedBackend
from gatewayd.gateway.backends.pool import BackendPool, BackendRuntime
from gatewayd.gateway.backends.probes import api_url
from gatewayd.gateway.backends.transport import Transport, UpstreamResponse
from gatewayd.gateway.core.affinity import AffinityTable, Outcome, affinity_key
from gatewayd.gateway.core.framing import Framing
from gatewayd.gateway.core.inventory import Target
from gatewayd.gateway.core.routing import Preference, order_targets
from gatewayd.gateway.core.stream import StreamMachine, stream_error, stream_machine, whole_answer
from gatewayd.gateway.core.translation import Translator
from gatewayd.gateway.core.usage import Usage
from gatewayd.gateway.dialects.registry import Api, refusal, translator
from gatewayd.gateway.metrics import Metrics
from gatewayd.gateway.token_count import count_tokens

log = logging.getLogger("gatewayd.relay")

Send = Callable[[MutableMapping[str, Any]], Awaitable[None]]

_CONTENT_TYPES = MappingProxyType({framing: framing.content_type.encode() for framing in Framing})
_JSON = b"application/json"
#: upstream statuses that move a request to the next candidate (before the client saw a byte)
_RETRYABLE_STATUS = frozenset({429, 500, 502, 503, 504})


class Exchange:
    """One client request and what became of it. Filled in by the relay, read by the log and metrics."""

    __slots__ = (
        "affinity",
        "affinity_key",
        "api",
        "attempts",
        "backend",
        "body",
        "error",
        "first_byte_at",
        "headers",
        "machine",
        "model",
        "preference",
        "preferred",
        "rate_headers",
        "raw",
        "received_at",
        "request_id",
        "started",
        "status",
        "stream",
        "stream_events",
        "translation",
        "upstream_time",
        "usage",
    )

    def __init__(
        self,
        *,
        request_id: str,
        api: Api,
        model: str,
        body: dict[str, Any],
        raw: bytes,
        stream: bool,
        preferred: str | None,
        received_at: float,
        headers: Sequence[tuple[bytes, bytes]] = (),
    ) -> None:
        self.request_id = request_id
        self.api = api
        self.model = model
        self.body = body
        self.raw = raw
        self.stream = stream
        self.preferred = preferred
        self.received_at = received_at
        #: the request's headers as the ASGI scope has them: lower-case names, bytes
        self.headers = headers
        self.backend: str | None = None
        self.preference: Preference | None = None
        #: the conversation's pin key and what the pin table said, when affinity was consulted
        self.affinity_key: str | None = None
        self.affinity: Outcome | None = None
        self.attempts = 0
        self.status = 0
        #: True once the response start was sent: no fallback, errors end the stream in band
        self.started = False
        self.first_byte_at: float | None = None
        #: seconds spent waiting on upstreams (for the overhead figure)
        self.upstream_time = 0.0
        self.usage = Usage()
        #: the last attempt's translator (the edge reads what a codec kept, e.g. a Responses conversation)
        self.translation: Translator | None = None
        self.error: str | None = None
        #: x-ratelimit-* headers of the caller's key, when it has limits
        self.rate_headers: Mapping[str, str] | None = None
        #: events relayed on a stream: the token estimate when the backend reports no usage
        self.stream_events = 0
        #: the stream machine of the answer being streamed (what ends it in band when it breaks)
        self.machine: StreamMachine | None = None

    def stream_error(self, message: str, code: str) -> bytes:
        """The last bytes of this exchange's stream, broken after its response began."""
        if self.machine is None:
            return stream_error(self.api.dialect, message, code)
        return self.machine.failure(message, code)

    def response_headers(self, content_type: bytes) -> list[tuple[bytes, bytes]]:
        headers = [
            (b"content-type", content_type),
            (b"x-request-id", self.request_id.encode()),
        ]
        if self.backend is not None:
            headers.append((b"x-gatewayd-backend", self.backend.encode()))
        if self.preference is not None:
            headers.append((b"x-gatewayd-preferred-backend", self.preference.value.encode()))
        if self.affinity is not None:
            headers.append((b"x-gatewayd-affinity", self.affinity.value.encode()))
        if self.attempts > 1:
            headers.append((b"x-gatewayd-attempts", str(self.attempts).encode()))
        if self.rate_headers:
            headers.extend((name.encode(), value.encode()) for name, value in self.rate_headers.items())
        return headers


class StreamRegistry:
    """The cancel scopes of the requests a generation is serving, so that ``end_all`` (its drain time is
    up) can end every one cleanly: the request's owner (``InferenceEndpoint``) registers it and, once
    ended, answers 503 Draining or ends its stream with a shutdown event. ``len`` counts the streams."""

    def __init__(self) -> None:
        #: each scope, and whether its request streams
        self._scopes: dict[anyio.CancelScope, bool] = {}
        self.ending = False

    def add(self, scope: anyio.CancelScope, *, stream: bool = True) -> None:
        if self.ending:
            scope.cancel()
        self._scopes[scope] = stream

    def discard(self, scope: anyio.CancelScope) -> None:
        self._scopes.pop(scope, None)

    def end_all(self) -> None:
        self.ending = True
        for scope in list(self._scopes):
            scope.cancel()

    def __len__(self) -> int:
        return sum(self._scopes.values())


class Relay:
    """Relays exchanges for one generation.

    ``affinity`` is the process's pin table (it outlives the generation); it is consulted only when
    ``config.affinity.enabled``."""

    def __init__(
        self,
        config: Config,
        pool: BackendPool,
        transport: Transport,
        metrics: Metrics,
        *,
        affinity: AffinityTable | None = None,
    ) -> None:
        self._config = config
        self._metrics = metrics
        self._pool = pool
        self._transport = transport
        self._max_attempts = config.limits.max_attempts
        self._affinity = affinity if config.affinity.enabled else None
        self._session_headers = tuple(name.lower() for name in config.affinity.session_headers)
        self._session_header_names = frozenset(name.encode("latin-1") for name in self._session_headers)

    async def candidates(self, exchange: Exchange) -> list[Target]:
        """Ordered targets for the exchange's model. Raises ModelNotFound or BackendUnavailable."""
        pool = self._pool
        targets = pool.inventory.targets(exchange.model)
        if not targets and await pool.refresh_models():
            targets = pool.inventory.targets(exchange.model)
        if not targets:
            raise ModelNotFound(f"model '{exchange.model}' is not served by any backend", param="model")
        ordered, exchange.preference = order_targets(targets, pool.load, preferred=exchange.preferred)
        if not ordered:
            failed = [
                error
                for t in targets
                if (unit := pool.runtimes[t.backend].unit) is not None and (error := unit.start_error())
            ]
            if len(failed) == len(targets):  # every one is a server gatewayd failed to start: say why
                raise BackendUnavailable(failed[0].message, backend=failed[0].backend)
            reasons = "; ".join(
                f"{t.backend}: {pool.runtimes[t.backend].health.last_error or 'down'}" for t in targets
            )
            raise BackendUnavailable(f"every backend for model '{exchange.model}' is down ({reasons})")
        if self._affinity is not None and exchange.preferred is None:
            ordered = self._stick(exchange, ordered, self._affinity)
        return ordered[: self._max_attempts]

    def _stick(self, exchange: Exchange, ordered: list[Target], table: AffinityTable) -> list[Target]:
        """``ordered`` with the conversation's pinned backend first on a hit, else as it was. A pinned
        backend that is busy still goes first (its cache spares the prompt's reprocessing); one whose queue
        is full is passed over by the attempt loop and the pin moves to whichever backend serves."""
        headers = {
            name.decode("latin-1"): value.decode("latin-1")
            for name, value in exchange.headers
            if name in self._session_header_names
        }
        settings = self._config.affinity
        key = affinity_key(
            headers,
            exchange.body,
            session_headers=self._session_headers,
            leading_messages=settings.leading_messages,
        )
        if key is None:  # nothing names the conversation: routed as usual, no pin, no header
            return ordered
        exchange.affinity_key = key
        pinned, exchange.affinity = table.choose(key, [t.backend for t in ordered], self._pool.clock())
        if pinned is None or ordered[0].backend == pinned:
            return ordered
        return [t for t in ordered if t.backend == pinned] + [t for t in ordered if t.backend != pinned]

    async def count_tokens(self, exchange: Exchange) -> tuple[int, str]:
        """The prompt's token count on the first candidate for the exchange's model, and whether the backend
        counted it or it is an estimate (``token_count``)."""
        target = (await self.candidates(exchange))[0]
        exchange.attempts = 1
        exchange.backend = target.backend
        backend = self._pool.runtimes[target.backend].config
        return await count_tokens(self._transport, backend, target.model, exchange.body)

    async def relay(self, exchange: Exchange, send: Send) -> None:
        """Serve the exchange, sending the response through ``send``.

        Raises a RequestError only while nothing has been sent (the caller renders it in the endpoint's
        dialect); once the response has started, failures end the stream in band instead. On cancellation
        (the client went away) the upstream request is aborted and its slot freed."""
        last_error: BackendError | Overloaded | Unsupported | None = None
        candidates = await self.candidates(exchange)
        for index, target in enumerate(candidates):
            runtime = self._pool.runtimes[target.backend]
            if runtime.admission.queue_full and index + 1 < len(candidates):
                # no room even to wait here: a later candidate may have some
                last_error = Overloaded(
                    f"backend {target.backend} is at capacity and its queue is full",
                    retry_after=self._config.limits.retry_after_seconds,
                )
                continue
            refused = refusal(exchange.api, KINDS[runtime.config.kind].capabilities, exchange.body)
            if refused is not None:  # before a managed backend is woken or started for nothing
                last_error = _named(refused, runtime)
                continue
            exchange.attempts += 1
            try:
                await self._attempt(exchange, runtime, target, send)
                if exchange.affinity_key is not None and self._affinity is not None:
                    self._affinity.pin(exchange.affinity_key, target.backend, self._pool.clock())
                return
            except Unsupported as error:  # this backend cannot do what the request asks: maybe the next
                last_error = error
                continue
            except BackendError as error:
                if exchange.started:
                    return
                last_error = error
                exchange.backend = target.backend  # an error response names the backend it came from
                if isinstance(error, UpstreamStatus) and error.status not in _RETRYABLE_STATUS:
                    raise
        assert last_error is not None
        raise last_error

    async def _attempt(self, exchange: Exchange, runtime: BackendRuntime, target: Target, send: Send) -> None:
        unit = runtime.unit
        if unit is None:
            await self._attempt_on(exchange, runtime, target, send)
            return
        try:
            await self._attempt_on_unit(exchange, runtime, unit, target, send)
        except BackendRefused:
            # nothing listens where the server should be: it died (or went to sleep) before its watcher
            # noticed; started (or woken) again, it serves this very request
            if exchange.started or not await unit.recover():
                raise
            await self._attempt_on_unit(exchange, runtime, unit, target, send)

    async def _attempt_on_unit(
        self, exchange: Exchange, runtime: BackendRuntime, unit: ManagedBackend, target: Target, send: Send
    ) -> None:
        """A managed or wakeable backend: started (or woken) first, or admitted by its group's scheduler."""
        try:
            if exchange.stream and self._config.managed.stream_progress and not unit.running:
                await self._attempt_with_progress(exchange, runtime, unit, target, send)
            else:
                async with unit.use():
                    await self._attempt_on(exchange, runtime, target, send)
        except BackendUnavailable:
            if unit.process is None:
                unit.note_awake(False)  # it stopped answering: the next request wakes it
            raise

    async def _attempt_with_progress(
        self, exchange: Exchange, runtime: BackendRuntime, unit: ManagedBackend, target: Target, send: Send
    ) -> None:
        """A stream waiting for its backend to start: every ``managed.progress_interval_seconds`` it gets a
        keep-alive event, so the client's read timeout does not fire. The first one commits the response
        (200, this backend: no fallback from then on); a start that fails after that ends the stream with
        an error event in its dialect."""
        interval = self._config.managed.progress_interval_seconds
        keepalive = exchange.api.endpoint.keepalive
        assert keepalive is not None, "only streams wait with keep-alive events"
        ready = anyio.Event()
        quiet = anyio.Event()  # the keep-alive task sends nothing more: the response is ours again

        async def keep_alive() -> None:
            try:
                while True:
                    with anyio.move_on_after(interval):
                        await ready.wait()
                        return
                    event = keepalive(exchange.model, unit.id)
                    if exchange.started:
                        await send({"type": "http.response.body", "body": event, "more_body": True})
                    else:
                        exchange.backend = unit.id
                        await self._start_stream(exchange, send, exchange.api.framing, event)
            finally:
                quiet.set()

        async with anyio.create_task_group() as tg:
            tg.start_soon(keep_alive)
            entered = False
            try:
                async with unit.use():
                    entered = True
                    ready.set()
                    await quiet.wait()
                    await self._attempt_on(exchange, runtime, target, send)
            except BackendError as error:
                ready.set()
                await quiet.wait()
                if entered or not exchange.started:
                    raise
                await self._end_stream_with_error(
                    exchange, send, error.message, error.code or "backend_error"
                )
                raise

    async def _attempt_on(
        self, exchange: Exchange, runtime: BackendRuntime, target: Target, send: Send
    ) -> None:
        backend = runtime.config
        await runtime.admission.acquire(backend.id, priority=exchange.api.is_embedding)
        upstream: UpstreamResponse | None = None
        completed = False
        clock = time.perf_counter
        try:  # from here on the slot is released on every way out, exceptions and cancellation included
            self._pool.note_traffic(runtime)
            # answers name the model that produced them, as same-dialect answers relayed as bytes do
            kind = KINDS[backend.kind]
            try:
                translation = translator(
                    exchange.api,
                    kind.dialect,
                    client_model=target.model,
                    capabilities=kind.capabilities,
                    body=exchange.body,
                )
                exchange.translation = translation
                exchange.machine = None
                body = self._upstream_body(exchange, translation, target.model)
            except Unsupported as unsupported:  # named here: the codecs do not know which backend it is
                raise _named(unsupported, runtime) from None
            headers = {"Content-Type": "application/json", **auth_headers(backend)}
            if translation.passthrough and translation.upstream.forwarded_headers:
                headers.update(_forwarded(exchange.headers, translation.upstream.forwarded_headers))
            started = clock()
            try:
                upstream = await self._transport.open(
                    "POST",
                    api_url(backend, translation.upstream_path),
                    backend=backend.id,
                    timeouts=backend.timeouts,
                    headers=headers,
                    body=body,
                )
            finally:
                exchange.upstream_time += clock() - started
            if upstream.status >= 400:
                raise UpstreamStatus(
                    f"backend {backend.id} answered HTTP {upstream.status}",
                    status=upstream.status,
                    body=await upstream.read(),
                    backend=backend.id,
                    headers=_passed_on(upstream.headers),
                )
            exchange.backend = backend.id
            total = backend.timeouts.total_seconds
            # asyncio's own bound: anyio's fail_after costs ~2.5% of a small request's CPU (a cancel scope
            # and a generator context manager); the gateway runs on asyncio (its client is aiohttp)
            async with asyncio.timeout(total):
                if exchange.stream and _is_stream(upstream, translation.upstream.framing):
                    await self._relay_stream(exchange, translation, upstream, send)
                else:
                    await self._relay_whole(exchange, translation, upstream, send)
            completed = exchange.error is None
            runtime.health.request_succeeded()
            self._metrics.attempts.inc((backend.id, "ok"))
        except TimeoutError:
            error = _total_timeout(backend.id, backend.timeouts.total_seconds)
            self._failed(runtime, error)
            if exchange.started:
                await self._end_stream_with_error(exchange, send, error.message, error.code or "timeout")
                return
            raise error from None
        except BackendError as error:
            self._failed(runtime, error)
            if exchange.started:
                await self._end_stream_with_error(
                    exchange, send, error.message, error.code or "backend_error"
                )
            raise
        finally:
            if upstream is not None:
                if completed:
                    upstream.close()  # the body was read to its end: the connection goes back to the pool
                else:
                    upstream.abort()  # cancelled or broken: drop it so the backend stops generating
            runtime.admission.release()

    def _failed(self, runtime: BackendRuntime, error: BackendError) -> None:
        exchange_error = error.message
        # one rule for every dialect: an answer the backend gave (an HTTP 4xx, an error event in its
        # stream) is not a failure of the backend; relayed bytes are never parsed for errors at all
        counts_against_health = not (
            isinstance(error, BackendReported) or (isinstance(error, UpstreamStatus) and error.status < 500)
        )
        if counts_against_health:
            runtime.health.request_failed(self._pool.clock(), exchange_error)
        self._metrics.attempts.inc((runtime.config.id, error.code or "error"))

    def _upstream_body(self, exchange: Exchange, translation: Translator, model: str) -> bytes:
        if translation.passthrough and model == exchange.model:
            return exchange.raw
        body = dict(exchange.body)
        return json.dumps(
            translation.request(body, model=model, stream=exchange.stream), separators=(",", ":")
        ).encode()

    async def _relay_whole(
        self, exchange: Exchange, translation: Translator, upstream: UpstreamResponse, send: Send
    ) -> None:
        started = time.perf_counter()
        raw = await upstream.read()
        exchange.upstream_time += time.perf_counter() - started
        raw, exchange.usage = whole_answer(translation, raw, exchange.backend)
        exchange.status = 200
        exchange.started = True
        exchange.first_byte_at = time.perf_counter()
        headers = exchange.response_headers(_JSON)
        headers.append((b"content-length", str(len(raw)).encode()))
        await send({"type": "http.response.start", "status": 200, "headers": headers})
        await send({"type": "http.response.body", "body": raw, "more_body": False})

    async def _relay_stream(
        self, exchange: Exchange, translation: Translator, upstream: UpstreamResponse, send: Send
    ) -> None:
        """Relay a streamed answer through its stream machine (``core.stream``): bytes in, bytes out. A cut by
        the gateway's own shutdown cancels the request's scope, owned by the inference endpoint."""
        exchange.machine = stream_machine(translation, exchange.backend, started=exchange.started)
        await self._pump(exchange, exchange.machine, upstream, send)

    async def _start_stream(self, exchange: Exchange, send: Send, framing: Framing, first: bytes) -> None:
        exchange.status = 200
        exchange.started = True
        exchange.first_byte_at = time.perf_counter()
        headers = exchange.response_headers(_CONTENT_TYPES[framing])
        headers.append((b"cache-control", b"no-cache"))
        await send({"type": "http.response.start", "status": 200, "headers": headers})
        await send({"type": "http.response.body", "body": first, "more_body": True})

    async def _pump(
        self, exchange: Exchange, machine: StreamMachine, upstream: UpstreamResponse, send: Send
    ) -> None:
        framing = exchange.api.framing
        waiting_since = time.perf_counter()
        try:
            async for data in upstream.chunks():
                if not exchange.started:  # the wait for the first event is the backend's time, not ours
                    now = time.perf_counter()
                    exchange.upstream_time += now - waiting_since
                    waiting_since = now
                out = machine.feed(data)
                if out:
                    if exchange.started:
                        await send({"type": "http.response.body", "body": out, "more_body": True})
                    else:
                        await self._start_stream(exchange, send, framing, out)
                if machine.finished:
                    break
            tail = machine.end()
        finally:
            exchange.stream_events = machine.events
        exchange.usage = machine.usage
        if exchange.started:
            await send({"type": "http.response.body", "body": tail, "more_body": False})
        else:
            await self._start_stream(exchange, send, framing, tail)
            await send({"type": "http.response.body", "body": b"", "more_body": False})

    async def _end_stream_with_error(self, exchange: Exchange, send: Send, message: str, code: str) -> None:
        exchange.error = message
        event = exchange.stream_error(message, code)
        try:
            await send({"type": "http.response.body", "body": event, "more_body": False})
        except OSError:  # pragma: no cover - the client is gone too
            pass


def _named(error: Unsupported, runtime: BackendRuntime) -> Unsupported:
    """``error`` with the backend it is about, and its kind, named first."""
    kind = KINDS[runtime.config.kind].capabilities.kind
    return Unsupported(f"backend {runtime.config.id} ({kind}) {error.message}", param=error.param)


def _passed_on(headers: Mapping[str, str]) -> dict[str, str]:
    """The headers of an upstream error a client acts on: when to retry, and the backend's rate limits."""
    return {
        lowered: value
        for name, value in headers.items()
        if (lowered := name.lower()) == "retry-after" or lowered.startswith("x-ratelimit-")
    }


def _is_stream(upstream: UpstreamResponse, framing: Framing) -> bool:
    """Whether the backend answered with a stream (some ignore "stream": true and answer whole)."""
    return upstream.content_type == framing.content_type


def _forwarded(headers: Sequence[tuple[bytes, bytes]], names: tuple[bytes, ...]) -> dict[str, str]:
    return {name.decode(): value.decode("latin-1") for name, value in headers if name in names}


def _total_timeout(backend: str, seconds: float | None) -> BackendError:
    return BackendTimeout(f"backend {backend} did not finish within {seconds:g} s", backend=backend)
