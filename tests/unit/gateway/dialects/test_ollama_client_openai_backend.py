"""Ollama clients (the official ollama client) served by an OpenAI-compatible backend."""

import base64
import json
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from gatewayd.errors import BadGateway, BadRequest
from gatewayd.gateway.core.framing import SSE_DONE, encode_sse
from gatewayd.gateway.core.usage import Usage
from gatewayd.gateway.dialects.openai_chat import OPENAI
from gatewayd.gateway.dialects.registry import Api, translator
from tests.unit.gateway.dialects.harness import BACKEND_MODEL, Exchange, gateway, ollama_client, pump

CREATED = 1741569952  # 2025-03-10T01:25:52Z
PNG = base64.b64encode(b"\x89PNG\r\n\x1a\n\x00\x00\x00\rIHDR").decode()
JPEG = base64.b64encode(b"\xff\xd8\xff\xe0\x00\x10JFIF").decode()


def completion(
    content: str | None = "Hello! How can I help?", finish_reason: str = "stop", **message: Any
) -> dict[str, Any]:
    return {
        "id": "chatcmpl-B9MBs8CjcvOU2jLn4n570S5qMJKcT",
        "object": "chat.completion",
        "created": CREATED,
        "model": BACKEND_MODEL,
        "choices": [
            {
                "index": 0,
                "message": {"role": "assistant", "content": content, "refusal": None, **message},
                "logprobs": None,
                "finish_reason": finish_reason,
            }
        ],
        "usage": {"prompt_tokens": 19, "completion_tokens": 10, "total_tokens": 29},
        "system_fingerprint": "fp_44709d6fcb",
    }


def chunk(
    delta: dict[str, Any] | None = None, finish_reason: str | None = None, **extra: Any
) -> dict[str, Any]:
    return {
        "id": "chatcmpl-123",
        "object": "chat.completion.chunk",
        "created": CREATED,
        "model": BACKEND_MODEL,
        "system_fingerprint": "fp_44709d6fcb",
        "choices": [{"index": 0, "delta": delta or {}, "logprobs": None, "finish_reason": finish_reason}],
        **extra,
    }


USAGE_CHUNK = {
    "id": "chatcmpl-123",
    "object": "chat.completion.chunk",
    "created": CREATED,
    "model": BACKEND_MODEL,
    "choices": [],
    "usage": {"prompt_tokens": 19, "completion_tokens": 3, "total_tokens": 22},
}


def sse(*payloads: dict[str, Any]) -> bytes:
    return b"".join(encode_sse(payload) for payload in payloads) + SSE_DONE


#: an OpenAI chat stream with include_usage on: role chunk, content, finish_reason chunk, usage chunk
CHAT_STREAM = sse(
    chunk({"role": "assistant", "content": ""}),
    chunk({"content": "Hel"}),
    chunk({"content": "lo "}),
    chunk({"content": "👋"}),
    chunk({}, "stop", usage=None),
    USAGE_CHUNK,
)

TOOL_STREAM = sse(
    chunk(
        {
            "role": "assistant",
            "content": None,
            "tool_calls": [
                {
                    "index": 0,
                    "id": "call_abc",
                    "type": "function",
                    "function": {"name": "get_weather", "arguments": ""},
                }
            ],
        }
    ),
    chunk({"tool_calls": [{"index": 0, "function": {"arguments": '{"city":'}}]}),
    chunk({"tool_calls": [{"index": 0, "function": {"arguments": ' "Paris"}'}}]}),
    chunk(
        {
            "tool_calls": [
                {
                    "index": 1,
                    "id": "call_def",
                    "type": "function",
                    "function": {"name": "get_time", "arguments": "{}"},
                }
            ]
        }
    ),
    chunk({}, "tool_calls"),
    USAGE_CHUNK,
)


def test_chat_request_and_whole_answer() -> None:
    exchanges: list[Exchange] = []
    client = ollama_client(gateway(Api.OLLAMA_CHAT, OPENAI, completion(), exchanges))
    answer = client.chat(
        model="public",
        messages=[{"role": "system", "content": "Be brief."}, {"role": "user", "content": "hi"}],
        options={
            "temperature": 0.2,
            "top_p": 0.9,
            "top_k": 40,
            "num_predict": 64,
            "num_ctx": 4096,
            "stop": ["\n\n"],
            "seed": 7,
            "frequency_penalty": 0.1,
            "presence_penalty": 0.2,
        },
        format="json",
        keep_alive="5m",
        stream=False,
    )
    [exchange] = exchanges
    assert exchange.upstream_path == "/v1/chat/completions"
    assert exchange.upstream_body == {
        "model": BACKEND_MODEL,
        "messages": [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "hi"}],
        "stream": False,
        "temperature": 0.2,
        "top_p": 0.9,
        "seed": 7,
        "frequency_penalty": 0.1,
        "presence_penalty": 0.2,
        "max_tokens": 64,
        "stop": ["\n\n"],
        "response_format": {"type": "json_object"},
    }
    assert exchange.usage == Usage(19, 10)
    assert answer.model == "public"
    assert answer.created_at == "2025-03-10T01:25:52Z"
    assert answer.message.role == "assistant"
    assert answer.message.content == "Hello! How can I help?"
    assert answer.done is True
    assert answer.done_reason == "stop"
    assert (answer.prompt_eval_count, answer.eval_count) == (19, 10)


def test_chat_format_schema_becomes_a_json_schema_response_format() -> None:
    schema = {"type": "object", "properties": {"age": {"type": "integer"}}, "required": ["age"]}
    translation = translator(Api.OLLAMA_CHAT, OPENAI, client_model="public")
    upstream = translation.request(
        {"model": "public", "messages": [], "format": schema}, model="b", stream=False
    )
    assert upstream["response_format"] == {
        "type": "json_schema",
        "json_schema": {"name": "response", "schema": schema},
    }
    upstream = translation.request({"model": "public", "messages": [], "format": ""}, model="b", stream=False)
    assert "response_format" not in upstream


def test_a_streamed_request_asks_for_usage_and_unlimited_num_predict_sets_no_max_tokens() -> None:
    translation = translator(Api.OLLAMA_CHAT, OPENAI, client_model="public")
    body = {"model": "public", "messages": [], "options": {"num_predict": -1, "stop": "END"}}
    upstream = translation.request(body, model="b", stream=True)
    assert upstream == {
        "model": "b",
        "messages": [],
        "stream": True,
        "stream_options": {"include_usage": True},
        "stop": ["END"],
    }


@pytest.mark.parametrize("chunk_size", [1, 7, 1 << 16])
def test_chat_stream(chunk_size: int) -> None:
    exchanges: list[Exchange] = []
    client = ollama_client(gateway(Api.OLLAMA_CHAT, OPENAI, CHAT_STREAM, exchanges, chunk_size=chunk_size))
    parts = list(client.chat(model="public", messages=[{"role": "user", "content": "hi"}], stream=True))
    assert [part.message.content for part in parts] == ["Hel", "lo ", "👋", ""]
    assert all(part.model == "public" for part in parts)
    assert all(part.created_at == "2025-03-10T01:25:52Z" for part in parts)
    assert [part.done for part in parts] == [False, False, False, True]
    assert parts[-1].done_reason == "stop"
    assert (parts[-1].prompt_eval_count, parts[-1].eval_count) == (19, 3)
    assert exchanges[0].usage == Usage(19, 3)
    assert exchanges[0].upstream_body["stream_options"] == {"include_usage": True}


def test_chat_stream_cut_by_length_and_without_usage() -> None:
    upstream = sse(chunk({"role": "assistant", "content": "a"}), chunk({"content": "b"}, "length"))
    client_bytes, usage = pump(translator(Api.OLLAMA_CHAT, OPENAI, client_model="public"), upstream)
    lines = [json.loads(line) for line in client_bytes.splitlines()]
    assert [line["message"]["content"] for line in lines] == ["a", "b", ""]
    assert lines[-1]["done_reason"] == "length"
    assert "eval_count" not in lines[-1]
    assert "prompt_eval_count" not in lines[-1]
    assert usage == Usage()


def test_chat_stream_tool_call_fragments_reach_the_client_whole() -> None:
    client = ollama_client(gateway(Api.OLLAMA_CHAT, OPENAI, TOOL_STREAM, []))
    tools = [{"type": "function", "function": {"name": "get_weather", "parameters": {"type": "object"}}}]
    parts = list(
        client.chat(
            model="public", messages=[{"role": "user", "content": "weather?"}], tools=tools, stream=True
        )
    )
    calls = [call for part in parts for call in part.message.tool_calls or []]
    assert [(call.function.name, call.function.arguments) for call in calls] == [
        ("get_weather", {"city": "Paris"}),
        ("get_time", {}),
    ]
    assert parts[-1].done is True
    assert parts[-1].done_reason == "stop"


def test_chat_whole_answer_with_tool_calls_and_reasoning() -> None:
    answer = completion(
        None,
        "tool_calls",
        reasoning_content="The user wants weather.",
        tool_calls=[
            {
                "id": "call_1",
                "type": "function",
                "function": {"name": "get_weather", "arguments": '{"city":"Oslo"}'},
            }
        ],
    )
    client = ollama_client(gateway(Api.OLLAMA_CHAT, OPENAI, answer, []))
    result = client.chat(model="public", messages=[{"role": "user", "content": "weather?"}], stream=False)
    assert result.message.content == ""
    assert result.message.thinking == "The user wants weather."
    [call] = result.message.tool_calls or []
    assert (call.function.name, call.function.arguments) == ("get_weather", {"city": "Oslo"})
    assert result.done_reason == "stop"


def test_stream_reasoning_becomes_thinking() -> None:
    upstream = sse(chunk({"role": "assistant", "reasoning_content": "hmm"}), chunk({"content": "ok"}, "stop"))
    client_bytes, _ = pump(translator(Api.OLLAMA_CHAT, OPENAI, client_model="m"), upstream)
    messages = [json.loads(line)["message"] for line in client_bytes.splitlines()]
    assert messages[0] == {"role": "assistant", "content": "", "thinking": "hmm"}
    assert messages[1] == {"role": "assistant", "content": "ok"}


def test_chat_history_with_images_tool_calls_and_tool_results() -> None:
    exchanges: list[Exchange] = []
    client = ollama_client(gateway(Api.OLLAMA_CHAT, OPENAI, completion(), exchanges))
    client.chat(
        model="public",
        messages=[
            {"role": "user", "content": "What is in these?", "images": [PNG, JPEG]},
            {
                "role": "assistant",
                "content": "",
                "tool_calls": [{"function": {"name": "get_weather", "arguments": {"city": "Paris"}}}],
            },
            {"role": "tool", "content": "22C", "tool_name": "get_weather"},
        ],
        stream=False,
    )
    assert exchanges[0].upstream_body["messages"] == [
        {
            "role": "user",
            "content": [
                {"type": "text", "text": "What is in these?"},
                {"type": "image_url", "image_url": {"url": f"data:image/png;base64,{PNG}"}},
                {"type": "image_url", "image_url": {"url": f"data:image/jpeg;base64,{JPEG}"}},
            ],
        },
        {
            "role": "assistant",
            "content": "",
            "tool_calls": [
                {
                    "id": "call_1_0",
                    "type": "function",
                    "function": {"name": "get_weather", "arguments": '{"city":"Paris"}'},
                }
            ],
        },
        {"role": "tool", "content": "22C", "tool_call_id": "call_1_0"},
    ]


def test_tool_results_answer_the_call_of_their_name_else_the_oldest() -> None:
    translation = translator(Api.OLLAMA_CHAT, OPENAI, client_model="m")
    calls = [
        {"function": {"name": "a", "arguments": {}}},
        {"id": "given", "function": {"name": "b", "arguments": {}}},
        {"function": {"name": "c", "arguments": {}}},
    ]
    messages = [
        {"role": "assistant", "content": "", "tool_calls": calls},
        {"role": "tool", "content": "B", "tool_name": "b"},
        {"role": "tool", "content": "?"},
        {"role": "tool", "content": "C", "tool_name": "c"},
        {"role": "tool", "content": "extra"},
    ]
    upstream = translation.request({"model": "m", "messages": messages}, model="b", stream=False)
    assert [m.get("tool_call_id") for m in upstream["messages"][1:]] == [
        "given",
        "call_0_0",
        "call_0_2",
        None,
    ]


def test_generate_becomes_a_chat_completion_with_system_and_user_messages() -> None:
    exchanges: list[Exchange] = []
    client = ollama_client(gateway(Api.OLLAMA_GENERATE, OPENAI, completion("Rayleigh."), exchanges))
    answer = client.generate(
        model="public", prompt="Why is the sky blue?", system="Be brief.", images=[PNG], stream=False
    )
    [exchange] = exchanges
    assert exchange.upstream_path == "/v1/chat/completions"
    assert exchange.upstream_body["messages"] == [
        {"role": "system", "content": "Be brief."},
        {
            "role": "user",
            "content": [
                {"type": "text", "text": "Why is the sky blue?"},
                {"type": "image_url", "image_url": {"url": f"data:image/png;base64,{PNG}"}},
            ],
        },
    ]
    assert answer.model == "public"
    assert answer.response == "Rayleigh."
    assert answer.done is True
    assert answer.done_reason == "stop"
    assert (answer.prompt_eval_count, answer.eval_count) == (19, 10)


def text_chunk(text: str, finish_reason: str | None = None) -> dict[str, Any]:
    return {
        "id": "cmpl-1",
        "object": "text_completion",
        "created": CREATED,
        "model": BACKEND_MODEL,
        "choices": [{"text": text, "index": 0, "logprobs": None, "finish_reason": finish_reason}],
    }


def test_raw_generate_becomes_a_completion_and_streams() -> None:
    upstream = sse(
        text_chunk("Once"),
        text_chunk(" upon"),
        text_chunk("", "length"),
        {**USAGE_CHUNK, "object": "text_completion"},
    )
    exchanges: list[Exchange] = []
    client = ollama_client(gateway(Api.OLLAMA_GENERATE, OPENAI, upstream, exchanges))
    parts = list(client.generate(model="public", prompt="[INST] story [/INST]", raw=True, stream=True))
    [exchange] = exchanges
    assert exchange.upstream_path == "/v1/completions"
    assert exchange.upstream_body == {
        "model": BACKEND_MODEL,
        "prompt": "[INST] story [/INST]",
        "stream": True,
        "stream_options": {"include_usage": True},
    }
    assert [part.response for part in parts] == ["Once", " upon", ""]
    assert parts[-1].done_reason == "length"
    assert (parts[-1].prompt_eval_count, parts[-1].eval_count) == (19, 3)
    assert exchange.usage == Usage(19, 3)


def test_raw_generate_whole_answer() -> None:
    answer = {**text_chunk("Once upon a time", "stop"), "usage": {"prompt_tokens": 5, "completion_tokens": 4}}
    client = ollama_client(gateway(Api.OLLAMA_GENERATE, OPENAI, answer, []))
    result = client.generate(model="public", prompt="x", raw=True, stream=False)
    assert (result.response, result.done_reason, result.eval_count) == ("Once upon a time", "stop", 4)


EMBEDDINGS = {
    "object": "list",
    "data": [
        {"object": "embedding", "index": 1, "embedding": [0.5, -1.25]},
        {"object": "embedding", "index": 0, "embedding": [0.25, 2.0]},
    ],
    "model": BACKEND_MODEL,
    "usage": {"prompt_tokens": 4, "total_tokens": 4},
}


def test_embed() -> None:
    exchanges: list[Exchange] = []
    client = ollama_client(gateway(Api.OLLAMA_EMBED, OPENAI, EMBEDDINGS, exchanges))
    answer = client.embed(model="public", input=["first", "second"], truncate=True, dimensions=2)
    assert exchanges[0].upstream_path == "/v1/embeddings"
    assert exchanges[0].upstream_body == {
        "model": BACKEND_MODEL,
        "input": ["first", "second"],
        "dimensions": 2,
    }
    assert exchanges[0].usage == Usage(4, 0)
    assert answer.model == "public"
    assert answer.embeddings == [[0.25, 2.0], [0.5, -1.25]]
    assert answer.prompt_eval_count == 4


def test_legacy_embeddings() -> None:
    exchanges: list[Exchange] = []
    single = {**EMBEDDINGS, "data": EMBEDDINGS["data"][:1]}
    client = ollama_client(gateway(Api.OLLAMA_EMBEDDINGS, OPENAI, single, exchanges))
    answer = client.embeddings(model="public", prompt="hello")
    assert exchanges[0].upstream_body == {"model": BACKEND_MODEL, "input": "hello"}
    assert answer.embedding == [0.5, -1.25]


@pytest.mark.parametrize(
    ("api", "body", "param"),
    [
        (Api.OLLAMA_CHAT, {"messages": "hi"}, "messages"),
        (Api.OLLAMA_CHAT, {"messages": ["hi"]}, "messages"),
        (Api.OLLAMA_CHAT, {"messages": [{"role": "user", "content": 1}]}, "messages"),
        (Api.OLLAMA_CHAT, {"messages": [{"role": "user", "images": [1]}]}, "images"),
        (Api.OLLAMA_CHAT, {"messages": [{"role": "assistant", "tool_calls": [{}]}]}, "messages"),
        (Api.OLLAMA_CHAT, {"messages": [], "options": [1]}, "options"),
        (Api.OLLAMA_CHAT, {"messages": [], "options": {"stop": 3}}, "options.stop"),
        (Api.OLLAMA_GENERATE, {"prompt": ["a"]}, "prompt"),
        (Api.OLLAMA_EMBED, {"input": [1, 2]}, "input"),
        (Api.OLLAMA_EMBEDDINGS, {}, "prompt"),
    ],
)
def test_untranslatable_requests_are_bad_requests(api: Api, body: dict[str, Any], param: str) -> None:
    with pytest.raises(BadRequest) as raised:
        translator(api, OPENAI, client_model="m").request({"model": "m", **body}, model="b", stream=False)
    assert raised.value.param == param


@pytest.mark.parametrize(
    ("api", "upstream"),
    [
        (Api.OLLAMA_CHAT, [completion()]),
        (Api.OLLAMA_CHAT, {"choices": []}),
        (Api.OLLAMA_CHAT, {"choices": "x"}),
        (Api.OLLAMA_CHAT, {"choices": [{"message": "x"}]}),
        (Api.OLLAMA_CHAT, completion(None, tool_calls=[{"function": {"name": "f", "arguments": "{oops"}}])),
        (Api.OLLAMA_CHAT, completion(None, tool_calls=[{"function": {"name": "f", "arguments": "[1]"}}])),
        (Api.OLLAMA_CHAT, completion(None, tool_calls="x")),
        (Api.OLLAMA_GENERATE, {"id": "x"}),
        (Api.OLLAMA_EMBED, {"data": "x"}),
        (Api.OLLAMA_EMBED, {"data": [{"embedding": "base64?"}]}),
        (Api.OLLAMA_EMBEDDINGS, {"data": []}),
    ],
)
def test_malformed_whole_answers_are_bad_gateways(api: Api, upstream: object) -> None:
    with pytest.raises(BadGateway, match="backend returned an unexpected"):
        translator(api, OPENAI, client_model="m").response(upstream)


@pytest.mark.parametrize(
    ("events", "match"),
    [
        ([[1]], "unexpected stream event"),
        ([{"id": "x"}], "unexpected stream event"),
        ([{"choices": ["x"]}], "unexpected stream event"),
        ([chunk({"content": "a"})], "unexpected end of stream"),
        (
            [chunk({"content": "a"}), {"error": {"message": "CUDA out of memory"}}],
            "reported an error: CUDA out of memory",
        ),
        (
            [
                chunk(
                    {"tool_calls": [{"index": 0, "function": {"name": "f", "arguments": "{"}}]}, "tool_calls"
                )
            ],
            "tool call",
        ),
    ],
)
def test_malformed_streams_are_bad_gateways(events: list[object], match: str) -> None:
    stream = translator(Api.OLLAMA_CHAT, OPENAI, client_model="m").stream()
    with pytest.raises(BadGateway, match=match):  # noqa: PT012 - the stream fails at some event or at its end
        for event in events:
            stream.event(event)
        stream.finish()


@given(st.lists(st.text(max_size=5), max_size=12), st.integers(min_value=1, max_value=9))
def test_any_split_of_the_text_reaches_the_client_in_order(deltas: list[str], chunk_size: int) -> None:
    upstream = sse(*(chunk({"content": delta}) for delta in deltas), chunk({}, "stop"))
    client_bytes, _ = pump(
        translator(Api.OLLAMA_CHAT, OPENAI, client_model="m"), upstream, chunk_size=chunk_size
    )
    lines = [json.loads(line) for line in client_bytes.splitlines()]
    assert "".join(line["message"]["content"] for line in lines) == "".join(deltas)
    assert [line["done"] for line in lines][-1] is True
    assert sum(line["done"] for line in lines) == 1
