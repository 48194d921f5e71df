"""More real clients than the official packages, through the gateway to fakes of each kind: langchain's
ChatOpenAI and ChatOllama, and the ``llm`` CLI (a real child process) pointed at the OpenAI endpoint
through its extra-openai-models.yaml. What they send (sampling options, token limits) must reach the
backend in the shape its kind needs."""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import langchain_ollama
import langchain_openai
import pytest

from gatewayd.config import Backend, BackendKind, Config
from tests.support.fake_backend import FakeBackend, running_fake_backend
from tests.support.fake_replies import reply_text, split_chunks
from tests.support.gateway import RunningGateway, running_gateway

PROMPT = "name three colours"
CHUNKS = 8
#: how long the llm CLI may take (it starts a Python interpreter and loads its plugins)
LLM_TIMEOUT_SECONDS = 60


@dataclass
class Setup:
    gateway: RunningGateway
    oa: FakeBackend
    ls: FakeBackend
    ol: FakeBackend


@pytest.fixture(scope="module")
def setup() -> Iterator[Setup]:
    with (
        running_fake_backend(models=("o3-fake",), kind="openai") as oa,
        running_fake_backend(models=("llama-cpp-fake",), kind="llama-server") as ls,
        running_fake_backend(models=("ollama-fake",), kind="ollama") as ol,
    ):
        backends = (
            Backend(id="oa", url=oa.url, kind=BackendKind.OPENAI, models=("o3-fake",)),
            Backend(id="ls", url=ls.url, kind=BackendKind.LLAMA_SERVER, models=("llama-cpp-fake",)),
            Backend(id="ol", url=ol.url, kind=BackendKind.OLLAMA, models=("ollama-fake",)),
        )
        with running_gateway(Config(backends=backends)) as gateway:
            yield Setup(gateway, oa, ls, ol)


@pytest.fixture
def chat_ollama() -> Iterator[Any]:
    """Makes ChatOllama models, and closes their connections at the end (langchain leaves them open)."""
    made: list[Any] = []

    def make(**settings: Any) -> Any:
        made.append(langchain_ollama.ChatOllama(**settings))
        return made[-1]

    yield make
    for chat in made:
        chat._client.close()


def test_langchain_chat_openai_extra_sampling_reaches_ollama_options(setup: Setup) -> None:
    with httpx.Client(timeout=10) as http:
        chat = langchain_openai.ChatOpenAI(
            base_url=setup.gateway.openai_url,
            api_key="x",
            model="ollama-fake",
            seed=42,
            max_retries=0,
            extra_body={"top_k": 7, "repeat_penalty": 1.2},
            http_client=http,
        )
        answer = chat.invoke(PROMPT)
        streamed = "".join(str(chunk.content) for chunk in chat.stream(PROMPT))

    assert answer.content == reply_text(PROMPT)
    assert streamed == reply_text(PROMPT)
    options = setup.ol.stats().last_body["/api/chat"]["options"]
    assert (options["top_k"], options["repeat_penalty"], options["seed"]) == (7, 1.2, 42)


def test_langchain_chat_ollama_options_reach_llama_server(setup: Setup, chat_ollama: Any) -> None:
    chat = chat_ollama(
        base_url=setup.gateway.url,
        model="llama-cpp-fake",
        top_k=7,
        repeat_penalty=1.2,
        seed=42,
        num_predict=3,
    )

    answer = chat.invoke(PROMPT)

    assert answer.content == "".join(split_chunks(reply_text(PROMPT), CHUNKS)[:3])
    body = setup.ls.stats().last_body["/v1/chat/completions"]
    assert (body["top_k"], body["repeat_penalty"], body["seed"], body["max_tokens"]) == (7, 1.2, 42, 3)


def test_langchain_chat_ollama_token_limit_reaches_an_openai_reasoning_model(
    setup: Setup, chat_ollama: Any
) -> None:
    chat = chat_ollama(base_url=setup.gateway.url, model="o3-fake", num_predict=3, top_k=7)

    answer = chat.invoke(PROMPT)

    assert answer.content == "".join(split_chunks(reply_text(PROMPT), CHUNKS)[:3])
    body = setup.oa.stats().last_body["/v1/chat/completions"]
    assert body["max_completion_tokens"] == 3
    assert "max_tokens" not in body
    assert "top_k" not in body


def _llm(setup: Setup, tmp_path: Path, *args: str) -> subprocess.CompletedProcess[str]:
    """The ``llm`` CLI of this interpreter's environment, with a user directory of its own that
    declares the gateway's OpenAI endpoint."""
    models = f"- model_id: gw-ollama\n  model_name: ollama-fake\n  api_base: {setup.gateway.openai_url}\n"
    (tmp_path / "extra-openai-models.yaml").write_text(models)
    env: dict[str, Any] = {**os.environ, "LLM_USER_PATH": str(tmp_path), "OPENAI_API_KEY": "x"}
    llm = Path(sys.executable).with_name("llm")
    return subprocess.run(
        [str(llm), *args], env=env, capture_output=True, text=True, timeout=LLM_TIMEOUT_SECONDS, check=False
    )


@pytest.mark.parametrize("stream", [True, False], ids=["stream", "whole"])
def test_the_llm_cli_through_the_gateway_to_ollama(setup: Setup, tmp_path: Path, stream: bool) -> None:
    flags = [] if stream else ["--no-stream"]
    done = _llm(
        setup, tmp_path, "-m", "gw-ollama", "-o", "seed", "42", "-o", "max_tokens", "5", *flags, PROMPT
    )

    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "".join(split_chunks(reply_text(PROMPT), CHUNKS)[:5]).strip()
    options = setup.ol.stats().last_body["/api/chat"]["options"]
    assert (options["seed"], options["num_predict"]) == (42, 5)
