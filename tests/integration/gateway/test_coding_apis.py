"""/v1/messages and /v1/responses through the real gateway, with the official anthropic and openai clients,
against scripted backends of every kind that speak only their own dialect (so a pass on the OpenAI and
Ollama kinds proves translation; on the Anthropic kind /v1/messages is passed through as bytes)."""

from __future__ import annotations

import base64
import json
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import anthropic
import httpx
import openai
import pytest

from gatewayd.config import AuthMode, AuthSettings, Backend, BackendKind, Config
from tests.support.fake_scripted import Script, ScriptedBackend, running_scripted_backend
from tests.support.gateway import RunningGateway, running_gateway

ARGS = {"city": "Paris", "days": 3, "note": "caf\u00e9 \u2615"}
TOOL = {
    "name": "get_weather",
    "description": "the weather",
    "input_schema": {"type": "object", "properties": {"city": {"type": "string"}}},
}
FUNCTION = {"type": "function", "name": "get_weather", "parameters": TOOL["input_schema"]}
#: one model per backend kind; the path each backend kind serves chat on
MODELS = {"openai": "m-openai", "ollama": "m-ollama", "anthropic": "m-anthropic"}
CHAT_PATHS = {"openai": "/v1/chat/completions", "ollama": "/api/chat", "anthropic": "/v1/messages"}
ADMIN = "admin-token-for-tests"
PNG = base64.b64encode(b"\x89PNG\r\n\x1a\n" + b"\0" * 16).decode()

every_kind = pytest.mark.parametrize("kind", list(MODELS))


@dataclass
class Setup:
    gateway: RunningGateway
    fakes: dict[str, ScriptedBackend]
    script: Script


@pytest.fixture(scope="module")
def setup(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Setup]:
    script = Script(tool_name="get_weather", tool_arguments=ARGS, final_text="all done", thinking=None)
    with (
        running_scripted_backend("openai", models=(MODELS["openai"],), script=script) as oa,
        running_scripted_backend("ollama", models=(MODELS["ollama"],), script=script) as ol,
        running_scripted_backend("anthropic", models=(MODELS["anthropic"],), script=script) as an,
    ):
        config = Config(
            backends=(
                Backend(id="oa", url=oa.url, kind=BackendKind.OPENAI),
                Backend(id="ol", url=ol.url, kind=BackendKind.OLLAMA),
                Backend(id="an", url=an.url, kind=BackendKind.ANTHROPIC),
            )
        )
        with running_gateway(config, state_dir=tmp_path_factory.mktemp("state")) as gateway:
            yield Setup(gateway, {"openai": oa, "ollama": ol, "anthropic": an}, script)


@pytest.fixture
def claude(setup: Setup) -> Iterator[anthropic.Anthropic]:
    setup.script.fail_status = None
    with anthropic.Anthropic(base_url=setup.gateway.url, api_key="k", max_retries=0, timeout=10) as client:
        yield client


@pytest.fixture
def oai(setup: Setup) -> Iterator[openai.OpenAI]:
    setup.script.fail_status = None
    with openai.OpenAI(base_url=setup.gateway.openai_url, api_key="k", max_retries=0, timeout=10) as client:
        yield client


def last_body(setup: Setup, kind: str) -> dict:
    return setup.fakes[kind].bodies(CHAT_PATHS[kind])[-1]


# --- /v1/messages ------------------------------------------------------------------------------------------


@every_kind
def test_messages_whole_and_streamed(kind: str, claude: anthropic.Anthropic) -> None:
    message = claude.messages.create(
        model=MODELS[kind], max_tokens=50, messages=[{"role": "user", "content": "hello"}]
    )
    assert [block.type for block in message.content] == ["text"]
    assert message.content[0].text == "hello from the fake"  # type: ignore[union-attr]
    assert message.stop_reason == "end_turn"
    assert (message.usage.input_tokens, message.usage.output_tokens) == (11, 7)
    with claude.messages.stream(
        model=MODELS[kind], max_tokens=50, messages=[{"role": "user", "content": "hello"}]
    ) as stream:
        texts = list(stream.text_stream)
        final = stream.get_final_message()
    assert "".join(texts) == "hello from the fake"
    assert len(texts) > 1  # it came in pieces
    assert final.stop_reason == "end_turn"
    assert final.usage.output_tokens == 7


@every_kind
@pytest.mark.parametrize("stream", [False, True], ids=["whole", "stream"])
def test_messages_tool_call_round_trip(
    kind: str, stream: bool, claude: anthropic.Anthropic, setup: Setup
) -> None:
    question = [{"role": "user", "content": "weather in Paris?"}]
    if stream:
        with claude.messages.stream(model=MODELS[kind], max_tokens=50, tools=[TOOL], messages=question) as s:
            first = s.get_final_message()
    else:
        first = claude.messages.create(model=MODELS[kind], max_tokens=50, tools=[TOOL], messages=question)
    assert first.stop_reason == "tool_use"
    call = first.content[-1]
    assert call.type == "tool_use"
    assert call.name == "get_weather"
    assert call.input == ARGS  # streamed: the SDK joined the input_json_delta pieces
    assert call.id
    follow_up = [
        *question,
        {"role": "assistant", "content": [block.model_dump(exclude_none=True) for block in first.content]},
        {
            "role": "user",
            "content": [{"type": "tool_result", "tool_use_id": call.id, "content": "sunny, 21C"}],
        },
    ]
    answer = claude.messages.create(model=MODELS[kind], max_tokens=50, tools=[TOOL], messages=follow_up)
    assert answer.content[0].text == "all done: sunny, 21C"  # type: ignore[union-attr]
    sent = last_body(setup, kind)
    if kind == "openai":  # the result answers the call it names
        assert sent["messages"][-2]["tool_calls"][0]["id"] == call.id
        assert sent["messages"][-1]["tool_call_id"] == call.id
    elif kind == "ollama":
        assert sent["messages"][-1]["tool_name"] == "get_weather"


@every_kind
def test_system_blocks_a_mid_conversation_system_message_and_images(
    kind: str, claude: anthropic.Anthropic, setup: Setup
) -> None:
    claude.messages.create(
        model=MODELS[kind],
        max_tokens=50,
        system=[
            {"type": "text", "text": "You are terse.", "cache_control": {"type": "ephemeral"}},
            {"type": "text", "text": "Answer in French."},
        ],
        messages=[
            {
                "role": "user",
                "content": [
                    {"type": "text", "text": "what is this?"},
                    {"type": "image", "source": {"type": "base64", "media_type": "image/png", "data": PNG}},
                ],
            },
            {"role": "system", "content": "mid-conversation"},  # type: ignore[typeddict-item]
            {"role": "user", "content": "well?"},
        ],
        extra_body={"context_management": {"edits": []}, "output_config": {"effort": "low"}},
        extra_headers={"anthropic-beta": "interleaved-thinking-2025-05-14,unknown-beta-2099-01-01"},
    )
    sent = last_body(setup, kind)
    if kind == "anthropic":
        assert sent["system"][1]["text"] == "Answer in French."
        return
    system = [m["content"] for m in sent["messages"] if m["role"] == "system"]
    assert "You are terse." in system[0]
    assert "Answer in French." in system[0]
    assert system[1] == "mid-conversation"
    user = sent["messages"][1]
    if kind == "openai":
        assert user["content"][1]["image_url"]["url"] == f"data:image/png;base64,{PNG}"
    else:
        assert user["images"] == [PNG]


def test_messages_pass_through_to_an_anthropic_backend_untouched(
    claude: anthropic.Anthropic, setup: Setup
) -> None:
    body = {
        "model": MODELS["anthropic"],
        "max_tokens": 9,
        "messages": [{"role": "user", "content": "hi"}],
        "some_future_field": {"kept": True},
    }
    with httpx.Client(timeout=10) as http:
        answer = http.post(
            f"{setup.gateway.url}/v1/messages", json=body, headers={"anthropic-version": "2023-06-01"}
        )
    assert answer.status_code == 200
    assert answer.json()["id"] == "msg_fake"  # the backend's own answer
    assert last_body(setup, "anthropic")["some_future_field"] == {"kept": True}
    with claude.messages.stream(
        model=MODELS["anthropic"],
        max_tokens=9,
        messages=[{"role": "user", "content": "hi"}],
        extra_headers={"anthropic-beta": "context-management-2025-06-27"},
    ) as stream:
        assert stream.get_final_message().usage.output_tokens == 7
    sent = setup.fakes["anthropic"].requests[-1].headers
    assert sent["anthropic-beta"] == "context-management-2025-06-27"  # what the body's features need
    assert sent["anthropic-version"] == "2023-06-01"


@pytest.mark.parametrize(
    ("kind", "source"), [("anthropic", "backend"), ("openai", "estimate"), ("ollama", "estimate")]
)
def test_count_tokens(kind: str, source: str, claude: anthropic.Anthropic) -> None:
    raw = claude.messages.with_raw_response.count_tokens(
        model=MODELS[kind], messages=[{"role": "user", "content": "x" * 400}]
    )
    assert raw.headers["x-gatewayd-token-count"] == source
    count = raw.parse().input_tokens
    assert count == (1134 if kind == "anthropic" else 100)


def test_messages_errors_in_anthropics_shape(claude: anthropic.Anthropic, setup: Setup) -> None:
    with pytest.raises(anthropic.NotFoundError) as missing:
        claude.messages.create(
            model="no-such-model", max_tokens=5, messages=[{"role": "user", "content": "x"}]
        )
    assert missing.value.body["error"]["type"] == "not_found_error"  # type: ignore[index]
    with httpx.Client(timeout=10) as http:
        answer = http.post(
            f"{setup.gateway.url}/v1/messages", json={"model": MODELS["openai"], "messages": []}
        )
    assert answer.status_code == 400
    assert answer.json()["type"] == "error"
    assert answer.json()["error"]["type"] == "invalid_request_error"
    setup.script.fail_status = 400
    try:
        for kind in MODELS:
            with pytest.raises(anthropic.BadRequestError) as refused:
                claude.messages.create(
                    model=MODELS[kind], max_tokens=5, messages=[{"role": "user", "content": "x"}]
                )
            assert "scripted failure" in str(refused.value)
    finally:
        setup.script.fail_status = None


def test_anthropic_model_list_and_the_connectivity_probe(claude: anthropic.Anthropic, setup: Setup) -> None:
    ids = {model.id for model in claude.models.list()}
    assert set(MODELS.values()) <= ids
    with httpx.Client(timeout=10) as http:
        assert http.head(setup.gateway.url + "/").status_code == 200
        assert http.get(setup.gateway.openai_url + "/models").json()["object"] == "list"  # OpenAI's, still


# --- /v1/responses -----------------------------------------------------------------------------------------


@every_kind
def test_responses_whole_and_streamed(kind: str, oai: openai.OpenAI) -> None:
    response = oai.responses.create(model=MODELS[kind], input="hello", instructions="be brief")
    assert response.output_text == "hello from the fake"
    assert response.status == "completed"
    assert response.usage is not None
    assert (response.usage.input_tokens, response.usage.output_tokens) == (11, 7)
    with oai.responses.stream(model=MODELS[kind], input="hello") as stream:
        deltas = [event.delta for event in stream if event.type == "response.output_text.delta"]
        final = stream.get_final_response()
    assert "".join(deltas) == "hello from the fake"
    assert final.output_text == "hello from the fake"


@every_kind
@pytest.mark.parametrize("stream", [False, True], ids=["whole", "stream"])
def test_responses_tool_call_round_trip(kind: str, stream: bool, oai: openai.OpenAI) -> None:
    tools = [FUNCTION, {"type": "web_search"}]  # a tool type no chat backend runs: left out, not a 400
    if stream:
        with oai.responses.stream(model=MODELS[kind], input="weather?", tools=tools, store=False) as s:
            first = s.get_final_response()
    else:
        first = oai.responses.create(model=MODELS[kind], input="weather?", tools=tools, store=False)  # type: ignore[arg-type]
    calls = [item for item in first.output if item.type == "function_call"]
    assert len(calls) == 1
    assert json.loads(calls[0].arguments) == ARGS
    items = [
        {"role": "user", "content": "weather?"},
        calls[0].model_dump(exclude_none=True),
        {"type": "function_call_output", "call_id": calls[0].call_id, "output": "rainy"},
    ]
    answer = oai.responses.create(model=MODELS[kind], input=items, tools=tools, store=False)  # type: ignore[arg-type]
    assert answer.output_text == "all done: rainy"


@every_kind
def test_previous_response_id_continues_a_stored_conversation(
    kind: str, oai: openai.OpenAI, setup: Setup
) -> None:
    first = oai.responses.create(model=MODELS[kind], input="weather?", tools=[FUNCTION])  # type: ignore[list-item]
    call = next(item for item in first.output if item.type == "function_call")
    answer = oai.responses.create(
        model=MODELS[kind],
        previous_response_id=first.id,
        input=[{"type": "function_call_output", "call_id": call.call_id, "output": "foggy"}],
        tools=[FUNCTION],  # type: ignore[list-item]
    )
    assert answer.output_text == "all done: foggy"
    sent = last_body(setup, kind)
    texts = json.dumps(sent["messages"])
    assert "weather?" in texts  # the stored turn went before the new input


def test_previous_response_id_of_an_unstored_response_is_404(oai: openai.OpenAI) -> None:
    first = oai.responses.create(model=MODELS["openai"], input="hi", store=False)
    with pytest.raises(openai.NotFoundError):
        oai.responses.create(model=MODELS["openai"], input="again", previous_response_id=first.id)
    with pytest.raises(openai.NotFoundError):
        oai.responses.create(model=MODELS["openai"], input="again", previous_response_id="resp_unknown")


def test_responses_errors_in_openais_shape(oai: openai.OpenAI, setup: Setup) -> None:
    with pytest.raises(openai.NotFoundError) as missing:
        oai.responses.create(model="no-such-model", input="x")
    assert missing.value.code == "model_not_found"
    setup.script.fail_status = 400
    try:
        with pytest.raises(openai.BadRequestError):
            oai.responses.create(model=MODELS["ollama"], input="x")
    finally:
        setup.script.fail_status = None


# --- keys -------------------------------------------------------------------------------------------------


def test_with_keys_on_x_api_key_and_bearer_both_authenticate(tmp_path: Path) -> None:
    with running_scripted_backend("openai", models=("m",)) as fake:
        config = Config(
            backends=(Backend(id="oa", url=fake.url, kind=BackendKind.OPENAI),),
            auth=AuthSettings(mode=AuthMode.KEYS, admin_token=ADMIN),
        )
        state = tmp_path / "state"
        with running_gateway(config, state_dir=state) as gw:
            created = httpx.post(
                gw.url + "/admin/keys", json={"name": "agent"}, headers={"Authorization": f"Bearer {ADMIN}"}
            )
            key = created.json()["key"]
            ask = [{"role": "user", "content": "hi"}]
            with anthropic.Anthropic(base_url=gw.url, api_key=key, max_retries=0, timeout=10) as by_key:
                assert by_key.messages.create(model="m", max_tokens=5, messages=ask).content
            # what Claude Code sends for ANTHROPIC_API_KEY (this client version sends its api_key as Bearer)
            body = {"model": "m", "max_tokens": 5, "messages": ask}
            by_header = httpx.post(gw.url + "/v1/messages", json=body, headers={"x-api-key": key}, timeout=10)
            assert by_header.status_code == 200, by_header.text
            anthropic_headers = {"x-api-key": key, "anthropic-version": "2023-06-01"}
            listed = httpx.get(gw.url + "/v1/models", headers=anthropic_headers, timeout=10)
            assert listed.status_code == 200, listed.text
            assert listed.json()["data"][0]["type"] == "model"
            with anthropic.Anthropic(base_url=gw.url, auth_token=key, max_retries=0, timeout=10) as by_bearer:
                assert by_bearer.messages.create(model="m", max_tokens=5, messages=ask).content
            with (
                anthropic.Anthropic(base_url=gw.url, api_key="wrong", max_retries=0, timeout=10) as wrong,
                pytest.raises(anthropic.AuthenticationError) as refused,
            ):
                wrong.messages.create(model="m", max_tokens=5, messages=ask)
            assert refused.value.body["error"]["type"] == "authentication_error"  # type: ignore[index]
