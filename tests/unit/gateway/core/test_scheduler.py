"""The swap-group scheduler, driven by an injected clock and by a small discrete-event simulation."""

from __future__ import annotations

import heapq
import itertools
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from gatewayd.gateway.core.scheduler import Decision, GroupScheduler, MemberState, Policy, Ticket


def group(
    members: dict[str, int] | None = None,
    *,
    capacity: int = 1,
    max_wait: float = 10.0,
    policy: Policy = Policy.MODEL_AWARE,
) -> GroupScheduler:
    return GroupScheduler(
        members if members is not None else {"a": 1, "b": 1},
        capacity=capacity,
        max_wait_seconds=max_wait,
        policy=policy,
    )


def running(scheduler: GroupScheduler, member: str, now: float = 0.0) -> None:
    """Bring ``member`` up the way a caller would: a ticket, the start decision, ready, and its release."""
    ticket = scheduler.enqueue(member, now)
    assert member in scheduler.decide(now).start
    scheduler.ready(member, now)
    assert scheduler.decide(now).grants == (ticket,)
    scheduler.released(member, now)


@dataclass
class Sim:
    """Drives a scheduler the way the gateway will: an event, then ``decide`` at that event's time, then the
    decision carried out (requests served, members loaded and unloaded), with virtual time."""

    scheduler: GroupScheduler
    service_seconds: Callable[[Ticket], float]
    load_seconds: float = 2.0
    unload_seconds: float = 0.5
    now: float = 0.0
    tickets: list[Ticket] = field(default_factory=list)
    cancelled: set[int] = field(default_factory=set)
    granted_at: dict[int, float] = field(default_factory=dict)
    grant_order: list[Ticket] = field(default_factory=list)
    starts: int = 0
    _events: list[tuple[float, int, str, object]] = field(default_factory=list)
    _seq: itertools.count[int] = field(default_factory=itertools.count)
    _wakes: set[float] = field(default_factory=set)

    def at(self, time: float, kind: str, payload: object = None) -> None:
        heapq.heappush(self._events, (time, next(self._seq), kind, payload))

    def run(self, max_events: int = 200_000) -> None:
        for _ in range(max_events):
            if not self._events:
                return
            self.now, _, kind, payload = heapq.heappop(self._events)
            self._apply(kind, payload)
            self._carry_out(self.scheduler.decide(self.now))
        raise AssertionError("the simulation did not settle")

    def _apply(self, kind: str, payload: object) -> None:
        s = self.scheduler
        if kind == "arrive":
            assert isinstance(payload, str)
            self.tickets.append(s.enqueue(payload, self.now))
        elif kind == "cancel":
            assert isinstance(payload, int)
            if self.tickets:
                ticket = self.tickets[payload % len(self.tickets)]
                if s.cancel(ticket):
                    self.cancelled.add(ticket.id)
        elif kind == "done":
            assert isinstance(payload, str)
            s.released(payload, self.now)
        elif kind == "ready":
            assert isinstance(payload, str)
            s.ready(payload, self.now)
        elif kind == "stopped":
            assert isinstance(payload, str)
            s.stopped(payload, self.now)
        else:
            self._wakes.discard(self.now)

    def _carry_out(self, decision: Decision) -> None:
        s = self.scheduler
        for member in decision.evict:
            assert s.in_flight(member) == 0, f"evicted {member} with requests in flight"
            self.at(self.now + self.unload_seconds, "stopped", member)
        for member in decision.start:
            self.starts += 1
            self.at(self.now + self.load_seconds, "ready", member)
        for ticket in decision.grants:
            assert s.state(ticket.member) is MemberState.RUNNING
            self.granted_at[ticket.id] = self.now
            self.grant_order.append(ticket)
            self.at(self.now + self.service_seconds(ticket), "done", ticket.member)
        holding = [m for m in s.members if s.state(m) is not MemberState.STOPPED]
        assert len(holding) <= s.capacity
        assert decision.wake_at is None or decision.wake_at > self.now
        if decision.wake_at is not None and decision.wake_at not in self._wakes:
            self._wakes.add(decision.wake_at)
            self.at(decision.wake_at, "wake")

    def waits(self, member: str) -> list[float]:
        return [self.granted_at[t.id] - t.enqueued_at for t in self.tickets if t.member == member]


def alternating(policy: Policy, *, max_wait: float, service: float, arrivals: int) -> Sim:
    sim = Sim(group({"a": 16, "b": 16}, max_wait=max_wait, policy=policy), lambda _: service)
    for index in range(arrivals):
        sim.at(index * 0.5, "arrive", "ab"[index % 2])
    sim.run()
    return sim


# --- basic moves -----------------------------------------------------------------------------------------


def test_an_idle_group_starts_the_member_asked_for_and_grants_once_it_is_ready() -> None:
    s = group()
    ticket = s.enqueue("a", 0.0)
    decision = s.decide(0.0)
    assert decision.start == ("a",)
    assert decision.grants == ()
    assert s.state("a") is MemberState.STARTING
    assert s.decide(0.5).empty
    s.ready("a", 2.0)
    assert s.decide(2.0).grants == (ticket,)
    assert s.in_flight("a") == 1
    assert s.queue_depth("a") == 0


def test_tickets_of_one_member_are_granted_in_arrival_order() -> None:
    s = group({"a": 2, "b": 1})
    running(s, "a")
    tickets = [s.enqueue("a", float(t)) for t in range(1, 6)]
    assert s.decide(5.0).grants == tuple(tickets[:2])
    s.released("a", 6.0)
    assert s.decide(6.0).grants == (tickets[2],)
    s.released("a", 7.0)
    s.released("a", 7.0)
    assert s.decide(7.0).grants == tuple(tickets[3:])


def test_the_running_member_is_served_before_an_older_ticket_of_another() -> None:
    s = group({"a": 4, "b": 4}, max_wait=10.0)
    running(s, "a")
    s.enqueue("a", 0.5)
    busy = s.decide(0.5)
    s.enqueue("b", 1.0)
    later_a = s.enqueue("a", 2.0)
    decision = s.decide(2.0)
    assert len(busy.grants) == 1
    assert decision.grants == (later_a,)
    assert decision.start == ()
    assert decision.evict == ()
    assert s.state("b") is MemberState.STOPPED
    assert decision.wake_at == pytest.approx(10.0)  # a's turn is over at 0 + 10; b's wait at 1 + 10


def test_a_busy_member_yields_once_another_waited_max_wait_and_is_evicted_only_when_idle() -> None:
    s = group({"a": 4, "b": 4}, max_wait=10.0)
    running(s, "a")
    s.enqueue("a", 1.0)
    assert len(s.decide(1.0).grants) == 1
    s.enqueue("b", 2.0)
    assert s.decide(11.9).empty
    late_a = s.enqueue("a", 12.0)
    decision = s.decide(12.0)
    assert decision.grants == ()  # no new admissions for a
    assert decision.evict == ()  # a request is still in flight on it
    assert decision.draining == ("a",)
    assert s.state("a") is MemberState.DRAINING
    s.released("a", 13.0)
    assert s.decide(13.0).evict == ("a",)
    s.stopped("a", 13.5)
    assert s.decide(13.5).start == ("b",)
    assert s.queue_depth("a") == 1
    assert s.oldest_wait("a", 13.5) == pytest.approx(1.5)
    assert late_a.id not in {t.id for t in s.decide(14.0).grants}


def test_a_member_nobody_waits_for_is_evicted_as_soon_as_it_is_idle() -> None:
    s = group({"a": 1, "b": 1})
    running(s, "a", now=0.0)
    s.enqueue("a", 1.0)
    s.decide(1.0)
    s.enqueue("b", 1.5)
    assert s.decide(1.5).empty  # a is busy; b has not waited max_wait
    s.released("a", 2.0)
    assert s.decide(2.0).evict == ("a",)


def test_a_member_that_just_yielded_with_a_backlog_does_not_win_the_slot_back() -> None:
    s = group({"a": 1, "b": 1}, max_wait=10.0)
    running(s, "a", now=0.0)
    backlog = [s.enqueue("a", 0.0) for _ in range(3)]
    assert s.decide(0.0).grants == (backlog[0],)
    s.enqueue("b", 1.0)
    assert s.decide(11.0).draining == ("a",)
    s.released("a", 12.0)
    assert s.decide(12.0).evict == ("a",)
    s.stopped("a", 12.5)
    assert s.decide(12.5).start == ("b",)  # a's oldest ticket is older, but it waited behind itself


def test_a_freshly_loaded_member_serves_its_turn_before_it_yields() -> None:
    s = group({"a": 1, "b": 1}, max_wait=1.0)
    a = s.enqueue("a", 0.0)
    s.decide(0.0)
    s.enqueue("b", 0.5)
    s.ready("a", 3.0)  # b has waited 2.5 s, beyond max_wait, while a loaded
    decision = s.decide(3.0)
    assert decision.grants == (a,)
    assert decision.evict == ()
    assert decision.draining == ()
    assert decision.wake_at == pytest.approx(4.0)
    assert s.decide(4.0).draining == ("a",)


def test_capacity_two_runs_two_members_without_eviction() -> None:
    s = group({"a": 1, "b": 1}, capacity=2)
    ta, tb = s.enqueue("a", 0.0), s.enqueue("b", 0.1)
    assert s.decide(0.1).start == ("a", "b")
    s.ready("a", 1.0)
    s.ready("b", 1.0)
    decision = s.decide(1.0)
    assert decision.grants == (ta, tb)
    assert decision.evict == ()
    s.released("a", 2.0)
    s.released("b", 2.0)
    more = [s.enqueue(m, 3.0 + i) for i, m in enumerate("abab")]
    assert s.decide(5.0).grants == (more[0], more[1])
    assert s.decide(5.0).evict == ()


def test_the_least_recently_used_idle_member_is_evicted() -> None:
    s = group({"a": 1, "b": 1, "c": 1}, capacity=2)
    running(s, "a", now=0.0)
    running(s, "b", now=0.0)
    for member, released_at in (("a", 5.0), ("b", 3.0)):
        s.enqueue(member, released_at - 1)
        s.decide(released_at - 1)
        s.released(member, released_at)
    s.enqueue("c", 6.0)
    assert s.decide(6.0).evict == ("b",)
    assert s.state("a") is MemberState.RUNNING


def test_a_member_with_requests_in_flight_is_never_evicted() -> None:
    s = group({"a": 2, "b": 1}, max_wait=1.0)
    running(s, "a")
    s.enqueue("a", 0.0)
    s.enqueue("a", 0.0)
    s.decide(0.0)
    s.enqueue("b", 0.0)
    for now in (0.5, 1.0, 5.0, 50.0):
        assert s.decide(now).evict == ()
        assert s.in_flight("a") == 2
    s.released("a", 60.0)
    assert s.decide(60.0).evict == ()
    s.released("a", 61.0)
    assert s.decide(61.0).evict == ("a",)


def test_cancel_removes_a_waiting_ticket_only() -> None:
    s = group()
    first, second = s.enqueue("a", 0.0), s.enqueue("a", 1.0)
    assert s.queue_depth("a") == 2
    assert s.cancel(first)
    assert not s.cancel(first)
    assert s.queue_depth("a") == 1
    assert s.oldest_wait("a", 3.0) == pytest.approx(2.0)
    s.decide(1.0)
    s.ready("a", 2.0)
    assert s.decide(2.0).grants == (second,)
    assert not s.cancel(second)  # already granted: the caller releases it instead


def test_draining_is_called_off_when_the_member_waiting_for_the_slot_gives_up() -> None:
    s = group({"a": 1, "b": 1}, max_wait=1.0)
    running(s, "a")
    s.enqueue("a", 0.0)
    s.decide(0.0)
    b = s.enqueue("b", 0.0)
    assert s.decide(2.0).draining == ("a",)
    s.cancel(b)
    s.decide(2.5)
    assert s.state("a") is MemberState.RUNNING


def test_decide_is_a_fixed_point_until_the_next_event() -> None:
    s = group({"a": 1, "b": 1, "c": 1}, capacity=2)
    for member in "abcab":
        s.enqueue(member, 0.0)
    assert not s.decide(0.0).empty
    assert s.decide(0.0).empty


def test_wake_at_is_when_the_starvation_bound_falls_due() -> None:
    s = group({"a": 1, "b": 1}, max_wait=10.0)
    running(s, "a", now=0.0)
    s.enqueue("a", 0.0)
    s.decide(0.0)
    s.enqueue("b", 4.0)
    decision = s.decide(4.0)
    assert decision.wake_at == pytest.approx(10.0)  # a's turn ends; b is not yet overdue
    assert s.decide(10.0).wake_at == pytest.approx(14.0)
    assert s.next_deadline(14.0) is None  # both bounds are due now: nothing left to wait for
    assert s.decide(14.0).draining == ("a",)


def test_an_adopted_member_over_capacity_is_stopped() -> None:
    s = group({"a": 1, "b": 1})
    s.ready("a", 0.0)
    s.ready("b", 1.0)
    assert s.decide(1.0).evict == ("a",)
    assert s.decide(1.0).empty


def test_illegal_moves_are_refused_with_the_state_named() -> None:
    s = group()
    with pytest.raises(ValueError, match="'z' is not a member"):
        s.enqueue("z", 0.0)
    with pytest.raises(RuntimeError, match="already stopped"):
        s.stopped("a", 0.0)
    with pytest.raises(RuntimeError, match="none in flight"):
        s.released("a", 0.0)
    running(s, "a")
    with pytest.raises(RuntimeError, match="ready while running"):
        s.ready("a", 0.0)
    with pytest.raises(ValueError, match="max_wait_seconds must be positive"):
        group(max_wait=0.0)
    with pytest.raises(ValueError, match="capacity"):
        group(capacity=0)


def test_a_failed_start_frees_the_slot_and_keeps_the_tickets() -> None:
    s = group()
    ticket = s.enqueue("a", 0.0)
    s.decide(0.0)
    s.stopped("a", 1.0)
    assert s.queue_depth("a") == 1
    assert s.decide(1.0).start == ("a",)
    s.ready("a", 2.0)
    assert s.decide(2.0).grants == (ticket,)


# --- FIFO baseline ---------------------------------------------------------------------------------------


def test_fifo_swaps_whenever_the_oldest_ticket_belongs_to_another_member() -> None:
    s = group({"a": 4, "b": 4}, policy=Policy.FIFO)
    running(s, "a")
    a1, b1, a2 = s.enqueue("a", 1.0), s.enqueue("b", 2.0), s.enqueue("a", 3.0)
    assert s.decide(3.0).grants == (a1,)  # a2 waits behind b1 although a is loaded
    s.released("a", 4.0)
    assert s.decide(4.0).evict == ("a",)
    s.stopped("a", 4.0)
    assert s.decide(4.0).start == ("b",)
    s.ready("b", 5.0)
    assert s.decide(5.0).grants == (b1,)
    assert a2.id not in {t.id for t in s.decide(5.0).grants}
    assert s.next_deadline(5.0) is None


# --- simulations -----------------------------------------------------------------------------------------


def test_alternating_models_wait_within_the_bound_with_far_fewer_swaps_than_fifo() -> None:
    max_wait, service = 10.0, 1.5
    aware = alternating(Policy.MODEL_AWARE, max_wait=max_wait, service=service, arrivals=400)
    fifo = alternating(Policy.FIFO, max_wait=max_wait, service=service, arrivals=400)
    swap = aware.unload_seconds + aware.load_seconds
    bound = max_wait + 2 * (service + swap)
    for member in "ab":
        waits = aware.waits(member)
        assert len(waits) == 200
        assert max(waits) <= bound + 1e-9, (member, max(waits), bound)
    assert len(fifo.granted_at) == 400
    assert aware.starts * 5 < fifo.starts, (aware.starts, fifo.starts)


@st.composite
def workloads(draw: st.DrawFn) -> tuple[GroupScheduler, Sim, list[tuple[float, str, object]]]:
    names = ["a", "b", "c", "d"][: draw(st.integers(2, 4))]
    members = {name: draw(st.integers(1, 3)) for name in names}
    scheduler = GroupScheduler(
        members,
        capacity=draw(st.integers(1, 2)),
        max_wait_seconds=draw(st.floats(0.01, 20.0)),
        policy=draw(st.sampled_from(Policy)),
    )
    services: Sequence[float] = draw(st.lists(st.floats(0.0, 5.0), min_size=1, max_size=5))
    sim = Sim(
        scheduler,
        lambda ticket: services[ticket.id % len(services)],
        load_seconds=draw(st.floats(0.0, 3.0)),
        unload_seconds=draw(st.floats(0.0, 1.0)),
    )
    steps = draw(
        st.lists(
            st.tuples(
                st.floats(0.0, 4.0),
                st.sampled_from(["arrive", "arrive", "arrive", "cancel"]),
                st.integers(0, 50),
            ),
            max_size=40,
        )
    )
    now = 0.0
    events: list[tuple[float, str, object]] = []
    for gap, kind, index in steps:
        now += gap
        events.append((now, kind, names[index % len(names)] if kind == "arrive" else index))
    return scheduler, sim, events


@settings(max_examples=150, deadline=None)
@given(workloads())
def test_every_ticket_not_cancelled_is_granted_once_and_in_order_within_its_member(
    workload: tuple[GroupScheduler, Sim, list[tuple[float, str, object]]],
) -> None:
    scheduler, sim, events = workload
    for time, kind, payload in events:
        sim.at(time, kind, payload)
    sim.run()
    granted = [t.id for t in sim.grant_order]
    assert len(granted) == len(set(granted))
    assert set(granted) | sim.cancelled == {t.id for t in sim.tickets}
    assert not set(granted) & sim.cancelled
    for member in scheduler.members:
        ids = [t.id for t in sim.grant_order if t.member == member]
        assert ids == sorted(ids)
        assert scheduler.queue_depth(member) == 0
        assert scheduler.in_flight(member) == 0


def test_an_idle_member_keeps_its_slot_through_the_idle_grace_then_gives_way() -> None:
    scheduler = GroupScheduler({"a": 1, "b": 1}, capacity=1, max_wait_seconds=10.0, idle_grace_seconds=0.5)
    running(scheduler, "a", now=0.0)
    scheduler.enqueue("b", 0.1)
    decision = scheduler.decide(0.1)
    assert decision.evict == ()  # a was used 0.1 s ago: its clients may be between two requests
    assert decision.wake_at == pytest.approx(0.5)
    assert scheduler.decide(0.5).evict == ("a",)
    scheduler.stopped("a", 0.6)
    assert scheduler.decide(0.6).start == ("b",)
