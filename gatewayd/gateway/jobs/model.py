"""The job's lifecycle and its record, as the store keeps it and the API shows it."""

from __future__ import annotations

import enum
import hashlib
import json
import secrets
from dataclasses import dataclass, field
from typing import Any

#: job ids are this followed by 24 hex characters
JOB_ID_PREFIX = "job_"


class JobState(enum.StrEnum):
    """Where a job is. queued -> running -> succeeded | failed; queued | running -> cancelled;
    running -> queued (a retry after a backend failure, a lease lost to a crash)."""

    QUEUED = "queued"  # waiting for capacity (or for its retry's backoff)
    RUNNING = "running"  # claimed by one process under a lease; its request is being served
    SUCCEEDED = "succeeded"  # the endpoint answered 2xx: ``result`` is its JSON answer
    FAILED = "failed"  # a 4xx, or max_attempts backend failures: ``error`` says why
    CANCELLED = "cancelled"  # DELETE /v1/jobs/{id} before it finished

    @property
    def terminal(self) -> bool:
        return self in TERMINAL


TERMINAL = frozenset({JobState.SUCCEEDED, JobState.FAILED, JobState.CANCELLED})


def new_job_id() -> str:
    return JOB_ID_PREFIX + secrets.token_hex(12)


def body_digest(endpoint: str, request: Any) -> str:
    """What an idempotency key is compared by: the endpoint and the request, canonically encoded."""
    canonical = json.dumps([endpoint, request], sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(canonical.encode()).hexdigest()


@dataclass(frozen=True, slots=True)
class Delivery:
    """One webhook POST: when (epoch seconds), the receiver's status (None: no answer) and the error."""

    at: float
    status: int | None
    error: str | None

    def public(self) -> dict[str, Any]:
        return {"at": self.at, "status": self.status, "error": self.error}


@dataclass(frozen=True, slots=True)
class Job:
    """One job. Times are epoch seconds; ``request`` is the endpoint's JSON body as submitted."""

    id: str
    #: the key that submitted it (None with auth off); only that key sees it
    key_id: str | None
    #: the inference path it is sent to, e.g. /v1/chat/completions
    endpoint: str
    model: str
    request: dict[str, Any]
    state: JobState
    #: higher runs first; live requests are not ordered against jobs (they share the admission queues)
    priority: int = 0
    #: times its request was sent (a retry and a run after a crash each count)
    attempts: int = 0
    created_at: float = 0.0
    started_at: float | None = None
    finished_at: float | None = None
    result: Any = None
    error: dict[str, Any] | None = None
    idempotency_key: str | None = None
    webhook_url: str | None = field(default=None)
    webhook_secret: str | None = field(default=None, repr=False)
    webhook_delivered: bool = False
    deliveries: tuple[Delivery, ...] = ()

    def public(self) -> dict[str, Any]:
        """The job as GET /v1/jobs/{id} shows it (and a webhook sends it): never the webhook's secret."""
        shown: dict[str, Any] = {
            "id": self.id,
            "object": "job",
            "endpoint": self.endpoint,
            "model": self.model,
            "state": self.state.value,
            "priority": self.priority,
            "attempts": self.attempts,
            "created_at": self.created_at,
            "started_at": self.started_at,
            "finished_at": self.finished_at,
            "result": self.result,
            "error": self.error,
            "idempotency_key": self.idempotency_key,
            "webhook": None,
        }
        if self.webhook_url is not None:
            shown["webhook"] = {
                "url": self.webhook_url,
                "delivered": self.webhook_delivered,
                "deliveries": [delivery.public() for delivery in self.deliveries],
            }
        return shown
