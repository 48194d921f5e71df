"""Ollama's API (/api/chat, /api/generate, /api/embed, /api/embeddings): its profile, and its chat codecs.

Wire format: NDJSON streams, one object per line, the last with ``"done": true`` and the token counts
(``prompt_eval_count``, ``eval_count``); errors as ``{"error": "<message>"}``, which
``ollama.ResponseError`` reads, also as an NDJSON line. A full queue is 503 here (429 in OpenAI's API).

``ChatClient`` (Ollama clients, any backend) reads: messages (``images``, ``thinking``, ``tool_calls``, and
tool results, matched to the call they answer: by ``tool_call_id``, else the oldest unanswered call of
their ``tool_name``, else the oldest one; calls without ids get ``call_<message>_<n>``), ``tools``,
``format``, ``think``, ``stream``, and the options ``temperature``, ``top_p``, ``top_k``, ``min_p``,
``seed``, ``frequency_penalty``, ``presence_penalty``, ``repeat_penalty``, ``stop`` and a positive
``num_predict`` (other options are kept as backend-specific sampling extras), ``logprobs`` and
``top_logprobs``. Dropped: ``keep_alive``, ``template``, ``context``, ``truncate``. Answers carry no
durations but ``total_duration: 0``, token counts only when the backend reported them, and ``logprobs``
when asked for; tool calls come whole (a streamed call's pieces are collected and sent in one line
before the last).

``ChatBackend`` (Ollama servers, any client) writes all of the above but tool ids (Ollama has none; the
tool results name the tool instead), ``tool_choice`` (tools are left out for ``"none"``),
``parallel_tool_calls``, reasoning effort and ``user``; it reads the answer's ``logprobs``. Refused with
``BadRequest``: images by URL (the core does no IO: Ollama takes base64 only), tool-call arguments that
are not a JSON object; with ``Unsupported``: more than one choice (OpenAI's ``n``: Ollama answers one).

(Past 600 lines on purpose: the module is the whole dialect, both sides, and each side's decoder sits
next to the encoder of the same shapes.)
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from gatewayd.errors import BadGateway, BadRequest, Overloaded, RequestError, Unsupported, UpstreamStatus
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
    ToolMode,
    ToolResult,
)
from gatewayd.gateway.core.codec import BackendCodec, ClientCodec, StreamDecoder, StreamEncoder
from gatewayd.gateway.core.framing import Framing, encode_ndjson
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
    parse_arguments,
    reported_error,
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

#: why a request for several choices is refused (Ollama has no ``n``; one answer could not stand for them)
ONE_CHOICE = "answers one choice per request: ask for 'n': 1, or send the request n times"


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


# --- the client side: Ollama clients ----------------------------------------------------------------------

_ROLES = {"system": Role.SYSTEM, "user": Role.USER, "assistant": Role.ASSISTANT, "tool": Role.TOOL}
#: Ollama options with the same name in ``core.chat.Sampling``
_SAMPLING_OPTIONS = (
    "temperature",
    "top_p",
    "top_k",
    "min_p",
    "seed",
    "frequency_penalty",
    "presence_penalty",
    "repeat_penalty",
)
#: how a base64 image starts -> its MIME type (Ollama sends bare base64)
_IMAGE_MAGIC = (
    ("/9j/", "image/jpeg"),
    ("iVBORw0KGgo", "image/png"),
    ("R0lGOD", "image/gif"),
    ("UklGR", "image/webp"),
)

#: shared defaults (the values are frozen)
_TEXT = OutputFormat()
_NO_REASONING = Reasoning()
_NO_SAMPLING = Sampling()


class ChatClient(ClientCodec):
    """/api/chat as an Ollama client speaks it."""

    def decode_request(self, body: Payload) -> ChatRequest:
        return ChatRequest(
            model=str(body.get("model", "")),
            messages=_decode_messages(body.get("messages")),
            stream=OLLAMA.wants_stream(body),
            tools=_decode_tools(body.get("tools")),
            sampling=decode_options(body.get("options")),
            output=_decode_format(body.get("format")),
            reasoning=_decode_think(body.get("think")),
            top_logprobs=_decode_logprobs_wanted(body),
        )

    def encode_response(self, response: ChatResponse) -> Payload:
        message: Payload = {
            "role": "assistant",
            "content": "".join(part.text for part in response.parts if isinstance(part, Text)),
        }
        thinking = "".join(part.text for part in response.parts if isinstance(part, Thinking))
        if thinking:
            message["thinking"] = thinking
        calls = [part for part in response.parts if isinstance(part, ToolCall)]
        if calls:
            message["tool_calls"] = [_encode_answer_call(call.name, call.arguments) for call in calls]
        created_at = rfc3339(response.created if response.created is not None else now_seconds())
        out: Payload = {"model": response.model, "created_at": created_at, "message": message}
        if response.logprobs is not None:
            out["logprobs"] = encode_logprobs(response.logprobs)
        return _final(out, response.stop_reason, response.usage)

    def stream_encoder(self) -> StreamEncoder:
        return _LineEncoder(generate=False)


class GenerateClient(ClientCodec):
    """/api/generate as an Ollama client speaks it, for backends that only chat: ``system`` and
    ``prompt`` (with its ``images``) become a system and a user message. (A ``raw`` prompt is sent as
    that user message too: such backends apply their own template. OpenAI-compatible backends, which
    have raw completions, get /api/generate through ``completions.OllamaGenerateOverOpenAI`` instead.)"""

    def decode_request(self, body: Payload) -> ChatRequest:
        prompt = body.get("prompt") or ""
        if not isinstance(prompt, str):
            raise BadRequest("'prompt' must be a string", param="prompt")
        system = body.get("system")
        messages = [Message(Role.SYSTEM, (Text(system),))] if isinstance(system, str) and system else []
        user = {"role": "user", "content": prompt, "images": body.get("images")}
        messages.extend(_decode_messages([user]))
        return ChatRequest(
            model=str(body.get("model", "")),
            messages=tuple(messages),
            stream=OLLAMA.wants_stream(body),
            sampling=decode_options(body.get("options")),
            output=_decode_format(body.get("format")),
            reasoning=_decode_think(body.get("think")),
            top_logprobs=_decode_logprobs_wanted(body),
        )

    def encode_response(self, response: ChatResponse) -> Payload:
        created_at = rfc3339(response.created if response.created is not None else now_seconds())
        text = "".join(part.text for part in response.parts if isinstance(part, Text))
        out: Payload = {"model": response.model, "created_at": created_at, "response": text}
        thinking = "".join(part.text for part in response.parts if isinstance(part, Thinking))
        if thinking:
            out["thinking"] = thinking
        if response.logprobs is not None:
            out["logprobs"] = encode_logprobs(response.logprobs)
        return _final(out, response.stop_reason, response.usage)

    def stream_encoder(self) -> StreamEncoder:
        return _LineEncoder(generate=True)


class _LineEncoder(StreamEncoder):
    """Internal events -> Ollama chat lines (or generate lines: ``response`` for ``message``, no tool
    calls). The text and thinking of one upstream payload go out in one line as they arrive; tool calls
    are collected and go out whole, in one line, at ``Finish`` (Ollama sends each call complete), before
    the ``done`` line with the counts."""

    __slots__ = ("_created_at", "_generate", "_model", "_tools")

    def __init__(self, *, generate: bool) -> None:
        self._generate = generate
        self._model = ""
        self._created_at = rfc3339(now_seconds())
        #: call index -> its name and the pieces of its arguments
        self._tools: dict[int, tuple[str, list[str]]] = {}

    def event(self, event: ChatEvent) -> list[Payload]:
        return self.events([event])

    def events(self, events: list[ChatEvent]) -> list[Payload]:
        first = events[0] if len(events) == 1 else None
        if isinstance(first, TextDelta):  # most of a stream
            line = self._line(first.text, "")
            if first.logprobs:
                line["logprobs"] = encode_logprobs(first.logprobs)
            return [line]
        text: list[str] = []
        logprobs: list[TokenLogprob] = []
        thinking: list[str] = []
        finish: Finish | None = None
        for event in events:
            if isinstance(event, TextDelta):
                text.append(event.text)
                logprobs.extend(event.logprobs)
            elif isinstance(event, ThinkingDelta):
                thinking.append(event.text)
            elif isinstance(event, ToolCallStart):
                self._tools[event.index] = (event.name, [])
            elif isinstance(event, ToolCallDelta):
                self._tools.setdefault(event.index, ("", []))[1].append(event.arguments)
            elif isinstance(event, MessageStart):
                self._model = event.model
                if event.created is not None:
                    self._created_at = rfc3339(event.created)
            else:
                finish = event
        out: list[Payload] = []
        if text or thinking:
            line = self._line("".join(text), "".join(thinking))
            if logprobs:
                line["logprobs"] = encode_logprobs(tuple(logprobs))
            out.append(line)
        if finish is not None:
            if self._tools and not self._generate:
                line = self._line("", "")
                line["message"]["tool_calls"] = [
                    _encode_answer_call(name, "".join(pieces))
                    for _, (name, pieces) in sorted(self._tools.items())
                ]
                out.append(line)
            out.append(_final(self._line("", ""), finish.stop_reason, finish.usage))
        return out

    def _line(self, text: str, thinking: str) -> Payload:
        if self._generate:
            line: Payload = {"model": self._model, "created_at": self._created_at, "response": text}
            if thinking:
                line["thinking"] = thinking
            line["done"] = False
            return line
        message: Payload = {"role": "assistant", "content": text}
        if thinking:
            message["thinking"] = thinking
        return {"model": self._model, "created_at": self._created_at, "message": message, "done": False}


def _decode_messages(messages: object) -> tuple[Message, ...]:
    if not isinstance(messages, list):
        raise BadRequest("'messages' must be a list", param="messages")
    decoded: list[Message] = []
    unanswered: list[tuple[str, str]] = []  # (id, function name) of the latest assistant's tool calls
    for index, message in enumerate(messages):
        if not isinstance(message, dict):
            raise BadRequest("each message must be an object", param="messages")
        content = message.get("content") or ""
        if not isinstance(content, str):
            raise BadRequest("a message's 'content' must be a string", param="messages")
        parts: list[Part] = []
        thinking = message.get("thinking")
        if isinstance(thinking, str) and thinking:
            parts.append(Thinking(thinking))
        if content:
            parts.append(Text(content))
        images = message.get("images")
        if images:
            if not isinstance(images, list) or not all(isinstance(image, str) for image in images):
                raise BadRequest("'images' must be a list of base64 strings", param="images")
            parts.extend(Image(media_type=_media_type(image), data=image) for image in images)
        tool_calls = message.get("tool_calls")
        if tool_calls:
            if not isinstance(tool_calls, list):
                raise BadRequest("'tool_calls' must be a list", param="messages")
            calls = [_decode_tool_call(call, f"call_{index}_{i}") for i, call in enumerate(tool_calls)]
            parts.extend(calls)
            unanswered = [(call.id, call.name) for call in calls]
        role = _ROLES.get(message.get("role"))  # type: ignore[arg-type]
        if role is None:
            raise BadRequest(f"unknown message role {message.get('role')!r}", param="messages")
        if role is Role.TOOL:
            name = message.get("tool_name") or message.get("name")
            call_id = message.get("tool_call_id") or _answer(unanswered, name) or ""
            content_parts = tuple(part for part in parts if isinstance(part, Text | Image))
            result = ToolResult(str(call_id), content_parts, name=name if isinstance(name, str) else None)
            decoded.append(Message(Role.TOOL, (result,)))
        else:
            decoded.append(Message(role, tuple(parts)))
    return tuple(decoded)


def _answer(unanswered: list[tuple[str, str]], name: object) -> str | None:
    """The id of the call a tool result without ``tool_call_id`` answers: the oldest unanswered one of its
    name, else the oldest one."""
    for i, (call_id, call_name) in enumerate(unanswered):
        if call_name == name:
            del unanswered[i]
            return call_id
    return unanswered.pop(0)[0] if unanswered else None


def _media_type(image: str) -> str:
    return next((mime for magic, mime in _IMAGE_MAGIC if image.startswith(magic)), "image/png")


def _decode_tool_call(call: object, fallback_id: str) -> ToolCall:
    if not isinstance(call, dict) or not isinstance(call.get("function"), dict):
        raise BadRequest("each tool call must have a 'function' object", param="messages")
    function = call["function"]
    arguments = function.get("arguments")
    if not isinstance(arguments, str):
        arguments = dumps(arguments if arguments is not None else {})
    return ToolCall(call.get("id") or fallback_id, str(function.get("name") or ""), arguments)


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


def decode_options(options: object) -> Sampling:
    if options is None:
        return _NO_SAMPLING
    if not isinstance(options, dict):
        raise BadRequest("'options' must be an object", param="options")
    sampling: dict[str, Any] = {
        name: options[name] for name in _SAMPLING_OPTIONS if options.get(name) is not None
    }
    num_predict = options.get("num_predict")
    if type(num_predict) is int and num_predict > 0:  # -1 (no limit) and -2 (fill context) have no equal
        sampling["max_tokens"] = num_predict
    stop = options_stop(options.get("stop"), "options.stop")
    if stop:
        sampling["stop"] = tuple(stop)
    known = {*_SAMPLING_OPTIONS, "num_predict", "stop"}
    extra = {name: value for name, value in options.items() if name not in known}
    if extra:
        sampling["extra"] = extra
    return Sampling(**sampling)


def _decode_logprobs_wanted(body: Payload) -> int | None:
    """``ChatRequest.top_logprobs`` from Ollama's ``logprobs`` (bool) and ``top_logprobs`` (int)."""
    if body.get("logprobs") is not True:
        return None
    top = body.get("top_logprobs")
    return top if type(top) is int and top > 0 else 0


def _decode_think(think: object) -> Reasoning:
    if isinstance(think, bool):
        return Reasoning(enabled=think)
    if isinstance(think, str):  # "low" / "medium" / "high" (gpt-oss)
        return Reasoning(enabled=True, effort=think)
    return _NO_REASONING


def _decode_format(fmt: object) -> OutputFormat:
    if fmt == "json":
        return OutputFormat(OutputKind.JSON)
    if isinstance(fmt, dict):
        return OutputFormat(OutputKind.JSON_SCHEMA, fmt)
    return _TEXT


def _encode_answer_call(name: str, arguments: str) -> Payload:
    """Ollama's tool call in an answer: arguments as an object, where the internal form has JSON text."""
    parsed = parse_arguments(arguments)
    if parsed is None:
        raise BadGateway("backend returned an unexpected tool call")
    return {"function": {"name": name, "arguments": parsed}}


def _final(out: Payload, stop_reason: StopReason, usage: Usage) -> Payload:
    """Complete ``out`` as Ollama's last object: ``done``, ``done_reason`` and the counts."""
    out["done"] = True
    out["done_reason"] = "length" if stop_reason is StopReason.LENGTH else "stop"
    out["total_duration"] = 0
    if usage.prompt_tokens is not None:
        out["prompt_eval_count"] = usage.prompt_tokens
    if usage.completion_tokens is not None:
        out["eval_count"] = usage.completion_tokens
    return out


# --- the backend side: Ollama servers ---------------------------------------------------------------------


class ChatBackend(BackendCodec):
    """/api/chat on an Ollama server."""

    path = "/api/chat"

    def encode_request(self, request: ChatRequest, *, model: str) -> Payload:
        if request.choices > 1:
            raise Unsupported(ONE_CHOICE, param="n")
        upstream: Payload = {
            "model": model,
            "messages": _encode_messages(request.messages),
            "stream": request.stream,
        }
        options = _encode_options(request.sampling)
        if options:
            upstream["options"] = options
        fmt = _encode_format(request.output)
        if fmt is not None:
            upstream["format"] = fmt
        if request.tools and request.tool_choice.mode is not ToolMode.NONE:
            upstream["tools"] = [_encode_tool(tool) for tool in request.tools]
        if request.reasoning.enabled is not None:
            upstream["think"] = request.reasoning.enabled
        if request.top_logprobs is not None:
            upstream["logprobs"] = True
            if request.top_logprobs:
                upstream["top_logprobs"] = request.top_logprobs
        return upstream

    def decode_response(self, payload: object) -> ChatResponse:
        body = expect_dict(payload, "response")
        message = expect_dict(body.get("message"), "response")
        parts: list[Text | Thinking | ToolCall] = []
        thinking = message.get("thinking")
        if isinstance(thinking, str) and thinking:
            parts.append(Thinking(thinking))
        content = message.get("content")
        if isinstance(content, str) and content:
            parts.append(Text(content))
        tool_calls = message.get("tool_calls")
        calls = [_decode_answer_call(call) for call in _calls(tool_calls)] if tool_calls else []
        parts.extend(calls)
        return ChatResponse(
            model=str(body.get("model") or ""),
            parts=tuple(parts),
            stop_reason=_stop_reason(bool(calls), body.get("done_reason")),
            usage=ollama_usage(body),
            logprobs=decode_logprobs(body.get("logprobs")),
        )

    def stream_decoder(self) -> StreamDecoder:
        return _LineDecoder()


class _LineDecoder(StreamDecoder):
    """Ollama chat lines -> internal events; the ``done`` line ends the answer. An upstream that ends
    without one was cut: ``BadGateway``."""

    __slots__ = ("_calls", "_done", "_started")

    def __init__(self) -> None:
        self._started = False
        self._done = False
        self._calls = 0

    def event(self, payload: object) -> list[ChatEvent]:
        line = expect_dict(payload, "stream event")
        if "error" in line:
            reported_error(line)
        events: list[ChatEvent] = []
        if not self._started:
            self._started = True
            events.append(MessageStart(model=str(line.get("model") or "")))
        message = line.get("message")
        if isinstance(message, dict):
            thinking = message.get("thinking")
            if isinstance(thinking, str) and thinking:
                events.append(ThinkingDelta(thinking))
            content = message.get("content")
            if isinstance(content, str) and content:
                logprobs = decode_logprobs(line.get("logprobs")) if "logprobs" in line else None
                events.append(TextDelta(content, logprobs) if logprobs else TextDelta(content))
            tool_calls = message.get("tool_calls")
            if tool_calls:
                for call in _calls(tool_calls):
                    decoded = _decode_answer_call(call)
                    events.append(ToolCallStart(self._calls, decoded.id, decoded.name))
                    events.append(ToolCallDelta(self._calls, decoded.arguments))
                    self._calls += 1
        elif line.get("done") is not True:
            raise BadGateway("backend returned an unexpected stream event")
        if line.get("done") is True:
            self._done = True
            events.append(Finish(_stop_reason(self._calls > 0, line.get("done_reason")), ollama_usage(line)))
        return events

    def finish(self) -> list[ChatEvent]:
        if not self._done:
            raise BadGateway("backend returned an unexpected end of stream")
        return []


def _stop_reason(called: bool, done_reason: object) -> StopReason:
    if called:
        return StopReason.TOOL_CALLS
    return StopReason.LENGTH if done_reason == "length" else StopReason.END


def _calls(tool_calls: object) -> list[Payload]:
    if not isinstance(tool_calls, list) or not all(isinstance(call, dict) for call in tool_calls):
        raise BadGateway("backend returned an unexpected tool call")
    return tool_calls


def _decode_answer_call(call: Payload) -> ToolCall:
    """A tool call the model made; Ollama gives no id, so one is made up."""
    function = call.get("function")
    if not isinstance(function, dict):
        raise BadGateway("backend returned an unexpected tool call")
    arguments = function.get("arguments")
    call_id = call.get("id")
    return ToolCall(
        call_id if isinstance(call_id, str) and call_id else new_id("call_"),
        str(function.get("name") or ""),
        arguments if isinstance(arguments, str) else dumps(arguments or {}),
    )


def _encode_messages(messages: tuple[Message, ...]) -> list[Payload]:
    out: list[Payload] = []
    tool_names: dict[str, str] = {}  # tool call id -> function name, to name the tool results
    for message in messages:
        if message.role is Role.TOOL:
            for part in message.parts:
                if isinstance(part, ToolResult):
                    result = _encode_content("tool", part.content)
                    name = tool_names.get(part.call_id) or part.name
                    if name:
                        result["tool_name"] = name
                    out.append(result)
            continue
        content = tuple(part for part in message.parts if isinstance(part, Text | Image))
        encoded = _encode_content(message.role.value, content)
        thinking = "".join(part.text for part in message.parts if isinstance(part, Thinking))
        if thinking:
            encoded["thinking"] = thinking
        calls = [part for part in message.parts if isinstance(part, ToolCall)]
        if calls:
            encoded["tool_calls"] = [_encode_request_call(call, tool_names) for call in calls]
        out.append(encoded)
    return out


def _encode_content(role: str, parts: tuple[Text | Image, ...]) -> Payload:
    """A message's text (parts joined with newlines) and its ``images`` (base64 only)."""
    out: Payload = {"role": role, "content": "\n".join(part.text for part in parts if isinstance(part, Text))}
    images = []
    for part in parts:
        if isinstance(part, Image):
            if part.data is None:
                raise BadRequest("Ollama backends take images only as base64 data: URLs", param="messages")
            images.append(part.data)
    if images:
        out["images"] = images
    return out


def _encode_request_call(call: ToolCall, tool_names: dict[str, str]) -> Payload:
    """Ollama's tool call, arguments as an object; records the call's id -> function name."""
    arguments = parse_arguments(call.arguments)
    if arguments is None:
        raise BadRequest("tool call arguments must be a JSON object", param="messages")
    tool_names[call.id] = call.name
    return {"function": {"name": call.name, "arguments": arguments}}


def _encode_options(sampling: Sampling) -> Payload:
    options: Payload = dict(sampling.extra)
    for name in _SAMPLING_OPTIONS:
        value = getattr(sampling, name)
        if value is not None:
            options[name] = value
    if sampling.max_tokens is not None:
        options["num_predict"] = sampling.max_tokens
    if sampling.stop:
        options["stop"] = list(sampling.stop)
    return options


def _encode_format(output: OutputFormat) -> object:
    if output.kind is OutputKind.JSON_SCHEMA and output.schema is not None:
        return dict(output.schema)
    if output.kind is not OutputKind.TEXT:
        return "json"
    return None


def _encode_tool(tool: Tool) -> Payload:
    function: Payload = {"name": tool.name}
    if tool.description is not None:
        function["description"] = tool.description
    if tool.parameters:
        function["parameters"] = dict(tool.parameters)
    return {"type": "function", "function": function}
