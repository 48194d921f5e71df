"""Raw completions, which have no chat semantics and exist in two dialects only: direct translators.

    /v1/completions on an Ollama backend  -> /api/generate with ``raw: true`` (the prompt is sent as is)
    /api/generate on an OpenAI backend    -> /v1/chat/completions (system + user message), or
                                             /v1/completions when ``raw``

Carried over: the prompt (one string; Ollama's ``system`` and ``images`` become chat messages), a
``suffix`` (fill in the middle: /api/generate without ``raw``, or /v1/completions, where the registry
sends it; llama-server's /infill is ``dialects.infill``), ``stream`` (with
``stream_options.include_usage`` where the client or the usage count needs it), ``format``, the sampling
settings ``temperature``, ``top_p``, ``seed``, ``frequency_penalty``, ``presence_penalty``, ``top_k``,
``min_p``, ``repeat_penalty`` and other backend options (to llama-server and vLLM only: OpenAI refuses
them), ``stop``, the token limit (``max_tokens`` <-> a positive ``num_predict``; ``max_completion_tokens``
for OpenAI's chat), and on /api/generate over chat ``logprobs``/``top_logprobs``. Dropped: every other
field (``best_of``, ``echo``, the logprobs of /v1/completions and of a ``raw`` generate, ``template``,
``context``...). Refused with ``BadRequest``: several prompts or token-array prompts for an Ollama
backend; with ``Unsupported``: ``n`` > 1 for an Ollama backend.
"""

from __future__ import annotations

from gatewayd.errors import BadGateway, BadRequest, Unsupported
from gatewayd.gateway.core.capability import Capabilities
from gatewayd.gateway.core.chat import TokenLogprob
from gatewayd.gateway.core.profile import Payload
from gatewayd.gateway.core.translation import StreamTranslator, Translator
from gatewayd.gateway.core.usage import Usage
from gatewayd.gateway.core.wire import (
    decode_logprobs,
    encode_logprobs,
    expect_dict,
    new_id,
    now_seconds,
    options_stop,
    reported_error,
    rfc3339,
)
from gatewayd.gateway.dialects.ollama import OLLAMA, ONE_CHOICE, decode_options, ollama_usage
from gatewayd.gateway.dialects.openai_chat import OPENAI, decode_sampling, encode_extra_sampling, openai_usage

#: sampling fields with the same name in OpenAI's body and Ollama's ``options``
_SAMPLING_FIELDS = ("temperature", "top_p", "seed", "frequency_penalty", "presence_penalty")
#: how a base64 image starts -> its MIME type (Ollama sends bare base64, OpenAI wants a data: URL)
_IMAGE_MAGIC = (
    ("/9j/", "image/jpeg"),
    ("iVBORw0KGgo", "image/png"),
    ("R0lGOD", "image/gif"),
    ("UklGR", "image/webp"),
)


# --- OpenAI clients, Ollama backends ---------------------------------------------------------------------


class OpenAICompletionsOverOllama(Translator):
    """/v1/completions on an Ollama backend."""

    def __init__(self, *, client_model: str) -> None:
        super().__init__(OPENAI, OLLAMA, client_model=client_model)
        self.upstream_path = "/api/generate"
        self._include_usage = False

    def request(self, body: Payload, *, model: str, stream: bool) -> Payload:
        prompt = body.get("prompt", "")
        if isinstance(prompt, list) and len(prompt) == 1:
            prompt = prompt[0]
        if not isinstance(prompt, str):
            raise BadRequest("Ollama backends take one prompt, as a string", param="prompt")
        if body.get("n") not in (None, 1):
            raise Unsupported(ONE_CHOICE, param="n")
        upstream: Payload = {"model": model, "prompt": prompt, "stream": stream}
        suffix = body.get("suffix")
        if suffix:  # fill in the middle: Ollama applies the model's FIM template, which raw would skip
            if not isinstance(suffix, str):
                raise BadRequest("'suffix' must be a string", param="suffix")
            upstream["suffix"] = suffix
        else:
            upstream["raw"] = True
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
        return _TextChunks(self.client_model, include_usage=self._include_usage)


class _TextChunks(StreamTranslator):
    """Ollama generate lines -> OpenAI ``text_completion`` chunks. The ``done`` line yields its remaining
    text, a chunk with the ``finish_reason`` and, when the client asked for
    ``stream_options.include_usage``, a usage chunk with empty ``choices``. An upstream that ends without
    a ``done`` line was cut: ``BadGateway``."""

    __slots__ = ("_created", "_done", "_id", "_include_usage", "_model")

    def __init__(self, client_model: str, *, include_usage: bool) -> None:
        super().__init__()
        self._model = client_model
        self._include_usage = include_usage
        self._id = new_id("cmpl-")
        self._created = now_seconds()
        self._done = False

    def event(self, payload: object) -> list[Payload]:
        line = expect_dict(payload, "stream event")
        if "error" in line:
            reported_error(line)
        chunks = []
        text = line.get("response")
        if text:
            chunks.append(self._chunk({"text": text, "index": 0, "logprobs": None, "finish_reason": None}))
        if line.get("done") is True:
            self._done = True
            self.usage = ollama_usage(line)
            reason = _finish_reason(line.get("done_reason"))
            chunks.append(self._chunk({"text": "", "index": 0, "logprobs": None, "finish_reason": reason}))
            if self._include_usage:
                usage_chunk = self._chunk(None)
                usage_chunk["usage"] = _openai_usage(self.usage)
                chunks.append(usage_chunk)
        return chunks

    def finish(self) -> list[Payload]:
        if not self._done:
            raise BadGateway("backend returned an unexpected end of stream")
        return []

    def _chunk(self, choice: Payload | None) -> Payload:
        return {
            "id": self._id,
            "object": "text_completion",
            "created": self._created,
            "model": self._model,
            "choices": [choice] if choice is not None else [],
        }


def _add_options(upstream: Payload, body: Payload, *, stream: bool) -> bool:
    """Fill ``upstream["options"]``; return whether a streamed answer should end with a usage chunk."""
    sampling = decode_sampling(body)
    options: Payload = dict(sampling.pop("extra", {}))
    options.update(sampling)
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


def _finish_reason(done_reason: object) -> str:
    return "length" if done_reason == "length" else "stop"


def _openai_usage(usage: Usage) -> Payload:
    prompt = usage.prompt_tokens or 0
    completion = usage.completion_tokens or 0
    return {"prompt_tokens": prompt, "completion_tokens": completion, "total_tokens": prompt + completion}


# --- Ollama clients, OpenAI backends ---------------------------------------------------------------------


class OllamaGenerateOverOpenAI(Translator):
    """/api/generate on an OpenAI backend: a chat completion, or a plain completion when ``raw``."""

    def __init__(self, *, client_model: str) -> None:
        super().__init__(OLLAMA, OPENAI, client_model=client_model)
        self.upstream_path = "/v1/chat/completions"
        self._chat_upstream = True

    def request(self, body: Payload, *, model: str, stream: bool) -> Payload:
        prompt = body.get("prompt") or ""
        if not isinstance(prompt, str):
            raise BadRequest("'prompt' must be a string", param="prompt")
        upstream: Payload = {"model": model}
        suffix = body.get("suffix")
        if body.get("raw") is True or suffix:
            self._chat_upstream = False
            self.upstream_path = "/v1/completions"
            upstream["prompt"] = prompt
            if suffix:  # the registry sends a suffix here only to a kind whose completions take it
                if not isinstance(suffix, str):
                    raise BadRequest("'suffix' must be a string", param="suffix")
                upstream["suffix"] = suffix
        else:
            messages: list[Payload] = []
            system = body.get("system")
            if system:
                messages.append({"role": "system", "content": system})
            messages.append(
                _openai_message({"role": "user", "content": prompt, "images": body.get("images")})
            )
            upstream["messages"] = messages
        if self._chat_upstream and body.get("logprobs") is True:
            upstream["logprobs"] = True
            top = body.get("top_logprobs")
            if type(top) is int and top > 0:
                upstream["top_logprobs"] = top
        limit_field = self.capabilities.max_tokens_field if self._chat_upstream else "max_tokens"
        _add_generation_fields(
            upstream, body, stream=stream, capabilities=self.capabilities, limit=limit_field
        )
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
        logprobs = _chat_logprobs(choice) if self._chat_upstream else None
        if logprobs is not None:
            out["logprobs"] = encode_logprobs(logprobs)
        return _final(out, choice.get("finish_reason"), openai_usage(body))

    def usage(self, upstream: object) -> Usage:
        return openai_usage(expect_dict(upstream, "response"))

    def stream(self) -> StreamTranslator:
        return _GenerateLines(self.client_model, chat_upstream=self._chat_upstream)


class _GenerateLines(StreamTranslator):
    """OpenAI chunks (chat or completion) -> Ollama generate lines. Text and thinking go out as they
    arrive; the ``done`` line comes from ``finish`` (with ``include_usage`` the token counts arrive in a
    chunk after the one with the ``finish_reason``). An upstream that ends without a ``finish_reason``
    was cut: ``BadGateway``."""

    __slots__ = ("_chat_upstream", "_created", "_created_at", "_finish_reason", "_model")

    def __init__(self, client_model: str, *, chat_upstream: bool) -> None:
        super().__init__()
        self._model = client_model
        self._chat_upstream = chat_upstream
        self._finish_reason: str | None = None
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
        logprobs = None
        if self._chat_upstream:
            delta = choice.get("delta")
            if not isinstance(delta, dict):
                return []
            text = delta.get("content")
            thinking = _reasoning(delta)
            logprobs = _chat_logprobs(choice) if choice.get("logprobs") else None
        else:
            text = choice.get("text")
        if not text and not thinking:
            return []
        line = self._line(text or "", thinking)
        if logprobs:
            line["logprobs"] = encode_logprobs(logprobs)
        return [line]

    def finish(self) -> list[Payload]:
        if self._finish_reason is None:
            raise BadGateway("backend returned an unexpected end of stream")
        return [_final(self._line("", None), self._finish_reason, self.usage)]

    def _line(self, text: str, thinking: str | None) -> Payload:
        line: Payload = {"model": self._model, "created_at": self._created_at, "response": text}
        if thinking:
            line["thinking"] = thinking
        line["done"] = False
        return line


def _add_generation_fields(
    upstream: Payload, body: Payload, *, stream: bool, capabilities: Capabilities, limit: str
) -> None:
    """``stream`` (with ``include_usage``), the mapped options (the token limit as ``limit``; options
    OpenAI lacks only for a kind that takes them) and ``format``."""
    upstream["stream"] = stream
    if stream:
        upstream["stream_options"] = {"include_usage": True}
    options = body.get("options")
    if options is not None:
        sampling = decode_options(options)
        for name in _SAMPLING_FIELDS:
            value = getattr(sampling, name)
            if value is not None:
                upstream[name] = value
        if sampling.max_tokens is not None:
            upstream[limit] = sampling.max_tokens
        if sampling.stop:
            upstream["stop"] = list(sampling.stop)
        encode_extra_sampling(sampling, capabilities, upstream)
    response_format = _response_format(body.get("format"))
    if response_format is not None:
        upstream["response_format"] = response_format


def _response_format(fmt: object) -> Payload | None:
    if fmt == "json":
        return {"type": "json_object"}
    if isinstance(fmt, dict):
        return {"type": "json_schema", "json_schema": {"name": "response", "schema": fmt}}
    return None


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


def _first_choice(body: Payload) -> Payload:
    choices = body.get("choices")
    if not isinstance(choices, list) or not choices:
        raise BadGateway("backend returned an unexpected response")
    return expect_dict(choices[0], "response")


def _created_at(body: Payload) -> str:
    created = body.get("created")
    return rfc3339(created if isinstance(created, int | float) else now_seconds())


def _chat_logprobs(choice: Payload) -> tuple[TokenLogprob, ...] | None:
    """The token logprobs of an upstream chat choice (``logprobs.content``), None when it has none."""
    logprobs = choice.get("logprobs")
    return decode_logprobs(logprobs.get("content")) if isinstance(logprobs, dict) else None


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
