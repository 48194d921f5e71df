"""OpenAI's API (/v1/chat/completions, /v1/completions, /v1/embeddings): its profile, and its chat codecs.

Wire format: SSE streams of ``data: <chunk>`` ended by ``data: [DONE]``; token counts in a ``usage``
object (in a stream, only with ``stream_options.include_usage``); errors as ``{"error": {"message",
"type", "param", "code"}}``, which ``openai.APIError`` reads, also inside an SSE ``data:`` payload.

``ChatClient`` (OpenAI clients, any backend) reads: messages (text and ``image_url`` content parts, the
``developer`` role as system, tool calls and tool results), ``tools``, ``tool_choice``,
``parallel_tool_calls``, ``response_format``, ``reasoning_effort``, ``top_logprobs``, ``user``,
``stream`` with ``stream_options.include_usage``, and ``temperature``, ``top_p``, ``seed``,
``frequency_penalty``, ``presence_penalty``, ``max_completion_tokens``/``max_tokens``, ``stop``. Dropped:
``n``, ``logit_bias``, ``service_tier``, ``store``, ``metadata`` and every other field. Refused with
``BadRequest``: content parts other than text and images.

``ChatBackend`` (OpenAI-compatible servers, any client) writes all of the above but the reasoning
settings, and drops a request's thinking parts (OpenAI has no way to send them back). It reads
``reasoning_content`` (or ``reasoning``, as vLLM and llama-server send it) as thinking.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from gatewayd.errors import RequestError, UpstreamStatus
from gatewayd.gateway.core.framing import DONE, SSE_DONE, Framing, encode_sse_comment
from gatewayd.gateway.core.jsontext import dumps
from gatewayd.gateway.core.profile import DialectProfile, Payload, parsed_error_body, upstream_message
from gatewayd.gateway.core.usage import Usage, token_count


class OpenAIProfile(DialectProfile):
    name = "openai"
    framing = Framing.SSE
    done_data = DONE
    end_bytes = SSE_DONE
    event_mark = b"data:"
    usage_mark = b'"usage"'

    def wants_stream(self, body: Mapping[str, Any]) -> bool:
        """Only on ``"stream": true``."""
        return body.get("stream") is True

    def usage(self, payload: Payload) -> Usage:
        return openai_usage(payload)

    def stream_usage(self, usage: Usage, payload: Payload) -> Usage:
        """The counts of the last chunk with a ``usage`` object."""
        return openai_usage(payload) if payload.get("usage") else usage

    def error_body(self, error: RequestError) -> bytes:
        if isinstance(error, UpstreamStatus):
            parsed = parsed_error_body(error)
            inner = parsed.get("error") if isinstance(parsed, dict) else None
            if isinstance(inner, dict) and isinstance(inner.get("message"), str):
                return error.body
            message, error_type, param = upstream_message(parsed, error), _type_for_status(error.status), None
        else:
            message, error_type, param = error.message, error.type, error.param
        return dumps(
            {"error": {"message": message, "type": error_type, "param": param, "code": error.code}}
        ).encode()

    def stream_error(self, message: str, code: str) -> Payload:
        """The openai client raises ``APIError`` on a ``data:`` payload with an ``error`` key (no ``[DONE]``
        follows it)."""
        return {"error": {"message": message, "type": "server_error", "param": None, "code": code}}


OPENAI = OpenAIProfile()


def keepalive(model: str, backend: str) -> bytes:
    """An SSE comment: clients ignore it, and their read timeout does not fire while a server loads."""
    return encode_sse_comment(f"gatewayd: starting backend {backend}")


def openai_usage(payload: Payload) -> Usage:
    """Token counts from an OpenAI body or chunk (its ``usage`` object), None where absent."""
    usage = payload.get("usage")
    if not isinstance(usage, dict):
        return Usage()
    return Usage(token_count(usage.get("prompt_tokens")), token_count(usage.get("completion_tokens")))


def _type_for_status(status: int) -> str:
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


def model_ids(payload: Any) -> tuple[str, ...] | None:
    """The model ids of a ``GET /v1/models`` answer; None when it has another shape."""
    try:
        return tuple(str(m["id"]) for m in payload["data"])
    except (KeyError, TypeError, AttributeError):
        return None
