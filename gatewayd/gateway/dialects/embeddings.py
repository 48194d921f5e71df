"""Embeddings, which exist in two dialects only: direct translators.

    /v1/embeddings on an Ollama backend    -> /api/embed
    /api/embed on an OpenAI backend        -> /v1/embeddings
    /api/embeddings on an OpenAI backend   -> /v1/embeddings (the legacy single ``prompt``)

Carried over: the input texts and ``dimensions``; ``encoding_format: "base64"`` (the openai client's
default) is answered with base64 of little-endian float32, as OpenAI does. Refused with ``BadRequest``:
token-array inputs for an Ollama backend.
"""

from __future__ import annotations

import base64
import struct
from typing import Any

from gatewayd.errors import BadGateway, BadRequest
from gatewayd.gateway.core.profile import Payload
from gatewayd.gateway.core.translation import EmbeddingTranslator
from gatewayd.gateway.core.usage import Usage
from gatewayd.gateway.core.wire import expect_dict
from gatewayd.gateway.dialects.ollama import OLLAMA, ollama_usage
from gatewayd.gateway.dialects.openai_chat import OPENAI, openai_usage


class OpenAIEmbeddingsOverOllama(EmbeddingTranslator):
    """/v1/embeddings on an Ollama backend. ``encoding_format: "base64"`` (the openai client's default) is
    answered with base64 of little-endian float32, as OpenAI does."""

    def __init__(self, *, client_model: str) -> None:
        super().__init__(OPENAI, OLLAMA, client_model=client_model)
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


class OllamaEmbedOverOpenAI(EmbeddingTranslator):
    """/api/embed on an OpenAI backend."""

    def __init__(self, *, client_model: str) -> None:
        super().__init__(OLLAMA, OPENAI, client_model=client_model)
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
        super().__init__(OLLAMA, OPENAI, client_model=client_model)
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


def _base64_floats(vector: list[Any]) -> str:
    """Base64 of little-endian float32, OpenAI's ``encoding_format: "base64"``."""
    try:
        packed = struct.pack(f"<{len(vector)}f", *vector)
    except struct.error:
        raise BadGateway("backend returned an unexpected embedding") from None
    return base64.b64encode(packed).decode("ascii")


def _as_is(vector: list[Any]) -> list[Any]:
    return vector


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
