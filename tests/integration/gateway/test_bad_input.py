"""Bad input: malformed JSON, a body that is not an object, no model, an oversize body, an unknown model.

Each is answered in the endpoint's dialect (an OpenAI error object on /v1, ``{"error": "..."}`` on /api)
with an X-Request-Id, and none of them disturbs a stream being served at the same time.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from dataclasses import dataclass

import httpx
import ollama
import openai
import pytest

from gatewayd.config import Backend, BackendKind, Config, ServerSettings
from tests.support.fake_backend import FakeBackend, running_fake_backend
from tests.support.fake_replies import reply_text
from tests.support.gateway import RunningGateway, running_gateway

MODEL = "m"
MAX_BODY_BYTES = 1024
OVERSIZE = b'{"model": "m", "prompt": "' + b"x" * (4 * MAX_BODY_BYTES) + b'"}'
CHAT_PATHS = {"openai": "/v1/chat/completions", "ollama": "/api/chat"}


@dataclass
class Setup:
    gateway: RunningGateway
    fake: FakeBackend


@pytest.fixture(scope="module")
def setup() -> Iterator[Setup]:
    with running_fake_backend(models=(MODEL,)) as fake:
        config = Config(
            server=ServerSettings(max_body_bytes=MAX_BODY_BYTES),
            backends=(Backend(id="a", url=fake.url, kind=BackendKind.OPENAI, models=(MODEL,)),),
        )
        with running_gateway(config) as gateway:
            yield Setup(gateway, fake)


@pytest.fixture
def gw(setup: Setup) -> RunningGateway:
    return setup.gateway


def post(gw: RunningGateway, path: str, content: bytes, **headers: str) -> httpx.Response:
    headers = {"Content-Type": "application/json", "X-Request-Id": "bad-1", **headers}
    return httpx.post(gw.url + path, content=content, headers=headers)


def assert_dialect_error(response: httpx.Response, dialect: str, status: int, message_part: str) -> None:
    assert response.status_code == status, response.text
    assert response.headers["content-type"] == "application/json"
    body = response.json()
    if dialect == "openai":
        assert set(body["error"]) == {"message", "type", "param", "code"}
        assert message_part in body["error"]["message"]
    else:
        assert list(body) == ["error"]
        assert isinstance(body["error"], str)
        assert message_part in body["error"]


both_dialects = pytest.mark.parametrize("dialect", ["openai", "ollama"])


@both_dialects
def test_malformed_json_is_a_400(gw: RunningGateway, dialect: str) -> None:
    response = post(gw, CHAT_PATHS[dialect], b'{"model": "m", "messages": [')
    assert_dialect_error(response, dialect, 400, "not valid JSON")
    assert response.headers["x-request-id"] == "bad-1"


@both_dialects
def test_a_body_that_is_not_an_object_is_a_400(gw: RunningGateway, dialect: str) -> None:
    response = post(gw, CHAT_PATHS[dialect], b'["model", "m"]')
    assert_dialect_error(response, dialect, 400, "must be a JSON object")


@both_dialects
@pytest.mark.parametrize(
    "body", [{"messages": []}, {"model": ""}, {"model": 7}], ids=["none", "empty", "int"]
)
def test_a_missing_model_is_a_400(gw: RunningGateway, dialect: str, body: dict[str, object]) -> None:
    response = post(gw, CHAT_PATHS[dialect], json.dumps(body).encode())
    assert_dialect_error(response, dialect, 400, "'model' is required")
    if dialect == "openai":
        assert response.json()["error"]["param"] == "model"


@pytest.mark.parametrize("dialect", ["openai", "ollama"])
def test_an_oversize_body_with_content_length_is_a_413(gw: RunningGateway, dialect: str) -> None:
    response = post(gw, CHAT_PATHS[dialect], OVERSIZE)
    assert_dialect_error(response, dialect, 413, f"{MAX_BODY_BYTES} bytes")


def test_an_oversize_body_with_content_length_carries_the_request_id(gw: RunningGateway) -> None:
    response = post(gw, CHAT_PATHS["openai"], OVERSIZE, **{"X-Request-Id": "big"})
    assert response.status_code == 413
    assert response.headers.get("x-request-id") == "big"


@both_dialects
def test_an_oversize_chunked_body_is_a_413(gw: RunningGateway, dialect: str) -> None:
    def chunks() -> Iterator[bytes]:
        for start in range(0, len(OVERSIZE), 512):
            yield OVERSIZE[start : start + 512]

    response = httpx.post(gw.url + CHAT_PATHS[dialect], content=chunks(), headers={"X-Request-Id": "big"})
    assert "content-length" not in response.request.headers
    assert_dialect_error(response, dialect, 413, f"{MAX_BODY_BYTES} bytes")
    assert response.headers["x-request-id"] == "big"


@both_dialects
def test_an_unknown_model_is_a_404(gw: RunningGateway, dialect: str) -> None:
    body = {"model": "no-such-model", "messages": [{"role": "user", "content": "hi"}]}
    response = post(gw, CHAT_PATHS[dialect], json.dumps(body).encode())
    assert_dialect_error(response, dialect, 404, "'no-such-model' is not served by any backend")
    assert "x-gatewayd-backend" not in response.headers
    if dialect == "openai":
        assert response.json()["error"]["code"] == "model_not_found"


def test_official_clients_see_an_unknown_model_as_not_found(gw: RunningGateway) -> None:
    with (
        openai.OpenAI(base_url=gw.openai_url, api_key="x", max_retries=0) as client,
        pytest.raises(openai.NotFoundError) as openai_error,
    ):
        client.embeddings.create(model="no-such-model", input="hi")
    assert openai_error.value.code == "model_not_found"
    with ollama.Client(host=gw.url) as client, pytest.raises(ollama.ResponseError) as ollama_error:
        client.generate(model="no-such-model", prompt="hi")
    assert ollama_error.value.status_code == 404
    assert "no-such-model" in ollama_error.value.error


def test_a_get_on_an_inference_path_is_not_relayed(gw: RunningGateway, setup: Setup) -> None:
    before = setup.fake.stats().count("/v1/chat/completions")
    response = httpx.get(gw.openai_url + "/chat/completions")
    assert response.status_code in (404, 405)
    assert "error" in response.json()
    assert setup.fake.stats().count("/v1/chat/completions") == before


def test_bad_requests_do_not_disturb_a_stream_in_flight(gw: RunningGateway, setup: Setup) -> None:
    setup.fake.set(chunk_delay_seconds=0.02, chunks=12)
    try:
        with openai.OpenAI(base_url=gw.openai_url, api_key="x", max_retries=0) as client:
            stream = client.chat.completions.create(
                model=MODEL,
                messages=[{"role": "user", "content": "keep going"}],
                stream=True,
            )
            chunks = iter(stream)
            received = [next(chunks)]  # under way
            for dialect in ("openai", "ollama"):
                path = CHAT_PATHS[dialect]
                assert post(gw, path, b"{not json").status_code == 400
                assert post(gw, path, b"[]").status_code == 400
                assert post(gw, path, b"{}").status_code == 400
                assert post(gw, path, OVERSIZE).status_code == 413
                assert (
                    post(
                        gw, path, b'{"model": "nope", "messages": [{"role": "user", "content": "x"}]}'
                    ).status_code
                    == 404
                )
            received.extend(chunks)
    finally:
        setup.fake.set(chunk_delay_seconds=0.0, chunks=8)
    text = "".join(c.choices[0].delta.content or "" for c in received if c.choices)
    assert text == reply_text("keep going")
    assert received[-1].choices[0].finish_reason == "stop"
