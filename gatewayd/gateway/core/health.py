"""Backend health: a small state machine fed by probes and by live traffic. Pure: the clock is passed in."""

from __future__ import annotations

import enum
from collections.abc import Mapping
from dataclasses import dataclass

from gatewayd.gateway.core.concurrency import Source
from gatewayd.gateway.core.metadata import ModelInfo


class BackendState(enum.Enum):
    UNKNOWN = "unknown"  # not probed yet; routable (optimistic), so the first request does not wait
    UP = "up"  # last probe or request succeeded
    DEGRADED = "degraded"  # answers, but is loading, saturated or slow: routable after UP backends
    DOWN = "down"  # failed `failure_threshold` times in a row: skipped until a probe succeeds
    # managed and wakeable backends only (their state comes from the backend manager, not from probes):
    SLEEPING = "sleeping"  # not running: routable, after running backends; the request starts it
    STARTING = "starting"  # being started or woken: routable, after running backends; requests wait


#: order in which routable states are preferred (lower first); DOWN is never routed to
STATE_RANK = {
    BackendState.UP: 0,
    BackendState.UNKNOWN: 0,
    BackendState.DEGRADED: 1,
    BackendState.STARTING: 2,  # already on its way: no second cold start
    BackendState.SLEEPING: 3,
}


@dataclass(frozen=True, slots=True)
class ProbeResult:
    """What one probe learned. ``models`` is None when the probe does not list models."""

    ok: bool
    degraded: bool = False
    detail: str = ""
    models: tuple[str, ...] | None = None
    #: idle slots reported by the backend itself (llama-server /slots), when it reports them
    idle_slots: int | None = None
    #: slots the backend runs (llama-server /props total_slots, else its /slots count), and which said so
    total_slots: int | None = None
    total_slots_from: Source | None = None
    #: what the model listing said about each model (size, digest, context length...), when it said
    info: Mapping[str, ModelInfo] | None = None


class Health:
    """Health of one backend.

    Passive learning: ``failure_threshold`` consecutive failed requests (connection errors, timeouts, 5xx)
    put the backend DOWN; any success resets the count. A DOWN backend comes back only through a successful
    probe; when live traffic put it down, not before ``cooldown_seconds`` have passed (no flapping between a
    probe that passes and requests that fail)."""

    __slots__ = ("_cooldown", "_threshold", "cooldown_until", "failures", "last_error", "state")

    def __init__(self, *, failure_threshold: int, cooldown_seconds: float) -> None:
        self._threshold = failure_threshold
        self._cooldown = cooldown_seconds
        self.state = BackendState.UNKNOWN
        self.failures = 0
        self.cooldown_until = 0.0
        self.last_error = ""

    @property
    def routable(self) -> bool:
        return self.state is not BackendState.DOWN

    def reset_for_start(self) -> None:
        """The backend is a managed server that is not running: forget its failures. Once started it
        passed a readiness check, so it starts UP."""
        self.state = BackendState.UP
        self.failures = 0
        self.cooldown_until = 0.0

    def request_succeeded(self) -> None:
        self.failures = 0
        if self.state is BackendState.UNKNOWN:
            self.state = BackendState.UP

    def request_failed(self, now: float, error: str) -> None:
        self.failures += 1
        self.last_error = error
        if self.failures >= self._threshold and self.state is not BackendState.DOWN:
            self.state = BackendState.DOWN
            self.cooldown_until = now + self._cooldown

    def probed(self, now: float, result: ProbeResult) -> None:
        if not result.ok:
            self.last_error = result.detail
            if self.state is not BackendState.DOWN:
                self.failures += 1
                if self.failures >= self._threshold or self.state is BackendState.UNKNOWN:
                    self.state = BackendState.DOWN
            return
        if self.state is BackendState.DOWN and now < self.cooldown_until:
            return
        self.failures = 0
        self.state = BackendState.DEGRADED if result.degraded else BackendState.UP
