"""The /v1/jobs routes: submit, read, list, cancel and watch jobs. Errors are OpenAI error objects.

With keys on, a job belongs to the key that submitted it: another key gets 404 for it, as if it did not
exist; the admin token sees and cancels every job."""

from __future__ import annotations

import json
import time
from collections.abc import AsyncIterator, Callable
from typing import Any

import anyio.to_thread
from quart import Blueprint, Response, jsonify, request

from gatewayd.errors import (
    BadRequest,
    HttpError,
    ModelNotAllowed,
    ModelNotFound,
    NotFound,
    RequestError,
    StoreError,
)
from gatewayd.gateway.core.requestbody import parse_json_object
from gatewayd.gateway.dialects.registry import ROUTES
from gatewayd.gateway.guard import Guard
from gatewayd.gateway.inference import dialect_of_path, parse_request
from gatewayd.gateway.jobs.model import Job, JobState, body_digest, new_job_id
from gatewayd.gateway.jobs.store import ANY_KEY, IdempotencyConflict
from gatewayd.gateway.jobs.webhook import WebhookRefused, check_url
from gatewayd.gateway.jobs.worker import JobRunner

#: fields of a submission
SUBMISSION_FIELDS = frozenset({"endpoint", "request", "webhook", "priority", "idempotency_key"})
DEFAULT_PAGE = 20
MAX_PAGE = 100
MAX_IDEMPOTENCY_KEY_CHARS = 256
#: priorities a job may ask for (higher runs first)
PRIORITY_RANGE = range(-100, 101)


def jobs_blueprint(
    runner: JobRunner, guard: Guard, models: Callable[[], set[str]], *, max_json_depth: int
) -> Blueprint:
    """The routes of one generation's app; ``models`` names the models it serves (for the 404 at
    submission); bodies nested deeper than ``max_json_depth`` are refused, as on every endpoint."""
    jobs = Blueprint("jobs", __name__)

    def owner() -> object:
        return request_owner(guard)

    async def owned(job_id: str) -> Job:
        who = owner()
        job = await in_store(lambda: runner.store.get(job_id))
        if job is None or (who is not ANY_KEY and job.key_id != who):
            raise NotFound(f"no job {job_id!r}")
        return job

    @jobs.errorhandler(RequestError)
    async def request_error(error: RequestError) -> Response:
        return error_response(error)

    @jobs.post("/v1/jobs")
    async def submit() -> tuple[Response, int]:
        who = owner()
        raw = await request.get_data(as_text=False)
        assert isinstance(raw, bytes)
        body = parse_json_object(raw, max_json_depth)
        unknown = set(body) - SUBMISSION_FIELDS
        if unknown:
            raise BadRequest(f"unknown field(s): {', '.join(sorted(unknown))}", param=sorted(unknown)[0])
        endpoint = body.get("endpoint")
        api = ROUTES.get(endpoint) if isinstance(endpoint, str) else None
        if api is None:
            known = ", ".join(sorted(ROUTES))
            raise BadRequest(f"unknown endpoint {endpoint!r}: one of {known}", param="endpoint")
        inner = body.get("request")
        if not isinstance(inner, dict):
            raise BadRequest("'request' must be the endpoint's JSON request body", param="request")
        _, model = parse_request(api, json.dumps(inner).encode(), max_json_depth)
        if model not in models():
            raise ModelNotFound(f"model '{model}' is not served by gatewayd", param="model")
        key = guard.key_by_id(who) if isinstance(who, str) else None
        if key is not None and key.models is not None and model not in key.models:
            allowed = ", ".join(key.models) or "none"
            raise ModelNotAllowed(f"key '{key.name}' may not use model '{model}' (it may use: {allowed})")
        priority = body.get("priority", 0)
        if not isinstance(priority, int) or isinstance(priority, bool) or priority not in PRIORITY_RANGE:
            raise BadRequest("'priority' must be a whole number from -100 to 100", param="priority")
        idempotency_key = body.get("idempotency_key")
        if idempotency_key is not None and (
            not isinstance(idempotency_key, str) or not 0 < len(idempotency_key) <= MAX_IDEMPOTENCY_KEY_CHARS
        ):
            raise BadRequest(
                "'idempotency_key' must be a string of 1 to 256 characters", param="idempotency_key"
            )
        url, secret = await _webhook(body.get("webhook"), runner.settings.allow_private_webhooks)
        job = Job(
            id=new_job_id(),
            key_id=who if isinstance(who, str) else None,
            endpoint=api.path,
            model=model,
            request=inner,
            state=JobState.QUEUED,
            priority=priority,
            created_at=time.time(),
            idempotency_key=idempotency_key,
            webhook_url=url,
            webhook_secret=secret,
        )
        try:
            stored, created = await in_store(lambda: runner.store.submit(job, body_digest(api.path, body)))
        except IdempotencyConflict:
            raise HttpError(
                "this idempotency_key was used with a different body: use a new key for a new job",
                status=409,
                code="idempotency_conflict",
            ) from None
        if created:
            runner.wake()
            runner.changed()
        return jsonify(stored.public()), 202 if created else 200

    @jobs.get("/v1/jobs/<job_id>")
    async def show(job_id: str) -> Response:
        return jsonify((await owned(job_id)).public())

    @jobs.get("/v1/jobs")
    async def listing() -> Response:
        who = owner()
        args = request.args
        state = None
        if args.get("state"):
            try:
                state = JobState(args["state"])
            except ValueError:
                known = ", ".join(s.value for s in JobState)
                raise BadRequest(f"unknown state {args['state']!r}: one of {known}", param="state") from None
        try:
            limit = int(args.get("limit", DEFAULT_PAGE))
        except ValueError:
            limit = 0
        if not 1 <= limit <= MAX_PAGE:
            raise BadRequest(f"'limit' must be a whole number from 1 to {MAX_PAGE}", param="limit")
        page = await in_store(
            lambda: runner.store.page(
                key_id=who, state=state, model=args.get("model") or None, limit=limit, after=args.get("after")
            )
        )
        data = [job.public() for job in page.jobs]
        return jsonify(
            {
                "object": "list",
                "data": data,
                "first_id": data[0]["id"] if data else None,
                "last_id": data[-1]["id"] if data else None,
                "has_more": page.has_more,
            }
        )

    @jobs.delete("/v1/jobs/<job_id>")
    async def cancel(job_id: str) -> Response:
        job = await owned(job_id)
        if not job.state.terminal:
            job = await runner.cancel(job_id) or job
        return jsonify(job.public())

    @jobs.get("/v1/jobs/<job_id>/events")
    async def events(job_id: str) -> Response:
        first = await owned(job_id)

        async def stream() -> AsyncIterator[bytes]:
            job: Job | None = first
            shown: tuple[JobState, int] | None = None
            while job is not None:
                if (job.state, job.attempts) != shown:
                    shown = (job.state, job.attempts)
                    yield f"event: state\ndata: {json.dumps(job.public())}\n\n".encode()
                if job.state.terminal:
                    return
                await runner.wait_changed()
                job = await in_store(lambda: runner.store.get(job_id))

        response = Response(stream(), content_type="text/event-stream")
        response.headers["Cache-Control"] = "no-cache"
        response.timeout = None
        return response

    return jobs


def request_owner(guard: Guard) -> object:
    """The key whose jobs this request may see: ANY_KEY for the admin token, None with auth off. (The
    app's access check has already refused a request without a valid key.)"""
    headers = [(k.lower().encode("latin-1"), v.encode("latin-1")) for k, v in request.headers.items()]
    if guard.is_admin(headers):
        return ANY_KEY
    key = guard.authenticate(headers)
    return None if key is None else key.id


async def in_store(action: Callable[[], Any]) -> Any:
    """Run a blocking store call in a worker thread; a store that cannot be used is a 503."""
    try:
        return await anyio.to_thread.run_sync(action)
    except StoreError as error:
        raise HttpError(f"the job store cannot be used: {error.message}", status=503) from error


def error_response(error: RequestError) -> Response:
    dialect = dialect_of_path(request.path)
    response = Response(dialect.error_body(error), content_type="application/json")
    response.status_code = dialect.error_status(error)
    return response


async def _webhook(value: object, allow_private: bool) -> tuple[str | None, str | None]:
    """The submission's webhook URL and secret, checked. Raises BadRequest."""
    if value is None:
        return None, None
    if not isinstance(value, dict) or not isinstance(value.get("url"), str):
        raise BadRequest('\'webhook\' must be {"url": ..., "secret": ...}', param="webhook")
    secret = value.get("secret")
    if not isinstance(secret, str) or not secret:
        raise BadRequest(
            "'webhook.secret' must be a non-empty string (it signs each delivery)", param="webhook"
        )
    url = value["url"]
    try:
        await anyio.to_thread.run_sync(lambda: check_url(url, allow_private=allow_private))
    except WebhookRefused as refused:
        raise BadRequest(str(refused), param="webhook") from None
    return url, secret
