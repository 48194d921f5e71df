import json
from typing import Any

import ollama
import openai
import pytest

from gatewayd.config import BackendKind
from gatewayd.errors import (
    BackendTimeout,
    BackendUnavailable,
    BadGateway,
    BadRequest,
    Draining,
    ModelNotFound,
    Overloaded,
    RequestError,
    UpstreamStatus,
)
from gatewayd.gateway.backends.kinds import KINDS
from gatewayd.gateway.core.framing import SSE_DONE, Framing, encode, encode_ndjson, encode_sse
from gatewayd.gateway.core.profile import MAX_UPSTREAM_ERROR_CHARS
from gatewayd.gateway.dialects.anthropic import ANTHROPIC
from gatewayd.gateway.dialects.ollama import OLLAMA
from gatewayd.gateway.dialects.openai_chat import OPENAI
from gatewayd.gateway.dialects.openai_responses import RESPONSES
from gatewayd.gateway.dialects.registry import Api
from tests.unit.gateway.dialects.harness import drain, ollama_client, openai_client

CHAT = [{"role": "user", "content": "hi"}]


def test_api_knows_its_dialect_path_framing_and_kind() -> None:
    for api in Api:
        assert api.path.startswith("/api/" if api.dialect is OLLAMA else "/v1/")
        assert api.framing is (Framing.NDJSON if api.dialect is OLLAMA else Framing.SSE)
    assert Api.ANTHROPIC_MESSAGES.dialect is ANTHROPIC
    assert Api.OPENAI_RESPONSES.dialect is RESPONSES
    assert Api.OPENAI_CHAT.path == "/v1/chat/completions"
    assert Api.OLLAMA_EMBEDDINGS.path == "/api/embeddings"
    assert {api for api in Api if api.is_embedding} == {
        Api.OPENAI_EMBEDDINGS,
        Api.OLLAMA_EMBED,
        Api.OLLAMA_EMBEDDINGS,
    }


def test_backend_dialect() -> None:
    assert KINDS[BackendKind.OLLAMA].dialect is OLLAMA
    for kind in (BackendKind.OPENAI, BackendKind.LLAMA_SERVER, BackendKind.VLLM):
        assert KINDS[kind].dialect is OPENAI
    assert KINDS[BackendKind.ANTHROPIC].dialect is ANTHROPIC


@pytest.mark.parametrize(
    ("api", "body", "expected"),
    [
        (Api.OPENAI_CHAT, {}, False),
        (Api.OPENAI_CHAT, {"stream": True}, True),
        (Api.OPENAI_CHAT, {"stream": "yes"}, False),
        (Api.OPENAI_COMPLETIONS, {"stream": False}, False),
        (Api.OLLAMA_CHAT, {}, True),
        (Api.OLLAMA_CHAT, {"stream": None}, True),
        (Api.OLLAMA_CHAT, {"stream": False}, False),
        (Api.OLLAMA_GENERATE, {"stream": True}, True),
        (Api.OLLAMA_EMBED, {}, False),
        (Api.OLLAMA_EMBEDDINGS, {"stream": True}, False),
        (Api.OPENAI_EMBEDDINGS, {"stream": True}, False),
    ],
)
def test_wants_stream(api: Api, body: dict[str, Any], expected: bool) -> None:
    assert api.wants_stream(body) is expected


@pytest.mark.parametrize(
    ("error", "openai_exception", "status"),
    [
        (BadRequest("'messages' must be a list", param="messages"), openai.BadRequestError, 400),
        (ModelNotFound("model 'x' not found"), openai.NotFoundError, 404),
        (Overloaded("queue full"), openai.RateLimitError, 429),
        (Draining("shutting down"), openai.InternalServerError, 503),
        (BackendUnavailable("backend a is down"), openai.InternalServerError, 503),
        (BackendTimeout("backend a timed out"), openai.InternalServerError, 504),
        (BadGateway("backend returned an unexpected response"), openai.InternalServerError, 502),
    ],
)
def test_openai_error_bodies_become_the_openai_clients_exceptions(
    error: RequestError, openai_exception: type[openai.APIStatusError], status: int
) -> None:
    assert OPENAI.error_status(error) == status
    client = openai_client(lambda path, body: (status, OPENAI.error_body(error)))
    with pytest.raises(openai_exception) as raised:
        client.chat.completions.create(model="m", messages=CHAT)
    assert raised.value.status_code == status
    assert raised.value.body == {
        "message": error.message,
        "type": error.type,
        "param": error.param,
        "code": error.code,
    }
    assert raised.value.code == error.code
    assert raised.value.param == error.param


@pytest.mark.parametrize(
    "error",
    [
        BadRequest("bad"),
        ModelNotFound("model 'x' not found"),
        Overloaded("queue full"),
        BackendTimeout("slow"),
    ],
)
def test_ollama_error_bodies_become_the_ollama_clients_response_error(error: RequestError) -> None:
    status = OLLAMA.error_status(error)
    assert status == (503 if isinstance(error, Overloaded) else error.status)
    assert json.loads(OLLAMA.error_body(error)) == {"error": error.message}
    client = ollama_client(lambda path, body: (status, OLLAMA.error_body(error)))
    with pytest.raises(ollama.ResponseError) as raised:
        client.chat(model="m", messages=CHAT)
    assert raised.value.error == error.message
    assert raised.value.status_code == status


def upstream(status: int, body: bytes) -> UpstreamStatus:
    return UpstreamStatus(f"backend answered {status}", status=status, body=body)


OPENAI_SHAPED = (
    b'{"error":{"message":"context too long","type":"invalid_request_error","param":null,"code":null}}'
)
OLLAMA_SHAPED = b'{"error":"model \\"x\\" not found, try pulling it first"}'


def test_an_upstream_error_in_the_clients_dialect_passes_through_unchanged() -> None:
    assert OPENAI.error_body(upstream(400, OPENAI_SHAPED)) == OPENAI_SHAPED
    assert OLLAMA.error_body(upstream(404, OLLAMA_SHAPED)) == OLLAMA_SHAPED
    assert OPENAI.error_status(upstream(400, OPENAI_SHAPED)) == 400


@pytest.mark.parametrize(
    ("body", "message"),
    [
        (OPENAI_SHAPED, "context too long"),
        (OLLAMA_SHAPED, 'model "x" not found, try pulling it first'),
        (b'{"object":"error","message":"vllm says no","type":"BadRequestError","code":400}', "vllm says no"),
        (
            b'{"detail":[{"loc":["body","messages"],"msg":"field required"}]}',
            '[{"loc":["body","messages"],"msg":"field required"}]',
        ),
        (b"<html>502 Bad Gateway</html>\n", "<html>502 Bad Gateway</html>"),
        (b"", "backend answered 400"),
        (b"\xff\xfe", "\ufffd\ufffd"),
    ],
)
def test_an_upstream_error_in_another_shape_is_wrapped_in_the_clients_dialect(
    body: bytes, message: str
) -> None:
    if body != OPENAI_SHAPED:
        assert json.loads(OPENAI.error_body(upstream(400, body))) == {
            "error": {
                "message": message,
                "type": "invalid_request_error",
                "param": None,
                "code": "upstream_error",
            }
        }
    if body != OLLAMA_SHAPED:
        assert json.loads(OLLAMA.error_body(upstream(400, body))) == {"error": message}


def test_a_wrapped_upstream_error_gets_the_openai_type_of_its_status_and_a_bounded_message() -> None:
    types = {
        401: "authentication_error",
        403: "permission_error",
        404: "not_found_error",
        429: "rate_limit_error",
    }
    for status, kind in {**types, 422: "invalid_request_error", 500: "server_error"}.items():
        assert json.loads(OPENAI.error_body(upstream(status, b"no")))["error"]["type"] == kind
    long = json.loads(OLLAMA.error_body(upstream(500, b"x" * 10_000)))["error"]
    assert len(long) == MAX_UPSTREAM_ERROR_CHARS + 1
    assert long.endswith("…")


def test_an_sse_stream_error_event_makes_the_openai_client_raise_api_error() -> None:
    chunk = {
        "id": "chatcmpl-1",
        "object": "chat.completion.chunk",
        "created": 1,
        "model": "m",
        "choices": [{"index": 0, "delta": {"role": "assistant", "content": "Hel"}, "finish_reason": None}],
    }
    event = encode(Framing.SSE, OPENAI.stream_error("backend a timed out", "backend_timeout"))
    assert event.endswith(b"\n\n")
    assert SSE_DONE not in event
    client = openai_client(lambda path, body: (200, encode_sse(chunk) + event))
    received: list[Any] = []
    with pytest.raises(openai.APIError) as raised:
        drain(client.chat.completions.create(model="m", messages=CHAT, stream=True), received)
    assert [part.choices[0].delta.content for part in received] == ["Hel"]
    assert raised.value.message == "backend a timed out"
    assert raised.value.code == "backend_timeout"
    assert raised.value.type == "server_error"


def test_an_ndjson_stream_error_line_makes_the_ollama_client_raise_response_error() -> None:
    line = {
        "model": "m",
        "created_at": "2024-05-01T12:00:00Z",
        "message": {"role": "assistant", "content": "Hel"},
        "done": False,
    }
    event = encode(Framing.NDJSON, OLLAMA.stream_error("backend a timed out", "backend_timeout"))
    assert event == b'{"error":"backend a timed out"}\n'
    client = ollama_client(lambda path, body: (200, encode_ndjson(line) + event))
    received: list[Any] = []
    with pytest.raises(ollama.ResponseError) as raised:
        drain(client.chat(model="m", messages=CHAT, stream=True), received)
    assert [part.message.content for part in received] == ["Hel"]
    assert raised.value.error == "backend a timed out"
