"""The model inventory: routes, declared and discovered models, Ollama's ":latest" aliases, listings."""

from __future__ import annotations

from gatewayd.config import Route, RouteTarget
from gatewayd.gateway.core.inventory import Inventory, Target


def inventory(
    *,
    routes: tuple[Route, ...] = (),
    order: tuple[str, ...] = ("a", "b"),
    declared: dict[str, tuple[str, ...] | None] | None = None,
) -> Inventory:
    return Inventory(routes=routes, backend_order=order, declared=declared or dict.fromkeys(order, None))


def test_declared_models_are_served_in_backend_order() -> None:
    inv = inventory(declared={"a": ("m", "x"), "b": ("m",)})
    assert inv.targets("m") == (Target("a", "m"), Target("b", "m"))
    assert inv.targets("x") == (Target("a", "x"),)
    assert inv.targets("nothing") == ()


def test_discovered_models_count_only_for_backends_without_declared_models() -> None:
    inv = inventory(declared={"a": ("m",), "b": None})
    assert inv.set_discovered("a", ["other"]) is False
    assert inv.targets("other") == ()
    assert inv.set_discovered("b", ["other", "m"]) is True
    assert inv.targets("other") == (Target("b", "other"),)
    assert inv.targets("m") == (Target("a", "m"), Target("b", "m"))
    assert inv.served_by("a") == ("m",)
    assert inv.served_by("b") == ("other", "m")


def test_the_same_discovery_twice_changes_nothing() -> None:
    inv = inventory()
    assert inv.set_discovered("a", ["m", "m"]) is True
    assert inv.set_discovered("a", ["m"]) is False
    assert inv.served_by("a") == ("m",)


def test_a_model_that_disappears_is_no_longer_served() -> None:
    inv = inventory()
    inv.set_discovered("a", ["m"])
    inv.set_discovered("a", [])
    assert inv.targets("m") == ()


def test_routes_map_a_public_name_to_ordered_backend_models() -> None:
    route = Route(
        model="chat",
        targets=(RouteTarget(backend="b", model="big-model"), RouteTarget(backend="a")),
    )
    inv = inventory(routes=(route,), declared={"a": ("chat",), "b": ("big-model",)})
    assert inv.targets("chat") == (Target("b", "big-model", 0), Target("a", "chat", 1))


def test_a_route_overrides_a_served_model_of_the_same_name() -> None:
    route = Route(model="m", targets=(RouteTarget(backend="b", model="m2"),))
    inv = inventory(routes=(route,), declared={"a": ("m",), "b": ("m2",)})
    assert inv.targets("m") == (Target("b", "m2", 0),)


def test_latest_tag_and_bare_name_are_one_model() -> None:
    inv = inventory(declared={"a": ("llama3:latest", "qwen"), "b": ("phi3:mini",)})
    assert inv.targets("llama3") == (Target("a", "llama3:latest"),)
    assert inv.targets("qwen:latest") == (Target("a", "qwen"),)
    assert inv.targets("phi3") == ()
    assert inv.targets("phi3:mini") == (Target("b", "phi3:mini"),)


def test_an_exact_name_wins_over_its_alias() -> None:
    inv = inventory(declared={"a": ("llama3",), "b": ("llama3:latest",)})
    assert inv.targets("llama3") == (Target("a", "llama3"),)
    assert inv.targets("llama3:latest") == (Target("b", "llama3:latest"),)


def test_entries_list_routes_first_then_served_models_by_name() -> None:
    route = Route(model="zeta", targets=(RouteTarget(backend="a", model="m"),))
    inv = inventory(routes=(route,), declared={"a": ("m", "beta"), "b": ("alpha", "zeta")})
    entries = inv.entries()
    assert [(e.name, e.routed) for e in entries] == [
        ("zeta", True),
        ("alpha", False),
        ("beta", False),
        ("m", False),
    ]
    assert entries[0].targets == (Target("a", "m", 0),)


def test_backends_added_and_removed_at_run_time() -> None:
    inv = inventory(order=("a",), declared={"a": ("m",)})
    inv.add_backend("found")
    inv.set_discovered("found", ["m", "n"])
    assert inv.targets("m") == (Target("a", "m"), Target("found", "m"))
    inv.add_backend("found")  # idempotent: keeps what it knows
    assert inv.targets("n") == (Target("found", "n"),)
    inv.remove_backend("found")
    assert inv.targets("m") == (Target("a", "m"),)
    assert inv.targets("n") == ()
    assert inv.served_by("found") == ()


def test_model_metadata_is_cached_per_backend_and_described_once_per_digest() -> None:
    from gatewayd.gateway.core.metadata import ModelInfo

    inventory = Inventory(routes=(), backend_order=["ol"], declared={"ol": None})
    inventory.set_discovered("ol", ["a", "b"])
    inventory.set_listed_info("ol", {"a": ModelInfo(digest="d1", size=5)})
    assert inventory.undescribed("ol", ["a", "b"]) == ["a", "b"]
    inventory.set_described("ol", "a", ModelInfo(context_length=4096))
    assert inventory.undescribed("ol", ["a", "b"]) == ["b"]
    assert inventory.describe("a") == ModelInfo(context_length=4096, digest="d1", size=5)
    inventory.set_listed_info("ol", {"a": ModelInfo(digest="d2", size=5)})  # pulled again
    assert inventory.undescribed("ol", ["a"]) == ["a"]
    inventory.set_discovered("ol", ["b"])  # a is gone: so is its description
    inventory.set_listed_info("ol", {})
    assert inventory.describe("a") is None
