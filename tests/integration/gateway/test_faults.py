"""Backend faults: garbage answers, death mid-stream, and the first-byte, idle and total timeouts.

None of them may disturb a request being served by another backend at the same time.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Iterable

import httpx
import ollama
import openai
import pytest
from openai.types.chat import ChatCompletionChunk, ChatCompletionMessageParam

from gatewayd.config import Backend, BackendKind, Config, Timeouts
from tests.support.fake_backend import FakeBackend
from tests.support.fake_replies import reply_text
from tests.support.fixtures import FakeBackendFactory
from tests.support.gateway import RunningGateway

GatewayFactory = Callable[[Config], RunningGateway]
MESSAGES: list[ChatCompletionMessageParam] = [{"role": "user", "content": "hello there"}]
REPLY = reply_text("hello there")
#: a timeout under test is this small; the fake is scripted to be much slower
SHORT_SECONDS = 0.3
#: what a request cut by a SHORT_SECONDS timeout may take at most, with generous room for a slow machine
CUT_WITHIN_SECONDS = 1.5
SLOW_SECONDS = 3.0


def backend(backend_id: str, fake: FakeBackend, model: str, timeouts: Timeouts | None = None) -> Backend:
    return Backend(
        id=backend_id,
        url=fake.url,
        kind=BackendKind(fake.kind.value),
        models=(model,),
        timeouts=timeouts or Timeouts(),
    )


def openai_client(gw: RunningGateway) -> openai.OpenAI:
    return openai.OpenAI(base_url=gw.openai_url, api_key="x", max_retries=0, timeout=10)


def ndjson(response: httpx.Response) -> list[dict[str, object]]:
    return [json.loads(line) for line in response.text.splitlines() if line]


def sse_payloads(response: httpx.Response) -> list[str]:
    return [line[5:].strip() for line in response.text.splitlines() if line.startswith("data:")]


def ollama_chat(client: ollama.Client, model: str, *, stream: bool, into: list[str] | None = None) -> None:
    """Chat through the ollama client, appending what arrives to ``into``."""
    into = [] if into is None else into
    if not stream:
        into.append(client.chat(model=model, messages=MESSAGES).message.content or "")
        return
    for part in client.chat(model=model, messages=MESSAGES, stream=True):
        into.append(part.message.content or "")


def openai_stream(stream: Iterable[ChatCompletionChunk], into: list[str]) -> None:
    for chunk in stream:
        into.append(chunk.choices[0].delta.content or "" if chunk.choices else "")


# --- garbage ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("kind", ["openai", "ollama"])
def test_garbage_is_a_502_for_an_openai_client(
    fake_backend_factory: FakeBackendFactory, gateway_factory: GatewayFactory, kind: str
) -> None:
    fake = fake_backend_factory(models=("m",), kind=kind, garbage=True)
    gw = gateway_factory(Config(backends=(backend("a", fake, "m"),)))

    with openai_client(gw) as client, pytest.raises(openai.InternalServerError) as caught:
        client.chat.completions.create(model="m", messages=MESSAGES)

    assert caught.value.status_code == 502
    assert isinstance(caught.value.body, dict)
    assert caught.value.body["code"] == "bad_gateway"
    assert caught.value.body["message"].startswith("backend a returned a body that is not JSON")
    assert caught.value.response.headers["x-gatewayd-backend"] == "a"


@pytest.mark.parametrize("kind", ["openai", "ollama"])
@pytest.mark.parametrize("stream", [False, True])
def test_garbage_is_a_502_for_an_ollama_client(
    fake_backend_factory: FakeBackendFactory, gateway_factory: GatewayFactory, kind: str, stream: bool
) -> None:
    fake = fake_backend_factory(models=("m",), kind=kind, garbage=True)
    gw = gateway_factory(Config(backends=(backend("a", fake, "m"),)))

    with ollama.Client(host=gw.url) as client, pytest.raises(ollama.ResponseError) as caught:
        ollama_chat(client, "m", stream=stream)

    assert caught.value.status_code == 502
    assert "backend" in caught.value.error
    assert "not JSON" in caught.value.error


def test_a_garbage_stream_translated_for_the_client_is_a_502(
    fake_backend_factory: FakeBackendFactory, gateway_factory: GatewayFactory
) -> None:
    fake = fake_backend_factory(models=("m",), kind="ollama", garbage=True)
    gw = gateway_factory(Config(backends=(backend("a", fake, "m"),)))

    body = {"model": "m", "messages": MESSAGES, "stream": True}
    response = httpx.post(gw.openai_url + "/chat/completions", json=body)

    assert response.status_code == 502
    assert response.json()["error"]["code"] == "bad_gateway"
    assert "not JSON" in response.json()["error"]["message"]


def test_a_garbage_stream_relayed_in_its_own_dialect_is_a_502(
    fake_backend_factory: FakeBackendFactory, gateway_factory: GatewayFactory
) -> None:
    fake = fake_backend_factory(models=("m",), kind="openai", garbage=True)
    gw = gateway_factory(Config(backends=(backend("a", fake, "m"),)))

    with openai_client(gw) as client, pytest.raises(openai.APIStatusError) as caught:
        list(client.chat.completions.create(model="m", messages=MESSAGES, stream=True))

    assert caught.value.status_code == 502
    assert "not JSON" in caught.value.message


# --- death mid-stream ------------------------------------------------------------------------------------


@pytest.mark.parametrize("kind", ["openai", "ollama"])
def test_death_mid_stream_raises_api_error_in_the_openai_client_and_spares_other_requests(
    fake_backend_factory: FakeBackendFactory, gateway_factory: GatewayFactory, kind: str
) -> None:
    dying = fake_backend_factory(models=("dying",), kind=kind, die_after_chunks=3)
    healthy = fake_backend_factory(models=("healthy",), chunk_delay_seconds=0.02)
    gw = gateway_factory(Config(backends=(backend("a", dying, "dying"), backend("b", healthy, "healthy"))))

    with openai_client(gw) as client:
        other = client.chat.completions.create(model="healthy", messages=MESSAGES, stream=True)
        other_iterator = iter(other)
        other_chunks = [next(other_iterator)]  # the healthy stream is under way
        broken = client.chat.completions.create(model="dying", messages=MESSAGES, stream=True)
        received: list[str] = []
        with pytest.raises(openai.APIError) as caught:
            openai_stream(broken, into=received)
        other_chunks.extend(other_iterator)

    assert broken.response.headers["x-gatewayd-backend"] == "a"
    text = "".join(received)
    assert text  # the chunks sent before the death did arrive...
    assert REPLY.startswith(text)
    assert text != REPLY  # ...and only those
    assert caught.value.message == "backend a closed the stream before it ended"  # no HTTP-library wording
    assert "".join(c.choices[0].delta.content or "" for c in other_chunks) == REPLY
    assert dying.stats().count("/v1/chat/completions" if kind == "openai" else "/api/chat") == 1


@pytest.mark.parametrize("kind", ["openai", "ollama"])
def test_death_mid_stream_raises_response_error_in_the_ollama_client(
    fake_backend_factory: FakeBackendFactory, gateway_factory: GatewayFactory, kind: str
) -> None:
    dying = fake_backend_factory(models=("dying",), kind=kind, die_after_chunks=3)
    gw = gateway_factory(Config(backends=(backend("a", dying, "dying"),)))

    received: list[str] = []
    with ollama.Client(host=gw.url) as client, pytest.raises(ollama.ResponseError) as caught:
        ollama_chat(client, "dying", stream=True, into=received)

    text = "".join(received)
    assert text
    assert REPLY.startswith(text)
    assert text != REPLY
    assert caught.value.error == "backend a closed the stream before it ended"


@pytest.mark.parametrize("kind", ["openai", "ollama"])
@pytest.mark.parametrize("path", ["/v1/chat/completions", "/api/chat"])
def test_a_broken_stream_ends_with_one_error_event_and_a_clean_close(
    fake_backend_factory: FakeBackendFactory, gateway_factory: GatewayFactory, path: str, kind: str
) -> None:
    dying = fake_backend_factory(models=("dying",), kind=kind, die_after_chunks=2)
    gw = gateway_factory(Config(backends=(backend("a", dying, "dying"),)))

    # httpx raises RemoteProtocolError if the gateway does not end the chunked body properly
    response = httpx.post(gw.url + path, json={"model": "dying", "messages": MESSAGES, "stream": True})

    assert response.status_code == 200
    if path.startswith("/api/"):
        lines = ndjson(response)
        assert all("error" not in line for line in lines[:-1])
        assert isinstance(lines[-1]["error"], str)
    else:
        payloads = sse_payloads(response)
        assert "[DONE]" not in payloads
        last = json.loads(payloads[-1])
        assert last["error"]["code"] == "backend_unavailable"
        assert all("error" not in json.loads(p) for p in payloads[:-1])


@pytest.mark.parametrize("kind", ["openai", "ollama"])
def test_a_responses_stream_broken_mid_way_ends_with_response_failed_carrying_the_response(
    fake_backend_factory: FakeBackendFactory, gateway_factory: GatewayFactory, kind: str
) -> None:
    dying = fake_backend_factory(models=("dying",), kind=kind, die_after_chunks=3)
    gw = gateway_factory(Config(backends=(backend("a", dying, "dying"),)))

    with openai_client(gw) as client:
        events = list(client.responses.create(model="dying", input="hello there", stream=True))
        with client.responses.stream(model="dying", input="hello there") as helper:
            helped = list(helper)

    assert [e.type for e in events[:2]] == ["response.created", "response.in_progress"]
    assert all(e.type not in ("error", "response.completed") for e in events[:-1])
    failed = events[-1]
    assert failed.type == "response.failed"
    assert failed.sequence_number == len(events) - 1
    response = failed.response
    assert response.id == events[0].response.id
    assert response.status == "failed"
    assert response.error is not None
    assert response.error.code == "server_error"
    assert response.error.message == "backend a closed the stream before it ended"
    text = "".join(e.delta for e in events if e.type == "response.output_text.delta")
    assert text
    assert REPLY.startswith(text)
    assert text != REPLY
    assert response.output_text == text  # the response as far as it got
    assert helped[-1].type == "response.failed"  # the SDK's stream helper accepts it too


# --- timeouts --------------------------------------------------------------------------------------------


def test_the_first_byte_timeout_cuts_a_silent_backend(
    fake_backend_factory: FakeBackendFactory, gateway_factory: GatewayFactory
) -> None:
    slow = fake_backend_factory(models=("m",), first_byte_delay_seconds=SLOW_SECONDS)
    timeouts = Timeouts(first_byte_seconds=SHORT_SECONDS)
    gw = gateway_factory(Config(backends=(backend("a", slow, "m", timeouts),)))

    started = time.monotonic()
    response = httpx.post(gw.openai_url + "/chat/completions", json={"model": "m", "messages": MESSAGES})
    elapsed = time.monotonic() - started

    assert response.status_code == 504
    assert response.json()["error"]["code"] == "backend_timeout"
    assert response.json()["error"]["message"] == f"backend a sent no response within {SHORT_SECONDS:g} s"
    assert elapsed < CUT_WITHIN_SECONDS


def test_the_first_byte_timeout_does_not_bound_the_gaps_of_a_started_stream(
    fake_backend_factory: FakeBackendFactory, gateway_factory: GatewayFactory
) -> None:
    paced = fake_backend_factory(models=("m",), chunks=2, chunk_delay_seconds=2 * SHORT_SECONDS)
    timeouts = Timeouts(first_byte_seconds=SHORT_SECONDS, idle_seconds=10 * SHORT_SECONDS)
    gw = gateway_factory(Config(backends=(backend("a", paced, "m", timeouts),)))

    with openai_client(gw) as client:
        stream = client.chat.completions.create(model="m", messages=MESSAGES, stream=True)
        text = "".join(chunk.choices[0].delta.content or "" for chunk in stream)

    assert text == REPLY


def test_the_first_byte_timeout_moves_on_to_the_next_backend(
    fake_backend_factory: FakeBackendFactory, gateway_factory: GatewayFactory
) -> None:
    slow = fake_backend_factory(models=("m",), first_byte_delay_seconds=SLOW_SECONDS)
    fast = fake_backend_factory(models=("m",))
    timeouts = Timeouts(first_byte_seconds=SHORT_SECONDS)
    gw = gateway_factory(Config(backends=(backend("a", slow, "m", timeouts), backend("b", fast, "m"))))

    response = httpx.post(gw.url + "/api/chat", json={"model": "m", "messages": MESSAGES, "stream": False})

    assert response.status_code == 200
    assert response.headers["x-gatewayd-backend"] == "b"
    assert response.headers["x-gatewayd-attempts"] == "2"


@pytest.mark.parametrize("kind", ["openai", "ollama"])
def test_the_idle_timeout_ends_a_stalled_stream_with_an_error(
    fake_backend_factory: FakeBackendFactory, gateway_factory: GatewayFactory, kind: str
) -> None:
    stalling = fake_backend_factory(models=("m",), kind=kind, chunk_delay_seconds=SLOW_SECONDS)
    timeouts = Timeouts(idle_seconds=SHORT_SECONDS)
    gw = gateway_factory(Config(backends=(backend("a", stalling, "m", timeouts),)))

    started = time.monotonic()
    with openai_client(gw) as client, pytest.raises(openai.APIError) as caught:
        list(client.chat.completions.create(model="m", messages=MESSAGES, stream=True))

    assert time.monotonic() - started < CUT_WITHIN_SECONDS
    assert f"went silent for {SHORT_SECONDS:g} s mid-stream" in caught.value.message


def test_the_total_timeout_ends_a_stream_that_keeps_going(
    fake_backend_factory: FakeBackendFactory, gateway_factory: GatewayFactory
) -> None:
    endless = fake_backend_factory(models=("m",), chunks=200, chunk_delay_seconds=0.02)
    timeouts = Timeouts(total_seconds=SHORT_SECONDS)
    gw = gateway_factory(Config(backends=(backend("a", endless, "m", timeouts),)))

    started = time.monotonic()
    with ollama.Client(host=gw.url) as client, pytest.raises(ollama.ResponseError) as caught:
        ollama_chat(client, "m", stream=True)

    assert time.monotonic() - started < CUT_WITHIN_SECONDS
    assert f"did not finish within {SHORT_SECONDS:g} s" in caught.value.error
    endless.wait_for(lambda stats: stats.in_flight == 0 and stats.disconnects == 1)
