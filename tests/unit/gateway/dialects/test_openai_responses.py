"""The Responses client codec, pure: requests as Codex and the openai SDK send them, whole answers, and the
stream's events with the fields the openai SDK's accumulator reads."""

from __future__ import annotations

import json
from typing import Any

import pytest

from gatewayd.errors import BadRequest
from gatewayd.gateway.core.chat import (
    ChatResponse,
    Finish,
    MessageStart,
    OutputKind,
    Role,
    StopReason,
    Text,
    TextDelta,
    Thinking,
    ThinkingDelta,
    Tool,
    ToolCall,
    ToolCallDelta,
    ToolCallStart,
    ToolChoice,
    ToolMode,
    ToolResult,
)
from gatewayd.gateway.core.usage import Usage
from gatewayd.gateway.dialects.openai_responses import ResponsesClient

CODEX_BODY: dict[str, Any] = {
    "model": "m",
    "stream": True,
    "store": False,
    "input": [
        {
            "type": "message",
            "role": "developer",
            "content": [{"type": "input_text", "text": "sandbox rules"}],
        },
        {"type": "message", "role": "user", "content": [{"type": "input_text", "text": "write hi"}]},
        {
            "type": "reasoning",
            "id": "rs_1",
            "summary": [{"type": "summary_text", "text": "planning"}],
            "encrypted_content": "opaque",
        },
        {"type": "message", "role": "assistant", "content": [{"type": "output_text", "text": "running"}]},
        {
            "type": "function_call",
            "id": "fc_1",
            "call_id": "call_1",
            "name": "exec_command",
            "arguments": '{"cmd":"ls"}',
        },
        {"type": "function_call_output", "call_id": "call_1", "output": "a.txt"},
        {
            "type": "message",
            "role": "user",
            "content": [{"type": "input_image", "image_url": "data:image/png;base64,AAAA"}],
        },
    ],
    "tools": [
        {
            "type": "function",
            "name": "exec_command",
            "description": "run",
            "parameters": {"type": "object"},
            "strict": False,
        },
        {"type": "namespace", "name": "goals", "tools": []},
        {"type": "web_search"},
    ],
    "tool_choice": "auto",
    "parallel_tool_calls": True,
    "reasoning": {"effort": "medium", "summary": "auto"},
    "include": ["reasoning.encrypted_content"],
    "prompt_cache_key": "k",
    "text": {"format": {"type": "json_schema", "name": "out", "schema": {"type": "object"}, "strict": True}},
    "max_output_tokens": 100,
}


def test_a_codex_request_decodes_whole() -> None:
    client = ResponsesClient()
    request = client.decode_request(CODEX_BODY)
    assert [m.role for m in request.messages] == [
        Role.SYSTEM,
        Role.USER,
        Role.ASSISTANT,
        Role.TOOL,
        Role.USER,
    ]
    assert request.messages[2].parts == (
        Thinking("planning"),
        Text("running"),
        ToolCall("call_1", "exec_command", '{"cmd":"ls"}'),
    )
    assert request.messages[3].parts == (ToolResult("call_1", (Text("a.txt"),), name="exec_command"),)
    assert request.messages[4].parts[0].data == "AAAA"  # type: ignore[union-attr]
    assert request.tools == (Tool("exec_command", "run", {"type": "object"}),)
    assert client.dropped_tools == ["namespace", "web_search"]
    assert request.parallel_tool_calls is True
    assert request.reasoning.effort == "medium"
    assert request.output.kind is OutputKind.JSON_SCHEMA
    assert request.output.name == "out"
    assert request.sampling.max_tokens == 100
    assert client.store is False


def test_a_string_input_instructions_and_a_named_tool_choice() -> None:
    client = ResponsesClient()
    body = {
        "model": "m",
        "input": "hi",
        "instructions": "be nice",
        "tool_choice": {"type": "function", "name": "f"},
    }
    request = client.decode_request(body)
    assert [(m.role, m.text) for m in request.messages] == [(Role.SYSTEM, "be nice"), (Role.USER, "hi")]
    assert request.tool_choice == ToolChoice(ToolMode.NAMED, "f")
    assert client.store is True  # OpenAI's default
    assert client.input_items == [{"type": "message", "role": "user", "content": "hi"}]


@pytest.mark.parametrize(
    "change",
    [
        {"model": None},
        {"input": 3},
        {"input": [{"role": "robot", "content": "x"}]},
        {"tool_choice": "sometimes"},
    ],
)
def test_a_malformed_request_is_a_bad_request(change: dict[str, Any]) -> None:
    with pytest.raises(BadRequest):
        ResponsesClient().decode_request({"model": "m", "input": "hi", **change})


def test_a_whole_answer_is_a_response_object() -> None:
    client = ResponsesClient()
    client.decode_request({"model": "m", "input": "hi"})
    response = ChatResponse(
        model="m",
        parts=(Thinking("hmm"), Text("ok"), ToolCall("call_1", "f", '{"a":1}')),
        stop_reason=StopReason.TOOL_CALLS,
        usage=Usage(3, 4),
    )
    body = client.encode_response(response)
    assert body["object"] == "response"
    assert body["id"].startswith("resp_")
    assert body["status"] == "completed"
    assert [item["type"] for item in body["output"]] == ["reasoning", "message", "function_call"]
    assert body["output"][1]["content"][0] == {
        "type": "output_text",
        "text": "ok",
        "annotations": [],
        "logprobs": [],
    }
    call = body["output"][2]
    assert (call["call_id"], call["id"], call["arguments"]) == ("call_1", "fc_call_1", '{"a":1}')
    assert body["usage"]["total_tokens"] == 7
    assert client.conversation_items() == [
        {"type": "message", "role": "user", "content": "hi"},
        *body["output"],
    ]


def test_a_length_stop_is_incomplete() -> None:
    client = ResponsesClient()
    client.decode_request({"model": "m", "input": "hi"})
    body = client.encode_response(
        ChatResponse(model="m", parts=(Text("cut"),), stop_reason=StopReason.LENGTH)
    )
    assert body["status"] == "incomplete"
    assert body["incomplete_details"] == {"reason": "max_output_tokens"}


def _stream(client: ResponsesClient, events: list[Any]) -> list[dict[str, Any]]:
    encoder = client.stream_encoder()
    return [payload for event in events for payload in encoder.event(event)] + encoder.finish()


def test_the_stream_events_accumulate_to_the_completed_response() -> None:
    client = ResponsesClient()
    client.decode_request({"model": "m", "input": "hi", "stream": True})
    arguments = json.dumps({"cmd": "printf hi > out.txt"})
    out = _stream(
        client,
        [
            MessageStart(model="m"),
            ThinkingDelta("plan"),
            TextDelta("I will "),
            TextDelta("run it"),
            ToolCallStart(0, "call_7", "exec_command"),
            *[ToolCallDelta(0, arguments[i : i + 4]) for i in range(0, len(arguments), 4)],
            Finish(StopReason.TOOL_CALLS, Usage(5, 6)),
        ],
    )
    assert [p["sequence_number"] for p in out] == list(range(len(out)))
    assert [p["type"] for p in out[:2]] == ["response.created", "response.in_progress"]
    assert out[-1]["type"] == "response.completed"
    ids = {out[0]["response"]["id"], out[1]["response"]["id"], out[-1]["response"]["id"]}
    assert len(ids) == 1
    # what the openai SDK's accumulator does: items by output_index, text and arguments by delta
    items: dict[int, dict[str, Any]] = {}
    for payload in out:
        kind = payload["type"]
        if kind == "response.output_item.added":
            assert payload["output_index"] not in items
            items[payload["output_index"]] = {**payload["item"], "text": "", "args": ""}
        elif kind == "response.output_text.delta":
            assert items[payload["output_index"]]["id"] == payload["item_id"]
            assert payload["content_index"] == 0
            items[payload["output_index"]]["text"] += payload["delta"]
        elif kind == "response.function_call_arguments.delta":
            items[payload["output_index"]]["args"] += payload["delta"]
        elif kind == "response.output_item.done":
            assert payload["item"]["id"] == items[payload["output_index"]]["id"]
    assert [items[i]["type"] for i in sorted(items)] == ["reasoning", "message", "function_call"]
    assert items[1]["text"] == "I will run it"
    assert json.loads(items[2]["args"]) == {"cmd": "printf hi > out.txt"}
    final = out[-1]["response"]["output"]
    assert [item["id"] for item in final] == [items[i]["id"] for i in sorted(items)]
    assert final[2]["call_id"] == "call_7"
    assert final[2]["arguments"] == arguments
    assert final[0]["summary"] == [{"type": "summary_text", "text": "plan"}]
    assert out[-1]["response"]["usage"]["output_tokens"] == 6
    assert client.last_response is out[-1]["response"]
    done = [p for p in out if p["type"] == "response.function_call_arguments.done"]
    assert [p["arguments"] for p in done] == [arguments]


def test_a_streamed_length_stop_ends_with_response_incomplete() -> None:
    client = ResponsesClient()
    client.decode_request({"model": "m", "input": "hi"})
    out = _stream(client, [TextDelta("cut"), Finish(StopReason.LENGTH)])
    assert out[-1]["type"] == "response.incomplete"
    assert out[-1]["response"]["incomplete_details"] == {"reason": "max_output_tokens"}
