"""The backend health state machine, driven by probes and live traffic with an injected clock."""

from __future__ import annotations

import pytest

from gatewayd.gateway.core.health import BackendState, Health, ProbeResult

OK = ProbeResult(ok=True)
FAILED = ProbeResult(ok=False, detail="/health answered 503 loading model")
DEGRADED = ProbeResult(ok=True, degraded=True)


def health(threshold: int = 3, cooldown: float = 10.0) -> Health:
    return Health(failure_threshold=threshold, cooldown_seconds=cooldown)


def test_a_new_backend_is_unknown_and_routable() -> None:
    h = health()
    assert h.state is BackendState.UNKNOWN
    assert h.routable


def test_a_successful_probe_or_request_makes_it_up() -> None:
    probed, served = health(), health()
    probed.probed(0.0, OK)
    served.request_succeeded()
    assert probed.state is BackendState.UP
    assert served.state is BackendState.UP


def test_a_degraded_probe_keeps_it_routable_but_degraded() -> None:
    h = health()
    h.probed(0.0, DEGRADED)
    assert h.state is BackendState.DEGRADED
    assert h.routable
    h.probed(1.0, OK)
    assert h.state is BackendState.UP


def test_the_first_failed_probe_of_an_unknown_backend_puts_it_down() -> None:
    h = health(threshold=3)
    h.probed(0.0, FAILED)
    assert h.state is BackendState.DOWN
    assert not h.routable
    assert h.last_error == FAILED.detail


def test_threshold_consecutive_request_failures_put_it_down_with_a_cooldown() -> None:
    h = health(threshold=3, cooldown=10.0)
    h.probed(0.0, OK)
    h.request_failed(1.0, "boom 1")
    h.request_failed(2.0, "boom 2")
    assert h.state is BackendState.UP
    h.request_failed(3.0, "boom 3")
    assert h.state is BackendState.DOWN
    assert h.cooldown_until == pytest.approx(13.0)
    assert h.last_error == "boom 3"


def test_a_success_resets_the_count_of_consecutive_failures() -> None:
    h = health(threshold=2)
    h.probed(0.0, OK)
    h.request_failed(1.0, "boom")
    h.request_succeeded()
    h.request_failed(2.0, "boom")
    assert h.state is BackendState.UP
    h.request_failed(3.0, "boom")
    assert h.state is BackendState.DOWN


def test_failed_probes_count_towards_the_threshold_once_up() -> None:
    h = health(threshold=2)
    h.probed(0.0, OK)
    h.probed(1.0, FAILED)
    assert h.state is BackendState.UP
    h.probed(2.0, FAILED)
    assert h.state is BackendState.DOWN


def test_a_probe_within_the_cooldown_does_not_bring_it_back() -> None:
    h = health(threshold=1, cooldown=5.0)
    h.probed(0.0, OK)
    h.request_failed(10.0, "boom")
    assert h.state is BackendState.DOWN
    h.probed(14.9, OK)
    assert h.state is BackendState.DOWN
    h.probed(15.0, OK)
    assert h.state is BackendState.UP
    assert h.failures == 0


def test_a_probe_brings_back_a_backend_put_down_by_probes_at_once() -> None:
    h = health(threshold=1, cooldown=100.0)
    h.probed(0.0, FAILED)
    assert h.state is BackendState.DOWN
    h.probed(0.5, OK)
    assert h.state is BackendState.UP


def test_successful_requests_alone_do_not_bring_a_down_backend_back() -> None:
    h = health(threshold=1)
    h.request_failed(0.0, "boom")
    assert h.state is BackendState.DOWN
    h.request_succeeded()
    assert h.state is BackendState.DOWN


def test_more_failures_while_down_do_not_extend_the_cooldown() -> None:
    h = health(threshold=1, cooldown=5.0)
    h.request_failed(0.0, "boom")
    h.request_failed(4.0, "boom again")
    assert h.cooldown_until == pytest.approx(5.0)
    assert h.last_error == "boom again"
    h.probed(5.0, OK)
    assert h.state is BackendState.UP
