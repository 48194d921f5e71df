"""What the fake server's route modules share: its state, the per-request keys, error bodies and the
stream writer that carries out pacing and ``die_after_chunks``."""

from __future__ import annotations

import enum
import json
import time
import uuid
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import anyio
from aiohttp import web

from tests.support.fake_behaviour import Behaviour, BehaviourControl
from tests.support.fake_stats import StatsRecorder

#: a die_after_chunks abort waits at most this long for the chunks before it to leave the socket buffer
ABORT_FLUSH_TIMEOUT_SECONDS = 1.0
ABORT_FLUSH_POLL_SECONDS = 0.001


class Kind(enum.StrEnum):
    """Which real server the fake stands in for; changes only the health probes and ``owned_by``."""

    OPENAI = "openai"
    OLLAMA = "ollama"
    LLAMA_SERVER = "llama-server"
    VLLM = "vllm"


class Dialect(enum.Enum):
    OPENAI = "openai"  # /v1/*, and the llama-server / vLLM extras
    OLLAMA = "ollama"  # /api/*


#: model requests: faults apply to them and they count as in flight
OPENAI_INFERENCE_PATHS = frozenset(
    {"/v1/chat/completions", "/v1/completions", "/v1/embeddings", "/infill"}  # /infill: llama-server's
)
OLLAMA_INFERENCE_PATHS = frozenset({"/api/chat", "/api/generate", "/api/embed", "/api/embeddings"})
INFERENCE_PATHS = OPENAI_INFERENCE_PATHS | OLLAMA_INFERENCE_PATHS
#: faults apply to these too, but they are not counted in flight
MODEL_PATHS = INFERENCE_PATHS | {"/api/show"}
#: answer for themselves while loading (every other path answers a 503 dialect error)
PROBE_PATHS = frozenset({"/health", "/slots", "/props", "/metrics", "/"})


@dataclass(slots=True)
class FakeState:
    """One fake server: its models, kind, behaviour and statistics. Touched only on the server's loop."""

    models: tuple[str, ...]
    kind: Kind
    control: BehaviourControl
    stats: StatsRecorder


STATE = web.AppKey("fake_state", FakeState)
#: the behaviour snapshot a request is answered with
BEHAVIOUR = web.RequestKey("fake_behaviour", Behaviour)
#: the request body: parsed JSON, raw text, or None when empty
BODY: web.RequestKey[Any] = web.RequestKey("fake_body")


def dialect_of(path: str) -> Dialect:
    return Dialect.OLLAMA if path.startswith("/api/") else Dialect.OPENAI


def wants_stream(path: str, body: Any) -> bool:
    """Whether the request asks for a streamed answer (Ollama's chat and generate stream by default)."""
    if not isinstance(body, dict):
        return False
    if path in ("/api/chat", "/api/generate"):
        return body.get("stream", True) is not False
    if path in OPENAI_INFERENCE_PATHS:
        return body.get("stream") is True
    return False


def unix_now() -> int:
    return int(time.time())


def new_id(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex[:24]}"


def dumps(value: Any) -> str:
    return json.dumps(value, separators=(",", ":"))


#: what the in-band error event of ``error_after_chunks`` says
STREAM_ERROR_MESSAGE = "model runner has unexpectedly stopped"


def openai_stream_error() -> bytes:
    """The SSE event an OpenAI-compatible server sends when generation fails mid-stream."""
    error = {"message": STREAM_ERROR_MESSAGE, "type": "server_error", "param": None, "code": None}
    return f"data: {dumps({'error': error})}\n\n".encode()


def ollama_stream_error() -> bytes:
    """The NDJSON line Ollama sends when generation fails mid-stream."""
    return f"{dumps({'error': STREAM_ERROR_MESSAGE})}\n".encode()


#: the rate-limit headers OpenAI sends with a 429 (the fake's OpenAI dialect sends them too)
RATE_LIMIT_HEADERS = {
    "x-ratelimit-limit-requests": "60",
    "x-ratelimit-remaining-requests": "0",
    "x-ratelimit-reset-requests": "1s",
}


def retry_headers(status: int, behaviour: Behaviour) -> dict[str, str]:
    if status in (429, 503) and behaviour.retry_after is not None:
        return {"Retry-After": f"{behaviour.retry_after:g}"}
    return {}


_OPENAI_ERROR_TYPES = {
    400: "invalid_request_error",
    401: "authentication_error",
    403: "permission_error",
    404: "invalid_request_error",
    409: "invalid_request_error",
    422: "invalid_request_error",
    429: "requests",
}


def openai_error(
    status: int, message: str, behaviour: Behaviour, *, code: str | None = None, param: str | None = None
) -> web.Response:
    """An OpenAI error object: ``{"error": {"message", "type", "param", "code"}}``."""
    error_type = _OPENAI_ERROR_TYPES.get(status, "server_error" if status >= 500 else "invalid_request_error")
    if status == 429 and code is None:
        code = "rate_limit_exceeded"
    body = {"error": {"message": message, "type": error_type, "param": param, "code": code}}
    headers = retry_headers(status, behaviour)
    if status == 429:
        headers.update(RATE_LIMIT_HEADERS)
    return web.json_response(body, status=status, headers=headers, dumps=dumps)


def ollama_error(status: int, message: str, behaviour: Behaviour) -> web.Response:
    """An Ollama error: ``{"error": "..."}``."""
    return web.json_response(
        {"error": message}, status=status, headers=retry_headers(status, behaviour), dumps=dumps
    )


def dialect_error(dialect: Dialect, status: int, message: str, behaviour: Behaviour) -> web.Response:
    if dialect is Dialect.OLLAMA:
        return ollama_error(status, message, behaviour)
    return openai_error(status, message, behaviour)


def find_model(models: Sequence[str], name: str) -> str | None:
    """The configured model ``name`` refers to. As in Ollama, ``x`` and ``x:latest`` are the same model."""
    for model in models:
        if name == model or _untagged(name) == _untagged(model):
            return model
    return None


def _untagged(name: str) -> str:
    return name.removesuffix(":latest")


async def write_stream(
    request: web.Request,
    response: web.StreamResponse,
    *,
    head: Sequence[bytes],
    pieces: Sequence[bytes],
    tail: Sequence[bytes | Callable[[], bytes]],
    error: bytes | None = None,
) -> web.StreamResponse:
    """Send ``head`` frames, then the content ``pieces`` (``chunk_delay_seconds`` apart), then ``tail``
    (a callable frame is rendered when its turn comes, so it can report the stream's duration).

    With ``die_after_chunks`` K in the request's behaviour, the TCP connection is aborted right after the
    K-th piece: the client sees a body cut short without the chunked terminator. With
    ``error_after_chunks`` K, piece K and the ``error`` frame (the dialect's in-band error event) go out
    in one write and the stream ends there (K = 0: together with the head, as the first write). A
    client that goes away while writing is counted as a disconnect and the (incomplete) response is
    returned; cancellation propagates (the middleware counts it).
    """
    behaviour = request[BEHAVIOUR]
    state = request.app[STATE]
    await response.prepare(request)
    try:
        if behaviour.first_chunk_delay_seconds > 0:
            await anyio.sleep(behaviour.first_chunk_delay_seconds)
        error_at = behaviour.error_after_chunks if error is not None else None
        if error_at == 0 and error is not None:
            await response.write(b"".join(head) + (pieces[0] if pieces else b"") + error)
            return response
        for frame in head:
            await response.write(frame)
        for index, piece in enumerate(pieces):
            if error_at is not None and error is not None and index == error_at:
                await response.write(piece + error)
                return response
            if behaviour.die_after_chunks is not None and index >= behaviour.die_after_chunks:
                await _abort_connection(request)
                return response
            if index > 0 and behaviour.chunk_delay_seconds > 0:
                await anyio.sleep(behaviour.chunk_delay_seconds)
            await response.write(piece)
        if behaviour.die_after_chunks is not None and behaviour.die_after_chunks <= len(pieces):
            await _abort_connection(request)
            return response
        for last in tail:
            await response.write(last() if callable(last) else last)
    except ConnectionResetError:
        state.stats.record_disconnect()
    return response


async def _abort_connection(request: web.Request) -> None:
    """Abort the connection once what was written has left the buffer (abort() discards the buffer)."""
    transport = request.transport
    if transport is None:
        return
    with anyio.move_on_after(ABORT_FLUSH_TIMEOUT_SECONDS):
        while transport.get_write_buffer_size() > 0:
            await anyio.sleep(ABORT_FLUSH_POLL_SECONDS)
    transport.abort()
