"""The registry: which translator a request gets, and which dialect a path speaks."""

from collections.abc import Mapping
from typing import Any

import pytest

from gatewayd.config import Backend, BackendKind
from gatewayd.errors import BadRequest, RequestError
from gatewayd.gateway.backends.kinds import KINDS, auth_headers
from gatewayd.gateway.core.framing import Framing
from gatewayd.gateway.core.profile import DialectProfile, Payload
from gatewayd.gateway.core.translation import CodecTranslator, Passthrough
from gatewayd.gateway.core.usage import Usage
from gatewayd.gateway.dialects.anthropic import ANTHROPIC
from gatewayd.gateway.dialects.ollama import OLLAMA
from gatewayd.gateway.dialects.openai_chat import OPENAI
from gatewayd.gateway.dialects.registry import ENDPOINTS, ROUTES, Api, Operation, dialect_of_path, translator


class Elsewhere(DialectProfile):
    """A dialect no endpoint and no codec of the registry knows."""

    name = "elsewhere"
    framing = Framing.SSE
    event_mark = b"data:"
    usage_mark = b'"usage"'

    def wants_stream(self, body: Mapping[str, Any]) -> bool:
        return False

    def usage(self, payload: Payload) -> Usage:
        return Usage()

    def stream_usage(self, usage: Usage, payload: Payload) -> Usage:
        return usage

    def error_body(self, error: RequestError) -> bytes:
        return b"{}"

    def stream_error(self, message: str, code: str) -> Payload:
        return {}


def test_every_endpoint_is_routed_and_chat_endpoints_have_a_codec() -> None:
    assert {ROUTES[endpoint.path] for endpoint in ENDPOINTS.values()} == set(Api)
    for api, endpoint in ENDPOINTS.items():
        assert endpoint.client_codec is not None or endpoint.operation is not Operation.CHAT, api
        never_streamed = endpoint.operation in (Operation.EMBEDDING, Operation.COUNT_TOKENS)
        assert (endpoint.keepalive is not None) is not never_streamed, api


def test_same_dialect_passes_through_and_chat_across_dialects_goes_through_the_codecs() -> None:
    assert isinstance(translator(Api.OLLAMA_CHAT, OLLAMA, client_model="m"), Passthrough)
    assert isinstance(translator(Api.OLLAMA_CHAT, OPENAI, client_model="m"), CodecTranslator)
    assert isinstance(translator(Api.OPENAI_CHAT, OLLAMA, client_model="m"), CodecTranslator)
    assert not isinstance(translator(Api.OLLAMA_GENERATE, OPENAI, client_model="m"), CodecTranslator)


def test_an_endpoint_a_dialect_cannot_serve_is_a_bad_request() -> None:
    with pytest.raises(BadRequest, match="/v1/embeddings is not served by backends that speak elsewhere"):
        translator(Api.OPENAI_EMBEDDINGS, Elsewhere(), client_model="m")


def test_errors_of_other_routes_speak_the_dialect_of_their_path() -> None:
    assert dialect_of_path("/api/tags") is OLLAMA
    assert dialect_of_path("/v1/models") is OPENAI
    assert dialect_of_path("/status") is OPENAI
    assert dialect_of_path("/v1/messages/batches") is ANTHROPIC


def test_each_backend_kind_names_its_dialect_and_sends_its_key_as_a_bearer_token() -> None:
    assert {kind: KINDS[kind].dialect for kind in BackendKind} == {
        BackendKind.OPENAI: OPENAI,
        BackendKind.LLAMA_SERVER: OPENAI,
        BackendKind.VLLM: OPENAI,
        BackendKind.OLLAMA: OLLAMA,
        BackendKind.ANTHROPIC: ANTHROPIC,
    }
    assert auth_headers(Backend(id="b", url="http://h", api_key="sk-1")) == {"Authorization": "Bearer sk-1"}
    assert auth_headers(Backend(id="b", url="http://h")) == {}
    hosted = Backend(id="b", url="http://h", api_key="sk-1", kind=BackendKind.ANTHROPIC)
    assert auth_headers(hosted) == {"anthropic-version": "2023-06-01", "x-api-key": "sk-1"}
