"""The gateway as the supervisor sees it: a factory of generations (see gatewayd.supervisor.contract)."""

from __future__ import annotations

import logging
import os
from collections.abc import AsyncIterator, Mapping
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

from gatewayd.config import Config
from gatewayd.config.loader import apply_listen_overrides, load

log = logging.getLogger("gatewayd.gateway")


class GatewayFactory:
    """Builds gateway generations. One per process; owns what must outlive a reload (metrics)."""

    def __init__(
        self,
        *,
        state_dir: Path,
        listen_host: str | None = None,
        listen_port: int | None = None,
        environ: Mapping[str, str] = os.environ,
    ) -> None:
        self._state_dir = state_dir
        self._listen_host = listen_host
        self._listen_port = listen_port
        self._environ = environ

    def load_config(self, path: str | None) -> Config:
        loaded = load(Path(path) if path else None, environ=self._environ)
        for warning in loaded.warnings:
            log.warning("config: %s", warning)
        return apply_listen_overrides(loaded.config, host=self._listen_host, port=self._listen_port)

    @asynccontextmanager
    async def generation(self, config: Config, *, number: int, instance: Any) -> AsyncIterator[Any]:
        # Placeholder generation until the routed core lands: answers /healthz and /readyz only.
        yield _MinimalGeneration()


class _MinimalGeneration:
    def __init__(self) -> None:
        self._draining = False

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        path = scope["path"]
        status = 200 if path == "/healthz" or (path == "/readyz" and not self._draining) else 503
        if path not in ("/healthz", "/readyz"):
            status = 404
        await send({"type": "http.response.start", "status": status, "headers": [(b"content-length", b"2")]})
        await send({"type": "http.response.body", "body": b"ok" if status == 200 else b"no"})

    def mark_draining(self) -> None:
        self._draining = True

    def end_streams(self) -> None:
        pass

    def status(self) -> Mapping[str, object]:
        return {"backends_up": 0, "backends_total": 0, "in_flight": 0, "queued": 0}
