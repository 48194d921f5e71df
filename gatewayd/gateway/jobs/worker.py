"""The job runner: claims queued jobs under a lease and runs each through a generation's inference path.

One ``JobRunner`` lives for the whole process (``GatewayFactory.lifetime``), not per generation, because a
job must outlive the generation that was current when it started without being sent twice: a generation
attaches its job endpoint when built (``attach``) and detaches it when closed (``detach``). New jobs go to
the newest generation that is not draining; a job keeps the generation it started on until its answer is in,
and a closing generation waits for its jobs (up to ``restart.drain_timeout_seconds`` while a newer
generation serves, i.e. a reload; up to ``shutdown.drain_timeout_seconds`` after it began draining when
none does, i.e. a stop). A job cut at that bound goes back to the queue and runs again (at-least-once).

A job's request is an ASGI call into the generation's ``InferenceEndpoint`` with a synthetic scope that
carries the job's key, so routing, translation, admission, limits and the usage record are those of a live
request. ``stream: true`` is run as a non-streaming request. A 2xx answer succeeds the job; 429 (admission
or the key's rate) puts it back in the queue without counting the attempt (jobs wait, they are not
refused); other 4xx fail it at once; 5xx and connection errors retry with exponential backoff until
``jobs.max_attempts``.
"""

from __future__ import annotations

import json
import logging
import os
import secrets
import socket
import time
from collections.abc import MutableMapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import anyio
import anyio.abc
import anyio.to_thread
import psutil

from gatewayd.config import Config, JobSettings
from gatewayd.errors import GatewaydError, StoreError
from gatewayd.gateway.dialects.registry import ROUTES
from gatewayd.gateway.guard import Guard
from gatewayd.gateway.inference import JOB_KEY_SCOPE, InferenceEndpoint
from gatewayd.gateway.jobs.batches import SqliteBatchStore
from gatewayd.gateway.jobs.model import Job, JobState
from gatewayd.gateway.jobs.store import JobStore
from gatewayd.gateway.jobs.webhook import WebhookSender
from gatewayd.gateway.metrics import Metrics

log = logging.getLogger("gatewayd.jobs")

#: finished jobs are pruned about this often (the first time soon after start)
PRUNE_INTERVAL_SECONDS = 3600.0
#: leases are renewed this many times per lease
RENEWALS_PER_LEASE = 3
#: how long a job cut at a generation's close may take to be put back in the queue
CUT_SETTLE_SECONDS = 5.0
#: a store that cannot be opened is tried again after this long, doubling up to STORE_RETRY_MAX_SECONDS
STORE_RETRY_SECONDS = 1.0
STORE_RETRY_MAX_SECONDS = 30.0


@dataclass(eq=False)
class JobTarget:
    """One generation's job endpoint, as the runner sees it."""

    number: int
    endpoint: InferenceEndpoint
    config: Config
    #: whether the generation is draining (it takes no new jobs then)
    draining: Any
    running: int = 0
    closing: bool = False
    draining_since: float | None = None
    runs: set[_Run] = field(default_factory=set)

    def accepts(self) -> bool:
        return not self.closing and not self.draining()


@dataclass(eq=False)
class _Run:
    job: Job
    scope: anyio.CancelScope
    cancel_requested: bool = False
    cut: bool = False


class JobRunner:
    """Claims and runs jobs for the whole process; see the module docstring."""

    def __init__(self, guard: Guard, metrics: Metrics) -> None:
        #: the store file the guard uses: jobs are a table beside keys and usage
        self.db_path: Path = guard.db_path
        self.guard = guard
        self.metrics = metrics
        self.settings = JobSettings()
        #: this process, as lease owner: host, pid, and a token (a pid can be reused after a reboot)
        self.owner = f"{socket.gethostname()}:{os.getpid()}:{secrets.token_hex(4)}"
        self._store: SqliteBatchStore | None = None
        self._targets: list[JobTarget] = []
        self._runs: dict[str, _Run] = {}
        self._wake = anyio.Event()
        self._changed = anyio.Event()
        self._tg: anyio.abc.TaskGroup | None = None
        self.counts: dict[JobState, int] = {state: 0 for state in JobState}
        self.webhooks = WebhookSender(self)
        metrics.jobs.sources.append(lambda: [((state.value,), float(n)) for state, n in self.counts.items()])

    # -- lifetime ------------------------------------------------------------------------------------

    async def run(self, *, task_status: anyio.abc.TaskStatus[None] = anyio.TASK_STATUS_IGNORED) -> None:
        """Open the job table, put back the jobs of processes that died on this host, and claim, renew,
        deliver webhooks and prune until cancelled. A store that cannot be opened is logged and tried
        again: jobs wait, live traffic is not affected."""
        async with anyio.create_task_group() as tg:
            self._tg = tg
            task_status.started()
            try:
                await self._open()
                tg.start_soon(self._housekeeping)
                tg.start_soon(self.webhooks.run)
                await self._claim_loop()
            finally:
                tg.cancel_scope.cancel()
                store, self._store = self._store, None
                if store is not None:
                    store.close()

    def configure(self, config: Config) -> None:
        self.settings = config.jobs
        self.wake()

    async def _open(self) -> None:
        """Open the store, retrying with backoff (one warning per outage) until it opens."""
        failures = 0
        while True:
            try:
                self._store = await anyio.to_thread.run_sync(SqliteBatchStore, self.db_path)
                recovered = await anyio.to_thread.run_sync(self._store.recover, self._dead)
            except (GatewaydError, OSError) as error:
                if failures == 0:
                    log.warning("jobs: cannot open the job store (%s); retrying", error)
                failures += 1
                await anyio.sleep(min(STORE_RETRY_MAX_SECONDS, STORE_RETRY_SECONDS * 2 ** min(failures, 10)))
                continue
            if recovered:
                log.warning("jobs: %d job(s) of a process that died went back to the queue", recovered)
            return

    def _dead(self, owner: str) -> bool:
        """Whether the lease owner ``owner`` is a process of this host that is gone."""
        host, _, rest = owner.partition(":")
        pid_text = rest.partition(":")[0]
        if host != socket.gethostname() or owner == self.owner or not pid_text.isdigit():
            return False
        return not psutil.pid_exists(int(pid_text)) or int(pid_text) == os.getpid()

    # -- generations ---------------------------------------------------------------------------------

    def attach(self, number: int, endpoint: InferenceEndpoint, config: Config, draining: Any) -> JobTarget:
        target = JobTarget(number, endpoint, config, draining)
        self._targets.append(target)
        self.wake()
        return target

    async def detach(self, target: JobTarget) -> None:
        """The generation closes: wait for its jobs (see the module docstring for the bound), then cut what
        is left and wait for those jobs to be put back in the queue. Call shielded."""
        target.closing = True
        newer = any(t.accepts() for t in self._targets if t is not target)
        if newer:
            bound = target.config.restart.drain_timeout_seconds
        else:
            since = target.draining_since if target.draining_since is not None else time.monotonic()
            bound = max(0.0, target.config.shutdown.drain_timeout_seconds - (time.monotonic() - since))
        with anyio.move_on_after(bound):
            while target.running:
                await self._wait_changed(1.0)
        if target.running:
            log.warning(
                "jobs: %d job(s) still running as generation %d closes: cut, they run again",
                target.running,
                target.number,
            )
            for run in list(target.runs):
                run.cut = True
                run.scope.cancel()
            with anyio.move_on_after(CUT_SETTLE_SECONDS):
                while target.running:
                    await self._wait_changed(0.1)
        self._targets.remove(target)

    def _current(self) -> JobTarget | None:
        for target in reversed(self._targets):
            if target.accepts():
                return target
            if target.draining_since is None and target.draining():
                target.draining_since = time.monotonic()
        return None

    # -- the API's side --------------------------------------------------------------------------------

    @property
    def store(self) -> JobStore:
        return self.batches

    @property
    def batches(self) -> SqliteBatchStore:
        """The SQLite engine's files and batches (OpenAI's batch API is served on the embedded store)."""
        if self._store is None:
            raise StoreError("the job store is not open yet")
        return self._store

    def wake(self) -> None:
        self._wake.set()

    def changed(self) -> None:
        self._changed.set()
        self._changed = anyio.Event()

    async def _wait_changed(self, timeout: float) -> None:
        with anyio.move_on_after(timeout):
            await self._changed.wait()

    async def wait_changed(self) -> None:
        """Return at the next change made by this process, or after ``poll_interval_seconds`` (a change
        made by another process is seen by reading again)."""
        await self._wait_changed(self.settings.poll_interval_seconds)

    async def cancel(self, job_id: str) -> Job | None:
        """Cancel a job: a queued one at once; a running one of this process is cut now (its backend slot
        is freed as the request unwinds) and returned once it is cancelled; one running elsewhere is
        cancelled by its owner at its next lease renewal (waited for up to a lease)."""
        job = await anyio.to_thread.run_sync(self.store.cancel, job_id, time.time())
        if job is None or job.state is not JobState.RUNNING:
            self.changed()
            return job
        run = self._runs.get(job_id)
        if run is not None:
            run.cancel_requested = True
            run.scope.cancel()
        with anyio.move_on_after(self.settings.lease_seconds):
            while job is not None and job.state is JobState.RUNNING:
                await self.wait_changed()
                job = await anyio.to_thread.run_sync(self.store.get, job_id)
        return job

    # -- claiming and running --------------------------------------------------------------------------

    async def _claim_loop(self) -> None:
        assert self._tg is not None
        while True:
            target = self._current()
            free = self.settings.concurrency - len(self._runs)
            claimed: list[Job] = []
            if target is not None and free > 0:
                now = time.time()
                try:
                    claimed = await anyio.to_thread.run_sync(
                        self.store.claim, self.owner, free, self.settings.lease_seconds, now
                    )
                except StoreError as error:
                    log.warning("jobs: cannot claim jobs (%s); retrying", error)
                for job in claimed:
                    self.metrics.job_queue_seconds.observe((), max(0.0, now - job.created_at))
                    run = _Run(job, anyio.CancelScope())
                    self._runs[job.id] = run
                    target.runs.add(run)
                    target.running += 1
                    self._tg.start_soon(self._run, run, target)
                if claimed:
                    self.changed()
            if claimed and len(claimed) == free:
                continue
            with anyio.move_on_after(self.settings.poll_interval_seconds):
                await self._wake.wait()
            self._wake = anyio.Event()

    async def _run(self, run: _Run, target: JobTarget) -> None:
        job = run.job
        try:
            status, body = 0, b""
            with run.scope:
                status, body = await self._call(job, target.endpoint)
            await self._settle(run, status, body)
        except StoreError as error:
            log.warning("jobs: cannot record the outcome of %s (%s): its lease runs out, it runs again",
                        job.id, error)  # fmt: skip
        finally:
            target.running -= 1
            target.runs.discard(run)
            self._runs.pop(job.id, None)
            self.changed()
            self.wake()

    async def _call(self, job: Job, endpoint: InferenceEndpoint) -> tuple[int, bytes]:
        api = ROUTES[job.endpoint]
        body = dict(job.request)
        if not api.is_embedding:
            body["stream"] = False
            body.pop("stream_options", None)
        raw = json.dumps(body).encode()
        key = self.guard.key_by_id(job.key_id) if job.key_id is not None else None
        if job.key_id is not None and key is None:
            error = {
                "error": {
                    "message": "the job's API key was revoked or expired",
                    "type": "invalid_request_error",
                }
            }
            return 401, json.dumps(error).encode()
        scope: MutableMapping[str, Any] = {
            "type": "http",
            "asgi": {"version": "3.0", "spec_version": "2.3"},
            "http_version": "1.1",
            "method": "POST",
            "scheme": "http",
            "path": job.endpoint,
            "raw_path": job.endpoint.encode(),
            "query_string": b"",
            "root_path": "",
            "headers": [
                (b"content-type", b"application/json"),
                (b"content-length", str(len(raw)).encode()),
                (b"x-request-id", f"{job.id}-{job.attempts}".encode()),
            ],
            "client": ("job", 0),
            "server": None,
            JOB_KEY_SCOPE: key,
        }
        sent = False
        status = 0
        chunks: list[bytes] = []

        async def receive() -> MutableMapping[str, Any]:
            nonlocal sent
            if not sent:
                sent = True
                return {"type": "http.request", "body": raw, "more_body": False}
            await anyio.sleep_forever()
            raise AssertionError("unreachable")

        async def send(message: MutableMapping[str, Any]) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = int(message["status"])
            elif message["type"] == "http.response.body":
                chunks.append(message.get("body", b""))

        await endpoint(api, scope, receive, send)
        return status, b"".join(chunks)

    async def _settle(self, run: _Run, status: int, body: bytes) -> None:
        """Record what the run came to (see the module docstring for the rules)."""
        job, store, now = run.job, self.store, time.time()
        settings = self.settings
        if run.cancel_requested:
            error = {"status": None, "message": "cancelled", "type": "cancelled"}
            finished = await anyio.to_thread.run_sync(
                store.finish, job.id, self.owner, JobState.CANCELLED, None, error, now
            )
        elif run.cut or status == 0:
            finished = await anyio.to_thread.run_sync(
                lambda: store.requeue(job.id, self.owner, now, uncount=False)
            )
        elif 200 <= status < 300:
            result = _json(body)
            finished = await anyio.to_thread.run_sync(
                store.finish, job.id, self.owner, JobState.SUCCEEDED, result, None, now
            )
        elif status == 429:
            later = now + settings.retry_base_seconds
            finished = await anyio.to_thread.run_sync(
                lambda: store.requeue(job.id, self.owner, later, uncount=True)
            )
        elif status >= 500 and job.attempts < settings.max_attempts:
            delay = min(settings.retry_max_seconds, settings.retry_base_seconds * 2 ** (job.attempts - 1))
            later = now + delay
            log.info("jobs: %s got %d (attempt %d); retrying in %.1f s", job.id, status, job.attempts, delay)
            finished = await anyio.to_thread.run_sync(
                lambda: store.requeue(job.id, self.owner, later, uncount=False)
            )
        else:
            finished = await anyio.to_thread.run_sync(
                store.finish, job.id, self.owner, JobState.FAILED, None, _error(status, body), now
            )
        if finished is None:
            log.warning(
                "jobs: %s was taken over by another process (its lease ran out): outcome dropped", job.id
            )
        elif finished.state.terminal:
            self.webhooks.wake()

    # -- leases, counts, retention ---------------------------------------------------------------------

    async def _housekeeping(self) -> None:
        next_renew = next_prune = 0.0
        while True:
            settings = self.settings
            clock = time.monotonic()
            try:
                if clock >= next_renew:
                    next_renew = clock + settings.lease_seconds / RENEWALS_PER_LEASE
                    await self._renew()
                self.counts = await anyio.to_thread.run_sync(self.store.counts)
                if clock >= next_prune:
                    next_prune = clock + PRUNE_INTERVAL_SECONDS
                    older = time.time() - settings.retention_seconds
                    pruned = await anyio.to_thread.run_sync(self.store.prune, older)
                    if pruned:
                        log.info("jobs: deleted %d finished job(s) past the retention", pruned)
            except StoreError as error:
                log.warning("jobs: store maintenance failed (%s); retrying", error)
            await anyio.sleep(
                min(settings.poll_interval_seconds, settings.lease_seconds / RENEWALS_PER_LEASE)
            )

    async def _renew(self) -> None:
        ids = list(self._runs)
        lease_until = time.time() + self.settings.lease_seconds
        cancelled = await anyio.to_thread.run_sync(self.store.renew, self.owner, ids, lease_until)
        for job_id in cancelled:
            run = self._runs.get(job_id)
            if run is not None:
                run.cancel_requested = True
                run.scope.cancel()


def _json(body: bytes) -> Any:
    try:
        return json.loads(body)
    except ValueError:
        return body.decode("utf-8", "replace")


def _error(status: int, body: bytes) -> dict[str, Any]:
    """The failed request's error, in OpenAI's fields (an Ollama ``{"error": "..."}`` included)."""
    parsed = _json(body)
    error: dict[str, Any] = {"status": status, "message": f"the endpoint answered {status}"}
    inner = parsed.get("error") if isinstance(parsed, dict) else None
    if isinstance(inner, dict):
        error.update({k: v for k, v in inner.items() if k != "status"})
    elif isinstance(inner, str):
        error["message"] = inner
    return error
