"""Ollama's API (/api/chat, /api/generate, /api/embed, /api/embeddings): its profile, and its chat codecs.

Wire format: NDJSON streams, one object per line, the last with ``"done": true`` and the token counts
(``prompt_eval_count``, ``eval_count``); errors as ``{"error": "<message>"}``, which
``ollama.ResponseError`` reads, also as an NDJSON line. A full queue is 503 here (429 in OpenAI's API).

``ChatClient`` (Ollama clients, any backend) reads: messages (``images``, ``thinking``, ``tool_calls``, and
tool results, matched to the call they answer: by ``tool_call_id``, else the oldest unanswered call of
their ``tool_name``, else the oldest one; calls without ids get ``call_<message>_<n>``), ``tools``,
``format``, ``think``, ``stream``, and the options ``temperature``, ``top_p``, ``top_k``, ``min_p``,
``seed``, ``frequency_penalty``, ``presence_penalty``, ``repeat_penalty``, ``stop`` and a positive
``num_predict`` (other options are kept as backend-specific sampling extras). Dropped: ``keep_alive``,
``logprobs``/``top_logprobs``, ``template``, ``context``, ``truncate``. Answers carry no durations but
``total_duration: 0``, and token counts only when the backend reported them; tool calls come whole (a
streamed call's pieces are collected and sent in one line before the last).

``ChatBackend`` (Ollama servers, any client) writes all of the above but tool ids (Ollama has none; the
tool results name the tool instead), ``tool_choice`` (tools are left out for ``"none"``),
``parallel_tool_calls``, reasoning effort, logprobs and ``user``. Refused with ``BadRequest``: images by
URL (the core does no IO: Ollama takes base64 only), tool-call arguments that are not a JSON object.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from gatewayd.errors import Overloaded, RequestError, UpstreamStatus
from gatewayd.gateway.core.framing import Framing, encode_ndjson
from gatewayd.gateway.core.jsontext import dumps
from gatewayd.gateway.core.profile import DialectProfile, Payload, parsed_error_body, upstream_message
from gatewayd.gateway.core.usage import Usage, token_count
from gatewayd.gateway.core.wire import (
    now_seconds,
    rfc3339,
)


class OllamaProfile(DialectProfile):
    name = "ollama"
    framing = Framing.NDJSON
    event_mark = b"\n"
    usage_mark = b'"done"'

    def wants_stream(self, body: Mapping[str, Any]) -> bool:
        """Unless ``"stream": false`` (a missing or null ``stream`` means true)."""
        stream = body.get("stream")
        return stream is None or bool(stream)

    def usage(self, payload: Payload) -> Usage:
        return ollama_usage(payload)

    def stream_usage(self, usage: Usage, payload: Payload) -> Usage:
        """The counts of the ``done`` line."""
        return ollama_usage(payload) if payload.get("done") is True else usage

    def error_status(self, error: RequestError) -> int:
        """Ollama answers a full queue with 503."""
        if isinstance(error, Overloaded):
            return error.ollama_status
        return error.status

    def error_body(self, error: RequestError) -> bytes:
        if isinstance(error, UpstreamStatus):
            parsed = parsed_error_body(error)
            if isinstance(parsed, dict) and isinstance(parsed.get("error"), str):
                return error.body
            return dumps({"error": upstream_message(parsed, error)}).encode()
        return dumps({"error": error.message}).encode()

    def stream_error(self, message: str, code: str) -> Payload:
        """The ollama client raises ``ResponseError`` on a line with an ``error`` key."""
        return {"error": message}


OLLAMA = OllamaProfile()


def chat_keepalive(model: str, backend: str) -> bytes:
    """An empty assistant message (not done): the client's read timeout does not fire while a server
    loads."""
    message = {"role": "assistant", "content": ""}
    return encode_ndjson(
        {"model": model, "created_at": rfc3339(now_seconds()), "message": message, "done": False}
    )


def generate_keepalive(model: str, backend: str) -> bytes:
    """An empty generate line (not done)."""
    return encode_ndjson(
        {"model": model, "created_at": rfc3339(now_seconds()), "response": "", "done": False}
    )


def ollama_usage(payload: Payload) -> Usage:
    """Token counts from an Ollama final body or ``done`` line, None where absent."""
    return Usage(token_count(payload.get("prompt_eval_count")), token_count(payload.get("eval_count")))


def model_ids(payload: Any) -> tuple[str, ...] | None:
    """The model names of a ``GET /api/tags`` answer; None when it has another shape."""
    try:
        return tuple(str(m.get("model") or m["name"]) for m in payload["models"])
    except (KeyError, TypeError, AttributeError):
        return None
