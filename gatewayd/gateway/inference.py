"""The inference endpoints' ASGI edge: read and check the request, relay it, render errors, log it.

These endpoints carry nearly all traffic, so they are served as plain ASGI (no framework in between);
everything else goes through the Quart app in ``gatewayd.gateway.app``."""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable, MutableMapping
from typing import Any

import anyio

from gatewayd.config import ResponsesSettings
from gatewayd.errors import (
    BadRequest,
    Draining,
    InternalError,
    KeyLimitError,
    NotFound,
    PayloadTooLarge,
    RequestError,
    UpstreamStatus,
)
from gatewayd.gateway.activity import Activity
from gatewayd.gateway.conversations import Conversations
from gatewayd.gateway.core.jsontext import dumps
from gatewayd.gateway.core.limits import Grant
from gatewayd.gateway.core.requestbody import check_fields, model_name, parse_json_object
from gatewayd.gateway.core.requestid import request_id
from gatewayd.gateway.core.translation import CodecTranslator
from gatewayd.gateway.dialects.openai_responses import ResponsesClient
from gatewayd.gateway.dialects.registry import ROUTES, Api, dialect_of_path
from gatewayd.gateway.guard import Guard
from gatewayd.gateway.lifecycle import Lifecycle
from gatewayd.gateway.metrics import Metrics
from gatewayd.gateway.relay import Exchange, Relay, StreamRegistry
from gatewayd.store.keys import KeyRecord

Scope = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[MutableMapping[str, Any]]]
Send = Callable[[MutableMapping[str, Any]], Awaitable[None]]

access_log = logging.getLogger("gatewayd.access")
log = logging.getLogger("gatewayd.inference")

#: POST paths served here, and the API each one speaks
INFERENCE_ROUTES: dict[str, Api] = dict(ROUTES)
#: HTTP status logged for a request whose client went away before the answer
CLIENT_CLOSED_REQUEST = 499
#: the scope entry that carries a job's key (gatewayd.gateway.jobs.worker builds such scopes; a client
#: cannot set it: scopes are built by the server)
JOB_KEY_SCOPE = "gatewayd.job_key"
#: a request starts watching for its client's disconnect once it has lasted this long
DISCONNECT_WATCH_DELAY_SECONDS = 0.05


class ClientGone(Exception):
    """The client disconnected while its request body was being read. Control flow inside this module
    (logged as 499, never rendered), hence not part of the GatewaydError tree."""


async def read_body(scope: Scope, receive: Receive, limit: int) -> bytes:
    """The whole request body. Raises PayloadTooLarge past ``limit`` bytes (from Content-Length when the
    client sends one, before reading anything) and ClientGone when the client disconnects."""
    for name, value in scope["headers"]:
        if name == b"content-length":
            try:
                declared = int(value)
            except ValueError:
                raise BadRequest("invalid Content-Length header") from None
            if declared > limit:
                raise PayloadTooLarge(f"request body of {declared} bytes exceeds the limit of {limit} bytes")
            break
    chunks: list[bytes] = []
    size = 0
    while True:
        message = await receive()
        if message["type"] == "http.disconnect":
            raise ClientGone
        chunk = message.get("body", b"")
        if chunk:
            size += len(chunk)
            if size > limit:
                raise PayloadTooLarge(f"request body exceeds the limit of {limit} bytes")
            chunks.append(chunk)
        if not message.get("more_body", False):
            return chunks[0] if len(chunks) == 1 else b"".join(chunks)


def parse_request(api: Api, raw: bytes, max_json_depth: int) -> tuple[dict[str, Any], str]:
    """The JSON object and its model name, with the fields gatewayd reads checked. Raises BadRequest saying
    what is wrong (and naming the field)."""
    body = parse_json_object(raw, max_json_depth)
    rules = api.endpoint.body
    model = model_name(body, rules)
    check_fields(body, rules)
    return body, model


def _header(scope: Scope, wanted: bytes) -> str | None:
    for name, value in scope["headers"]:
        if name == wanted:
            return str(value.decode("latin-1"))
    return None


async def _watch_disconnect(receive: Receive, cancel_scope: anyio.CancelScope) -> None:
    while True:
        message = await receive()
        if message["type"] == "http.disconnect":
            cancel_scope.cancel()
            return


class DisconnectWatch:
    """Cancels ``scope`` when the client disconnects, watching only once the request has lasted
    ``DISCONNECT_WATCH_DELAY_SECONDS``: most of a fast request's cost would otherwise be this watcher.

    The watcher task lives strictly inside the ``async with`` block: it is cancelled and awaited on exit
    (shielded), so no task outlives the request: the structure of a task group, without opening one on
    every request of the hot path. (The gateway runs on asyncio only: its upstream client is aiohttp.)"""

    __slots__ = ("_handle", "_receive", "_scope", "_task")

    def __init__(self, receive: Receive, scope: anyio.CancelScope) -> None:
        self._receive = receive
        self._scope = scope
        self._task: asyncio.Task[None] | None = None
        self._handle: asyncio.TimerHandle | None = None

    def _start(self) -> None:
        self._task = asyncio.get_running_loop().create_task(_watch_disconnect(self._receive, self._scope))

    async def __aenter__(self) -> DisconnectWatch:
        self._handle = asyncio.get_running_loop().call_later(DISCONNECT_WATCH_DELAY_SECONDS, self._start)
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        assert self._handle is not None
        self._handle.cancel()
        task = self._task
        if task is not None:
            task.cancel()
            with anyio.CancelScope(shield=True):
                await asyncio.wait((task,))


class InferenceEndpoint:
    """Serves the inference routes of one generation."""

    def __init__(
        self,
        relay: Relay | Lifecycle,
        metrics: Metrics,
        *,
        max_body_bytes: int,
        max_json_depth: int,
        access_log_enabled: bool,
        activity: Activity,
        guard: Guard,
        streams: StreamRegistry,
        conversations: Conversations | None = None,
        responses: ResponsesSettings | None = None,
    ) -> None:
        self._conversations = conversations
        self._responses = responses or ResponsesSettings()
        self._guard = guard
        self._streams = streams
        self._relay = relay
        self._metrics = metrics
        self._activity = activity
        self._limit = max_body_bytes
        self._max_json_depth = max_json_depth
        self._log = access_log_enabled

    async def __call__(self, api: Api, scope: Scope, receive: Receive, send: Send) -> None:
        """Serve one request. This is the owner of everything the request holds: whatever way it ends (an
        answer, a RequestError, a bug, the client's disconnect, the gateway's drain, cancellation), its key's
        concurrency slot and limit windows are settled by ``guard.finish`` and it is logged and counted, in
        the one ``finally`` below; the backend slots are the relay's, released in its own ``finally``."""
        received = time.perf_counter()
        exchange = Exchange(
            request_id=request_id(_header(scope, b"x-request-id")),
            api=api,
            model="",
            body={},
            raw=b"",
            stream=False,
            preferred=_header(scope, b"x-gatewayd-preferred-backend"),
            received_at=received,
            headers=scope["headers"],
        )
        key: KeyRecord | None = None
        grant: Grant | None = None
        try:
            error: RequestError | None = None
            try:  # the key is checked before the body is read
                if JOB_KEY_SCOPE in scope:  # a job's request: its key was checked when it was submitted
                    key = scope[JOB_KEY_SCOPE]
                else:
                    key = self._guard.authenticate(scope["headers"], api.dialect.api_key)
                exchange.raw = await read_body(scope, receive, self._limit)
                exchange.body, exchange.model = parse_request(api, exchange.raw, self._max_json_depth)
                exchange.stream = api.wants_stream(exchange.body)
                grant = await self._guard.admit(key, exchange.model, len(exchange.raw))
                if grant is not None:
                    exchange.rate_headers = grant.headers
                if api is Api.OPENAI_RESPONSES:
                    await self._continue_conversation(exchange)
                error = await self._relay_watched(exchange, receive, send)
                await self._after_codec(exchange)
            except ClientGone:
                exchange.status = CLIENT_CLOSED_REQUEST
                exchange.error = "client disconnected"
            except RequestError as caught:
                error = caught
            except Exception:  # a bug: logged once with its traceback, answered 500 in the dialect
                log.exception("request %s failed with an unexpected error", exchange.request_id)
                error = InternalError(exchange.request_id)
            if error is not None:
                await self._answer_error(exchange, error, send)
        finally:
            if exchange.status == 0:  # cancelled from outside (the generation closed): nothing was sent
                exchange.status = CLIENT_CLOSED_REQUEST
                exchange.error = exchange.error or "cut off"
            latency = time.perf_counter() - exchange.received_at
            ttft = None if exchange.first_byte_at is None else exchange.first_byte_at - exchange.received_at
            try:
                self._guard.finish(
                    key,
                    grant,
                    model=exchange.model or "-",
                    backend=exchange.backend,
                    prompt_tokens=exchange.usage.prompt_tokens or 0,
                    # a stream whose backend reported no usage is charged one token per event relayed
                    completion_tokens=exchange.usage.completion_tokens or exchange.stream_events,
                    latency_seconds=latency,
                    ttft_seconds=ttft,
                    status=exchange.status,
                    attempts=exchange.attempts,
                )
            finally:
                self._record(exchange, latency, ttft)

    async def _relay_watched(self, exchange: Exchange, receive: Receive, send: Send) -> RequestError | None:
        """Relay the exchange inside a cancel scope that the client's disconnect and the generation's
        ``end_all`` (its drain time is up) both cancel. Returns Draining when the gateway cut it (to be
        answered 503, or in band once the stream has begun); a client that went away is logged as 499."""
        streams = self._streams
        with anyio.CancelScope() as cancel_scope:
            streams.add(cancel_scope, stream=exchange.stream)
            try:
                async with DisconnectWatch(receive, cancel_scope):
                    if exchange.api is Api.ANTHROPIC_COUNT_TOKENS:
                        await self._count_tokens(exchange, send)
                    else:
                        await self._relay.relay(exchange, send)
            finally:
                streams.discard(cancel_scope)
        if cancel_scope.cancelled_caught and streams.ending:
            return Draining()
        if exchange.status == 0:
            exchange.status = CLIENT_CLOSED_REQUEST
            exchange.error = "client disconnected"
        return None

    async def _answer_error(self, exchange: Exchange, error: RequestError, send: Send) -> None:
        """Render ``error``: as the response while none has started; as the stream's last event in the
        dialect once a stream has begun (a whole answer already sent has nothing left to carry it)."""
        if not exchange.started:
            await self._send_error(exchange, error, send)
            return
        exchange.error = error.message
        if not exchange.stream:
            return
        code = "gateway_shutdown" if isinstance(error, Draining) else error.code or "server_error"
        event = exchange.stream_error(error.message, code)
        try:
            await send({"type": "http.response.body", "body": event, "more_body": False})
        except Exception as failure:  # the stream had already been ended, or its client is gone
            log.debug("request %s: cannot end its stream in band: %s", exchange.request_id, failure)

    async def _continue_conversation(self, exchange: Exchange) -> None:
        """``previous_response_id``: the stored conversation goes before the request's input. Raises
        NotFound (OpenAI answers 404 for an unknown, expired or unstored response)."""
        previous = exchange.body.get("previous_response_id")
        if previous is None:
            return
        if not isinstance(previous, str) or not previous:
            raise BadRequest("'previous_response_id' must be a string", param="previous_response_id")
        conversations = self._conversations
        items = None if conversations is None else await conversations.load(previous, self._responses)
        if items is None:
            raise NotFound(f"Previous response with id '{previous}' not found.", param="previous_response_id")
        given = exchange.body.get("input")
        if isinstance(given, str):
            given = [{"type": "message", "role": "user", "content": given}]
        exchange.body["input"] = [*items, *(given if isinstance(given, list) else [])]

    async def _after_codec(self, exchange: Exchange) -> None:
        """What a client codec kept: tool types it left out (logged), a Responses conversation to store."""
        translation = exchange.translation
        if not isinstance(translation, CodecTranslator):
            return
        client = translation.client_codec
        dropped = getattr(client, "dropped_tools", None)
        if dropped:
            log.info(
                "%s %s: left out tools the backend cannot run: %s",
                exchange.request_id,
                exchange.api.path,
                ", ".join(sorted(set(dropped))),
            )
        if (
            isinstance(client, ResponsesClient)
            and client.store
            and client.last_response is not None
            and exchange.status == 200
            and self._conversations is not None
        ):
            response_id = str(client.last_response["id"])
            await self._conversations.save(response_id, client.conversation_items(), self._responses)

    async def _count_tokens(self, exchange: Exchange, send: Send) -> None:
        count, source = await self._relay.count_tokens(exchange)
        body = dumps({"input_tokens": count}).encode()
        exchange.status = 200
        exchange.started = True
        headers = exchange.response_headers(b"application/json")
        headers.append((b"content-length", str(len(body)).encode()))
        headers.append((b"x-gatewayd-token-count", source.encode()))
        await send({"type": "http.response.start", "status": 200, "headers": headers})
        await send({"type": "http.response.body", "body": body, "more_body": False})

    async def _send_error(self, exchange: Exchange, error: RequestError, send: Send) -> None:
        dialect = exchange.api.dialect
        status = dialect.error_status(error)
        exchange.status = status
        exchange.error = error.message
        body = dialect.error_body(error)
        headers = exchange.response_headers(b"application/json")
        headers.append((b"content-length", str(len(body)).encode()))
        if error.retry_after is not None:
            headers.append((b"retry-after", str(max(1, round(error.retry_after))).encode()))
        if isinstance(error, KeyLimitError):
            headers.extend((name.encode(), value.encode()) for name, value in error.headers.items())
        elif isinstance(error, UpstreamStatus) and error.headers:
            # the backend's Retry-After and x-ratelimit-*, in either dialect; the caller's own key limits
            # (already in the headers) win over the backend's of the same name
            present = {name for name, _ in headers}
            headers.extend(
                (encoded, value.encode("latin-1"))
                for name, value in error.headers.items()
                if (encoded := name.encode("latin-1")) not in present
            )
        await send({"type": "http.response.start", "status": status, "headers": headers})
        await send({"type": "http.response.body", "body": body, "more_body": False})

    def _record(self, exchange: Exchange, latency: float, ttft: float | None) -> None:
        """Metrics, the activity ring and the access log for a finished exchange."""
        metrics = self._metrics
        # an unknown model name is not a label value: clients could otherwise mint series without bound
        model = exchange.model if exchange.model and exchange.status != 404 else "-"
        backend = exchange.backend or "-"
        metrics.requests.inc((model, backend, str(exchange.status)))
        metrics.latency.observe((model,), latency)
        if ttft is not None:
            metrics.ttft.observe((model,), ttft)
            metrics.overhead.observe((), max(ttft - exchange.upstream_time, 0.0))
        usage = exchange.usage
        self._activity.record(
            exchange.api,
            model,
            backend,
            exchange.status,
            exchange.stream,
            latency,
            ttft,
            usage.completion_tokens or 0,
        )
        if usage.prompt_tokens:
            metrics.tokens.inc((model, "prompt"), usage.prompt_tokens)
        if usage.completion_tokens:
            metrics.tokens.inc((model, "completion"), usage.completion_tokens)
        if self._log:
            fields = {
                "request_id": exchange.request_id,
                "api": exchange.api.value,
                "model": exchange.model or None,
                "backend": backend,
                "status": exchange.status,
                "stream": exchange.stream,
                "latency_ms": round(latency * 1000, 2),
                "ttft_ms": None if ttft is None else round(ttft * 1000, 2),
                "prompt_tokens": usage.prompt_tokens,
                "completion_tokens": usage.completion_tokens,
                "attempts": exchange.attempts,
                "error": exchange.error,
            }
            access_log.info(
                "%s %s %s -> %s %s %.1fms attempts=%d%s",
                exchange.request_id,
                exchange.api.path,
                exchange.model or "-",
                backend,
                exchange.status,
                latency * 1000,
                exchange.attempts,
                f" error={exchange.error!r}" if exchange.error else "",
                extra={"fields": fields},
            )


#: re-exported for the app's error handler
__all__ = ["INFERENCE_ROUTES", "InferenceEndpoint", "dialect_of_path", "read_body"]
