"""Two real gatewayd processes behind real nginx (tests/support/nginx.py), sharing one SQLite store:
nginx spreads requests over both (each answer names its instance), a key revoked through one instance is
refused by the other within a second, and requests keep being answered while one instance is down."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from tests.support.fake_backend import spawned_fake_backend
from tests.support.nginx import Fleet, running_fleet
from tests.support.process import wait_for

pytestmark = pytest.mark.slow

MODEL = "m"
CHAT = {"model": MODEL, "messages": [{"role": "user", "content": "hello"}], "stream": False}
ADMIN = "admin-token-for-the-fleet-tests"
HEADER = "X-Gatewayd-Instance"
#: the contract: a key revoked on one instance is refused by every other within this long
KEY_PROPAGATION_SECONDS = 1.0


@pytest.fixture
def upstream() -> Iterator[str]:
    with spawned_fake_backend(models=(MODEL,)) as (_, url):
        yield url


def write_config(path: Path, upstream: str, name: str) -> Path:
    path.write_text(
        f"server:\n  instance_name: {name}\n"
        f"auth:\n  mode: keys\n  admin_token: {ADMIN}\n"
        "fleet:\n  heartbeat_interval_seconds: 0.2\n"
        f"backends:\n  - id: b\n    url: {upstream}\n    models: [{MODEL}]\n"
    )
    return path


@pytest.fixture
def fleet(tmp_path: Path, upstream: str) -> Iterator[Fleet]:
    configs = [write_config(tmp_path / f"{name}.yaml", upstream, name) for name in ("gw-a", "gw-b")]
    with running_fleet(tmp_path, configs) as running:
        yield running


def admin(method: str, url: str, body: object = None) -> httpx.Response:
    return httpx.request(
        method, url, json=body, headers={"Authorization": f"Bearer {ADMIN}"}, timeout=30
    )  # fmt: skip


def chat(url: str, key: str) -> httpx.Response:
    return httpx.post(url, json=CHAT, headers={"Authorization": f"Bearer {key}"}, timeout=30)


def test_nginx_spreads_requests_over_both_instances(fleet: Fleet) -> None:
    created = admin("POST", fleet.url("/admin/keys"), {"name": "spread"})
    assert created.status_code == 201, created.text
    key = created.json()["key"]
    wait_for(
        lambda: all(chat(gw.url("/v1/chat/completions"), key).status_code == 200 for gw in fleet.instances),
        timeout=10,
        what="the new key to be known by both instances",
    )
    seen = {chat(fleet.url("/v1/chat/completions"), key).headers[HEADER] for _ in range(10)}
    assert seen == {"gw-a", "gw-b"}
    rows = admin("GET", fleet.url("/status")).json()["fleet"]
    assert {row["name"] for row in rows} == {"gw-a", "gw-b"}


def test_a_key_revoked_on_one_instance_is_refused_by_the_other_within_a_second(fleet: Fleet) -> None:
    a, b = fleet.instances
    created = admin("POST", a.url("/admin/keys"), {"name": "leaver"})
    key, key_id = created.json()["key"], created.json()["id"]
    wait_for(lambda: chat(b.url("/v1/chat/completions"), key).status_code == 200, timeout=10,
             what="the key created on a to be honoured by b")  # fmt: skip
    revoked = admin("DELETE", a.url(f"/admin/keys/{key_id}"))
    assert revoked.status_code == 200, revoked.text
    assert chat(a.url("/v1/chat/completions"), key).status_code == 401  # at once where it was revoked
    # the contract's bound, with room for a machine whose cores are busy
    wait_for(lambda: chat(b.url("/v1/chat/completions"), key).status_code == 401,
             timeout=KEY_PROPAGATION_SECONDS * 3, what="b to refuse the revoked key")  # fmt: skip
    for _ in range(4):  # through nginx, whichever instance answers
        assert chat(fleet.url("/v1/chat/completions"), key).status_code == 401


def test_requests_are_answered_while_one_instance_is_down(fleet: Fleet) -> None:
    a, b = fleet.instances
    created = admin("POST", a.url("/admin/keys"), {"name": "steady"})
    key = created.json()["key"]
    wait_for(lambda: chat(b.url("/v1/chat/completions"), key).status_code == 200, timeout=10,
             what="the key to be honoured by b")  # fmt: skip
    a.kill_all()  # kill -9 of its whole process group
    answers = [chat(fleet.url("/v1/chat/completions"), key) for _ in range(6)]
    assert [r.status_code for r in answers] == [200] * 6, [r.text for r in answers]
    assert {r.headers[HEADER] for r in answers} == {"gw-b"}
    assert json.loads(answers[0].text)["choices"]
