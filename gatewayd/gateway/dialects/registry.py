"""The registry: every client-facing endpoint that carries a model, its dialect, and how a request of it
reaches a backend of any dialect.

    Api (the endpoint)     path                   dialect   chat codec
    openai.chat            /v1/chat/completions   OPENAI    openai_chat.ChatClient
    openai.completions     /v1/completions        OPENAI    -
    openai.embeddings      /v1/embeddings         OPENAI    -
    ollama.chat            /api/chat              OLLAMA    ollama.ChatClient
    ollama.generate        /api/generate          OLLAMA    ollama.GenerateClient (chat-only backends)
    ollama.embed           /api/embed             OLLAMA    -
    ollama.embeddings      /api/embeddings        OLLAMA    - (legacy, single prompt)
    openai.responses       /v1/responses          RESPONSES openai_responses.ResponsesClient
    anthropic.messages     /v1/messages           ANTHROPIC anthropic.AnthropicClient
    anthropic.count_tokens /v1/messages/count_tokens ANTHROPIC - (answered by the edge: token_count)

``translator(api, backend_dialect)`` picks the request's ``Translator``: a ``Passthrough`` when the
backend speaks the endpoint's dialect, else a direct translator where one is listed (``DIRECT``), else
the client codec of the endpoint with the chat codec of the backend's dialect (``BACKEND_CHAT``). A
completion with a ``suffix`` (fill in the middle) goes where the backend's kind can infill
(``core.capability.Infill``): its dialect's own completion endpoint, llama-server's ``/infill``
(``infill.LlamaInfill``), or nowhere (``Unsupported``). Every translator is given the backend
kind's ``Capabilities``.
"""

from __future__ import annotations

import enum
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from types import MappingProxyType
from typing import Any

from gatewayd.errors import BadRequest, Unsupported
from gatewayd.gateway.core.capability import PLAIN, Capabilities, Infill
from gatewayd.gateway.core.codec import BackendCodec, ClientCodec
from gatewayd.gateway.core.framing import Framing
from gatewayd.gateway.core.profile import DialectProfile
from gatewayd.gateway.core.requestbody import BodyRules
from gatewayd.gateway.core.translation import CodecTranslator, Passthrough, Translator
from gatewayd.gateway.dialects import (
    anthropic,
    completions,
    embeddings,
    infill,
    ollama,
    openai_chat,
    openai_responses,
)
from gatewayd.gateway.dialects.anthropic import ANTHROPIC
from gatewayd.gateway.dialects.ollama import OLLAMA
from gatewayd.gateway.dialects.openai_chat import OPENAI
from gatewayd.gateway.dialects.openai_responses import RESPONSES


class Operation(enum.Enum):
    CHAT = "chat"  # messages in, an assistant message out: translated through core.chat
    COMPLETION = "completion"  # a prompt in, text out
    EMBEDDING = "embedding"  # text in, vectors out; never streamed, admitted ahead of generations
    COUNT_TOKENS = "count_tokens"  # a prompt's token count: never streamed, not relayed as such


_NO_RULES = BodyRules()
_OLLAMA_RULES = BodyRules(ollama_options=True)


@dataclass(frozen=True, slots=True)
class Endpoint:
    """A client-facing endpoint: its path, its dialect, what it does, and its dialect-specific parts."""

    path: str
    dialect: DialectProfile
    operation: Operation
    #: one keep-alive event for a stream waiting for its backend to start: (model, backend id) -> bytes
    keepalive: Callable[[str, str], bytes] | None = None
    #: endpoints translated through core.chat: a fresh client codec (one per request)
    client_codec: Callable[[], ClientCodec] | None = None
    #: the fields of its body gatewayd checks before routing (``core.requestbody``)
    body: BodyRules = _NO_RULES


class Api(enum.StrEnum):
    """A client-facing endpoint that carries a model (the access log's ``api`` field)."""

    OPENAI_CHAT = "openai.chat"
    OPENAI_COMPLETIONS = "openai.completions"
    OPENAI_EMBEDDINGS = "openai.embeddings"
    OLLAMA_CHAT = "ollama.chat"
    OLLAMA_GENERATE = "ollama.generate"
    OLLAMA_EMBED = "ollama.embed"
    OLLAMA_EMBEDDINGS = "ollama.embeddings"
    OPENAI_RESPONSES = "openai.responses"
    ANTHROPIC_MESSAGES = "anthropic.messages"
    ANTHROPIC_COUNT_TOKENS = "anthropic.count_tokens"

    @property
    def endpoint(self) -> Endpoint:
        return ENDPOINTS[self]

    @property
    def path(self) -> str:
        return ENDPOINTS[self].path

    @property
    def dialect(self) -> DialectProfile:
        return ENDPOINTS[self].dialect

    @property
    def framing(self) -> Framing:
        return ENDPOINTS[self].dialect.framing

    @property
    def is_embedding(self) -> bool:
        return ENDPOINTS[self].operation is Operation.EMBEDDING

    def wants_stream(self, body: Mapping[str, Any]) -> bool:
        """Whether the client asked for a streamed answer (embeddings never stream)."""
        endpoint = ENDPOINTS[self]
        return endpoint.operation in _STREAMABLE and endpoint.dialect.wants_stream(body)


ENDPOINTS: Mapping[Api, Endpoint] = MappingProxyType(
    {
        Api.OPENAI_CHAT: Endpoint(
            "/v1/chat/completions",
            OPENAI,
            Operation.CHAT,
            openai_chat.keepalive,
            openai_chat.ChatClient,
            body=BodyRules(messages="required"),
        ),
        Api.OPENAI_COMPLETIONS: Endpoint(
            "/v1/completions", OPENAI, Operation.COMPLETION, openai_chat.keepalive
        ),
        Api.OPENAI_EMBEDDINGS: Endpoint("/v1/embeddings", OPENAI, Operation.EMBEDDING),
        Api.OLLAMA_CHAT: Endpoint(
            "/api/chat",
            OLLAMA,
            Operation.CHAT,
            ollama.chat_keepalive,
            ollama.ChatClient,
            body=BodyRules(messages="optional", ollama_options=True),
        ),
        Api.OLLAMA_GENERATE: Endpoint(
            "/api/generate",
            OLLAMA,
            Operation.COMPLETION,
            ollama.generate_keepalive,
            ollama.GenerateClient,
            body=_OLLAMA_RULES,
        ),
        Api.OLLAMA_EMBED: Endpoint("/api/embed", OLLAMA, Operation.EMBEDDING, body=_OLLAMA_RULES),
        Api.OLLAMA_EMBEDDINGS: Endpoint(
            "/api/embeddings",
            OLLAMA,
            Operation.EMBEDDING,
            body=BodyRules(ollama_options=True, model_in_name=True),
        ),
        Api.OPENAI_RESPONSES: Endpoint(
            "/v1/responses",
            RESPONSES,
            Operation.CHAT,
            openai_responses.keepalive,
            openai_responses.ResponsesClient,
        ),
        Api.ANTHROPIC_MESSAGES: Endpoint(
            "/v1/messages",
            ANTHROPIC,
            Operation.CHAT,
            anthropic.keepalive,
            anthropic.AnthropicClient,
            body=BodyRules(messages="required"),
        ),
        Api.ANTHROPIC_COUNT_TOKENS: Endpoint("/v1/messages/count_tokens", ANTHROPIC, Operation.COUNT_TOKENS),
    }
)
_STREAMABLE = frozenset({Operation.CHAT, Operation.COMPLETION})

#: POST paths of the endpoints, and the API each one speaks
ROUTES: Mapping[str, Api] = MappingProxyType({endpoint.path: api for api, endpoint in ENDPOINTS.items()})

#: a backend dialect -> a fresh codec for a chat request sent to it
BACKEND_CHAT: Mapping[DialectProfile, Callable[[], BackendCodec]] = MappingProxyType(
    {OPENAI: openai_chat.ChatBackend, OLLAMA: ollama.ChatBackend, ANTHROPIC: anthropic.AnthropicBackend}
)

#: (client endpoint, backend dialect) -> a direct translator, where the request does not go through core.chat
DIRECT: Mapping[tuple[Api, DialectProfile], Callable[..., Translator]] = MappingProxyType(
    {
        (Api.OPENAI_COMPLETIONS, OLLAMA): completions.OpenAICompletionsOverOllama,
        (Api.OPENAI_EMBEDDINGS, OLLAMA): embeddings.OpenAIEmbeddingsOverOllama,
        (Api.OLLAMA_GENERATE, OPENAI): completions.OllamaGenerateOverOpenAI,
        (Api.OLLAMA_EMBED, OPENAI): embeddings.OllamaEmbedOverOpenAI,
        (Api.OLLAMA_EMBEDDINGS, OPENAI): embeddings.OllamaEmbeddingsOverOpenAI,
    }
)


#: path prefixes -> the dialect errors of other (non-inference) routes under them speak; the longest match
#: wins, OpenAI's shape elsewhere
PATH_DIALECTS: tuple[tuple[str, DialectProfile], ...] = (("/api/", OLLAMA), ("/v1/messages", ANTHROPIC))


DEFAULT_DIALECT: DialectProfile = OPENAI


def dialect_of_path(path: str) -> DialectProfile:
    """The dialect of the API a path belongs to (for errors of routes that are not inference endpoints)."""
    best, found = 0, DEFAULT_DIALECT
    for prefix, dialect in PATH_DIALECTS:
        if len(prefix) > best and path.startswith(prefix):
            best, found = len(prefix), dialect
    return found


def refusal(api: Api, capabilities: Capabilities, body: Mapping[str, Any]) -> Unsupported | None:
    """Why a backend of a kind that accepts ``capabilities`` cannot serve this request without silently
    changing it (no fill in the middle for a ``suffix``, one choice for an ``n`` > 1), or None. The relay
    asks before it wakes or starts a backend; the translators refuse the same."""
    operation = ENDPOINTS[api].operation
    if operation is Operation.EMBEDDING:
        return None
    if operation is Operation.COMPLETION and body.get("suffix") and capabilities.infill is Infill.NONE:
        return Unsupported("cannot fill in the middle (the request has a 'suffix')", param="suffix")
    if not capabilities.choices and body.get("n") not in (None, 1):
        return Unsupported(ollama.ONE_CHOICE, param="n")
    return None


def translator(
    api: Api,
    backend: DialectProfile,
    *,
    client_model: str,
    capabilities: Capabilities = PLAIN,
    body: Mapping[str, Any] | None = None,
) -> Translator:
    """A fresh translator for one request of ``api`` (whose parsed ``body`` it is) sent to a backend
    speaking ``backend``, of a kind that accepts ``capabilities``.

    ``client_model`` is the model name translated answers report. Raises BadRequest when backends of
    that dialect cannot serve the endpoint, Unsupported when this backend cannot fill in the middle
    and the body asks for it."""
    endpoint = ENDPOINTS[api]
    found: Translator
    if body is not None and endpoint.operation is Operation.COMPLETION and body.get("suffix"):
        refused = refusal(api, capabilities, body)
        if refused is not None:
            raise refused
        if capabilities.infill is Infill.LLAMA_INFILL:
            found = infill.LlamaInfill(endpoint.dialect, client_model=client_model)
            found.capabilities = capabilities
            return found
        # otherwise the dialect's own completion endpoint takes the suffix: relayed or translated below
    if endpoint.dialect is backend:
        return Passthrough(backend, endpoint.path, client_model=client_model)
    direct = DIRECT.get((api, backend))
    if direct is not None:
        found = direct(client_model=client_model)
        found.capabilities = capabilities
        return found
    backend_codec = BACKEND_CHAT.get(backend)
    if endpoint.client_codec is not None and backend_codec is not None:
        codec = backend_codec()
        codec.capabilities = capabilities
        codecs = (endpoint.client_codec(), codec)
        found = CodecTranslator(endpoint.dialect, backend, codecs, client_model=client_model)
        found.capabilities = capabilities
        return found
    raise BadRequest(f"{endpoint.path} is not served by backends that speak {backend.name}'s API")
