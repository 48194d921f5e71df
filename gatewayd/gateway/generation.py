"""One gateway generation: everything built from one config, served behind the supervisor's dispatcher."""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Mapping, MutableMapping
from typing import Any
from urllib.parse import urlsplit, urlunsplit

from quart import Quart

from gatewayd.config import Config
from gatewayd.gateway.app import model_state
from gatewayd.gateway.backends.manager import UnitState
from gatewayd.gateway.backends.pool import BackendPool
from gatewayd.gateway.core.health import BackendState
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
    ) -> None:
        self.config = config
        self.number = number
        self.metrics = metrics
        self.pool = pool
        self.streams = streams
        self.draining = False
        self._inference = inference
        self._in_flight = 0
        self.app: Quart | None = None  # set by the factory once built

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
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
