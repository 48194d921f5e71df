"""Where a backend's concurrency limit comes from: the config, the backend's slots, or its kind."""

from __future__ import annotations

from gatewayd.gateway.core.concurrency import Concurrency, Source


def test_before_any_probe_the_config_then_the_kind_default_then_unbounded() -> None:
    assert Concurrency.initial(2, 4) == Concurrency(2, Source.CONFIG)
    assert Concurrency.initial(None, 4) == Concurrency(4, Source.DEFAULT)
    assert Concurrency.initial(None, None) == Concurrency(None, Source.UNBOUNDED)


def test_the_slots_a_probe_reports_replace_the_default_and_each_other() -> None:
    start = Concurrency.initial(None, 4)
    learned = start.learned(8, Source.PROPS)
    assert learned == Concurrency(8, Source.PROPS)
    assert learned.learned(2, Source.SLOTS) == Concurrency(2, Source.SLOTS)
    assert learned.label == "8 (props)"


def test_a_probe_that_says_nothing_keeps_what_was_learned() -> None:
    learned = Concurrency(8, Source.PROPS)
    assert learned.learned(None, None) is learned
    assert learned.learned(0, Source.PROPS) is learned


def test_the_config_always_wins() -> None:
    configured = Concurrency.initial(2, 4)
    assert configured.learned(8, Source.PROPS) is configured
    assert Concurrency.initial(2, None).learned(8, Source.SLOTS).label == "2 (config)"


def test_unbounded_reads_as_its_source() -> None:
    assert Concurrency.initial(None, None).label == "unbounded"
