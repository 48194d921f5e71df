"""Test harness: the official clients answered in-process, and a stream pump that does what the relay does.

The official openai and ollama clients are answered through their HTTP clients' transports. A ``Reply``
receives the path and JSON body the client sent and returns the status and body bytes to answer with, so
a test can translate the very request the official client built and hand the translated answer back to
the same client's parser.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any, TypeVar

import httpx
import httpx2
import ollama
import openai

from gatewayd.gateway.core.profile import DialectProfile
from gatewayd.gateway.core.stream import stream_machine
from gatewayd.gateway.core.translation import Translator
from gatewayd.gateway.core.usage import Usage
from gatewayd.gateway.dialects.registry import Api, translator

#: the model name the backend knows, as opposed to the public name clients ask for
BACKEND_MODEL = "backend-model"

T = TypeVar("T")
Reply = Callable[[str, dict[str, Any]], tuple[int, bytes]]


def _content_type(body: bytes) -> str:
    if body.startswith((b"data:", b":")):
        return "text/event-stream"
    return "application/x-ndjson" if body.count(b"\n") > 1 else "application/json"


def openai_client(reply: Reply) -> openai.OpenAI:
    def handle(request: httpx2.Request) -> httpx2.Response:
        status, body = reply(request.url.path, json.loads(request.content))
        return httpx2.Response(status, content=body, headers={"content-type": _content_type(body)})

    return openai.OpenAI(
        api_key="test",
        base_url="http://gateway.test/v1",
        max_retries=0,
        http_client=httpx2.Client(transport=httpx2.MockTransport(handle)),
    )


def ollama_client(reply: Reply) -> ollama.Client:
    def handle(request: httpx.Request) -> httpx.Response:
        status, body = reply(request.url.path, json.loads(request.content))
        return httpx.Response(status, content=body, headers={"content-type": _content_type(body)})

    return ollama.Client(host="http://gateway.test", transport=httpx.MockTransport(handle))


def pump(translation: Translator, upstream: bytes, *, chunk_size: int = 7) -> tuple[bytes, Usage]:
    """What the relay does with a streamed answer: feed the upstream bytes in ``chunk_size`` pieces to the
    stream machine (``core.stream``) and collect what it would send. Returns the client's bytes and the
    token counts."""
    machine = stream_machine(translation, "backend")
    out: list[bytes] = []
    for at in range(0, len(upstream), chunk_size):
        out.append(machine.feed(upstream[at : at + chunk_size]))
        if machine.finished:
            break
    out.append(machine.end())
    return b"".join(out), machine.usage


@dataclass
class Exchange:
    """What the gateway sent upstream for one client request, and the counts it got back."""

    upstream_path: str
    upstream_body: dict[str, Any]
    usage: Usage


def gateway(
    api: Api,
    backend: DialectProfile,
    answer: dict[str, Any] | bytes,
    exchanges: list[Exchange],
    *,
    chunk_size: int = 7,
) -> Reply:
    """A ``Reply`` that plays the gateway in front of a backend answering ``answer`` (a whole body, or the
    bytes of a stream): it translates the client's request (recorded in ``exchanges``) and the answer."""

    def reply(path: str, body: dict[str, Any]) -> tuple[int, bytes]:
        assert path == api.path
        translation = translator(api, backend, client_model=body["model"])
        stream = api.wants_stream(body)
        assert stream is isinstance(answer, bytes), (
            "the client's stream flag does not match the canned answer"
        )
        upstream = translation.request(body, model=BACKEND_MODEL, stream=stream)
        if isinstance(answer, bytes):
            client_bytes, usage = pump(translation, answer, chunk_size=chunk_size)
        else:
            client_bytes = json.dumps(translation.response(answer)).encode()
            usage = translation.usage(answer)
        exchanges.append(Exchange(translation.upstream_path, upstream, usage))
        return 200, client_bytes

    return reply


def drain(parts: Iterable[T], into: list[T]) -> None:
    """Collect a client's stream into ``into`` (kept when the stream raises part way)."""
    into.extend(parts)
