"""Which web pages and Host names may reach the real gateway, with browser-like raw requests (httpx with the
headers a browser sends): DNS rebinding (a Host that is not this machine), pages of other sites (Origin,
Sec-Fetch-Site), CORS for the origins in server.cors_origins, and /admin staying same-origin only.

Each refusal is checked where it matters: the request never reaches the backend."""

from __future__ import annotations

import json
from collections.abc import Iterator
from dataclasses import dataclass

import httpx
import pytest

from gatewayd.config import Backend, BackendKind, Config, ServerSettings
from tests.support.fake_backend import FakeBackend, running_fake_backend
from tests.support.gateway import RunningGateway, running_gateway

MODEL = "m"
CHAT = {"model": MODEL, "messages": [{"role": "user", "content": "hi"}], "stream": False}
EVIL = "http://evil.example"
UI = "http://localhost:3000"  # a chat UI on another port, listed in server.cors_origins
CHAT_PATHS = ("/v1/chat/completions", "/api/chat")
#: what a page elsewhere sends for a fetch() to gatewayd
CROSS_SITE = {"Origin": EVIL, "Sec-Fetch-Site": "cross-site", "Sec-Fetch-Mode": "cors"}


@dataclass
class Setup:
    gateway: RunningGateway
    fake: FakeBackend

    @property
    def url(self) -> str:
        return self.gateway.url

    @property
    def port(self) -> int:
        return self.gateway.port

    def chats_seen(self) -> int:
        """Chat requests the backend received (an Ollama /api/chat reaches it as /v1/chat/completions)."""
        return self.fake.stats().count("/v1/chat/completions")


@pytest.fixture(scope="module")
def setup() -> Iterator[Setup]:
    with running_fake_backend(models=(MODEL,)) as fake:
        config = Config(
            server=ServerSettings(allowed_hosts=("gateway.lan",), cors_origins=(UI,)),
            backends=(Backend(id="b", url=fake.url, kind=BackendKind.OPENAI, models=(MODEL,)),),
        )
        with running_gateway(config) as gateway:
            yield Setup(gateway, fake)


def send(setup: Setup, method: str, path: str, headers: dict[str, str], **kwargs: object) -> httpx.Response:
    return httpx.request(method, setup.url + path, headers=headers, timeout=30, **kwargs)  # type: ignore[arg-type]


def post_chat(setup: Setup, path: str, headers: dict[str, str]) -> httpx.Response:
    """The blind cross-site POST a page can send without a preflight: a JSON body as text/plain."""
    return send(setup, "POST", path, {"Content-Type": "text/plain", **headers}, content=json.dumps(CHAT))


def assert_refused_in_dialect(response: httpx.Response, path: str, code: str) -> None:
    assert response.status_code == 403, response.text
    assert response.headers["x-request-id"]
    body = response.json()
    if path.startswith("/api/"):
        assert isinstance(body["error"], str)
        assert body["error"]
    else:
        assert body["error"]["code"] == code
        assert body["error"]["type"] == "invalid_request_error"
    assert "access-control-allow-origin" not in response.headers


# -- Host (DNS rebinding) -------------------------------------------------------------------------------

READ_PATHS = ("/status", "/metrics", "/status/activity", "/v1/models", "/api/tags", "/admin/backends", "/")


@pytest.mark.parametrize("path", READ_PATHS)
def test_a_host_that_is_not_this_machine_is_refused(setup: Setup, path: str) -> None:
    rebound = send(setup, "GET", path, {"Host": f"evil.example:{setup.port}"})
    assert_refused_in_dialect(rebound, path, "host_not_allowed")
    assert "server.allowed_hosts" in rebound.text
    assert send(setup, "GET", path, {"Host": f"127.0.0.1:{setup.port}"}).status_code == 200


@pytest.mark.parametrize("path", CHAT_PATHS)
def test_a_generation_for_a_rebound_host_never_reaches_the_backend(setup: Setup, path: str) -> None:
    before = setup.chats_seen()
    rebound = post_chat(setup, path, {"Host": f"evil.example:{setup.port}"})
    assert_refused_in_dialect(rebound, path, "host_not_allowed")
    assert setup.chats_seen() == before
    assert post_chat(setup, path, {"Host": f"localhost:{setup.port}"}).status_code == 200
    assert setup.chats_seen() == before + 1


@pytest.mark.parametrize(
    "host", ["localhost", "LOCALHOST:{port}", "127.0.0.1", "127.0.0.2:{port}", "[::1]:{port}", "[::1]"]
)
def test_loopback_names_and_addresses_are_this_machine(setup: Setup, host: str) -> None:
    assert send(setup, "GET", "/v1/models", {"Host": host.format(port=setup.port)}).status_code == 200


def test_a_name_in_allowed_hosts_is_let_through(setup: Setup) -> None:
    assert send(setup, "GET", "/status", {"Host": f"gateway.lan:{setup.port}"}).status_code == 200
    assert send(setup, "GET", "/status", {"Host": "GATEWAY.LAN"}).status_code == 200
    other = send(setup, "GET", "/status", {"Host": f"gateway.lan.evil.example:{setup.port}"})
    assert other.status_code == 403


@pytest.mark.parametrize("path", ["/healthz", "/readyz"])
def test_probes_answer_any_host_and_any_site(setup: Setup, path: str) -> None:
    """A load balancer's probe names the host its own way; the answer reveals nothing."""
    assert send(setup, "GET", path, {"Host": "10.1.2.3:80", **CROSS_SITE}).status_code == 200


# -- pages of other sites (Origin, Sec-Fetch-Site) ------------------------------------------------------


@pytest.mark.parametrize("path", CHAT_PATHS)
def test_a_cross_site_post_never_reaches_the_backend(setup: Setup, path: str) -> None:
    """The page-spends-your-credit attack: a text/plain POST, which browsers send without a preflight."""
    before = setup.chats_seen()
    assert_refused_in_dialect(post_chat(setup, path, CROSS_SITE), path, "cross_site_request")
    assert setup.chats_seen() == before


@pytest.mark.parametrize("path", [*CHAT_PATHS, "/status", "/v1/models"])
@pytest.mark.parametrize("origin", [EVIL, "null", "http://localhost:3001", "http://evil.example:{port}"])
def test_an_origin_of_another_site_is_refused(setup: Setup, path: str, origin: str) -> None:
    """Origin alone (browsers without Sec-Fetch-*, such as older Safari, send only this)."""
    before = setup.chats_seen()
    headers = {"Origin": origin.format(port=setup.port)}
    response = post_chat(setup, path, headers) if path in CHAT_PATHS else send(setup, "GET", path, headers)
    assert_refused_in_dialect(response, path, "cross_site_request")
    assert setup.chats_seen() == before


@pytest.mark.parametrize("site", ["cross-site", "same-site"])
@pytest.mark.parametrize("path", [*CHAT_PATHS, "/status/activity", "/v1/models"])
def test_sec_fetch_site_of_another_site_is_refused(setup: Setup, path: str, site: str) -> None:
    """Sec-Fetch-Site alone: what a no-cors request (an <img> or <script> pointed here) carries."""
    before = setup.chats_seen()
    headers = {"Sec-Fetch-Site": site, "Sec-Fetch-Mode": "no-cors"}
    response = post_chat(setup, path, headers) if path in CHAT_PATHS else send(setup, "GET", path, headers)
    assert_refused_in_dialect(response, path, "cross_site_request")
    assert setup.chats_seen() == before


def test_gatewayds_own_page_and_clients_without_browser_headers_are_served(setup: Setup) -> None:
    own = {"Origin": f"http://127.0.0.1:{setup.port}", "Sec-Fetch-Site": "same-origin"}
    assert send(setup, "GET", "/status", own).status_code == 200
    assert post_chat(setup, "/v1/chat/completions", own).status_code == 200
    typed = {"Sec-Fetch-Site": "none", "Sec-Fetch-Mode": "navigate", "Sec-Fetch-Dest": "document"}
    assert send(setup, "GET", "/", typed).status_code == 200  # the address typed in the address bar
    assert send(setup, "POST", "/v1/chat/completions", {}, json=CHAT).status_code == 200  # an SDK


def test_a_link_followed_from_another_site_opens_the_page_but_a_form_post_is_refused(setup: Setup) -> None:
    link = {"Sec-Fetch-Site": "cross-site", "Sec-Fetch-Mode": "navigate", "Sec-Fetch-Dest": "document"}
    assert send(setup, "GET", "/", link).status_code == 200
    before = setup.chats_seen()
    form = post_chat(setup, "/api/chat", {**link, "Origin": EVIL})
    assert form.status_code == 403
    assert post_chat(setup, "/api/chat", link).status_code == 403  # even if the Origin were missing
    assert setup.chats_seen() == before


# -- CORS for server.cors_origins -----------------------------------------------------------------------


def preflight(setup: Setup, path: str, origin: str) -> httpx.Response:
    return send(
        setup,
        "OPTIONS",
        path,
        {
            "Origin": origin,
            "Access-Control-Request-Method": "POST",
            "Access-Control-Request-Headers": "authorization,content-type,x-stainless-os",
            "Sec-Fetch-Site": "same-site",
            "Sec-Fetch-Mode": "cors",
        },
    )


@pytest.mark.parametrize("path", [*CHAT_PATHS, "/v1/models", "/status"])
def test_a_preflight_from_an_allowed_origin_is_answered(setup: Setup, path: str) -> None:
    response = preflight(setup, path, UI)
    assert response.status_code == 204, response.text
    assert response.headers["access-control-allow-origin"] == UI
    assert "origin" in response.headers["vary"].lower()
    assert "POST" in response.headers["access-control-allow-methods"]
    allowed = {name.strip() for name in response.headers["access-control-allow-headers"].split(",")}
    assert {"authorization", "content-type", "x-api-key", "anthropic-version", "x-stainless-os"} <= allowed
    assert int(response.headers["access-control-max-age"]) > 0


@pytest.mark.parametrize("path", CHAT_PATHS)
def test_a_preflight_from_another_origin_is_refused(setup: Setup, path: str) -> None:
    refused = preflight(setup, path, "http://localhost:3001")
    assert_refused_in_dialect(refused, path, "cross_site_request")


def test_an_allowed_origin_reads_the_answer_and_its_headers(setup: Setup) -> None:
    headers = {"Origin": UI, "Sec-Fetch-Site": "same-site", "Sec-Fetch-Mode": "cors"}
    before = setup.chats_seen()
    response = send(setup, "POST", "/v1/chat/completions", headers, json=CHAT)
    assert response.status_code == 200, response.text
    assert setup.chats_seen() == before + 1
    assert response.headers["access-control-allow-origin"] == UI
    assert "origin" in response.headers["vary"].lower()
    exposed = {name.strip() for name in response.headers["access-control-expose-headers"].split(",")}
    assert {"x-request-id", "x-gatewayd-backend", "retry-after", "x-ratelimit-remaining-requests"} <= exposed
    listing = send(setup, "GET", "/v1/models", headers)
    assert listing.headers["access-control-allow-origin"] == UI
    assert [model["id"] for model in listing.json()["data"]] == [MODEL]


@pytest.mark.parametrize("path", CHAT_PATHS)
def test_a_stream_to_an_allowed_origin_carries_the_cors_headers(setup: Setup, path: str) -> None:
    headers = {"Origin": UI, "Sec-Fetch-Site": "same-site", "Sec-Fetch-Mode": "cors"}
    body = {**CHAT, "stream": True}
    with httpx.stream("POST", setup.url + path, headers=headers, json=body, timeout=30) as response:
        assert response.status_code == 200
        assert response.headers["access-control-allow-origin"] == UI
        assert "x-gatewayd-backend" in response.headers["access-control-expose-headers"]
        text = response.read().decode()
    if path.startswith("/v1/"):
        assert text.rstrip().endswith("data: [DONE]")
    else:
        assert json.loads(text.strip().splitlines()[-1])["done"] is True


def test_an_error_to_an_allowed_origin_is_readable_too(setup: Setup) -> None:
    headers = {"Origin": UI, "Sec-Fetch-Site": "same-site", "Sec-Fetch-Mode": "cors"}
    response = send(setup, "POST", "/v1/chat/completions", headers, json={**CHAT, "model": "no-such-model"})
    assert response.status_code == 404
    assert response.headers["access-control-allow-origin"] == UI


# -- /admin stays same-origin only --------------------------------------------------------------------


@pytest.mark.parametrize(
    "headers",
    [
        {"Origin": UI},  # even an origin listed in server.cors_origins
        {"Origin": EVIL},
        {"Sec-Fetch-Site": "same-site", "Sec-Fetch-Mode": "cors"},
        {"Sec-Fetch-Site": "cross-site", "Sec-Fetch-Mode": "navigate", "Sec-Fetch-Dest": "document"},
    ],
    ids=["cors-origin", "other-origin", "same-site", "cross-site-navigation"],
)
def test_admin_requests_must_be_same_origin(setup: Setup, headers: dict[str, str]) -> None:
    refused = send(setup, "GET", "/admin/backends", headers)
    assert_refused_in_dialect(refused, "/admin/backends", "cross_site_request")
    preflighted = preflight(setup, "/admin/reload", UI)
    assert preflighted.status_code == 403
    own = {"Origin": f"http://127.0.0.1:{setup.port}", "Sec-Fetch-Site": "same-origin"}
    assert send(setup, "GET", "/admin/backends", own).status_code == 200


def test_any_origin_when_cors_origins_holds_a_star() -> None:
    with running_fake_backend(models=(MODEL,)) as fake:
        config = Config(
            server=ServerSettings(cors_origins=("*",)),
            backends=(Backend(id="b", url=fake.url, kind=BackendKind.OPENAI, models=(MODEL,)),),
        )
        with running_gateway(config) as gateway:
            anywhere = Setup(gateway, fake)
            response = post_chat(anywhere, "/v1/chat/completions", CROSS_SITE)
            assert response.status_code == 200
            assert response.headers["access-control-allow-origin"] == EVIL
            assert preflight(anywhere, "/api/chat", "null").headers["access-control-allow-origin"] == "null"
            assert send(anywhere, "GET", "/admin/backends", CROSS_SITE).status_code == 403
            rebound = send(anywhere, "GET", "/status", {**CROSS_SITE, "Host": "evil.example"})
            assert rebound.status_code == 403  # a star opens CORS, not DNS rebinding


def test_without_allowed_hosts_only_this_machine_is_served() -> None:
    with running_fake_backend(models=(MODEL,)) as fake:
        backends = (Backend(id="b", url=fake.url, kind=BackendKind.OPENAI, models=(MODEL,)),)
        with running_gateway(Config(backends=backends)) as gateway:
            plain = Setup(gateway, fake)
            assert send(plain, "GET", "/status", {"Host": "gateway.lan"}).status_code == 403
            assert send(plain, "GET", "/status", {"Host": f"127.0.0.1:{plain.port}"}).status_code == 200


def test_a_request_without_an_origin_gets_no_cors_headers(setup: Setup) -> None:
    response = send(setup, "GET", "/v1/models", {})
    assert response.status_code == 200
    assert "access-control-allow-origin" not in response.headers
