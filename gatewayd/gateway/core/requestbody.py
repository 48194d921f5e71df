"""A request's JSON body: parsed one way for every endpoint, and the fields gatewayd itself reads checked.

``parse_json`` is the only way a request body is parsed (the inference endpoints and the Quart app's JSON
routes alike): any malformed input, nesting deeper than ``server.max_json_depth`` included, is a
``BadRequest``, which each endpoint renders in its dialect. Nesting is measured before parsing: CPython's
parser recurses once per level and raises RecursionError (not ValueError) somewhere below the interpreter's
recursion limit, which depends on how deep the caller's stack already is.

``check_fields`` checks only what gatewayd reads or translates (``model``, ``stream``, ``messages``,
``max_tokens``/``max_completion_tokens``, ``options.num_predict``), each with a 400 naming the field. Every
other field is the backend's to judge; its error is relayed.
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping
from dataclasses import dataclass
from itertools import accumulate
from typing import Any

from gatewayd.errors import BadRequest

#: a JSON string (with its escapes): brackets inside one are text, not nesting
_STRING = re.compile(rb'"[^"\\]*(?:\\.[^"\\]*)*"')
#: every byte but the four brackets, deleted before nesting is measured
_NOT_BRACKETS = bytes(byte for byte in range(256) if byte not in b"[]{}")
#: the nesting step of each bracket byte: +1 opens, -1 closes
_STEP = tuple(1 if byte in b"[{" else -1 if byte in b"]}" else 0 for byte in range(256))
#: Ollama's num_predict: -1 generates without a limit, -2 until the context is full
_OLLAMA_NUM_PREDICT_SPECIAL = (-1, -2)


@dataclass(frozen=True, slots=True)
class BodyRules:
    """Which fields an endpoint's body must get right, beyond a non-empty ``model`` (each endpoint's row
    in the dialect registry holds its rules)."""

    #: ``messages`` is a list of objects: None, not checked; "optional", may be missing or empty (Ollama's
    #: /api/chat: a model load); "required", non-empty
    messages: str | None = None
    #: Ollama's ``options`` is an object, and its ``num_predict`` a count (or -1, -2)
    ollama_options: bool = False
    #: the model may be named by ``name`` (Ollama's legacy /api/embeddings)
    model_in_name: bool = False


def nesting_depth(raw: bytes) -> int:
    """How deep arrays and objects nest in the JSON text ``raw`` (0 for a scalar). For text that is not
    valid JSON the figure is only an estimate, which is all a refusal needs."""
    brackets = _STRING.sub(b"", raw).translate(None, _NOT_BRACKETS)
    if not brackets:
        return 0
    return max(0, max(accumulate(map(_STEP.__getitem__, brackets))))


def parse_json(raw: bytes, max_depth: int) -> Any:
    """The JSON value in ``raw``. Raises BadRequest for anything that is not valid JSON (UTF-8, -16 or -32)
    or that nests arrays and objects deeper than ``max_depth``."""
    # a body with no more brackets than the limit cannot nest deeper: the common case skips the scan
    if raw.count(b"[") + raw.count(b"{") > max_depth and nesting_depth(raw) > max_depth:
        raise BadRequest(
            f"request body nests arrays and objects more than {max_depth} levels deep (server.max_json_depth)"
        )
    try:
        return json.loads(raw)
    except RecursionError:  # only with a max_json_depth configured near the interpreter's recursion limit
        raise BadRequest("request body nests arrays and objects too deeply to parse") from None
    except ValueError as error:  # also UnicodeDecodeError
        raise BadRequest(f"request body is not valid JSON: {error}") from None


def parse_json_object(raw: bytes, max_depth: int) -> dict[str, Any]:
    """Like ``parse_json``, and the value must be an object."""
    body = parse_json(raw, max_depth)
    if not isinstance(body, dict):
        raise BadRequest("request body must be a JSON object")
    return body


def model_name(body: Mapping[str, Any], rules: BodyRules) -> str:
    """The model a request names (``name`` also counts on Ollama's legacy /api/embeddings). Raises BadRequest
    unless it is a non-empty string."""
    model = body.get("model")
    if model is None and rules.model_in_name:
        model = body.get("name")
    if not isinstance(model, str) or not model:
        raise BadRequest("'model' is required and must be a non-empty string", param="model")
    return model


def check_fields(body: Mapping[str, Any], rules: BodyRules) -> None:
    """Raise BadRequest (naming the field) when a field gatewayd reads or translates has the wrong type.

    ``stream`` is a boolean or null; ``messages`` is checked as ``rules.messages`` says.
    ``max_tokens`` and ``max_completion_tokens`` are integers >= 0 or null; inside Ollama's ``options`` (an
    object), ``num_predict`` is an integer >= 0, or -1 (no limit) or -2 (fill the context) as Ollama has it.
    """
    stream = body.get("stream")
    if stream is not None and not isinstance(stream, bool):
        raise BadRequest(f"'stream' must be true or false, not {_describe(stream)}", param="stream")
    if rules.messages is not None:
        _check_messages(body, required=rules.messages == "required")
    for name in ("max_tokens", "max_completion_tokens"):
        value = body.get(name)
        if value is not None and not _is_count(value):
            raise BadRequest(f"'{name}' must be an integer of 0 or more, not {_describe(value)}", param=name)
    options = body.get("options")
    if rules.ollama_options and options is not None:
        if not isinstance(options, dict):
            raise BadRequest(f"'options' must be an object, not {_describe(options)}", param="options")
        num_predict = options.get("num_predict")
        special = type(num_predict) is int and num_predict in _OLLAMA_NUM_PREDICT_SPECIAL
        if num_predict is not None and not (_is_count(num_predict) or special):
            raise BadRequest(
                "'options.num_predict' must be an integer of 0 or more (or -1: no limit, -2: fill the "
                f"context), not {_describe(num_predict)}",
                param="options.num_predict",
            )


def _check_messages(body: Mapping[str, Any], *, required: bool) -> None:
    if "messages" not in body and not required:
        return
    messages = body.get("messages")
    if not isinstance(messages, list):
        message = f"'messages' must be a list of messages, not {_describe(messages)}"
        raise BadRequest(message, param="messages")
    if not messages and required:
        raise BadRequest("'messages' must hold at least one message", param="messages")
    for index, message in enumerate(messages):
        if not isinstance(message, dict):
            raise BadRequest(
                f"'messages[{index}]' must be an object, not {_describe(message)}", param=f"messages[{index}]"
            )


def _is_count(value: object) -> bool:
    return type(value) is int and value >= 0


def _describe(value: object) -> str:
    """A JSON value's type for an error message: 'a string', 'null', ..."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "a boolean"
    if isinstance(value, int | float):
        return "a number"
    if isinstance(value, str):
        return "a string"
    if isinstance(value, list):
        return "an array"
    return "an object"
