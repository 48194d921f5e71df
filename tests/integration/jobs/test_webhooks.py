"""Webhooks of finished jobs, delivered to a real HTTP receiver on loopback that checks every signature."""

from __future__ import annotations

import hashlib
import hmac
import http.server
import json
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import replace
from pathlib import Path
from typing import Any

import httpx

from gatewayd.gateway.jobs.webhook import signature
from tests.integration.jobs.test_jobs_api import CHAT, FAST_JOBS, MODEL, finished, gateway, job, submit
from tests.support.fake_backend import running_fake_backend
from tests.support.process import wait_for

SECRET = "whsec-test"


class Receiver(http.server.ThreadingHTTPServer):
    """Answers 500 to the first ``failures`` deliveries, then 200; keeps every delivery and whether its
    signature was right."""

    def __init__(self, failures: int) -> None:
        super().__init__(("127.0.0.1", 0), _Handler)
        self.failures = failures
        self.lock = threading.Lock()
        self.deliveries: list[tuple[dict[str, Any], bool, int]] = []

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server_address[1]}/hook"


class _Handler(http.server.BaseHTTPRequestHandler):
    server: Receiver

    def do_POST(self) -> None:
        body = self.rfile.read(int(self.headers["Content-Length"]))
        header = self.headers.get("X-Gatewayd-Signature", "")
        fields = dict(part.split("=", 1) for part in header.split(",") if "=" in part)
        expected = hmac.new(
            SECRET.encode(), f"{fields.get('t')}.".encode() + body, hashlib.sha256
        ).hexdigest()
        valid = hmac.compare_digest(fields.get("v1", ""), expected)
        with self.server.lock:
            status = 500 if len(self.server.deliveries) < self.server.failures else 200
            self.server.deliveries.append((json.loads(body), valid, status))
        self.send_response(status)
        self.send_header("Content-Length", "0")
        self.end_headers()

    def log_message(self, format: str, *args: Any) -> None:
        pass


@contextmanager
def receiver(failures: int) -> Iterator[Receiver]:
    server = Receiver(failures)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield server
    finally:
        server.shutdown()
        server.server_close()
        thread.join(10)


def test_the_signature_is_hmac_sha256_of_the_timestamp_and_body() -> None:
    mac = hmac.new(b"k", b"1700000000.{}", hashlib.sha256).hexdigest()
    assert signature("k", 1700000000, b"{}") == f"t=1700000000,v1={mac}"


def test_a_webhook_is_retried_after_two_500s_and_every_delivery_is_signed(tmp_path: Path) -> None:
    jobs = replace(FAST_JOBS, allow_private_webhooks=True)
    with (
        receiver(failures=2) as hook,
        running_fake_backend(models=(MODEL,)) as fake,
        gateway(tmp_path, fake, jobs=jobs) as gw,
    ):
        body = {
            "endpoint": "/v1/chat/completions",
            "request": CHAT,
            "webhook": {"url": hook.url, "secret": SECRET},
        }
        job_id = submit(gw, body).json()["id"]
        assert finished(gw, job_id)["state"] == "succeeded"

        def delivered() -> dict[str, Any] | None:
            shown = job(gw, job_id).json()
            return shown if shown["webhook"]["delivered"] else None

        shown = wait_for(delivered, timeout=60, what="the webhook to be delivered")
        with hook.lock:
            seen = list(hook.deliveries)
        assert [status for _, _, status in seen] == [500, 500, 200]
        assert all(valid for _, valid, _ in seen)
        assert all(sent["id"] == job_id and sent["state"] == "succeeded" for sent, _, _ in seen)
        assert "secret" not in json.dumps(seen[0][0])
        assert [d["status"] for d in shown["webhook"]["deliveries"]] == [500, 500, 200]
        assert shown["webhook"]["deliveries"][0]["error"]
        assert shown["webhook"]["deliveries"][2]["error"] is None


def test_a_cancelled_job_is_delivered_too(tmp_path: Path) -> None:
    jobs = replace(FAST_JOBS, allow_private_webhooks=True)
    with (
        receiver(failures=0) as hook,
        running_fake_backend(models=(MODEL,)) as fake,
        gateway(tmp_path, fake, jobs=jobs) as gw,
    ):
        fake.set(hang=True)
        body = {
            "endpoint": "/v1/chat/completions",
            "request": CHAT,
            "webhook": {"url": hook.url, "secret": SECRET},
        }
        job_id = submit(gw, body).json()["id"]
        wait_for(lambda: fake.stats().in_flight == 1, timeout=30, what="the job to run")
        assert httpx.delete(f"{gw.url}/v1/jobs/{job_id}", timeout=60).json()["state"] == "cancelled"
        wait_for(lambda: job(gw, job_id).json()["webhook"]["delivered"], timeout=30, what="the delivery")
        with hook.lock:
            assert [(sent["state"], valid) for sent, valid, _ in hook.deliveries] == [("cancelled", True)]
