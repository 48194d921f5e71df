"""Fill in the middle on llama-server: a completion with a ``suffix`` (editor autocomplete), sent to its
native ``POST /infill`` (its /v1/completions has no ``suffix``).

    /v1/completions with suffix  -> /infill -> a ``text_completion`` (chunks)
    /api/generate with suffix    -> /infill -> Ollama generate lines

/infill takes ``input_prefix`` (the prompt) and ``input_suffix``, and every option of llama-server's
/completion (``n_predict``, ``temperature``, ``top_k``, ``top_p``, ``min_p``, ``seed``, ``stop``,
``repeat_penalty``, ...). It answers ``{"content", "stop", "stop_type", "tokens_predicted",
"tokens_evaluated", ...}``, or streams SSE ``data:`` events of that shape (no ``[DONE]``) until one with
``"stop": true``.

Carried over: the prompt and suffix, ``stream`` (the OpenAI client's ``stream_options.include_usage``
gets its usage chunk), the token limit, ``stop``, and the sampling settings of ``Sampling`` with the
backend options in its extras. Dropped: ``n`` (refused above 1: Unsupported), ``echo``, ``logprobs``,
Ollama's ``system``, ``images``, ``template``, ``context``, ``format``.
"""

from __future__ import annotations

from typing import Any

from gatewayd.errors import BadGateway, BadRequest, Unsupported
from gatewayd.gateway.core.profile import DialectProfile, Payload
from gatewayd.gateway.core.translation import StreamTranslator, Translator
from gatewayd.gateway.core.usage import Usage, token_count
from gatewayd.gateway.core.wire import expect_dict, new_id, now_seconds, options_stop, reported_error, rfc3339
from gatewayd.gateway.dialects.ollama import ONE_CHOICE, decode_options
from gatewayd.gateway.dialects.openai_chat import OPENAI, OpenAIProfile, decode_sampling


class LlamaServerProfile(OpenAIProfile):
    """llama-server's native endpoints: SSE like OpenAI's, but a stream ends with its body (no
    ``[DONE]``); errors in OpenAI's shape."""

    name = "llama-server"
    done_data: str | None = None
    end_bytes = b""


LLAMA_SERVER = LlamaServerProfile()
#: ``Sampling`` fields with the same name in llama-server's /completion options
_SAMPLING = ("temperature", "top_p", "top_k", "min_p", "seed", "frequency_penalty", "presence_penalty")


class LlamaInfill(Translator):
    """A completion with a suffix, from an OpenAI (/v1/completions) or an Ollama (/api/generate) client,
    on llama-server's /infill."""

    def __init__(self, client: DialectProfile, *, client_model: str) -> None:
        super().__init__(client, LLAMA_SERVER, client_model=client_model)
        self.upstream_path = "/infill"
        self._include_usage = False

    def request(self, body: Payload, *, model: str, stream: bool) -> Payload:
        prompt, suffix = body.get("prompt") or "", body.get("suffix")
        if isinstance(prompt, list) and len(prompt) == 1:
            prompt = prompt[0]
        if not isinstance(prompt, str):
            raise BadRequest("llama-server's /infill takes one prompt, as a string", param="prompt")
        if not isinstance(suffix, str):
            raise BadRequest("'suffix' must be a string", param="suffix")
        upstream: Payload = {"model": model, "input_prefix": prompt, "input_suffix": suffix, "stream": stream}
        if self.client is OPENAI:
            if body.get("n") not in (None, 1):
                raise Unsupported(ONE_CHOICE, param="n")
            sampling: dict[str, Any] = decode_sampling(body)
            extra = sampling.pop("extra", {})
            limit = body.get("max_tokens")
            stop = options_stop(body.get("stop"), "stop")
            stream_options = body.get("stream_options")
            self._include_usage = (
                stream and isinstance(stream_options, dict) and stream_options.get("include_usage") is True
            )
        else:
            decoded = decode_options(body.get("options"))
            sampling = {name: getattr(decoded, name) for name in (*_SAMPLING, "repeat_penalty")}
            extra, limit, stop = dict(decoded.extra), decoded.max_tokens, list(decoded.stop) or None
        upstream.update(extra)
        upstream.update((name, value) for name, value in sampling.items() if value is not None)
        if limit is not None:
            upstream["n_predict"] = limit
        if stop:
            upstream["stop"] = stop
        return upstream

    def response(self, upstream: object) -> Payload:
        body = expect_dict(upstream, "response")
        if "error" in body:
            reported_error(body)
        text = body.get("content")
        if not isinstance(text, str):
            raise BadGateway("backend returned an unexpected response")
        usage = _usage(body)
        if self.client is OPENAI:
            choice = {"text": text, "index": 0, "logprobs": None, "finish_reason": _finish_reason(body)}
            out = _completion(new_id("cmpl-"), now_seconds(), self.client_model, [choice])
            out["usage"] = _openai_usage(usage)
            return out
        return _final(
            {"model": self.client_model, "created_at": rfc3339(now_seconds()), "response": text}, body
        )

    def usage(self, upstream: object) -> Usage:
        return _usage(expect_dict(upstream, "response"))

    def stream(self) -> StreamTranslator:
        return _InfillStream(self.client, self.client_model, include_usage=self._include_usage)


class _InfillStream(StreamTranslator):
    """/infill events -> OpenAI ``text_completion`` chunks or Ollama generate lines. The event with
    ``"stop": true`` ends the answer (with its counts); an upstream that ends without one was cut."""

    __slots__ = ("_created", "_done", "_id", "_include_usage", "_model", "_openai")

    def __init__(self, client: DialectProfile, client_model: str, *, include_usage: bool) -> None:
        super().__init__()
        self._openai = client is OPENAI
        self._model = client_model
        self._include_usage = include_usage
        self._id = new_id("cmpl-")
        self._created = now_seconds()
        self._done = False

    def event(self, payload: object) -> list[Payload]:
        event = expect_dict(payload, "stream event")
        if "error" in event:
            reported_error(event)
        text = event.get("content")
        text = text if isinstance(text, str) else ""
        stop = event.get("stop") is True
        out: list[Payload] = []
        if self._openai:
            if text:
                out.append(self._chunk([{"text": text, "index": 0, "logprobs": None, "finish_reason": None}]))
            if stop:
                reason = _finish_reason(event)
                out.append(self._chunk([{"text": "", "index": 0, "logprobs": None, "finish_reason": reason}]))
        elif text:
            out.append(self._line(text))
        if stop:
            self._done = True
            self.usage = _usage(event)
            if self._openai and self._include_usage:
                usage_chunk = self._chunk([])
                usage_chunk["usage"] = _openai_usage(self.usage)
                out.append(usage_chunk)
            elif not self._openai:
                line = self._line("")
                del line["done"]
                out.append(_final(line, event))
        return out

    def finish(self) -> list[Payload]:
        if not self._done:
            raise BadGateway("backend returned an unexpected end of stream")
        return []

    def _chunk(self, choices: list[Payload]) -> Payload:
        return _completion(self._id, self._created, self._model, choices)

    def _line(self, text: str) -> Payload:
        return {"model": self._model, "created_at": rfc3339(self._created), "response": text, "done": False}


def _completion(completion_id: str, created: int, model: str, choices: list[Payload]) -> Payload:
    return {
        "id": completion_id,
        "object": "text_completion",
        "created": created,
        "model": model,
        "choices": choices,
    }


def _finish_reason(event: Payload) -> str:
    return "length" if event.get("stop_type") == "limit" else "stop"


def _usage(event: Payload) -> Usage:
    return Usage(token_count(event.get("tokens_evaluated")), token_count(event.get("tokens_predicted")))


def _openai_usage(usage: Usage) -> Payload:
    prompt, completion = usage.prompt_tokens or 0, usage.completion_tokens or 0
    return {"prompt_tokens": prompt, "completion_tokens": completion, "total_tokens": prompt + completion}


def _final(out: Payload, event: Payload) -> Payload:
    """Complete ``out`` as Ollama's last object: ``done``, ``done_reason`` and the counts."""
    usage = _usage(event)
    out["done"] = True
    out["done_reason"] = "length" if event.get("stop_type") == "limit" else "stop"
    out["total_duration"] = 0
    if usage.prompt_tokens is not None:
        out["prompt_eval_count"] = usage.prompt_tokens
    if usage.completion_tokens is not None:
        out["eval_count"] = usage.completion_tokens
    return out
