"""What a dialect declares about its wire format, so that no code outside its module branches on it.

A ``DialectProfile`` says how a dialect frames a stream and where the stream ends, how its whole answers
and its stream events carry token counts (read from relayed bytes without re-encoding them), how it
renders errors (whole bodies and the last event of a broken stream) and how its clients send their key.
The edge, the relay and the stream machine (``core.stream``) are driven by it; each dialect module in
``gatewayd.gateway.dialects`` provides one.
"""

from __future__ import annotations

import abc
import json
from collections.abc import Iterable, Mapping
from typing import Any

from gatewayd.errors import RequestError, UpstreamStatus
from gatewayd.gateway.core.framing import Framing, encode
from gatewayd.gateway.core.jsontext import dumps
from gatewayd.gateway.core.usage import Usage

#: a JSON object as parsed by ``json.loads``
Payload = dict[str, Any]
#: an upstream error text longer than this is cut before it is shown to a client
MAX_UPSTREAM_ERROR_CHARS = 2000


class DialectProfile(abc.ABC):
    """The wire format of one API family (e.g. OpenAI's /v1, Ollama's /api). One instance per dialect,
    stateless, compared by identity."""

    #: short name, e.g. "openai"
    name: str
    framing: Framing
    #: the SSE data that ends an upstream stream ("[DONE]"); None when a stream ends with its body (an
    #: upstream that ends without it was cut)
    done_data: str | None = None
    #: bytes a translated stream gets after its last event (``data: [DONE]``), none by default
    end_bytes: bytes = b""
    #: bytes that begin each event of a stream: relayed events are counted by it (the token estimate
    #: when the backend reports no usage)
    event_mark: bytes
    #: bytes present in every stream event that may carry token counts: only those are parsed when a
    #: stream is relayed as bytes
    usage_mark: bytes
    #: request headers (lower-case) a passed-through request keeps: they change what the body means to a
    #: backend of the same dialect (Anthropic's ``anthropic-beta``)
    forwarded_headers: tuple[bytes, ...] = ()

    def __repr__(self) -> str:
        return f"<dialect {self.name}>"

    @abc.abstractmethod
    def wants_stream(self, body: Mapping[str, Any]) -> bool:
        """Whether a client body asks for a streamed answer (the dialect's default when it says nothing)."""

    @abc.abstractmethod
    def usage(self, payload: Payload) -> Usage:
        """Token counts of a whole answer body."""

    @abc.abstractmethod
    def stream_usage(self, usage: Usage, payload: Payload) -> Usage:
        """The counts of a stream after ``payload`` (one of its events that contains ``usage_mark``),
        given the counts so far."""

    def error_status(self, error: RequestError) -> int:
        """The HTTP status of ``error`` in this dialect."""
        return error.status

    @abc.abstractmethod
    def error_body(self, error: RequestError) -> bytes:
        """The JSON error body for ``error``. For ``UpstreamStatus``, the backend's own body when it has
        this dialect's shape, else its message (``upstream_message``) wrapped in it."""

    @abc.abstractmethod
    def stream_error(self, message: str, code: str) -> Payload:
        """The last event of a stream that broke after its headers were sent (frame it with ``encode``),
        in the shape the dialect's official client raises on."""

    def encode(self, payload: Mapping[str, Any]) -> bytes:
        """One event framed for a client (SSE dialects with named events override this)."""
        return encode(self.framing, payload)

    def api_key(self, headers: Iterable[tuple[bytes, bytes]]) -> str | None:
        """The key a client sends with its request (``Authorization: Bearer`` unless overridden)."""
        return bearer(headers)


def bearer(headers: Iterable[tuple[bytes, bytes]]) -> str | None:
    """The token of an ``Authorization: Bearer ...`` header, if any."""
    for name, value in headers:
        if name == b"authorization":
            scheme, _, token = value.decode("latin-1").partition(" ")
            if scheme.lower() == "bearer" and token.strip():
                return token.strip()
            return None
    return None


# --- the backend's error bodies, for every dialect's error_body ----------------------------------------


def parsed_error_body(error: UpstreamStatus) -> object:
    """The backend's error body as JSON, or None when it is not JSON."""
    try:
        parsed: object = json.loads(error.body)
    except ValueError:  # also UnicodeDecodeError
        return None
    return parsed


def upstream_message(parsed: object, error: UpstreamStatus) -> str:
    """The backend's message (from ``parsed_error_body``), cut to ``MAX_UPSTREAM_ERROR_CHARS``."""
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
