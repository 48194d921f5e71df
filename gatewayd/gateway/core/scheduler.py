"""Who runs next on an exclusive GPU group ("swap group"). Pure: events in, decisions out, clock passed in.

A swap group is a set of managed backends ("members") that share one GPU, of which at most ``capacity`` run
at once. Requests for a member wait here in a per-member FIFO queue as ``Ticket``\\ s. The caller feeds
events (``enqueue``, ``cancel``, ``ready``, ``stopped``, ``released``) and calls ``decide(now)`` after each
event and at ``Decision.wake_at``; the ``Decision`` says which tickets proceed, which members to start and
which idle members to stop. ``decide`` commits what it returns: a granted ticket counts as in flight on its
member until ``released``, a started member holds a slot from that moment, an evicted member holds its slot
until ``stopped`` (its GPU memory is not free before).

Member lifecycle (``MemberState``)::

    STOPPED --decide: start--> STARTING --ready()--> RUNNING --decide: yield--> DRAINING
       ^                                              |                             | (in flight reaches 0)
       |                                              +--decide: evict (idle)--> STOPPING <--+
       +------------------------- stopped() from any state but STOPPED -----------+

``ready()`` from STOPPED adopts a member found already running; the group may then be over capacity, and
``decide`` stops idle members (least recently used first) until it is not. ``stopped()`` from STARTING,
RUNNING or DRAINING reports a failed start or a crash.

Policy ``MODEL_AWARE`` (the default):

- A member that holds no slot and has waiting tickets is an *outsider*. It has waited behind other members
  since its oldest ticket arrived or since it last lost its slot, whichever is later (``waiting_since``).
  Outsiders take free slots longest-waiting first, so a member that just yielded its slot with a backlog
  of its own does not win it straight back.
- With no free slot, an outsider takes the slot of a RUNNING member that has been idle (nothing in flight,
  nobody waiting for it) for ``idle_grace_seconds``, least recently used first: nobody loses anything by
  that swap. (The grace keeps a model whose clients send request after request from losing the GPU in the
  instant between two of them.)
- Otherwise the residents keep serving: a RUNNING member is granted its waiting tickets, FIFO, up to its
  ``max_in_flight``. The model that is loaded is used before any swap.
- Starvation bound: once an outsider has waited ``max_wait_seconds`` and a resident has been RUNNING for
  at least ``max_wait_seconds`` (its turn), that resident yields. It is evicted at once when idle; else it
  becomes DRAINING (no new grants, its in-flight requests finish, nothing is killed) and is evicted when
  the last one is released. The victim is, among residents whose turn is over: an idle one, then one
  nobody waits for, then the one with the fewest requests in flight, then the least recently used. The
  turn, counted from ``ready``, keeps a freshly loaded model from being evicted before it serves.

  With one slot, two members, service time at most ``s``, load time ``L`` and unload time ``U``, and
  members whose ``max_in_flight`` covers their backlog, a ticket is granted within
  ``max_wait_seconds + 2 * (s + U + L)``: the worst case arrives just as its own member starts to drain,
  so it waits for that drain and swap, the other member's full turn, that member's drain and the swap
  back. A ticket arriving while the other member runs waits at most ``max_wait_seconds + s + U + L``.
  With ``n`` members contending for one slot, a ticket can wait for ``n - 1`` turns. Waiting behind the
  member's own requests (more tickets than its ``max_in_flight``) is plain queueing, not bounded here.

Policy ``FIFO`` (the baseline the benchmark compares against): tickets are granted strictly in arrival
order. When the oldest ticket's member is not running, it is started in a free slot or, failing that, the
least recently used idle member is evicted; nothing behind that ticket is granted meanwhile.

Illegal moves (``ready`` on a member that is not STARTING or STOPPED, ``stopped`` on a STOPPED one,
``released`` with nothing in flight) raise ``RuntimeError``; an unknown member raises ``ValueError``.
"""

from __future__ import annotations

import enum
import itertools
from collections import OrderedDict
from collections.abc import Iterator, Mapping
from dataclasses import dataclass


class Policy(enum.Enum):
    MODEL_AWARE = "model-aware"  # serve the loaded model first, bounded by max_wait_seconds
    FIFO = "fifo"  # strict arrival order; swap whenever the oldest ticket's model is not loaded


class MemberState(enum.Enum):
    STOPPED = "stopped"  # not running; holds no slot
    STARTING = "starting"  # decide() asked for a start; holds a slot; its tickets wait for ready()
    RUNNING = "running"  # serving; holds a slot; its tickets are granted up to its max_in_flight
    DRAINING = "draining"  # yields its slot: no new grants; evicted once nothing is in flight
    STOPPING = "stopping"  # decide() asked for an eviction; holds the slot until stopped()


@dataclass(frozen=True, slots=True)
class Ticket:
    """One waiting request. ``id`` is unique per scheduler and increases in arrival order."""

    id: int
    member: str
    enqueued_at: float


@dataclass(frozen=True, slots=True)
class Decision:
    """What the caller must do now. Already committed in the scheduler's state."""

    #: these requests may proceed; each is in flight on its member until ``released(member, now)``
    grants: tuple[Ticket, ...] = ()
    #: start these members; report ``ready`` (or ``stopped`` when the start fails)
    start: tuple[str, ...] = ()
    #: stop these idle members; report ``stopped`` once their memory is free
    evict: tuple[str, ...] = ()
    #: members that are yielding their slot and wait for their in-flight requests to finish
    draining: tuple[str, ...] = ()
    #: call ``decide`` again at this time even if no event arrives (a starvation bound falls due)
    wake_at: float | None = None

    @property
    def empty(self) -> bool:
        """Nothing for the caller to do."""
        return not (self.grants or self.start or self.evict)


class _Member:
    __slots__ = (
        "in_flight",
        "last_used",
        "left_at",
        "max_in_flight",
        "name",
        "queue",
        "serving_since",
        "state",
    )

    def __init__(self, name: str, max_in_flight: int) -> None:
        self.name = name
        self.max_in_flight = max_in_flight
        self.state = MemberState.STOPPED
        self.in_flight = 0
        self.last_used = float("-inf")
        self.serving_since = float("-inf")
        self.left_at = float("-inf")
        self.queue: OrderedDict[int, Ticket] = OrderedDict()

    @property
    def holds_slot(self) -> bool:
        return self.state is not MemberState.STOPPED

    @property
    def head(self) -> Ticket:
        return next(iter(self.queue.values()))

    @property
    def waiting_since(self) -> float:
        """Since when this member has waited behind others (meaningful for an outsider)."""
        return max(self.head.enqueued_at, self.left_at)

    def yield_key(self) -> tuple[bool, bool, int, float]:
        """Victim order: idle first, then nobody waiting, then fewest in flight, then least recently used."""
        return (self.in_flight > 0, bool(self.queue), self.in_flight, self.last_used)


class GroupScheduler:
    """The queue and the residency decisions of one swap group.

    ``members`` maps each member id to the number of requests it may have in flight (its backend's
    ``max_concurrency``): tickets beyond it wait here, where the starvation bound applies to them.
    ``capacity`` members may hold a slot at once."""

    def __init__(
        self,
        members: Mapping[str, int],
        *,
        capacity: int = 1,
        max_wait_seconds: float,
        policy: Policy = Policy.MODEL_AWARE,
        idle_grace_seconds: float = 0.0,
    ) -> None:
        if capacity < 1:
            raise ValueError(f"capacity must be at least 1, not {capacity}")
        if not max_wait_seconds > 0:
            # a zero turn would let a member be evicted in the very decision that finds it ready
            raise ValueError(f"max_wait_seconds must be positive, not {max_wait_seconds}")
        for name, limit in members.items():
            if limit < 1:
                raise ValueError(f"member {name!r}: max_in_flight must be at least 1, not {limit}")
        self.capacity = capacity
        self.max_wait_seconds = max_wait_seconds
        self.policy = policy
        self.idle_grace_seconds = idle_grace_seconds
        self._members = {name: _Member(name, limit) for name, limit in members.items()}
        self._ids = itertools.count(1)

    # --- events ----------------------------------------------------------------------------------------

    def enqueue(self, member: str, now: float) -> Ticket:
        """A request for ``member`` arrived; it waits until a ``Decision`` grants its ticket."""
        record = self._member(member)
        ticket = Ticket(next(self._ids), member, now)
        record.queue[ticket.id] = ticket
        return ticket

    def cancel(self, ticket: Ticket) -> bool:
        """Withdraw a waiting ticket (its client gave up). False when it was already granted or cancelled."""
        return self._member(ticket.member).queue.pop(ticket.id, None) is not None

    def ready(self, member: str, now: float) -> None:
        """``member`` has started and answers requests. From STOPPED: adopt a member already running."""
        record = self._member(member)
        if record.state not in (MemberState.STARTING, MemberState.STOPPED):
            raise RuntimeError(f"member {member!r} reported ready while {record.state.value}")
        record.state = MemberState.RUNNING
        record.serving_since = now
        record.last_used = now

    def stopped(self, member: str, now: float) -> None:
        """``member``'s process is gone (evicted, failed to start, or crashed); its slot is free.

        Its requests still in flight stay counted until ``released``. Its waiting tickets stay queued: the
        caller decides whether they wait for a restart or are cancelled (e.g. after a failed start)."""
        record = self._member(member)
        if record.state is MemberState.STOPPED:
            raise RuntimeError(f"member {member!r} reported stopped while already stopped")
        record.state = MemberState.STOPPED
        record.left_at = now

    def released(self, member: str, now: float) -> None:
        """A granted request on ``member`` finished (successfully or not)."""
        record = self._member(member)
        if record.in_flight == 0:
            raise RuntimeError(f"member {member!r} released a request with none in flight")
        record.in_flight -= 1
        record.last_used = now

    def evict_idle(self, member: str) -> bool:
        """The caller wants to put ``member`` to sleep (its idle time ran out): True, and it is STOPPING
        (report ``stopped``), when it is RUNNING with nothing in flight and nothing waiting; else False."""
        record = self._member(member)
        if record.state is not MemberState.RUNNING or record.in_flight or record.queue:
            return False
        record.state = MemberState.STOPPING
        return True

    # --- metrics and state -----------------------------------------------------------------------------

    @property
    def members(self) -> tuple[str, ...]:
        return tuple(self._members)

    def state(self, member: str) -> MemberState:
        return self._member(member).state

    def in_flight(self, member: str) -> int:
        return self._member(member).in_flight

    def queue_depth(self, member: str) -> int:
        """Tickets waiting for ``member`` (granted ones are not counted)."""
        return len(self._member(member).queue)

    def oldest_wait(self, member: str, now: float) -> float:
        """Seconds the oldest waiting ticket of ``member`` has waited; 0.0 when none waits."""
        record = self._member(member)
        return now - record.head.enqueued_at if record.queue else 0.0

    def next_deadline(self, now: float) -> float | None:
        """The earliest time after ``now`` at which ``decide`` may act without a new event, or None.

        Only the starvation bound is time-driven: an outsider's wait or a resident's turn reaching
        ``max_wait_seconds``. A deadline may pass without anything to do; calling ``decide`` then is
        harmless."""
        if self.policy is Policy.FIFO:
            return None
        outsiders = list(self._outsiders())
        if not outsiders:
            return None
        times = [o.waiting_since for o in outsiders]
        times += [m.serving_since for m in self._members.values() if m.state is MemberState.RUNNING]
        due = [t + self.max_wait_seconds for t in times if t + self.max_wait_seconds > now]
        due += [
            m.last_used + self.idle_grace_seconds
            for m in self._running()
            if m.in_flight == 0 and not m.queue and m.last_used + self.idle_grace_seconds > now
        ]
        return min(due, default=None)

    # --- the decision ----------------------------------------------------------------------------------

    def decide(self, now: float) -> Decision:
        """Everything that can happen at ``now``, committed. Calling it again at once returns an empty
        Decision (until an event or ``wake_at``)."""
        grants: list[Ticket] = []
        start: list[str] = []
        evict: list[str] = []
        for member in self._members.values():
            if member.state is MemberState.DRAINING and member.in_flight == 0:
                self._evict(member, evict)
        self._fit_capacity(evict)
        if self.policy is Policy.FIFO:
            self._decide_fifo(grants, start, evict)
        else:
            self._decide_model_aware(now, start, evict)
            for member in self._members.values():
                if member.state is MemberState.RUNNING:
                    self._grant(member, grants)
        draining = tuple(m.name for m in self._members.values() if m.state is MemberState.DRAINING)
        return Decision(tuple(grants), tuple(start), tuple(evict), draining, self.next_deadline(now))

    def _decide_model_aware(self, now: float, start: list[str], evict: list[str]) -> None:
        outsiders = sorted(self._outsiders(), key=lambda m: (m.waiting_since, m.head.id))
        if not outsiders and self._occupied() <= self.capacity:
            for member in self._members.values():
                if member.state is MemberState.DRAINING:
                    member.state = MemberState.RUNNING  # whoever needed its slot gave up
        free = self.capacity - self._occupied()
        coming = self._slots_coming()
        for outsider in outsiders:
            if free > 0:
                self._start(outsider, start)
                free -= 1
                continue
            if coming > 0:
                coming -= 1  # a slot is already on its way for this outsider
                continue
            unwanted = [m for m in self._idle(now)]
            if unwanted:
                self._evict(min(unwanted, key=lambda m: m.last_used), evict)
                continue
            if now - outsider.waiting_since < self.max_wait_seconds:
                break  # later outsiders are younger still
            turn_over = [m for m in self._running() if now - m.serving_since >= self.max_wait_seconds]
            if not turn_over:
                break
            self._make_room(min(turn_over, key=_Member.yield_key), evict)

    def _decide_fifo(self, grants: list[Ticket], start: list[str], evict: list[str]) -> None:
        while True:
            heads = [m for m in self._members.values() if m.queue]
            if not heads:
                return
            member = min(heads, key=lambda m: m.head.id)
            if member.state is MemberState.RUNNING and member.in_flight < member.max_in_flight:
                grants.append(self._pop(member))
                continue
            if member.state is MemberState.STOPPED:
                if self._occupied() < self.capacity:
                    self._start(member, start)
                elif self._slots_coming() == 0:
                    idle = [m for m in self._running() if m.in_flight == 0]
                    if idle:
                        self._evict(min(idle, key=lambda m: m.last_used), evict)
            return

    def _fit_capacity(self, evict: list[str]) -> None:
        """After an adoption the group may hold more members than it has slots: make room."""
        excess = self._occupied() - self.capacity - self._slots_coming()
        for _ in range(excess):
            running = list(self._running())
            if not running:
                return
            self._make_room(min(running, key=_Member.yield_key), evict)

    # --- helpers ---------------------------------------------------------------------------------------

    def _member(self, member: str) -> _Member:
        try:
            return self._members[member]
        except KeyError:
            raise ValueError(f"{member!r} is not a member of this group") from None

    def _outsiders(self) -> Iterator[_Member]:
        return (m for m in self._members.values() if m.state is MemberState.STOPPED and m.queue)

    def _idle(self, now: float) -> Iterator[_Member]:
        """RUNNING members nobody uses or waits for, idle for at least ``idle_grace_seconds``."""
        return (
            m
            for m in self._running()
            if m.in_flight == 0 and not m.queue and now - m.last_used >= self.idle_grace_seconds
        )

    def _running(self) -> Iterator[_Member]:
        return (m for m in self._members.values() if m.state is MemberState.RUNNING)

    def _occupied(self) -> int:
        return sum(1 for m in self._members.values() if m.holds_slot)

    def _slots_coming(self) -> int:
        leaving = (MemberState.DRAINING, MemberState.STOPPING)
        return sum(1 for m in self._members.values() if m.state in leaving)

    def _grant(self, member: _Member, grants: list[Ticket]) -> None:
        while member.queue and member.in_flight < member.max_in_flight:
            grants.append(self._pop(member))

    def _pop(self, member: _Member) -> Ticket:
        _, ticket = member.queue.popitem(last=False)
        member.in_flight += 1
        return ticket

    def _start(self, member: _Member, start: list[str]) -> None:
        member.state = MemberState.STARTING
        start.append(member.name)

    def _evict(self, member: _Member, evict: list[str]) -> None:
        member.state = MemberState.STOPPING
        evict.append(member.name)

    def _make_room(self, victim: _Member, evict: list[str]) -> None:
        if victim.in_flight == 0:
            self._evict(victim, evict)
        else:
            victim.state = MemberState.DRAINING
