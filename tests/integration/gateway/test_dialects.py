"""Both dialects in both directions, through the real gateway, with the official clients as real clients.

One gateway fronts an OpenAI-kind fake serving ``gpt-fake`` and an Ollama-kind fake serving ``llama-fake``,
plus route aliases to each. Every test names the model, and so the backend dialect, it goes through.
"""

from __future__ import annotations

import base64
import struct
from collections.abc import Iterator
from dataclasses import dataclass

import httpx
import ollama
import openai
import pytest
from openai.types.chat import ChatCompletionMessageParam

from gatewayd.config import Backend, BackendKind, Config, Route, RouteTarget
from tests.support.fake_backend import FakeBackend, running_fake_backend
from tests.support.fake_replies import embedding_vector, reply_text, word_count
from tests.support.gateway import RunningGateway, running_gateway

OPENAI_MODEL = "gpt-fake"
OLLAMA_MODEL = "llama-fake"
#: the fake cuts every reply into this many pieces, which is also its completion token count
CHUNKS = 8
DIM = 8
PROMPT = "name three colours please"
BACKEND_OF = {OPENAI_MODEL: "oa", OLLAMA_MODEL: "ol", "alias-oa": "oa", "alias-ol": "ol"}
#: the path each client endpoint reaches on each backend dialect
OPENAI_CHAT = "/v1/chat/completions"
OLLAMA_CHAT = "/api/chat"

both_backends = pytest.mark.parametrize(
    "model", [OPENAI_MODEL, OLLAMA_MODEL], ids=["openai-backend", "ollama-backend"]
)


@dataclass
class Setup:
    gateway: RunningGateway
    oa: FakeBackend
    ol: FakeBackend

    def fake(self, model: str) -> FakeBackend:
        return self.oa if BACKEND_OF[model] == "oa" else self.ol


@pytest.fixture(scope="module")
def setup() -> Iterator[Setup]:
    with (
        running_fake_backend(models=(OPENAI_MODEL,), kind="openai") as oa,
        running_fake_backend(models=(OLLAMA_MODEL,), kind="ollama") as ol,
    ):
        config = Config(
            backends=(
                Backend(id="oa", url=oa.url, kind=BackendKind.OPENAI),
                Backend(id="ol", url=ol.url, kind=BackendKind.OLLAMA),
            ),
            routes=(
                Route(model="alias-oa", targets=(RouteTarget(backend="oa", model=OPENAI_MODEL),)),
                Route(model="alias-ol", targets=(RouteTarget(backend="ol", model=OLLAMA_MODEL),)),
            ),
        )
        with running_gateway(config) as gateway:
            yield Setup(gateway, oa, ol)


@pytest.fixture
def gw(setup: Setup) -> RunningGateway:
    return setup.gateway


@pytest.fixture
def oai(gw: RunningGateway) -> Iterator[openai.OpenAI]:
    with openai.OpenAI(base_url=gw.openai_url, api_key="x", max_retries=0, timeout=10) as client:
        yield client


@pytest.fixture
def oll(gw: RunningGateway) -> Iterator[ollama.Client]:
    with ollama.Client(host=gw.url, timeout=10) as client:
        yield client


def user(text: str = PROMPT) -> list[ChatCompletionMessageParam]:
    return [{"role": "system", "content": "be brief"}, {"role": "user", "content": text}]


# --- OpenAI client ---------------------------------------------------------------------------------------


@both_backends
def test_openai_chat(oai: openai.OpenAI, model: str) -> None:
    raw = oai.chat.completions.with_raw_response.create(model=model, messages=user())
    completion = raw.parse()
    assert raw.headers["x-gatewayd-backend"] == BACKEND_OF[model]
    assert raw.headers["x-request-id"]
    assert completion.model == model
    assert completion.choices[0].message.content == reply_text(PROMPT)
    assert completion.choices[0].finish_reason == "stop"
    assert completion.usage is not None
    assert completion.usage.prompt_tokens == word_count(PROMPT)
    assert completion.usage.completion_tokens == CHUNKS


@both_backends
def test_openai_chat_stream_with_usage(oai: openai.OpenAI, model: str) -> None:
    stream = oai.chat.completions.create(
        model=model,
        messages=user(),
        stream=True,
        stream_options={"include_usage": True},
    )
    assert stream.response.headers["x-gatewayd-backend"] == BACKEND_OF[model]
    assert stream.response.headers["content-type"].startswith("text/event-stream")
    chunks = list(stream)
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text == reply_text(PROMPT)
    assert {c.model for c in chunks} == {model}
    assert [c.choices[0].finish_reason for c in chunks if c.choices and c.choices[0].finish_reason] == [
        "stop"
    ]
    usage = chunks[-1].usage
    assert usage is not None
    assert (usage.prompt_tokens, usage.completion_tokens) == (word_count(PROMPT), CHUNKS)


@both_backends
def test_openai_chat_stream_without_usage_sends_no_usage_chunk(oai: openai.OpenAI, model: str) -> None:
    chunks = list(oai.chat.completions.create(model=model, messages=user(), stream=True))
    assert all(c.usage is None and c.choices for c in chunks)
    assert "".join(c.choices[0].delta.content or "" for c in chunks) == reply_text(PROMPT)


@both_backends
def test_openai_completions(oai: openai.OpenAI, model: str) -> None:
    completion = oai.completions.create(model=model, prompt="once upon a time")
    assert completion.model == model
    assert completion.choices[0].text == reply_text("once upon a time")
    assert completion.usage is not None
    assert completion.usage.prompt_tokens == 4
    assert completion.usage.completion_tokens == CHUNKS


@both_backends
def test_openai_completions_stream(oai: openai.OpenAI, model: str) -> None:
    stream = oai.completions.create(
        model=model, prompt="once upon a time", stream=True, stream_options={"include_usage": True}
    )
    chunks = list(stream)
    assert "".join(c.choices[0].text for c in chunks if c.choices) == reply_text("once upon a time")
    assert chunks[-1].usage is not None
    assert chunks[-1].usage.completion_tokens == CHUNKS
    assert stream.response.headers["x-gatewayd-backend"] == BACKEND_OF[model]


@both_backends
def test_openai_embeddings_default_base64_encoding(oai: openai.OpenAI, model: str, setup: Setup) -> None:
    result = oai.embeddings.create(model=model, input=["red apple", "green"])
    assert [d.embedding for d in result.data] == [
        embedding_vector("red apple", DIM),
        embedding_vector("green", DIM),
    ]
    assert result.model == model
    assert result.usage.prompt_tokens == 3
    if BACKEND_OF[model] == "oa":  # same dialect: the client's own encoding reaches the backend
        assert setup.oa.stats().last_body["/v1/embeddings"]["encoding_format"] == "base64"


@both_backends
def test_openai_embeddings_float_encoding(model: str, gw: RunningGateway) -> None:
    response = httpx.post(
        f"{gw.openai_url}/embeddings",
        json={"model": model, "input": "red apple", "encoding_format": "float"},
    )
    assert response.status_code == 200
    assert response.json()["data"][0]["embedding"] == embedding_vector("red apple", DIM)


def test_openai_base64_embeddings_over_ollama_are_little_endian_float32(gw: RunningGateway) -> None:
    response = httpx.post(
        f"{gw.openai_url}/embeddings",
        json={"model": OLLAMA_MODEL, "input": "red apple", "encoding_format": "base64"},
    )
    encoded = response.json()["data"][0]["embedding"]
    assert isinstance(encoded, str)
    raw = base64.b64decode(encoded)
    assert list(struct.unpack(f"<{DIM}f", raw)) == embedding_vector("red apple", DIM)


# --- Ollama client ---------------------------------------------------------------------------------------


@both_backends
def test_ollama_chat(oll: ollama.Client, model: str) -> None:
    answer = oll.chat(model=model, messages=user())
    assert answer.model == model
    assert answer.message.content == reply_text(PROMPT)
    assert answer.done is True
    assert answer.done_reason == "stop"
    assert answer.prompt_eval_count == word_count(PROMPT)
    assert answer.eval_count == CHUNKS


@both_backends
def test_ollama_chat_stream(oll: ollama.Client, model: str) -> None:
    parts = list(oll.chat(model=model, messages=user(), stream=True))
    assert "".join(p.message.content or "" for p in parts) == reply_text(PROMPT)
    assert [p.done for p in parts] == [False] * (len(parts) - 1) + [True]
    assert {p.model for p in parts} == {model}
    assert parts[-1].prompt_eval_count == word_count(PROMPT)
    assert parts[-1].eval_count == CHUNKS


@both_backends
def test_ollama_generate(oll: ollama.Client, model: str) -> None:
    answer = oll.generate(model=model, prompt="why is the sky blue")
    assert answer.model == model
    assert answer.response == reply_text("why is the sky blue")
    assert answer.eval_count == CHUNKS
    assert answer.prompt_eval_count is not None
    assert answer.prompt_eval_count >= word_count("why is the sky blue")


@both_backends
def test_ollama_generate_stream(oll: ollama.Client, model: str) -> None:
    parts = list(oll.generate(model=model, prompt="why is the sky blue", stream=True))
    assert "".join(p.response or "" for p in parts) == reply_text("why is the sky blue")
    assert parts[-1].done is True
    assert parts[-1].eval_count == CHUNKS


@both_backends
def test_ollama_embed(oll: ollama.Client, model: str) -> None:
    result = oll.embed(model=model, input=["red apple", "green"])
    assert result.model == model
    assert [list(v) for v in result.embeddings] == [
        embedding_vector("red apple", DIM),
        embedding_vector("green", DIM),
    ]
    assert result.prompt_eval_count == 3


@both_backends
def test_ollama_legacy_embeddings(oll: ollama.Client, model: str) -> None:
    result = oll.embeddings(model=model, prompt="red apple")
    assert list(result.embedding) == embedding_vector("red apple", DIM)


# --- model names and aliases -----------------------------------------------------------------------------


@pytest.mark.parametrize("alias", ["alias-oa", "alias-ol"])
def test_a_route_alias_reaches_the_backend_under_its_own_name(
    oai: openai.OpenAI, oll: ollama.Client, setup: Setup, alias: str
) -> None:
    fake = setup.fake(alias)
    backend_model = OPENAI_MODEL if fake is setup.oa else OLLAMA_MODEL
    chat_path = OPENAI_CHAT if fake is setup.oa else OLLAMA_CHAT

    completion = oai.chat.completions.create(model=alias, messages=user())
    assert completion.choices[0].message.content == reply_text(PROMPT)
    assert fake.stats().last_body[chat_path]["model"] == backend_model

    answer = oll.chat(model=alias, messages=user())
    assert answer.message.content == reply_text(PROMPT)
    assert fake.stats().last_body[chat_path]["model"] == backend_model


def test_every_answer_names_the_model_that_produced_it(oai: openai.OpenAI, oll: ollama.Client) -> None:
    """An alias resolves to a backend model, and answers name that model (as OpenAI's API names the snapshot
    a name resolved to), whether relayed byte for byte or translated."""
    assert oai.chat.completions.create(model="alias-ol", messages=user()).model == OLLAMA_MODEL
    assert oll.chat(model="alias-oa", messages=user()).model == OPENAI_MODEL
    streamed = list(oll.chat(model="alias-oa", messages=user(), stream=True))
    assert {p.model for p in streamed} == {OPENAI_MODEL}
    assert oai.chat.completions.create(model="alias-oa", messages=user()).model == OPENAI_MODEL
    assert oll.chat(model="alias-ol", messages=user()).model == OLLAMA_MODEL


def test_ollama_latest_tag_reaches_a_backend_that_lists_the_bare_name(oll: ollama.Client) -> None:
    answer = oll.chat(model=f"{OLLAMA_MODEL}:latest", messages=user())
    assert answer.message.content == reply_text(PROMPT)


# --- response headers ------------------------------------------------------------------------------------

REQUESTS = [
    ("/v1/chat/completions", {"messages": user()}, False),
    ("/v1/chat/completions", {"messages": user(), "stream": True}, True),
    ("/v1/completions", {"prompt": "hi"}, False),
    ("/v1/completions", {"prompt": "hi", "stream": True}, True),
    ("/v1/embeddings", {"input": "hi"}, False),
    ("/api/chat", {"messages": user(), "stream": False}, False),
    ("/api/chat", {"messages": user()}, True),
    ("/api/generate", {"prompt": "hi", "stream": False}, False),
    ("/api/generate", {"prompt": "hi"}, True),
    ("/api/embed", {"input": "hi"}, False),
    ("/api/embeddings", {"prompt": "hi"}, False),
]


@both_backends
@pytest.mark.parametrize(("path", "body", "streams"), REQUESTS, ids=[f"{p}-{s}" for p, _, s in REQUESTS])
def test_every_answer_names_its_backend_and_echoes_the_request_id(
    gw: RunningGateway, model: str, path: str, body: dict[str, object], streams: bool
) -> None:
    request_id = f"req-{path.replace('/', '-')}-{streams}"
    with httpx.stream(
        "POST", gw.url + path, json={"model": model, **body}, headers={"X-Request-Id": request_id}
    ) as response:
        assert response.headers["x-gatewayd-backend"] == BACKEND_OF[model]
        assert response.headers["x-request-id"] == request_id
        assert "x-gatewayd-attempts" not in response.headers
        content_type = response.headers["content-type"]
        if not streams:
            assert content_type == "application/json"
        elif path.startswith("/v1/"):
            assert content_type == "text/event-stream"
        else:
            assert content_type == "application/x-ndjson"
        response.read()
    assert response.status_code == 200


def test_a_request_id_is_made_up_when_the_client_sends_none(gw: RunningGateway) -> None:
    ids = {
        httpx.post(
            gw.url + "/api/chat", json={"model": OLLAMA_MODEL, "messages": user(), "stream": False}
        ).headers["x-request-id"]
        for _ in range(2)
    }
    assert len(ids) == 2
    assert all(len(request_id) >= 8 for request_id in ids)


def test_same_dialect_requests_reach_the_backend_with_every_field_intact(
    gw: RunningGateway, setup: Setup
) -> None:
    body = {
        "model": OPENAI_MODEL,
        "messages": user(),
        "temperature": 0.25,
        "vendor_extension": {"keep": ["me", 1]},
    }
    assert httpx.post(gw.openai_url + "/chat/completions", json=body).status_code == 200
    assert setup.oa.stats().last_body[OPENAI_CHAT] == body

    ollama_body = {"model": OLLAMA_MODEL, "messages": user(), "stream": False, "options": {"top_k": 7}}
    assert httpx.post(gw.url + OLLAMA_CHAT, json=ollama_body).status_code == 200
    assert setup.ol.stats().last_body[OLLAMA_CHAT] == ollama_body


@pytest.mark.parametrize("model", [OPENAI_MODEL, OLLAMA_MODEL, "alias-oa"])
def test_ollama_show_and_pull_answer_for_every_routed_model(oll: ollama.Client, model: str) -> None:
    shown = oll.show(model)
    assert shown.modelfile is not None
    assert BACKEND_OF[model] in shown.modelfile
    # what the backend says: Ollama's own answer; an OpenAI-kind backend says nothing, so nothing is shown
    assert shown.capabilities == {"oa": None, "ol": ["completion", "tools"]}[BACKEND_OF[model]]
    assert oll.pull(model).status == "success"
    assert [part.status for part in oll.pull(model, stream=True)] == ["success"]


def test_ollama_show_and_pull_of_an_unknown_model_say_gatewayd_does_not_pull(oll: ollama.Client) -> None:
    with pytest.raises(ollama.ResponseError) as shown:
        oll.show("no-such-model")
    assert shown.value.status_code == 404
    with pytest.raises(ollama.ResponseError) as pulled:
        oll.pull("no-such-model")
    assert pulled.value.status_code == 404
    assert "does not pull models" in str(pulled.value)
