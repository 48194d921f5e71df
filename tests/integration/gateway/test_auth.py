"""Keys, limits and the usage record through the real gateway, with a real SQLite store in tmp_path and the
official clients: who may call, how limits answer (exact counts under concurrency), and that a locked
store never stops requests."""

from __future__ import annotations

import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from pathlib import Path

import httpx
import ollama
import openai
import pytest
from openai.types.chat import ChatCompletionMessageParam

from gatewayd.config import AuthMode, AuthSettings, Backend, BackendKind, Config, UsageSettings
from gatewayd.gateway.guard import DB_FILE
from gatewayd.store.db import Store
from tests.support.fake_backend import FakeBackend
from tests.support.fixtures import FakeBackendFactory
from tests.support.gateway import RunningGateway, running_gateway

MODEL = "m"
MESSAGES: list[ChatCompletionMessageParam] = [{"role": "user", "content": "count these words"}]
CHAT = {"model": MODEL, "messages": MESSAGES, "stream": False}
ADMIN = "admin-token-for-tests"


@contextmanager
def gateway(tmp_path: Path, fake: FakeBackend, *, mode: AuthMode = AuthMode.KEYS) -> Iterator[RunningGateway]:
    config = Config(
        auth=AuthSettings(mode=mode, admin_token=ADMIN),
        usage=UsageSettings(flush_interval_seconds=0.1),
        backends=(Backend(id="b", url=fake.url, kind=BackendKind.OPENAI, models=(MODEL, "other")),),
    )
    with running_gateway(config, state_dir=tmp_path / "state") as gw:
        yield gw


def create_key(gw: RunningGateway, **fields: object) -> tuple[str, str]:
    """(key id, key) through the admin API."""
    response = httpx.post(
        gw.url + "/admin/keys", json={"name": "test", **fields}, headers={"Authorization": f"Bearer {ADMIN}"}
    )
    assert response.status_code == 201, response.text
    body = response.json()
    return str(body["id"]), str(body["key"])


def chat(gw: RunningGateway, key: str | None, path: str = "/v1/chat/completions") -> httpx.Response:
    headers = {"Authorization": f"Bearer {key}"} if key else {}
    return httpx.post(gw.url + path, json=CHAT, headers=headers, timeout=30)


def test_without_a_valid_key_requests_are_refused_in_their_dialect(
    tmp_path: Path, fake_backend_factory: FakeBackendFactory
) -> None:
    fake = fake_backend_factory(models=(MODEL,))
    with gateway(tmp_path, fake) as gw:
        _, key = create_key(gw)
        missing = chat(gw, None)
        assert missing.status_code == 401
        assert missing.json()["error"]["code"] == "invalid_api_key"
        wrong = chat(gw, "gwd-not-a-key")
        assert wrong.status_code == 401
        assert "gwd-not-a-key" not in wrong.text
        ollama_side = chat(gw, None, "/api/chat")
        assert ollama_side.status_code == 401
        assert isinstance(ollama_side.json()["error"], str)
        assert httpx.get(gw.url + "/healthz").status_code == 200  # stays public
        assert httpx.get(gw.url + "/v1/models").status_code == 401
        assert httpx.get(gw.url + "/v1/models", headers={"Authorization": f"Bearer {key}"}).status_code == 200
        assert httpx.get(gw.url + "/metrics", headers={"Authorization": f"Bearer {ADMIN}"}).status_code == 200
        for operator_path in ("/metrics", "/status", "/status/activity"):  # every key's use: admin only
            as_key = httpx.get(gw.url + operator_path, headers={"Authorization": f"Bearer {key}"})
            assert as_key.status_code == 403
        assert fake.stats().count("/v1/chat/completions") == 0  # the refused requests never reached it
        assert chat(gw, key).status_code == 200
        assert fake.stats().count("/v1/chat/completions") == 1


def test_the_official_clients_use_a_key_and_a_revoked_key_is_refused_at_once(
    tmp_path: Path, fake_backend_factory: FakeBackendFactory
) -> None:
    with gateway(tmp_path, fake_backend_factory(models=(MODEL,))) as gw:
        key_id, key = create_key(gw)
        with openai.OpenAI(base_url=gw.openai_url, api_key=key, max_retries=0) as client:
            assert client.chat.completions.create(model=MODEL, messages=MESSAGES).choices[0].message.content
        with ollama.Client(host=gw.url, headers={"Authorization": f"Bearer {key}"}) as other:
            assert other.chat(model=MODEL, messages=MESSAGES, stream=False).message.content
        revoked = httpx.delete(gw.url + f"/admin/keys/{key_id}", headers={"Authorization": f"Bearer {ADMIN}"})
        assert revoked.status_code == 200
        assert revoked.json()["active"] is False
        assert chat(gw, key).status_code == 401


def test_the_admin_api_needs_the_admin_token_and_a_same_origin_request(
    tmp_path: Path, fake_backend_factory: FakeBackendFactory
) -> None:
    with gateway(tmp_path, fake_backend_factory(models=(MODEL,))) as gw:
        _, key = create_key(gw)
        assert httpx.get(gw.url + "/admin/keys").status_code == 403
        as_key = httpx.get(gw.url + "/admin/keys", headers={"Authorization": f"Bearer {key}"})
        assert as_key.status_code == 403  # a key is not the admin token
        admin = {"Authorization": f"Bearer {ADMIN}"}
        listed = httpx.get(gw.url + "/admin/keys", headers=admin).json()
        assert [row["name"] for row in listed] == ["test"]
        assert key not in str(listed)
        cross_site = httpx.post(
            gw.url + "/admin/keys", json={"name": "x"}, headers={**admin, "Origin": "http://evil.example"}
        )
        assert cross_site.status_code == 403
        bad = httpx.post(gw.url + "/admin/keys", json={"name": "x", "rpm": 0}, headers=admin)
        assert bad.status_code == 400
        assert "rpm" in bad.text


def test_requests_per_minute_are_enforced_exactly_under_concurrent_load(
    tmp_path: Path, fake_backend_factory: FakeBackendFactory
) -> None:
    with gateway(tmp_path, fake_backend_factory(models=(MODEL,))) as gw:
        _, key = create_key(gw, rpm=5)
        with ThreadPoolExecutor(12) as pool:
            responses = list(pool.map(lambda _: chat(gw, key), range(12)))
        statuses = sorted(r.status_code for r in responses)
        assert statuses == [200] * 5 + [429] * 7
        refused = next(r for r in responses if r.status_code == 429)
        assert int(refused.headers["retry-after"]) >= 1
        assert refused.headers["x-ratelimit-limit-requests"] == "5"
        assert refused.headers["x-ratelimit-remaining-requests"] == "0"
        assert refused.json()["error"]["code"] == "rate_limit_exceeded"
        served = next(r for r in responses if r.status_code == 200)
        assert served.headers["x-ratelimit-limit-requests"] == "5"


def test_concurrent_requests_per_key_are_capped(
    tmp_path: Path, fake_backend_factory: FakeBackendFactory
) -> None:
    fake = fake_backend_factory(models=(MODEL,), hang=True)
    with gateway(tmp_path, fake) as gw:
        _, key = create_key(gw, max_concurrency=2)
        held = [threading.Thread(target=chat, args=(gw, key)) for _ in range(2)]
        for thread in held:
            thread.start()
        deadline = time.monotonic() + 10
        while fake.stats().in_flight < 2 and time.monotonic() < deadline:
            time.sleep(0.01)
        third = chat(gw, key)
        assert third.status_code == 429
        assert "already has 2 requests in flight" in third.json()["error"]["message"]
        fake.set(hang=False)
        for thread in held:
            thread.join(30)
        assert chat(gw, key).status_code == 200


def test_a_spent_budget_and_a_model_not_allowed_are_refused_in_both_dialects(
    tmp_path: Path, fake_backend_factory: FakeBackendFactory
) -> None:
    with gateway(tmp_path, fake_backend_factory(models=(MODEL, "other"))) as gw:
        _, key = create_key(gw, budget_tokens=60, models=[MODEL])
        first = chat(gw, key)
        assert first.status_code == 200
        used = first.json()["usage"]["total_tokens"]
        assert used > 0
        while True:  # spend it
            response = chat(gw, key)
            if response.status_code != 200:
                break
        assert response.status_code == 402
        assert response.json()["error"]["code"] == "budget_exceeded"
        ollama_side = chat(gw, key, "/api/chat")
        assert ollama_side.status_code == 402
        assert "budget" in ollama_side.json()["error"]
        other = httpx.post(
            gw.openai_url + "/chat/completions",
            json={**CHAT, "model": "other"},
            headers={"Authorization": f"Bearer {key}"},
        )
        assert other.status_code == 403
        assert other.json()["error"]["code"] == "model_not_allowed"


def usage_rows(tmp_path: Path) -> int:
    store = Store.open(tmp_path / "state" / DB_FILE, busy_timeout_seconds=5)
    try:
        return sum(row.requests for row in store.usage_summary(by="model"))
    finally:
        store.close()


def test_a_locked_store_never_stops_requests_and_their_usage_is_written_later(
    tmp_path: Path, fake_backend_factory: FakeBackendFactory
) -> None:
    with gateway(tmp_path, fake_backend_factory(models=(MODEL,)), mode=AuthMode.OFF) as gw:
        assert chat(gw, None).status_code == 200
        deadline = time.monotonic() + 10
        while usage_rows(tmp_path) < 1 and time.monotonic() < deadline:
            time.sleep(0.05)
        assert usage_rows(tmp_path) == 1
        with subprocess.Popen(
            [
                sys.executable,
                "-c",
                "import sqlite3, sys; db = sqlite3.connect(sys.argv[1], isolation_level=None); "
                "db.execute('BEGIN EXCLUSIVE'); print('locked', flush=True); sys.stdin.readline()",
                str(tmp_path / "state" / DB_FILE),
            ],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
        ) as holder:
            try:
                assert holder.stdout is not None
                assert holder.stdout.readline().strip() == "locked"
                started = time.monotonic()
                statuses = [chat(gw, None).status_code for _ in range(10)]
                assert statuses == [200] * 10
                assert time.monotonic() - started < 10  # served, not stuck behind the lock
                time.sleep(0.5)
                assert gw.call(lambda: gw.factory.guard.usage.backlog) == 10
            finally:
                assert holder.stdin is not None
                holder.stdin.write("\n")
                holder.stdin.flush()
                holder.wait(10)
        deadline = time.monotonic() + 30
        while usage_rows(tmp_path) < 11 and time.monotonic() < deadline:
            time.sleep(0.1)
        assert usage_rows(tmp_path) == 11


@pytest.mark.parametrize("mode", [AuthMode.OFF, AuthMode.KEYS])
def test_every_request_is_recorded_with_its_key(
    tmp_path: Path, fake_backend_factory: FakeBackendFactory, mode: AuthMode
) -> None:
    with gateway(tmp_path, fake_backend_factory(models=(MODEL,)), mode=mode) as gw:
        key_id, key = create_key(gw)
        assert chat(gw, key).status_code == 200
        assert chat(gw, key, "/api/chat").status_code == 200
        deadline = time.monotonic() + 10
        while usage_rows(tmp_path) < 2 and time.monotonic() < deadline:
            time.sleep(0.05)
    store = Store.open(tmp_path / "state" / DB_FILE)
    try:
        by_key = {row.group: row for row in store.usage_summary(by="key")}
    finally:
        store.close()
    expected = "test" if mode is AuthMode.KEYS else "-"
    assert by_key[expected].requests == 2
    assert by_key[expected].completion_tokens > 0
    assert key_id


def test_streams_without_reported_usage_still_spend_the_budget(
    tmp_path: Path, fake_backend_factory: FakeBackendFactory
) -> None:
    with gateway(tmp_path, fake_backend_factory(models=(MODEL,))) as gw:
        _, key = create_key(gw, budget_tokens=80)
        statuses = []
        with openai.OpenAI(base_url=gw.openai_url, api_key=key, max_retries=0) as client:
            for _ in range(20):
                try:
                    # no stream_options.include_usage: the backend reports no tokens for these
                    list(client.chat.completions.create(model=MODEL, messages=MESSAGES, stream=True))
                    statuses.append(200)
                except openai.APIStatusError as error:
                    statuses.append(error.status_code)
                    break
        assert statuses[-1] == 402
        assert 2 <= len(statuses) < 20


def test_key_refresh_nudges_are_coalesced_and_a_revoke_is_still_seen_at_once(
    tmp_path: Path, fake_backend_factory: FakeBackendFactory
) -> None:
    interval = 2.0
    config = Config(
        auth=AuthSettings(mode=AuthMode.KEYS, admin_token=ADMIN, key_refresh_min_interval_seconds=interval),
        backends=(Backend(id="b", url=fake_backend_factory(models=(MODEL,)).url, models=(MODEL,)),),
    )
    with running_gateway(config, state_dir=tmp_path / "state") as gw:
        key_id, key = create_key(gw)
        guard = gw.factory.guard
        reads_before = gw.call(lambda: guard.key_reads)
        started = time.monotonic()
        with ThreadPoolExecutor(max_workers=40) as pool:
            answers = list(pool.map(lambda _: httpx.post(gw.url + "/keys/refresh", timeout=30), range(40)))
        elapsed = time.monotonic() - started
        assert [answer.status_code for answer in answers] == [200] * 40
        reads = gw.call(lambda: guard.key_reads) - reads_before
        # one re-read now, one shared by every call that arrived meanwhile, one more per interval elapsed
        assert 1 <= reads <= 2 + int(elapsed / interval), (reads, elapsed)
        # another process (the CLI) revokes the key, then nudges: the nudge returns once it is seen
        store = Store.open(tmp_path / "state" / DB_FILE)
        try:
            store.revoke_key(key_id)
        finally:
            store.close()
        assert httpx.post(gw.url + "/keys/refresh", timeout=30).status_code == 200
        assert chat(gw, key).status_code == 401
