"""Random and mutated requests on every route, against an in-process gateway with fake backends of both
dialects.

Every route is taken from the code (the inference routes and the Quart app's URL map). Bodies are valid
requests with mutations (a field dropped, retyped or replaced), random JSON, random bytes and deep nesting;
headers and paths are random too. After each request: no 5xx other than 502/503/504, and those with a body in
the dialect; no error without a body. At the end: the gateway still answers, and every in-flight counter
(requests per generation, admission per backend, streams, key slots) is back to zero.

Deterministic (hypothesis derandomized, no example database) and bounded: a few thousand requests.
"""

from __future__ import annotations

import json
import re
import time
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import httpx
import pytest
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st

from gatewayd.config import Backend, BackendKind, Config, Limits
from gatewayd.gateway.inference import INFERENCE_ROUTES
from tests.support.fake_backend import FakeBackend, running_fake_backend
from tests.support.gateway import RunningGateway, running_gateway

OPENAI_MODEL = "fo"
OLLAMA_MODEL = "fl"
MODELS = (OPENAI_MODEL, OLLAMA_MODEL, "missing-model")
#: examples per test (one request each; three tests)
EXAMPLES = 400
#: per request; a fake backend answers in milliseconds
REQUEST_TIMEOUT_SECONDS = 30.0
SERVER_ERRORS_ALLOWED = frozenset({502, 503, 504})


@dataclass
class Setup:
    gateway: RunningGateway
    fakes: tuple[FakeBackend, FakeBackend]
    client: httpx.Client
    routes: tuple[tuple[str, str], ...]


def quart_routes(gw: RunningGateway) -> list[tuple[str, str]]:
    """(method, path) of every Quart route, path parameters filled with a placeholder."""
    app = gw.generation.app
    assert app is not None
    routes = []
    for rule in app.url_map.iter_rules():
        if rule.endpoint == "static":
            continue
        path = re.sub(r"<(?:[^:>]+:)?([^>]+)>", "x", rule.rule)
        for method in sorted((rule.methods or set()) - {"HEAD", "OPTIONS"}):
            routes.append((method, path))
    return routes


@pytest.fixture(scope="module")
def setup() -> Iterator[Setup]:
    with (
        running_fake_backend(models=(OPENAI_MODEL,)) as openai_fake,
        running_fake_backend(models=(OLLAMA_MODEL,), kind="ollama") as ollama_fake,
    ):
        config = Config(
            backends=(
                Backend(id="o", url=openai_fake.url, kind=BackendKind.OPENAI, models=(OPENAI_MODEL,)),
                Backend(id="l", url=ollama_fake.url, kind=BackendKind.OLLAMA, models=(OLLAMA_MODEL,)),
            ),
            limits=Limits(max_attempts=1),
        )
        with running_gateway(config) as gateway, httpx.Client(timeout=REQUEST_TIMEOUT_SECONDS) as client:
            routes = tuple([("POST", path) for path in INFERENCE_ROUTES] + quart_routes(gateway))
            assert len(routes) > len(INFERENCE_ROUTES) + 10  # the Quart routes were found
            yield Setup(gateway, (openai_fake, ollama_fake), client, routes)
            assert_everything_released(gateway)


# --- strategies --------------------------------------------------------------------------------------------

json_scalars = st.none() | st.booleans() | st.integers(-(2**40), 2**40) | st.floats() | st.text(max_size=20)
json_values = st.recursive(
    json_scalars,
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner, max_size=4),
    max_leaves=12,
)
messages = st.lists(
    st.fixed_dictionaries(
        {
            "role": st.sampled_from(["user", "system", "assistant", "tool", "x"]),
            "content": st.text(max_size=30),
        }
    ),
    min_size=1,
    max_size=3,
)


@st.composite
def valid_body(draw: st.DrawFn) -> dict[str, Any]:
    """A request body most endpoints accept, with the fields each dialect reads."""
    body: dict[str, Any] = {
        "model": draw(st.sampled_from(MODELS)),
        "messages": draw(messages),
        "prompt": draw(st.text(max_size=30)),
        "input": draw(
            st.text(min_size=1, max_size=30) | st.lists(st.text(min_size=1, max_size=10), min_size=1)
        ),
        "stream": draw(st.booleans()),
    }
    if draw(st.booleans()):
        body["max_tokens"] = draw(st.integers(0, 64))
    if draw(st.booleans()):
        body["options"] = {"num_predict": draw(st.integers(-2, 64)), "temperature": draw(st.floats(0, 2))}
    if draw(st.booleans()):
        body["name"] = body["model"]
    return body


@st.composite
def mutated_body(draw: st.DrawFn) -> dict[str, Any]:
    body = draw(valid_body())
    for _ in range(draw(st.integers(1, 3))):
        key = draw(st.sampled_from([*sorted(body), "tools", "format", "stop", "options", "keep_alive"]))
        action = draw(st.sampled_from(["drop", "replace", "nest"]))
        if action == "drop":
            body.pop(key, None)
        elif action == "replace":
            body[key] = draw(json_values)
        else:
            body[key] = {"nested": body.get(key), "list": [body.get(key)]}
    return body


def encode(value: Any) -> bytes:
    return json.dumps(value, allow_nan=True).encode()


#: from harmless to past CPython's recursion limit (about 1,000 levels), the issue's 20,000 included
nesting_depths = st.sampled_from([2, 64, 200, 1_000, 5_000, 20_000])
bodies = st.one_of(
    valid_body().map(encode),
    mutated_body().map(encode),
    json_values.map(encode),
    st.binary(max_size=200),
    nesting_depths.map(lambda depth: b"[" * depth + b"]" * depth),
    nesting_depths.map(lambda depth: b'{"model":' * depth),
    mutated_body().map(lambda body: encode(body)[: len(encode(body)) // 2]),  # cut short
)
header_names = st.sampled_from(
    [
        "content-type",
        "accept",
        "x-request-id",
        "x-gatewayd-preferred-backend",
        "authorization",
        "origin",
        "x-y",
    ]
)
header_values = st.text(st.characters(min_codepoint=0x20, max_codepoint=0x7E), max_size=40).map(
    str.strip
) | st.sampled_from(
    ["application/json", "text/plain", "application/x-www-form-urlencoded", "application/x-ndjson", "", "*/*"]
)
headers = st.dictionaries(header_names, header_values, max_size=4)
methods = st.sampled_from(["GET", "POST", "PUT", "DELETE", "PATCH"])


@st.composite
def request_on_a_route(draw: st.DrawFn, routes: tuple[tuple[str, str], ...]) -> tuple[str, str]:
    method, path = draw(st.sampled_from(routes))
    if draw(st.integers(0, 9)) == 0:
        method = draw(methods)
    return method, path


path_noise = st.sampled_from(["", "/", "//", "/..", "%2e%2e/", "?a=b", "?stream=true", "x", "%00", "/%ff"])


def check(response: httpx.Response, path: str) -> None:
    status = response.status_code
    where = f"{response.request.method} {path} -> {status}: {response.content[:300]!r}"
    if status >= 500:
        assert status in SERVER_ERRORS_ALLOWED, where
    if status >= 400:
        assert response.content, f"empty error body: {where}"
        body = response.json()
        assert isinstance(body, dict), where
        if path.startswith("/api/"):
            assert isinstance(body.get("error"), str), where
        else:
            error = body.get("error")
            assert isinstance(error, dict), where
            assert isinstance(error.get("message"), str), where


def send(setup: Setup, method: str, path: str, body: bytes, extra: dict[str, str]) -> None:
    request_headers = {"content-type": "application/json", **extra}
    content = body if method in ("POST", "PUT", "PATCH", "DELETE") else None
    response = setup.client.request(
        method, setup.gateway.url + path, content=content, headers=request_headers
    )
    check(response, response.request.url.path)  # as the client normalised it (/api/x/.. is /api/)


def assert_everything_released(gw: RunningGateway) -> None:
    """Poll (a stream's slot is released just after its last chunk) until every counter is zero."""

    def counters() -> dict[str, object]:
        generation = gw.generation
        status = generation.status()
        return {
            "generation in flight": status["in_flight"],
            "queued": status["queued"],
            "streams": status["streams"],
            "backend in flight": [row["in_flight"] for row in generation.backend_rows()],
            "in-flight gauge": [value for _labels, value in generation.gauge_in_flight()],
        }

    idle = {
        "generation in flight": 0,
        "queued": 0,
        "streams": 0,
        "backend in flight": [0, 0],
        "in-flight gauge": [0.0, 0.0],
    }
    deadline = time.monotonic() + 30
    while (seen := gw.call(counters)) != idle:
        assert time.monotonic() < deadline, seen
        time.sleep(0.05)
    assert httpx.get(gw.url + "/healthz").status_code == 200


# --- tests -------------------------------------------------------------------------------------------------

FUZZ_SETTINGS = settings(
    max_examples=EXAMPLES,
    derandomize=True,
    database=None,
    deadline=None,
    suppress_health_check=[
        HealthCheck.too_slow,
        HealthCheck.data_too_large,
        HealthCheck.function_scoped_fixture,
    ],
)


@FUZZ_SETTINGS
@given(data=st.data(), body=bodies, extra=headers)
def test_bodies_on_every_route(setup: Setup, data: st.DataObject, body: bytes, extra: dict[str, str]) -> None:
    method, path = data.draw(request_on_a_route(setup.routes))
    send(setup, method, path, body, extra)


@FUZZ_SETTINGS
@given(data=st.data(), body=valid_body(), noise=path_noise, extra=headers)
def test_valid_bodies_on_mangled_paths_and_headers(
    setup: Setup, data: st.DataObject, body: dict[str, Any], noise: str, extra: dict[str, str]
) -> None:
    method, path = data.draw(request_on_a_route(setup.routes))
    send(setup, method, path + noise, encode(body), extra)


@FUZZ_SETTINGS
@given(path=st.text(st.characters(min_codepoint=0x21, max_codepoint=0x7E), max_size=30), method=methods)
def test_random_paths(setup: Setup, path: str, method: str) -> None:
    path = "/" + path.lstrip("/")
    assume("#" not in path)  # a fragment is not sent
    send(setup, method, path, b"{}", {})
