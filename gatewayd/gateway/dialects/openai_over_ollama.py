"""OpenAI's API served by an Ollama backend.

    /v1/chat/completions  -> /api/chat
    /v1/completions       -> /api/generate with ``raw: true`` (the prompt is sent as is, no template)
    /v1/embeddings        -> /api/embed

Carried over: messages (text content parts are joined with newlines, ``image_url`` data: URLs become
``images``, the ``developer`` role becomes ``system``, tool call arguments become objects, a tool result's
``tool_call_id`` becomes the ``tool_name`` of the call it answers), ``tools`` (left out when
``tool_choice`` is ``"none"``), ``response_format``, ``stream``, and into ``options``: ``max_tokens`` /
``max_completion_tokens`` (as ``num_predict``), ``temperature``, ``top_p``, ``seed``,
``frequency_penalty``, ``presence_penalty``, ``stop``; ``dimensions`` for embeddings.

Dropped silently: ``n``, ``best_of``, ``echo``, ``suffix``, ``logprobs``/``top_logprobs``, ``logit_bias``,
``user``, ``tool_choice`` (other than ``"none"``), ``parallel_tool_calls``, ``reasoning_effort``,
``service_tier``, ``store``, ``metadata``, a message's ``name``. Refused with ``BadRequest``: images by
http(s) URL (the core does no IO), other content part types, several prompts or token-array inputs.
"""

from __future__ import annotations

import base64
import json
import struct
from typing import Any

from gatewayd.errors import BadGateway, BadRequest
from gatewayd.gateway.core.jsontext import dumps
from gatewayd.gateway.core.profile import Payload
from gatewayd.gateway.core.translation import EmbeddingTranslator, StreamTranslator, Translator
from gatewayd.gateway.core.usage import Usage
from gatewayd.gateway.core.wire import expect_dict, new_id, now_seconds, options_stop, reported_error
from gatewayd.gateway.dialects.ollama import OLLAMA, ollama_usage
from gatewayd.gateway.dialects.openai_chat import OPENAI

#: OpenAI fields copied unchanged into Ollama's ``options``
CLIENT = OPENAI
UPSTREAM = OLLAMA
_SAMPLING_FIELDS = ("temperature", "top_p", "seed", "frequency_penalty", "presence_penalty")


class OpenAIChatOverOllama(Translator):
    """/v1/chat/completions on an Ollama backend."""

    def __init__(self, *, client_model: str) -> None:
        super().__init__(CLIENT, UPSTREAM, client_model=client_model)
        self.upstream_path = "/api/chat"
        self._include_usage = False

    def request(self, body: Payload, *, model: str, stream: bool) -> Payload:
        upstream: Payload = {
            "model": model,
            "messages": _ollama_messages(body.get("messages")),
            "stream": stream,
        }
        self._include_usage = _add_options(upstream, body, stream=stream)
        response_format = body.get("response_format")
        if isinstance(response_format, dict):
            fmt = _ollama_format(response_format)
            if fmt is not None:
                upstream["format"] = fmt
        tools = body.get("tools")
        if tools and body.get("tool_choice") != "none":
            upstream["tools"] = tools
        return upstream

    def response(self, upstream: object) -> Payload:
        body = expect_dict(upstream, "response")
        message = expect_dict(body.get("message"), "response")
        content = message.get("content") or ""
        out_message: Payload = {"role": "assistant", "content": content}
        thinking = message.get("thinking")
        if thinking:
            out_message["reasoning_content"] = thinking
        tool_calls = message.get("tool_calls")
        finish_reason = _finish_reason(body.get("done_reason"))
        if tool_calls:
            out_message["tool_calls"] = [_openai_tool_call(call) for call in _calls(tool_calls)]
            out_message["content"] = content or None
            finish_reason = "tool_calls"
        return {
            "id": new_id("chatcmpl-"),
            "object": "chat.completion",
            "created": now_seconds(),
            "model": self.client_model,
            "choices": [
                {"index": 0, "message": out_message, "logprobs": None, "finish_reason": finish_reason}
            ],
            "usage": _openai_usage(ollama_usage(body)),
        }

    def usage(self, upstream: object) -> Usage:
        return ollama_usage(expect_dict(upstream, "response"))

    def stream(self) -> StreamTranslator:
        return _OpenAIStream(self.client_model, chat=True, include_usage=self._include_usage)


class OpenAICompletionsOverOllama(Translator):
    """/v1/completions on an Ollama backend."""

    def __init__(self, *, client_model: str) -> None:
        super().__init__(CLIENT, UPSTREAM, client_model=client_model)
        self.upstream_path = "/api/generate"
        self._include_usage = False

    def request(self, body: Payload, *, model: str, stream: bool) -> Payload:
        prompt = body.get("prompt", "")
        if isinstance(prompt, list) and len(prompt) == 1:
            prompt = prompt[0]
        if not isinstance(prompt, str):
            raise BadRequest("Ollama backends take one prompt, as a string", param="prompt")
        upstream: Payload = {"model": model, "prompt": prompt, "raw": True, "stream": stream}
        self._include_usage = _add_options(upstream, body, stream=stream)
        return upstream

    def response(self, upstream: object) -> Payload:
        body = expect_dict(upstream, "response")
        text = body.get("response")
        if not isinstance(text, str):
            raise BadGateway("backend returned an unexpected response")
        return {
            "id": new_id("cmpl-"),
            "object": "text_completion",
            "created": now_seconds(),
            "model": self.client_model,
            "choices": [
                {
                    "text": text,
                    "index": 0,
                    "logprobs": None,
                    "finish_reason": _finish_reason(body.get("done_reason")),
                }
            ],
            "usage": _openai_usage(ollama_usage(body)),
        }

    def usage(self, upstream: object) -> Usage:
        return ollama_usage(expect_dict(upstream, "response"))

    def stream(self) -> StreamTranslator:
        return _OpenAIStream(self.client_model, chat=False, include_usage=self._include_usage)


class OpenAIEmbeddingsOverOllama(EmbeddingTranslator):
    """/v1/embeddings on an Ollama backend. ``encoding_format: "base64"`` (the openai client's default) is
    answered with base64 of little-endian float32, as OpenAI does."""

    def __init__(self, *, client_model: str) -> None:
        super().__init__(CLIENT, UPSTREAM, client_model=client_model)
        self.upstream_path = "/api/embed"
        self._base64 = False

    def request(self, body: Payload, *, model: str, stream: bool) -> Payload:
        texts = body.get("input")
        if not (
            isinstance(texts, str) or (isinstance(texts, list) and all(isinstance(t, str) for t in texts))
        ):
            raise BadRequest("Ollama backends take 'input' as a string or a list of strings", param="input")
        self._base64 = body.get("encoding_format") == "base64"
        upstream: Payload = {"model": model, "input": texts}
        if body.get("dimensions") is not None:
            upstream["dimensions"] = body["dimensions"]
        return upstream

    def response(self, upstream: object) -> Payload:
        body = expect_dict(upstream, "response")
        vectors = body.get("embeddings")
        if not isinstance(vectors, list) or not all(isinstance(vector, list) for vector in vectors):
            raise BadGateway("backend returned an unexpected embedding")
        encode = _base64_floats if self._base64 else _as_is
        prompt_tokens = ollama_usage(body).prompt_tokens or 0
        return {
            "object": "list",
            "data": [
                {"object": "embedding", "index": i, "embedding": encode(vector)}
                for i, vector in enumerate(vectors)
            ],
            "model": self.client_model,
            "usage": {"prompt_tokens": prompt_tokens, "total_tokens": prompt_tokens},
        }

    def usage(self, upstream: object) -> Usage:
        return Usage(ollama_usage(expect_dict(upstream, "response")).prompt_tokens, 0)


class _OpenAIStream(StreamTranslator):
    """Ollama NDJSON lines -> OpenAI chunks (``chat.completion.chunk`` or ``text_completion``).

    The first chat chunk carries ``delta.role``. The ``done`` line yields its remaining text, a chunk with
    the ``finish_reason`` and, when the client asked for ``stream_options.include_usage``, a usage chunk
    with empty ``choices``. An upstream that ends without a ``done`` line was cut: ``BadGateway``.
    """

    __slots__ = (
        "_chat",
        "_created",
        "_done",
        "_id",
        "_include_usage",
        "_model",
        "_object",
        "_role_sent",
        "_tool_calls",
    )

    def __init__(self, client_model: str, *, chat: bool, include_usage: bool) -> None:
        super().__init__()
        self._model = client_model
        self._chat = chat
        self._include_usage = include_usage
        self._id = new_id("chatcmpl-" if chat else "cmpl-")
        self._object = "chat.completion.chunk" if chat else "text_completion"
        self._created = now_seconds()
        self._role_sent = False
        self._tool_calls = 0
        self._done = False

    def event(self, payload: object) -> list[Payload]:
        line = expect_dict(payload, "stream event")
        if "error" in line:
            reported_error(line)
        chunks = self._chat_chunks(line) if self._chat else self._text_chunks(line)
        if line.get("done") is True:
            self._done = True
            self.usage = ollama_usage(line)
            reason = "tool_calls" if self._tool_calls else _finish_reason(line.get("done_reason"))
            if self._chat:
                chunks.append(
                    self._chunk({"index": 0, "delta": {}, "logprobs": None, "finish_reason": reason})
                )
            else:
                chunks.append(
                    self._chunk({"text": "", "index": 0, "logprobs": None, "finish_reason": reason})
                )
            if self._include_usage:
                usage_chunk = self._chunk(None)
                usage_chunk["usage"] = _openai_usage(self.usage)
                chunks.append(usage_chunk)
        return chunks

    def finish(self) -> list[Payload]:
        if not self._done:
            raise BadGateway("backend returned an unexpected end of stream")
        return []

    def _chat_chunks(self, line: Payload) -> list[Payload]:
        message = line.get("message")
        if not isinstance(message, dict):
            if line.get("done") is True:
                return []
            raise BadGateway("backend returned an unexpected stream event")
        delta: Payload = {}
        if not self._role_sent:
            delta["role"] = "assistant"
        content = message.get("content")
        if content or not self._role_sent:
            delta["content"] = content or ""
        thinking = message.get("thinking")
        if thinking:
            delta["reasoning_content"] = thinking
        tool_calls = message.get("tool_calls")
        if tool_calls:
            calls = _calls(tool_calls)
            delta["tool_calls"] = [
                _openai_tool_call(call, self._tool_calls + i) for i, call in enumerate(calls)
            ]
            self._tool_calls += len(calls)
        if not delta:
            return []
        self._role_sent = True
        return [self._chunk({"index": 0, "delta": delta, "logprobs": None, "finish_reason": None})]

    def _text_chunks(self, line: Payload) -> list[Payload]:
        text = line.get("response")
        if not text:
            return []
        return [self._chunk({"text": text, "index": 0, "logprobs": None, "finish_reason": None})]

    def _chunk(self, choice: Payload | None) -> Payload:
        return {
            "id": self._id,
            "object": self._object,
            "created": self._created,
            "model": self._model,
            "choices": [choice] if choice is not None else [],
        }


# --- requests ------------------------------------------------------------------------------------------


def _add_options(upstream: Payload, body: Payload, *, stream: bool) -> bool:
    """Fill ``upstream["options"]``; return whether a streamed answer should end with a usage chunk."""
    options: Payload = {}
    for name in _SAMPLING_FIELDS:
        value = body.get(name)
        if value is not None:
            options[name] = value
    max_tokens = body.get("max_completion_tokens", body.get("max_tokens"))
    if max_tokens is not None:
        options["num_predict"] = max_tokens
    stop = options_stop(body.get("stop"), "stop")
    if stop:
        options["stop"] = stop
    if options:
        upstream["options"] = options
    stream_options = body.get("stream_options")
    return stream and isinstance(stream_options, dict) and stream_options.get("include_usage") is True


def _ollama_format(response_format: Payload) -> object:
    kind = response_format.get("type")
    if kind == "json_object":
        return "json"
    if kind == "json_schema":
        spec = response_format.get("json_schema")
        schema = spec.get("schema") if isinstance(spec, dict) else None
        return schema if isinstance(schema, dict) else "json"
    return None


def _ollama_messages(messages: object) -> list[Payload]:
    if not isinstance(messages, list):
        raise BadRequest("'messages' must be a list", param="messages")
    converted: list[Payload] = []
    tool_names: dict[object, object] = {}  # tool call id -> function name, to name the tool results
    for message in messages:
        if not isinstance(message, dict):
            raise BadRequest("each message must be an object", param="messages")
        role = message.get("role")
        out: Payload = {"role": "system" if role == "developer" else role}
        out["content"], images = _content(message.get("content"))
        if images:
            out["images"] = images
        tool_calls = message.get("tool_calls")
        if tool_calls:
            if not isinstance(tool_calls, list):
                raise BadRequest("'tool_calls' must be a list", param="messages")
            out["tool_calls"] = [_ollama_tool_call(call, tool_names) for call in tool_calls]
        if role == "tool":
            name = tool_names.get(message.get("tool_call_id")) or message.get("name")
            if name:
                out["tool_name"] = name
        converted.append(out)
    return converted


def _content(content: object) -> tuple[str, list[str]]:
    """A message's text and its images (base64), from a string or a list of content parts."""
    if content is None:
        return "", []
    if isinstance(content, str):
        return content, []
    if not isinstance(content, list):
        raise BadRequest("a message's 'content' must be a string or a list of parts", param="messages")
    texts: list[str] = []
    images: list[str] = []
    for part in content:
        kind = part.get("type") if isinstance(part, dict) else None
        if kind == "text" and isinstance(part.get("text"), str):
            texts.append(part["text"])
        elif kind == "image_url":
            images.append(_image_base64(part.get("image_url")))
        else:
            raise BadRequest(
                f"content part type {kind!r} is not supported by Ollama backends", param="messages"
            )
    return "\n".join(texts), images


def _image_base64(image_url: object) -> str:
    url = image_url.get("url") if isinstance(image_url, dict) else image_url
    if isinstance(url, str) and url.startswith("data:"):
        header, _, data = url.partition(",")
        if header.endswith(";base64") and data:
            return data
    raise BadRequest("Ollama backends take images only as base64 data: URLs", param="messages")


def _ollama_tool_call(call: object, tool_names: dict[object, object]) -> Payload:
    """Ollama's tool call, arguments as an object; records the call's id -> function name."""
    if not isinstance(call, dict) or not isinstance(call.get("function"), dict):
        raise BadRequest("each tool call must have a 'function' object", param="messages")
    function = call["function"]
    arguments = function.get("arguments")
    if isinstance(arguments, str):
        try:
            arguments = json.loads(arguments) if arguments.strip() else {}
        except ValueError:
            raise BadRequest("tool call arguments must be a JSON object", param="messages") from None
    if not isinstance(arguments, dict):
        raise BadRequest("tool call arguments must be a JSON object", param="messages")
    tool_names[call.get("id")] = function.get("name")
    return {"function": {"name": function.get("name"), "arguments": arguments}}


# --- responses -----------------------------------------------------------------------------------------


def _finish_reason(done_reason: object) -> str:
    return "length" if done_reason == "length" else "stop"


def _openai_usage(usage: Usage) -> Payload:
    prompt = usage.prompt_tokens or 0
    completion = usage.completion_tokens or 0
    return {"prompt_tokens": prompt, "completion_tokens": completion, "total_tokens": prompt + completion}


def _calls(tool_calls: object) -> list[Payload]:
    if not isinstance(tool_calls, list) or not all(isinstance(call, dict) for call in tool_calls):
        raise BadGateway("backend returned an unexpected tool call")
    return tool_calls


def _openai_tool_call(call: Payload, index: int | None = None) -> Payload:
    """OpenAI's tool call: an id, arguments as a JSON string, and in a stream chunk its ``index``."""
    function = call.get("function")
    if not isinstance(function, dict):
        raise BadGateway("backend returned an unexpected tool call")
    arguments = function.get("arguments")
    out: Payload = {} if index is None else {"index": index}
    out["id"] = call.get("id") or new_id("call_")
    out["type"] = "function"
    out["function"] = {
        "name": function.get("name"),
        "arguments": arguments if isinstance(arguments, str) else dumps(arguments or {}),
    }
    return out


def _base64_floats(vector: list[Any]) -> str:
    """Base64 of little-endian float32, OpenAI's ``encoding_format: "base64"``."""
    try:
        packed = struct.pack(f"<{len(vector)}f", *vector)
    except struct.error:
        raise BadGateway("backend returned an unexpected embedding") from None
    return base64.b64encode(packed).decode("ascii")


def _as_is(vector: list[Any]) -> list[Any]:
    return vector
