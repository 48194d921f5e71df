from __future__ import annotations

import json
import logging
import os
import socket
import stat
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from gatewayd import __version__
from gatewayd.supervisor.diagnostics import BUNDLES_KEPT, REDACTED, EventRing, scrub, write_bundle


@pytest.fixture
def logger() -> Iterator[logging.Logger]:
    logger = logging.getLogger("gatewayd.test.diagnostics")
    logger.setLevel(logging.DEBUG)
    logger.propagate = False
    yield logger
    logger.handlers.clear()


def test_the_ring_keeps_the_last_records_as_structured_events(logger: logging.Logger) -> None:
    ring = EventRing(capacity=3)
    other = EventRing()
    logger.addHandler(ring)
    for n in range(5):
        logger.info("request %d done", n)
    try:
        raise ValueError("upstream said no")
    except ValueError:
        logger.exception("reload failed")
    events = ring.events()
    assert [event["message"] for event in events] == ["request 3 done", "request 4 done", "reload failed"]
    assert events[0]["level"] == "INFO"
    assert events[0]["logger"] == "gatewayd.test.diagnostics"
    assert str(events[0]["time"]).endswith("+00:00")
    assert "ValueError: upstream said no" in str(events[2]["exception"])
    assert "exception" not in events[0]
    assert other.events() == []  # rings are independent: nothing is process-global


def bundle(path: Path) -> dict[str, Any]:
    value = json.loads(path.read_text())
    assert isinstance(value, dict)
    return value


def fail_deep() -> None:
    raise RuntimeError("generation 3 did not start")


def test_a_bundle_holds_process_facts_the_error_the_config_and_the_events(tmp_path: Path) -> None:
    state_dir = tmp_path / "state"
    with pytest.raises(RuntimeError) as caught:
        fail_deep()
    started_at = time.time() - 12.0
    path = write_bundle(
        state_dir,
        reason="force exit",
        error=caught.value,
        events=[{"time": "t", "level": "INFO", "logger": "x", "message": "hello"}],
        config={"server": {"port": 8484}},
        started_at=started_at,
        extra={"generation": 3},
    )
    assert path.parent == state_dir / "diagnostics"
    assert path.name.startswith("bundle-")
    assert path.name.endswith("-force-exit.json")
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert stat.S_IMODE(path.parent.stat().st_mode) == 0o700
    content = bundle(path)
    assert content["pid"] == os.getpid()
    assert content["gatewayd_version"] == __version__
    assert content["reason"] == "force exit"
    assert 12.0 <= content["uptime_seconds"] < 60
    assert content["config"] == {"server": {"port": 8484}}
    assert content["extra"] == {"generation": 3}
    assert content["events"] == [{"time": "t", "level": "INFO", "logger": "x", "message": "hello"}]
    recorded = content["error"]
    assert recorded["type"] == "builtins.RuntimeError"
    assert recorded["message"] == "generation 3 did not start"
    assert "in fail_deep" in recorded["traceback"]
    process = content["process"]
    assert process["rss_bytes"] > 0
    assert process["num_threads"] >= 1
    assert process["num_fds"] > 0
    assert isinstance(process["connections"], int)
    hostname = socket.gethostname()
    assert len(str(content["hostname_sha256"])) == 16
    assert hostname not in path.read_text()


def test_a_string_or_no_error_is_recorded_as_given(tmp_path: Path) -> None:
    text = write_bundle(tmp_path, reason="x", error="child exited 1", events=[], config=None, started_at=0.0)
    assert bundle(text)["error"] == {"type": None, "message": "child exited 1", "traceback": None}
    none = write_bundle(tmp_path, reason="x", error=None, events=[], config=None, started_at=0.0)
    assert bundle(none)["error"] is None
    assert bundle(none)["config"] is None


SECRETS = (
    "xyz",
    "abc.def-123_456",
    "sk-proj-ABCdef123456",
    "supersecret",
    "hunter2",
    "zzz-key",
    "dGVzdDpwYXNz",
)


def test_secrets_in_events_errors_and_extra_are_scrubbed(tmp_path: Path) -> None:
    events: list[dict[str, object]] = [
        {"message": "upstream call with Authorization: Bearer xyz failed"},
        {"message": "headers {'authorization': 'Bearer abc.def-123_456'}"},
        {"message": "using key sk-proj-ABCdef123456 for openai"},
        {"message": "GET /v1/models?api_key=supersecret&limit=5"},
        {"message": "proxying to https://admin:hunter2@models.internal/v1"},
        {"message": '{"api_key": "zzz-key", "max_tokens": 100}'},
        {"message": "Authorization: Basic dGVzdDpwYXNz"},
    ]
    path = write_bundle(
        tmp_path,
        reason="restart failed",
        error=ValueError("backend rejected key sk-proj-ABCdef123456"),
        events=events,
        config={"backends": [{"name": "openai", "api_key": "zzz-key"}]},
        started_at=0.0,
        extra={"headers": {"Authorization": "Bearer xyz"}},
    )
    text = path.read_text()
    for secret in SECRETS:
        assert secret not in text
    content = bundle(path)
    messages = [event["message"] for event in content["events"]]
    assert messages[0] == f"upstream call with Authorization: Bearer {REDACTED} failed"
    assert messages[2] == f"using key sk-{REDACTED} for openai"
    assert messages[3] == f"GET /v1/models?api_key={REDACTED}&limit=5"
    assert messages[4] == f"proxying to https://admin:{REDACTED}@models.internal/v1"
    assert messages[5] == f'{{"api_key": "{REDACTED}", "max_tokens": 100}}'
    assert content["config"] == {"backends": [{"name": "openai", "api_key": REDACTED}]}
    assert content["extra"] == {"headers": {"Authorization": REDACTED}}


def test_scrub_leaves_ordinary_text_alone() -> None:
    ordinary = "max_tokens=100 prompt_tokens: 12 basic routing, model=llama3 at http://127.0.0.1:8080/v1"
    assert scrub(ordinary) == ordinary
    assert scrub({"token_count": 5, "api_key": ""}) == {"token_count": 5, "api_key": ""}


def test_only_the_newest_bundles_are_kept(tmp_path: Path) -> None:
    paths = [
        write_bundle(tmp_path, reason=f"r{n}", error=None, events=[], config=None, started_at=0.0)
        for n in range(BUNDLES_KEPT + 3)
    ]
    kept = sorted((tmp_path / "diagnostics").iterdir())
    assert kept == sorted(paths[3:])
    assert len(kept) == BUNDLES_KEPT
