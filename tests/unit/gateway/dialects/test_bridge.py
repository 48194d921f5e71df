"""/v1/messages and /v1/responses through the registry: a client codec composed with a backend's.
Tool-call ids stay the same from the backend's stream to the client's events and back into the follow-up
turn, also when the backend gives none (Ollama)."""

from __future__ import annotations

import json
from typing import Any

from gatewayd.gateway.core.translation import CodecTranslator, Passthrough
from gatewayd.gateway.dialects.anthropic import ANTHROPIC
from gatewayd.gateway.dialects.ollama import OLLAMA
from gatewayd.gateway.dialects.openai_chat import OPENAI
from gatewayd.gateway.dialects.registry import Api, translator

TOOLS = [{"name": "Write", "input_schema": {"type": "object"}}]
ARGS = {"file_path": "out.txt", "content": "hi"}


def _messages(*extra: dict[str, Any]) -> dict[str, Any]:
    messages = [{"role": "user", "content": "write it"}, *extra]
    return {"model": "m", "max_tokens": 50, "tools": TOOLS, "messages": messages, "stream": True}


def test_each_backend_dialect_gets_its_own_path() -> None:
    expected = {OPENAI: "/v1/chat/completions", OLLAMA: "/api/chat", ANTHROPIC: "/v1/messages"}
    for api in (Api.ANTHROPIC_MESSAGES, Api.OPENAI_RESPONSES):
        for dialect, path in expected.items():
            translation = translator(api, dialect, client_model="m")
            assert translation.upstream_path == path
            assert translation.upstream is dialect
    assert isinstance(translator(Api.ANTHROPIC_MESSAGES, ANTHROPIC, client_model="m"), Passthrough)
    assert isinstance(translator(Api.OPENAI_RESPONSES, ANTHROPIC, client_model="m"), CodecTranslator)


def _events(translation: CodecTranslator, upstream: list[Any]) -> list[dict[str, Any]]:
    stream = translation.stream()
    return [p for payload in upstream for p in stream.event(payload)] + stream.finish()


def test_an_ollama_tool_call_gets_one_id_from_the_stream_to_the_follow_up() -> None:
    translation = translator(Api.ANTHROPIC_MESSAGES, OLLAMA, client_model="m")
    assert isinstance(translation, CodecTranslator)
    body = translation.request(_messages(), model="llama", stream=True)
    assert body["tools"][0]["function"]["name"] == "Write"
    line = {"model": "llama", "created_at": "2025-01-01T00:00:00Z", "done": False}
    call = {"function": {"name": "Write", "arguments": ARGS}}  # Ollama: no id, arguments as an object
    upstream = [
        {**line, "message": {"role": "assistant", "content": "", "tool_calls": [call]}},
        {
            **line,
            "message": {"role": "assistant", "content": ""},
            "done": True,
            "done_reason": "stop",
            "eval_count": 3,
        },
    ]
    out = _events(translation, upstream)
    start = next(p for p in out if p["type"] == "content_block_start")
    call_id = start["content_block"]["id"]
    assert call_id
    partial = "".join(p["delta"]["partial_json"] for p in out if p["type"] == "content_block_delta")
    assert json.loads(partial) == ARGS
    assert out[-2]["delta"]["stop_reason"] == "tool_use"
    # the follow-up turn hands the id back; Ollama gets the tool's name for it
    follow_up = _messages(
        {
            "role": "assistant",
            "content": [{"type": "tool_use", "id": call_id, "name": "Write", "input": ARGS}],
        },
        {"role": "user", "content": [{"type": "tool_result", "tool_use_id": call_id, "content": "written"}]},
    )
    second = translator(Api.ANTHROPIC_MESSAGES, OLLAMA, client_model="m")
    upstream_body = second.request(follow_up, model="llama", stream=True)
    assert upstream_body["messages"][-1] == {"role": "tool", "content": "written", "tool_name": "Write"}


def test_openai_chat_arguments_in_pieces_and_an_id_made_up_once() -> None:
    translation = translator(Api.OPENAI_RESPONSES, OPENAI, client_model="m")
    assert isinstance(translation, CodecTranslator)
    translation.request({"model": "m", "input": "go", "stream": True}, model="gpt", stream=True)
    text = json.dumps(ARGS)
    base = {"id": "chatcmpl-1", "object": "chat.completion.chunk", "model": "gpt", "created": 1}
    chunks = [
        {
            **base,
            "choices": [{"index": 0, "delta": {"role": "assistant", "content": ""}, "finish_reason": None}],
        },
        {
            **base,
            "choices": [
                {
                    "index": 0,
                    "delta": {
                        "tool_calls": [
                            {"index": 0, "type": "function", "function": {"name": "Write", "arguments": ""}}
                        ]
                    },
                    "finish_reason": None,
                }
            ],
        },
        *[
            {
                **base,
                "choices": [
                    {
                        "index": 0,
                        "delta": {"tool_calls": [{"index": 0, "function": {"arguments": text[i : i + 3]}}]},
                        "finish_reason": None,
                    }
                ],
            }
            for i in range(0, len(text), 3)
        ],
        {**base, "choices": [{"index": 0, "delta": {}, "finish_reason": "tool_calls"}]},
        {**base, "choices": [], "usage": {"prompt_tokens": 4, "completion_tokens": 9}},
    ]
    out = _events(translation, chunks)
    added = next(p for p in out if p["type"] == "response.output_item.added")
    call_id = added["item"]["call_id"]
    assert call_id.startswith("call_")
    final = out[-1]["response"]["output"][0]
    assert final["call_id"] == call_id
    assert json.loads(final["arguments"]) == ARGS
    assert out[-1]["response"]["usage"]["input_tokens"] == 4
    assert translation.stream().usage.prompt_tokens is None  # a fresh stream starts empty
