"""The codec APIs (``/v1/messages``, ``/v1/responses``) served through the relay's ``Translator`` seam.

``translator_for(api, backend)`` picks the translator of one request: the codec pair for the APIs that
have codecs, ``core.translate.translator`` for the others. A codec translator decodes the client's body
into a ``ChatRequest`` and encodes it for the backend:

    client API          OpenAI backend              Ollama backend                     Anthropic backend
    /v1/messages        chat completions codec      chat codec, then the OpenAI chat   Passthrough (bytes)
                                                    over Ollama translator
    /v1/responses       chat completions codec      (same)                             Anthropic codec

Also here: the OpenAI chat completions backend codec (``OpenAIChatBackend``). Carried over to a chat
backend: messages (images as ``image_url`` parts, tool calls and results), tools, tool_choice,
parallel_tool_calls, max_tokens, temperature, top_p, seed, penalties, stop, response_format, user;
``stream_options.include_usage`` on streams. Dropped: top_k and min_p (hosted OpenAI refuses them),
reasoning effort and budgets (refused by models that do not reason), images inside tool results.
"""

from __future__ import annotations

import dataclasses
import secrets

from gatewayd.errors import BadGateway
from gatewayd.gateway.core.chat import (
    ChatEvent,
    ChatRequest,
    ChatResponse,
    Finish,
    Image,
    Message,
    MessageStart,
    OutputKind,
    Role,
    StopReason,
    Text,
    TextDelta,
    Thinking,
    ThinkingDelta,
    ToolCall,
    ToolCallDelta,
    ToolCallStart,
    ToolMode,
    ToolResult,
)
from gatewayd.gateway.core.codec import BackendCodec, ClientCodec, Payload, StreamDecoder, StreamEncoder
from gatewayd.gateway.core.dialects import Api, Dialect, Usage, dialect_framing
from gatewayd.gateway.core.translate import Passthrough, translator
from gatewayd.gateway.core.translate_base import (
    StreamTranslator,
    Translator,
    expect_dict,
    openai_usage,
    reported_error,
    token_count,
)
from gatewayd.gateway.core.translate_ollama_backend import OpenAIChatOverOllama
from gatewayd.gateway.dialects.anthropic import AnthropicBackend, AnthropicClient
from gatewayd.gateway.dialects.openai_responses import ResponsesClient

_FINISH_REASONS = {
    "stop": StopReason.END,
    "length": StopReason.LENGTH,
    "tool_calls": StopReason.TOOL_CALLS,
    "function_call": StopReason.TOOL_CALLS,
    "content_filter": StopReason.CONTENT_FILTER,
}


def translator_for(api: Api, backend: Dialect, *, client_model: str) -> Translator:
    """A fresh translator for one request of ``api`` to a backend speaking ``backend``."""
    if api is Api.ANTHROPIC_MESSAGES:
        if backend is Dialect.ANTHROPIC:
            return Passthrough(api, backend, client_model=client_model)
        return CodecTranslator(api, backend, AnthropicClient(), client_model=client_model)
    if api is Api.OPENAI_RESPONSES:
        return CodecTranslator(api, backend, ResponsesClient(), client_model=client_model)
    return translator(api, backend, client_model=client_model)


def new_call_id() -> str:
    """An id for a tool call whose backend gave none (Ollama never does)."""
    return "call_" + secrets.token_hex(12)


class CodecTranslator(Translator):
    """A client codec composed with the backend's codec (for an Ollama backend: the chat completions
    codec, then the existing OpenAI chat over Ollama translator)."""

    def __init__(self, api: Api, backend: Dialect, client: ClientCodec, *, client_model: str) -> None:
        super().__init__(api, backend, client_model=client_model)
        self.client = client
        self.backend_codec: BackendCodec
        self._inner: Translator | None = None
        if backend is Dialect.ANTHROPIC:
            self.backend_codec = AnthropicBackend()
        else:
            self.backend_codec = OpenAIChatBackend()
            if backend is Dialect.OLLAMA:
                self._inner = OpenAIChatOverOllama(Api.OPENAI_CHAT, backend, client_model=client_model)
        self.upstream_path = self._inner.upstream_path if self._inner else self.backend_codec.path
        self.upstream_framing = dialect_framing(backend)
        self._response: ChatResponse | None = None
        #: the decoded request (set by ``request``)
        self.chat: ChatRequest | None = None

    def request(self, body: Payload, *, model: str, stream: bool) -> Payload:
        chat = dataclasses.replace(self.client.decode_request(body), stream=stream)
        self.chat = chat
        upstream = self.backend_codec.encode_request(chat, model=model)
        if self._inner is not None:
            return self._inner.request(upstream, model=model, stream=stream)
        return upstream

    def _decoded(self, upstream: object) -> ChatResponse:
        if self._response is None:
            payload = self._inner.response(upstream) if self._inner is not None else upstream
            self._response = self.backend_codec.decode_response(payload)
            if not self._response.model:
                self._response = dataclasses.replace(self._response, model=self.client_model)
        return self._response

    def usage(self, upstream: object) -> Usage:
        return self._decoded(upstream).usage

    def response(self, upstream: object) -> Payload:
        return self.client.encode_response(self._decoded(upstream))

    def stream(self) -> StreamTranslator:
        inner = self._inner.stream() if self._inner is not None else None
        return _CodecStream(self.backend_codec.stream_decoder(), self.client.stream_encoder(), inner)


class _CodecStream(StreamTranslator):
    __slots__ = ("_decoder", "_encoder", "_inner")

    def __init__(
        self, decoder: StreamDecoder, encoder: StreamEncoder, inner: StreamTranslator | None
    ) -> None:
        super().__init__()
        self._decoder = decoder
        self._encoder = encoder
        self._inner = inner

    def _encode(self, events: list[ChatEvent]) -> list[Payload]:
        out: list[Payload] = []
        for event in events:
            if isinstance(event, Finish):
                self.usage = Usage(event.usage.prompt_tokens, event.usage.completion_tokens)
            elif isinstance(event, MessageStart) and event.prompt_tokens is not None:
                self.usage.prompt_tokens = event.prompt_tokens
            out.extend(self._encoder.event(event))
        return out

    def event(self, payload: object) -> list[Payload]:
        if self._inner is None:
            return self._encode(self._decoder.event(payload))
        out: list[Payload] = []
        for chunk in self._inner.event(payload):
            out.extend(self._encode(self._decoder.event(chunk)))
        return out

    def finish(self) -> list[Payload]:
        out: list[Payload] = []
        if self._inner is not None:
            for chunk in self._inner.finish():
                out.extend(self._encode(self._decoder.event(chunk)))
        out.extend(self._encode(self._decoder.finish()))
        out.extend(self._encoder.finish())
        return out


# --- the OpenAI chat completions backend codec ------------------------------------------------------------


class OpenAIChatBackend(BackendCodec):
    """Speaks ``/v1/chat/completions`` to an OpenAI-compatible backend."""

    path = "/v1/chat/completions"

    def encode_request(self, request: ChatRequest, *, model: str) -> Payload:
        messages: list[Payload] = []
        for message in request.messages:
            messages.extend(_chat_messages(message))
        body: Payload = {"model": model, "messages": messages}
        if request.stream:
            body["stream"] = True
            body["stream_options"] = {"include_usage": True}
        sampling = request.sampling
        for name in ("max_tokens", "temperature", "top_p", "seed", "frequency_penalty", "presence_penalty"):
            value = getattr(sampling, name)
            if value is not None:
                body[name] = value
        if sampling.stop:
            body["stop"] = list(sampling.stop)
        if request.tools:
            body["tools"] = [
                {
                    "type": "function",
                    "function": {
                        "name": tool.name,
                        **({"description": tool.description} if tool.description else {}),
                        "parameters": dict(tool.parameters) or {"type": "object", "properties": {}},
                    },
                }
                for tool in request.tools
            ]
            choice = request.tool_choice
            if choice.mode is ToolMode.NAMED:
                body["tool_choice"] = {"type": "function", "function": {"name": choice.name}}
            elif choice.mode is not ToolMode.AUTO:
                body["tool_choice"] = choice.mode.value
            if request.parallel_tool_calls is not None:
                body["parallel_tool_calls"] = request.parallel_tool_calls
        output = request.output
        if output.kind is OutputKind.JSON_SCHEMA and output.schema is not None:
            schema: Payload = {"name": output.name or "output", "schema": dict(output.schema)}
            if output.strict is not None:
                schema["strict"] = output.strict
            body["response_format"] = {"type": "json_schema", "json_schema": schema}
        elif output.kind is OutputKind.JSON:
            body["response_format"] = {"type": "json_object"}
        if request.user:
            body["user"] = request.user
        return body

    def decode_response(self, payload: object) -> ChatResponse:
        body = expect_dict(payload, "response")
        reported_error(body)
        choices = body.get("choices")
        if not isinstance(choices, list) or not choices or not isinstance(choices[0], dict):
            raise BadGateway("backend returned an unexpected response")
        choice = choices[0]
        message = expect_dict(choice.get("message"), "response")
        parts: list[Text | Thinking | ToolCall] = []
        thinking = message.get("reasoning_content") or message.get("reasoning")
        if isinstance(thinking, str) and thinking:
            parts.append(Thinking(thinking))
        content = message.get("content")
        if isinstance(content, str) and content:
            parts.append(Text(content))
        for call in message.get("tool_calls") or ():
            if not isinstance(call, dict):
                continue
            function: Payload = call["function"] if isinstance(call.get("function"), dict) else {}
            arguments = function.get("arguments")
            parts.append(
                ToolCall(
                    id=str(call.get("id") or "") or new_call_id(),
                    name=str(function.get("name") or ""),
                    arguments=arguments if isinstance(arguments, str) else "{}",
                )
            )
        reason = _FINISH_REASONS.get(str(choice.get("finish_reason")), StopReason.END)
        if any(isinstance(part, ToolCall) for part in parts):
            reason = StopReason.TOOL_CALLS
        return ChatResponse(
            model=str(body.get("model") or ""),
            parts=tuple(parts),
            stop_reason=reason,
            usage=openai_usage(body),
            id=body.get("id") if isinstance(body.get("id"), str) else None,
            created=token_count(body.get("created")),
        )

    def stream_decoder(self) -> OpenAIChatStreamDecoder:
        return OpenAIChatStreamDecoder()


def _chat_messages(message: Message) -> list[Payload]:
    if message.role is Role.SYSTEM:
        return [{"role": "system", "content": message.text}]
    if message.role is Role.TOOL:
        return [
            {
                "role": "tool",
                "tool_call_id": part.call_id,
                "content": ("Error: " if part.is_error else "")
                + "\n".join(item.text for item in part.content if isinstance(item, Text)),
            }
            for part in message.parts
            if isinstance(part, ToolResult)
        ]
    if message.role is Role.ASSISTANT:
        out: Payload = {"role": "assistant", "content": message.text or None}
        calls = [
            {"id": part.id, "type": "function", "function": {"name": part.name, "arguments": part.arguments}}
            for part in message.parts
            if isinstance(part, ToolCall)
        ]
        if calls:
            out["tool_calls"] = calls
        elif out["content"] is None:
            out["content"] = ""
        return [out]
    if all(isinstance(part, Text) for part in message.parts):
        return [{"role": "user", "content": message.text}]
    content: list[Payload] = []
    for part in message.parts:
        if isinstance(part, Text):
            content.append({"type": "text", "text": part.text})
        elif isinstance(part, Image):
            content.append({"type": "image_url", "image_url": {"url": _image_url(part)}})
    return [{"role": "user", "content": content}]


def _image_url(image: Image) -> str:
    if image.data is not None:
        return f"data:{image.media_type or 'image/png'};base64,{image.data}"
    return image.url or ""


class OpenAIChatStreamDecoder(StreamDecoder):
    """Chat completion chunks -> internal events. ``Finish`` comes at the stream's end (``finish``): the
    usage chunk of ``include_usage`` follows the one with the finish reason."""

    def __init__(self) -> None:
        self._started = False
        self._calls: dict[int, int] = {}  # the backend's tool call index -> ours
        self._reason: StopReason | None = None
        self._usage = Usage()

    def event(self, payload: object) -> list[ChatEvent]:
        chunk = expect_dict(payload, "stream event")
        reported_error(chunk)
        out: list[ChatEvent] = []
        if not self._started:
            self._started = True
            out.append(
                MessageStart(
                    model=str(chunk.get("model") or ""),
                    id=chunk.get("id") if isinstance(chunk.get("id"), str) else None,
                    created=token_count(chunk.get("created")),
                )
            )
        if isinstance(chunk.get("usage"), dict):
            self._usage = openai_usage(chunk)
        for choice in chunk.get("choices") or ():
            if not isinstance(choice, dict):
                continue
            delta = choice.get("delta")
            if isinstance(delta, dict):
                out.extend(self._delta(delta))
            reason = choice.get("finish_reason")
            if isinstance(reason, str):
                self._reason = _FINISH_REASONS.get(reason, StopReason.END)
        return out

    def _delta(self, delta: Payload) -> list[ChatEvent]:
        out: list[ChatEvent] = []
        thinking = delta.get("reasoning_content") or delta.get("reasoning")
        if isinstance(thinking, str) and thinking:
            out.append(ThinkingDelta(thinking))
        content = delta.get("content")
        if isinstance(content, str) and content:
            out.append(TextDelta(content))
        for call in delta.get("tool_calls") or ():
            if not isinstance(call, dict):
                continue
            their = call.get("index")
            their = their if type(their) is int else len(self._calls)
            function: Payload = call["function"] if isinstance(call.get("function"), dict) else {}
            ours = self._calls.get(their)
            if ours is None:
                ours = self._calls[their] = len(self._calls)
                call_id = str(call.get("id") or "") or new_call_id()
                out.append(ToolCallStart(ours, call_id, str(function.get("name") or "")))
            arguments = function.get("arguments")
            if isinstance(arguments, str) and arguments:
                out.append(ToolCallDelta(ours, arguments))
        return out

    def finish(self) -> list[ChatEvent]:
        if not self._started:
            raise BadGateway("backend sent an empty stream")
        reason = self._reason or StopReason.END
        if self._calls:
            reason = StopReason.TOOL_CALLS
        return [Finish(reason, self._usage)]
