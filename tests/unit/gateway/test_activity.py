"""The status page's activity record: per-second counts and latency quantiles over a sliding window, and the
ring of recent requests, driven by an injected clock."""

from __future__ import annotations

import pytest

from gatewayd.gateway.activity import MAX_MODEL_CHARS, Activity


class Clock:
    def __init__(self, now: float) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


def record(activity: Activity, latency: float, status: int = 200, model: str = "m") -> None:
    activity.record("openai.chat", model, "b", status, False, latency, None)


def test_counts_land_in_their_second_and_the_second_in_progress_is_left_out() -> None:
    clock = Clock(1000.2)
    activity = Activity(window_seconds=5, clock=clock)
    for _ in range(3):
        record(activity, 0.1)
    clock.now = 1001.5
    record(activity, 0.1, status=503)
    record(activity, 0.1, status=404)
    snapshot = activity.snapshot()
    series = snapshot["series"]
    assert isinstance(series, dict)
    assert series["start"] == 996
    assert series["requests"] == [0, 0, 0, 0, 3]  # 996..1000; 1001 is still in progress
    clock.now = 1002.0
    series = activity.snapshot()["series"]
    assert isinstance(series, dict)
    assert series["requests"] == [0, 0, 0, 3, 2]
    assert series["errors"] == [0, 0, 0, 0, 1]  # 5xx only


def test_old_seconds_leave_the_window_and_their_slots_are_reused() -> None:
    clock = Clock(100.0)
    activity = Activity(window_seconds=3, clock=clock)
    record(activity, 0.1)
    clock.now = 103.0  # same slot as 100 (100 % 3 == 103 % 3)
    record(activity, 0.2)
    clock.now = 104.0
    series = activity.snapshot()["series"]
    assert isinstance(series, dict)
    assert series["start"] == 101
    assert series["requests"] == [0, 0, 1]
    assert series["latency_p50_ms"] == [None, None, 200.0]


def test_quantiles_of_one_request_are_exact_and_of_many_are_close() -> None:
    clock = Clock(50.0)
    activity = Activity(window_seconds=2, clock=clock)
    record(activity, 0.0123)
    clock.now = 51.0
    for i in range(1, 101):  # 1 ms .. 100 ms
        record(activity, i / 1000)
    clock.now = 52.0
    series = activity.snapshot()["series"]
    assert isinstance(series, dict)
    assert series["latency_p50_ms"][0] == 12.3
    assert series["latency_p95_ms"][0] == 12.3
    p50, p95 = series["latency_p50_ms"][1], series["latency_p95_ms"][1]
    assert p50 == pytest.approx(50, rel=0.12)
    assert p95 == pytest.approx(95, rel=0.12)


def test_latencies_beyond_the_last_bucket_stay_within_what_was_seen() -> None:
    clock = Clock(10.0)
    activity = Activity(window_seconds=1, clock=clock)
    record(activity, 5000.0)
    record(activity, 6000.0)
    clock.now = 11.0
    series = activity.snapshot()["series"]
    assert isinstance(series, dict)
    assert 5_000_000 <= series["latency_p95_ms"][0] <= 6_000_000


def test_recent_requests_newest_first_bounded_and_without_secrets() -> None:
    clock = Clock(200.0)
    activity = Activity(recent_requests=3, clock=clock)
    for i in range(5):
        clock.now = 200.0 + i
        activity.record("ollama.chat", f"m{i}", "b", 200, True, 0.5, 0.25)
    activity.record("openai.chat", "x" * 1000, "-", 400, False, 0.001, None)
    recent = activity.snapshot()["recent"]
    assert isinstance(recent, list)
    assert [entry["model"] for entry in recent[1:]] == ["m4", "m3"]
    assert len(recent[0]["model"]) == MAX_MODEL_CHARS
    assert recent[1] == {
        "time": 204.0,
        "api": "ollama.chat",
        "model": "m4",
        "backend": "b",
        "status": 200,
        "stream": True,
        "latency_ms": 500.0,
        "ttft_ms": 250.0,
    }
    assert recent[0]["ttft_ms"] is None


def test_bounds_are_checked() -> None:
    with pytest.raises(ValueError, match="at least 1"):
        Activity(window_seconds=0)


def speeds(activity: Activity) -> object:
    return activity.snapshot()["models"]


def test_generation_speed_per_model_counts_a_streams_time_after_its_first_byte() -> None:
    clock = Clock(300.5)
    activity = Activity(window_seconds=60, clock=clock)
    # a stream: 100 tokens between its first byte at 1 s and its last at 3 s
    activity.record("openai.chat", "a", "b", 200, True, 3.0, 1.0, 100)
    # an answer in one piece: 30 tokens in 1.5 s
    activity.record("ollama.chat", "b", "b", 200, False, 1.5, 1.5, 30)
    # a stream of one token: nothing to time after the first byte, so its whole latency
    activity.record("openai.chat", "c", "b", 200, True, 0.5, 0.499, 1)
    assert speeds(activity) == {  # the second in progress is included: no wait to see a request
        "a": {"completion_tokens": 100, "generation_seconds": 2.0, "tokens_per_second": 50.0},
        "b": {"completion_tokens": 30, "generation_seconds": 1.5, "tokens_per_second": 20.0},
        "c": {"completion_tokens": 1, "generation_seconds": 0.5, "tokens_per_second": 2.0},
    }


def test_generation_speed_sums_tokens_and_time_over_the_window_and_forgets_what_left_it() -> None:
    clock = Clock(100.0)
    activity = Activity(window_seconds=10, clock=clock)
    activity.record("openai.chat", "m", "b", 200, False, 1.0, None, 10)  # 10 tok/s, short
    clock.now = 105.0
    activity.record("openai.chat", "m", "b", 200, False, 3.0, None, 90)  # 30 tok/s, long
    assert speeds(activity) == {
        "m": {"completion_tokens": 100, "generation_seconds": 4.0, "tokens_per_second": 25.0}
    }
    clock.now = 110.0  # second 100 is out of the window (and its slot is the current second's)
    assert speeds(activity) == {
        "m": {"completion_tokens": 90, "generation_seconds": 3.0, "tokens_per_second": 30.0}
    }
    clock.now = 115.0
    assert speeds(activity) == {}


def test_failed_requests_and_unreported_tokens_do_not_count_for_the_speed() -> None:
    activity = Activity(clock=Clock(10.0))
    activity.record("openai.chat", "m", "b", 502, True, 1.0, 0.1, 40)  # broke: its tokens are no speed
    activity.record("openai.chat", "m", "b", 429, False, 0.01, None, 5)
    activity.record("openai.chat", "m", "b", 200, True, 1.0, 0.1)  # the backend reported no count
    assert speeds(activity) == {}
