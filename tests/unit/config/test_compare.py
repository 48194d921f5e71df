from __future__ import annotations

import dataclasses

import pytest

from gatewayd.config import (
    AffinitySettings,
    ApiKey,
    AuthMode,
    AuthSettings,
    Backend,
    Config,
    Limits,
    Route,
    RouteTarget,
    ServerSettings,
)
from gatewayd.config.compare import ConfigChanges, NameChanges, changes, weakenings, widened

OLD = Config(
    backends=(Backend(id="a", url="http://127.0.0.1:1"), Backend(id="b", url="http://127.0.0.1:2")),
    routes=(Route("m", (RouteTarget("a"),)), Route("n", (RouteTarget("b"),))),
    keys=(ApiKey(name="k1", key="gwd-0123456789abcdef"), ApiKey(name="k2", key="gwd-fedcba9876543210")),
)


def test_changes_name_what_was_added_removed_and_changed_in_config_order() -> None:
    new = dataclasses.replace(
        OLD,
        backends=(Backend(id="a", url="http://127.0.0.1:9"), Backend(id="c", url="http://127.0.0.1:3")),
        routes=(
            Route("m", (RouteTarget("a"),)),
            Route("n", (RouteTarget("a"),)),
            Route("o", (RouteTarget("c"),)),
        ),
        keys=(
            ApiKey(name="k1", key="gwd-another-secret-value"),
            ApiKey(name="k3", key="gwd-0000000000000000"),
        ),
        limits=Limits(max_attempts=1),
    )
    summary = changes(OLD, new)
    assert summary.backends == NameChanges(added=("c",), removed=("b",), changed=("a",))
    assert summary.routes == NameChanges(added=("o",), changed=("n",))
    assert summary.keys == NameChanges(added=("k3",), removed=("k2",), changed=("k1",))
    assert summary.settings == ("limits",)
    assert "secret" not in str(summary.to_json())  # names only, never a value


def test_the_same_config_changes_nothing_and_the_summary_round_trips_through_json() -> None:
    assert not changes(OLD, dataclasses.replace(OLD, source="/elsewhere.yaml"))
    summary = changes(OLD, Config())
    assert summary
    assert ConfigChanges.from_json(summary.to_json()) == summary
    assert ConfigChanges.from_json({"backends": 1}) is None


AUTH_KEYS = AuthSettings(mode=AuthMode.KEYS, admin_token="admin-0123456789abcdef")
AUTH_OFF_TOKEN = AuthSettings(mode=AuthMode.OFF, admin_token="admin-0123456789abcdef")


@pytest.mark.parametrize(
    ("old", "new", "expected"),
    [
        (AUTH_KEYS, AuthSettings(mode=AuthMode.OFF, admin_token=AUTH_KEYS.admin_token), ["auth.mode goes"]),
        (AUTH_KEYS, AuthSettings(), ["auth.mode goes", "auth.admin_token is removed"]),
        (AUTH_OFF_TOKEN, AuthSettings(), ["auth.admin_token is removed"]),
        # not weaker: keys with no token disables the admin API; a new token; turning auth on
        (AUTH_KEYS, AuthSettings(mode=AuthMode.KEYS), []),
        (AUTH_OFF_TOKEN, AuthSettings(admin_token="admin-another-0123456789"), []),
        (AuthSettings(), AUTH_KEYS, []),
        (AuthSettings(), AuthSettings(), []),
    ],
)
def test_weakenings_name_each_lowered_protection(
    old: AuthSettings, new: AuthSettings, expected: list[str]
) -> None:
    found = weakenings(Config(auth=old), Config(auth=new))
    assert len(found) == len(expected)
    for reason, start in zip(found, expected, strict=True):
        assert reason.startswith(start)


def test_a_widened_allow_list_rule_names_what_it_now_lets_in() -> None:
    rule = widened("affinity.session_headers", lambda config: config.affinity.session_headers)
    narrow = Config(affinity=AffinitySettings(session_headers=("x-a",)))
    wide = Config(affinity=AffinitySettings(session_headers=("x-a", "x-b")))
    assert rule(narrow, wide) == "affinity.session_headers now also lets in x-b"
    assert rule(wide, narrow) is None
    assert rule(wide, wide) is None


@pytest.mark.parametrize("setting", ["cors_origins", "allowed_hosts"])
def test_a_wildcard_added_to_the_browser_allow_lists_is_a_weakening(setting: str) -> None:
    named, another = {
        "cors_origins": ("http://localhost:3000", "http://localhost:5173"),
        "allowed_hosts": ("gw.lan", "gpu-box.lan"),
    }[setting]
    before = Config(server=ServerSettings(**{setting: (named,)}))
    more_names = Config(server=ServerSettings(**{setting: (named, another)}))
    wildcard = Config(server=ServerSettings(**{setting: (named, "*")}))
    assert weakenings(before, more_names) == []  # a named page or host is the operator's explicit choice
    assert weakenings(before, wildcard) == [f"server.{setting} now also lets in *"]
    assert weakenings(wildcard, before) == []
