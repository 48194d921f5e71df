"""Health probes, one per backend kind, over the generation's Transport."""

from __future__ import annotations

import json
from typing import Any

from gatewayd.config import Backend, BackendKind, Timeouts
from gatewayd.errors import BackendError
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


#: the Messages API version gatewayd speaks to a backend of ``kind: anthropic``
ANTHROPIC_VERSION = "2023-06-01"


def auth_headers(backend: Backend) -> dict[str, str]:
    """The headers that authenticate to ``backend``: Bearer, or Anthropic's x-api-key (with its API
    version, which an Anthropic backend requires on every request)."""
    if backend.kind is BackendKind.ANTHROPIC:
        key = {"x-api-key": backend.api_key} if backend.api_key else {}
        return {**key, "anthropic-version": ANTHROPIC_VERSION}
    return {"Authorization": f"Bearer {backend.api_key}"} if backend.api_key else {}


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


def _model_ids(payload: Any, *, ollama: bool) -> tuple[str, ...] | None:
    try:
        if ollama:
            return tuple(str(m.get("model") or m["name"]) for m in payload["models"])
        return tuple(str(m["id"]) for m in payload["data"])
    except (KeyError, TypeError, AttributeError):
        return None


async def probe(transport: Transport, backend: Backend, timeout: float) -> ProbeResult:
    """One probe of ``backend``. Never raises for a backend fault: failures are a ProbeResult(ok=False)."""
    try:
        if backend.kind is BackendKind.OLLAMA:
            status, payload = await _get_json(transport, backend, "/api/tags", timeout)
            if status != 200:
                return ProbeResult(ok=False, detail=f"/api/tags answered {status}")
            return ProbeResult(ok=True, models=_model_ids(payload, ollama=True))
        if backend.kind in (BackendKind.LLAMA_SERVER, BackendKind.VLLM):
            status, payload = await _get_json(transport, backend, "/health", timeout)
            if status != 200:
                detail = payload.get("status", "") if isinstance(payload, dict) else ""
                return ProbeResult(ok=False, detail=f"/health answered {status} {detail}".strip())
        status, payload = await _get_json(transport, backend, "/v1/models", timeout)
        if status != 200:
            return ProbeResult(ok=False, detail=f"/v1/models answered {status}")
        idle_slots = None
        if backend.kind is BackendKind.LLAMA_SERVER:
            idle_slots = await _idle_slots(transport, backend, timeout)
        return ProbeResult(
            ok=True,
            models=_model_ids(payload, ollama=False),
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
