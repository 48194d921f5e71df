"""Health probes over the generation's Transport, as each backend kind's row in ``kinds.KINDS`` says."""

from __future__ import annotations

import json
from collections.abc import MutableMapping, Sequence
from typing import Any

import anyio

from gatewayd.config import Backend, BackendKind, Timeouts
from gatewayd.errors import BackendError
from gatewayd.gateway.backends.kinds import KINDS, auth_headers
from gatewayd.gateway.backends.transport import Transport
from gatewayd.gateway.core.concurrency import Source
from gatewayd.gateway.core.health import ProbeResult
from gatewayd.gateway.core.metadata import ModelInfo, from_llama_props, from_ollama_show

#: /api/show requests sent to one Ollama at once while its models are described
DESCRIBE_CONCURRENCY = 4


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
        idle_slots = total_slots = total_from = None
        if kind.reports_slots:
            idle_slots, total_slots, total_from = await _slots(transport, backend, timeout)
        return ProbeResult(
            ok=True,
            models=kind.model_ids(payload),
            idle_slots=idle_slots,
            total_slots=total_slots,
            total_slots_from=total_from,
            info=kind.listed_info(payload),
            degraded=idle_slots == 0,  # every slot busy: routed to after backends with room
        )
    except BackendError as error:
        return ProbeResult(ok=False, detail=error.message)


async def _slots(
    transport: Transport, backend: Backend, timeout: float
) -> tuple[int | None, int | None, Source | None]:
    """llama-server's idle slots (from /slots, absent when started with --no-slots) and its total slots
    (/props ``total_slots``, else the number of /slots), with where the total came from."""
    status, payload = await _get_json(transport, backend, "/slots", timeout)
    listed = payload if status == 200 and isinstance(payload, list) else None
    idle = None
    if listed is not None:
        idle = sum(1 for slot in listed if isinstance(slot, dict) and not slot.get("is_processing", False))
    status, props = await _get_json(transport, backend, "/props", timeout)
    total = props.get("total_slots") if status == 200 and isinstance(props, dict) else None
    if isinstance(total, int) and not isinstance(total, bool) and total > 0:
        return idle, total, Source.PROPS
    if listed:
        return idle, len(listed), Source.SLOTS
    return idle, None, None


async def describe(
    transport: Transport,
    backend: Backend,
    models: Sequence[str],
    timeout: float,
    found: MutableMapping[str, ModelInfo],
) -> None:
    """Learn what a backend tells about ``models`` beyond its listing, into ``found`` as the answers come
    (a caller that gives up keeps those): Ollama's /api/show for each (``DESCRIBE_CONCURRENCY`` at a time),
    llama-server's /props (one model per server: the same for all). Models it could not describe are left
    out; never raises for a backend fault."""
    if backend.kind is BackendKind.LLAMA_SERVER:
        try:
            status, payload = await _get_json(transport, backend, "/props", timeout)
        except BackendError:
            return
        if status == 200 and isinstance(payload, dict):
            info = from_llama_props(payload)
            found.update((model, info) for model in models)
    elif backend.kind is BackendKind.OLLAMA:
        limiter = anyio.CapacityLimiter(DESCRIBE_CONCURRENCY)

        async def show(model: str) -> None:
            async with limiter:
                try:
                    status, payload = await _post_json(
                        transport, backend, "/api/show", {"model": model}, timeout
                    )
                except BackendError:
                    return
            if status == 200 and isinstance(payload, dict):
                found[model] = from_ollama_show(payload)

        async with anyio.create_task_group() as tg:
            for model in models:
                tg.start_soon(show, model)


async def _post_json(
    transport: Transport, backend: Backend, path: str, body: Any, timeout: float
) -> tuple[int, Any]:
    timeouts = Timeouts(connect_seconds=timeout, first_byte_seconds=timeout, idle_seconds=timeout)
    headers = {"Content-Type": "application/json", **auth_headers(backend)}
    response = await transport.open(
        "POST",
        api_url(backend, path),
        backend=backend.id,
        timeouts=timeouts,
        headers=headers,
        body=json.dumps(body).encode(),
    )
    try:
        raw = await response.read()
    finally:
        response.close()
    try:
        return response.status, json.loads(raw) if raw else None
    except ValueError:
        return response.status, None
