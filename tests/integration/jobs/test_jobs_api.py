"""Jobs through the real gateway (one generation in process, a real SQLite store in tmp_path, a real fake
model server, real HTTP): the contract of /v1/jobs, ownership by key, cancellation, retries."""

from __future__ import annotations

import json
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import httpx
import pytest

from gatewayd.config import AuthMode, AuthSettings, Backend, BackendKind, Config, JobSettings, ServerSettings
from tests.support.fake_backend import FakeBackend, running_fake_backend
from tests.support.gateway import RunningGateway, running_gateway
from tests.support.process import wait_for

MODEL = "m"
CHAT = {"model": MODEL, "messages": [{"role": "user", "content": "hello"}]}
ADMIN = "admin-token-for-tests"
FAST_JOBS = JobSettings(poll_interval_seconds=0.05, retry_base_seconds=0.05, lease_seconds=3.0)


@contextmanager
def gateway(
    tmp_path: Path,
    fake: FakeBackend,
    *,
    mode: AuthMode = AuthMode.OFF,
    jobs: JobSettings = FAST_JOBS,
    **server: Any,
) -> Iterator[RunningGateway]:
    config = Config(
        auth=AuthSettings(mode=mode, admin_token=ADMIN),
        jobs=jobs,
        server=ServerSettings(**server),
        backends=(Backend(id="b", url=fake.url, kind=BackendKind.OPENAI, models=(MODEL,)),),
    )
    with running_gateway(config, state_dir=tmp_path / "state") as gw:
        yield gw


def submit(gw: RunningGateway, body: dict[str, Any], key: str | None = None) -> httpx.Response:
    headers = {"Authorization": f"Bearer {key}"} if key else {}
    return httpx.post(gw.url + "/v1/jobs", json=body, headers=headers, timeout=30)


def job(gw: RunningGateway, job_id: str, key: str | None = None) -> httpx.Response:
    headers = {"Authorization": f"Bearer {key}"} if key else {}
    return httpx.get(f"{gw.url}/v1/jobs/{job_id}", headers=headers, timeout=30)


def finished(gw: RunningGateway, job_id: str, key: str | None = None) -> dict[str, Any]:
    def done() -> dict[str, Any] | None:
        shown = job(gw, job_id, key).json()
        return shown if shown["state"] in ("succeeded", "failed", "cancelled") else None

    return dict(wait_for(done, timeout=30, what=f"job {job_id} to finish"))


def test_a_job_runs_through_the_inference_path_and_keeps_its_result(tmp_path: Path) -> None:
    with running_fake_backend(models=(MODEL,)) as fake, gateway(tmp_path, fake) as gw:
        response = submit(gw, {"endpoint": "/v1/chat/completions", "request": {**CHAT, "stream": True}})
        assert response.status_code == 202, response.text
        created = response.json()
        assert created["state"] == "queued"
        assert created["id"].startswith("job_")
        done = finished(gw, created["id"])
        assert done["state"] == "succeeded"
        assert done["attempts"] == 1
        assert done["result"]["object"] == "chat.completion"  # stream: true runs as a whole answer
        assert done["result"]["choices"][0]["message"]["content"]
        assert done["started_at"] >= done["created_at"]
        assert done["finished_at"] >= done["started_at"]
        metrics = wait_for(
            lambda: (
                (text := httpx.get(gw.url + "/metrics", timeout=10).text)
                and 'gatewayd_jobs{state="succeeded"} 1.0' in text
                and text
            ),
            timeout=30,
            what="the job counts in /metrics",
        )
        assert "gatewayd_job_queue_seconds_count 1.0" in metrics
        ollama = submit(gw, {"endpoint": "/api/chat", "request": CHAT})
        assert ollama.status_code == 202
        assert finished(gw, ollama.json()["id"])["result"]["message"]["content"]


def test_bad_submissions_are_refused_at_once(tmp_path: Path) -> None:
    with running_fake_backend(models=(MODEL,)) as fake, gateway(tmp_path, fake, max_body_bytes=4096) as gw:
        unknown_endpoint = submit(gw, {"endpoint": "/v1/nothing", "request": CHAT})
        assert unknown_endpoint.status_code == 400
        assert unknown_endpoint.json()["error"]["param"] == "endpoint"
        unknown_model = submit(gw, {"endpoint": "/v1/chat/completions", "request": {**CHAT, "model": "nope"}})
        assert unknown_model.status_code == 404
        assert "nope" in unknown_model.json()["error"]["message"]
        big = {**CHAT, "messages": [{"role": "user", "content": "x" * 8192}]}
        too_large = submit(gw, {"endpoint": "/v1/chat/completions", "request": big})
        assert too_large.status_code == 413
        assert "error" in too_large.json()
        assert httpx.get(gw.url + "/v1/jobs", timeout=10).json()["data"] == []


def test_an_idempotency_key_returns_the_same_job_and_refuses_another_body(tmp_path: Path) -> None:
    with running_fake_backend(models=(MODEL,)) as fake, gateway(tmp_path, fake) as gw:
        body = {"endpoint": "/v1/chat/completions", "request": CHAT, "idempotency_key": "once"}
        first = submit(gw, body)
        again = submit(gw, body)
        assert first.status_code == 202
        assert again.status_code == 200
        assert again.json()["id"] == first.json()["id"]
        other = submit(gw, {**body, "request": {**CHAT, "temperature": 0.5}})
        assert other.status_code == 409
        assert other.json()["error"]["code"] == "idempotency_conflict"
        listed = httpx.get(gw.url + "/v1/jobs", timeout=10).json()
        assert [j["id"] for j in listed["data"]] == [first.json()["id"]]


def test_listing_is_newest_first_filtered_and_paginated(tmp_path: Path) -> None:
    with running_fake_backend(models=(MODEL,)) as fake, gateway(tmp_path, fake) as gw:
        ids = [
            submit(gw, {"endpoint": "/v1/chat/completions", "request": CHAT}).json()["id"] for _ in range(5)
        ]
        for job_id in ids:
            finished(gw, job_id)
        page = httpx.get(gw.url + "/v1/jobs", params={"limit": 2}, timeout=10).json()
        assert page["object"] == "list"
        assert [j["id"] for j in page["data"]] == ids[::-1][:2]
        assert page["has_more"] is True
        rest = httpx.get(
            gw.url + "/v1/jobs", params={"limit": 10, "after": page["last_id"]}, timeout=10
        ).json()
        assert [j["id"] for j in rest["data"]] == ids[::-1][2:]
        assert rest["has_more"] is False
        assert (
            len(httpx.get(gw.url + "/v1/jobs", params={"state": "succeeded"}, timeout=10).json()["data"]) == 5
        )
        assert httpx.get(gw.url + "/v1/jobs", params={"state": "queued"}, timeout=10).json()["data"] == []
        assert httpx.get(gw.url + "/v1/jobs", params={"model": "other"}, timeout=10).json()["data"] == []
        assert httpx.get(gw.url + "/v1/jobs", params={"state": "bogus"}, timeout=10).status_code == 400


def test_a_4xx_fails_at_once_and_a_5xx_is_retried(tmp_path: Path) -> None:
    with running_fake_backend(models=(MODEL,)) as fake, gateway(tmp_path, fake) as gw:
        fake.set(fail_status=400)
        failed = finished(gw, submit(gw, {"endpoint": "/v1/chat/completions", "request": CHAT}).json()["id"])
        assert failed["state"] == "failed"
        assert failed["attempts"] == 1
        assert failed["error"]["status"] == 400
        fake.set(fail_status=500, fail_times=2)
        retried = finished(gw, submit(gw, {"endpoint": "/v1/chat/completions", "request": CHAT}).json()["id"])
        assert retried["state"] == "succeeded"
        assert retried["attempts"] == 3
        fake.set(fail_status=503, fail_times=None)
        gave_up = finished(gw, submit(gw, {"endpoint": "/v1/chat/completions", "request": CHAT}).json()["id"])
        assert gave_up["state"] == "failed"
        assert gave_up["attempts"] == FAST_JOBS.max_attempts


def test_cancelling_a_running_job_frees_its_backend_slot(tmp_path: Path) -> None:
    with running_fake_backend(models=(MODEL,)) as fake, gateway(tmp_path, fake) as gw:
        fake.set(hang=True)
        job_id = submit(gw, {"endpoint": "/v1/chat/completions", "request": {**CHAT, "stream": True}}).json()[
            "id"
        ]
        wait_for(lambda: fake.stats().in_flight == 1, timeout=30, what="the job's request upstream")
        assert job(gw, job_id).json()["state"] == "running"
        cancelled = httpx.delete(f"{gw.url}/v1/jobs/{job_id}", timeout=60)
        assert cancelled.status_code == 200
        assert cancelled.json()["state"] == "cancelled"
        wait_for(lambda: fake.stats().in_flight == 0, timeout=30, what="the upstream request to end")
        runtime = gw.generation.pool.runtimes["b"]
        assert gw.call(lambda: runtime.admission.in_flight) == 0
        queued = submit(gw, {"endpoint": "/v1/chat/completions", "request": CHAT}).json()["id"]
        assert httpx.delete(f"{gw.url}/v1/jobs/{queued}", timeout=60).json()["state"] in (
            "cancelled",
            "running",
        )


def test_events_stream_every_state_and_end_after_the_terminal_one(tmp_path: Path) -> None:
    with running_fake_backend(models=(MODEL,)) as fake, gateway(tmp_path, fake) as gw:
        fake.set(hang=True)
        job_id = submit(gw, {"endpoint": "/v1/chat/completions", "request": CHAT}).json()["id"]
        wait_for(lambda: fake.stats().in_flight == 1, timeout=30, what="the job to run")
        states: list[str] = []
        with httpx.stream("GET", f"{gw.url}/v1/jobs/{job_id}/events", timeout=60) as events:
            assert events.headers["content-type"].startswith("text/event-stream")
            for line in events.iter_lines():
                if line.startswith("event:"):
                    assert line == "event: state"
                elif line.startswith("data:"):
                    states.append(json.loads(line[5:])["state"])
                    if len(states) == 1:
                        fake.set(hang=False)
        assert states[0] == "running"
        assert states[-1] == "succeeded"


def test_with_keys_a_job_belongs_to_its_key(tmp_path: Path) -> None:
    with running_fake_backend(models=(MODEL,)) as fake, gateway(tmp_path, fake, mode=AuthMode.KEYS) as gw:
        admin = {"Authorization": f"Bearer {ADMIN}"}
        keys = [
            httpx.post(gw.url + "/admin/keys", json={"name": name}, headers=admin, timeout=10).json()["key"]
            for name in ("alice", "bob")
        ]
        alice, bob = keys
        assert submit(gw, {"endpoint": "/v1/chat/completions", "request": CHAT}).status_code == 401
        job_id = submit(gw, {"endpoint": "/v1/chat/completions", "request": CHAT}, alice).json()["id"]
        assert finished(gw, job_id, alice)["state"] == "succeeded"
        assert job(gw, job_id, bob).status_code == 404
        assert (
            httpx.delete(f"{gw.url}/v1/jobs/{job_id}", headers={"Authorization": f"Bearer {bob}"}).status_code
            == 404
        )
        assert httpx.get(f"{gw.url}/v1/jobs", headers={"Authorization": f"Bearer {bob}"}).json()["data"] == []
        assert [
            j["id"]
            for j in httpx.get(f"{gw.url}/v1/jobs", headers={"Authorization": f"Bearer {alice}"}).json()[
                "data"
            ]
        ] == [job_id]
        assert job(gw, job_id, ADMIN).status_code == 200
        limited = httpx.post(gw.url + "/admin/keys", json={"name": "other-only", "models": ["other"]},
                             headers=admin, timeout=10).json()["key"]  # fmt: skip
        refused = submit(gw, {"endpoint": "/v1/chat/completions", "request": CHAT}, limited)
        assert refused.status_code == 403  # at once, not a failed job later
        assert refused.json()["error"]["code"] == "model_not_allowed"
        # the same idempotency key under two keys is two jobs
        body = {"endpoint": "/v1/chat/completions", "request": CHAT, "idempotency_key": "k"}
        assert submit(gw, body, alice).json()["id"] != submit(gw, body, bob).json()["id"]


def test_a_webhook_on_loopback_is_refused_by_default(tmp_path: Path) -> None:
    with running_fake_backend(models=(MODEL,)) as fake, gateway(tmp_path, fake) as gw:
        hook = {"url": "http://127.0.0.1:9/hook", "secret": "s"}
        refused = submit(gw, {"endpoint": "/v1/chat/completions", "request": CHAT, "webhook": hook})
        assert refused.status_code == 400
        assert "allow_private_webhooks" in refused.json()["error"]["message"]
        bad_scheme = submit(gw, {"endpoint": "/v1/chat/completions", "request": CHAT,
                                 "webhook": {"url": "file:///etc/passwd", "secret": "s"}})  # fmt: skip
        assert bad_scheme.status_code == 400


pytestmark = pytest.mark.timeout(120)
