import json

import pytest
from hypothesis import given
from hypothesis import strategies as st
from openai._streaming import SSEDecoder as OpenAISSEDecoder

from gatewayd.gateway.core.framing import (
    DONE,
    SSE_DONE,
    Framing,
    NDJSONDecoder,
    SSEDecoder,
    SSEEvent,
    encode,
    encode_ndjson,
    encode_sse,
    encode_sse_comment,
    split_complete,
)

TERMINATORS = ["\n", "\r\n", "\r"]


def feed_bytewise(decoder: SSEDecoder, data: bytes) -> list[SSEEvent]:
    events: list[SSEEvent] = []
    for i in range(len(data)):
        events.extend(decoder.feed(data[i : i + 1]))
    return events


def openai_events(data: bytes, chunks: list[bytes] | None = None) -> list[tuple[str | None, str]]:
    """What the openai client's own decoder makes of ``data``."""
    decoded = OpenAISSEDecoder().iter_bytes(iter(chunks if chunks is not None else [data]))
    return [(sse.event, sse.data) for sse in decoded]


# --- split_complete --------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("buffer", "complete"),
    [
        (b"", b""),
        (b"data: 1", b""),
        (b"data: 1\n", b""),
        (b"data: 1\n\n", b"data: 1\n\n"),
        (b"data: 1\n\ndata: 2", b"data: 1\n\n"),
        (b"data: 1\n\ndata: 2\n", b"data: 1\n\n"),
        (b"data: 1\n\ndata: 2\n\n", b"data: 1\n\ndata: 2\n\n"),
        (b"data: 1\r\n\r\ndata: 2\r\n", b"data: 1\r\n\r\n"),
        (b"data: 1\r\n\r", b"data: 1\r\n\r"),
        (b"data: 1\r\n\r\n", b"data: 1\r\n\r\n"),
        (b"data: 1\r\r", b"data: 1\r\r"),
        (b"data: 1\r\rdata: 2\r", b"data: 1\r\r"),
        (b"data: 1\r\n\ndata: 2\n\r\n", b"data: 1\r\n\ndata: 2\n\r\n"),
        (b"data: 1\r\n", b""),
        (b"data: 1\r", b""),
        (b": keep-alive\n\n", b": keep-alive\n\n"),
    ],
)
def test_split_complete_sse_cuts_after_the_last_blank_line(buffer: bytes, complete: bytes) -> None:
    prefix, rest = split_complete(buffer, Framing.SSE)
    assert prefix == complete
    assert prefix + rest == buffer


@pytest.mark.parametrize(
    ("buffer", "complete"),
    [
        (b"", b""),
        (b'{"a":1}', b""),
        (b'{"a":1}\n', b'{"a":1}\n'),
        (b'{"a":1}\n{"b"', b'{"a":1}\n'),
        (b'{"a":1}\r\n{"b":2}\r\n', b'{"a":1}\r\n{"b":2}\r\n'),
    ],
)
def test_split_complete_ndjson_cuts_after_the_last_newline(buffer: bytes, complete: bytes) -> None:
    prefix, rest = split_complete(buffer, Framing.NDJSON)
    assert prefix == complete
    assert prefix + rest == buffer


def test_split_complete_accepts_a_bytearray_and_returns_bytes() -> None:
    prefix, rest = split_complete(bytearray(b"data: 1\n\nda"), Framing.SSE)
    assert (prefix, rest) == (b"data: 1\n\n", b"da")
    assert type(prefix) is bytes
    assert type(rest) is bytes


sse_events = st.lists(
    st.tuples(
        st.one_of(st.none(), st.sampled_from(["message", "error", "ping"])),
        st.lists(
            st.text(
                alphabet=st.characters(exclude_characters="\r\n", exclude_categories=("Cs",)), max_size=8
            ),
            min_size=1,
            max_size=3,
        ),
        st.sampled_from(TERMINATORS),
        st.booleans(),  # a comment line before the event
    ),
    min_size=1,
    max_size=5,
)


def render_sse(events: list[tuple[str | None, list[str], str, bool]]) -> bytes:
    out = []
    for event, lines, end, comment in events:
        if comment:
            out.append(f": keep-alive{end}")
        if event is not None:
            out.append(f"event: {event}{end}")
        out.extend(f"data: {line}{end}" for line in lines)
        out.append(end)
    return "".join(out).encode()


@given(sse_events)
def test_every_cut_of_an_sse_stream_forwards_whole_events_only(
    events: list[tuple[str | None, list[str], str, bool]],
) -> None:
    stream = render_sse(events)
    expected = [(event, "\n".join(lines)) for event, lines, _, _ in events]
    for cut in range(len(stream) + 1):
        prefix, rest = split_complete(stream[:cut], Framing.SSE)
        assert prefix + rest == stream[:cut]
        # A client reading only the forwarded prefix sees a prefix of the events, none of them cut...
        seen = openai_events(prefix)
        assert seen == expected[: len(seen)]
        # ...and every event that was complete in the buffer was forwarded.
        assert len(seen) == len(SSEDecoder().feed(stream[:cut]))


# --- SSEDecoder ------------------------------------------------------------------------------------------


OPENAI_CHUNKS = (
    b'data: {"id":"chatcmpl-1","object":"chat.completion.chunk",'
    b'"choices":[{"index":0,"delta":{"role":"assistant","content":""},"finish_reason":null}]}\n\n'
    b'data: {"id":"chatcmpl-1","object":"chat.completion.chunk",'
    b'"choices":[{"index":0,"delta":{"content":"H\xc3\xa9llo \xf0\x9f\x91\x8b"},"finish_reason":null}]}\n\n'
    b": ping\n\n"
    b"data: [DONE]\n\n"
)


def test_sse_decoder_yields_the_same_events_whole_or_byte_by_byte() -> None:
    whole = SSEDecoder().feed(OPENAI_CHUNKS)
    assert [json.loads(e.data)["choices"][0]["delta"].get("content") for e in whole[:2]] == ["", "Héllo 👋"]
    assert whole[2] == SSEEvent(None, DONE)
    assert SSEDecoder.is_done(whole[2])
    assert not SSEDecoder.is_done(whole[0])
    assert feed_bytewise(SSEDecoder(), OPENAI_CHUNKS) == whole


@pytest.mark.parametrize("end", TERMINATORS)
def test_sse_decoder_joins_data_lines_keeps_event_and_ignores_comments_ids_and_retry(end: str) -> None:
    raw = end.join(
        [
            ": comment",
            "event: error",
            "id: 7",
            "retry: 100",
            "data: first",
            "data:second",
            "data",
            "unknown: x",
            "",
        ]
    )
    raw += end + "data: next" + end + end
    events = feed_bytewise(SSEDecoder(), raw.encode())
    assert events == [SSEEvent("error", "first\nsecond\n"), SSEEvent(None, "next")]


def test_sse_decoder_treats_a_crlf_split_across_chunks_as_one_line_end() -> None:
    decoder = SSEDecoder()
    assert decoder.feed(b"data: a\r") == []
    assert decoder.feed(b"\ndata: b\r") == []
    assert decoder.feed(b"\n\r") == [SSEEvent(None, "a\nb")]
    assert decoder.feed(b"\ndata: c\r\r") == [SSEEvent(None, "c")]


def test_sse_decoder_does_not_dispatch_an_event_without_data() -> None:
    assert SSEDecoder().feed(b"event: ping\n\n: only a comment\n\n") == []


def test_sse_decoder_replaces_invalid_utf8_instead_of_raising() -> None:
    assert SSEDecoder().feed(b"data: \xff\n\n") == [SSEEvent(None, "\ufffd")]


@given(sse_events, st.lists(st.integers(min_value=1, max_value=12), min_size=1))
def test_sse_decoder_agrees_with_the_openai_client_for_any_chunking(
    events: list[tuple[str | None, list[str], str, bool]], sizes: list[int]
) -> None:
    stream = render_sse(events)
    chunks, at = [], 0
    while at < len(stream):
        size = sizes[len(chunks) % len(sizes)]
        chunks.append(stream[at : at + size])
        at += size
    decoder = SSEDecoder()
    ours = [(e.event, e.data) for chunk in chunks for e in decoder.feed(chunk)]
    assert ours == openai_events(stream, chunks)
    assert ours == [(event, "\n".join(lines)) for event, lines, _, _ in events]


# --- NDJSONDecoder ---------------------------------------------------------------------------------------


def test_ndjson_decoder_yields_whole_non_blank_lines_across_any_chunking() -> None:
    stream = '{"response":"é"}\n\n{"response":"👋"}\r\n  \n{"done":true}\n{"cut'.encode()
    decoder = NDJSONDecoder()
    lines = [line for i in range(len(stream)) for line in decoder.feed(stream[i : i + 1])]
    assert [json.loads(line) for line in lines] == [{"response": "é"}, {"response": "👋"}, {"done": True}]
    assert decoder.tail() == b'{"cut'
    decoder.feed(b'":1}')
    assert decoder.tail() == b'{"cut":1}'
    assert decoder.feed(b"\n") == [b'{"cut":1}']
    assert decoder.tail() == b""


# --- encoders --------------------------------------------------------------------------------------------


def test_encoders_write_compact_utf8_json_the_clients_read_back() -> None:
    payload = {"message": {"content": "héllo 👋"}, "done": False}
    sse = encode_sse(payload)
    assert sse == 'data: {"message":{"content":"héllo 👋"},"done":false}\n\n'.encode()
    assert openai_events(sse + SSE_DONE) == [
        (None, json.dumps(payload, separators=(",", ":"), ensure_ascii=False)),
        (None, DONE),
    ]
    assert encode_ndjson(payload) == '{"message":{"content":"héllo 👋"},"done":false}\n'.encode()
    assert encode(Framing.SSE, payload) == sse
    assert encode(Framing.NDJSON, payload) == encode_ndjson(payload)


def test_sse_comment_is_a_keep_alive_the_client_ignores() -> None:
    comment = encode_sse_comment("keep-alive")
    assert comment == b": keep-alive\n\n"
    assert openai_events(comment + encode_sse({"a": 1})) == [(None, '{"a":1}')]
    assert split_complete(comment, Framing.SSE) == (comment, b"")
