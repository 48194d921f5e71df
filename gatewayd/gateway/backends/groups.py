"""Exclusive groups of managed backends (one GPU): the IO side of ``core.scheduler.GroupScheduler``.

A ``GroupDriver`` turns the scheduler's decisions into moves: it wakes the requests it grants, starts the
members it is told to start and stops the ones it evicts (never while a request uses them: ``stop`` waits
for their leases). Requests wait in ``acquire`` until granted; one whose client goes away withdraws its
ticket. A failed start answers every request waiting for that member with the same error.

When a reload changes a group (its settings or members), a new driver takes over: members already running
are adopted by the new scheduler, and requests still waiting in the old one move to the new one.
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING

import anyio

from gatewayd.config import Config, Group
from gatewayd.errors import BackendUnavailable
from gatewayd.gateway.core.scheduler import GroupScheduler, MemberState, Ticket

if TYPE_CHECKING:
    from gatewayd.gateway.backends.manager import BackendManager, ManagedBackend

log = logging.getLogger("gatewayd.backends")

#: a member idle this long gives way at once to a model waiting for the group (before its turn is over);
#: shorter gaps (a client between two requests) keep it loaded
IDLE_GRACE_SECONDS = 0.5


class _Waiter:
    __slots__ = ("error", "event", "granted", "regroup", "ticket")

    def __init__(self, ticket: Ticket) -> None:
        self.ticket = ticket
        self.event = anyio.Event()
        self.granted = False
        self.regroup = False
        self.error: BackendUnavailable | None = None


class GroupDriver:
    """One exclusive group's scheduler and the task that carries out its decisions."""

    def __init__(self, manager: BackendManager, group: Group, members: list[ManagedBackend]) -> None:
        self.manager = manager
        self.group = group
        self.key = _key(group, members)
        self.members = {unit.id: unit for unit in members}
        self.scheduler = GroupScheduler(
            {unit.id: unit.backend.max_concurrency for unit in members},
            capacity=group.max_running,
            max_wait_seconds=group.max_wait_seconds,
            idle_grace_seconds=min(IDLE_GRACE_SECONDS, group.max_wait_seconds),
        )
        now = manager.clock()
        for unit in members:
            if unit.running:
                self.scheduler.ready(unit.id, now)  # adopted, or kept across the reload
        self._waiters: dict[int, _Waiter] = {}
        self._poke = anyio.Event()
        self._retired = False
        #: model loads this driver started, for the metrics
        self.swaps = 0

    # -- requests -----------------------------------------------------------------------------------

    async def acquire(self, unit: ManagedBackend) -> bool:
        """Wait until the scheduler grants a request for ``unit``. True when granted; False when this driver
        was replaced meanwhile (the caller asks the new one). Raises BackendUnavailable when the member's
        start failed (now, or within its backoff)."""
        failed = unit.start_error()
        if failed is not None:
            raise failed
        waiter = _Waiter(self.scheduler.enqueue(unit.id, self.manager.clock()))
        self._waiters[waiter.ticket.id] = waiter
        self.poke()
        try:
            await waiter.event.wait()
        except BaseException:
            self._waiters.pop(waiter.ticket.id, None)
            if waiter.granted:
                self.release(unit)
            else:
                self.scheduler.cancel(waiter.ticket)
                self.poke()
            raise
        if waiter.error is not None:
            raise waiter.error
        return not waiter.regroup

    def release(self, unit: ManagedBackend) -> None:
        self.scheduler.released(unit.id, self.manager.clock())
        self.poke()

    def crashed(self, unit: ManagedBackend) -> None:
        if self.scheduler.state(unit.id) is not MemberState.STOPPED:
            self.scheduler.stopped(unit.id, self.manager.clock())
        self.poke()

    def may_sleep(self, unit: ManagedBackend) -> bool:
        """Idle check: nothing waits for it and nothing runs on it."""
        return (
            self.scheduler.state(unit.id) is MemberState.RUNNING
            and self.scheduler.in_flight(unit.id) == 0
            and self.scheduler.queue_depth(unit.id) == 0
        )

    async def evict(self, unit: ManagedBackend, reason: str) -> None:
        """Put an idle member to sleep (its idle_ttl passed)."""
        if not self.scheduler.evict_idle(unit.id):
            return
        await self._stop(unit, reason)

    def poke(self) -> None:
        self._poke.set()

    # -- the decision loop --------------------------------------------------------------------------

    async def run(self) -> None:
        """Carry out the scheduler's decisions until retired (then hand waiting requests over)."""
        while not self._retired:
            now = self.manager.clock()
            decision = self.scheduler.decide(now)
            for ticket in decision.grants:
                waiter = self._waiters.pop(ticket.id, None)
                if waiter is None:  # its client left in the same instant
                    self.scheduler.released(ticket.member, now)
                    continue
                waiter.granted = True
                waiter.event.set()
            for member in decision.start:
                self.swaps += 1
                self.manager.spawn(self._start, self.members[member])
            for member in decision.evict:
                others = ", ".join(m for m in self.scheduler.members if m != member)
                self.manager.spawn(
                    self._stop,
                    self.members[member],
                    f"evicted: group {self.group.name} needs room for {others}",
                )
            if decision.grants or decision.start or decision.evict:
                continue
            self._poke = anyio.Event()
            wake_at = decision.wake_at
            with anyio.move_on_after(max(wake_at - now, 0.0) if wake_at is not None else 3600.0):
                await self._poke.wait()

    def retire(self) -> None:
        """A reload replaced this group: waiting requests move to the new driver."""
        self._retired = True
        for waiter in list(self._waiters.values()):
            self.scheduler.cancel(waiter.ticket)
            waiter.regroup = True
            waiter.event.set()
        self._waiters.clear()
        self.poke()

    async def _start(self, unit: ManagedBackend) -> None:
        try:
            await unit.ensure_running()
        except BackendUnavailable as error:
            self.scheduler.stopped(unit.id, self.manager.clock())
            for waiter in [w for w in self._waiters.values() if w.ticket.member == unit.id]:
                self.scheduler.cancel(waiter.ticket)
                del self._waiters[waiter.ticket.id]
                waiter.error = error
                waiter.event.set()
        else:
            self.scheduler.ready(unit.id, self.manager.clock())
        self.poke()

    async def _stop(self, unit: ManagedBackend, reason: str) -> None:
        await unit.stop(reason)
        if self.scheduler.state(unit.id) is not MemberState.STOPPED:
            self.scheduler.stopped(unit.id, self.manager.clock())
        self.poke()

    # -- metrics ------------------------------------------------------------------------------------

    def queue_depth(self, member: str) -> int:
        return self.scheduler.queue_depth(member)

    def oldest_wait(self, member: str) -> float:
        return self.scheduler.oldest_wait(member, self.manager.clock())


def _key(group: Group, members: list[ManagedBackend]) -> tuple[object, ...]:
    return (group, tuple((unit.id, unit.backend.max_concurrency) for unit in members))


def build_groups(manager: BackendManager, config: Config) -> None:
    """Give every group member its driver: the same one as before when the group is unchanged."""
    drivers: dict[str, GroupDriver] = {}
    for group in config.groups:
        members = [
            unit for unit in manager.units.values() if unit.backend.group == group.name and not unit.retired
        ]
        old = manager.groups.get(group.name)
        if old is not None and old.key == _key(group, members):
            drivers[group.name] = old
            continue
        driver = GroupDriver(manager, group, members)
        drivers[group.name] = driver
        manager.spawn(driver.run)
    for name, old in manager.groups.items():
        if drivers.get(name) is not old:
            old.retire()
    for unit in manager.units.values():
        unit.group = drivers.get(unit.backend.group) if unit.backend.group is not None else None
    manager.groups = drivers
