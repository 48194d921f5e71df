"""Per-key limits with an injected clock: exact counts, sliding windows, Retry-After, headers, restore."""

from __future__ import annotations

import json

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from gatewayd.errors import BudgetExceeded, ModelNotAllowed, RateLimited
from gatewayd.gateway.core.limits import (
    IN_FLIGHT_RETRY_AFTER_SECONDS,
    WINDOW_SECONDS,
    Grant,
    KeyPolicy,
    Limiter,
    estimate_tokens,
    format_duration,
)
from gatewayd.gateway.core.profile import DialectProfile
from gatewayd.gateway.dialects.anthropic import ANTHROPIC
from gatewayd.gateway.dialects.ollama import OLLAMA
from gatewayd.gateway.dialects.openai_chat import OPENAI

T0 = 1_750_000_000.0  # a wall-clock time, as the gateway passes


def admit_n(limiter: Limiter, policy: KeyPolicy, count: int, now: float, **kwargs: int) -> list[Grant]:
    return [limiter.admit(policy, "m", now, **kwargs) for _ in range(count)]


def refused(limiter: Limiter, policy: KeyPolicy, now: float, *, estimated: int = 0) -> RateLimited:
    with pytest.raises(RateLimited) as caught:
        limiter.admit(policy, "m", now, estimated_tokens=estimated)
    return caught.value


# --- estimates and formats -------------------------------------------------------------------------------


@pytest.mark.parametrize(("chars", "tokens"), [(0, 1), (1, 1), (4, 1), (5, 2), (8, 2), (4000, 1000)])
def test_about_four_characters_make_a_token_and_every_request_has_one(chars: int, tokens: int) -> None:
    assert estimate_tokens(chars) == tokens


@pytest.mark.parametrize(
    ("seconds", "text"),
    [
        (0.0, "0s"),
        (-3.0, "0s"),
        (0.0004, "0s"),
        (0.02, "20ms"),
        (0.999, "999ms"),
        (0.9996, "1s"),
        (1.0, "1s"),
        (1.5, "1.5s"),
        (59.596, "59.596s"),
        (60.0, "1m0s"),
        (90.5, "1m30.5s"),
        (125.25, "2m5.25s"),
    ],
)
def test_durations_are_written_as_openai_writes_its_reset_headers(seconds: float, text: str) -> None:
    assert format_duration(seconds) == text


# --- requests per minute ---------------------------------------------------------------------------------


def test_rpm_admits_exactly_that_many_requests_then_refuses() -> None:
    limiter = Limiter()
    policy = KeyPolicy("k1", rpm=5, name="ci")
    grants = admit_n(limiter, policy, 5, T0)
    for grant in grants:
        limiter.finish(grant, 10, T0)  # finishing frees no rpm room: the window counts admissions
    error = refused(limiter, policy, T0 + 1)
    assert error.status == 429
    assert error.code == "rate_limit_exceeded"
    assert error.type == "requests"
    assert error.limit == "requests"
    assert error.message == "key 'ci' is over its limit of 5 requests per minute; retry in 59 s"


def test_the_rpm_window_slides_and_retry_after_is_when_the_oldest_request_leaves_it() -> None:
    limiter = Limiter()
    policy = KeyPolicy("k1", rpm=3)
    for at in (0.0, 10.0, 20.0):
        limiter.admit(policy, "m", T0 + at)
    assert refused(limiter, policy, T0 + 30).retry_after == pytest.approx(30.0)
    assert refused(limiter, policy, T0 + 59.5).retry_after == pytest.approx(0.5)
    limiter.admit(policy, "m", T0 + 60)  # the request at 0 has left the window
    assert refused(limiter, policy, T0 + 60).retry_after == pytest.approx(10.0)
    limiter.admit(policy, "m", T0 + 70)
    limiter.admit(policy, "m", T0 + 80)
    refused(limiter, policy, T0 + 80)


def test_refused_requests_do_not_count() -> None:
    limiter = Limiter()
    policy = KeyPolicy("k1", rpm=2)
    admit_n(limiter, policy, 2, T0)
    for second in range(1, 60):
        refused(limiter, policy, T0 + second)
    admit_n(limiter, policy, 2, T0 + 60)


def test_the_message_names_the_key_by_id_without_a_name() -> None:
    limiter = Limiter()
    policy = KeyPolicy("key_7f3a", rpm=1)
    limiter.admit(policy, "m", T0)
    assert refused(limiter, policy, T0 + 48.2).message.startswith("key 'key_7f3a' is over its limit of 1 ")
    assert refused(limiter, policy, T0 + 48.2).message.endswith("; retry in 12 s")


# --- requests at once ------------------------------------------------------------------------------------


def test_concurrency_admits_exactly_max_then_refuses_until_a_request_finishes() -> None:
    limiter = Limiter()
    policy = KeyPolicy("k1", max_concurrency=2, name="ci")
    first, _second = admit_n(limiter, policy, 2, T0)
    assert limiter.in_flight("k1") == 2
    error = refused(limiter, policy, T0)
    assert error.limit == "concurrency"
    assert error.type == "requests"
    assert error.retry_after == IN_FLIGHT_RETRY_AFTER_SECONDS
    assert error.message == "key 'ci' already has 2 requests in flight, its limit; retry in 1 s"
    limiter.finish(first, 5, T0 + 1)
    assert limiter.in_flight("k1") == 1
    limiter.admit(policy, "m", T0 + 1)
    refused(limiter, policy, T0 + 1)


def test_finishing_a_grant_twice_frees_one_slot_and_counts_its_tokens_once() -> None:
    limiter = Limiter()
    policy = KeyPolicy("k1", max_concurrency=2, budget_tokens=1000)
    first, _second = admit_n(limiter, policy, 2, T0)
    limiter.finish(first, 100, T0)
    limiter.finish(first, 100, T0)
    assert limiter.in_flight("k1") == 1
    assert limiter.budget_used("k1") == 100
    limiter.admit(policy, "m", T0)
    refused(limiter, policy, T0)  # the second finish did not free the other grant's slot


def test_without_a_concurrency_limit_requests_in_flight_are_still_counted() -> None:
    limiter = Limiter()
    policy = KeyPolicy("k1")
    grants = admit_n(limiter, policy, 50, T0)
    assert limiter.in_flight("k1") == 50
    for grant in grants:
        limiter.finish(grant, 0, T0)
    assert limiter.in_flight("k1") == 0
    assert limiter.in_flight("never-seen") == 0


# --- tokens per minute -----------------------------------------------------------------------------------


def test_tpm_counts_the_tokens_reported_at_finish() -> None:
    limiter = Limiter()
    policy = KeyPolicy("k1", tpm=100, name="ci")
    for second in range(4):
        grant = limiter.admit(policy, "m", T0 + second)
        limiter.finish(grant, 25, T0 + second)
    error = refused(limiter, policy, T0 + 10)
    assert error.limit == "tokens"
    assert error.type == "tokens"
    assert error.retry_after == pytest.approx(50.0)  # the tokens reported at T0 leave the window at T0 + 60
    assert error.message == (
        "key 'ci' is over its limit of 100 tokens per minute "
        "(100 used in the last minute, about 1 requested); retry in 50 s"
    )
    limiter.admit(policy, "m", T0 + 60)


def test_tpm_retry_after_waits_until_enough_tokens_have_left_the_window() -> None:
    limiter = Limiter()
    policy = KeyPolicy("k1", tpm=100)
    for second, tokens in ((0, 30), (5, 30), (10, 30)):
        limiter.finish(limiter.admit(policy, "m", T0 + second), tokens, T0 + second)
    # 90 used: a request of about 50 needs 40 to leave the window, the tokens of T0 and T0 + 5
    error = refused(limiter, policy, T0 + 20, estimated=50)
    assert error.retry_after == pytest.approx(45.0)
    refused(limiter, policy, T0 + 64.9, estimated=50)
    limiter.admit(policy, "m", T0 + 65, estimated_tokens=50)


def test_tpm_counts_the_estimate_at_admission_and_holds_it_while_the_request_is_in_flight() -> None:
    limiter = Limiter()
    policy = KeyPolicy("k1", tpm=100)
    first = limiter.admit(policy, "m", T0, estimated_tokens=60)
    error = refused(limiter, policy, T0, estimated=60)
    assert "held by requests in flight" in error.message
    assert error.retry_after == IN_FLIGHT_RETRY_AFTER_SECONDS
    limiter.admit(policy, "m", T0, estimated_tokens=40)  # 60 + 40 fits exactly
    refused(limiter, policy, T0, estimated=1)
    limiter.finish(first, 10, T0 + 1)  # the backend reported 10: the estimate of 60 gives way to them
    limiter.admit(policy, "m", T0 + 1, estimated_tokens=50)  # 10 + 40 + 50
    refused(limiter, policy, T0 + 1, estimated=1)


def test_a_request_larger_than_tpm_is_refused_without_retry_after() -> None:
    limiter = Limiter()
    policy = KeyPolicy("k1", tpm=1000, name="ci")
    error = refused(limiter, policy, T0, estimated=1001)
    assert error.retry_after is None
    assert "retry-after-ms" not in error.headers
    assert error.message == (
        "the request needs about 1001 tokens, more than key 'ci' may use in a minute (1000); "
        "send a shorter one"
    )
    limiter.admit(policy, "m", T0, estimated_tokens=1000)


def test_tokens_over_the_limit_after_finish_refuse_the_next_request() -> None:
    limiter = Limiter()
    policy = KeyPolicy("k1", tpm=100)
    limiter.finish(limiter.admit(policy, "m", T0, estimated_tokens=10), 500, T0)
    assert refused(limiter, policy, T0 + 1).retry_after == pytest.approx(59.0)
    limiter.admit(policy, "m", T0 + 60)


def test_the_token_window_stays_bounded_whatever_the_traffic() -> None:
    limiter = Limiter()
    policy = KeyPolicy("k1", tpm=10**9)
    for step in range(20_000):
        now = T0 + step * 0.01
        limiter.finish(limiter.admit(policy, "m", now), 3, now)
    state = limiter._keys["k1"]  # the bound is internal: nothing else can observe it
    assert len(state.tokens) <= WINDOW_SECONDS + 1
    assert state.tokens_in_window == sum(tokens for _, tokens in state.tokens)
    # a bucket expires a minute after its latest tokens: nothing counted leaves early
    assert state.tokens_in_window >= 6000 * 3


# --- budget ----------------------------------------------------------------------------------------------


def test_the_budget_counts_across_windows_and_refuses_with_402_when_spent() -> None:
    limiter = Limiter()
    policy = KeyPolicy("k1", budget_tokens=300, name="ci")
    for hour in range(3):
        now = T0 + hour * 3600
        limiter.finish(limiter.admit(policy, "m", now), 100, now)
    with pytest.raises(BudgetExceeded) as caught:
        limiter.admit(policy, "m", T0 + 10 * 3600)
    error = caught.value
    assert (error.status, error.type, error.code) == (402, "insufficient_quota", "budget_exceeded")
    assert error.retry_after is None
    assert error.message == "key 'ci' has used 300 of its budget of 300 tokens"


def test_a_request_whose_estimate_does_not_fit_the_budget_is_refused() -> None:
    limiter = Limiter()
    policy = KeyPolicy("k1", budget_tokens=100, name="ci")
    limiter.finish(limiter.admit(policy, "m", T0), 90, T0)
    with pytest.raises(BudgetExceeded) as caught:
        limiter.admit(policy, "m", T0, estimated_tokens=20)
    assert (
        caught.value.message
        == "key 'ci' has used 90 of its budget of 100 tokens; this request needs about 20"
    )
    held = limiter.admit(policy, "m", T0, estimated_tokens=10)
    with pytest.raises(BudgetExceeded, match="requests in flight hold about 10 more"):
        limiter.admit(policy, "m", T0)
    limiter.finish(held, 5, T0)
    limiter.admit(policy, "m", T0, estimated_tokens=5)


def test_restore_brings_back_the_windows_and_the_budget_after_a_restart() -> None:
    limiter = Limiter()
    policy = KeyPolicy("k1", rpm=3, tpm=100, budget_tokens=1000)
    events = [(T0 + 20, 40), (T0 - 120, 500), (T0 + 10, 10)]  # any order; the old one is outside the window
    limiter.restore("k1", events, 950)
    limiter.restore("k1", events, 950)  # replaces, never adds
    assert limiter.headers(policy, T0 + 30) == {
        "x-ratelimit-limit-requests": "3",
        "x-ratelimit-remaining-requests": "1",
        "x-ratelimit-reset-requests": "50s",
        "x-ratelimit-limit-tokens": "100",
        "x-ratelimit-remaining-tokens": "50",
        "x-ratelimit-reset-tokens": "50s",
    }
    grant = limiter.admit(policy, "m", T0 + 30, estimated_tokens=40)
    assert refused(limiter, policy, T0 + 31).limit == "requests"
    limiter.finish(grant, 49, T0 + 32)
    with pytest.raises(BudgetExceeded, match="has used 999 of its budget of 1000"):
        limiter.admit(policy, "m", T0 + 200, estimated_tokens=2)


def test_restore_keeps_only_the_newest_rpm_requests_once_the_key_is_used() -> None:
    limiter = Limiter()
    policy = KeyPolicy("k1", rpm=2)
    limiter.restore("k1", [(T0 + second, 1) for second in range(50)], 50)
    error = refused(limiter, policy, T0 + 50)
    assert error.retry_after == pytest.approx(58.0)  # the newest two, at T0 + 48 and T0 + 49, hold the window
    assert len(limiter._keys["k1"].requests) == 2


# --- models ----------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("allowed", "model"),
    [
        (("llama3",), "llama3"),
        (("llama3",), "llama3:latest"),
        (("llama3:latest",), "llama3"),
        (("qwen2.5:7b", "llama3"), "qwen2.5:7b"),
    ],
)
def test_an_allowed_model_is_admitted_and_name_equals_name_latest(
    allowed: tuple[str, ...], model: str
) -> None:
    policy = KeyPolicy("k1", models=allowed)
    assert policy.allows(model)
    Limiter().admit(policy, model, T0)


@pytest.mark.parametrize(
    ("allowed", "model"),
    [
        (("llama3",), "llama3:8b"),
        (("llama3:8b",), "llama3"),
        (("llama3",), "Llama3"),
        (("llama3",), "llama"),
        ((), "llama3"),
    ],
)
def test_any_other_model_is_refused_with_403(allowed: tuple[str, ...], model: str) -> None:
    policy = KeyPolicy("k1", models=allowed, name="ci")
    assert not policy.allows(model)
    with pytest.raises(ModelNotAllowed) as caught:
        Limiter().admit(policy, model, T0)
    error = caught.value
    assert (error.status, error.type, error.code) == (403, "invalid_request_error", "model_not_allowed")
    assert error.message.startswith(f"key 'ci' may not use model '{model}' (it may use: ")
    assert error.headers == {}


def test_without_an_allow_list_every_model_is_allowed() -> None:
    assert KeyPolicy("k1").allows("anything:at-all")


# --- the order of the checks -----------------------------------------------------------------------------


def test_checks_run_in_order_model_budget_concurrency_rpm_tpm() -> None:
    limiter = Limiter()
    everything = KeyPolicy("k1", models=("m",), rpm=1, tpm=10, max_concurrency=1, budget_tokens=10)
    limiter.admit(everything, "m", T0, estimated_tokens=10)  # fills every limit at once
    with pytest.raises(ModelNotAllowed):
        limiter.admit(everything, "other", T0)
    with pytest.raises(BudgetExceeded):
        limiter.admit(everything, "m", T0)
    no_budget = KeyPolicy("k1", rpm=1, tpm=10, max_concurrency=1)
    assert refused(limiter, no_budget, T0).limit == "concurrency"
    assert refused(limiter, KeyPolicy("k1", rpm=1, tpm=10), T0).limit == "requests"
    assert refused(limiter, KeyPolicy("k1", tpm=10), T0).limit == "tokens"
    limiter.admit(KeyPolicy("k1"), "m", T0)


# --- headers ---------------------------------------------------------------------------------------------


def test_headers_cover_only_the_limits_the_key_has() -> None:
    limiter = Limiter()
    assert limiter.headers(KeyPolicy("k1", max_concurrency=3, budget_tokens=10), T0) == {}
    assert set(limiter.headers(KeyPolicy("k1", rpm=3), T0)) == {
        "x-ratelimit-limit-requests",
        "x-ratelimit-remaining-requests",
        "x-ratelimit-reset-requests",
    }
    assert limiter.headers(KeyPolicy("k1", tpm=500), T0) == {
        "x-ratelimit-limit-tokens": "500",
        "x-ratelimit-remaining-tokens": "500",
        "x-ratelimit-reset-tokens": "0s",
    }


def test_a_grant_carries_the_headers_after_its_own_request_is_counted() -> None:
    limiter = Limiter()
    policy = KeyPolicy("k1", rpm=60, tpm=1000)
    limiter.finish(limiter.admit(policy, "m", T0), 200, T0 + 0.5)
    grant = limiter.admit(policy, "m", T0 + 20.25, estimated_tokens=100)
    assert grant.key_id == "k1"
    assert grant.headers == {
        "x-ratelimit-limit-requests": "60",
        "x-ratelimit-remaining-requests": "58",
        "x-ratelimit-reset-requests": "1m0s",
        "x-ratelimit-limit-tokens": "1000",
        "x-ratelimit-remaining-tokens": "700",
        "x-ratelimit-reset-tokens": "40.25s",
    }
    assert limiter.headers(policy, T0 + 80)["x-ratelimit-reset-requests"] == "250ms"


def test_a_refusal_carries_the_headers_and_retry_after_ms() -> None:
    limiter = Limiter()
    policy = KeyPolicy("k1", rpm=2)
    admit_n(limiter, policy, 2, T0)
    error = refused(limiter, policy, T0 + 47.5)
    assert error.retry_after == pytest.approx(12.5)
    assert error.headers == {
        "x-ratelimit-limit-requests": "2",
        "x-ratelimit-remaining-requests": "0",
        "x-ratelimit-reset-requests": "12.5s",
        "retry-after-ms": "12500",
    }


@pytest.mark.parametrize("dialect", [OPENAI, OLLAMA, ANTHROPIC])
def test_refusals_are_429_and_402_in_both_dialects_and_the_message_stands_alone(
    dialect: DialectProfile,
) -> None:
    limiter = Limiter()
    policy = KeyPolicy("k1", rpm=1, name="ci")
    limiter.admit(policy, "m", T0)
    error = refused(limiter, policy, T0 + 48)
    assert dialect.error_status(error) == 429
    body = json.loads(dialect.error_body(error))
    if dialect is OLLAMA:
        assert body == {"error": "key 'ci' is over its limit of 1 requests per minute; retry in 12 s"}
    elif dialect is ANTHROPIC:
        assert body["error"]["type"] == "rate_limit_error"
    else:
        assert body["error"]["code"] == "rate_limit_exceeded"
    assert dialect.error_status(BudgetExceeded("spent")) == 402


# --- forgetting and clocks -------------------------------------------------------------------------------


def test_forget_drops_a_revoked_keys_state_and_its_grants_finish_as_no_ops() -> None:
    limiter = Limiter()
    policy = KeyPolicy("k1", rpm=1, max_concurrency=1, budget_tokens=10)
    old = limiter.admit(policy, "m", T0)
    limiter.forget("k1")
    assert limiter.in_flight("k1") == 0
    fresh = limiter.admit(policy, "m", T0)
    limiter.finish(old, 10, T0)
    assert limiter.in_flight("k1") == 1
    assert limiter.budget_used("k1") == 0
    limiter.finish(fresh, 3, T0)
    assert limiter.budget_used("k1") == 3
    limiter.forget("never-seen")


def test_a_clock_that_steps_back_expires_nothing_early() -> None:
    limiter = Limiter()
    policy = KeyPolicy("k1", rpm=2, tpm=100)
    limiter.finish(limiter.admit(policy, "m", T0 + 10), 60, T0 + 10)
    limiter.finish(limiter.admit(policy, "m", T0), 40, T0)  # the clock went back 10 s
    error = refused(limiter, policy, T0 + 30)
    assert error.limit == "requests"
    assert error.retry_after == pytest.approx(40.0)
    limiter.admit(KeyPolicy("k1"), "m", T0 + 30)
    refused(limiter, KeyPolicy("k1", tpm=100), T0 + 69)
    limiter.admit(KeyPolicy("k1", tpm=100), "m", T0 + 70)


# --- the invariant ---------------------------------------------------------------------------------------

_steps = st.lists(
    st.tuples(
        st.sampled_from(["admit", "finish"]),
        st.integers(min_value=0, max_value=30_000),  # milliseconds the clock moves before the step
        st.integers(min_value=0, max_value=1_000),  # which grant in flight a finish ends
    ),
    max_size=200,
)


@settings(max_examples=300, deadline=None)
@given(
    rpm=st.integers(min_value=1, max_value=6),
    max_concurrency=st.one_of(st.none(), st.integers(min_value=1, max_value=4)),
    steps=_steps,
)
def test_admissions_in_any_minute_never_exceed_rpm_and_in_flight_never_exceeds_the_limit(
    rpm: int, max_concurrency: int | None, steps: list[tuple[str, int, int]]
) -> None:
    limiter = Limiter()
    policy = KeyPolicy("k1", rpm=rpm, max_concurrency=max_concurrency)
    now = T0
    admitted: list[float] = []
    open_grants: list[Grant] = []
    for action, advance_ms, pick in steps:
        now += advance_ms / 1000
        if action == "finish" and open_grants:
            limiter.finish(open_grants.pop(pick % len(open_grants)), 1, now)
        elif action == "admit":
            in_window = sum(1 for at in admitted if now - at < WINDOW_SECONDS)
            room = in_window < rpm and (max_concurrency is None or len(open_grants) < max_concurrency)
            if room:
                open_grants.append(limiter.admit(policy, "m", now))
                admitted.append(now)
            else:
                error = refused(limiter, policy, now)
                assert error.retry_after is not None
                assert error.retry_after >= 0
        assert limiter.in_flight("k1") == len(open_grants)
        if max_concurrency is not None:
            assert len(open_grants) <= max_concurrency
    for start in admitted:
        assert sum(1 for at in admitted if 0 <= at - start < WINDOW_SECONDS) <= rpm
