"""OpenAI's API (/v1/chat/completions, /v1/completions, /v1/embeddings): its profile, and its chat codecs.

Wire format: SSE streams of ``data: <chunk>`` ended by ``data: [DONE]``; token counts in a ``usage``
object (in a stream, only with ``stream_options.include_usage``); errors as ``{"error": {"message",
"type", "param", "code"}}``, which ``openai.APIError`` reads, also inside an SSE ``data:`` payload.

``ChatClient`` (OpenAI clients, any backend) reads: messages (text and ``image_url`` content parts, the
``developer`` role as system, tool calls and tool results), ``tools``, ``tool_choice``,
``parallel_tool_calls``, ``response_format``, ``reasoning_effort``, ``logprobs``/``top_logprobs``,
``user``, ``n``, ``stream`` with ``stream_options.include_usage``, and ``temperature``, ``top_p``,
``seed``, ``frequency_penalty``, ``presence_penalty``, ``max_completion_tokens``/``max_tokens``,
``stop``, and the extra body fields llama-server and vLLM clients send: ``top_k``, ``min_p``,
``repeat_penalty`` (or ``repetition_penalty``) and the backend options of ``EXTRA_OPTIONS``. Dropped:
``logit_bias``, ``service_tier``, ``store``, ``metadata`` and every other field. Refused with
``BadRequest``: content parts other than text and images. Answers carry ``choices[0].logprobs``.

``ChatBackend`` (OpenAI-compatible servers, any client) writes all of the above but the reasoning
settings and ``n``, and drops a request's thinking parts (OpenAI has no way to send them back). The token
limit goes in the kind's field (``max_completion_tokens`` for OpenAI itself), and the sampling options
OpenAI lacks only to kinds that take them (llama-server, vLLM: ``core.capability``). It reads
``reasoning_content`` (or ``reasoning``, as vLLM and llama-server send it) as thinking, and
``choices[0].logprobs.content``.

(Past 600 lines on purpose: the module is the whole dialect, both sides, and each side's decoder sits
next to the encoder of the same shapes.)
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from gatewayd.errors import BadGateway, BadRequest, RequestError, UpstreamStatus
from gatewayd.gateway.core.capability import Capabilities
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
    TokenLogprob,
    Tool,
    ToolCall,
    ToolCallDelta,
    ToolCallStart,
    ToolChoice,
    ToolMode,
    ToolResult,
)
from gatewayd.gateway.core.codec import BackendCodec, ClientCodec, StreamDecoder, StreamEncoder
from gatewayd.gateway.core.framing import DONE, SSE_DONE, Framing, encode_sse_comment
from gatewayd.gateway.core.jsontext import dumps
from gatewayd.gateway.core.profile import DialectProfile, Payload, parsed_error_body, upstream_message
from gatewayd.gateway.core.usage import Usage, token_count
from gatewayd.gateway.core.wire import (
    decode_logprobs,
    encode_logprobs,
    expect_dict,
    new_id,
    now_seconds,
    options_stop,
    reported_error,
)


class OpenAIProfile(DialectProfile):
    name = "openai"
    framing = Framing.SSE
    done_data: str | None = DONE
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


# --- the client side: OpenAI clients ----------------------------------------------------------------------

_ROLES = {"system": Role.SYSTEM, "developer": Role.SYSTEM, "user": Role.USER, "assistant": Role.ASSISTANT}
_FINISH_REASONS = {
    StopReason.END: "stop",
    StopReason.LENGTH: "length",
    StopReason.TOOL_CALLS: "tool_calls",
    StopReason.STOP_SEQUENCE: "stop",
    StopReason.CONTENT_FILTER: "content_filter",
}
_STOP_REASONS = {
    "length": StopReason.LENGTH,
    "tool_calls": StopReason.TOOL_CALLS,
    "function_call": StopReason.TOOL_CALLS,
    "content_filter": StopReason.CONTENT_FILTER,
}
#: OpenAI sampling fields with the same name in ``core.chat.Sampling``
_SAMPLING_FIELDS = ("temperature", "top_p", "seed", "frequency_penalty", "presence_penalty")
#: sampling fields OpenAI lacks that llama-server and vLLM take in the same body (clients send them as
#: extra body fields), with the same name in ``core.chat.Sampling``
_EXTRA_FIELDS = ("top_k", "min_p")
#: further backend sampling options read from an OpenAI body into ``Sampling.extra`` (by these names,
#: which llama-server and Ollama share)
EXTRA_OPTIONS = (
    "typical_p",
    "repeat_last_n",
    "mirostat",
    "mirostat_tau",
    "mirostat_eta",
    "tfs_z",
    "dynatemp_range",
    "dynatemp_exponent",
    "xtc_probability",
    "xtc_threshold",
    "top_n_sigma",
)

#: shared defaults (the values are frozen)
_AUTO = ToolChoice()
_TEXT = OutputFormat()
_NO_REASONING = Reasoning()


class ChatClient(ClientCodec):
    """/v1/chat/completions as an OpenAI client speaks it."""

    def __init__(self) -> None:
        self._include_usage = False

    def decode_request(self, body: Payload) -> ChatRequest:
        stream = body.get("stream") is True
        stream_options = body.get("stream_options")
        self._include_usage = (
            stream and isinstance(stream_options, dict) and stream_options.get("include_usage") is True
        )
        sampling = decode_sampling(body)
        max_tokens = body.get("max_completion_tokens", body.get("max_tokens"))
        if max_tokens is not None:
            sampling["max_tokens"] = max_tokens
        stop = options_stop(body.get("stop"), "stop")
        if stop:
            sampling["stop"] = tuple(stop)
        top_logprobs = body.get("top_logprobs")
        effort = body.get("reasoning_effort")
        parallel = body.get("parallel_tool_calls")
        user = body.get("user")
        return ChatRequest(
            model=str(body.get("model", "")),
            messages=_decode_messages(body.get("messages")),
            stream=stream,
            tools=_decode_tools(body.get("tools")),
            tool_choice=_decode_tool_choice(body.get("tool_choice")),
            parallel_tool_calls=parallel if isinstance(parallel, bool) else None,
            sampling=Sampling(**sampling),
            output=_decode_output(body.get("response_format")),
            reasoning=Reasoning(effort=effort) if isinstance(effort, str) else _NO_REASONING,
            top_logprobs=(top_logprobs if type(top_logprobs) is int else 0) if body.get("logprobs") else None,
            user=user if isinstance(user, str) else None,
            choices=_choices(body.get("n")),
        )

    def encode_response(self, response: ChatResponse) -> Payload:
        text = "".join(part.text for part in response.parts if isinstance(part, Text))
        thinking = "".join(part.text for part in response.parts if isinstance(part, Thinking))
        calls = [part for part in response.parts if isinstance(part, ToolCall)]
        message: Payload = {"role": "assistant", "content": text}
        if thinking:
            message["reasoning_content"] = thinking
        finish_reason = _FINISH_REASONS[response.stop_reason]
        if calls:
            message["tool_calls"] = [_encode_tool_call(call) for call in calls]
            message["content"] = text or None
            finish_reason = "tool_calls"
        return {
            "id": response.id or new_id("chatcmpl-"),
            "object": "chat.completion",
            "created": response.created or now_seconds(),
            "model": response.model,
            "choices": [
                {
                    "index": 0,
                    "message": message,
                    "logprobs": _choice_logprobs(response.logprobs),
                    "finish_reason": finish_reason,
                }
            ],
            "usage": _encode_usage(response.usage),
        }

    def stream_encoder(self) -> StreamEncoder:
        return _ChunkEncoder(include_usage=self._include_usage)


def decode_sampling(body: Payload) -> dict[str, Any]:
    """The sampling fields of an OpenAI body (chat or completion) as ``Sampling`` keyword arguments:
    OpenAI's own, the ``top_k``/``min_p``/``repeat_penalty`` (or vLLM's ``repetition_penalty``) that
    llama-server and vLLM clients add, and other known backend options (``EXTRA_OPTIONS``) as extras.
    The token limit and ``stop`` are left to the caller."""
    sampling: dict[str, Any] = {name: body[name] for name in _SAMPLING_FIELDS if body.get(name) is not None}
    for name in _EXTRA_FIELDS:
        if body.get(name) is not None:
            sampling[name] = body[name]
    repeat_penalty = body.get("repeat_penalty", body.get("repetition_penalty"))
    if repeat_penalty is not None:
        sampling["repeat_penalty"] = repeat_penalty
    extra = {name: body[name] for name in EXTRA_OPTIONS if body.get(name) is not None}
    if extra:
        sampling["extra"] = extra
    return sampling


def encode_extra_sampling(sampling: Sampling, capabilities: Capabilities, upstream: Payload) -> None:
    """Add to ``upstream`` the sampling options beyond OpenAI's, for a backend that takes them as body
    fields (llama-server, vLLM); nothing for one that refuses unknown fields (OpenAI). Fields already
    set are kept."""
    if not capabilities.extra_sampling:
        return
    for name, value in sampling.extra.items():
        upstream.setdefault(name, value)
    for name in _EXTRA_FIELDS:
        value = getattr(sampling, name)
        if value is not None:
            upstream[name] = value
    if sampling.repeat_penalty is not None:
        upstream[capabilities.repeat_penalty_field] = sampling.repeat_penalty


def _choices(n: object) -> int:
    if n is None:
        return 1
    if type(n) is not int or n < 1:
        raise BadRequest("'n' must be a positive integer", param="n")
    return n


class _ChunkEncoder(StreamEncoder):
    """Internal events -> ``chat.completion.chunk`` payloads. The events of one upstream payload become one
    chunk (its delta holds their text, reasoning and tool-call pieces); the first chunk carries
    ``delta.role``. ``Finish`` yields a chunk with the ``finish_reason`` and, when the client asked for
    ``stream_options.include_usage``, a usage chunk with empty ``choices``."""

    __slots__ = ("_created", "_id", "_include_usage", "_model", "_role_sent", "_tool_calls")

    def __init__(self, *, include_usage: bool) -> None:
        self._include_usage = include_usage
        self._id = ""
        self._created = 0
        self._model = ""
        self._role_sent = False
        self._tool_calls = 0

    def event(self, event: ChatEvent) -> list[Payload]:
        return self.events([event])

    def events(self, events: list[ChatEvent]) -> list[Payload]:
        first = events[0] if len(events) == 1 else None
        if isinstance(first, TextDelta) and self._role_sent:  # most of a stream
            logprobs = _choice_logprobs(first.logprobs) if first.logprobs else None
            choice = {
                "index": 0,
                "delta": {"content": first.text},
                "logprobs": logprobs,
                "finish_reason": None,
            }
            return [self._chunk(choice)]
        out: list[Payload] = []
        text: list[str] = []
        token_logprobs: list[TokenLogprob] = []
        thinking: list[str] = []
        calls: dict[int, Payload] = {}
        finish: Finish | None = None
        for event in events:
            if isinstance(event, TextDelta):
                text.append(event.text)
                token_logprobs.extend(event.logprobs)
            elif isinstance(event, ThinkingDelta):
                thinking.append(event.text)
            elif isinstance(event, ToolCallStart):
                self._tool_calls += 1
                calls[event.index] = {
                    "index": event.index,
                    "id": event.id,
                    "type": "function",
                    "function": {"name": event.name, "arguments": ""},
                }
            elif isinstance(event, ToolCallDelta):
                call = calls.setdefault(event.index, {"index": event.index, "function": {"arguments": ""}})
                call["function"]["arguments"] += event.arguments
            elif isinstance(event, MessageStart):
                self._id = event.id or new_id("chatcmpl-")
                self._created = event.created or now_seconds()
                self._model = event.model
            else:
                finish = event
        if text or thinking or calls or (finish is not None and not self._role_sent):
            delta: Payload = {}
            if not self._role_sent:
                delta["role"] = "assistant"
            content = "".join(text)
            if content or not self._role_sent:
                delta["content"] = content
            if thinking:
                delta["reasoning_content"] = "".join(thinking)
            if calls:
                delta["tool_calls"] = list(calls.values())
            self._role_sent = True
            choice_logprobs = _choice_logprobs(tuple(token_logprobs)) if token_logprobs else None
            out.append(
                self._chunk({"index": 0, "delta": delta, "logprobs": choice_logprobs, "finish_reason": None})
            )
        if finish is not None:
            reason = "tool_calls" if self._tool_calls else _FINISH_REASONS[finish.stop_reason]
            out.append(self._chunk({"index": 0, "delta": {}, "logprobs": None, "finish_reason": reason}))
            if self._include_usage:
                usage_chunk = self._chunk(None)
                usage_chunk["usage"] = _encode_usage(finish.usage)
                out.append(usage_chunk)
        return out

    def _chunk(self, choice: Payload | None) -> Payload:
        if not self._id:  # a decoder that emitted no MessageStart
            self._id, self._created = new_id("chatcmpl-"), now_seconds()
        return {
            "id": self._id,
            "object": "chat.completion.chunk",
            "created": self._created,
            "model": self._model,
            "choices": [choice] if choice is not None else [],
        }


def _choice_logprobs(logprobs: tuple[TokenLogprob, ...] | None) -> Payload | None:
    """A choice's ``logprobs`` object (``content``: one entry per token), None when there are none."""
    if logprobs is None:
        return None
    return {"content": encode_logprobs(logprobs), "refusal": None}


def _content_logprobs(choice: Payload) -> tuple[TokenLogprob, ...] | None:
    """The token logprobs of an upstream choice (``logprobs.content``), None when it has none."""
    logprobs = choice.get("logprobs")
    return decode_logprobs(logprobs.get("content")) if isinstance(logprobs, dict) else None


def _decode_messages(messages: object) -> tuple[Message, ...]:
    if not isinstance(messages, list):
        raise BadRequest("'messages' must be a list", param="messages")
    return tuple(_decode_message(message) for message in messages)


def _decode_message(message: object) -> Message:
    if not isinstance(message, dict):
        raise BadRequest("each message must be an object", param="messages")
    role = message.get("role")
    name = message.get("name") if isinstance(message.get("name"), str) else None
    content = _decode_content(message.get("content"))
    if role == "tool":
        call_id = message.get("tool_call_id")
        result = ToolResult(call_id if isinstance(call_id, str) else "", content, name=name)
        return Message(Role.TOOL, (result,))
    known = _ROLES.get(role) if isinstance(role, str) else None
    if known is None:
        raise BadRequest(f"unknown message role {role!r}", param="messages")
    parts: list[Part] = list(content)
    tool_calls = message.get("tool_calls")
    if tool_calls:
        if not isinstance(tool_calls, list):
            raise BadRequest("'tool_calls' must be a list", param="messages")
        parts.extend(_decode_tool_call(call) for call in tool_calls)
    return Message(known, tuple(parts), name=name)


def _decode_content(content: object) -> tuple[Text | Image, ...]:
    """A message's content, from a string or a list of content parts."""
    if content is None or content == "":
        return ()
    if isinstance(content, str):
        return (Text(content),)
    if not isinstance(content, list):
        raise BadRequest("a message's 'content' must be a string or a list of parts", param="messages")
    parts: list[Text | Image] = []
    for part in content:
        kind = part.get("type") if isinstance(part, dict) else None
        if kind == "text" and isinstance(part.get("text"), str):
            parts.append(Text(part["text"]))
        elif kind == "image_url":
            parts.append(_decode_image(part.get("image_url")))
        else:
            raise BadRequest(f"content part type {kind!r} is not supported", param="messages")
    return tuple(parts)


def _decode_image(image_url: object) -> Image:
    url = image_url.get("url") if isinstance(image_url, dict) else image_url
    if not isinstance(url, str) or not url:
        raise BadRequest("an image_url part needs a 'url'", param="messages")
    if url.startswith("data:"):
        header, _, data = url.partition(",")
        if header.endswith(";base64") and data:
            return Image(media_type=header[5:-7] or None, data=data)
    return Image(url=url)


def _decode_tool_call(call: object) -> ToolCall:
    if not isinstance(call, dict) or not isinstance(call.get("function"), dict):
        raise BadRequest("each tool call must have a 'function' object", param="messages")
    function = call["function"]
    arguments = function.get("arguments")
    if arguments is None:
        arguments = ""
    elif isinstance(arguments, dict):
        arguments = dumps(arguments)
    elif not isinstance(arguments, str):
        raise BadRequest("tool call arguments must be a JSON object", param="messages")
    call_id = call.get("id")
    return ToolCall(call_id if isinstance(call_id, str) else "", str(function.get("name") or ""), arguments)


def _decode_tools(tools: object) -> tuple[Tool, ...]:
    if not tools:
        return ()
    if not isinstance(tools, list):
        raise BadRequest("'tools' must be a list", param="tools")
    decoded = []
    for tool in tools:
        function = tool.get("function") if isinstance(tool, dict) else None
        if not isinstance(function, dict) or not isinstance(function.get("name"), str):
            raise BadRequest("each tool must have a 'function' object with a 'name'", param="tools")
        description = function.get("description")
        parameters = function.get("parameters")
        decoded.append(
            Tool(
                function["name"],
                description if isinstance(description, str) else None,
                parameters if isinstance(parameters, dict) else {},
            )
        )
    return tuple(decoded)


def _decode_tool_choice(choice: object) -> ToolChoice:
    if choice == "none":
        return ToolChoice(ToolMode.NONE)
    if choice == "required":
        return ToolChoice(ToolMode.REQUIRED)
    if isinstance(choice, dict):
        function = choice.get("function")
        name = function.get("name") if isinstance(function, dict) else None
        if isinstance(name, str):
            return ToolChoice(ToolMode.NAMED, name)
    return _AUTO


def _decode_output(response_format: object) -> OutputFormat:
    kind = response_format.get("type") if isinstance(response_format, dict) else None
    if kind == "json_object":
        return OutputFormat(OutputKind.JSON)
    if kind == "json_schema":
        assert isinstance(response_format, dict)
        spec = response_format.get("json_schema")
        spec = spec if isinstance(spec, dict) else {}
        schema, name, strict = spec.get("schema"), spec.get("name"), spec.get("strict")
        return OutputFormat(
            OutputKind.JSON_SCHEMA,
            schema if isinstance(schema, dict) else None,
            name if isinstance(name, str) else None,
            strict if isinstance(strict, bool) else None,
        )
    return _TEXT


def _encode_tool_call(call: ToolCall, index: int | None = None) -> Payload:
    out: Payload = {} if index is None else {"index": index}
    out["id"] = call.id or new_id("call_")
    out["type"] = "function"
    out["function"] = {"name": call.name, "arguments": call.arguments}
    return out


def _encode_usage(usage: Usage) -> Payload:
    prompt = usage.prompt_tokens or 0
    completion = usage.completion_tokens or 0
    return {"prompt_tokens": prompt, "completion_tokens": completion, "total_tokens": prompt + completion}


# --- the backend side: OpenAI-compatible servers --------------------------------------------------------


class ChatBackend(BackendCodec):
    """/v1/chat/completions on an OpenAI-compatible server. A streamed request asks for
    ``stream_options.include_usage`` (the token counts then come in a last chunk)."""

    path = "/v1/chat/completions"

    def encode_request(self, request: ChatRequest, *, model: str) -> Payload:
        upstream: Payload = {"model": model, "messages": _encode_messages(request.messages)}
        upstream["stream"] = request.stream
        if request.stream:
            upstream["stream_options"] = {"include_usage": True}
        sampling = request.sampling
        for name in _SAMPLING_FIELDS:
            value = getattr(sampling, name)
            if value is not None:
                upstream[name] = value
        if sampling.max_tokens is not None:
            upstream[self.capabilities.max_tokens_field] = sampling.max_tokens
        if sampling.stop:
            upstream["stop"] = list(sampling.stop)
        encode_extra_sampling(sampling, self.capabilities, upstream)
        response_format = _encode_output(request.output)
        if response_format is not None:
            upstream["response_format"] = response_format
        if request.tools:
            upstream["tools"] = [_encode_tool(tool) for tool in request.tools]
            choice = _encode_tool_choice(request.tool_choice)
            if choice is not None:
                upstream["tool_choice"] = choice
            if request.parallel_tool_calls is not None:
                upstream["parallel_tool_calls"] = request.parallel_tool_calls
        if request.reasoning.effort is not None:
            upstream["reasoning_effort"] = request.reasoning.effort
        if request.top_logprobs is not None:
            upstream["logprobs"] = True
            if request.top_logprobs:
                upstream["top_logprobs"] = request.top_logprobs
        if request.user is not None:
            upstream["user"] = request.user
        return upstream

    def decode_response(self, payload: object) -> ChatResponse:
        body = expect_dict(payload, "response")
        choice = _first_choice(body)
        message = expect_dict(choice.get("message"), "response")
        parts: list[Text | Thinking | ToolCall] = []
        thinking = _reasoning(message)
        if thinking:
            parts.append(Thinking(thinking))
        content = message.get("content")
        if isinstance(content, str) and content:
            parts.append(Text(content))
        tool_calls = message.get("tool_calls")
        if tool_calls:
            parts.extend(_decode_upstream_call(call) for call in _tool_call_list(tool_calls))
        created = body.get("created")
        response_id = body.get("id")
        return ChatResponse(
            model=str(body.get("model") or ""),
            parts=tuple(parts),
            stop_reason=_stop_reason(choice.get("finish_reason")),
            usage=openai_usage(body),
            id=response_id if isinstance(response_id, str) else None,
            created=int(created) if isinstance(created, int | float) else None,
            logprobs=_content_logprobs(choice),
        )

    def stream_decoder(self) -> StreamDecoder:
        return _ChunkDecoder()


class _ChunkDecoder(StreamDecoder):
    """``chat.completion.chunk`` payloads -> internal events. ``Finish`` comes from ``finish`` (at
    ``[DONE]``): with ``include_usage`` the token counts arrive in a chunk after the one with the
    ``finish_reason``. An upstream that ends without a ``finish_reason`` was cut: ``BadGateway``."""

    __slots__ = ("_calls", "_finish_reason", "_started", "_usage")

    def __init__(self) -> None:
        self._started = False
        self._finish_reason: object = None
        self._usage = Usage()
        #: upstream tool-call index -> the internal index of that call (numbered in order of arrival)
        self._calls: dict[object, int] = {}

    def event(self, payload: object) -> list[ChatEvent]:
        chunk = expect_dict(payload, "stream event")
        if "error" in chunk:
            reported_error(chunk)
        if isinstance(chunk.get("usage"), dict):
            self._usage = openai_usage(chunk)
        choices = chunk.get("choices")
        if not isinstance(choices, list):
            raise BadGateway("backend returned an unexpected stream event")
        events: list[ChatEvent] = []
        if not self._started:
            self._started = True
            created, chunk_id = chunk.get("created"), chunk.get("id")
            events.append(
                MessageStart(
                    model=str(chunk.get("model") or ""),
                    id=chunk_id if isinstance(chunk_id, str) else None,
                    created=int(created) if isinstance(created, int | float) else None,
                )
            )
        if not choices:
            return events
        choice = expect_dict(choices[0], "stream event")
        finish_reason = choice.get("finish_reason")
        if finish_reason:
            self._finish_reason = finish_reason
        delta = choice.get("delta")
        if not isinstance(delta, dict):
            return events
        thinking = _reasoning(delta)
        if thinking:
            events.append(ThinkingDelta(thinking))
        text = delta.get("content")
        if text:
            logprobs = _content_logprobs(choice) if choice.get("logprobs") else None
            events.append(TextDelta(text, logprobs) if logprobs else TextDelta(text))
        if delta.get("tool_calls"):
            self._tool_call_events(delta["tool_calls"], events)
        return events

    def finish(self) -> list[ChatEvent]:
        if self._finish_reason is None:
            raise BadGateway("backend returned an unexpected end of stream")
        return [Finish(_stop_reason(self._finish_reason), self._usage)]

    def _tool_call_events(self, fragments: object, events: list[ChatEvent]) -> None:
        indexes = self._calls
        for fragment in _tool_call_list(fragments):
            key = fragment.get("index")
            if type(key) is not int:
                key = len(indexes)
            function = fragment.get("function")
            function = function if isinstance(function, dict) else {}
            index = indexes.get(key)
            if index is None:
                index = indexes[key] = len(indexes)
                call_id = fragment.get("id")
                events.append(
                    ToolCallStart(
                        index,
                        call_id if isinstance(call_id, str) and call_id else new_id("call_"),
                        str(function.get("name") or ""),
                    )
                )
            arguments = function.get("arguments")
            if isinstance(arguments, str) and arguments:
                events.append(ToolCallDelta(index, arguments))


def _encode_messages(messages: tuple[Message, ...]) -> list[Payload]:
    out: list[Payload] = []
    for message in messages:
        if message.role is Role.TOOL:
            for part in message.parts:
                if isinstance(part, ToolResult):
                    result: Payload = {"role": "tool", "content": _encode_content(part.content)}
                    if part.call_id:
                        result["tool_call_id"] = part.call_id
                    out.append(result)
            continue
        content = [part for part in message.parts if isinstance(part, Text | Image)]
        encoded: Payload = {"role": message.role.value, "content": _encode_content(content)}
        calls = [part for part in message.parts if isinstance(part, ToolCall)]
        if calls:
            encoded["tool_calls"] = [_encode_tool_call(call) for call in calls]
        out.append(encoded)
    return out


def _encode_content(parts: tuple[Text | Image, ...] | list[Text | Image]) -> str | list[Payload]:
    """A string when there are only text parts, else OpenAI's list of content parts."""
    if not any(isinstance(part, Image) for part in parts):
        return "".join(part.text for part in parts if isinstance(part, Text))
    encoded: list[Payload] = []
    for part in parts:
        if isinstance(part, Text):
            encoded.append({"type": "text", "text": part.text})
        else:
            url = part.url or f"data:{part.media_type or 'image/png'};base64,{part.data}"
            encoded.append({"type": "image_url", "image_url": {"url": url}})
    return encoded


def _encode_tool(tool: Tool) -> Payload:
    function: Payload = {"name": tool.name}
    if tool.description is not None:
        function["description"] = tool.description
    if tool.parameters:
        function["parameters"] = dict(tool.parameters)
    return {"type": "function", "function": function}


def _encode_tool_choice(choice: ToolChoice) -> object:
    if choice.mode is ToolMode.NAMED:
        return {"type": "function", "function": {"name": choice.name}}
    if choice.mode is ToolMode.AUTO:
        return None  # the default
    return choice.mode.value


def _encode_output(output: OutputFormat) -> Payload | None:
    if output.kind is OutputKind.JSON or (output.kind is OutputKind.JSON_SCHEMA and output.schema is None):
        return {"type": "json_object"}
    if output.kind is OutputKind.JSON_SCHEMA:
        spec: Payload = {"name": output.name or "response", "schema": output.schema}
        if output.strict is not None:
            spec["strict"] = output.strict
        return {"type": "json_schema", "json_schema": spec}
    return None


def _stop_reason(finish_reason: object) -> StopReason:
    return (
        _STOP_REASONS.get(finish_reason, StopReason.END) if isinstance(finish_reason, str) else StopReason.END
    )


def _first_choice(body: Payload) -> Payload:
    choices = body.get("choices")
    if not isinstance(choices, list) or not choices:
        raise BadGateway("backend returned an unexpected response")
    return expect_dict(choices[0], "response")


def _reasoning(message: Payload) -> str | None:
    """The reasoning text that servers such as vLLM and llama-server send next to ``content``."""
    found = message.get("reasoning_content") or message.get("reasoning")
    return found if isinstance(found, str) else None


def _tool_call_list(value: object) -> list[Payload]:
    if not isinstance(value, list) or not all(isinstance(call, dict) for call in value):
        raise BadGateway("backend returned an unexpected tool call")
    return value


def _decode_upstream_call(call: Payload) -> ToolCall:
    function = call.get("function")
    if not isinstance(function, dict):
        raise BadGateway("backend returned an unexpected tool call")
    call_id = call.get("id")
    arguments = function.get("arguments")
    return ToolCall(
        call_id if isinstance(call_id, str) and call_id else new_id("call_"),
        str(function.get("name") or ""),
        arguments if isinstance(arguments, str) else dumps(arguments or {}),
    )
