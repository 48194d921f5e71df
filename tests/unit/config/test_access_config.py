"""server.allowed_hosts and server.cors_origins: what the loader accepts, refuses (with the fix) and warns
about."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.unit.config.helpers import issues_of, load_text


def test_valid_names_addresses_and_origins_load(tmp_path: Path) -> None:
    text = """
    server:
      allowed_hosts: [gateway.lan, GPU-box, 192.168.1.20, "::1", "[fe80::1]", my_host.local.]
      cors_origins: [http://localhost:3000, https://chat.example.com, "http://[::1]:8080", tauri://localhost]
    """
    server = load_text(tmp_path, text).config.server
    assert server.allowed_hosts[0] == "gateway.lan"
    assert server.cors_origins == (
        "http://localhost:3000",
        "https://chat.example.com",
        "http://[::1]:8080",
        "tauri://localhost",
    )


@pytest.mark.parametrize(
    ("entry", "message", "hint"),
    [
        ("gateway.lan:8484", "has a port", "did you mean 'gateway.lan'?"),
        ("[::1]:8484", "has a port", "did you mean '::1'?"),
        ("http://gateway.lan:8484/", "is a URL", "did you mean 'gateway.lan'?"),
        ("*.example.com", "is not a host name or an address", None),
        ("two words", "is not a host name or an address", None),
        ("", "is empty", None),
        ("*", "DNS rebinding", "only for auth.mode: keys"),
    ],
)
def test_an_allowed_host_that_is_not_a_name_is_refused_with_the_fix(
    tmp_path: Path, entry: str, message: str, hint: str | None
) -> None:
    issues = issues_of(tmp_path, f'server:\n  allowed_hosts: ["ok.lan", "{entry}"]\n')
    assert [issue.key for issue in issues] == ["server.allowed_hosts[1]"]
    assert message in issues[0].message
    assert issues[0].line == 2
    if hint is not None:
        assert hint in (issues[0].hint or "")


def test_a_star_in_allowed_hosts_is_for_keys_mode(tmp_path: Path) -> None:
    loaded = load_text(tmp_path, 'auth:\n  mode: keys\nserver:\n  allowed_hosts: ["*"]\n')
    assert loaded.config.server.allowed_hosts == ("*",)


@pytest.mark.parametrize(
    ("entry", "message", "hint"),
    [
        ("http://localhost:3000/", "has a path", "did you mean 'http://localhost:3000'?"),
        ("http://localhost:3000/chat", "has a path", "did you mean 'http://localhost:3000'?"),
        ("localhost:3000", "is not an origin", "did you mean 'http://localhost:3000'?"),
        ("http://localhost:80", "default port", "did you mean 'http://localhost'?"),
        ("https://chat.example:443", "default port", "did you mean 'https://chat.example'?"),
        ("http://localhost:port", "invalid port", None),
        ("http://user@localhost", "is not an origin", None),
        ("null", "'null'", "sandboxed pages"),
    ],
)
def test_a_cors_origin_that_is_not_an_origin_is_refused_with_the_fix(
    tmp_path: Path, entry: str, message: str, hint: str | None
) -> None:
    issues = issues_of(tmp_path, f'server:\n  cors_origins: ["{entry}"]\n')
    assert [issue.key for issue in issues] == ["server.cors_origins[0]"]
    assert message in issues[0].message
    if hint is not None:
        assert hint in (issues[0].hint or "")


def test_a_star_in_cors_origins_is_warned_about_while_auth_is_off(tmp_path: Path) -> None:
    loaded = load_text(tmp_path, 'server:\n  cors_origins: ["*"]\n')
    assert [(warning.key, warning.line) for warning in loaded.warnings] == [("server.cors_origins[0]", 2)]
    assert "every web page" in loaded.warnings[0].message
    with_keys = load_text(tmp_path, 'auth:\n  mode: keys\nserver:\n  cors_origins: ["*"]\n')
    assert with_keys.warnings == ()


def test_listening_on_every_address_without_allowed_hosts_is_warned_about(tmp_path: Path) -> None:
    loaded = load_text(tmp_path, "auth:\n  mode: keys\nserver:\n  host: 0.0.0.0\n")
    assert [warning.key for warning in loaded.warnings] == ["server.host"]
    assert "server.allowed_hosts" in (loaded.warnings[0].hint or "")
