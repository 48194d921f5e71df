"""Dialect translation between what a client speaks and what its backend speaks.

``translator(api, backend, client_model=...)`` picks one ``Translator`` per request:

    client API          Ollama backend                      OpenAI backend
    /v1/chat/...        OpenAIChatOverOllama                Passthrough
    /v1/completions     OpenAICompletionsOverOllama         Passthrough
    /v1/embeddings      OpenAIEmbeddingsOverOllama          Passthrough
    /api/chat           Passthrough                         OllamaChatOverOpenAI
    /api/generate       Passthrough                         OllamaGenerateOverOpenAI
    /api/embed          Passthrough                         OllamaEmbedOverOpenAI
    /api/embeddings     Passthrough                         OllamaEmbeddingsOverOpenAI

The cross-dialect translators live in ``translate_ollama_backend`` and ``translate_openai_backend``; what
each one carries over and drops is listed in those modules' docstrings.
"""

from __future__ import annotations

from collections.abc import Mapping
from types import MappingProxyType

from gatewayd.gateway.core.dialects import Api, Dialect, Usage
from gatewayd.gateway.core.translate_base import (
    Payload,
    StreamTranslator,
    Translator,
    anthropic_usage,
    expect_dict,
    ollama_usage,
    openai_usage,
)
from gatewayd.gateway.core.translate_ollama_backend import (
    OpenAIChatOverOllama,
    OpenAICompletionsOverOllama,
    OpenAIEmbeddingsOverOllama,
)
from gatewayd.gateway.core.translate_openai_backend import (
    OllamaChatOverOpenAI,
    OllamaEmbeddingsOverOpenAI,
    OllamaEmbedOverOpenAI,
    OllamaGenerateOverOpenAI,
)

__all__ = ["Passthrough", "Payload", "StreamTranslator", "Translator", "translator"]


def translator(api: Api, backend: Dialect, *, client_model: str) -> Translator:
    """A fresh translator for one request of ``api`` sent to a backend speaking ``backend``.

    ``client_model`` is the model name in the client's request: translated answers report it.
    """
    if api.dialect is backend:
        return Passthrough(api, backend, client_model=client_model)
    return _CROSS_DIALECT[api](api, backend, client_model=client_model)


_CROSS_DIALECT: Mapping[Api, type[Translator]] = MappingProxyType(
    {
        Api.OPENAI_CHAT: OpenAIChatOverOllama,
        Api.OPENAI_COMPLETIONS: OpenAICompletionsOverOllama,
        Api.OPENAI_EMBEDDINGS: OpenAIEmbeddingsOverOllama,
        Api.OLLAMA_CHAT: OllamaChatOverOpenAI,
        Api.OLLAMA_GENERATE: OllamaGenerateOverOpenAI,
        Api.OLLAMA_EMBED: OllamaEmbedOverOpenAI,
        Api.OLLAMA_EMBEDDINGS: OllamaEmbeddingsOverOpenAI,
    }
)


class Passthrough(Translator):
    """Client and backend speak the same dialect: only the model name in the request changes.

    Answers are relayed byte for byte and therefore keep the backend's model name. A streamed OpenAI
    answer carries token counts only if the client asked for ``stream_options.include_usage`` (adding it
    would add a chunk with empty ``choices`` the client did not ask for).
    """

    passthrough = True

    def request(self, body: Payload, *, model: str, stream: bool) -> Payload:
        """``body`` itself, its ``model`` set to the backend's name."""
        body["model"] = model
        return body

    def response(self, upstream: object) -> Payload:
        return expect_dict(upstream, "response")

    def usage(self, upstream: object) -> Usage:
        body = expect_dict(upstream, "response")
        if self.api.dialect is Dialect.ANTHROPIC:
            return anthropic_usage(body.get("usage"))
        return openai_usage(body) if self.api.dialect is Dialect.OPENAI else ollama_usage(body)

    def stream(self) -> StreamTranslator:
        if self.api.dialect is Dialect.ANTHROPIC:
            return _AnthropicUsageTap()
        return _OpenAIUsageTap() if self.api.dialect is Dialect.OPENAI else _OllamaUsageTap()


class _OpenAIUsageTap(StreamTranslator):
    """Lets OpenAI chunks through; keeps the counts of the last chunk with a ``usage`` object."""

    __slots__ = ()

    def event(self, payload: object) -> list[Payload]:
        chunk = expect_dict(payload, "stream event")
        if chunk.get("usage"):
            self.usage = openai_usage(chunk)
        return [chunk]


class _OllamaUsageTap(StreamTranslator):
    """Lets Ollama lines through; keeps the counts of the ``done`` line."""

    __slots__ = ()

    def event(self, payload: object) -> list[Payload]:
        line = expect_dict(payload, "stream event")
        if line.get("done") is True:
            self.usage = ollama_usage(line)
        return [line]


class _AnthropicUsageTap(StreamTranslator):
    """Lets Anthropic events through; keeps the counts of message_start (input) and message_delta
    (output)."""

    __slots__ = ()

    def event(self, payload: object) -> list[Payload]:
        event = expect_dict(payload, "stream event")
        kind = event.get("type")
        if kind == "message_start" and isinstance(event.get("message"), dict):
            anthropic_usage(event["message"].get("usage"), self.usage)
        elif kind == "message_delta":
            anthropic_usage(event.get("usage"), self.usage)
        return [event]
