"""Ordering a request's candidate backends: health, free capacity, route order, weight, preference."""

from __future__ import annotations

from collections.abc import Callable, Mapping

from gatewayd.gateway.core.health import BackendState
from gatewayd.gateway.core.inventory import Target
from gatewayd.gateway.core.routing import Load, Preference, order_targets


def load(
    state: BackendState = BackendState.UP,
    *,
    in_flight: int = 0,
    max_concurrency: int | None = 4,
    weight: float = 1.0,
    idle_slots: int | None = None,
) -> Load:
    return Load(
        state=state,
        in_flight=in_flight,
        max_concurrency=max_concurrency,
        weight=weight,
        idle_slots=idle_slots,
    )


def loads(table: Mapping[str, Load]) -> Callable[[str], Load]:
    return table.__getitem__


def backends(ordered: list[Target]) -> list[str]:
    return [target.backend for target in ordered]


A, B, C = Target("a", "m"), Target("b", "m"), Target("c", "m")


def test_down_backends_are_left_out() -> None:
    ordered, preference = order_targets(
        [A, B], loads({"a": load(BackendState.DOWN), "b": load(BackendState.UP)})
    )
    assert backends(ordered) == ["b"]
    assert preference is None


def test_every_candidate_down_gives_nothing() -> None:
    ordered, _ = order_targets([A], loads({"a": load(BackendState.DOWN)}))
    assert ordered == []


def test_up_and_unknown_come_before_degraded() -> None:
    table = {"a": load(BackendState.DEGRADED), "b": load(BackendState.UNKNOWN), "c": load(BackendState.UP)}
    ordered, _ = order_targets([A, B, C], loads(table))
    assert backends(ordered)[-1] == "a"
    assert set(backends(ordered)[:2]) == {"b", "c"}


def test_a_backend_with_a_free_slot_comes_before_a_full_one() -> None:
    table = {"a": load(in_flight=2, max_concurrency=2), "b": load(in_flight=3, max_concurrency=4)}
    ordered, _ = order_targets([A, B], loads(table))
    assert backends(ordered) == ["b", "a"]


def test_route_order_wins_over_free_share_when_both_have_room() -> None:
    primary = Target("a", "m", priority=0)
    fallback = Target("b", "m", priority=1)
    table = {"a": load(in_flight=3, max_concurrency=4), "b": load(in_flight=0, max_concurrency=4)}
    ordered, _ = order_targets([fallback, primary], loads(table))
    assert backends(ordered) == ["a", "b"]


def test_the_larger_free_share_wins_among_equals() -> None:
    table = {"a": load(in_flight=3, max_concurrency=4), "b": load(in_flight=1, max_concurrency=4)}
    ordered, _ = order_targets([A, B], loads(table))
    assert backends(ordered) == ["b", "a"]


def test_weight_breaks_ties() -> None:
    table = {"a": load(weight=1.0), "b": load(weight=2.0)}
    ordered, _ = order_targets([A, B], loads(table))
    assert backends(ordered) == ["b", "a"]


def test_idle_slots_reported_by_the_backend_limit_its_free_capacity() -> None:
    assert load(in_flight=0, max_concurrency=4, idle_slots=1).free == 1
    assert load(in_flight=3, max_concurrency=4, idle_slots=4).free == 1
    assert load(in_flight=5, max_concurrency=4).free == 0
    table = {"a": load(idle_slots=0), "b": load(in_flight=2)}
    ordered, _ = order_targets([A, B], loads(table))
    assert backends(ordered) == ["b", "a"]


def test_each_backend_load_is_read_once_per_decision() -> None:
    reads: list[str] = []

    def load_of(backend: str) -> Load:
        reads.append(backend)
        return load()

    order_targets([A, Target("a", "m2"), B], load_of, preferred="a")
    assert sorted(reads) == ["a", "b"]


def test_an_honoured_preference_goes_first_even_when_it_is_a_fallback() -> None:
    primary = Target("a", "m", priority=0)
    fallback = Target("b", "m", priority=1)
    ordered, preference = order_targets([primary, fallback], loads({"a": load(), "b": load()}), preferred="b")
    assert backends(ordered) == ["b", "a"]
    assert preference is Preference.HONOURED


def test_a_saturated_preference_is_passed_over_and_said_so() -> None:
    table = {"a": load(), "b": load(in_flight=4, max_concurrency=4)}
    ordered, preference = order_targets([A, B], loads(table), preferred="b")
    assert backends(ordered) == ["a", "b"]
    assert preference is Preference.SATURATED


def test_a_down_preference_is_passed_over_and_said_so() -> None:
    table = {"a": load(), "b": load(BackendState.DOWN)}
    ordered, preference = order_targets([A, B], loads(table), preferred="b")
    assert backends(ordered) == ["a"]
    assert preference is Preference.DOWN


def test_a_preference_for_a_backend_that_does_not_serve_the_model_is_reported() -> None:
    ordered, preference = order_targets([A], loads({"a": load()}), preferred="zzz")
    assert backends(ordered) == ["a"]
    assert preference is Preference.NOT_A_CANDIDATE


def test_an_unbounded_backend_always_has_room_unless_its_own_slots_say_otherwise() -> None:
    assert load(in_flight=1000, max_concurrency=None).free > 0
    assert load(in_flight=3, max_concurrency=None, idle_slots=0).free == 0
    # unbounded replicas still share the load: the one with fewer requests in flight goes first
    table = {"a": load(in_flight=5, max_concurrency=None), "b": load(in_flight=2, max_concurrency=None)}
    ordered, _ = order_targets([A, B], loads(table))
    assert backends(ordered) == ["b", "a"]
    # an idle one counts as all free, ahead of a bounded one with a slot taken
    table = {"a": load(in_flight=1, max_concurrency=4), "b": load(in_flight=0, max_concurrency=None)}
    ordered, _ = order_targets([A, B], loads(table))
    assert backends(ordered) == ["b", "a"]
    _, preference = order_targets(
        [A, B], loads({**table, "b": load(in_flight=50, max_concurrency=None)}), preferred="b"
    )
    assert preference is Preference.HONOURED
