import json

import pytest

from gatewayd.errors import BadGateway
from gatewayd.gateway.core.framing import SSE_DONE, Framing, encode_ndjson, encode_sse
from gatewayd.gateway.core.profile import DialectProfile
from gatewayd.gateway.core.translation import Passthrough
from gatewayd.gateway.core.usage import Usage
from gatewayd.gateway.dialects.ollama import OLLAMA
from gatewayd.gateway.dialects.openai_chat import OPENAI
from gatewayd.gateway.dialects.registry import Api, translator
from tests.unit.gateway.dialects.harness import pump


@pytest.mark.parametrize("api", [api for api in Api if api is not Api.ANTHROPIC_COUNT_TOKENS])
@pytest.mark.parametrize("backend", [OPENAI, OLLAMA])
def test_translator_targets_the_backends_own_api(api: Api, backend: DialectProfile) -> None:
    translation = translator(api, backend, client_model="public")
    assert translation.passthrough is (api.dialect is backend)
    assert isinstance(translation, Passthrough) is translation.passthrough
    assert translation.upstream_path.startswith("/v1/" if backend is OPENAI else "/api/")
    assert translation.upstream.framing is (Framing.SSE if backend is OPENAI else Framing.NDJSON)
    if translation.passthrough:
        assert translation.upstream_path == api.path


def test_passthrough_only_swaps_the_model_name_and_returns_answers_as_they_are() -> None:
    translation = translator(Api.OPENAI_CHAT, OPENAI, client_model="public")
    body = {"model": "public", "messages": [{"role": "user", "content": "hi"}], "stream": True, "top_k": 3}
    upstream = translation.request(body, model="llama-3-8b", stream=True)
    assert upstream is body
    assert upstream == {
        "model": "llama-3-8b",
        "messages": [{"role": "user", "content": "hi"}],
        "stream": True,
        "top_k": 3,
    }
    answer = {
        "id": "x",
        "model": "llama-3-8b",
        "choices": [],
        "usage": {"prompt_tokens": 3, "completion_tokens": 4},
    }
    assert translation.response(answer) is answer
    assert translation.usage(answer) == Usage(3, 4)
    with pytest.raises(BadGateway, match="backend returned an unexpected response"):
        translation.usage([answer])


def test_passthrough_ollama_usage_comes_from_the_final_counts() -> None:
    translation = translator(Api.OLLAMA_GENERATE, OLLAMA, client_model="public")
    assert translation.usage(
        {"response": "hi", "done": True, "prompt_eval_count": 5, "eval_count": 2}
    ) == Usage(5, 2)
    assert translation.usage({"embedding": [0.1]}) == Usage()


def test_passthrough_openai_stream_is_unchanged_and_its_usage_chunk_is_counted() -> None:
    chunks = [
        {
            "id": "c",
            "object": "chat.completion.chunk",
            "model": "b",
            "choices": [{"index": 0, "delta": {"content": "hi"}}],
            "usage": None,
        },
        {
            "id": "c",
            "object": "chat.completion.chunk",
            "model": "b",
            "choices": [],
            "usage": {"prompt_tokens": 7, "completion_tokens": 1, "total_tokens": 8},
        },
    ]
    upstream = b"".join(encode_sse(chunk) for chunk in chunks) + SSE_DONE
    client_bytes, usage = pump(translator(Api.OPENAI_CHAT, OPENAI, client_model="public"), upstream)
    assert client_bytes == upstream
    assert usage == Usage(7, 1)


def test_passthrough_openai_stream_without_usage_reports_none() -> None:
    upstream = encode_sse({"choices": [{"index": 0, "delta": {"content": "hi"}}]}) + SSE_DONE
    assert pump(translator(Api.OPENAI_COMPLETIONS, OPENAI, client_model="m"), upstream)[1] == Usage()


def test_passthrough_ollama_stream_is_unchanged_and_its_done_line_is_counted() -> None:
    lines = [
        {
            "model": "b",
            "created_at": "2024-05-01T12:00:00.1Z",
            "message": {"role": "assistant", "content": "hi"},
            "done": False,
        },
        {
            "model": "b",
            "created_at": "2024-05-01T12:00:00.2Z",
            "message": {"role": "assistant", "content": ""},
            "done": True,
            "done_reason": "stop",
            "prompt_eval_count": 26,
            "eval_count": 2,
        },
    ]
    upstream = b"".join(encode_ndjson(line) for line in lines)
    client_bytes, usage = pump(translator(Api.OLLAMA_CHAT, OLLAMA, client_model="public"), upstream)
    assert [json.loads(line) for line in client_bytes.splitlines()] == lines
    assert usage == Usage(26, 2)


def test_passthrough_stream_rejects_an_event_that_is_not_an_object() -> None:
    stream = translator(Api.OLLAMA_CHAT, OLLAMA, client_model="m").stream()
    with pytest.raises(BadGateway, match="backend returned an unexpected stream event"):
        stream.event([1, 2])
