"""Anthropic's Messages API (``POST /v1/messages``): the client codec, the backend codec (``kind:
anthropic``), its error bodies and the token estimate of ``/v1/messages/count_tokens``.

Decoded from a client: ``system`` (a string or text blocks; ``cache_control`` ignored), messages whose
content is a string or blocks (text, image by base64 or url source, tool_use, tool_result with string or
block content and ``is_error``, thinking), a ``role: "system"`` message anywhere in ``messages`` (a SYSTEM
message in place), tools with ``input_schema``, ``tool_choice`` (auto/any/tool/none and
``disable_parallel_tool_use``), ``stop_sequences``, ``metadata.user_id``, ``thinking`` (enabled with
``budget_tokens``, adaptive, disabled), ``output_config`` (``effort``, ``format`` as a JSON schema),
``max_tokens`` (required, as Anthropic has it), ``temperature``, ``top_p``, ``top_k``.

Dropped: ``redacted_thinking`` blocks and block types with no internal equivalent (document, search
results, server tool results), server tools (a ``type`` such as ``web_search_20250305``: listed in
``dropped_tools``), ``context_management``, ``container``, ``service_tier`` and every other unknown field.

Encoded to a backend: every SYSTEM message joins the top-level ``system`` (Anthropic takes instructions
only there), tool results go in user messages, thinking without a signature is left out (Anthropic refuses
it), and ``max_tokens`` is ``DEFAULT_MAX_TOKENS`` when the client gave none.

(Past 600 lines on purpose: the module is the whole dialect, its profile and both sides, and each side's
decoder sits next to the encoder of the same shapes.)
"""

from __future__ import annotations

import json
import math
import secrets
from collections.abc import Iterable, Mapping
from typing import Any

from gatewayd.errors import BadGateway, BadRequest, Overloaded, RequestError, UpstreamStatus
from gatewayd.gateway.core.chat import (
    ChatEvent,
    ChatRequest,
    ChatResponse,
    Finish,
    Image,
    Message,
    MessageStart,
    OutputFormat,
    OutputKind,
    Part,
    Reasoning,
    Role,
    Sampling,
    StopReason,
    Text,
    TextDelta,
    Thinking,
    ThinkingDelta,
    Tool,
    ToolCall,
    ToolCallDelta,
    ToolCallStart,
    ToolChoice,
    ToolMode,
    ToolResult,
)
from gatewayd.gateway.core.codec import BackendCodec, ClientCodec, StreamDecoder, StreamEncoder
from gatewayd.gateway.core.framing import Framing
from gatewayd.gateway.core.jsontext import dumps
from gatewayd.gateway.core.profile import DialectProfile, Payload, bearer, parsed_error_body, upstream_message
from gatewayd.gateway.core.usage import Usage

#: ``max_tokens`` sent to an Anthropic backend (which requires one) when the client gave none
DEFAULT_MAX_TOKENS = 4096
#: the smallest thinking budget Anthropic accepts
MIN_THINKING_BUDGET_TOKENS = 1024
#: the token estimate's ratio (see ``estimate_tokens``)
ESTIMATE_CHARS_PER_TOKEN = 4
#: what the token estimate counts for an image (Anthropic's own figure for a ~1000x1000 image is ~1300)
ESTIMATE_IMAGE_TOKENS = 1000

_STOP_REASONS: Mapping[StopReason, str] = {
    StopReason.END: "end_turn",
    StopReason.LENGTH: "max_tokens",
    StopReason.TOOL_CALLS: "tool_use",
    StopReason.STOP_SEQUENCE: "stop_sequence",
    StopReason.CONTENT_FILTER: "refusal",
}
_STOP_REASONS_IN: Mapping[str, StopReason] = {
    "end_turn": StopReason.END,
    "pause_turn": StopReason.END,
    "max_tokens": StopReason.LENGTH,
    "model_context_window_exceeded": StopReason.LENGTH,
    "tool_use": StopReason.TOOL_CALLS,
    "stop_sequence": StopReason.STOP_SEQUENCE,
    "refusal": StopReason.CONTENT_FILTER,
}
_TOOL_MODES: Mapping[str, ToolMode] = {
    "auto": ToolMode.AUTO,
    "any": ToolMode.REQUIRED,
    "tool": ToolMode.NAMED,
    "none": ToolMode.NONE,
}


def new_message_id() -> str:
    return "msg_" + secrets.token_hex(12)


# --- the profile ------------------------------------------------------------------------------------------

#: HTTP status -> Anthropic's error ``type``
_ERROR_TYPES: Mapping[int, str] = {
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
#: what an overloaded gateway answers an Anthropic client (its "overloaded": the anthropic client retries)
OVERLOADED_STATUS = 529
#: the Messages API version gatewayd speaks to a backend of ``kind: anthropic``
ANTHROPIC_VERSION = "2023-06-01"


def error_object(message: str, status: int) -> Payload:
    """``{"type": "error", "error": {"type", "message"}}`` for an HTTP ``status``."""
    kind = _ERROR_TYPES.get(status) or ("invalid_request_error" if status < 500 else "api_error")
    return {"type": "error", "error": {"type": kind, "message": message}}


class AnthropicProfile(DialectProfile):
    """SSE with named events (``event: <type>``), no end marker: a stream ends with ``message_stop``."""

    name = "anthropic"
    framing = Framing.SSE
    event_mark = b"data:"
    usage_mark = b'"usage"'
    #: the beta features a passed-through body may use (Claude Code's context_management, ...)
    forwarded_headers = (b"anthropic-beta",)

    def wants_stream(self, body: Mapping[str, Any]) -> bool:
        return body.get("stream") is True

    def usage(self, payload: Payload) -> Usage:
        return anthropic_usage(payload.get("usage"))

    def stream_usage(self, usage: Usage, payload: Payload) -> Usage:
        """message_start carries the input tokens, message_delta the output tokens."""
        kind = payload.get("type")
        if kind == "message_start" and isinstance(payload.get("message"), dict):
            return anthropic_usage(
                payload["message"].get("usage"), Usage(usage.prompt_tokens, usage.completion_tokens)
            )
        if kind == "message_delta":
            return anthropic_usage(payload.get("usage"), Usage(usage.prompt_tokens, usage.completion_tokens))
        return usage

    def error_status(self, error: RequestError) -> int:
        return OVERLOADED_STATUS if isinstance(error, Overloaded) else error.status

    def error_body(self, error: RequestError) -> bytes:
        if isinstance(error, UpstreamStatus):
            parsed = parsed_error_body(error)
            if is_error_shape(parsed):
                return error.body
            return dumps(error_object(upstream_message(parsed, error), error.status)).encode()
        return dumps(error_object(error.message, self.error_status(error))).encode()

    def stream_error(self, message: str, code: str) -> Payload:
        """An ``event: error``: the anthropic client raises APIStatusError on it."""
        return error_object(message, 500)

    def encode(self, payload: Mapping[str, Any]) -> bytes:
        return f"event: {payload.get('type', 'error')}\ndata: {dumps(payload)}\n\n".encode()

    def api_key(self, headers: Iterable[tuple[bytes, bytes]]) -> str | None:
        """``x-api-key`` (the anthropic client's ``api_key``), else ``Authorization: Bearer`` (its
        ``auth_token``, Claude Code's ANTHROPIC_AUTH_TOKEN)."""
        for name, value in headers:
            if name == b"x-api-key":
                return value.decode("latin-1").strip() or None
        return bearer(headers)


ANTHROPIC = AnthropicProfile()


def is_error_shape(parsed: object) -> bool:
    """Whether an upstream error body already has Anthropic's shape (then it is passed on as it is)."""
    return (
        isinstance(parsed, dict)
        and parsed.get("type") == "error"
        and isinstance(parsed.get("error"), dict)
        and isinstance(parsed["error"].get("message"), str)
    )


def keepalive(model: str, backend: str) -> bytes:
    """A ``ping`` event: what Anthropic itself sends while a client waits."""
    return ANTHROPIC.encode({"type": "ping"})


def model_ids(payload: Any) -> tuple[str, ...] | None:
    """The models of an Anthropic model list (``{"data": [{"id": ...}]}``); None for another shape."""
    try:
        return tuple(str(m["id"]) for m in payload["data"])
    except (KeyError, TypeError):
        return None


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


# --- the client side -------------------------------------------------------------------------------------


class AnthropicClient(ClientCodec):
    """Serves ``/v1/messages`` to Anthropic clients (Claude Code, the ``anthropic`` SDK)."""

    def __init__(self) -> None:
        self.model = ""
        #: the ``type`` of every tool left out (server tools a chat backend cannot run)
        self.dropped_tools: list[str] = []

    def decode_request(self, body: Payload) -> ChatRequest:
        model = body.get("model")
        if not isinstance(model, str) or not model:
            raise BadRequest("model: Field required", param="model")
        self.model = model
        max_tokens = body.get("max_tokens")
        if type(max_tokens) is not int or max_tokens < 1:
            raise BadRequest("max_tokens: Field required (a positive integer)", param="max_tokens")
        return decode_messages_body(body, max_tokens=max_tokens, dropped_tools=self.dropped_tools)

    def encode_response(self, response: ChatResponse) -> Payload:
        content = [_block(part) for part in response.parts]
        reason = _stop_reason(response.stop_reason, response.parts)
        return {
            "id": response.id if response.id and response.id.startswith("msg_") else new_message_id(),
            "type": "message",
            "role": "assistant",
            "model": response.model or self.model,
            "content": [block for block in content if block is not None],
            "stop_reason": reason,
            "stop_sequence": response.stop_sequence if reason == "stop_sequence" else None,
            "usage": _usage(response.usage),
        }

    def stream_encoder(self) -> AnthropicStreamEncoder:
        return AnthropicStreamEncoder(self.model)


def decode_messages_body(
    body: Payload, *, max_tokens: int | None, dropped_tools: list[str] | None = None
) -> ChatRequest:
    """A Messages request body (also a count_tokens body, which has no ``max_tokens``) -> ChatRequest."""
    messages: list[Message] = []
    system = body.get("system")
    if system:
        messages.append(Message(Role.SYSTEM, _text_parts(system, "system")))
    raw_messages = body.get("messages")
    if not isinstance(raw_messages, list):
        raise BadRequest("messages: Field required (a list)", param="messages")
    for index, message in enumerate(raw_messages):
        messages.extend(_decode_message(message, f"messages.{index}"))
    tools = _decode_tools(body.get("tools"), dropped_tools if dropped_tools is not None else [])
    tool_choice, parallel = _decode_tool_choice(body.get("tool_choice"))
    metadata = body.get("metadata")
    user = metadata.get("user_id") if isinstance(metadata, dict) else None
    output_config = body.get("output_config")
    output_config = output_config if isinstance(output_config, dict) else {}
    stop = body.get("stop_sequences") or ()
    if not isinstance(stop, list | tuple) or not all(isinstance(s, str) for s in stop):
        raise BadRequest("stop_sequences: must be a list of strings", param="stop_sequences")
    return ChatRequest(
        model=str(body.get("model") or ""),
        messages=tuple(messages),
        stream=body.get("stream") is True,
        tools=tools,
        tool_choice=tool_choice,
        parallel_tool_calls=parallel,
        sampling=Sampling(
            max_tokens=max_tokens,
            temperature=_number(body.get("temperature")),
            top_p=_number(body.get("top_p")),
            top_k=body.get("top_k") if type(body.get("top_k")) is int else None,
            stop=tuple(stop),
        ),
        output=_decode_output(output_config.get("format") or body.get("output_format")),
        reasoning=_decode_thinking(body.get("thinking"), output_config.get("effort")),
        user=user if isinstance(user, str) else None,
    )


def _number(value: object) -> float | None:
    return float(value) if isinstance(value, int | float) and not isinstance(value, bool) else None


def _text_parts(value: object, where: str) -> tuple[Text, ...]:
    if isinstance(value, str):
        return (Text(value),)
    if isinstance(value, list):
        return tuple(
            Text(block["text"])
            for block in value
            if isinstance(block, dict) and isinstance(block.get("text"), str)
        )
    raise BadRequest(f"{where}: must be a string or a list of text blocks", param=where)


def _decode_message(message: object, where: str) -> list[Message]:
    if not isinstance(message, dict):
        raise BadRequest(f"{where}: must be an object", param=where)
    role = message.get("role")
    content = message.get("content")
    if role == "system":
        return [Message(Role.SYSTEM, _text_parts(content, f"{where}.content"))]
    if role not in ("user", "assistant"):
        raise BadRequest(f"{where}.role: must be 'user' or 'assistant'", param=f"{where}.role")
    if isinstance(content, str):
        return [Message(Role(role), (Text(content),))]
    if not isinstance(content, list):
        raise BadRequest(f"{where}.content: must be a string or a list of blocks", param=f"{where}.content")
    parts = [part for i, b in enumerate(content) if (part := _decode_block(b, f"{where}.content.{i}"))]
    if role == "assistant":
        return [Message(Role.ASSISTANT, tuple(parts))]
    # a user message's tool results become TOOL messages, in order, around its other parts
    out: list[Message] = []
    for part in parts:
        run_role = Role.TOOL if isinstance(part, ToolResult) else Role.USER
        if out and out[-1].role is run_role:
            out[-1] = Message(run_role, (*out[-1].parts, part))
        else:
            out.append(Message(run_role, (part,)))
    return out or [Message(Role.USER, ())]


def _decode_block(block: object, where: str) -> Part | None:
    if not isinstance(block, dict):
        raise BadRequest(f"{where}: must be an object", param=where)
    kind = block.get("type")
    if kind == "text":
        return Text(str(block.get("text") or ""))
    if kind == "image":
        return _decode_image(block, where)
    if kind == "tool_use":
        arguments = block.get("input")
        return ToolCall(
            id=str(block.get("id") or ""),
            name=str(block.get("name") or ""),
            arguments=dumps(arguments if arguments is not None else {}),
        )
    if kind == "tool_result":
        content = block.get("content")
        if content is None:
            parts: tuple[Text | Image, ...] = ()
        elif isinstance(content, str):
            parts = (Text(content),)
        elif isinstance(content, list):
            parts = tuple(
                part
                for i, b in enumerate(content)
                if isinstance(part := _decode_block(b, f"{where}.content.{i}"), Text | Image)
            )
        else:
            raise BadRequest(f"{where}.content: must be a string or a list of blocks", param=where)
        return ToolResult(
            call_id=str(block.get("tool_use_id") or ""), content=parts, is_error=block.get("is_error") is True
        )
    if kind == "thinking":
        signature = block.get("signature")
        return Thinking(str(block.get("thinking") or ""), signature if isinstance(signature, str) else None)
    return None  # redacted_thinking, document, server tool results...: nothing to carry them in


def _decode_image(block: Payload, where: str) -> Image:
    source = block.get("source")
    if isinstance(source, dict):
        if source.get("type") == "base64" and isinstance(source.get("data"), str):
            media_type = source.get("media_type")
            return Image(media_type=media_type if isinstance(media_type, str) else None, data=source["data"])
        if source.get("type") == "url" and isinstance(source.get("url"), str):
            return Image(url=source["url"])
    raise BadRequest(f"{where}.source: must be a base64 or url image source", param=f"{where}.source")


def _decode_tools(value: object, dropped: list[str]) -> tuple[Tool, ...]:
    if value is None:
        return ()
    if not isinstance(value, list):
        raise BadRequest("tools: must be a list", param="tools")
    tools: list[Tool] = []
    for index, tool in enumerate(value):
        if not isinstance(tool, dict) or not isinstance(tool.get("name"), str):
            raise BadRequest(f"tools.{index}: must be an object with a name", param=f"tools.{index}")
        kind = tool.get("type")
        if kind not in (None, "custom"):
            dropped.append(str(kind))
            continue
        schema = tool.get("input_schema")
        description = tool.get("description")
        tools.append(
            Tool(
                name=tool["name"],
                description=description if isinstance(description, str) else None,
                parameters=schema if isinstance(schema, dict) else {"type": "object"},
            )
        )
    return tuple(tools)


def _decode_tool_choice(value: object) -> tuple[ToolChoice, bool | None]:
    if not isinstance(value, dict):
        return ToolChoice(), None
    mode = _TOOL_MODES.get(str(value.get("type")))
    if mode is None:
        raise BadRequest("tool_choice.type: must be auto, any, tool or none", param="tool_choice")
    name = value.get("name")
    if mode is ToolMode.NAMED and not isinstance(name, str):
        raise BadRequest("tool_choice.name: required for type 'tool'", param="tool_choice")
    disable = value.get("disable_parallel_tool_use")
    parallel = None if disable is None else not disable
    return ToolChoice(mode, name if mode is ToolMode.NAMED else None), parallel


def _decode_output(value: object) -> OutputFormat:
    if (
        isinstance(value, dict)
        and value.get("type") == "json_schema"
        and isinstance(value.get("schema"), dict)
    ):
        return OutputFormat(OutputKind.JSON_SCHEMA, schema=value["schema"])
    return OutputFormat()


def _decode_thinking(value: object, effort: object) -> Reasoning:
    effort = effort if isinstance(effort, str) else None
    if not isinstance(value, dict):
        return Reasoning(effort=effort)
    kind = value.get("type")
    if kind == "enabled":
        budget = value.get("budget_tokens")
        return Reasoning(enabled=True, effort=effort, budget_tokens=budget if type(budget) is int else None)
    if kind == "disabled":
        return Reasoning(enabled=False, effort=effort)
    # "adaptive": the model decides; a backend that cannot think must not be told to
    return Reasoning(effort=effort)


def _block(part: Text | Thinking | ToolCall) -> Payload | None:
    if isinstance(part, Text):
        return {"type": "text", "text": part.text} if part.text else None
    if isinstance(part, Thinking):
        return {"type": "thinking", "thinking": part.text, "signature": part.signature or ""}
    return {"type": "tool_use", "id": part.id, "name": part.name, "input": tool_input(part.arguments)}


def tool_input(arguments: str) -> Any:
    """A call's JSON arguments text as Anthropic's ``input`` object (an unparsable text is kept under
    ``arguments``: Anthropic requires an object)."""
    if not arguments.strip():
        return {}
    try:
        value = json.loads(arguments)
    except ValueError:
        return {"arguments": arguments}
    return value if isinstance(value, dict) else {"arguments": value}


def _stop_reason(reason: StopReason, parts: tuple[Any, ...] = ()) -> str:
    if any(isinstance(part, ToolCall) for part in parts):
        return "tool_use"  # some backends end a tool call with a plain "stop"
    return _STOP_REASONS[reason]


def _usage(usage: Usage) -> Payload:
    return {"input_tokens": usage.prompt_tokens or 0, "output_tokens": usage.completion_tokens or 0}


class AnthropicStreamEncoder(StreamEncoder):
    """Internal events -> Anthropic's stream: message_start, ping, then per content block
    content_block_start / content_block_delta... / content_block_stop, then message_delta and
    message_stop. Each payload's ``type`` is its SSE event name (the framing writes it)."""

    def __init__(self, model: str) -> None:
        self._model = model
        self._started = False
        self._blocks = 0  # content blocks opened so far
        self._open: str | None = None  # "text", "thinking" or "tool:<index>" for the open block
        self._call_blocks: dict[int, int] = {}
        self._tool_calls = False

    def event(self, event: ChatEvent) -> list[Payload]:
        out: list[Payload] = []
        if not self._started:
            out.extend(self._start(event if isinstance(event, MessageStart) else None))
            if isinstance(event, MessageStart):
                return out
        if isinstance(event, TextDelta):
            if not event.text:
                return out
            out.extend(self._ensure("text", {"type": "text", "text": ""}))
            out.append(self._delta({"type": "text_delta", "text": event.text}))
        elif isinstance(event, ThinkingDelta):
            out.extend(self._ensure("thinking", {"type": "thinking", "thinking": "", "signature": ""}))
            if event.text:
                out.append(self._delta({"type": "thinking_delta", "thinking": event.text}))
            if event.signature:
                out.append(self._delta({"type": "signature_delta", "signature": event.signature}))
        elif isinstance(event, ToolCallStart):
            self._tool_calls = True
            block = {"type": "tool_use", "id": event.id, "name": event.name, "input": {}}
            out.extend(self._ensure(f"tool:{event.index}", block))
            self._call_blocks[event.index] = self._blocks - 1
        elif isinstance(event, ToolCallDelta):
            if event.arguments:
                index = self._call_blocks.get(event.index, self._blocks - 1)
                delta = {"type": "input_json_delta", "partial_json": event.arguments}
                out.append({"type": "content_block_delta", "index": index, "delta": delta})
        elif isinstance(event, Finish):
            out.extend(self._close())
            reason = "tool_use" if self._tool_calls else _STOP_REASONS[event.stop_reason]
            usage: Payload = {"output_tokens": event.usage.completion_tokens or 0}
            if event.usage.prompt_tokens is not None:
                usage["input_tokens"] = event.usage.prompt_tokens
            stop: Payload = {
                "stop_reason": reason,
                "stop_sequence": event.stop_sequence if reason == "stop_sequence" else None,
            }
            out.append({"type": "message_delta", "delta": stop, "usage": usage})
            out.append({"type": "message_stop"})
        return out

    def _start(self, start: MessageStart | None) -> list[Payload]:
        self._started = True
        message_id = start.id if start and start.id and start.id.startswith("msg_") else new_message_id()
        message: Payload = {
            "id": message_id,
            "type": "message",
            "role": "assistant",
            "model": (start.model if start else "") or self._model,
            "content": [],
            "stop_reason": None,
            "stop_sequence": None,
            "usage": {"input_tokens": (start.prompt_tokens if start else None) or 0, "output_tokens": 0},
        }
        return [{"type": "message_start", "message": message}, {"type": "ping"}]

    def _ensure(self, kind: str, block: Payload) -> list[Payload]:
        if self._open == kind:
            return []
        out = self._close()
        out.append({"type": "content_block_start", "index": self._blocks, "content_block": block})
        self._blocks += 1
        self._open = kind
        return out

    def _close(self) -> list[Payload]:
        if self._open is None:
            return []
        self._open = None
        return [{"type": "content_block_stop", "index": self._blocks - 1}]

    def _delta(self, delta: Payload) -> Payload:
        return {"type": "content_block_delta", "index": self._blocks - 1, "delta": delta}


# --- the backend side (kind: anthropic) -------------------------------------------------------------------


class AnthropicBackend(BackendCodec):
    """Speaks Anthropic's Messages API to a backend of ``kind: anthropic``."""

    path = "/v1/messages"

    def encode_request(self, request: ChatRequest, *, model: str) -> Payload:
        system: list[str] = []
        messages: list[Payload] = []
        for message in request.messages:
            if message.role is Role.SYSTEM:
                system.append(message.text)
                continue
            role = "assistant" if message.role is Role.ASSISTANT else "user"
            blocks = [block for part in message.parts if (block := _encode_part(part)) is not None]
            if messages and messages[-1]["role"] == role:
                messages[-1]["content"].extend(blocks)
            else:
                messages.append({"role": role, "content": blocks})
        sampling = request.sampling
        body: Payload = {
            "model": model,
            "messages": messages,
            "max_tokens": sampling.max_tokens or DEFAULT_MAX_TOKENS,
        }
        if system:
            body["system"] = "\n\n".join(system)
        if request.stream:
            body["stream"] = True
        for name, value in (("temperature", sampling.temperature), ("top_p", sampling.top_p)):
            if value is not None:
                body[name] = value
        if sampling.top_k is not None:
            body["top_k"] = sampling.top_k
        if sampling.stop:
            body["stop_sequences"] = list(sampling.stop)
        if request.tools and request.tool_choice.mode is not ToolMode.NONE:
            body["tools"] = [
                {
                    "name": tool.name,
                    **({"description": tool.description} if tool.description else {}),
                    "input_schema": dict(tool.parameters) or {"type": "object"},
                }
                for tool in request.tools
            ]
            choice = _encode_tool_choice(request.tool_choice, request.parallel_tool_calls)
            if choice is not None:
                body["tool_choice"] = choice
        if request.user:
            body["metadata"] = {"user_id": request.user}
        reasoning = request.reasoning
        if reasoning.enabled or reasoning.budget_tokens:
            budget = max(reasoning.budget_tokens or MIN_THINKING_BUDGET_TOKENS, MIN_THINKING_BUDGET_TOKENS)
            body["thinking"] = {"type": "enabled", "budget_tokens": budget}
            body["max_tokens"] = max(body["max_tokens"], budget + 1)
        if request.output.kind is OutputKind.JSON_SCHEMA and request.output.schema is not None:
            body["output_config"] = {"format": {"type": "json_schema", "schema": dict(request.output.schema)}}
        return body

    def decode_response(self, payload: object) -> ChatResponse:
        body = _expect_message(payload)
        parts: list[Text | Thinking | ToolCall] = []
        for block in body.get("content") or ():
            if not isinstance(block, dict):
                continue
            kind = block.get("type")
            if kind == "text":
                parts.append(Text(str(block.get("text") or "")))
            elif kind == "thinking":
                signature = block.get("signature")
                parts.append(Thinking(str(block.get("thinking") or ""), signature or None))
            elif kind == "tool_use":
                parts.append(
                    ToolCall(
                        id=str(block.get("id") or "") or "toolu_" + secrets.token_hex(12),
                        name=str(block.get("name") or ""),
                        arguments=dumps(block.get("input") or {}),
                    )
                )
        usage = body.get("usage")
        stop_sequence = body.get("stop_sequence")
        return ChatResponse(
            model=str(body.get("model") or ""),
            parts=tuple(parts),
            stop_reason=_STOP_REASONS_IN.get(str(body.get("stop_reason")), StopReason.END),
            usage=anthropic_usage(usage),
            id=body.get("id") if isinstance(body.get("id"), str) else None,
            stop_sequence=stop_sequence if isinstance(stop_sequence, str) else None,
        )

    def stream_decoder(self) -> AnthropicStreamDecoder:
        return AnthropicStreamDecoder()


def _expect_message(payload: object) -> Payload:
    if not isinstance(payload, dict):
        raise BadGateway("backend returned an unexpected response")
    if payload.get("type") == "error":
        error = payload.get("error")
        message = error.get("message") if isinstance(error, dict) else error
        raise BadGateway(f"backend reported an error: {message}")
    if not isinstance(payload.get("content"), list):
        raise BadGateway("backend returned an unexpected response")
    return payload


def _encode_part(part: Part) -> Payload | None:
    if isinstance(part, Text):
        return {"type": "text", "text": part.text}
    if isinstance(part, Image):
        return _encode_image(part)
    if isinstance(part, Thinking):
        if not part.signature:
            return None
        return {"type": "thinking", "thinking": part.text, "signature": part.signature}
    if isinstance(part, ToolCall):
        return {"type": "tool_use", "id": part.id, "name": part.name, "input": tool_input(part.arguments)}
    content = [block for item in part.content if (block := _encode_part(item)) is not None]
    result: Payload = {"type": "tool_result", "tool_use_id": part.call_id, "content": content}
    if part.is_error:
        result["is_error"] = True
    return result


def _encode_image(image: Image) -> Payload:
    if image.data is not None:
        source = {"type": "base64", "media_type": image.media_type or "image/png", "data": image.data}
        return {"type": "image", "source": source}
    url = image.url or ""
    if url.startswith("data:") and ";base64," in url:
        media_type, _, data = url[5:].partition(";base64,")
        return {"type": "image", "source": {"type": "base64", "media_type": media_type, "data": data}}
    return {"type": "image", "source": {"type": "url", "url": url}}


def _encode_tool_choice(choice: ToolChoice, parallel: bool | None) -> Payload | None:
    if choice.mode is ToolMode.AUTO and parallel is not False:
        return None
    kinds = {ToolMode.AUTO: "auto", ToolMode.REQUIRED: "any", ToolMode.NAMED: "tool", ToolMode.NONE: "none"}
    out: Payload = {"type": kinds[choice.mode]}
    if choice.mode is ToolMode.NAMED:
        out["name"] = choice.name
    if parallel is False:
        out["disable_parallel_tool_use"] = True
    return out


class AnthropicStreamDecoder(StreamDecoder):
    """Anthropic stream events -> internal events (``ping`` and block stops carry nothing)."""

    def __init__(self) -> None:
        self._calls: dict[int, int] = {}  # content block index -> tool call index
        self._usage = Usage()
        self._stop_reason = StopReason.END
        self._stop_sequence: str | None = None
        self._finished = False

    def event(self, payload: object) -> list[ChatEvent]:
        if not isinstance(payload, dict):
            raise BadGateway("backend sent an unexpected stream event")
        kind = payload.get("type")
        if kind == "content_block_delta":
            return self._delta(payload)
        if kind == "message_start":
            message = payload.get("message")
            message = message if isinstance(message, dict) else {}
            anthropic_usage(message.get("usage"), self._usage)
            message_id = message.get("id")
            return [
                MessageStart(
                    model=str(message.get("model") or ""),
                    id=message_id if isinstance(message_id, str) else None,
                    prompt_tokens=self._usage.prompt_tokens,
                )
            ]
        if kind == "content_block_start":
            return self._block_start(payload)
        if kind == "message_delta":
            delta = payload.get("delta")
            if isinstance(delta, dict):
                reason = delta.get("stop_reason")
                if isinstance(reason, str):
                    self._stop_reason = _STOP_REASONS_IN.get(reason, StopReason.END)
                sequence = delta.get("stop_sequence")
                self._stop_sequence = sequence if isinstance(sequence, str) else None
            anthropic_usage(payload.get("usage"), self._usage)
            return []
        if kind == "message_stop":
            if self._finished:
                return []
            self._finished = True
            usage = Usage(self._usage.prompt_tokens, self._usage.completion_tokens)
            return [Finish(self._stop_reason, usage, self._stop_sequence)]
        if kind == "error":
            error = payload.get("error")
            message = error.get("message") if isinstance(error, dict) else error
            raise BadGateway(f"backend reported an error: {message}")
        return []  # ping, content_block_stop, and event types added later

    def _block_start(self, payload: Payload) -> list[ChatEvent]:
        block = payload.get("content_block")
        if not isinstance(block, dict):
            raise BadGateway("backend sent an unexpected stream event")
        kind = block.get("type")
        if kind == "tool_use":
            call = len(self._calls)
            self._calls[_index(payload)] = call
            call_id = str(block.get("id") or "") or "toolu_" + secrets.token_hex(12)
            out: list[ChatEvent] = [ToolCallStart(call, call_id, str(block.get("name") or ""))]
            if block.get("input"):  # a server that sends the input whole in the start event
                out.append(ToolCallDelta(call, dumps(block["input"])))
            return out
        if kind == "text" and block.get("text"):
            return [TextDelta(str(block["text"]))]
        if kind == "thinking" and block.get("thinking"):
            return [ThinkingDelta(str(block["thinking"]))]
        return []

    def _delta(self, payload: Payload) -> list[ChatEvent]:
        delta = payload.get("delta")
        if not isinstance(delta, dict):
            raise BadGateway("backend sent an unexpected stream event")
        kind = delta.get("type")
        if kind == "text_delta":
            return [TextDelta(str(delta.get("text") or ""))]
        if kind == "input_json_delta":
            call = self._calls.get(_index(payload))
            if call is None:
                raise BadGateway("backend sent tool input for a block that is not a tool call")
            return [ToolCallDelta(call, str(delta.get("partial_json") or ""))]
        if kind == "thinking_delta":
            return [ThinkingDelta(str(delta.get("thinking") or ""))]
        if kind == "signature_delta":
            return [ThinkingDelta("", signature=str(delta.get("signature") or ""))]
        return []

    def finish(self) -> list[ChatEvent]:
        if not self._finished:
            raise BadGateway("backend ended the stream before message_stop")
        return []


def _index(payload: Payload) -> int:
    index = payload.get("index")
    if type(index) is not int:
        raise BadGateway("backend sent a stream event without a block index")
    return index


# --- token counts ------------------------------------------------------------------------------------


def estimate_tokens(request: ChatRequest) -> int:
    """A token count for ``request`` when the backend cannot count: every text the model would read (its
    messages, tool calls and results, tool names, descriptions and schemas) in characters, divided by
    ``ESTIMATE_CHARS_PER_TOKEN`` and rounded up, plus ``ESTIMATE_IMAGE_TOKENS`` per image. English prose
    runs close to four characters per token in the common tokenizers; code and other languages run denser,
    so this is a guide for a client's context bookkeeping, not a bill."""
    chars = 0
    images = 0
    for message in request.messages:
        for part in message.parts:
            if isinstance(part, Text | Thinking):
                chars += len(part.text)
            elif isinstance(part, ToolCall):
                chars += len(part.name) + len(part.arguments)
            elif isinstance(part, ToolResult):
                chars += sum(len(item.text) for item in part.content if isinstance(item, Text))
                images += sum(1 for item in part.content if isinstance(item, Image))
            else:
                images += 1
    for tool in request.tools:
        chars += len(tool.name) + len(tool.description or "") + len(dumps(dict(tool.parameters)))
    return math.ceil(chars / ESTIMATE_CHARS_PER_TOKEN) + images * ESTIMATE_IMAGE_TOKENS
