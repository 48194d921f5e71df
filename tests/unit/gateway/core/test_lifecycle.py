"""Ollama's load/unload requests and its keep_alive durations."""

from __future__ import annotations

import math
from typing import Any

import pytest

from gatewayd.errors import BadRequest
from gatewayd.gateway.core.lifecycle import Action, keep_alive_seconds, lifecycle_request, lifecycle_response


@pytest.mark.parametrize(
    ("value", "seconds"),
    [
        (None, None),
        (0, 0.0),
        (300, 300.0),
        (2.5, 2.5),
        (-1, math.inf),
        ("0", 0.0),
        ("5m", 300.0),
        ("1h30m", 5400.0),
        ("1.5h", 5400.0),
        ("300ms", 0.3),
        ("-1m", math.inf),
        ("10s", 10.0),
    ],
)
def test_keep_alive_durations(value: Any, seconds: float | None) -> None:
    assert keep_alive_seconds(value) == seconds


@pytest.mark.parametrize("value", ["", "5", "five minutes", "5 m", "m", True, [], {}])
def test_keep_alive_refuses_what_ollama_refuses(value: Any) -> None:
    with pytest.raises(BadRequest, match="keep_alive"):
        keep_alive_seconds(value)


@pytest.mark.parametrize(
    ("chat", "body", "action"),
    [
        (False, {"model": "m"}, Action.LOAD),
        (False, {"model": "m", "prompt": ""}, Action.LOAD),
        (False, {"model": "m", "keep_alive": 0}, Action.UNLOAD),
        (False, {"model": "m", "keep_alive": "0s"}, Action.UNLOAD),
        (False, {"model": "m", "keep_alive": "10m"}, Action.LOAD),
        (True, {"model": "m", "messages": []}, Action.LOAD),
        (True, {"model": "m"}, Action.LOAD),
        (True, {"model": "m", "messages": [], "keep_alive": 0}, Action.UNLOAD),
        (False, {"model": "m", "prompt": "hi"}, None),
        (False, {"model": "m", "images": ["aGk="]}, None),
        (True, {"model": "m", "messages": [{"role": "user", "content": "hi"}]}, None),
    ],
)
def test_what_is_a_lifecycle_request(chat: bool, body: dict[str, Any], action: Action | None) -> None:
    request = lifecycle_request(body, chat=chat)
    assert (request.action if request is not None else None) is action


def test_the_answers_have_ollamas_shape() -> None:
    generate = lifecycle_response("m", Action.LOAD, chat=False, now=0.5)
    assert generate == {
        "model": "m",
        "created_at": "1970-01-01T00:00:00.500000Z",
        "response": "",
        "done": True,
        "done_reason": "load",
    }
    chat = lifecycle_response("m", Action.UNLOAD, chat=True, now=0.0)
    assert chat["message"] == {"role": "assistant", "content": ""}
    assert chat["done_reason"] == "unload"
