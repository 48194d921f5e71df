"""Names for what a request is (which API, which dialect, which framing) and its error bodies.

Both dialects render errors here, in one place: whole-response error bodies (``error_body``/``error_status``)
and the final event that ends a broken stream (``stream_error_payload``). The shapes are the ones the official
clients turn into exceptions: ``openai.APIError`` for an OpenAI error object (also inside an SSE ``data:``
payload) and ``ollama.ResponseError`` for ``{"error": "..."}`` (also as an NDJSON line).
"""

from __future__ import annotations

import enum
import json
from collections.abc import Mapping
from dataclasses import dataclass
from types import MappingProxyType
from typing import Any

from gatewayd.config import BackendKind
from gatewayd.errors import Overloaded, RequestError, UpstreamStatus
from gatewayd.gateway.core.jsontext import dumps

#: an upstream error text longer than this is cut before it is shown to a client
MAX_UPSTREAM_ERROR_CHARS = 2000


class Dialect(enum.StrEnum):
    OPENAI = "openai"  # /v1/*: OpenAI objects, SSE streams
    OLLAMA = "ollama"  # /api/*: Ollama objects, NDJSON streams
    ANTHROPIC = "anthropic"  # /v1/messages: Anthropic objects, SSE streams with named events


class Framing(enum.StrEnum):
    SSE = "sse"  # text/event-stream: "data: <json>\n\n" events, ended by "data: [DONE]"
    NDJSON = "ndjson"  # application/x-ndjson: one JSON object per line
    #: text/event-stream: "event: <payload type>\ndata: <json>\n\n", no end marker (Anthropic, Responses)
    SSE_EVENTS = "sse-events"

    @property
    def content_type(self) -> str:
        return "application/x-ndjson" if self is Framing.NDJSON else "text/event-stream"

    @property
    def is_sse(self) -> bool:
        return self is not Framing.NDJSON


class Api(enum.StrEnum):
    """A client-facing endpoint that carries a model."""

    OPENAI_CHAT = "openai.chat"  # POST /v1/chat/completions
    OPENAI_COMPLETIONS = "openai.completions"  # POST /v1/completions
    OPENAI_EMBEDDINGS = "openai.embeddings"  # POST /v1/embeddings
    OPENAI_RESPONSES = "openai.responses"  # POST /v1/responses
    ANTHROPIC_MESSAGES = "anthropic.messages"  # POST /v1/messages
    ANTHROPIC_COUNT_TOKENS = "anthropic.count_tokens"  # POST /v1/messages/count_tokens
    OLLAMA_CHAT = "ollama.chat"  # POST /api/chat
    OLLAMA_GENERATE = "ollama.generate"  # POST /api/generate
    OLLAMA_EMBED = "ollama.embed"  # POST /api/embed
    OLLAMA_EMBEDDINGS = "ollama.embeddings"  # POST /api/embeddings (legacy, single prompt)

    @property
    def dialect(self) -> Dialect:
        return Dialect(self.value.partition(".")[0])

    @property
    def path(self) -> str:
        return _API_PATHS[self]

    @property
    def framing(self) -> Framing:
        return Framing.SSE_EVENTS if self is Api.OPENAI_RESPONSES else dialect_framing(self.dialect)

    @property
    def is_embedding(self) -> bool:
        return self in _EMBEDDING_APIS


_API_PATHS: Mapping[Api, str] = MappingProxyType(
    {
        Api.OPENAI_CHAT: "/v1/chat/completions",
        Api.OPENAI_COMPLETIONS: "/v1/completions",
        Api.OPENAI_EMBEDDINGS: "/v1/embeddings",
        Api.OPENAI_RESPONSES: "/v1/responses",
        Api.ANTHROPIC_MESSAGES: "/v1/messages",
        Api.ANTHROPIC_COUNT_TOKENS: "/v1/messages/count_tokens",
        Api.OLLAMA_CHAT: "/api/chat",
        Api.OLLAMA_GENERATE: "/api/generate",
        Api.OLLAMA_EMBED: "/api/embed",
        Api.OLLAMA_EMBEDDINGS: "/api/embeddings",
    }
)
_EMBEDDING_APIS = frozenset({Api.OPENAI_EMBEDDINGS, Api.OLLAMA_EMBED, Api.OLLAMA_EMBEDDINGS})


def dialect_framing(dialect: Dialect) -> Framing:
    """How a dialect frames its streams: SSE for OpenAI, NDJSON for Ollama, named SSE events for
    Anthropic."""
    return _DIALECT_FRAMING[dialect]


_DIALECT_FRAMING: Mapping[Dialect, Framing] = MappingProxyType(
    {Dialect.OPENAI: Framing.SSE, Dialect.OLLAMA: Framing.NDJSON, Dialect.ANTHROPIC: Framing.SSE_EVENTS}
)


def backend_dialect(kind: BackendKind) -> Dialect:
    """The dialect a backend kind speaks: Ollama's or Anthropic's native API, or OpenAI's for every other
    kind."""
    if kind is BackendKind.OLLAMA:
        return Dialect.OLLAMA
    return Dialect.ANTHROPIC if kind is BackendKind.ANTHROPIC else Dialect.OPENAI


def wants_stream(api: Api, body: Mapping[str, Any]) -> bool:
    """Whether the client asked for a streamed answer.

    OpenAI streams only on ``"stream": true``; Ollama's chat and generate stream unless ``"stream": false``
    (a missing or null ``stream`` means true); embeddings never stream.
    """
    if api.is_embedding:
        return False
    stream = body.get("stream")
    if api.dialect is not Dialect.OLLAMA:
        return stream is True
    return stream is None or bool(stream)


@dataclass(slots=True)
class Usage:
    """Token counts of one request; None when the backend did not report them."""

    prompt_tokens: int | None = None
    completion_tokens: int | None = None


# --- error bodies ----------------------------------------------------------------------------------------


def error_status(dialect: Dialect, error: RequestError) -> int:
    """The HTTP status of ``error`` in ``dialect``: Ollama answers a full queue with 503, OpenAI with 429,
    Anthropic with 529 (its "overloaded": the anthropic client retries it)."""
    if isinstance(error, Overloaded) and dialect is Dialect.OLLAMA:
        return error.ollama_status
    if isinstance(error, Overloaded) and dialect is Dialect.ANTHROPIC:
        return ANTHROPIC_OVERLOADED_STATUS
    return error.status


def error_body(dialect: Dialect, error: RequestError) -> bytes:
    """The JSON error body for ``error`` in ``dialect``.

    OpenAI: ``{"error": {"message", "type", "param", "code"}}``; Ollama: ``{"error": "<message>"}``. For
    ``UpstreamStatus`` the backend's own body is passed through unchanged when it already has the client's
    dialect shape; otherwise its message (found in either dialect's shape, or its raw text) is wrapped.
    """
    if isinstance(error, UpstreamStatus):
        return _upstream_error_body(dialect, error)
    if dialect is Dialect.OLLAMA:
        return dumps({"error": error.message}).encode()
    if dialect is Dialect.ANTHROPIC:
        return dumps(anthropic_error(error.message, error_status(dialect, error))).encode()
    return dumps(
        {"error": {"message": error.message, "type": error.type, "param": error.param, "code": error.code}}
    ).encode()


def stream_error_payload(dialect: Dialect, message: str, code: str) -> dict[str, Any]:
    """The last event of a stream that broke after its headers were sent, in ``dialect``'s error shape
    (frame it with ``framing.encode``).

    An SSE stream gets no ``[DONE]`` after it: the openai client raises ``APIError`` on a ``data:`` payload
    with an ``error`` key, and the ollama client raises ``ResponseError`` on an NDJSON line with an
    ``error`` key.
    """
    if dialect is Dialect.OPENAI:
        # under SSE_EVENTS framing (the Responses API) this is an ``event: error``
        return {"error": {"message": message, "type": "server_error", "param": None, "code": code}}
    if dialect is Dialect.ANTHROPIC:  # ``event: error``: the anthropic client raises APIStatusError
        return anthropic_error(message, 500)
    return {"error": message}


#: HTTP status -> Anthropic's error ``type``
_ANTHROPIC_ERROR_TYPES: Mapping[int, str] = MappingProxyType(
    {
        400: "invalid_request_error",
        401: "authentication_error",
        402: "billing_error",
        403: "permission_error",
        404: "not_found_error",
        413: "request_too_large",
        429: "rate_limit_error",
        504: "timeout_error",
        529: "overloaded_error",
    }
)
#: what an overloaded gateway answers an Anthropic client
ANTHROPIC_OVERLOADED_STATUS = 529


def anthropic_error(message: str, status: int) -> dict[str, Any]:
    """Anthropic's error object ``{"type": "error", "error": {"type", "message"}}`` for ``status``."""
    kind = _ANTHROPIC_ERROR_TYPES.get(status) or ("invalid_request_error" if status < 500 else "api_error")
    return {"type": "error", "error": {"type": kind, "message": message}}


def _upstream_error_body(dialect: Dialect, error: UpstreamStatus) -> bytes:
    try:
        parsed: object = json.loads(error.body)
    except ValueError:  # also UnicodeDecodeError
        parsed = None
    if _has_dialect_shape(dialect, parsed):
        return error.body
    message = _upstream_message(parsed, error)
    if dialect is Dialect.OLLAMA:
        return dumps({"error": message}).encode()
    if dialect is Dialect.ANTHROPIC:
        return dumps(anthropic_error(message, error.status)).encode()
    return dumps(
        {
            "error": {
                "message": message,
                "type": _openai_type_for_status(error.status),
                "param": None,
                "code": error.code,
            }
        }
    ).encode()


def _has_dialect_shape(dialect: Dialect, parsed: object) -> bool:
    if not isinstance(parsed, dict):
        return False
    inner = parsed.get("error")
    if dialect is Dialect.OLLAMA:
        return isinstance(inner, str)
    if dialect is Dialect.ANTHROPIC:
        return (
            parsed.get("type") == "error"
            and isinstance(inner, dict)
            and isinstance(inner.get("message"), str)
        )
    return isinstance(inner, dict) and isinstance(inner.get("message"), str)


def _upstream_message(parsed: object, error: UpstreamStatus) -> str:
    """The backend's message, cut to ``MAX_UPSTREAM_ERROR_CHARS``."""
    message = _message_in(parsed) or error.body.decode("utf-8", errors="replace").strip() or error.message
    if len(message) > MAX_UPSTREAM_ERROR_CHARS:
        return message[:MAX_UPSTREAM_ERROR_CHARS] + "…"
    return message


def _message_in(parsed: object) -> str | None:
    """The message of an OpenAI error object, an Ollama error, a FastAPI ``detail`` (vLLM's 422) or a bare
    ``message``; None when ``parsed`` has none of these shapes."""
    if not isinstance(parsed, dict):
        return None
    inner = parsed.get("error")
    if isinstance(inner, dict):
        inner = inner.get("message")
    found = inner if inner is not None else parsed.get("message", parsed.get("detail"))
    if found is None or isinstance(found, str):
        return found
    return dumps(found)


def _openai_type_for_status(status: int) -> str:
    """OpenAI's error ``type`` for an HTTP status the backend answered with."""
    if status == 401:
        return "authentication_error"
    if status == 403:
        return "permission_error"
    if status == 404:
        return "not_found_error"
    if status == 429:
        return "rate_limit_error"
    if 400 <= status < 500:
        return "invalid_request_error"
    return "server_error"
