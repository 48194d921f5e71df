"""What the supervisor runs, stated as protocols: it knows nothing about LLMs.

The CLI hands the run loop a ``GenerationFactory`` (the gateway implements it). For each config the run loop
asks the factory for a ``Generation``: an ASGI app plus the hooks the run loop needs to drain it. Several
generations live at once during a reload, so nothing here may be process-global.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Mapping, MutableMapping
from contextlib import AbstractAsyncContextManager
from typing import Any, Protocol

from gatewayd.config import Config

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]


class InstanceInfo(Protocol):
    """Read-only view of the run loop, given to each generation so it can report it (status page, /status)."""

    def snapshot(self) -> Mapping[str, object]:
        """pid, started_at, uptime_seconds, generation, restarts, last_reload, listen, config_path,
        version, standby (the warm standby's pid, state and rss_bytes, or None)."""
        ...


class Generation(Protocol):
    """One started gateway serving one config."""

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        """Serve one HTTP request (scope["type"] == "http"); the run loop never passes lifespan scopes."""
        ...

    def mark_draining(self) -> None:
        """This generation takes no new work: /readyz answers 503 from now on. Idempotent."""
        ...

    def end_streams(self) -> None:
        """Drain time is up: every open stream ends now with a final shutdown event in its dialect and
        closes cleanly. Idempotent; returns at once (the streams finish on their own tasks)."""
        ...

    def status(self) -> Mapping[str, object]:
        """Small summary for sd_notify STATUS= and ``gatewayd status``: backends_up, backends_total,
        in_flight, queued."""
        ...


class GenerationFactory(Protocol):
    """Builds generations. One factory lives for the whole process (it may own process-wide state such as
    metrics that must survive a reload); generations are built from it per config."""

    def lifetime(self) -> AbstractAsyncContextManager[None]:
        """Entered once by the run loop before the first generation starts, exited after the last one has
        closed: it owns what outlives generations (model servers the gateway runs). Exiting stops what it
        owns, unless ``hand_over`` was called."""
        ...

    def hand_over(self) -> None:
        """A respawned process has taken over: leave what the lifetime owns running for it to adopt."""
        ...

    def load_config(self, path: str | None) -> Config:
        """Read and validate the config; raise ConfigError listing every problem. No side effects."""
        ...

    def generation(
        self, config: Config, *, number: int, instance: InstanceInfo
    ) -> AbstractAsyncContextManager[Generation]:
        """Entering builds and starts the generation (clients, probes, startup hooks) and returns once it
        can serve; raising leaves nothing running. Exiting closes it: cancels its background tasks and
        closes its clients. The run loop exits it only after its requests have finished or been ended."""
        ...
