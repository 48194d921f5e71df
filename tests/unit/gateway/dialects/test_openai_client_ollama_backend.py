"""OpenAI clients (the official openai client) served by an Ollama backend."""

import base64
import json
import struct
import time
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from gatewayd.errors import BadGateway, BadRequest
from gatewayd.gateway.core.framing import SSEDecoder, encode_ndjson
from gatewayd.gateway.core.usage import Usage
from gatewayd.gateway.dialects.ollama import OLLAMA
from gatewayd.gateway.dialects.registry import Api, translator
from tests.unit.gateway.dialects.harness import BACKEND_MODEL, Exchange, gateway, openai_client, pump

PNG = base64.b64encode(b"\x89PNG\r\n\x1a\n\x00\x00\x00\rIHDR").decode()
STAMP = "2023-12-12T14:13:43.416799Z"
TIMINGS = {"total_duration": 5191566416, "load_duration": 2154458, "prompt_eval_duration": 383809000}


def chat_answer(content: str = "Hello! How are you today?", **message: Any) -> dict[str, Any]:
    return {
        "model": BACKEND_MODEL,
        "created_at": STAMP,
        "message": {"role": "assistant", "content": content, **message},
        "done": True,
        "done_reason": "stop",
        **TIMINGS,
        "prompt_eval_count": 26,
        "eval_count": 298,
        "eval_duration": 4799921000,
    }


def line(content: str, **message: Any) -> dict[str, Any]:
    return {
        "model": BACKEND_MODEL,
        "created_at": STAMP,
        "message": {"role": "assistant", "content": content, **message},
        "done": False,
    }


def done(reason: str = "stop", **fields: Any) -> dict[str, Any]:
    return {
        "model": BACKEND_MODEL,
        "created_at": STAMP,
        "message": {"role": "assistant", "content": ""},
        "done": True,
        "done_reason": reason,
        **TIMINGS,
        "prompt_eval_count": 26,
        "eval_count": 3,
        **fields,
    }


def ndjson(*lines: dict[str, Any]) -> bytes:
    return b"".join(encode_ndjson(item) for item in lines)


CHAT_STREAM = ndjson(line("The"), line(" sky"), line(" is 🌌"), done())

USER = [{"role": "user", "content": "hi"}]


def test_chat_request_and_whole_answer() -> None:
    schema = {"type": "object", "properties": {"age": {"type": "integer"}}}
    exchanges: list[Exchange] = []
    client = openai_client(gateway(Api.OPENAI_CHAT, OLLAMA, chat_answer(), exchanges))
    before = int(time.time())
    answer = client.chat.completions.create(
        model="public",
        messages=[
            {"role": "developer", "content": "Be brief."},
            {
                "role": "user",
                "content": [
                    {"type": "text", "text": "What is"},
                    {"type": "text", "text": "this?"},
                    {"type": "image_url", "image_url": {"url": f"data:image/png;base64,{PNG}"}},
                ],
            },
        ],
        max_tokens=50,
        temperature=0.3,
        top_p=0.8,
        stop="END",
        seed=1,
        frequency_penalty=0.5,
        presence_penalty=0.25,
        response_format={"type": "json_schema", "json_schema": {"name": "person", "schema": schema}},
        n=1,
        user="someone",
        logit_bias={"50256": -100},
    )
    [exchange] = exchanges
    assert exchange.upstream_path == "/api/chat"
    assert exchange.upstream_body == {
        "model": BACKEND_MODEL,
        "messages": [
            {"role": "system", "content": "Be brief."},
            {"role": "user", "content": "What is\nthis?", "images": [PNG]},
        ],
        "stream": False,
        "options": {
            "temperature": 0.3,
            "top_p": 0.8,
            "seed": 1,
            "frequency_penalty": 0.5,
            "presence_penalty": 0.25,
            "num_predict": 50,
            "stop": ["END"],
        },
        "format": schema,
    }
    assert exchange.usage == Usage(26, 298)
    assert answer.id.startswith("chatcmpl-")
    assert answer.object == "chat.completion"
    assert answer.model == "public"
    assert before <= answer.created <= time.time()
    [choice] = answer.choices
    assert choice.index == 0
    assert choice.message.role == "assistant"
    assert choice.message.content == "Hello! How are you today?"
    assert choice.finish_reason == "stop"
    assert answer.usage is not None
    assert (answer.usage.prompt_tokens, answer.usage.completion_tokens, answer.usage.total_tokens) == (
        26,
        298,
        324,
    )


@pytest.mark.parametrize(
    ("fields", "options", "fmt"),
    [
        ({"max_completion_tokens": 9, "max_tokens": 5}, {"num_predict": 9}, None),
        ({"stop": ["a", "b"]}, {"stop": ["a", "b"]}, None),
        ({"response_format": {"type": "json_object"}}, None, "json"),
        ({"response_format": {"type": "json_schema", "json_schema": {"name": "x"}}}, None, "json"),
        ({"response_format": {"type": "text"}}, None, None),
    ],
)
def test_chat_options_and_format(fields: dict[str, Any], options: dict[str, Any] | None, fmt: object) -> None:
    translation = translator(Api.OPENAI_CHAT, OLLAMA, client_model="m")
    upstream = translation.request({"model": "m", "messages": USER, **fields}, model="b", stream=False)
    assert upstream.get("options") == options
    assert upstream.get("format") == fmt


def test_tools_are_carried_unless_tool_choice_is_none() -> None:
    tools = [{"type": "function", "function": {"name": "get_weather", "parameters": {"type": "object"}}}]
    translation = translator(Api.OPENAI_CHAT, OLLAMA, client_model="m")
    body = {"model": "m", "messages": USER, "tools": tools, "tool_choice": "auto"}
    assert translation.request(body, model="b", stream=False)["tools"] == tools
    body = {"model": "m", "messages": USER, "tools": tools, "tool_choice": "none"}
    assert "tools" not in translation.request(body, model="b", stream=False)


def test_tool_call_history_becomes_ollama_tool_calls_and_named_tool_results() -> None:
    translation = translator(Api.OPENAI_CHAT, OLLAMA, client_model="m")
    messages = [
        {"role": "user", "content": "weather in Paris?"},
        {
            "role": "assistant",
            "content": None,
            "tool_calls": [
                {
                    "id": "call_9",
                    "type": "function",
                    "function": {"name": "get_weather", "arguments": '{"city":"Paris"}'},
                }
            ],
        },
        {"role": "tool", "tool_call_id": "call_9", "content": "22C"},
    ]
    upstream = translation.request({"model": "m", "messages": messages}, model="b", stream=False)
    assert upstream["messages"][1:] == [
        {
            "role": "assistant",
            "content": "",
            "tool_calls": [{"function": {"name": "get_weather", "arguments": {"city": "Paris"}}}],
        },
        {"role": "tool", "content": "22C", "tool_name": "get_weather"},
    ]


def test_a_tool_call_answer_has_json_string_arguments_and_finish_reason_tool_calls() -> None:
    answer = chat_answer(
        "", tool_calls=[{"function": {"name": "get_weather", "arguments": {"city": "Tokyo"}}}]
    )
    client = openai_client(gateway(Api.OPENAI_CHAT, OLLAMA, answer, []))
    result = client.chat.completions.create(model="public", messages=USER)
    [choice] = result.choices
    assert choice.finish_reason == "tool_calls"
    assert choice.message.content is None
    [call] = choice.message.tool_calls or []
    assert call.id.startswith("call_")
    assert call.type == "function"
    assert call.function.name == "get_weather"
    assert json.loads(call.function.arguments) == {"city": "Tokyo"}


def test_thinking_becomes_reasoning_content() -> None:
    client = openai_client(gateway(Api.OPENAI_CHAT, OLLAMA, chat_answer("4", thinking="2+2"), []))
    message = client.chat.completions.create(model="public", messages=USER).choices[0].message
    assert message.content == "4"
    assert message.model_extra == {"reasoning_content": "2+2"}


@pytest.mark.parametrize("chunk_size", [1, 7, 1 << 16])
def test_chat_stream_with_usage(chunk_size: int) -> None:
    exchanges: list[Exchange] = []
    client = openai_client(gateway(Api.OPENAI_CHAT, OLLAMA, CHAT_STREAM, exchanges, chunk_size=chunk_size))
    chunks = list(
        client.chat.completions.create(
            model="public",
            messages=USER,
            stream=True,
            stream_options={"include_usage": True},
        )
    )
    assert exchanges[0].upstream_body["stream"] is True
    assert "stream_options" not in exchanges[0].upstream_body
    assert exchanges[0].usage == Usage(26, 3)
    assert len({chunk.id for chunk in chunks}) == 1
    assert chunks[0].id.startswith("chatcmpl-")
    assert all(chunk.object == "chat.completion.chunk" and chunk.model == "public" for chunk in chunks)
    assert chunks[0].choices[0].delta.role == "assistant"
    with_choices = [chunk for chunk in chunks if chunk.choices]
    assert "".join(chunk.choices[0].delta.content or "" for chunk in with_choices) == "The sky is 🌌"
    assert [chunk.choices[0].finish_reason for chunk in with_choices] == [None, None, None, "stop"]
    assert chunks[-1].choices == []
    assert chunks[-1].usage is not None
    assert (
        chunks[-1].usage.prompt_tokens,
        chunks[-1].usage.completion_tokens,
        chunks[-1].usage.total_tokens,
    ) == (26, 3, 29)


def test_chat_stream_without_include_usage_has_no_usage_chunk_but_still_counts() -> None:
    exchanges: list[Exchange] = []
    client = openai_client(gateway(Api.OPENAI_CHAT, OLLAMA, CHAT_STREAM, exchanges))
    chunks = list(client.chat.completions.create(model="public", messages=USER, stream=True))
    assert all(chunk.choices for chunk in chunks)
    assert all(chunk.usage is None for chunk in chunks)
    assert chunks[-1].choices[0].finish_reason == "stop"
    assert exchanges[0].usage == Usage(26, 3)


def test_chat_stream_tool_calls_thinking_and_text_in_the_done_line() -> None:
    upstream = ndjson(
        line("", thinking="need weather"),
        line("", tool_calls=[{"function": {"name": "get_weather", "arguments": {"city": "Tokyo"}}}]),
        line("", tool_calls=[{"function": {"name": "get_time", "arguments": {}}}]),
        {**done(), "message": {"role": "assistant", "content": "!"}},
    )
    client = openai_client(gateway(Api.OPENAI_CHAT, OLLAMA, upstream, []))
    chunks = list(client.chat.completions.create(model="public", messages=USER, stream=True))
    deltas = [chunk.choices[0].delta for chunk in chunks]
    assert deltas[0].role == "assistant"
    assert deltas[0].model_extra == {"reasoning_content": "need weather"}
    calls = [call for delta in deltas for call in delta.tool_calls or []]
    assert [(call.index, call.function.name, call.function.arguments) for call in calls] == [
        (0, "get_weather", '{"city":"Tokyo"}'),
        (1, "get_time", "{}"),
    ]
    assert all(call.id and call.type == "function" for call in calls)
    assert deltas[-2].content == "!"
    assert chunks[-1].choices[0].finish_reason == "tool_calls"


def test_completions_whole() -> None:
    answer = {
        "model": BACKEND_MODEL,
        "created_at": STAMP,
        "response": "This is a test.",
        "done": True,
        "done_reason": "length",
        "context": [1, 2, 3],
        "prompt_eval_count": 5,
        "eval_count": 7,
    }
    exchanges: list[Exchange] = []
    client = openai_client(gateway(Api.OPENAI_COMPLETIONS, OLLAMA, answer, exchanges))
    result = client.completions.create(
        model="public", prompt=["Say this is a test"], max_tokens=7, echo=False, n=1
    )
    assert exchanges[0].upstream_path == "/api/generate"
    assert exchanges[0].upstream_body == {
        "model": BACKEND_MODEL,
        "prompt": "Say this is a test",
        "raw": True,
        "stream": False,
        "options": {"num_predict": 7},
    }
    assert result.id.startswith("cmpl-")
    assert result.object == "text_completion"
    assert result.model == "public"
    assert [(c.text, c.index, c.finish_reason) for c in result.choices] == [("This is a test.", 0, "length")]
    assert result.usage is not None
    assert (result.usage.prompt_tokens, result.usage.completion_tokens, result.usage.total_tokens) == (
        5,
        7,
        12,
    )


def test_completions_stream_with_usage() -> None:
    gen = [
        {"model": BACKEND_MODEL, "created_at": STAMP, "response": text, "done": False}
        for text in ("Once", " upon")
    ]
    upstream = ndjson(
        *gen,
        {
            "model": BACKEND_MODEL,
            "response": "",
            "done": True,
            "done_reason": "stop",
            "prompt_eval_count": 4,
            "eval_count": 2,
        },
    )
    client = openai_client(gateway(Api.OPENAI_COMPLETIONS, OLLAMA, upstream, []))
    chunks = list(
        client.completions.create(
            model="public", prompt="story", stream=True, stream_options={"include_usage": True}
        )
    )
    assert all(chunk.object == "text_completion" and chunk.model == "public" for chunk in chunks)
    assert [chunk.choices[0].text for chunk in chunks if chunk.choices] == ["Once", " upon", ""]
    assert [chunk.choices[0].finish_reason for chunk in chunks if chunk.choices] == [None, None, "stop"]
    assert chunks[-1].usage is not None
    assert chunks[-1].usage.total_tokens == 6


def embed_answer(*vectors: list[float]) -> dict[str, Any]:
    return {
        "model": BACKEND_MODEL,
        "embeddings": list(vectors),
        "total_duration": 14143917,
        "prompt_eval_count": 8,
    }


def test_embeddings_in_the_openai_clients_default_base64() -> None:
    exchanges: list[Exchange] = []
    client = openai_client(
        gateway(Api.OPENAI_EMBEDDINGS, OLLAMA, embed_answer([0.5, -1.25], [3.0, 0.0]), exchanges)
    )
    result = client.embeddings.create(model="public", input=["a", "b"], dimensions=2)
    assert exchanges[0].upstream_path == "/api/embed"
    assert exchanges[0].upstream_body == {"model": BACKEND_MODEL, "input": ["a", "b"], "dimensions": 2}
    assert exchanges[0].usage == Usage(8, 0)
    assert result.object == "list"
    assert result.model == "public"
    assert [(item.index, item.embedding) for item in result.data] == [(0, [0.5, -1.25]), (1, [3.0, 0.0])]
    assert (result.usage.prompt_tokens, result.usage.total_tokens) == (8, 8)


def test_embeddings_base64_is_little_endian_float32_and_float_is_a_list() -> None:
    translation = translator(Api.OPENAI_EMBEDDINGS, OLLAMA, client_model="m")
    translation.request({"model": "m", "input": "a", "encoding_format": "base64"}, model="b", stream=False)
    [item] = translation.response(embed_answer([0.5, -1.25]))["data"]
    assert base64.b64decode(item["embedding"]) == struct.pack("<2f", 0.5, -1.25)
    client = openai_client(gateway(Api.OPENAI_EMBEDDINGS, OLLAMA, embed_answer([0.1]), []))
    result = client.embeddings.create(model="public", input="a", encoding_format="float")
    assert result.data[0].embedding == [0.1]


@pytest.mark.parametrize(
    ("api", "body"),
    [
        (Api.OPENAI_CHAT, {"messages": {"role": "user"}}),
        (Api.OPENAI_CHAT, {"messages": [{"role": "user", "content": 1}]}),
        (
            Api.OPENAI_CHAT,
            {
                "messages": [
                    {
                        "role": "user",
                        "content": [{"type": "image_url", "image_url": {"url": "https://x/cat.png"}}],
                    }
                ]
            },
        ),
        (
            Api.OPENAI_CHAT,
            {"messages": [{"role": "user", "content": [{"type": "input_audio", "input_audio": {}}]}]},
        ),
        (
            Api.OPENAI_CHAT,
            {
                "messages": [
                    {"role": "assistant", "tool_calls": [{"function": {"name": "f", "arguments": "{x"}}]}
                ]
            },
        ),
        (
            Api.OPENAI_CHAT,
            {
                "messages": [
                    {"role": "assistant", "tool_calls": [{"function": {"name": "f", "arguments": "[]"}}]}
                ]
            },
        ),
        (Api.OPENAI_CHAT, {"messages": USER, "stop": 5}),
        (Api.OPENAI_COMPLETIONS, {"prompt": ["one", "two"]}),
        (Api.OPENAI_COMPLETIONS, {"prompt": [1, 2, 3]}),
        (Api.OPENAI_EMBEDDINGS, {"input": [[1, 2], [3]]}),
    ],
)
def test_untranslatable_requests_are_bad_requests(api: Api, body: dict[str, Any]) -> None:
    with pytest.raises(BadRequest):
        translator(api, OLLAMA, client_model="m").request({"model": "m", **body}, model="b", stream=False)


@pytest.mark.parametrize(
    ("api", "upstream"),
    [
        (Api.OPENAI_CHAT, "x"),
        (Api.OPENAI_CHAT, {"done": True}),
        (Api.OPENAI_CHAT, chat_answer(tool_calls="x")),
        (Api.OPENAI_CHAT, chat_answer(tool_calls=[{"name": "f"}])),
        (Api.OPENAI_COMPLETIONS, {"done": True}),
        (Api.OPENAI_EMBEDDINGS, {"embedding": [1.0]}),
        (Api.OPENAI_EMBEDDINGS, {"embeddings": [[1.0], "x"]}),
    ],
)
def test_malformed_whole_answers_are_bad_gateways(api: Api, upstream: object) -> None:
    translation = translator(api, OLLAMA, client_model="m")
    with pytest.raises(BadGateway, match="backend returned an unexpected"):
        translation.response(upstream)


def test_a_base64_embedding_of_non_numbers_is_a_bad_gateway() -> None:
    translation = translator(Api.OPENAI_EMBEDDINGS, OLLAMA, client_model="m")
    translation.request({"model": "m", "input": "a", "encoding_format": "base64"}, model="b", stream=False)
    with pytest.raises(BadGateway, match="unexpected embedding"):
        translation.response({"embeddings": [["x"]]})


@pytest.mark.parametrize(
    ("events", "match"),
    [
        (["x"], "unexpected stream event"),
        ([{"done": False}], "unexpected stream event"),
        ([line("a")], "unexpected end of stream"),
        (
            [line("a"), {"error": "an error was encountered while running the model"}],
            "reported an error: an error was",
        ),
    ],
)
def test_malformed_streams_are_bad_gateways(events: list[object], match: str) -> None:
    stream = translator(Api.OPENAI_CHAT, OLLAMA, client_model="m").stream()
    with pytest.raises(BadGateway, match=match):  # noqa: PT012 - the stream fails at some event or at its end
        for event in events:
            stream.event(event)
        stream.finish()


@given(st.lists(st.text(max_size=5), max_size=12), st.integers(min_value=1, max_value=9))
def test_any_split_of_the_text_reaches_the_client_in_order(pieces: list[str], chunk_size: int) -> None:
    upstream = ndjson(*(line(piece) for piece in pieces), done())
    client_bytes, usage = pump(
        translator(Api.OPENAI_CHAT, OLLAMA, client_model="m"), upstream, chunk_size=chunk_size
    )
    events = SSEDecoder().feed(client_bytes)
    assert SSEDecoder.is_done(events[-1])
    chunks = [json.loads(event.data) for event in events[:-1]]
    assert "".join(chunk["choices"][0]["delta"].get("content", "") for chunk in chunks) == "".join(pieces)
    assert [chunk["choices"][0]["finish_reason"] for chunk in chunks].count("stop") == 1
    assert usage == Usage(26, 3)
