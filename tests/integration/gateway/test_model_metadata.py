"""Model metadata read from the backends (Ollama's /api/tags and /api/show, llama-server's /v1/models meta
and /props, vLLM's max_model_len) and served on /api/show, /api/tags, /api/ps, /v1/models and
/v1/models/{id}, as the official ollama and openai clients (and litellm) see it."""

from __future__ import annotations

import hashlib
import os
import time
import warnings
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

import httpx
import ollama
import openai
import pytest

from gatewayd.config import Backend, BackendKind, Config, HealthSettings, Route, RouteTarget
from tests.support.fake_backend import FakeBackend, running_fake_backend
from tests.support.fake_ollama import MODEL_SIZE_BYTES as OLLAMA_SIZE
from tests.support.fake_ollama import TRAINED_CONTEXT_LENGTH as OLLAMA_CONTEXT
from tests.support.fake_openai import MODEL_SIZE_BYTES as LLAMA_SIZE
from tests.support.fake_openai import TRAINED_CONTEXT_LENGTH
from tests.support.fake_probes import CONTEXT_SIZE as LLAMA_RUN_CONTEXT
from tests.support.gateway import RunningGateway, running_gateway

CHAT = "qwen-chat"
EMBED = "nomic-embed-text"
LLAMA = "llama-local"
VLLM = "vllm-model"
PLAIN = "gpt-plain"
#: a public name with '/' and ':' (routed to the vLLM backend)
SLASHED = "org/model:7b"


@dataclass
class Setup:
    gateway: RunningGateway
    ollama: FakeBackend


@pytest.fixture(scope="module")
def setup() -> Iterator[Setup]:
    with (
        running_fake_backend(models=(CHAT, EMBED), kind="ollama") as ol,
        running_fake_backend(models=(LLAMA,), kind="llama-server") as ls,
        running_fake_backend(models=(VLLM,), kind="vllm") as vl,
        running_fake_backend(models=(PLAIN,), kind="openai") as oa,
    ):
        config = Config(
            backends=(
                Backend(id="ol", url=ol.url, kind=BackendKind.OLLAMA),
                Backend(id="ls", url=ls.url, kind=BackendKind.LLAMA_SERVER),
                Backend(id="vl", url=vl.url, kind=BackendKind.VLLM),
                Backend(id="oa", url=oa.url + "/v1", kind=BackendKind.OPENAI),
            ),
            routes=(Route(model=SLASHED, targets=(RouteTarget(backend="vl", model=VLLM),)),),
            health=HealthSettings(probe_interval_idle_seconds=0.2, probe_interval_busy_seconds=0.2),
        )
        with running_gateway(config) as gw:
            wait_until(lambda: shown(gw, CHAT).get("capabilities") and shown(gw, LLAMA).get("capabilities"))
            yield Setup(gw, ol)


def wait_until(predicate: Callable[[], Any], timeout: float = 20.0) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError("timed out waiting for the backends' metadata")
        time.sleep(0.05)


def shown(gw: RunningGateway, model: str) -> dict[str, Any]:
    body: dict[str, Any] = httpx.post(gw.url + "/api/show", json={"model": model}, timeout=10).json()
    return body


@pytest.fixture
def gw(setup: Setup) -> RunningGateway:
    return setup.gateway


@pytest.fixture
def oll(gw: RunningGateway) -> Iterator[ollama.Client]:
    with ollama.Client(host=gw.url, timeout=30) as client:
        yield client


def test_show_gives_what_ollama_said(oll: ollama.Client) -> None:
    info = oll.show(CHAT)
    assert info.capabilities == ["completion", "tools"]
    assert info.modelinfo is not None
    assert info.modelinfo["llama.context_length"] == OLLAMA_CONTEXT
    assert info.modelinfo["general.architecture"] == "llama"
    assert info.details is not None
    assert info.details.family == "llama"
    assert info.details.quantization_level == "Q4_0"
    assert info.template is not None
    assert ".Tools" in info.template
    assert info.parameters is not None
    assert "temperature" in info.parameters


def test_an_embedding_model_says_embedding(oll: ollama.Client) -> None:
    assert oll.show(EMBED).capabilities == ["embedding"]


def test_show_of_a_llama_server_model_comes_from_its_props(oll: ollama.Client) -> None:
    info = oll.show(LLAMA)
    assert info.capabilities == ["completion", "tools"]  # chat_template_caps.supports_tools
    assert info.modelinfo is not None
    # the context it runs with (/props n_ctx), not the one it was trained for (meta.n_ctx_train)
    assert info.modelinfo["general.context_length"] == LLAMA_RUN_CONTEXT
    assert info.details is not None
    assert info.details.parameter_size == "1.2B"
    assert info.template is not None
    assert "tools" in info.template


def test_show_leaves_out_what_a_backend_does_not_say(gw: RunningGateway) -> None:
    body = shown(gw, PLAIN)
    assert body["model_info"] == {}
    assert body["details"] == {}
    assert not {"capabilities", "template", "parameters", "modified_at"} & body.keys()


def test_tags_carry_ollamas_size_digest_and_details(oll: ollama.Client) -> None:
    listed = {m.model: m for m in oll.list().models}
    chat = listed[CHAT]
    assert chat.size == OLLAMA_SIZE
    assert chat.digest == hashlib.sha256(CHAT.encode()).hexdigest()
    assert chat.modified_at is not None
    assert chat.details is not None
    assert chat.details.family == "llama"
    assert listed[LLAMA].size == LLAMA_SIZE  # llama-server's meta.size
    plain = listed[PLAIN]
    assert (plain.size, plain.modified_at) == (None, None)
    assert plain.digest == hashlib.sha256(f"gatewayd/{PLAIN}".encode()).hexdigest()


def test_ps_carries_the_context_length(oll: ollama.Client) -> None:
    running = {m.model: m for m in oll.ps().models}
    assert running[CHAT].context_length == OLLAMA_CONTEXT
    assert running[LLAMA].context_length == LLAMA_RUN_CONTEXT
    assert running[VLLM].context_length == TRAINED_CONTEXT_LENGTH
    assert running[PLAIN].context_length is None


def test_openai_models_carry_the_context_length(gw: RunningGateway) -> None:
    with openai.OpenAI(base_url=gw.openai_url, api_key="x", max_retries=0) as client:
        models = {m.id: m.model_extra or {} for m in client.models.list()}
    assert models[VLLM]["context_length"] == TRAINED_CONTEXT_LENGTH
    assert models[VLLM]["max_model_len"] == TRAINED_CONTEXT_LENGTH
    assert models[SLASHED]["context_length"] == TRAINED_CONTEXT_LENGTH
    assert models[LLAMA]["context_length"] == LLAMA_RUN_CONTEXT
    assert models[CHAT]["context_length"] == OLLAMA_CONTEXT
    assert "context_length" not in models[PLAIN]


@pytest.mark.parametrize("model", [SLASHED, VLLM, CHAT])
def test_models_retrieve_serves_one_model(gw: RunningGateway, model: str) -> None:
    with openai.OpenAI(base_url=gw.openai_url, api_key="x", max_retries=0) as client:
        found = client.models.retrieve(model)
    assert found.id == model
    assert found.object == "model"
    assert (found.model_extra or {}).get("context_length")


def test_models_retrieve_of_an_unknown_model_is_openais_404(gw: RunningGateway) -> None:
    with (
        openai.OpenAI(base_url=gw.openai_url, api_key="x", max_retries=0) as client,
        pytest.raises(openai.NotFoundError) as missing,
    ):
        client.models.retrieve("org/no-such:model")
    assert missing.value.code == "model_not_found"


def test_each_model_is_shown_once_not_at_every_probe(setup: Setup) -> None:
    fake = setup.ollama
    probes = fake.stats().count("/api/tags")
    fake.wait_for(lambda stats: stats.count("/api/tags") >= probes + 3, timeout_seconds=20)
    assert fake.stats().count("/api/show") == 2  # one per model, at its first listing


def test_litellm_reads_tools_and_context_through_the_gateway(gw: RunningGateway) -> None:
    os.environ.setdefault("LITELLM_LOCAL_MODEL_COST_MAP", "True")  # no download of the cost map
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # litellm's own pydantic models warn as they are built
        litellm = pytest.importorskip("litellm")
        info = litellm.get_model_info(f"ollama/{CHAT}", custom_llm_provider="ollama", api_base=gw.url)
    assert info["supports_function_calling"] is True
    assert info["max_input_tokens"] == OLLAMA_CONTEXT
