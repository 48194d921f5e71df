"""The fake model server, driven by the official openai and ollama clients: keeps it honest to the wire
formats the gateway will meet."""

from __future__ import annotations

import base64
import json
import signal
import struct
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import ollama
import openai
import pytest

from tests.support.fake_backend import (
    FakeBackend,
    running_fake_backend,
    spawn_fake_backend,
    spawned_fake_backend,
)
from tests.support.fake_replies import embedding_vector, reply_text, split_chunks
from tests.support.fake_server import serve_fake

MODEL = "fake-model"
MESSAGES: list[openai.types.chat.ChatCompletionMessageParam] = [
    {"role": "system", "content": "be brief"},
    {"role": "user", "content": "tell me three things"},
]
EXPECTED = reply_text("tell me three things")
#: clients in these tests give up on a hanging fake after this long
CLIENT_TIMEOUT_SECONDS = 0.3


@pytest.fixture
def fake() -> Iterator[FakeBackend]:
    with running_fake_backend(models=(MODEL, "other-model")) as backend:
        yield backend


@pytest.fixture
def client(fake: FakeBackend) -> Iterator[openai.OpenAI]:
    with openai.OpenAI(base_url=fake.url + "/v1", api_key="sk-test", max_retries=0, timeout=10) as client:
        yield client


@pytest.fixture
def ollama_client(fake: FakeBackend) -> Iterator[ollama.Client]:
    client = ollama.Client(host=fake.url, timeout=10)
    yield client
    client.close()


# --- OpenAI dialect -----------------------------------------------------------------------------------


def test_models_lists_the_configured_models(client: openai.OpenAI) -> None:
    assert [model.id for model in client.models.list()] == [MODEL, "other-model"]


def test_chat_completion_replies_to_the_last_user_message_with_usage(client: openai.OpenAI) -> None:
    completion = client.chat.completions.create(model=MODEL, messages=MESSAGES)

    assert completion.object == "chat.completion"
    assert completion.model == MODEL
    assert completion.choices[0].message.content == EXPECTED
    assert completion.choices[0].finish_reason == "stop"
    assert completion.usage is not None
    assert (completion.usage.prompt_tokens, completion.usage.completion_tokens) == (4, 8)
    assert completion.usage.total_tokens == 12


def test_chat_stream_sends_role_pieces_finish_usage_and_done(
    client: openai.OpenAI, fake: FakeBackend
) -> None:
    fake.set(chunks=5)
    stream = client.chat.completions.create(
        model=MODEL, messages=MESSAGES, stream=True, stream_options={"include_usage": True}
    )
    chunks = list(stream)

    assert chunks[0].choices[0].delta.role == "assistant"
    contents = [chunk.choices[0].delta.content for chunk in chunks[1:-2]]
    assert contents == split_chunks(EXPECTED, 5)
    assert chunks[-2].choices[0].finish_reason == "stop"
    assert chunks[-1].choices == []
    assert chunks[-1].usage is not None
    assert (chunks[-1].usage.prompt_tokens, chunks[-1].usage.completion_tokens) == (4, 5)
    assert all(chunk.object == "chat.completion.chunk" for chunk in chunks)


def test_raw_sse_stream_frames_and_ends_with_done(fake: FakeBackend) -> None:
    body = {"model": MODEL, "messages": MESSAGES, "stream": True}
    with httpx.stream("POST", fake.url + "/v1/chat/completions", json=body) as response:
        assert response.headers["content-type"].startswith("text/event-stream")
        raw = response.read().decode()

    events = raw.split("\n\n")
    assert events[-1] == ""
    assert events[-2] == "data: [DONE]"
    assert all(event.startswith("data: ") for event in events[:-1])
    assert "usage" not in json.loads(events[0].removeprefix("data: "))


def test_max_tokens_cuts_the_reply_with_finish_reason_length(client: openai.OpenAI) -> None:
    completion = client.chat.completions.create(model=MODEL, messages=MESSAGES, max_tokens=3)

    assert completion.choices[0].message.content == "".join(split_chunks(EXPECTED, 8)[:3])
    assert completion.choices[0].finish_reason == "length"
    assert completion.usage is not None
    assert completion.usage.completion_tokens == 3


def test_completions_non_stream_and_stream(client: openai.OpenAI) -> None:
    completion = client.completions.create(model=MODEL, prompt="once upon a time")
    assert completion.object == "text_completion"
    assert completion.choices[0].text == reply_text("once upon a time")
    assert completion.usage is not None
    assert (completion.usage.prompt_tokens, completion.usage.completion_tokens) == (4, 8)

    stream = client.completions.create(
        model=MODEL, prompt="once upon a time", stream=True, stream_options={"include_usage": True}
    )
    chunks = list(stream)
    assert "".join(chunk.choices[0].text for chunk in chunks if chunk.choices) == reply_text(
        "once upon a time"
    )
    assert chunks[-1].usage is not None
    assert chunks[-1].usage.completion_tokens == 8


def test_embeddings_are_deterministic_in_float_and_base64(client: openai.OpenAI) -> None:
    # the official client asks for base64 unless told otherwise, and decodes it
    default = client.embeddings.create(model=MODEL, input=["alpha beta", "gamma"])
    floats = client.embeddings.create(model=MODEL, input=["alpha beta", "gamma"], encoding_format="float")

    assert [item.embedding for item in default.data] == [item.embedding for item in floats.data]
    assert default.data[0].embedding == embedding_vector("alpha beta", 8)
    assert default.data[0].embedding != default.data[1].embedding
    assert default.usage.prompt_tokens == 3
    assert len(client.embeddings.create(model=MODEL, input="x", dimensions=3).data[0].embedding) == 3


def test_base64_embeddings_are_little_endian_float32(fake: FakeBackend) -> None:
    body = {"model": MODEL, "input": "alpha", "encoding_format": "base64"}
    encoded = httpx.post(fake.url + "/v1/embeddings", json=body).json()["data"][0]["embedding"]

    assert list(struct.unpack("<8f", base64.b64decode(encoded))) == embedding_vector("alpha", 8)


def test_unknown_model_is_a_404_openai_error(client: openai.OpenAI) -> None:
    with pytest.raises(openai.NotFoundError) as caught:
        client.chat.completions.create(model="no-such-model", messages=MESSAGES)

    assert caught.value.status_code == 404
    assert caught.value.code == "model_not_found"


def test_fail_status_answers_every_request_with_that_status(client: openai.OpenAI, fake: FakeBackend) -> None:
    fake.set(fail_status=500)
    for _ in range(2):
        with pytest.raises(openai.InternalServerError):
            client.chat.completions.create(model=MODEL, messages=MESSAGES)

    # listings and probes are not faulted unless fail_probes is set
    assert next(model.id for model in client.models.list()) == MODEL
    fake.set(fail_probes=True)
    with pytest.raises(openai.InternalServerError):
        client.models.list()


def test_fail_times_fails_only_the_next_requests_and_sends_retry_after(
    client: openai.OpenAI, fake: FakeBackend
) -> None:
    fake.set(fail_status=429, fail_times=2, retry_after=3)
    for _ in range(2):
        with pytest.raises(openai.RateLimitError) as caught:
            client.chat.completions.create(model=MODEL, messages=MESSAGES)
        assert caught.value.response.headers["retry-after"] == "3"

    completion = client.chat.completions.create(model=MODEL, messages=MESSAGES)

    assert completion.choices[0].message.content == EXPECTED
    assert fake.behaviour.fail_status is None
    assert fake.stats().count("/v1/chat/completions") == 3


def test_garbage_makes_the_client_fail_to_parse(client: openai.OpenAI, fake: FakeBackend) -> None:
    fake.set(garbage=True)
    with pytest.raises(json.JSONDecodeError):
        client.chat.completions.create(model=MODEL, messages=MESSAGES)
    with pytest.raises(json.JSONDecodeError):
        list(client.chat.completions.create(model=MODEL, messages=MESSAGES, stream=True))


def test_die_after_chunks_aborts_the_stream_mid_body(client: openai.OpenAI, fake: FakeBackend) -> None:
    fake.set(die_after_chunks=3)
    received: list[openai.types.chat.ChatCompletionChunk] = []
    stream = client.chat.completions.create(model=MODEL, messages=MESSAGES, stream=True)
    with pytest.raises(openai.APIConnectionError):
        received.extend(stream)

    # the role chunk, then exactly three pieces, then the cut
    assert [chunk.choices[0].delta.content for chunk in received[1:]] == split_chunks(EXPECTED, 8)[:3]
    # a non-streamed request is not affected
    assert (
        client.chat.completions.create(model=MODEL, messages=MESSAGES).choices[0].message.content == EXPECTED
    )


def test_hang_holds_the_request_until_the_client_gives_up(fake: FakeBackend) -> None:
    fake.set(hang=True)
    with (
        openai.OpenAI(
            base_url=fake.url + "/v1", api_key="k", max_retries=0, timeout=CLIENT_TIMEOUT_SECONDS
        ) as client,
        pytest.raises(openai.APITimeoutError),
    ):
        client.chat.completions.create(model=MODEL, messages=MESSAGES)

    stats = fake.wait_for(lambda stats: stats.disconnects == 1)
    assert stats.in_flight == 0
    assert stats.peak_in_flight == 1


def test_a_disconnect_mid_stream_is_counted(fake: FakeBackend) -> None:
    fake.set(chunk_delay_seconds=0.05, chunks=40)
    body = {"model": MODEL, "messages": MESSAGES, "stream": True}
    with httpx.stream("POST", fake.url + "/v1/chat/completions", json=body) as response:
        next(response.iter_lines())

    stats = fake.wait_for(lambda stats: stats.disconnects == 1)
    assert stats.in_flight == 0


def test_hanging_requests_go_on_when_hang_is_cleared(client: openai.OpenAI, fake: FakeBackend) -> None:
    fake.set(hang=True)
    replies: list[str | None] = []

    def ask() -> None:
        completion = client.chat.completions.create(model=MODEL, messages=MESSAGES)
        replies.append(completion.choices[0].message.content)

    worker = threading.Thread(target=ask)
    worker.start()
    fake.wait_for(lambda stats: stats.in_flight == 1)
    fake.set(hang=False)
    worker.join(10)

    assert replies == [EXPECTED]


def test_delays_pace_the_stream(fake: FakeBackend) -> None:
    fake.set(first_byte_delay_seconds=0.2, chunk_delay_seconds=0.05, chunks=4)
    body = {"model": MODEL, "messages": MESSAGES, "stream": True}
    started = time.monotonic()
    with httpx.stream("POST", fake.url + "/v1/chat/completions", json=body) as response:
        first_byte = time.monotonic() - started
        response.read()
    total = time.monotonic() - started

    assert first_byte >= 0.2
    assert total >= 0.2 + 3 * 0.05


def test_stats_record_paths_bodies_and_headers(client: openai.OpenAI, fake: FakeBackend) -> None:
    client.chat.completions.create(model=MODEL, messages=MESSAGES)
    client.models.list()
    stats = fake.stats()

    assert stats.requests == {"/v1/chat/completions": 1, "/v1/models": 1}
    assert stats.last_body["/v1/chat/completions"]["messages"] == MESSAGES
    assert stats.last_headers["/v1/chat/completions"]["authorization"] == "Bearer sk-test"

    fake.reset_stats()
    assert fake.stats().total_requests == 0


def test_behaviour_and_stats_are_reachable_over_http(fake: FakeBackend) -> None:
    updated = httpx.post(fake.url + "/_fake/behaviour", json={"chunks": 3, "fail_status": 503})
    assert updated.status_code == 200
    assert updated.json()["chunks"] == 3
    assert fake.behaviour.fail_status == 503

    rejected = httpx.post(fake.url + "/_fake/behaviour", json={"no_such_field": 1})
    assert rejected.status_code == 400
    assert "no_such_field" in rejected.json()["error"]

    httpx.post(fake.url + "/v1/chat/completions", json={"model": MODEL, "messages": MESSAGES})
    assert httpx.get(fake.url + "/_fake/stats").json()["requests"] == {"/v1/chat/completions": 1}


def test_invalid_behaviour_from_python_changes_nothing(fake: FakeBackend) -> None:
    with pytest.raises(ValueError, match="chunks"):
        fake.set(chunks=0)
    with pytest.raises(ValueError, match="garbage"):
        fake.set(garbage=1)

    assert fake.behaviour.chunks == 8


# --- Ollama dialect -----------------------------------------------------------------------------------


def test_ollama_chat_non_stream(ollama_client: ollama.Client) -> None:
    response = ollama_client.chat(
        model=MODEL, messages=[{"role": "user", "content": "hi there"}], stream=False
    )

    assert response.message.content == reply_text("hi there")
    assert response.done is True
    assert response.done_reason == "stop"
    assert (response.prompt_eval_count, response.eval_count) == (2, 8)
    assert response.total_duration is not None
    assert response.total_duration > 0


def test_ollama_chat_streams_ndjson_with_a_final_done_line(
    ollama_client: ollama.Client, fake: FakeBackend
) -> None:
    fake.set(chunks=4)
    parts = list(ollama_client.chat(model=MODEL, messages=[{"role": "user", "content": "hi"}], stream=True))

    assert [part.message.content for part in parts[:-1]] == split_chunks(reply_text("hi"), 4)
    assert [part.done for part in parts] == [False] * 4 + [True]
    assert parts[-1].done_reason == "stop"
    assert parts[-1].eval_count == 4


def test_ollama_streams_by_default_as_x_ndjson(fake: FakeBackend) -> None:
    response = httpx.post(fake.url + "/api/generate", json={"model": MODEL, "prompt": "why"})

    assert response.headers["content-type"] == "application/x-ndjson"
    lines = [json.loads(line) for line in response.text.splitlines()]
    assert "".join(line["response"] for line in lines) == reply_text("why")
    assert lines[-1]["done"] is True
    assert lines[-1]["prompt_eval_count"] == 1


def test_ollama_generate_and_tag_aliases(ollama_client: ollama.Client) -> None:
    response = ollama_client.generate(model=MODEL + ":latest", prompt="a b c", stream=False)

    assert response.response == reply_text("a b c")
    assert response.model == MODEL + ":latest"
    assert response.context is not None
    assert ollama_client.generate(model=MODEL, prompt="").done_reason == "load"


def test_ollama_embed_and_legacy_embeddings(ollama_client: ollama.Client) -> None:
    embedded = ollama_client.embed(model=MODEL, input=["one", "two words"])
    assert [list(vector) for vector in embedded.embeddings] == [
        embedding_vector("one", 8),
        embedding_vector("two words", 8),
    ]
    assert embedded.prompt_eval_count == 3

    legacy = ollama_client.embeddings(model=MODEL, prompt="one")
    assert list(legacy.embedding) == embedding_vector("one", 8)


def test_ollama_listings(ollama_client: ollama.Client, fake: FakeBackend) -> None:
    assert [model.model for model in ollama_client.list().models] == [MODEL, "other-model"]
    assert [model.model for model in ollama_client.ps().models] == [MODEL, "other-model"]
    assert ollama_client.show(MODEL).details is not None
    assert httpx.get(fake.url + "/api/version").json()["version"]


def test_ollama_errors(ollama_client: ollama.Client, fake: FakeBackend) -> None:
    with pytest.raises(ollama.ResponseError) as missing:
        ollama_client.chat(model="nope", messages=[{"role": "user", "content": "x"}])
    assert missing.value.status_code == 404
    assert "nope" in missing.value.error

    fake.set(fail_status=503)
    with pytest.raises(ollama.ResponseError) as failed:
        ollama_client.generate(model=MODEL, prompt="x", stream=False)
    assert failed.value.status_code == 503
    assert failed.value.error == "fake backend failure (HTTP 503)"


def test_ollama_stream_dies_after_chunks(ollama_client: ollama.Client, fake: FakeBackend) -> None:
    fake.set(die_after_chunks=2)
    received: list[ollama.ChatResponse] = []
    stream = ollama_client.chat(model=MODEL, messages=[{"role": "user", "content": "x"}], stream=True)
    with pytest.raises(httpx.RemoteProtocolError):
        received.extend(stream)

    assert len(received) == 2


# --- Probes ---------------------------------------------------------------------------------------------


def test_llama_server_health_reports_loading_and_inference_is_refused() -> None:
    with running_fake_backend(kind="llama-server") as fake:
        assert httpx.get(fake.url + "/health").json() == {"status": "ok"}

        fake.set(loading=True, retry_after=2)
        health = httpx.get(fake.url + "/health")
        chat = httpx.post(fake.url + "/v1/chat/completions", json={"model": MODEL, "messages": MESSAGES})

    assert (health.status_code, health.json()) == (503, {"status": "loading model"})
    assert chat.status_code == 503
    assert chat.json()["error"]["message"] == "Loading model"
    assert chat.headers["retry-after"] == "2"


def test_vllm_health_is_an_empty_200() -> None:
    with running_fake_backend(kind="vllm") as fake:
        response = httpx.get(fake.url + "/health")
        owned_by = httpx.get(fake.url + "/v1/models").json()["data"][0]["owned_by"]

    assert (response.status_code, response.content) == (200, b"")
    assert owned_by == "vllm"


def test_slots_show_requests_in_flight(fake: FakeBackend) -> None:
    fake.set(hang=True, max_concurrency=3)
    with httpx.Client(timeout=10) as hanging:
        worker = threading.Thread(
            target=lambda: hanging.post(
                fake.url + "/v1/chat/completions", json={"model": MODEL, "messages": MESSAGES}
            )
        )
        worker.start()
        fake.wait_for(lambda stats: stats.in_flight == 1)
        slots = httpx.get(fake.url + "/slots").json()
        metrics = httpx.get(fake.url + "/metrics").text
        fake.set(hang=False)
        worker.join(10)

    assert [slot["is_processing"] for slot in slots] == [True, False, False]
    assert "llamacpp:requests_processing 1" in metrics


def test_ollama_root_says_it_is_running() -> None:
    with running_fake_backend(kind="ollama") as fake:
        assert httpx.get(fake.url + "/").text == "Ollama is running"


# --- Ways to run it ---------------------------------------------------------------------------------------


@pytest.mark.anyio
async def test_serves_anyio_tests_from_its_own_thread(fake: FakeBackend) -> None:
    async with httpx.AsyncClient(base_url=fake.url) as client:
        response = await client.post("/v1/chat/completions", json={"model": MODEL, "messages": MESSAGES})

    assert response.json()["choices"][0]["message"]["content"] == EXPECTED


@pytest.mark.anyio
async def test_serve_fake_runs_on_the_callers_loop() -> None:
    async with serve_fake(models=["m"], kind="ollama") as server, httpx.AsyncClient() as client:
        response = await client.post(server.url + "/api/chat", json={"model": "m", "stream": False})

    assert response.json()["done_reason"] == "load"


def test_two_backends_listen_on_different_ports() -> None:
    with running_fake_backend() as first, running_fake_backend() as second:
        assert first.port != second.port
        assert httpx.get(second.url + "/v1/models").status_code == 200


def test_separate_process_prints_its_url_writes_the_ready_file_and_exits_0_on_sigterm(tmp_path: Path) -> None:
    ready_file = tmp_path / "ready"
    process, url = spawn_fake_backend(models=("a", "b"), kind="llama-server", ready_file=ready_file)
    with process:
        models = httpx.get(url + "/v1/models").json()["data"]
        process.send_signal(signal.SIGTERM)
        returncode = process.wait(10)

    assert url.startswith("http://127.0.0.1:")
    assert ready_file.read_text().strip() == url
    assert [model["id"] for model in models] == ["a", "b"]
    assert returncode == 0


def test_separate_process_reports_loading_for_load_seconds() -> None:
    with spawned_fake_backend(kind="llama-server", load_seconds=0.3, behaviour={"chunks": 2}) as (_, url):
        first = httpx.get(url + "/health").status_code
        deadline = time.monotonic() + 10
        while httpx.get(url + "/health").status_code != 200:
            assert time.monotonic() < deadline
            time.sleep(0.02)
        reply = httpx.post(
            url + "/api/chat", json={"model": "fake-model", "messages": MESSAGES, "stream": False}
        )

    assert first == 503
    assert reply.json()["eval_count"] == 2
