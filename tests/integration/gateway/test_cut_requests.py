"""Requests that end some other way than an answer (a bug, the generation's drain) are answered in their
dialect and give back everything they held: their key's concurrency slot above all."""

from __future__ import annotations

import json
import logging
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import httpx
import pytest

from gatewayd.config import AuthMode, AuthSettings, Backend, BackendKind, Config
from gatewayd.gateway import relay
from gatewayd.gateway.core import stream as stream_machine
from tests.support.fake_backend import FakeBackend
from tests.support.fixtures import FakeBackendFactory
from tests.support.gateway import RunningGateway, running_gateway
from tests.support.process import wait_for

MODEL = "m"
ADMIN = "admin-token-for-tests"
PATHS = ("/v1/chat/completions", "/api/chat")


@contextmanager
def gateway(
    tmp_path: Path, fake: FakeBackend, kind: str = "openai"
) -> Iterator[tuple[RunningGateway, str, str]]:
    """A gateway requiring keys, and a key that may run one request at a time (and its id)."""
    config = Config(
        auth=AuthSettings(mode=AuthMode.KEYS, admin_token=ADMIN),
        backends=(Backend(id="b", url=fake.url, kind=BackendKind(kind), models=(MODEL,)),),
    )
    with running_gateway(config, state_dir=tmp_path / "state") as gw:
        created = httpx.post(
            gw.url + "/admin/keys",
            json={"name": "one", "max_concurrency": 1},
            headers={"Authorization": f"Bearer {ADMIN}"},
        )
        assert created.status_code == 201, created.text
        yield gw, str(created.json()["key"]), str(created.json()["id"])


def chat(gw: RunningGateway, key: str, path: str, *, stream: bool = False) -> httpx.Response:
    body = {"model": MODEL, "messages": [{"role": "user", "content": "hi"}], "stream": stream}
    return httpx.post(gw.url + path, json=body, headers={"Authorization": f"Bearer {key}"}, timeout=30)


def error_message(path: str, response: httpx.Response) -> str:
    """The message of an error body, checking it has the dialect's shape."""
    body = response.json()
    if path.startswith("/api/"):
        assert set(body) == {"error"}
        assert isinstance(body["error"], str)
        return str(body["error"])
    assert set(body["error"]) == {"message", "type", "param", "code"}
    return str(body["error"]["message"])


@pytest.mark.parametrize("path", PATHS)
def test_an_unexpected_error_is_a_500_in_the_dialect_logged_once_and_its_key_slot_is_freed(
    tmp_path: Path,
    fake_backend_factory: FakeBackendFactory,
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
    path: str,
) -> None:
    def broken(*args: Any, **kwargs: Any) -> Any:
        raise ZeroDivisionError("a bug")  # stands for any bug on the request's path

    # for the whole test: the access line is logged after the answer is sent, maybe after chat() returned
    caplog.set_level(logging.INFO)
    with gateway(tmp_path, fake_backend_factory(models=(MODEL,))) as (gw, key, _):
        with monkeypatch.context() as patch:
            patch.setattr(relay, "translator", broken)
            failed = chat(gw, key, path)
        assert failed.status_code == 500
        request_id = failed.headers["x-request-id"]
        assert request_id in error_message(path, failed)
        # log records may reach the handlers after the response (from a queue): wait for the access line
        wait_for(
            lambda: any(r.name == "gatewayd.access" for r in caplog.records),
            timeout=10,
            what="the access log",
        )
        tracebacks = [r for r in caplog.records if r.exc_info is not None]
        assert len(tracebacks) == 1
        assert request_id in tracebacks[0].getMessage()
        assert tracebacks[0].exc_info is not None
        assert tracebacks[0].exc_info[0] is ZeroDivisionError
        access = [r for r in caplog.records if r.name == "gatewayd.access"]
        assert len(access) == 1
        assert access[0].fields["status"] == 500  # type: ignore[attr-defined]
        assert chat(gw, key, path).status_code == 200  # the key's one slot was given back


@pytest.mark.parametrize("path", PATHS)
def test_an_unexpected_error_mid_stream_ends_it_with_the_dialects_error_event(
    tmp_path: Path, fake_backend_factory: FakeBackendFactory, monkeypatch: pytest.MonkeyPatch, path: str
) -> None:
    calls = [0]
    split = stream_machine.split_complete

    def breaks_on_the_second_call(data: bytes, framing: Any) -> Any:
        calls[0] += 1
        if calls[0] > 1:
            raise ZeroDivisionError("a bug")
        return split(data, framing)

    # a backend of the client's own dialect: its stream is relayed as bytes, event by event
    kind = "ollama" if path.startswith("/api/") else "openai"
    fake = fake_backend_factory(models=(MODEL,), kind=kind, chunks=20, chunk_delay_seconds=0.01)
    with gateway(tmp_path, fake, kind) as (gw, key, _):
        with monkeypatch.context() as patch:
            patch.setattr(stream_machine, "split_complete", breaks_on_the_second_call)
            streamed = chat(gw, key, path, stream=True)
        assert streamed.status_code == 200
        lines = [line.removeprefix("data: ") for line in streamed.text.splitlines() if line.strip()]
        last = json.loads(lines[-1])
        assert "error" in last, lines
        message = last["error"] if path.startswith("/api/") else last["error"]["message"]
        assert streamed.headers["x-request-id"] in message
        assert chat(gw, key, path).status_code == 200


@pytest.mark.parametrize("path", PATHS)
def test_a_request_cut_by_the_drain_is_a_503_in_its_dialect_and_its_key_slot_is_freed(
    tmp_path: Path, fake_backend_factory: FakeBackendFactory, path: str
) -> None:
    fake = fake_backend_factory(models=(MODEL,), first_byte_delay_seconds=30)
    with gateway(tmp_path, fake) as (gw, key, key_id):
        answers: list[httpx.Response] = []
        waiting = threading.Thread(target=lambda: answers.append(chat(gw, key, path)))
        waiting.start()
        wait_for(lambda: fake.stats().in_flight == 1, timeout=10, what="the request at the backend")
        gw.call(gw.generation.end_streams)  # what the drain does when its time is up
        waiting.join(30)
        assert len(answers) == 1
        cut = answers[0]
        assert cut.status_code == 503
        assert cut.headers["retry-after"] == "1"
        message = error_message(path, cut)
        assert "gateway is restarting" in message
        assert "backend" not in message
        fake.wait_for(lambda stats: stats.in_flight == 0)  # the upstream request was dropped
        assert gw.call(lambda: gw.factory.guard.limiter.in_flight(key_id)) == 0  # its slot is free
