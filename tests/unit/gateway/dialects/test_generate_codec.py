"""/api/generate through core.chat (what a backend that only chats gets) answers as the direct
translator for OpenAI-compatible backends does."""

import base64
import json
from typing import Any

import pytest

from gatewayd.gateway.core.framing import SSE_DONE, encode_sse
from gatewayd.gateway.core.translation import CodecTranslator, Translator
from gatewayd.gateway.dialects import ollama, openai_chat
from gatewayd.gateway.dialects.completions import OllamaGenerateOverOpenAI
from gatewayd.gateway.dialects.ollama import OLLAMA
from gatewayd.gateway.dialects.openai_chat import OPENAI
from tests.unit.gateway.dialects.harness import pump

CREATED = 1741569952
PNG = base64.b64encode(b"\x89PNG\r\n\x1a\n\x00\x00\x00\rIHDR").decode()


def both() -> tuple[Translator, Translator]:
    codecs = (ollama.GenerateClient(), openai_chat.ChatBackend())
    return (
        OllamaGenerateOverOpenAI(client_model="public"),
        CodecTranslator(OLLAMA, OPENAI, codecs, client_model="public"),
    )


def chunk(delta: dict[str, Any], finish_reason: str | None = None) -> dict[str, Any]:
    choice = {"index": 0, "delta": delta, "finish_reason": finish_reason}
    return {
        "id": "c",
        "object": "chat.completion.chunk",
        "created": CREATED,
        "model": "b",
        "choices": [choice],
    }


@pytest.mark.parametrize(
    "body",
    [
        {"model": "public", "prompt": "Why?", "stream": False},
        {"model": "public", "prompt": "Why?", "system": "Be brief.", "images": [PNG], "format": "json"},
        {"model": "public", "prompt": "x", "options": {"temperature": 0.1, "num_predict": 9, "stop": "END"}},
        {"model": "public", "prompt": "x", "format": {"type": "object"}, "options": {"top_k": 4}},
    ],
)
def test_the_upstream_request_is_the_direct_translators(body: dict[str, Any]) -> None:
    direct, codec = both()
    stream = OLLAMA.wants_stream(body)
    assert codec.request(dict(body), model="b", stream=stream) == direct.request(
        dict(body), model="b", stream=stream
    )
    assert codec.upstream_path == direct.upstream_path == "/v1/chat/completions"


def test_the_whole_answer_and_the_stream_are_the_direct_translators() -> None:
    answer = {
        "id": "x",
        "created": CREATED,
        "model": "b",
        "choices": [
            {
                "index": 0,
                "message": {"role": "assistant", "content": "Rayleigh.", "reasoning_content": "hm"},
                "finish_reason": "length",
            }
        ],
        "usage": {"prompt_tokens": 5, "completion_tokens": 2},
    }
    direct, codec = both()
    for translation in (direct, codec):
        translation.request({"model": "public", "prompt": "Why?"}, model="b", stream=False)
    assert codec.response(answer) == direct.response(answer)
    assert codec.usage(answer) == direct.usage(answer)
    upstream = (
        b"".join(
            encode_sse(c)
            for c in (
                chunk({"role": "assistant", "reasoning_content": "hm"}),
                chunk({"content": "Ray"}),
                chunk({"content": "leigh"}, "stop"),
            )
        )
        + SSE_DONE
    )
    direct, codec = both()
    for translation in (direct, codec):
        translation.request({"model": "public", "prompt": "Why?"}, model="b", stream=True)
    (direct_bytes, direct_usage), (codec_bytes, codec_usage) = pump(direct, upstream), pump(codec, upstream)
    assert [json.loads(line) for line in codec_bytes.splitlines()] == [
        json.loads(line) for line in direct_bytes.splitlines()
    ]
    assert codec_usage == direct_usage
