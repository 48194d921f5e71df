"""The translator interface, and the small helpers every translation direction shares."""

from __future__ import annotations

import abc
import secrets
import time
from datetime import UTC, datetime
from typing import Any

from gatewayd.errors import BadGateway, BadRequest
from gatewayd.gateway.core.dialects import Api, Dialect, Framing, Usage, dialect_framing

#: a JSON object as parsed by ``json.loads``
Payload = dict[str, Any]


class StreamTranslator(abc.ABC):
    """Translates one streamed response, event by event. One instance per stream; not thread-safe.

    The relay parses each upstream event once (an SSE ``data:`` payload other than ``[DONE]``, or an
    NDJSON line), hands it to ``event`` and frames what comes back in the client's framing. When the
    upstream ends normally (``[DONE]``, or the end of an NDJSON body) it calls ``finish`` and frames that
    too; an SSE client then gets ``SSE_DONE``. Both raise ``BadGateway`` on a malformed or truncated
    upstream stream, and on an error the backend reports mid-stream (an ``{"error": ...}`` event); the
    relay then ends the client's stream with ``stream_error_payload``.
    """

    __slots__ = ("usage",)

    def __init__(self) -> None:
        #: token counts, filled in as the usage-bearing event passes
        self.usage = Usage()

    @abc.abstractmethod
    def event(self, payload: object) -> list[Payload]:
        """One parsed upstream event -> zero or more client payloads."""

    def finish(self) -> list[Payload]:
        """The upstream ended normally: trailing client payloads."""
        return []


class Translator(abc.ABC):
    """Translates one request of ``api`` for a backend of another (or the same) dialect, and its answer.

    One instance per request, from ``translator()``; call ``request`` first: it records what the answer's
    translation needs (the client's stream options, embedding encoding, which upstream endpoint was used)
    and may change ``upstream_path``.

    ``client_model`` is the model name the client asked for; translated answers report it, never the
    backend's own name. A passthrough translator (same dialect on both sides) leaves the answer's bytes
    untouched, so those keep the backend's model name.

    Raises ``BadRequest`` from ``request`` for a client body it cannot translate (e.g. an image given by
    http URL for an Ollama backend), and ``BadGateway("backend returned an unexpected ...")`` from
    ``response``/``usage``/the stream translator for an upstream body of the wrong shape.
    """

    #: True when ``api.dialect`` equals the backend's: request bodies only get the backend's model name,
    #: and answers are relayed byte for byte
    passthrough: bool = False

    def __init__(self, api: Api, backend: Dialect, *, client_model: str) -> None:
        self.api = api
        self.client_model = client_model
        #: the path on the backend; starts with "/v1/" for OpenAI backends and "/api/" for Ollama ones
        self.upstream_path = api.path
        #: how the backend frames a streamed answer
        self.upstream_framing: Framing = dialect_framing(backend)

    @abc.abstractmethod
    def request(self, body: Payload, *, model: str, stream: bool) -> Payload:
        """The upstream request body for the client's ``body``, addressed to the backend's ``model``.

        ``stream`` is what the client asked for (``wants_stream``); the upstream body says it explicitly.
        """

    @abc.abstractmethod
    def response(self, upstream: object) -> Payload:
        """A whole (non-streamed) upstream body -> the client's body."""

    @abc.abstractmethod
    def usage(self, upstream: object) -> Usage:
        """Token counts from a whole upstream body."""

    @abc.abstractmethod
    def stream(self) -> StreamTranslator:
        """A translator for one streamed answer."""


class EmbeddingTranslator(Translator):
    """A translator for an embedding API: its answers are never streamed."""

    def stream(self) -> StreamTranslator:
        raise TypeError(f"{self.api.path} answers are never streamed")


# --- shared helpers ----------------------------------------------------------------------------------


def expect_dict(value: object, what: str) -> Payload:
    """``value`` if it is a JSON object, else ``BadGateway("backend returned an unexpected <what>")``."""
    if not isinstance(value, dict):
        raise BadGateway(f"backend returned an unexpected {what}")
    return value


def reported_error(payload: Payload) -> None:
    """Raise ``BadGateway`` if an upstream payload is an error report (either dialect's shape)."""
    error = payload.get("error")
    if error is None:
        return
    message = error.get("message") if isinstance(error, dict) else error
    raise BadGateway(f"backend reported an error: {message}")


def token_count(value: object) -> int | None:
    """A token count as reported, or None when absent or not an integer."""
    return value if type(value) is int else None


def openai_usage(payload: Payload) -> Usage:
    """Token counts from an OpenAI body or chunk (its ``usage`` object), None where absent."""
    usage = payload.get("usage")
    if not isinstance(usage, dict):
        return Usage()
    return Usage(token_count(usage.get("prompt_tokens")), token_count(usage.get("completion_tokens")))


def anthropic_usage(usage: object, into: Usage | None = None) -> Usage:
    """Token counts from an Anthropic ``usage`` object (input tokens include the cached ones), updating
    ``into`` where given (a stream reports them in two events)."""
    out = into if into is not None else Usage()
    if not isinstance(usage, dict):
        return out
    inputs = [
        usage.get(name) for name in ("input_tokens", "cache_read_input_tokens", "cache_creation_input_tokens")
    ]
    if type(inputs[0]) is int:
        out.prompt_tokens = sum(value for value in inputs if type(value) is int)
    output = usage.get("output_tokens")
    if type(output) is int:
        out.completion_tokens = output
    return out


def ollama_usage(payload: Payload) -> Usage:
    """Token counts from an Ollama final body or ``done`` line, None where absent."""
    return Usage(token_count(payload.get("prompt_eval_count")), token_count(payload.get("eval_count")))


def new_id(prefix: str) -> str:
    """A fresh OpenAI-style object id: ``prefix`` then 24 random hex digits, e.g. ``chatcmpl-3f2a...``."""
    return prefix + secrets.token_hex(12)


def now_seconds() -> int:
    return int(time.time())


def rfc3339(seconds: float) -> str:
    """Ollama's ``created_at``: RFC 3339 in UTC, e.g. ``2024-05-01T12:00:00Z``."""
    return datetime.fromtimestamp(seconds, UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def options_stop(value: object, param: str) -> list[str] | None:
    """A ``stop`` value (one string or a list of strings) as a list; None when absent."""
    if value is None:
        return None
    if isinstance(value, str):
        return [value]
    if isinstance(value, list) and all(isinstance(item, str) for item in value):
        return value
    raise BadRequest(f"'{param}' must be a string or a list of strings", param=param)
