"""The Anthropic Messages codecs, pure: client requests in, answers and streams out; backend bodies out,
answers and streams in."""

from __future__ import annotations

import json
from typing import Any

import pytest

from gatewayd.errors import BadGateway, BadRequest
from gatewayd.gateway.core.chat import (
    ChatRequest,
    ChatResponse,
    Finish,
    Image,
    Message,
    MessageStart,
    OutputKind,
    Role,
    Sampling,
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
from gatewayd.gateway.dialects.anthropic import (
    AnthropicBackend,
    AnthropicClient,
    decode_messages_body,
    estimate_tokens,
)

ARGS = {"file_path": "/tmp/out.txt", "content": "hi \u00e9"}

CLAUDE_CODE_BODY: dict[str, Any] = {
    "model": "m",
    "max_tokens": 32000,
    "stream": True,
    "system": [
        {"type": "text", "text": "You are a CLI.", "cache_control": {"type": "ephemeral"}},
        {"type": "text", "text": "Be brief."},
    ],
    "messages": [
        {
            "role": "user",
            "content": [{"type": "text", "text": "write a file", "cache_control": {"type": "ephemeral"}}],
        },
        {"role": "system", "content": "mid-conversation instructions"},
        {
            "role": "assistant",
            "content": [
                {"type": "thinking", "thinking": "plan", "signature": "sig"},
                {"type": "redacted_thinking", "data": "opaque"},
                {"type": "text", "text": "ok"},
                {"type": "tool_use", "id": "toolu_1", "name": "Write", "input": ARGS},
            ],
        },
        {
            "role": "user",
            "content": [
                {
                    "type": "tool_result",
                    "tool_use_id": "toolu_1",
                    "content": [{"type": "text", "text": "done"}],
                },
                {"type": "tool_result", "tool_use_id": "toolu_2", "content": "boom", "is_error": True},
                {"type": "text", "text": "and now?"},
                {
                    "type": "image",
                    "source": {"type": "base64", "media_type": "image/png", "data": "iVBORw0KGgo="},
                },
                {"type": "image", "source": {"type": "url", "url": "https://example.com/a.png"}},
            ],
        },
    ],
    "tools": [
        {"name": "Write", "description": "write a file", "input_schema": {"type": "object"}},
        {"type": "web_search_20250305", "name": "web_search"},
    ],
    "tool_choice": {"type": "any", "disable_parallel_tool_use": True},
    "stop_sequences": ["STOP"],
    "metadata": {"user_id": '{"device_id":"d"}'},
    "thinking": {"type": "adaptive"},
    "context_management": {"edits": [{"type": "clear_thinking_20251015"}]},
    "output_config": {"effort": "high"},
    "temperature": 0.5,
}


def test_a_claude_code_request_decodes_whole() -> None:
    client = AnthropicClient()
    request = client.decode_request(CLAUDE_CODE_BODY)
    roles = [m.role for m in request.messages]
    assert roles == [Role.SYSTEM, Role.USER, Role.SYSTEM, Role.ASSISTANT, Role.TOOL, Role.USER]
    assert request.messages[0].parts == (Text("You are a CLI."), Text("Be brief."))
    assert request.messages[2].text == "mid-conversation instructions"
    assert request.messages[3].parts == (
        Thinking("plan", "sig"),
        Text("ok"),
        ToolCall("toolu_1", "Write", json.dumps(ARGS, separators=(",", ":"), ensure_ascii=False)),
    )
    assert request.messages[4].parts == (
        ToolResult("toolu_1", (Text("done"),)),
        ToolResult("toolu_2", (Text("boom"),), is_error=True),
    )
    assert request.messages[5].parts == (
        Text("and now?"),
        Image(media_type="image/png", data="iVBORw0KGgo="),
        Image(url="https://example.com/a.png"),
    )
    assert request.tools == (Tool("Write", "write a file", {"type": "object"}),)
    assert client.dropped_tools == ["web_search_20250305"]
    assert request.tool_choice == ToolChoice(ToolMode.REQUIRED)
    assert request.parallel_tool_calls is False
    assert request.sampling.stop == ("STOP",)
    assert request.sampling.max_tokens == 32000
    assert request.sampling.temperature == 0.5
    assert request.user == '{"device_id":"d"}'
    assert request.reasoning.enabled is None  # adaptive: a backend that cannot think is not told to
    assert request.reasoning.effort == "high"
    assert request.stream is True


def test_thinking_budget_tool_choice_by_name_and_a_json_schema_output() -> None:
    body = {
        "model": "m",
        "max_tokens": 10,
        "messages": [{"role": "user", "content": "hi"}],
        "thinking": {"type": "enabled", "budget_tokens": 2048},
        "tool_choice": {"type": "tool", "name": "Write"},
        "output_config": {"format": {"type": "json_schema", "schema": {"type": "object"}}},
    }
    request = AnthropicClient().decode_request(body)
    assert (request.reasoning.enabled, request.reasoning.budget_tokens) == (True, 2048)
    assert request.tool_choice == ToolChoice(ToolMode.NAMED, "Write")
    assert request.output.kind is OutputKind.JSON_SCHEMA


@pytest.mark.parametrize(
    ("change", "param"),
    [
        ({"max_tokens": None}, "max_tokens"),
        ({"model": ""}, "model"),
        ({"messages": "hi"}, "messages"),
        ({"messages": [{"role": "robot", "content": "x"}]}, "messages.0.role"),
        ({"tool_choice": {"type": "maybe"}}, "tool_choice"),
    ],
)
def test_a_malformed_request_is_a_bad_request_naming_the_field(change: dict[str, Any], param: str) -> None:
    body = {"model": "m", "max_tokens": 5, "messages": [{"role": "user", "content": "hi"}], **change}
    with pytest.raises(BadRequest) as caught:
        AnthropicClient().decode_request(body)
    assert caught.value.param == param


def test_count_tokens_bodies_need_no_max_tokens_and_the_estimate_counts_every_text() -> None:
    request = decode_messages_body(
        {"model": "m", "messages": [{"role": "user", "content": "x" * 400}]}, max_tokens=None
    )
    assert estimate_tokens(request) == 100
    with_tool = decode_messages_body(
        {
            "model": "m",
            "messages": [{"role": "user", "content": "x" * 400}],
            "tools": [{"name": "t", "input_schema": {}}],
        },
        max_tokens=None,
    )
    assert estimate_tokens(with_tool) > 100


def test_a_whole_answer_is_an_anthropic_message() -> None:
    client = AnthropicClient()
    client.decode_request(
        {"model": "asked", "max_tokens": 5, "messages": [{"role": "user", "content": "hi"}]}
    )
    response = ChatResponse(
        model="served",
        parts=(Thinking("hmm"), Text("writing"), ToolCall("call_9", "Write", json.dumps(ARGS))),
        stop_reason=StopReason.END,  # a backend that ends a tool call with a plain stop
        usage=Usage(12, 3),
    )
    body = client.encode_response(response)
    assert body["id"].startswith("msg_")
    assert body["type"] == "message"
    assert body["model"] == "served"
    assert body["stop_reason"] == "tool_use"
    assert body["content"] == [
        {"type": "thinking", "thinking": "hmm", "signature": ""},
        {"type": "text", "text": "writing"},
        {"type": "tool_use", "id": "call_9", "name": "Write", "input": ARGS},
    ]
    assert body["usage"] == {"input_tokens": 12, "output_tokens": 3}


@pytest.mark.parametrize(
    ("reason", "expected"),
    [
        (StopReason.END, "end_turn"),
        (StopReason.LENGTH, "max_tokens"),
        (StopReason.STOP_SEQUENCE, "stop_sequence"),
    ],
)
def test_stop_reasons(reason: StopReason, expected: str) -> None:
    body = AnthropicClient().encode_response(ChatResponse(model="m", parts=(Text("x"),), stop_reason=reason))
    assert body["stop_reason"] == expected


def _stream(events: list[Any]) -> list[dict[str, Any]]:
    encoder = AnthropicClient().stream_encoder()
    out = [payload for event in events for payload in encoder.event(event)]
    return out + encoder.finish()


def test_the_stream_has_anthropics_event_order_and_the_pieces_join_to_the_arguments() -> None:
    arguments = json.dumps(ARGS)
    pieces = [arguments[i : i + 5] for i in range(0, len(arguments), 5)]
    events = [
        MessageStart(model="m", prompt_tokens=9),
        ThinkingDelta("let me "),
        ThinkingDelta("think"),
        ThinkingDelta("", signature="sig"),
        TextDelta("I will "),
        TextDelta("write."),
        ToolCallStart(0, "call_x", "Write"),
        *[ToolCallDelta(0, piece) for piece in pieces],
        Finish(StopReason.TOOL_CALLS, Usage(9, 21)),
    ]
    out = _stream(events)
    kinds = [payload["type"] for payload in out]
    assert kinds[:2] == ["message_start", "ping"]
    assert kinds[-2:] == ["message_delta", "message_stop"]
    starts = [p for p in out if p["type"] == "content_block_start"]
    assert [p["content_block"]["type"] for p in starts] == ["thinking", "text", "tool_use"]
    assert [p["index"] for p in starts] == [0, 1, 2]
    assert [p["index"] for p in out if p["type"] == "content_block_stop"] == [0, 1, 2]
    # every block is closed before the next opens
    opened: set[int] = set()
    for payload in out:
        if payload["type"] == "content_block_start":
            assert not opened
            opened.add(payload["index"])
        elif payload["type"] == "content_block_delta":
            assert payload["index"] in opened
        elif payload["type"] == "content_block_stop":
            opened.remove(payload["index"])
    deltas = [p["delta"] for p in out if p["type"] == "content_block_delta"]
    assert "".join(d.get("thinking", "") for d in deltas) == "let me think"
    assert [d["signature"] for d in deltas if d["type"] == "signature_delta"] == ["sig"]
    assert "".join(d.get("text", "") for d in deltas) == "I will write."
    assert json.loads("".join(d["partial_json"] for d in deltas if d["type"] == "input_json_delta")) == ARGS
    assert starts[2]["content_block"]["id"] == "call_x"
    assert out[-2]["delta"] == {"stop_reason": "tool_use", "stop_sequence": None}
    assert out[-2]["usage"] == {"output_tokens": 21, "input_tokens": 9}
    assert out[0]["message"]["usage"]["input_tokens"] == 9


def test_a_stream_without_a_message_start_still_begins_with_one() -> None:
    out = _stream([TextDelta("hi"), Finish(StopReason.END)])
    assert [p["type"] for p in out] == [
        "message_start",
        "ping",
        "content_block_start",
        "content_block_delta",
        "content_block_stop",
        "message_delta",
        "message_stop",
    ]


# --- backend side ----------------------------------------------------------------------------------------


def test_a_request_is_encoded_for_an_anthropic_backend() -> None:
    request = ChatRequest(
        model="client",
        messages=(
            Message(Role.SYSTEM, (Text("be brief"),)),
            Message(Role.USER, (Text("look"), Image(url="data:image/png;base64,AAAA"))),
            Message(Role.ASSISTANT, (Thinking("no signature"), ToolCall("c1", "f", '{"a":1}'))),
            Message(Role.TOOL, (ToolResult("c1", (Text("42"),), is_error=True),)),
            Message(Role.USER, (Text("thanks"),)),
        ),
        tools=(Tool("f", "a function", {"type": "object"}),),
        tool_choice=ToolChoice(ToolMode.NAMED, "f"),
        parallel_tool_calls=False,
        sampling=Sampling(temperature=0.1, stop=("x",)),
        stream=True,
    )
    body = AnthropicBackend().encode_request(request, model="claude-x")
    assert body["model"] == "claude-x"
    assert body["system"] == "be brief"
    assert body["max_tokens"] > 0
    assert body["stream"] is True
    assert body["stop_sequences"] == ["x"]
    assert body["tool_choice"] == {"type": "tool", "name": "f", "disable_parallel_tool_use": True}
    assert body["tools"] == [{"name": "f", "description": "a function", "input_schema": {"type": "object"}}]
    assert body["messages"] == [
        {
            "role": "user",
            "content": [
                {"type": "text", "text": "look"},
                {"type": "image", "source": {"type": "base64", "media_type": "image/png", "data": "AAAA"}},
            ],
        },
        {"role": "assistant", "content": [{"type": "tool_use", "id": "c1", "name": "f", "input": {"a": 1}}]},
        {
            "role": "user",
            "content": [
                {
                    "type": "tool_result",
                    "tool_use_id": "c1",
                    "content": [{"type": "text", "text": "42"}],
                    "is_error": True,
                },
                {"type": "text", "text": "thanks"},
            ],
        },
    ]


def test_a_whole_anthropic_answer_decodes() -> None:
    answer = {
        "id": "msg_1",
        "type": "message",
        "role": "assistant",
        "model": "claude-x",
        "content": [
            {"type": "thinking", "thinking": "t", "signature": "s"},
            {"type": "text", "text": "hi"},
            {"type": "tool_use", "id": "toolu_1", "name": "f", "input": {"a": 1}},
        ],
        "stop_reason": "tool_use",
        "stop_sequence": None,
        "usage": {"input_tokens": 5, "cache_read_input_tokens": 3, "output_tokens": 2},
    }
    response = AnthropicBackend().decode_response(answer)
    assert response.parts == (Thinking("t", "s"), Text("hi"), ToolCall("toolu_1", "f", '{"a":1}'))
    assert response.stop_reason is StopReason.TOOL_CALLS
    assert (response.usage.prompt_tokens, response.usage.completion_tokens) == (8, 2)
    with pytest.raises(BadGateway):
        AnthropicBackend().decode_response({"type": "error", "error": {"type": "api_error", "message": "x"}})


def test_an_anthropic_stream_decodes_to_internal_events() -> None:
    decoder = AnthropicBackend().stream_decoder()
    payloads = [
        {
            "type": "message_start",
            "message": {"id": "msg_1", "model": "claude-x", "usage": {"input_tokens": 7}},
        },
        {"type": "ping"},
        {"type": "content_block_start", "index": 0, "content_block": {"type": "text", "text": ""}},
        {"type": "content_block_delta", "index": 0, "delta": {"type": "text_delta", "text": "hi"}},
        {"type": "content_block_stop", "index": 0},
        {
            "type": "content_block_start",
            "index": 1,
            "content_block": {"type": "tool_use", "id": "toolu_1", "name": "f", "input": {}},
        },
        {
            "type": "content_block_delta",
            "index": 1,
            "delta": {"type": "input_json_delta", "partial_json": '{"a"'},
        },
        {
            "type": "content_block_delta",
            "index": 1,
            "delta": {"type": "input_json_delta", "partial_json": ":1}"},
        },
        {"type": "content_block_stop", "index": 1},
        {"type": "message_delta", "delta": {"stop_reason": "tool_use"}, "usage": {"output_tokens": 4}},
        {"type": "message_stop"},
    ]
    events = [event for payload in payloads for event in decoder.event(payload)] + decoder.finish()
    assert events == [
        MessageStart(model="claude-x", id="msg_1", prompt_tokens=7),
        TextDelta("hi"),
        ToolCallStart(0, "toolu_1", "f"),
        ToolCallDelta(0, '{"a"'),
        ToolCallDelta(0, ":1}"),
        Finish(StopReason.TOOL_CALLS, Usage(7, 4)),
    ]


def test_a_cut_anthropic_stream_or_an_error_event_is_a_bad_gateway() -> None:
    decoder = AnthropicBackend().stream_decoder()
    decoder.event({"type": "message_start", "message": {"model": "x"}})
    with pytest.raises(BadGateway):
        decoder.finish()
    with pytest.raises(BadGateway):
        AnthropicBackend().stream_decoder().event({"type": "error", "error": {"message": "overloaded"}})


def test_a_stream_with_a_tool_call_ends_with_tool_use_whatever_the_backend_said() -> None:
    out = _stream([ToolCallStart(0, "c", "f"), ToolCallDelta(0, "{}"), Finish(StopReason.END)])
    assert out[-2]["delta"]["stop_reason"] == "tool_use"  # some backends end a tool call with a plain "stop"


# --- the profile ----------------------------------------------------------------------------------------


def test_errors_have_anthropics_shape_and_statuses() -> None:
    from gatewayd.errors import ModelNotFound, Overloaded, UpstreamStatus
    from gatewayd.gateway.dialects.anthropic import ANTHROPIC

    assert ANTHROPIC.error_status(Overloaded("full")) == 529
    assert json.loads(ANTHROPIC.error_body(Overloaded("full")))["error"]["type"] == "overloaded_error"
    missing = json.loads(ANTHROPIC.error_body(ModelNotFound("no such model")))
    assert missing == {"type": "error", "error": {"type": "not_found_error", "message": "no such model"}}
    own = b'{"type":"error","error":{"type":"rate_limit_error","message":"slow down"}}'
    assert ANTHROPIC.error_body(UpstreamStatus("x", status=429, body=own)) == own  # passed on as it is
    foreign = json.loads(
        ANTHROPIC.error_body(UpstreamStatus("x", status=400, body=b'{"error":{"message":"bad"}}'))
    )
    assert foreign == {"type": "error", "error": {"type": "invalid_request_error", "message": "bad"}}
    event = ANTHROPIC.encode(ANTHROPIC.stream_error("backend died", "bad_gateway"))
    assert event.startswith(b"event: error\ndata: ")
    assert ANTHROPIC.encode({"type": "ping"}) == b'event: ping\ndata: {"type":"ping"}\n\n'


def test_a_key_is_read_from_x_api_key_then_bearer() -> None:
    from gatewayd.gateway.dialects.anthropic import ANTHROPIC

    assert ANTHROPIC.api_key([(b"x-api-key", b"k1")]) == "k1"
    assert ANTHROPIC.api_key([(b"authorization", b"Bearer k2")]) == "k2"
    assert ANTHROPIC.api_key([]) is None


def test_stream_usage_reads_message_start_then_message_delta() -> None:
    from gatewayd.gateway.dialects.anthropic import ANTHROPIC

    usage = ANTHROPIC.stream_usage(
        Usage(), {"type": "message_start", "message": {"usage": {"input_tokens": 5}}}
    )
    usage = ANTHROPIC.stream_usage(usage, {"type": "message_delta", "usage": {"output_tokens": 8}})
    assert (usage.prompt_tokens, usage.completion_tokens) == (5, 8)
