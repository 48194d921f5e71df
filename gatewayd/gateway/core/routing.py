"""Choosing the order in which a request's candidate backends are tried. Pure."""

from __future__ import annotations

import enum
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from gatewayd.gateway.core.health import STATE_RANK, BackendState
from gatewayd.gateway.core.inventory import Target

#: the free slots of an unbounded backend
UNBOUNDED_FREE = 1 << 30


@dataclass(frozen=True, slots=True)
class Load:
    """What routing needs to know about one backend right now."""

    state: BackendState
    in_flight: int
    #: None: unbounded (a hosted API or vLLM): always has a free slot unless its own /slots say otherwise
    max_concurrency: int | None
    weight: float
    #: idle slots the backend itself reports (llama-server /slots); None when it does not report them
    idle_slots: int | None = None

    @property
    def free(self) -> int:
        if self.max_concurrency is None:
            return max(self.idle_slots, 0) if self.idle_slots is not None else UNBOUNDED_FREE
        free = self.max_concurrency - self.in_flight
        if self.idle_slots is not None:
            free = min(free, self.idle_slots)
        return max(free, 0)

    @property
    def free_share(self) -> float:
        """The share of its capacity that is free. An unbounded backend has no share to count: 1.0 when
        idle, less the more it has in flight, so that replicas behind one route still share the load."""
        if self.max_concurrency is None:
            return 1.0 / (1 + self.in_flight) if self.free > 0 else 0.0
        return self.free / self.max_concurrency if self.max_concurrency else 0.0


class Preference(enum.Enum):
    """What became of a client's X-Gatewayd-Preferred-Backend, reported back in a response header."""

    HONOURED = "honoured"
    DOWN = "down"  # the preferred backend is down (or in cooldown)
    SATURATED = "saturated"  # it has no free slot
    NOT_A_CANDIDATE = "not-a-candidate"  # it does not serve this model


def order_targets(
    targets: Sequence[Target],
    load_of: Callable[[str], Load],
    *,
    preferred: str | None = None,
) -> tuple[list[Target], Preference | None]:
    """Routable targets, best first.

    Best = healthier state, then a free slot, then the route's own order (primary before fallbacks), then
    the larger share of free capacity, then the higher weight. DOWN backends are left out. A preferred
    backend goes first when it is routable and has a free slot; otherwise the reason it was passed over is
    returned."""
    scored: list[tuple[tuple[int, int, int, float, float], Target]] = []
    loads: dict[str, Load] = {}
    for target in targets:
        load = loads.get(target.backend)
        if load is None:
            load = loads[target.backend] = load_of(target.backend)
        if load.state is BackendState.DOWN:
            continue
        room = 0 if load.free > 0 else 1
        key = (STATE_RANK[load.state], room, target.priority, -load.free_share, -load.weight)
        scored.append((key, target))
    scored.sort(key=lambda pair: pair[0])
    ordered = [target for _, target in scored]
    if preferred is None:
        return ordered, None
    preference = _preference(preferred, targets, loads)
    if preference is Preference.HONOURED:
        first = [t for t in ordered if t.backend == preferred]
        ordered = first + [t for t in ordered if t.backend != preferred]
    return ordered, preference


def _preference(preferred: str, targets: Sequence[Target], loads: dict[str, Load]) -> Preference:
    if not any(t.backend == preferred for t in targets):
        return Preference.NOT_A_CANDIDATE
    load = loads[preferred]
    if load.state is BackendState.DOWN:
        return Preference.DOWN
    if load.free <= 0:
        return Preference.SATURATED
    return Preference.HONOURED
