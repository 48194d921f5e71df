"""One gateway generation: everything built from one config, served behind the supervisor's dispatcher."""

from __future__ import annotations

import contextlib
import math
import time
from collections.abc import Awaitable, Callable, Mapping, MutableMapping
from typing import Any
from urllib.parse import urlsplit, urlunsplit

from quart import Quart

from gatewayd.config import Config
from gatewayd.errors import BackendUnavailable, NotFound
from gatewayd.gateway.access import AccessEdge
from gatewayd.gateway.activity import Activity
from gatewayd.gateway.app import model_state
from gatewayd.gateway.backends.groups import conflict
from gatewayd.gateway.backends.manager import ManagedBackend, UnitState
from gatewayd.gateway.backends.pool import BackendPool, BackendRuntime
from gatewayd.gateway.core.health import BackendState
from gatewayd.gateway.fleet.identity import instance_header, instance_name, with_instance_header
from gatewayd.gateway.inference import INFERENCE_ROUTES, InferenceEndpoint
from gatewayd.gateway.metrics import LabelValues, Metrics
from gatewayd.gateway.relay import StreamRegistry

Scope = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[MutableMapping[str, Any]]]
Send = Callable[[MutableMapping[str, Any]], Awaitable[None]]


#: states in which a backend counts as up (backend_up gauge)
_UP = frozenset({BackendState.UP, BackendState.DEGRADED, BackendState.UNKNOWN})


class GatewayGeneration:
    """Implements gatewayd.supervisor.contract.Generation. Built and closed by GatewayFactory.generation."""

    def __init__(
        self,
        config: Config,
        *,
        number: int,
        metrics: Metrics,
        pool: BackendPool,
        streams: StreamRegistry,
        inference: InferenceEndpoint,
        activity: Activity,
    ) -> None:
        self.config = config
        self.number = number
        self.metrics = metrics
        #: the process's recent requests (the factory's, shared by every generation)
        self.activity = activity
        self.pool = pool
        self.streams = streams
        self.draining = False
        self._inference = inference
        #: Host and browser-origin checks and CORS, for every request (see gatewayd.gateway.core.access)
        self.access = AccessEdge(config.server, access_log_enabled=config.logging.access_log)
        #: this instance's name, on every response (X-Gatewayd-Instance): built once, not per request
        self.instance_name = instance_name(config.server)
        self._instance_header = instance_header(self.instance_name)
        self._in_flight = 0
        self.app: Quart | None = None  # set by the factory once built

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        send = with_instance_header(send, self._instance_header)
        screened = await self.access.screen(scope, send)
        if screened is None:
            return  # refused, or a CORS preflight: answered
        send = screened
        api = INFERENCE_ROUTES.get(scope["path"]) if scope["method"] == "POST" else None
        self._in_flight += 1
        try:
            if api is not None:
                await self._inference(api, scope, receive, send)
            else:
                assert self.app is not None
                await self.app(scope, receive, send)  # type: ignore[arg-type]
        finally:
            self._in_flight -= 1

    def mark_draining(self) -> None:
        self.draining = True

    def end_streams(self) -> None:
        self.streams.end_all()

    def status(self) -> Mapping[str, object]:
        runtimes = self.pool.runtimes.values()
        return {
            "backends_up": sum(1 for r in runtimes if r.state in (BackendState.UP, BackendState.DEGRADED)),
            "backends_total": len(self.pool.runtimes),
            "in_flight": self._in_flight,
            "queued": sum(r.admission.queued for r in runtimes),
            "streams": len(self.streams),
        }

    def backend_rows(self) -> list[dict[str, object]]:
        return [
            {
                "id": r.config.id,
                "kind": r.config.kind.value,
                "url": _without_userinfo(r.config.url),
                "state": r.state.value,
                "in_flight": r.admission.in_flight,
                "max_concurrency": r.admission.capacity,
                "concurrency_source": r.concurrency.source.value,
                "queued": r.admission.queued,
                "idle_slots": r.idle_slots,
                "models": list(self.pool.inventory.served_by(r.config.id)),
                "last_error": r.health.last_error or None,
            }
            for r in self.pool.runtimes.values()
        ]

    def model_rows(self) -> list[dict[str, Any]]:
        rows = []
        for entry in self.pool.inventory.entries():
            runtimes = [
                self.pool.runtimes[t.backend] for t in entry.targets if t.backend in self.pool.runtimes
            ]
            state = model_state([runtime.state for runtime in runtimes])
            if state == "unavailable" and any(
                runtime.unit is not None and runtime.unit.state is UnitState.FAILED for runtime in runtimes
            ):
                state = "failed"  # gatewayd's start of its server failed (its backoff is running)
            rows.append(
                {
                    "name": entry.name,
                    "routed": entry.routed,
                    "backends": [{"backend": t.backend, "model": t.model} for t in entry.targets],
                    "state": state,
                }
            )
        return rows

    def expires_at(self, row: Mapping[str, Any]) -> str | None:
        """When a running model's server will be put to sleep if no request comes (Ollama's /api/ps
        ``expires_at``), for a server gatewayd runs; None when it is not one or is never put to sleep."""
        for target in row["backends"]:
            runtime = self.pool.runtimes.get(target["backend"])
            unit = runtime.unit if runtime is not None else None
            if unit is None or unit.process is None or not unit.running or unit.backend.always_on:
                continue
            limit = unit.idle_limit_seconds
            if math.isinf(limit):
                return None
            remaining = max(0.0, limit - (unit.manager.clock() - unit.last_used))
            moment = time.time() + remaining
            return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(moment))
        return None

    # -- the admin surface (/admin/backends) ----------------------------------------------------------

    def admin_backend_rows(self) -> list[dict[str, object]]:
        """One row per backend of this generation, with what gatewayd knows of the servers it runs."""
        return [self._admin_row(runtime) for runtime in self.pool.runtimes.values()]

    async def start_backend(self, backend_id: str) -> dict[str, object]:
        """Start (or wake) a managed or wakeable backend and return its row once it is ready; a group member
        is started through its group's scheduler, into a free slot only. Raises NotFound; HttpError 409
        ("not_managed" for a backend gatewayd neither runs nor wakes, "group_full", "backend_stopping");
        BackendUnavailable with the start's error (also during the backoff after a failed start).
        Cancellation leaves the start itself to finish (it runs in the manager)."""
        runtime = self._admin_runtime(backend_id)
        unit = runtime.unit
        if unit is None:
            raise conflict(
                f"backend {backend_id} is not run by gatewayd (it has no command: and no wake:): "
                "start it yourself",
                "not_managed",
            )
        if unit.group is not None:
            await unit.group.start_member(unit)
        elif unit.state is UnitState.STOPPING:
            raise conflict(
                f"backend {backend_id} is being stopped: start it once it is sleeping", "backend_stopping"
            )
        else:
            await unit.ensure_running(through_backoff=True)
        return self._admin_row(runtime)

    async def stop_backend(self, backend_id: str) -> dict[str, object]:
        """Stop a managed backend's server and return its row once it is stopped: a start in progress is
        waited for first, then the requests using it (a group member is stopped through its group's
        scheduler, which also waits for the requests waiting for it). The next request starts it again.
        Raises NotFound; HttpError 409 "not_managed" for a backend whose server gatewayd does not run
        (a wake-only one included). The stop itself is not interrupted by cancellation."""
        runtime = self._admin_runtime(backend_id)
        unit = runtime.unit
        if unit is None or unit.process is None:
            raise conflict(
                f"backend {backend_id} is not run by gatewayd (it has no command:): stop it yourself",
                "not_managed",
            )
        reason = f"stopped on request (POST /admin/backends/{backend_id}/stop)"
        if unit.group is not None:
            await unit.group.stop_member(unit, reason)
        else:
            if unit.state is UnitState.STARTING:
                with contextlib.suppress(BackendUnavailable):
                    await unit.ensure_running(through_backoff=True)
            await unit.stop(reason)
        return self._admin_row(runtime)

    def _admin_runtime(self, backend_id: str) -> BackendRuntime:
        runtime = self.pool.runtimes.get(backend_id)
        if runtime is None:
            known = ", ".join(self.pool.runtimes) or "none"
            raise NotFound(f"no backend {backend_id!r} (backends: {known})")
        return runtime

    def _admin_row(self, runtime: BackendRuntime) -> dict[str, object]:
        backend_id = runtime.config.id
        unit: ManagedBackend | None = runtime.unit
        group = unit.group if unit is not None else None
        queued = runtime.admission.queued + (group.queue_depth(backend_id) if group is not None else 0)
        if unit is not None and unit.process is not None:
            port = unit.port
        else:
            port = urlsplit(runtime.config.url).port
        uptime = unit.uptime_seconds if unit is not None else None
        return {
            "id": backend_id,
            "kind": runtime.config.kind.value,
            "state": unit.state.value if unit is not None else runtime.state.value,
            "managed": runtime.config.managed,
            "pid": unit.pid if unit is not None else None,
            "port": port,
            "models": list(self.pool.inventory.served_by(backend_id)),
            "uptime_seconds": round(uptime, 1) if uptime is not None else None,
            "in_flight": runtime.admission.in_flight,
            "max_concurrency": runtime.admission.capacity,
            "concurrency_source": runtime.concurrency.source.value,
            "queued": queued,
            "group": runtime.config.group,
            "last_error": (unit.last_error if unit is not None else None)
            or runtime.health.last_error
            or None,
        }

    # gauges read at scrape time (registered by the factory while the generation lives)

    def gauge_in_flight(self) -> list[tuple[LabelValues, float]]:
        return [((r.config.id,), float(r.admission.in_flight)) for r in self.pool.runtimes.values()]

    def gauge_queued(self) -> list[tuple[LabelValues, float]]:
        return [((r.config.id,), float(r.admission.queued)) for r in self.pool.runtimes.values()]

    def gauge_backend_up(self) -> list[tuple[LabelValues, float]]:
        if self.draining:
            return []
        return [
            ((r.config.id, r.state.value), 1.0 if r.state in _UP else 0.0)
            for r in self.pool.runtimes.values()
        ]

    def gauge_generation(self) -> list[tuple[LabelValues, float]]:
        return [(("draining" if self.draining else "serving",), 1.0)]


def _without_userinfo(url: str) -> str:
    """``url`` with any ``user:password@`` removed: /status is readable by every local client."""
    parts = urlsplit(url)
    if parts.username is None and parts.password is None:
        return url
    host = parts.hostname or ""
    if ":" in host:
        host = f"[{host}]"
    netloc = f"{host}:{parts.port}" if parts.port is not None else host
    return urlunsplit(parts._replace(netloc=netloc))
