"""The access policy as a pure function of a request's method, path and headers."""

from __future__ import annotations

import pytest

from gatewayd.gateway.core.access import ALLOWED, AccessPolicy, Decision, Verdict, host_name

UI = "http://localhost:3000"


def policy(
    *, listen_host: str = "127.0.0.1", allowed_hosts: tuple[str, ...] = (), cors: tuple[str, ...] = (UI,)
) -> AccessPolicy:
    return AccessPolicy(listen_host=listen_host, allowed_hosts=allowed_hosts, cors_origins=cors)


def decide(
    access: AccessPolicy, headers: dict[str, str], *, method: str = "GET", path: str = "/v1/models", **kw: str
) -> Decision:
    raw = [(name.lower().encode(), value.encode()) for name, value in headers.items()]
    return access.decide(method, path, raw, kw.get("local_address"))


@pytest.mark.parametrize(
    ("header", "name"),
    [
        ("localhost:8484", "localhost"),
        ("LocalHost", "localhost"),
        ("[::1]:8484", "::1"),
        ("[::1]", "::1"),
        ("::1", "::1"),
        ("gateway.lan.", "gateway.lan"),
        ("[::1", ""),
        ("[::1]x", ""),
        ("host:port", ""),
    ],
)
def test_host_name(header: str, name: str) -> None:
    assert host_name(header) == name


@pytest.mark.parametrize(
    "host", ["127.0.0.1:8484", "127.9.8.7", "localhost", "[::1]:1", "[0:0:0:0:0:0:0:1]", "gateway.lan:80"]
)
def test_this_machines_names_are_allowed(host: str) -> None:
    assert decide(policy(allowed_hosts=("gateway.lan",)), {"Host": host}) is ALLOWED


@pytest.mark.parametrize("host", ["evil.example", "0.0.0.0:8484", "localhost.evil.example", "[::2]", "[::1"])
def test_other_hosts_are_refused(host: str) -> None:
    decision = decide(policy(), {"Host": host})
    assert decision.verdict is Verdict.REFUSE
    assert decision.error is not None
    assert decision.error.code == "host_not_allowed"
    assert decision.error.status == 403


def test_the_listen_address_and_the_connections_local_address_are_allowed() -> None:
    assert decide(policy(listen_host="10.0.0.5"), {"Host": "10.0.0.5:8484"}) is ALLOWED
    wildcard = policy(listen_host="0.0.0.0")
    assert decide(wildcard, {"Host": "0.0.0.0"}).verdict is Verdict.REFUSE
    assert decide(wildcard, {"Host": "192.168.1.5:8484"}, local_address="192.168.1.5") is ALLOWED
    other = decide(wildcard, {"Host": "192.168.1.6:8484"}, local_address="192.168.1.5")
    assert other.verdict is Verdict.REFUSE


def test_a_star_accepts_any_host_and_no_host_is_no_claim() -> None:
    assert decide(policy(allowed_hosts=("*",)), {"Host": "anything.example"}) is ALLOWED
    assert decide(policy(), {}) is ALLOWED  # HTTP/1.0 without Host: not a browser


@pytest.mark.parametrize(
    "headers",
    [
        {"Origin": "http://evil.example"},
        {"Origin": "null"},
        {"Origin": "https://localhost:3000"},  # another scheme is another origin
        {"Sec-Fetch-Site": "cross-site"},
        {"Sec-Fetch-Site": "same-site"},
        {"Origin": "http://127.0.0.1:8484", "Sec-Fetch-Site": "cross-site"},  # after a cross-site redirect
    ],
)
def test_requests_from_other_sites_are_refused(headers: dict[str, str]) -> None:
    decision = decide(policy(), {"Host": "127.0.0.1:8484", **headers}, method="POST", path="/api/chat")
    assert decision.verdict is Verdict.REFUSE
    assert decision.error is not None
    assert decision.error.code == "cross_site_request"


def test_same_origin_and_typed_addresses_are_allowed() -> None:
    own = {"Host": "127.0.0.1:8484", "Origin": "http://127.0.0.1:8484", "Sec-Fetch-Site": "same-origin"}
    assert decide(policy(), own, method="POST", path="/admin/reload") is ALLOWED
    assert decide(policy(), {"Host": "localhost:8484", "Sec-Fetch-Site": "none"}) is ALLOWED


def test_only_a_top_level_get_navigation_passes_from_another_site() -> None:
    link = {"Host": "127.0.0.1:8484", "Sec-Fetch-Site": "cross-site", "Sec-Fetch-Mode": "navigate"}
    document = {**link, "Sec-Fetch-Dest": "document"}
    assert decide(policy(), document, path="/") is ALLOWED
    assert decide(policy(), {**link, "Sec-Fetch-Dest": "iframe"}, path="/").verdict is Verdict.REFUSE
    assert decide(policy(), document, method="POST", path="/api/chat").verdict is Verdict.REFUSE
    assert decide(policy(), document, path="/admin/backends").verdict is Verdict.REFUSE


def test_an_allowed_origin_gets_cors_and_its_preflight_answered() -> None:
    headers = {"Host": "127.0.0.1:8484", "Origin": UI, "Sec-Fetch-Site": "same-site"}
    actual = decide(policy(), headers, method="POST", path="/v1/chat/completions")
    assert actual == Decision(Verdict.CORS, UI.encode())
    asked = {
        **headers,
        "Access-Control-Request-Method": "POST",
        "Access-Control-Request-Headers": "x-stainless-os",
    }
    pre = decide(policy(), asked, method="OPTIONS", path="/v1/chat/completions")
    assert pre.verdict is Verdict.PREFLIGHT
    assert pre.origin == UI.encode()
    assert pre.allow_headers.endswith(b", x-stainless-os")
    assert b"authorization" in pre.allow_headers
    odd = {**asked, "Access-Control-Request-Headers": "x-a\r\nset-cookie: 1"}
    assert b"set-cookie" not in decide(policy(), odd, method="OPTIONS").allow_headers
    upper = decide(policy(), {"Host": "127.0.0.1", "Origin": "HTTP://LOCALHOST:3000"})
    assert upper.verdict is Verdict.CORS


def test_admin_is_same_origin_only_even_for_allowed_origins() -> None:
    headers = {"Host": "127.0.0.1:8484", "Origin": UI}
    assert decide(policy(), headers, path="/admin/backends").verdict is Verdict.REFUSE
    assert decide(policy(cors=("*",)), headers, path="/admin/backends").verdict is Verdict.REFUSE
    assert decide(policy(cors=("*",)), headers, path="/v1/models").verdict is Verdict.CORS


@pytest.mark.parametrize("path", ["/healthz", "/readyz"])
def test_probes_are_answered_to_anyone_with_cors_for_allowed_origins(path: str) -> None:
    assert decide(policy(), {"Host": "10.9.9.9", "Origin": "http://evil.example"}, path=path) is ALLOWED
    assert decide(policy(), {"Host": "127.0.0.1", "Origin": UI}, path=path).verdict is Verdict.CORS
