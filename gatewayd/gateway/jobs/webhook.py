"""Webhook deliveries: a POST of the job on every terminal state, signed, retried with backoff.

The body is the job as GET /v1/jobs/{id} shows it; the header ``X-Gatewayd-Signature: t=<unix seconds>,
v1=<hex HMAC-SHA256(secret, "<t>.<body>")>`` lets the receiver check it came from gatewayd and is fresh.
A delivery that gets no 2xx is tried again 1 s later, then 2 s, 4 s... at most ``jobs.webhook_max_attempts``
times; each try is recorded on the job. Deliveries run on their own tasks: the worker never waits for them.
The URL must be http(s) and, unless ``jobs.allow_private_webhooks``, not resolve to a loopback, private,
link-local or otherwise internal address (checked at submission and again before each delivery, since a
name can resolve elsewhere later).
"""

from __future__ import annotations

import hashlib
import hmac
import ipaddress
import json
import logging
import socket
import time
from typing import TYPE_CHECKING
from urllib.parse import urlsplit

import anyio
import anyio.to_thread

from gatewayd.config.schema import Timeouts
from gatewayd.errors import RequestError
from gatewayd.gateway.backends.transport import Transport
from gatewayd.gateway.jobs.model import Delivery, Job

if TYPE_CHECKING:
    from gatewayd.gateway.jobs.worker import JobRunner

log = logging.getLogger("gatewayd.jobs")

SIGNATURE_HEADER = "X-Gatewayd-Signature"
#: the first retry waits this long, each next one twice as long
FIRST_RETRY_SECONDS = 1.0
#: deliveries in flight at once
MAX_CONCURRENT_DELIVERIES = 16


class WebhookRefused(ValueError):
    """A webhook URL that may not be used; the message says why and how to allow it."""


def signature(secret: str, timestamp: int, body: bytes) -> str:
    """The header value for ``body`` sent at ``timestamp``."""
    mac = hmac.new(secret.encode(), f"{timestamp}.".encode() + body, hashlib.sha256).hexdigest()
    return f"t={timestamp},v1={mac}"


def check_url(url: str, *, allow_private: bool) -> None:
    """Raise WebhookRefused for a URL that is not http(s), has no host, or (unless ``allow_private``)
    names or resolves to an internal address. Blocking (name resolution): call in a worker thread."""
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise WebhookRefused("the webhook URL must be an http:// or https:// URL with a host")
    if allow_private:
        return
    try:
        infos = socket.getaddrinfo(parts.hostname, parts.port or 80, proto=socket.IPPROTO_TCP)
    except (OSError, UnicodeError) as error:
        raise WebhookRefused(f"the webhook host {parts.hostname} cannot be resolved: {error}") from None
    for info in infos:
        address = ipaddress.ip_address(str(info[4][0]).split("%")[0])
        if not address.is_global or address.is_multicast:
            raise WebhookRefused(
                f"the webhook URL points at {address}, an address of this machine or its private network; "
                "set jobs.allow_private_webhooks: true to allow it"
            )


class WebhookSender:
    """Delivers the webhooks of finished jobs for one process (a task of the runner's)."""

    def __init__(self, runner: JobRunner) -> None:
        self._runner = runner
        self._wake = anyio.Event()
        self._in_flight: set[str] = set()
        self.delivered_total = 0
        self.failed_total = 0

    def wake(self) -> None:
        self._wake.set()

    async def run(self) -> None:
        runner = self._runner
        limiter = anyio.CapacityLimiter(MAX_CONCURRENT_DELIVERIES)
        # the gateway's own upstream client: its bounds, and no second HTTP stack in a serving process
        async with Transport() as client, anyio.create_task_group() as tg:
            while True:
                try:
                    due = await anyio.to_thread.run_sync(
                        runner.store.webhooks_due, time.time(), MAX_CONCURRENT_DELIVERIES * 2
                    )
                except Exception as error:  # a store problem: tried again at the next poll
                    log.warning("jobs: cannot read due webhooks (%s)", error)
                    due = []
                for job in due:
                    if job.id not in self._in_flight:
                        self._in_flight.add(job.id)
                        tg.start_soon(self._deliver, client, limiter, job)
                with anyio.move_on_after(min(FIRST_RETRY_SECONDS, runner.settings.poll_interval_seconds)):
                    await self._wake.wait()
                self._wake = anyio.Event()

    async def _deliver(self, client: Transport, limiter: anyio.CapacityLimiter, job: Job) -> None:
        runner = self._runner
        settings = runner.settings
        try:
            async with limiter:
                assert job.webhook_url is not None
                body = json.dumps(job.public()).encode()
                now = time.time()
                status: int | None = None
                error: str | None = None
                try:
                    await anyio.to_thread.run_sync(
                        lambda: check_url(
                            job.webhook_url or "", allow_private=settings.allow_private_webhooks
                        )
                    )
                    bound = settings.webhook_timeout_seconds
                    with anyio.fail_after(bound):
                        response = await client.open(
                            "POST",
                            job.webhook_url,
                            backend="webhook receiver",
                            timeouts=Timeouts(
                                connect_seconds=bound, first_byte_seconds=bound, idle_seconds=bound
                            ),
                            headers={
                                "Content-Type": "application/json",
                                SIGNATURE_HEADER: signature(job.webhook_secret or "", int(now), body),
                            },
                            body=body,
                        )
                        try:
                            await response.read()
                        finally:
                            response.close()
                    status = response.status
                    if not 200 <= status < 300:
                        error = f"the receiver answered {status}"
                except WebhookRefused as refused:
                    error = str(refused)
                except TimeoutError:
                    error = f"the receiver did not answer within {settings.webhook_timeout_seconds:g} s"
                except RequestError as failure:  # refused, unreachable, not HTTP, or the gateway stopping
                    error = f"{type(failure).__name__}: {failure}" if str(failure) else type(failure).__name__
                delivered = error is None
                tries = len(job.deliveries) + 1
                next_at = None
                if not delivered and tries < settings.webhook_max_attempts:
                    next_at = time.time() + FIRST_RETRY_SECONDS * 2 ** (tries - 1)
                if delivered:
                    self.delivered_total += 1
                elif next_at is None:
                    self.failed_total += 1
                    log.warning("jobs: webhook of %s not delivered after %d tries: %s", job.id, tries, error)
                await anyio.to_thread.run_sync(
                    runner.store.record_delivery, job.id, Delivery(now, status, error), delivered, next_at
                )
                runner.changed()
        except Exception:
            log.exception("jobs: webhook delivery of %s failed", job.id)
        finally:
            self._in_flight.discard(job.id)
