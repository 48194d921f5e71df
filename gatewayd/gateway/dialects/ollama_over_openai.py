"""Ollama's API served by an OpenAI-compatible backend.

    /api/chat        -> /v1/chat/completions
    /api/generate    -> /v1/chat/completions (system + user message), or /v1/completions when ``raw``
    /api/embed       -> /v1/embeddings
    /api/embeddings  -> /v1/embeddings (one prompt)

Carried over: messages (``images`` become ``image_url`` content parts, ``tool_calls`` get ids and JSON
string arguments, tool results are matched to the call they answer), ``tools``, ``format``, and the options
``temperature``, ``top_p``, ``seed``, ``frequency_penalty``, ``presence_penalty``, ``stop`` and a positive
``num_predict`` (as ``max_tokens``); ``dimensions`` for embeddings.

Dropped silently, having no OpenAI equivalent: every other option (``top_k``, ``num_ctx``,
``repeat_penalty``, ``mirostat``...), ``keep_alive``, ``think``, ``logprobs``/``top_logprobs``,
``template``, ``context``, ``suffix``, ``truncate``, and a message's ``thinking``. Answers carry no
durations but ``total_duration: 0``, and token counts only when the backend reported them.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any, Literal

from gatewayd.errors import BadGateway, BadRequest
from gatewayd.gateway.core.jsontext import dumps
from gatewayd.gateway.core.profile import Payload
from gatewayd.gateway.core.translation import EmbeddingTranslator, StreamTranslator, Translator
from gatewayd.gateway.core.usage import Usage
from gatewayd.gateway.core.wire import expect_dict, now_seconds, options_stop, reported_error, rfc3339
from gatewayd.gateway.dialects.ollama import OLLAMA
from gatewayd.gateway.dialects.openai_chat import OPENAI, openai_usage

#: Ollama options copied unchanged into the OpenAI body
CLIENT = OLLAMA
UPSTREAM = OPENAI
_SAMPLING_OPTIONS = ("temperature", "top_p", "seed", "frequency_penalty", "presence_penalty")
#: how a base64 image starts -> its MIME type (Ollama sends bare base64, OpenAI wants a data: URL)
_IMAGE_MAGIC = (
    ("/9j/", "image/jpeg"),
    ("iVBORw0KGgo", "image/png"),
    ("R0lGOD", "image/gif"),
    ("UklGR", "image/webp"),
)


class OllamaChatOverOpenAI(Translator):
    """/api/chat on an OpenAI backend."""

    def __init__(self, *, client_model: str) -> None:
        super().__init__(CLIENT, UPSTREAM, client_model=client_model)
        self.upstream_path = "/v1/chat/completions"

    def request(self, body: Payload, *, model: str, stream: bool) -> Payload:
        upstream: Payload = {"model": model, "messages": _chat_messages(body.get("messages"))}
        _add_generation_fields(upstream, body, stream=stream)
        tools = body.get("tools")
        if tools:
            upstream["tools"] = tools
        return upstream

    def response(self, upstream: object) -> Payload:
        body = expect_dict(upstream, "response")
        choice = _first_choice(body)
        message = expect_dict(choice.get("message"), "response")
        out_message: Payload = {"role": "assistant", "content": message.get("content") or ""}
        thinking = _reasoning(message)
        if thinking:
            out_message["thinking"] = thinking
        tool_calls = message.get("tool_calls")
        if tool_calls:
            out_message["tool_calls"] = [_ollama_tool_call(call) for call in _tool_call_list(tool_calls)]
        return _final(
            {"model": self.client_model, "created_at": _created_at(body), "message": out_message},
            choice.get("finish_reason"),
            openai_usage(body),
        )

    def usage(self, upstream: object) -> Usage:
        return openai_usage(expect_dict(upstream, "response"))

    def stream(self) -> StreamTranslator:
        return _OllamaStream(self.client_model, chat_upstream=True, text_field="message")


class OllamaGenerateOverOpenAI(Translator):
    """/api/generate on an OpenAI backend: a chat completion, or a plain completion when ``raw``."""

    def __init__(self, *, client_model: str) -> None:
        super().__init__(CLIENT, UPSTREAM, client_model=client_model)
        self.upstream_path = "/v1/chat/completions"
        self._chat_upstream = True

    def request(self, body: Payload, *, model: str, stream: bool) -> Payload:
        prompt = body.get("prompt") or ""
        if not isinstance(prompt, str):
            raise BadRequest("'prompt' must be a string", param="prompt")
        upstream: Payload = {"model": model}
        if body.get("raw") is True:
            self._chat_upstream = False
            self.upstream_path = "/v1/completions"
            upstream["prompt"] = prompt
        else:
            messages: list[Payload] = []
            system = body.get("system")
            if system:
                messages.append({"role": "system", "content": system})
            messages.append(
                _openai_message({"role": "user", "content": prompt, "images": body.get("images")})
            )
            upstream["messages"] = messages
        _add_generation_fields(upstream, body, stream=stream)
        return upstream

    def response(self, upstream: object) -> Payload:
        body = expect_dict(upstream, "response")
        choice = _first_choice(body)
        thinking = None
        if self._chat_upstream:
            message = expect_dict(choice.get("message"), "response")
            text = message.get("content")
            thinking = _reasoning(message)
        else:
            text = choice.get("text")
        out: Payload = {"model": self.client_model, "created_at": _created_at(body), "response": text or ""}
        if thinking:
            out["thinking"] = thinking
        return _final(out, choice.get("finish_reason"), openai_usage(body))

    def usage(self, upstream: object) -> Usage:
        return openai_usage(expect_dict(upstream, "response"))

    def stream(self) -> StreamTranslator:
        return _OllamaStream(self.client_model, chat_upstream=self._chat_upstream, text_field="response")


class OllamaEmbedOverOpenAI(EmbeddingTranslator):
    """/api/embed on an OpenAI backend."""

    def __init__(self, *, client_model: str) -> None:
        super().__init__(CLIENT, UPSTREAM, client_model=client_model)
        self.upstream_path = "/v1/embeddings"

    def request(self, body: Payload, *, model: str, stream: bool) -> Payload:
        texts = body.get("input")
        if not (
            isinstance(texts, str) or (isinstance(texts, list) and all(isinstance(t, str) for t in texts))
        ):
            raise BadRequest("'input' must be a string or a list of strings", param="input")
        upstream: Payload = {"model": model, "input": texts}
        if body.get("dimensions") is not None:
            upstream["dimensions"] = body["dimensions"]
        return upstream

    def response(self, upstream: object) -> Payload:
        body = expect_dict(upstream, "response")
        out: Payload = {"model": self.client_model, "embeddings": _embeddings(body)}
        prompt_tokens = openai_usage(body).prompt_tokens
        if prompt_tokens is not None:
            out["prompt_eval_count"] = prompt_tokens
        return out

    def usage(self, upstream: object) -> Usage:
        return _embedding_usage(expect_dict(upstream, "response"))


class OllamaEmbeddingsOverOpenAI(EmbeddingTranslator):
    """The legacy /api/embeddings (one ``prompt``, one ``embedding``) on an OpenAI backend."""

    def __init__(self, *, client_model: str) -> None:
        super().__init__(CLIENT, UPSTREAM, client_model=client_model)
        self.upstream_path = "/v1/embeddings"

    def request(self, body: Payload, *, model: str, stream: bool) -> Payload:
        prompt = body.get("prompt")
        if not isinstance(prompt, str):
            raise BadRequest("'prompt' must be a string", param="prompt")
        return {"model": model, "input": prompt}

    def response(self, upstream: object) -> Payload:
        embeddings = _embeddings(expect_dict(upstream, "response"))
        if len(embeddings) != 1:
            raise BadGateway("backend returned an unexpected embedding")
        return {"embedding": embeddings[0]}

    def usage(self, upstream: object) -> Usage:
        return _embedding_usage(expect_dict(upstream, "response"))


@dataclass(slots=True)
class _ToolCallParts:
    """A streamed tool call being put together from its fragments."""

    name: str = ""
    arguments: list[str] = field(default_factory=list)


class _OllamaStream(StreamTranslator):
    """OpenAI chunks (chat or completion) -> Ollama NDJSON lines (chat ``message`` or generate ``response``).

    Content and thinking go out as they arrive. Tool call fragments are collected and go out whole, in one
    line, once the upstream ends (Ollama sends each call complete). The ``done`` line comes from
    ``finish``: with ``include_usage`` the token counts arrive in a chunk after the one with the
    ``finish_reason``. An upstream that ends without a ``finish_reason`` was cut: ``BadGateway``.
    """

    __slots__ = (
        "_chat_upstream",
        "_created",
        "_created_at",
        "_finish_reason",
        "_model",
        "_text_field",
        "_tools",
    )

    def __init__(
        self, client_model: str, *, chat_upstream: bool, text_field: Literal["message", "response"]
    ) -> None:
        super().__init__()
        self._model = client_model
        self._chat_upstream = chat_upstream
        self._text_field = text_field  # where the text goes: chat's "message", generate's "response"
        self._finish_reason: str | None = None
        self._tools: dict[int, _ToolCallParts] = {}
        self._created: object = None
        self._created_at = rfc3339(now_seconds())

    def event(self, payload: object) -> list[Payload]:
        chunk = expect_dict(payload, "stream event")
        if "error" in chunk:
            reported_error(chunk)
        if isinstance(chunk.get("usage"), dict):
            self.usage = openai_usage(chunk)
        choices = chunk.get("choices")
        if not isinstance(choices, list):
            raise BadGateway("backend returned an unexpected stream event")
        if not choices:
            return []
        choice = expect_dict(choices[0], "stream event")
        created = chunk.get("created")
        if created != self._created and isinstance(created, int | float):
            self._created = created
            self._created_at = rfc3339(created)
        finish_reason = choice.get("finish_reason")
        if finish_reason:
            self._finish_reason = finish_reason
        thinking = None
        if self._chat_upstream:
            delta = choice.get("delta")
            if not isinstance(delta, dict):
                return []
            text = delta.get("content")
            thinking = _reasoning(delta)
            if delta.get("tool_calls") and self._text_field == "message":
                self._collect_tool_calls(delta["tool_calls"])
        else:
            text = choice.get("text")
        if not text and not thinking:
            return []
        return [self._line(text or "", thinking)]

    def finish(self) -> list[Payload]:
        if self._finish_reason is None:
            raise BadGateway("backend returned an unexpected end of stream")
        lines = []
        if self._tools:
            calls = [
                _ollama_function(parts.name, "".join(parts.arguments))
                for _, parts in sorted(self._tools.items())
            ]
            line = self._line("", None)
            line["message"]["tool_calls"] = calls
            lines.append(line)
        lines.append(_final(self._line("", None), self._finish_reason, self.usage))
        return lines

    def _line(self, text: str, thinking: str | None) -> Payload:
        line: Payload = {"model": self._model, "created_at": self._created_at}
        if self._text_field == "message":
            message: Payload = {"role": "assistant", "content": text}
            if thinking:
                message["thinking"] = thinking
            line["message"] = message
        else:
            line["response"] = text
            if thinking:
                line["thinking"] = thinking
        line["done"] = False
        return line

    def _collect_tool_calls(self, fragments: object) -> None:
        for fragment in _tool_call_list(fragments):
            index = fragment.get("index")
            parts = self._tools.setdefault(
                index if type(index) is int else len(self._tools), _ToolCallParts()
            )
            function = fragment.get("function")
            if isinstance(function, dict):
                if function.get("name"):
                    parts.name = function["name"]
                if function.get("arguments"):
                    parts.arguments.append(function["arguments"])


# --- requests ------------------------------------------------------------------------------------------


def _add_generation_fields(upstream: Payload, body: Payload, *, stream: bool) -> None:
    """``stream`` (with ``include_usage``), the mapped options and ``format``."""
    upstream["stream"] = stream
    if stream:
        upstream["stream_options"] = {"include_usage": True}
    options = body.get("options")
    if options is not None:
        if not isinstance(options, dict):
            raise BadRequest("'options' must be an object", param="options")
        for name in _SAMPLING_OPTIONS:
            value = options.get(name)
            if value is not None:
                upstream[name] = value
        num_predict = options.get("num_predict")
        if type(num_predict) is int and num_predict > 0:  # -1 (no limit) and -2 (fill context) have no equal
            upstream["max_tokens"] = num_predict
        stop = options_stop(options.get("stop"), "options.stop")
        if stop:
            upstream["stop"] = stop
    response_format = _response_format(body.get("format"))
    if response_format is not None:
        upstream["response_format"] = response_format


def _response_format(fmt: object) -> Payload | None:
    if fmt == "json":
        return {"type": "json_object"}
    if isinstance(fmt, dict):
        return {"type": "json_schema", "json_schema": {"name": "response", "schema": fmt}}
    return None


def _chat_messages(messages: object) -> list[Payload]:
    """Ollama messages -> OpenAI messages. Tool calls without ids get ``call_<n>``; a tool result without a
    ``tool_call_id`` answers the oldest unanswered call of its ``tool_name`` (or the oldest one)."""
    if not isinstance(messages, list):
        raise BadRequest("'messages' must be a list", param="messages")
    converted: list[Payload] = []
    unanswered: list[tuple[str, str]] = []  # (id, function name) of the latest assistant's tool calls
    for message in messages:
        if not isinstance(message, dict):
            raise BadRequest("each message must be an object", param="messages")
        out = _openai_message(message)
        tool_calls = message.get("tool_calls")
        if tool_calls:
            if not isinstance(tool_calls, list):
                raise BadRequest("'tool_calls' must be a list", param="messages")
            out["tool_calls"] = calls = [
                _openai_tool_call(call, f"call_{len(converted)}_{i}") for i, call in enumerate(tool_calls)
            ]
            unanswered = [(call["id"], call["function"]["name"]) for call in calls]
        if out["role"] == "tool":
            call_id = message.get("tool_call_id") or _answer(unanswered, message)
            if call_id:
                out["tool_call_id"] = call_id
        converted.append(out)
    return converted


def _answer(unanswered: list[tuple[str, str]], message: Payload) -> str | None:
    name = message.get("tool_name") or message.get("name")
    for i, (call_id, call_name) in enumerate(unanswered):
        if call_name == name:
            del unanswered[i]
            return call_id
    return unanswered.pop(0)[0] if unanswered else None


def _openai_message(message: Payload) -> Payload:
    content = message.get("content") or ""
    if not isinstance(content, str):
        raise BadRequest("a message's 'content' must be a string", param="messages")
    images = message.get("images")
    if not images:
        return {"role": message.get("role"), "content": content}
    if not isinstance(images, list) or not all(isinstance(image, str) for image in images):
        raise BadRequest("'images' must be a list of base64 strings", param="images")
    parts: list[Payload] = [{"type": "text", "text": content}] if content else []
    parts.extend({"type": "image_url", "image_url": {"url": _data_url(image)}} for image in images)
    return {"role": message.get("role"), "content": parts}


def _data_url(image: str) -> str:
    mime = next((mime for magic, mime in _IMAGE_MAGIC if image.startswith(magic)), "image/png")
    return f"data:{mime};base64,{image}"


def _openai_tool_call(call: object, fallback_id: str) -> Payload:
    if not isinstance(call, dict) or not isinstance(call.get("function"), dict):
        raise BadRequest("each tool call must have a 'function' object", param="messages")
    function = call["function"]
    arguments = function.get("arguments")
    if not isinstance(arguments, str):
        arguments = dumps(arguments if arguments is not None else {})
    return {
        "id": call.get("id") or fallback_id,
        "type": "function",
        "function": {"name": function.get("name"), "arguments": arguments},
    }


# --- responses -----------------------------------------------------------------------------------------


def _first_choice(body: Payload) -> Payload:
    choices = body.get("choices")
    if not isinstance(choices, list) or not choices:
        raise BadGateway("backend returned an unexpected response")
    return expect_dict(choices[0], "response")


def _created_at(body: Payload) -> str:
    created = body.get("created")
    return rfc3339(created if isinstance(created, int | float) else now_seconds())


def _reasoning(message: Payload) -> str | None:
    """The reasoning text that servers such as vLLM and llama-server send next to ``content``."""
    return message.get("reasoning_content") or message.get("reasoning")


def _final(out: Payload, finish_reason: object, usage: Usage) -> Payload:
    """Complete ``out`` as Ollama's last object: ``done``, ``done_reason`` and the counts."""
    out["done"] = True
    out["done_reason"] = "length" if finish_reason == "length" else "stop"
    out["total_duration"] = 0
    if usage.prompt_tokens is not None:
        out["prompt_eval_count"] = usage.prompt_tokens
    if usage.completion_tokens is not None:
        out["eval_count"] = usage.completion_tokens
    return out


def _tool_call_list(value: object) -> list[Payload]:
    if not isinstance(value, list) or not all(isinstance(call, dict) for call in value):
        raise BadGateway("backend returned an unexpected tool call")
    return value


def _ollama_tool_call(call: Payload) -> Payload:
    function = call.get("function")
    if not isinstance(function, dict):
        raise BadGateway("backend returned an unexpected tool call")
    return _ollama_function(function.get("name") or "", function.get("arguments") or "")


def _ollama_function(name: str, arguments: object) -> Payload:
    """Ollama's tool call: arguments as an object, where OpenAI sends a JSON string."""
    if isinstance(arguments, str):
        try:
            arguments = json.loads(arguments) if arguments.strip() else {}
        except ValueError:
            raise BadGateway("backend returned an unexpected tool call") from None
    if not isinstance(arguments, dict):
        raise BadGateway("backend returned an unexpected tool call")
    return {"function": {"name": name, "arguments": arguments}}


def _embeddings(body: Payload) -> list[Any]:
    """The vectors of an OpenAI embedding list, in input order."""
    data = body.get("data")
    if not isinstance(data, list):
        raise BadGateway("backend returned an unexpected embedding")
    items = [expect_dict(item, "embedding") for item in data]
    if all(type(item.get("index")) is int for item in items):
        items.sort(key=lambda item: item["index"])
    vectors = [item.get("embedding") for item in items]
    if not all(isinstance(vector, list) for vector in vectors):
        raise BadGateway("backend returned an unexpected embedding")
    return vectors


def _embedding_usage(body: Payload) -> Usage:
    return Usage(openai_usage(body).prompt_tokens, 0)
