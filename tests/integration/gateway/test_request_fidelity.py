"""What a request asks for reaches the backend, in the shape its kind needs, or is refused naming it:
fill in the middle, several choices, sampling options, the token limit. Through the official clients,
against fakes that answer as each kind of server does (see tests.support.fake_openai, fake_ollama).
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import ollama
import openai
import pytest

from gatewayd.config import Backend, BackendKind, Config
from tests.support.fake_backend import FakeBackend, running_fake_backend
from tests.support.fake_replies import (
    ALTERNATIVE_LOGPROB,
    CHOSEN_LOGPROB,
    infill_text,
    reply_text,
    split_chunks,
)
from tests.support.gateway import RunningGateway, running_gateway

#: model -> (backend id, fake kind)
MODELS = {
    "gpt-fake": ("oa", "openai"),
    "o3-fake": ("oa", "openai"),  # a reasoning model: refuses max_tokens
    "llama-cpp-fake": ("ls", "llama-server"),
    "vllm-fake": ("vl", "vllm"),
    "ollama-fake": ("ol", "ollama"),
}
PREFIX = "def add(a, b):\n    "
SUFFIX = "\n\nprint(add(1, 2))"
FILLED = infill_text(PREFIX, SUFFIX)
PROMPT = "name three colours"
#: the fake cuts every reply into this many pieces (one token each)
CHUNKS = 8


@dataclass
class Setup:
    gateway: RunningGateway
    fakes: dict[str, FakeBackend]

    def fake(self, model: str) -> FakeBackend:
        return self.fakes[MODELS[model][0]]

    def last_body(self, model: str, path: str) -> Any:
        return self.fake(model).stats().last_body[path]


@pytest.fixture(scope="module")
def setup() -> Iterator[Setup]:
    with (
        running_fake_backend(models=("gpt-fake", "o3-fake"), kind="openai") as oa,
        running_fake_backend(models=("llama-cpp-fake",), kind="llama-server") as ls,
        running_fake_backend(models=("vllm-fake",), kind="vllm") as vl,
        running_fake_backend(models=("ollama-fake",), kind="ollama") as ol,
    ):
        fakes = {"oa": oa, "ls": ls, "vl": vl, "ol": ol}
        backends = tuple(
            Backend(
                id=backend_id,
                url=fake.url,
                kind=BackendKind(fake.kind.value),
                models=tuple(m for m, (b, _) in MODELS.items() if b == backend_id),
            )
            for backend_id, fake in fakes.items()
        )
        with running_gateway(Config(backends=backends)) as gateway:
            yield Setup(gateway, fakes)


@pytest.fixture
def oai(setup: Setup) -> Iterator[openai.OpenAI]:
    with openai.OpenAI(base_url=setup.gateway.openai_url, api_key="x", max_retries=0, timeout=10) as client:
        yield client


@pytest.fixture
def oll(setup: Setup) -> Iterator[ollama.Client]:
    with ollama.Client(host=setup.gateway.url, timeout=10) as client:
        yield client


# --- fill in the middle -----------------------------------------------------------------------------------

#: model -> the path its backend is sent a completion with a suffix on
INFILL_PATHS = {"gpt-fake": "/v1/completions", "llama-cpp-fake": "/infill", "ollama-fake": "/api/generate"}
infilling = pytest.mark.parametrize("model", list(INFILL_PATHS))


def _sent_suffix(setup: Setup, model: str) -> None:
    body = setup.last_body(model, INFILL_PATHS[model])
    if model == "llama-cpp-fake":
        assert (body["input_prefix"], body["input_suffix"]) == (PREFIX, SUFFIX)
    else:
        assert (body["prompt"], body["suffix"]) == (PREFIX, SUFFIX)
        assert "raw" not in body  # Ollama applies the FIM template only without raw


@infilling
def test_openai_completion_with_a_suffix_is_filled_in(setup: Setup, oai: openai.OpenAI, model: str) -> None:
    completion = oai.completions.create(model=model, prompt=PREFIX, suffix=SUFFIX, max_tokens=50)

    assert completion.choices[0].text == FILLED
    assert completion.choices[0].finish_reason == "stop"
    assert completion.usage is not None
    assert completion.usage.completion_tokens > 0
    _sent_suffix(setup, model)


@infilling
def test_openai_completion_stream_with_a_suffix_is_filled_in(
    setup: Setup, oai: openai.OpenAI, model: str
) -> None:
    stream = oai.completions.create(
        model=model, prompt=PREFIX, suffix=SUFFIX, stream=True, stream_options={"include_usage": True}
    )
    chunks = list(stream)

    assert "".join(c.choices[0].text for c in chunks if c.choices) == FILLED
    assert [c.choices[0].finish_reason for c in chunks if c.choices and c.choices[0].finish_reason] == [
        "stop"
    ]
    assert chunks[-1].usage is not None
    _sent_suffix(setup, model)


@infilling
@pytest.mark.parametrize("stream", [False, True], ids=["whole", "stream"])
def test_ollama_generate_with_a_suffix_is_filled_in(
    setup: Setup, oll: ollama.Client, model: str, stream: bool
) -> None:
    if stream:
        parts = list(oll.generate(model=model, prompt=PREFIX, suffix=SUFFIX, stream=True))
        text, last = "".join(p.response for p in parts), parts[-1]
    else:
        last = oll.generate(model=model, prompt=PREFIX, suffix=SUFFIX)
        text = last.response

    assert text == FILLED
    assert last.done is True
    assert last.done_reason == "stop"
    assert last.eval_count
    _sent_suffix(setup, model)


def test_a_backend_that_cannot_fill_in_the_middle_is_named_in_a_400(
    setup: Setup, oai: openai.OpenAI, oll: ollama.Client
) -> None:
    vllm = setup.fake("vllm-fake")
    vllm.reset_stats()

    with pytest.raises(openai.BadRequestError) as caught:
        oai.completions.create(model="vllm-fake", prompt=PREFIX, suffix=SUFFIX)
    with pytest.raises(ollama.ResponseError) as refused:
        oll.generate(model="vllm-fake", prompt=PREFIX, suffix=SUFFIX)

    assert "backend vl (vllm) cannot fill in the middle" in caught.value.message
    assert caught.value.code == "unsupported_by_backend"
    assert refused.value.status_code == 400
    assert refused.value.error.startswith("backend vl (vllm) cannot fill in the middle")
    assert vllm.stats().total_requests == 0  # nothing was generated prefix-only


def test_a_completion_without_a_suffix_is_unchanged(setup: Setup, oai: openai.OpenAI) -> None:
    completion = oai.completions.create(model="llama-cpp-fake", prompt=PROMPT)

    assert completion.choices[0].text == reply_text(PROMPT)
    assert "suffix" not in setup.last_body("llama-cpp-fake", "/v1/completions")


# --- several choices --------------------------------------------------------------------------------------


def test_several_choices_from_an_ollama_backend_are_refused_not_cut_to_one(
    setup: Setup, oai: openai.OpenAI
) -> None:
    setup.fake("ollama-fake").reset_stats()
    messages: Any = [{"role": "user", "content": PROMPT}]

    with pytest.raises(openai.BadRequestError) as chat:
        oai.chat.completions.create(model="ollama-fake", messages=messages, n=2)
    with pytest.raises(openai.BadRequestError) as completion:
        oai.completions.create(model="ollama-fake", prompt=PROMPT, n=3)

    for caught in (chat, completion):
        assert "backend ol (ollama) answers one choice per request" in caught.value.message
        assert caught.value.param == "n"
    assert setup.fake("ollama-fake").stats().total_requests == 0
    one = oai.chat.completions.create(model="ollama-fake", messages=messages, n=1)
    assert len(one.choices) == 1


# --- sampling options -------------------------------------------------------------------------------------

OPTIONS = {"top_k": 7, "min_p": 0.05, "repeat_penalty": 1.2, "seed": 42, "mirostat": 2, "temperature": 0.3}


@pytest.mark.parametrize("model", ["llama-cpp-fake", "vllm-fake", "gpt-fake"])
def test_ollama_options_reach_an_openai_compatible_backend_that_takes_them(
    setup: Setup, oll: ollama.Client, model: str
) -> None:
    reply = oll.chat(model=model, messages=[{"role": "user", "content": PROMPT}], options=OPTIONS)

    assert reply.message.content == reply_text(PROMPT)
    body = setup.last_body(model, "/v1/chat/completions")
    assert (body["seed"], body["temperature"]) == (42, 0.3)
    if model == "gpt-fake":  # OpenAI refuses fields it does not know: they are not sent
        assert not {"top_k", "min_p", "repeat_penalty", "repetition_penalty", "mirostat"} & set(body)
        return
    assert (body["top_k"], body["min_p"], body["mirostat"]) == (7, 0.05, 2)
    penalty = "repetition_penalty" if model == "vllm-fake" else "repeat_penalty"
    assert body[penalty] == 1.2


def test_ollama_generate_options_reach_llama_server(setup: Setup, oll: ollama.Client) -> None:
    oll.generate(model="llama-cpp-fake", prompt=PROMPT, options=OPTIONS)

    body = setup.last_body("llama-cpp-fake", "/v1/chat/completions")
    assert (body["top_k"], body["min_p"], body["repeat_penalty"], body["seed"]) == (7, 0.05, 1.2, 42)


@pytest.mark.parametrize("path", ["/api/chat", "/api/generate"])
def test_openai_extra_sampling_fields_reach_ollama_options(
    setup: Setup, oai: openai.OpenAI, path: str
) -> None:
    extra = {"top_k": 7, "min_p": 0.05, "repeat_penalty": 1.2, "mirostat": 2}
    if path == "/api/chat":
        messages: Any = [{"role": "user", "content": PROMPT}]
        oai.chat.completions.create(model="ollama-fake", messages=messages, seed=42, extra_body=extra)
    else:
        oai.completions.create(model="ollama-fake", prompt=PROMPT, seed=42, extra_body=extra)

    options = setup.last_body("ollama-fake", path)["options"]
    assert {name: options.get(name) for name in (*extra, "seed")} == {**extra, "seed": 42}


# --- the token limit --------------------------------------------------------------------------------------


def test_num_predict_reaches_an_openai_reasoning_model_as_max_completion_tokens(
    setup: Setup, oll: ollama.Client
) -> None:
    messages = [{"role": "user", "content": PROMPT}]

    chat = oll.chat(model="o3-fake", messages=messages, options={"num_predict": 3})
    generated = oll.generate(model="o3-fake", prompt=PROMPT, options={"num_predict": 3})

    assert chat.done_reason == "length"
    assert generated.done_reason == "length"
    body = setup.last_body("o3-fake", "/v1/chat/completions")
    assert body["max_completion_tokens"] == 3
    assert "max_tokens" not in body


def test_llama_server_still_gets_max_tokens(setup: Setup, oll: ollama.Client) -> None:
    oll.chat(
        model="llama-cpp-fake", messages=[{"role": "user", "content": PROMPT}], options={"num_predict": 3}
    )

    body = setup.last_body("llama-cpp-fake", "/v1/chat/completions")
    assert body["max_tokens"] == 3
    assert "max_completion_tokens" not in body


# --- logprobs ---------------------------------------------------------------------------------------------

TOP = 2


def _pieces(text: str) -> list[str]:
    return [piece for piece in split_chunks(text, CHUNKS) if piece]


@pytest.mark.parametrize("stream", [False, True], ids=["whole", "stream"])
def test_openai_logprobs_through_an_ollama_backend(setup: Setup, oai: openai.OpenAI, stream: bool) -> None:
    messages: Any = [{"role": "user", "content": PROMPT}]
    if stream:
        chunks = list(
            oai.chat.completions.create(
                model="ollama-fake", messages=messages, logprobs=True, top_logprobs=TOP, stream=True
            )
        )
        entries = [
            entry
            for chunk in chunks
            if chunk.choices and chunk.choices[0].logprobs and chunk.choices[0].logprobs.content
            for entry in chunk.choices[0].logprobs.content
        ]
    else:
        completion = oai.chat.completions.create(
            model="ollama-fake", messages=messages, logprobs=True, top_logprobs=TOP
        )
        assert completion.choices[0].logprobs is not None
        entries = completion.choices[0].logprobs.content or []

    assert [entry.token for entry in entries] == _pieces(reply_text(PROMPT))
    assert all(entry.logprob == CHOSEN_LOGPROB for entry in entries)
    assert all(
        [alt.logprob for alt in entry.top_logprobs] == [CHOSEN_LOGPROB, ALTERNATIVE_LOGPROB]
        for entry in entries
    )
    body = setup.last_body("ollama-fake", "/api/chat")
    assert (body["logprobs"], body["top_logprobs"]) == (True, TOP)


@pytest.mark.parametrize("stream", [False, True], ids=["whole", "stream"])
@pytest.mark.parametrize("endpoint", ["chat", "generate"])
def test_ollama_logprobs_through_an_openai_backend(
    setup: Setup, oll: ollama.Client, stream: bool, endpoint: str
) -> None:
    def call() -> Any:
        if endpoint == "chat":
            messages = [{"role": "user", "content": PROMPT}]
            return oll.chat(
                model="llama-cpp-fake", messages=messages, logprobs=True, top_logprobs=TOP, stream=stream
            )
        return oll.generate(
            model="llama-cpp-fake", prompt=PROMPT, logprobs=True, top_logprobs=TOP, stream=stream
        )

    parts = list(call()) if stream else [call()]
    entries = [entry for part in parts for entry in (part.logprobs or [])]

    assert [entry.token for entry in entries] == _pieces(reply_text(PROMPT))
    assert all(entry.logprob == CHOSEN_LOGPROB for entry in entries)
    assert all(len(entry.top_logprobs or []) == TOP for entry in entries)
    body = setup.last_body("llama-cpp-fake", "/v1/chat/completions")
    assert (body["logprobs"], body["top_logprobs"]) == (True, TOP)
