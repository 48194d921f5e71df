"""The stream state machine, without sockets: bytes in, the bytes the client would get out."""

import json

import pytest

from gatewayd.errors import BadGateway
from gatewayd.gateway.core.framing import SSE_DONE, encode_ndjson, encode_sse
from gatewayd.gateway.core.stream import RelayedStream, TranslatedStream, stream_machine, whole_answer
from gatewayd.gateway.core.usage import Usage
from gatewayd.gateway.dialects.ollama import OLLAMA
from gatewayd.gateway.dialects.openai_chat import OPENAI
from gatewayd.gateway.dialects.registry import Api, translator


def chunk(content: str, **extra: object) -> dict[str, object]:
    return {
        "id": "c",
        "object": "chat.completion.chunk",
        "choices": [{"index": 0, "delta": {"content": content}}],
        **extra,
    }


def feed_all(machine: RelayedStream | TranslatedStream, data: bytes, size: int) -> bytes:
    out = []
    for at in range(0, len(data), size):
        out.append(machine.feed(data[at : at + size]))
        if machine.finished:
            break
    out.append(machine.end())
    return b"".join(out)


@pytest.mark.parametrize("size", [1, 5, 1 << 16])
def test_a_same_dialect_stream_is_relayed_as_its_bytes_cut_at_event_boundaries(size: int) -> None:
    usage = {"prompt_tokens": 3, "completion_tokens": 2, "total_tokens": 5}
    upstream = encode_sse(chunk("a")) + b'data: {"choices":[],\r\n\r\n' + encode_sse(chunk("", usage=usage))
    upstream = encode_sse(chunk("a")) + encode_sse(chunk("b")) + encode_sse(chunk("", usage=usage)) + SSE_DONE
    machine = stream_machine(translator(Api.OPENAI_CHAT, OPENAI, client_model="m"), "b1")
    assert isinstance(machine, RelayedStream)
    sent = []
    for at in range(0, len(upstream), size):
        out = machine.feed(upstream[at : at + size])
        assert out.endswith(b"\n\n") or out == b""  # whole events only
        sent.append(out)
    sent.append(machine.end())
    assert b"".join(sent) == upstream
    assert machine.usage == Usage(3, 2)
    assert machine.events == 4


def test_a_relayed_stream_cut_mid_event_empty_or_not_json_is_a_bad_gateway() -> None:
    relay = translator(Api.OLLAMA_CHAT, OLLAMA, client_model="m")
    machine = stream_machine(relay, "b1")
    machine.feed(encode_ndjson({"message": {"content": "a"}, "done": False}) + b'{"mess')
    with pytest.raises(BadGateway, match="backend b1 ended the stream mid-event"):
        machine.end()
    with pytest.raises(BadGateway, match="backend b1 sent an empty stream"):
        stream_machine(relay, "b1").end()
    with pytest.raises(BadGateway, match="backend b1 sent a stream event that is not JSON"):
        stream_machine(relay, "b1").feed(b"<html>\n")
    # once the stream has begun (keep-alive events), later events are relayed unparsed
    assert stream_machine(relay, "b1", started=True).feed(b"<html>\n") == b"<html>\n"


def test_a_relayed_ollama_stream_counts_lines_and_taps_the_done_line() -> None:
    lines = [
        {"response": "a", "done": False},
        {"response": "", "done": True, "prompt_eval_count": 4, "eval_count": 1},
    ]
    upstream = b"".join(encode_ndjson(line) for line in lines)
    machine = stream_machine(translator(Api.OLLAMA_GENERATE, OLLAMA, client_model="m"), "b1")
    assert feed_all(machine, upstream, 3) == upstream
    assert (machine.events, machine.usage) == (2, Usage(4, 1))


@pytest.mark.parametrize("size", [1, 7, 1 << 16])
def test_a_translated_stream_stops_at_done_and_ends_in_the_clients_framing(size: int) -> None:
    upstream = encode_sse(chunk("Hel")) + encode_sse(
        chunk("lo", choices=[{"index": 0, "delta": {"content": "lo"}, "finish_reason": "stop"}])
    )
    upstream += SSE_DONE + b"data: ignored after [DONE]\n\n"
    machine = stream_machine(translator(Api.OLLAMA_CHAT, OPENAI, client_model="public"), "b1")
    assert isinstance(machine, TranslatedStream)
    lines = [json.loads(line) for line in feed_all(machine, upstream, size).splitlines()]
    assert [line["message"]["content"] for line in lines] == ["Hel", "lo", ""]
    assert [line["done"] for line in lines] == [False, False, True]
    assert all(line["model"] == "public" for line in lines)
    assert machine.finished
    assert machine.events == 2  # the done line comes with end()


def test_a_translated_openai_stream_ends_with_done_and_without_it_upstream_is_cut() -> None:
    lines = [
        {"message": {"role": "assistant", "content": "hi"}, "done": False},
        {"done": True, "done_reason": "stop"},
    ]
    upstream = b"".join(encode_ndjson(line) for line in lines)
    out = feed_all(stream_machine(translator(Api.OPENAI_CHAT, OLLAMA, client_model="m"), "b1"), upstream, 4)
    assert out.endswith(SSE_DONE)
    cut = stream_machine(translator(Api.OLLAMA_CHAT, OPENAI, client_model="m"), "b1")
    cut.feed(encode_sse(chunk("a")))
    with pytest.raises(BadGateway, match="backend b1 ended the stream early"):
        cut.end()
    with pytest.raises(BadGateway, match="not JSON"):
        stream_machine(translator(Api.OLLAMA_CHAT, OPENAI, client_model="m"), "b1").feed(b"data: {nope\n\n")


def test_a_whole_answer_is_passed_as_its_bytes_or_re_encoded_and_must_be_a_json_object() -> None:
    raw = b'{"id":"x","choices":[],"usage":{"prompt_tokens":3,"completion_tokens":4}}'
    same = translator(Api.OPENAI_CHAT, OPENAI, client_model="m")
    assert whole_answer(same, raw, "b1") == (raw, Usage(3, 4))
    ollama = {"model": "b", "message": {"role": "assistant", "content": "hi"}, "done": True, "eval_count": 2}
    body, usage = whole_answer(
        translator(Api.OPENAI_CHAT, OLLAMA, client_model="m"), json.dumps(ollama).encode(), "b1"
    )
    assert json.loads(body)["choices"][0]["message"]["content"] == "hi"
    assert usage == Usage(None, 2)
    with pytest.raises(BadGateway, match="backend b1 returned a body that is not JSON"):
        whole_answer(same, b"<html>", "b1")
    with pytest.raises(BadGateway, match="backend b1 returned an unexpected body"):
        whole_answer(same, b"[1]", "b1")


@pytest.mark.parametrize(
    "bad", [b'{"error":"out of memory"}\n', b'{"mess\n'], ids=["error-event", "not-json"]
)
def test_a_translated_stream_delivers_the_events_before_an_error_of_the_same_chunk_then_raises(
    bad: bytes,
) -> None:
    machine = stream_machine(translator(Api.OPENAI_CHAT, OLLAMA, client_model="m"), "b1")
    lines = [encode_ndjson({"model": "x", "message": {"content": text}, "done": False}) for text in "ab"]

    out = machine.feed(b"".join(lines) + bad + lines[0])

    texts = [json.loads(block[5:])["choices"][0]["delta"]["content"] for block in out.split(b"\n\n") if block]
    assert texts == ["a", "b"]  # nothing after the error either
    assert machine.finished
    with pytest.raises(BadGateway):
        machine.end()


def test_a_translated_stream_whose_first_event_is_an_error_raises_at_once() -> None:
    machine = stream_machine(translator(Api.OPENAI_CHAT, OLLAMA, client_model="m"), "b1")
    with pytest.raises(BadGateway, match="out of memory"):
        machine.feed(b'{"error":"out of memory"}\n')
