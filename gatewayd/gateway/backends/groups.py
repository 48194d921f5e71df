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

from gatewayd.config import Backend, Config, Group
from gatewayd.errors import BackendUnavailable, HttpError
from gatewayd.gateway.backends.kinds import KINDS
from gatewayd.gateway.core.scheduler import GroupScheduler, MemberState, Ticket

if TYPE_CHECKING:
    from gatewayd.gateway.backends.manager import BackendManager, ManagedBackend

log = logging.getLogger("gatewayd.backends")

#: a member idle this long gives way at once to a model waiting for the group (before its turn is over);
#: shorter gaps (a client between two requests) keep it loaded
IDLE_GRACE_SECONDS = 0.5

#: the scheduler's cap on a member of an unbounded kind (vLLM): in effect none
UNBOUNDED_MEMBER_LIMIT = 1 << 30


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
            {unit.id: member_limit(unit.backend) for unit in members},
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
        #: set (and replaced) on every event the driver hears; ``stop_member`` waits on it
        self._changed = anyio.Event()
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
        self._changed.set()
        self._changed = anyio.Event()

    # -- the admin surface --------------------------------------------------------------------------

    async def start_member(self, unit: ManagedBackend) -> None:
        """Start ``unit`` outside any request and return once it is ready, the way a request for it does
        (a ticket the scheduler grants, released at once), but only into a free slot: it never evicts
        another member. A member already running (or draining) returns at once; one starting is waited for.

        Raises HttpError 409 with code "group_full" (naming the members that hold the slots) when the group
        has no free slot for it, or "backend_stopping" while it is being stopped; BackendUnavailable when
        the start fails or its backoff lasts. Cancellation withdraws the ticket; a start the scheduler
        already decided goes on in the manager."""
        state = self.scheduler.state(unit.id)
        if state in (MemberState.RUNNING, MemberState.DRAINING):
            return
        if state is MemberState.STOPPING:
            raise conflict(
                f"backend {unit.id} is being stopped: start it once it is sleeping", "backend_stopping"
            )
        if state is MemberState.STOPPED:
            self._check_room(unit)
        if await self.acquire(unit):
            self.release(unit)
            return
        group = unit.group  # a reload replaced this driver meanwhile
        if group is None:
            await unit.ensure_running(through_backoff=True)
        else:
            await group.start_member(unit)

    async def stop_member(self, unit: ManagedBackend, reason: str) -> None:
        """Stop ``unit`` through the scheduler, so that its slot is freed in step with its process. Waits
        first for a start in progress, for an eviction already under way, and until nothing is in flight
        on it or waiting for it (under steady traffic, until a gap). Requests that arrive afterwards start
        it again, as for any sleeping member. The stop itself runs in the manager: cancelling the caller
        leaves it to finish."""
        while not self._retired:
            state = self.scheduler.state(unit.id)
            if state is MemberState.STOPPED:
                return
            if state is MemberState.RUNNING and self.scheduler.evict_idle(unit.id):
                done = anyio.Event()
                self.manager.spawn(self._stop_and_set, unit, reason, done)
                await done.wait()
                return
            await self._changed.wait()
        group = unit.group  # a reload replaced this driver meanwhile
        if group is None:
            await unit.stop(reason)
        else:
            await group.stop_member(unit, reason)

    def _check_room(self, unit: ManagedBackend) -> None:
        """Raise group_full unless a slot is free for ``unit`` once the members already waiting for one
        (who take free slots first) have theirs."""
        scheduler = self.scheduler
        holders = [m for m in scheduler.members if scheduler.state(m) is not MemberState.STOPPED]
        waiting = [
            m
            for m in scheduler.members
            if m != unit.id and scheduler.state(m) is MemberState.STOPPED and scheduler.queue_depth(m)
        ]
        if len(holders) + len(waiting) < scheduler.capacity:
            return
        message = (
            f"group {self.group.name} has no free slot for backend {unit.id} "
            f"(max_running {scheduler.capacity}): {', '.join(holders) or 'none'} running"
        )
        if waiting:
            message += f", requests waiting for {', '.join(waiting)}"
        raise conflict(message + f"; stop {' or '.join(holders or waiting)} first", "group_full")

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
                self.manager.metrics.group_wait.observe(
                    (self.group.name, ticket.member), now - ticket.enqueued_at
                )
            for member in decision.start:
                self.swaps += 1
                self.manager.metrics.swaps.inc((self.group.name,))
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
            await unit.ensure_running(through_backoff=True)
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

    async def _stop_and_set(self, unit: ManagedBackend, reason: str, done: anyio.Event) -> None:
        try:
            await self._stop(unit, reason)
        finally:
            done.set()

    # -- metrics ------------------------------------------------------------------------------------

    def queue_depth(self, member: str) -> int:
        return self.scheduler.queue_depth(member)

    def oldest_wait(self, member: str) -> float:
        return self.scheduler.oldest_wait(member, self.manager.clock())


def conflict(message: str, code: str) -> HttpError:
    """A 409 refusal of an admin action (rendered in the OpenAI error shape with ``code``)."""
    return HttpError(message, status=409, code=code)


def _key(group: Group, members: list[ManagedBackend]) -> tuple[object, ...]:
    return (group, tuple((unit.id, member_limit(unit.backend)) for unit in members))


def member_limit(backend: Backend) -> int:
    """The requests a member may have in flight in its group's scheduler: its max_concurrency, else its
    kind's default (a limit learned later narrows it further at the backend's admission, not here)."""
    limit = backend.max_concurrency or KINDS[backend.kind].default_concurrency
    return limit or UNBOUNDED_MEMBER_LIMIT


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
