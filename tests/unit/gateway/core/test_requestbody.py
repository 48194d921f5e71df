"""The one JSON body parser and the field checks, without a network."""

from __future__ import annotations

import json
import sys

import pytest

from gatewayd.errors import BadRequest
from gatewayd.gateway.core.requestbody import check_fields, nesting_depth, parse_json
from gatewayd.gateway.dialects.registry import Api


@pytest.mark.parametrize(
    ("raw", "depth"),
    [
        (b"1", 0),
        (b"[]", 1),
        (b'{"a": [1, {"b": []}]}', 4),
        (b'["[[[[", "\\"[[[", {"k]}": "{{{"}]', 2),
        (b"[[], [], [[]]]", 3),
    ],
)
def test_nesting_depth_counts_brackets_outside_strings(raw: bytes, depth: int) -> None:
    assert nesting_depth(raw) == depth
    assert parse_json(raw, max_depth=depth) == json.loads(raw)


def test_the_limit_is_inclusive_and_one_more_level_is_refused() -> None:
    assert parse_json(b"[" * 128 + b"]" * 128, max_depth=128)
    with pytest.raises(BadRequest, match="more than 128 levels"):
        parse_json(b"[" * 129 + b"]" * 129, max_depth=128)


def test_nesting_that_would_overflow_cpythons_parser_is_refused_before_parsing() -> None:
    too_deep = sys.getrecursionlimit() * 2
    raw = b"[" * too_deep + b"]" * too_deep
    with pytest.raises(RecursionError):
        json.loads(raw)  # what the limit protects against
    with pytest.raises(BadRequest, match="levels deep"):
        parse_json(raw, max_depth=128)


def test_a_recursion_error_is_a_bad_request_even_with_a_limit_above_what_the_parser_can_take() -> None:
    too_deep = sys.getrecursionlimit() * 2
    with pytest.raises(BadRequest, match="too deeply"):
        parse_json(b"[" * too_deep + b"]" * too_deep, max_depth=too_deep)


@pytest.mark.parametrize("raw", [b"", b"{", b"\xff", b"[1,]", b"NaN-", b'{"a": 1} x'])
def test_malformed_json_is_a_bad_request(raw: bytes) -> None:
    with pytest.raises(BadRequest, match="not valid JSON"):
        parse_json(raw, max_depth=128)


@pytest.mark.parametrize(
    ("api", "body", "param"),
    [
        (Api.OPENAI_CHAT, {"messages": [{}], "stream": "yes"}, "stream"),
        (Api.OLLAMA_GENERATE, {"stream": 0}, "stream"),
        (Api.OPENAI_CHAT, {"messages": []}, "messages"),
        (Api.OPENAI_CHAT, {}, "messages"),
        (Api.OPENAI_CHAT, {"messages": "hi"}, "messages"),
        (Api.OLLAMA_CHAT, {"messages": [1]}, "messages[0]"),
        (Api.OPENAI_COMPLETIONS, {"max_tokens": -1}, "max_tokens"),
        (Api.OPENAI_CHAT, {"messages": [{}], "max_completion_tokens": False}, "max_completion_tokens"),
        (Api.OLLAMA_GENERATE, {"options": []}, "options"),
        (Api.OLLAMA_CHAT, {"options": {"num_predict": -3}}, "options.num_predict"),
        (Api.OLLAMA_GENERATE, {"options": {"num_predict": 1.0}}, "options.num_predict"),
    ],
)
def test_a_wrong_field_is_refused_naming_it(api: Api, body: dict[str, object], param: str) -> None:
    with pytest.raises(BadRequest) as error:
        check_fields(body, api.endpoint.body)
    assert error.value.param == param


@pytest.mark.parametrize(
    ("api", "body"),
    [
        (Api.OPENAI_CHAT, {"messages": [{"role": "user"}], "stream": None, "max_tokens": None}),
        (Api.OLLAMA_CHAT, {"messages": []}),
        (Api.OLLAMA_CHAT, {}),
        (Api.OLLAMA_GENERATE, {"options": {"num_predict": -1}}),
        (Api.OLLAMA_GENERATE, {"options": {"num_predict": -2}}),
        (Api.OLLAMA_GENERATE, {"options": {"num_predict": 0}, "stream": False}),
        (Api.OPENAI_EMBEDDINGS, {"input": "x", "messages": "not read here"}),
        (Api.OPENAI_COMPLETIONS, {"max_tokens": 0, "unknown": {"left": "to the backend"}}),
    ],
)
def test_valid_fields_pass(api: Api, body: dict[str, object]) -> None:
    check_fields(body, api.endpoint.body)
