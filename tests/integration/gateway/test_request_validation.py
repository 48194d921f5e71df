"""Request bodies gatewayd refuses itself, on every endpoint that parses JSON: nesting past
``server.max_json_depth``, and the fields gatewayd reads or translates with the wrong type. Each is a 400 in
the endpoint's dialect naming the field, and never reaches the backend. Also: the Quart routes parse a JSON
body whatever its Content-Type, and an unexpected error in one is a 500 in dialect with the request id."""

from __future__ import annotations

import json
import logging
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import httpx
import ollama
import openai
import pytest

from gatewayd.config import Backend, BackendKind, Config, ServerSettings
from gatewayd.gateway.inference import INFERENCE_ROUTES
from tests.support.fake_backend import FakeBackend, running_fake_backend
from tests.support.gateway import RunningGateway, running_gateway

MODEL = "m"
MAX_JSON_DEPTH = 32
MESSAGES = [{"role": "user", "content": "hi"}]
#: the issue's repro: a 40 KB body of 20,000 nested brackets
DEEP = b"[" * 20_000
QUART_JSON_PATHS = ("/api/show", "/api/pull", "/admin/keys")


@dataclass
class Setup:
    gateway: RunningGateway
    fake: FakeBackend


@pytest.fixture(scope="module")
def setup() -> Iterator[Setup]:
    with running_fake_backend(models=(MODEL,)) as fake:
        config = Config(
            server=ServerSettings(max_json_depth=MAX_JSON_DEPTH),
            backends=(Backend(id="a", url=fake.url, kind=BackendKind.OPENAI, models=(MODEL,)),),
        )
        with running_gateway(config) as gateway:
            yield Setup(gateway, fake)


@pytest.fixture
def gw(setup: Setup) -> RunningGateway:
    return setup.gateway


def relayed(setup: Setup) -> int:
    """Requests the fake backend received on its inference paths (probes hit others)."""
    stats = setup.fake.stats()
    return sum(stats.count(path) for path in ("/v1/chat/completions", "/v1/completions", "/v1/embeddings"))


def post(gw: RunningGateway, path: str, body: bytes | dict[str, Any], **headers: str) -> httpx.Response:
    content = body if isinstance(body, bytes) else json.dumps(body).encode()
    headers = {"Content-Type": "application/json", "X-Request-Id": "val-1", **headers}
    return httpx.post(gw.url + path, content=content, headers=headers, timeout=30)


def assert_refused(response: httpx.Response, path: str, message_part: str, param: str | None = None) -> None:
    """A 400 in the dialect of ``path``, with the message (and, in OpenAI's dialect, the param)."""
    assert response.status_code == 400, response.text
    assert response.headers["content-type"] == "application/json"
    assert response.headers["x-request-id"] == "val-1"
    body = response.json()
    if path.startswith("/api/"):
        assert list(body) == ["error"]
        assert message_part in body["error"]
    elif path.startswith("/v1/messages"):  # Anthropic's error shape
        assert body["type"] == "error"
        assert set(body["error"]) == {"type", "message"}
        assert message_part in body["error"]["message"]
        assert body["error"]["type"] == "invalid_request_error"
    else:
        assert set(body["error"]) == {"message", "type", "param", "code"}
        assert message_part in body["error"]["message"]
        assert body["error"]["type"] == "invalid_request_error"
        if param is not None:
            assert body["error"]["param"] == param


every_json_path = pytest.mark.parametrize("path", [*INFERENCE_ROUTES, *QUART_JSON_PATHS])


@every_json_path
def test_twenty_thousand_nested_brackets_are_a_400_on_every_json_endpoint(
    gw: RunningGateway, setup: Setup, path: str
) -> None:
    before = relayed(setup)
    response = post(gw, path, DEEP)
    assert_refused(response, path, f"more than {MAX_JSON_DEPTH} levels deep")
    assert relayed(setup) == before


@every_json_path
def test_deep_nesting_inside_a_valid_object_is_a_400(gw: RunningGateway, path: str) -> None:
    deep_value = "[" * (MAX_JSON_DEPTH + 1) + "]" * (MAX_JSON_DEPTH + 1)
    raw = f'{{"model": "m", "messages": [], "metadata": {deep_value}}}'.encode()
    assert_refused(post(gw, path, raw), path, "levels deep")


@every_json_path
def test_malformed_json_is_a_400_on_every_json_endpoint(gw: RunningGateway, path: str) -> None:
    for raw in (b"", b"{", b'{"model": "m"', b"\xff\xfe\x00", b"nul", b'{"a": 1}}'):
        assert_refused(post(gw, path, raw), path, "not valid JSON")


def test_brackets_inside_strings_are_not_nesting(gw: RunningGateway) -> None:
    content = "[" * 1000 + "{" * 1000
    with openai.OpenAI(base_url=gw.openai_url, api_key="x", max_retries=0) as client:
        reply = client.chat.completions.create(model=MODEL, messages=[{"role": "user", "content": content}])
    assert reply.choices[0].message.content


@pytest.mark.parametrize("path", ["/v1/chat/completions", "/v1/completions", "/api/chat", "/api/generate"])
@pytest.mark.parametrize("stream", ["yes", 1, 0, [], {}], ids=["string", "one", "zero", "list", "object"])
def test_stream_must_be_a_boolean(gw: RunningGateway, setup: Setup, path: str, stream: object) -> None:
    before = relayed(setup)
    body = {"model": MODEL, "messages": MESSAGES, "prompt": "hi", "stream": stream}
    assert_refused(post(gw, path, body), path, "'stream' must be true or false", param="stream")
    assert relayed(setup) == before


def test_the_openai_client_sees_a_bad_stream_field_as_a_bad_request(gw: RunningGateway) -> None:
    with (
        openai.OpenAI(base_url=gw.openai_url, api_key="x", max_retries=0) as client,
        pytest.raises(openai.BadRequestError) as error,
    ):
        client.chat.completions.create(model=MODEL, messages=MESSAGES, extra_body={"stream": "yes"})  # type: ignore[arg-type]
    assert error.value.param == "stream"


@pytest.mark.parametrize("path", ["/v1/chat/completions", "/api/chat"])
@pytest.mark.parametrize(
    ("messages", "param", "message_part"),
    [
        ("hi", "messages", "'messages' must be a list"),
        ({"role": "user"}, "messages", "'messages' must be a list"),
        (None, "messages", "'messages' must be a list"),
        (["hi"], "messages[0]", "'messages[0]' must be an object"),
        ([{"role": "user", "content": "a"}, 3], "messages[1]", "'messages[1]' must be an object"),
    ],
)
def test_messages_must_be_a_list_of_objects(
    gw: RunningGateway, setup: Setup, path: str, messages: object, param: str, message_part: str
) -> None:
    before = relayed(setup)
    assert_refused(post(gw, path, {"model": MODEL, "messages": messages}), path, message_part, param=param)
    assert relayed(setup) == before


def test_an_empty_message_list_is_a_400_on_openai_chat(gw: RunningGateway) -> None:
    path = "/v1/chat/completions"
    assert_refused(post(gw, path, {"model": MODEL, "messages": []}), path, "at least one", param="messages")
    assert_refused(post(gw, path, {"model": MODEL}), path, "'messages' must be a list", param="messages")


def test_an_empty_message_list_is_not_refused_on_ollama_chat(gw: RunningGateway, setup: Setup) -> None:
    # Ollama takes /api/chat with no messages as a request to load the model: gatewayd does not refuse it,
    # and answers it itself (a load, not a generation: nothing goes upstream)
    before = relayed(setup)
    response = post(gw, "/api/chat", {"model": MODEL, "messages": [], "stream": False})
    assert response.status_code == 200, response.text
    assert response.json()["done_reason"] == "load"
    assert relayed(setup) == before


@pytest.mark.parametrize("name", ["max_tokens", "max_completion_tokens"])
@pytest.mark.parametrize("value", [-1, "10", 1.5, True, [], {}])
def test_max_tokens_must_be_a_non_negative_integer(
    gw: RunningGateway, setup: Setup, name: str, value: object
) -> None:
    before = relayed(setup)
    for path in ("/v1/chat/completions", "/v1/completions"):
        body = {"model": MODEL, "messages": MESSAGES, "prompt": "hi", name: value}
        assert_refused(post(gw, path, body), path, f"'{name}' must be an integer of 0 or more", param=name)
    assert relayed(setup) == before


def test_the_openai_client_sees_negative_max_tokens_as_a_bad_request(gw: RunningGateway) -> None:
    with (
        openai.OpenAI(base_url=gw.openai_url, api_key="x", max_retries=0) as client,
        pytest.raises(openai.BadRequestError) as error,
    ):
        client.chat.completions.create(model=MODEL, messages=MESSAGES, max_tokens=-5)  # type: ignore[arg-type]
    assert error.value.param == "max_tokens"


@pytest.mark.parametrize("value", [-3, "10", 2.5, True])
def test_num_predict_must_be_a_non_negative_integer_or_ollamas_minus_one_or_two(
    gw: RunningGateway, setup: Setup, value: object
) -> None:
    before = relayed(setup)
    with ollama.Client(host=gw.url) as client, pytest.raises(ollama.ResponseError) as error:
        client.generate(model=MODEL, prompt="hi", stream=False, options={"num_predict": value})  # type: ignore[dict-item]
    assert error.value.status_code == 400
    assert "'options.num_predict' must be an integer" in error.value.error
    assert relayed(setup) == before


def test_num_predict_minus_one_and_zero_are_relayed(gw: RunningGateway) -> None:
    with ollama.Client(host=gw.url) as client:
        for value in (-1, -2, 0, 16):
            reply = client.generate(model=MODEL, prompt="hi", stream=False, options={"num_predict": value})
            assert reply.done


def test_options_must_be_an_object_on_ollama_endpoints(gw: RunningGateway) -> None:
    for path in ("/api/chat", "/api/generate", "/api/embed"):
        body = {"model": MODEL, "messages": MESSAGES, "prompt": "hi", "input": "hi", "options": "fast"}
        assert_refused(post(gw, path, body), path, "'options' must be an object")


@pytest.mark.parametrize(
    "content_type", ["application/x-www-form-urlencoded", "text/plain", None], ids=["form", "text", "none"]
)
def test_quart_json_routes_parse_the_body_whatever_its_content_type(
    gw: RunningGateway, content_type: str | None
) -> None:
    headers = {} if content_type is None else {"Content-Type": content_type}
    raw = json.dumps({"model": MODEL}).encode()
    show = httpx.post(gw.url + "/api/show", content=raw, headers=headers)
    assert show.status_code == 200, show.text
    assert "details" in show.json()
    pull = httpx.post(gw.url + "/api/pull", content=b'{"model": "m", "stream": false}', headers=headers)
    assert pull.json() == {"status": "success"}


def test_quart_json_routes_name_a_missing_model(gw: RunningGateway) -> None:
    for path in ("/api/show", "/api/pull"):
        for body in ({}, {"model": ""}, {"model": 3}, [1]):
            response = post(gw, path, body)  # type: ignore[arg-type]
            assert_refused(response, path, "'model' is required")


def test_an_unexpected_error_in_a_quart_route_is_a_500_in_dialect_with_the_request_id(
    gw: RunningGateway, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    def broken() -> list[dict[str, Any]]:
        raise RuntimeError("model rows exploded")

    monkeypatch.setattr(gw.generation, "model_rows", broken)
    caplog.set_level(logging.ERROR, logger="gatewayd.app")
    openai_side = httpx.get(gw.url + "/v1/models", headers={"X-Request-Id": "boom-1"})
    ollama_side = httpx.post(gw.url + "/api/show", json={"model": MODEL}, headers={"X-Request-Id": "boom-2"})
    assert openai_side.status_code == 500
    error = openai_side.json()["error"]
    assert error["type"] == "server_error"
    assert "boom-1" in error["message"]
    assert openai_side.headers["x-request-id"] == "boom-1"
    assert ollama_side.status_code == 500
    assert list(ollama_side.json()) == ["error"]
    assert "boom-2" in ollama_side.json()["error"]
    logged = [r for r in caplog.records if r.name == "gatewayd.app" and r.exc_info]
    assert len(logged) == 2  # once per request, with its traceback
    assert "boom-1" in logged[0].getMessage()
    assert "model rows exploded" in caplog.text
    with (
        openai.OpenAI(base_url=gw.openai_url, api_key="x", max_retries=0) as client,
        pytest.raises(openai.InternalServerError),
    ):
        client.models.list()
