"""Health probes over the generation's Transport, as each backend kind's row in ``kinds.KINDS`` says."""

from __future__ import annotations

import json
from typing import Any

from gatewayd.config import Backend, Timeouts
from gatewayd.errors import BackendError
from gatewayd.gateway.backends.kinds import KINDS, auth_headers
from gatewayd.gateway.backends.transport import Transport
from gatewayd.gateway.core.health import ProbeResult


def api_url(backend: Backend, path: str) -> str:
    """Absolute URL of ``path`` ("/v1/...", "/api/...", "/health", ...) on a backend. A url given with a
    trailing /v1 names the API base: /v1 paths are not given a second one, and the others (/health, /slots)
    hang off the server's root."""
    base = backend.url.rstrip("/")
    if base.endswith("/v1"):
        base = base[:-3]
    return base + path


async def _get_json(transport: Transport, backend: Backend, path: str, timeout: float) -> tuple[int, Any]:
    timeouts = Timeouts(connect_seconds=timeout, first_byte_seconds=timeout, idle_seconds=timeout)
    response = await transport.open(
        "GET", api_url(backend, path), backend=backend.id, timeouts=timeouts, headers=auth_headers(backend)
    )
    try:
        raw = await response.read()
    finally:
        response.close()
    try:
        return response.status, json.loads(raw) if raw else None
    except ValueError:
        return response.status, None


async def probe(transport: Transport, backend: Backend, timeout: float) -> ProbeResult:
    """One probe of ``backend``. Never raises for a backend fault: failures are a ProbeResult(ok=False)."""
    kind = KINDS[backend.kind]
    try:
        if kind.health_path is not None:
            status, payload = await _get_json(transport, backend, kind.health_path, timeout)
            if status != 200:
                detail = payload.get("status", "") if isinstance(payload, dict) else ""
                return ProbeResult(ok=False, detail=f"{kind.health_path} answered {status} {detail}".strip())
        status, payload = await _get_json(transport, backend, kind.models_path, timeout)
        if status != 200:
            return ProbeResult(ok=False, detail=f"{kind.models_path} answered {status}")
        idle_slots = await _idle_slots(transport, backend, timeout) if kind.reports_slots else None
        return ProbeResult(
            ok=True,
            models=kind.model_ids(payload),
            idle_slots=idle_slots,
            degraded=idle_slots == 0,  # every slot busy: routed to after backends with room
        )
    except BackendError as error:
        return ProbeResult(ok=False, detail=error.message)


async def _idle_slots(transport: Transport, backend: Backend, timeout: float) -> int | None:
    """llama-server's /slots (absent when started without --slots): slots not processing a request."""
    status, payload = await _get_json(transport, backend, "/slots", timeout)
    if status != 200 or not isinstance(payload, list):
        return None
    return sum(1 for slot in payload if isinstance(slot, dict) and not slot.get("is_processing", False))
