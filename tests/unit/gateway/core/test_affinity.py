"""Session affinity: conversation keys from headers, messages and prompts; the pin table with a clock."""

from __future__ import annotations

from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from gatewayd.gateway.core.affinity import (
    DEFAULT_SESSION_HEADERS,
    AffinityTable,
    Outcome,
    affinity_key,
)

SYSTEM = {"role": "system", "content": "You are a careful coding assistant working in this repository."}
USER = {"role": "user", "content": "Rename the function parse_args to parse_arguments everywhere."}
ANSWER = {"role": "assistant", "content": "Done: three call sites changed."}
FOLLOW_UP = {"role": "user", "content": "Now add a test for it."}


def chat(*messages: dict[str, Any], model: str = "qwen") -> dict[str, Any]:
    return {"model": model, "messages": list(messages)}


def key(
    headers: dict[str, str] | None = None, body: dict[str, Any] | None = None, **options: Any
) -> str | None:
    return affinity_key(headers or {}, body if body is not None else chat(SYSTEM, USER), **options)


# --- keys from session headers ---------------------------------------------------------------------------


def test_a_session_header_names_the_conversation_whatever_the_messages() -> None:
    one = key({"x-session-id": "abc"}, chat(SYSTEM, USER))
    other = key({"x-session-id": "abc"}, chat({"role": "user", "content": "hi"}))
    assert one is not None
    assert one.startswith("s:")
    assert one == other
    assert key({"x-session-id": "abd"}) != one


def test_the_first_session_header_in_the_list_wins() -> None:
    both = {"x-gatewayd-session": "ours", "x-claude-code-session-id": "theirs"}
    assert key(both) == key({"x-gatewayd-session": "ours"})
    assert key(both) != key({"x-claude-code-session-id": "theirs"})


@pytest.mark.parametrize("header", DEFAULT_SESSION_HEADERS)
def test_every_default_session_header_is_read(header: str) -> None:
    assert key({header: "0195e1c2-7d3f"}, chat()) == key({"x-session-id": "0195e1c2-7d3f"}, chat())


def test_a_blank_session_header_is_ignored_and_the_messages_decide() -> None:
    assert key({"x-session-id": "  "}) == key({})
    assert (key({"x-session-id": "  "}) or "").startswith("m:")


def test_only_the_configured_session_headers_are_read() -> None:
    assert key({"x-session-id": "abc"}, session_headers=("x-conversation",)) == key({})
    assert key({"x-conversation": "abc"}, session_headers=("x-conversation",)) == key({"x-session-id": "abc"})


def test_the_same_session_on_two_models_gets_two_keys() -> None:
    headers = {"x-session-id": "abc"}
    assert key(headers, chat(model="small")) != key(headers, chat(model="large"))


def test_a_huge_session_header_gives_a_short_key() -> None:
    long_key = key({"x-session-id": "x" * 100_000})
    assert long_key is not None
    assert len(long_key) < 40


# --- keys from messages ----------------------------------------------------------------------------------


def test_turn_two_of_a_conversation_has_the_key_of_turn_one() -> None:
    turn1 = key(body=chat(SYSTEM, USER))
    turn2 = key(body=chat(SYSTEM, USER, ANSWER, FOLLOW_UP))
    assert turn1 is not None
    assert turn1 == turn2


def test_without_a_system_prompt_turns_still_share_the_key() -> None:
    assert key(body=chat(USER)) == key(body=chat(USER, ANSWER, FOLLOW_UP))
    assert key(body=chat(USER)) is not None


def test_the_key_does_not_depend_on_the_order_of_fields() -> None:
    reordered = {"content": USER["content"], "role": "user"}
    parts = [{"type": "text", "text": "Rename parse_args, please, in every module of this project."}]
    parts_reordered = [{"text": parts[0]["text"], "type": "text"}]
    assert key(body=chat(SYSTEM, USER)) == key(body={"messages": [SYSTEM, reordered], "model": "qwen"})
    assert key(body=chat({"role": "user", "content": parts})) == key(
        body=chat({"content": parts_reordered, "role": "user"})
    )


def test_different_leading_messages_give_different_keys() -> None:
    other_task = {"role": "user", "content": "Explain what the scheduler module does, step by step."}
    other_system = {
        "role": "system",
        "content": "You are a terse reviewer who only answers in bullet points.",
    }
    base = key(body=chat(SYSTEM, USER))
    assert key(body=chat(SYSTEM, other_task)) != base
    assert key(body=chat(other_system, USER)) != base
    assert key(body=chat(SYSTEM, USER, model="other")) != base
    assert key(body=chat({"role": "assistant", "content": SYSTEM["content"]}, USER)) != base  # roles count


def test_leading_messages_caps_the_prefix() -> None:
    long_system = {"role": "system", "content": "S" * 100}
    assert key(body=chat(long_system, USER), leading_messages=1) == key(
        body=chat(long_system, FOLLOW_UP), leading_messages=1
    )
    assert key(body=chat(long_system, USER), leading_messages=2) != key(
        body=chat(long_system, FOLLOW_UP), leading_messages=2
    )
    assert key(body=chat(long_system, USER), leading_messages=0) is None


def test_a_single_short_message_is_not_worth_a_pin() -> None:
    assert key(body=chat({"role": "user", "content": "hi"})) is None
    assert key(body=chat({"role": "user", "content": "hi"}), min_prefix_chars=2) is not None


def test_requests_without_usable_messages_or_prompt_have_no_key() -> None:
    assert key(body={"model": "qwen"}) is None
    assert key(body={"model": "qwen", "messages": []}) is None
    assert key(body={"model": "qwen", "messages": ["not a message"]}) is None
    assert key(body={"model": "qwen", "prompt": [1, 2, 3]}) is None


def test_ollama_chat_messages_are_keyed_like_openai_ones() -> None:
    ollama = {"model": "qwen", "messages": [SYSTEM, USER], "stream": False, "options": {"num_ctx": 8192}}
    assert key(body=ollama) == key(body=chat(SYSTEM, USER))


def test_lone_surrogates_in_content_do_not_break_the_key() -> None:
    assert key(body=chat({"role": "user", "content": "\ud800 broken surrogate in a long enough message"}))


@given(st.lists(st.text(min_size=40), min_size=1, max_size=4), st.lists(st.text(), max_size=4))
def test_any_later_turn_keeps_the_first_turns_key(opening: list[str], later: list[str]) -> None:
    first = [{"role": "system", "content": opening[0]}]
    first.append({"role": "user", "content": opening[1] if len(opening) > 1 else "tell me more"})
    turn = first + [{"role": "assistant", "content": t} for t in later]
    assert key(body=chat(*first)) == key(body=chat(*turn))


# --- keys from prompts -----------------------------------------------------------------------------------


def test_a_long_prompt_is_keyed_by_its_leading_characters() -> None:
    turn1 = "P" * 600
    turn2 = turn1 + " answer and a new question"
    generate = {"model": "qwen", "prompt": turn1, "system": "be brief"}
    assert key(body={"model": "qwen", "prompt": turn1}) == key(body={"model": "qwen", "prompt": turn2})
    assert key(body={"model": "qwen", "prompt": [turn1]}) == key(body={"model": "qwen", "prompt": turn1})
    assert key(body=generate) != key(body={"model": "qwen", "prompt": turn1})
    assert (key(body={"model": "qwen", "prompt": turn1}) or "").startswith("p:")


def test_a_prompt_shorter_than_the_leading_characters_has_no_key() -> None:
    assert key(body={"model": "qwen", "prompt": "P" * 100}) is None
    assert key(body={"model": "qwen", "prompt": "P" * 100}, leading_prompt_chars=100) is not None
    assert key(body={"model": "qwen", "prompt": "P" * 100}, leading_prompt_chars=0) is None


# --- the table -------------------------------------------------------------------------------------------


def test_a_new_key_is_a_miss_and_a_pinned_one_a_hit() -> None:
    table = AffinityTable(max_entries=10, ttl_seconds=60.0)
    assert table.choose("k", ["a", "b"], 0.0) == (None, Outcome.MISS)
    table.pin("k", "b", 0.0)
    assert table.choose("k", ["a", "b"], 1.0) == ("b", Outcome.HIT)
    assert len(table) == 1


def test_a_pin_to_a_backend_that_is_not_a_candidate_asks_for_a_repin() -> None:
    table = AffinityTable(max_entries=10, ttl_seconds=60.0)
    table.pin("k", "b", 0.0)
    assert table.choose("k", ["a", "c"], 1.0) == (None, Outcome.REPIN)
    assert table.choose("k", [], 1.0) == (None, Outcome.REPIN)
    table.pin("k", "a", 2.0)
    assert table.choose("k", ["a", "b"], 3.0) == ("a", Outcome.HIT)


def test_a_pin_expires_after_ttl_without_use_and_a_hit_extends_it() -> None:
    table = AffinityTable(max_entries=10, ttl_seconds=60.0)
    table.pin("k", "a", 0.0)
    assert table.choose("k", ["a"], 59.0) == ("a", Outcome.HIT)
    assert table.choose("k", ["a"], 118.0) == ("a", Outcome.HIT)
    assert table.pinned("k", 177.9) == "a"
    assert table.choose("k", ["a"], 178.0) == (None, Outcome.MISS)
    assert len(table) == 0


def test_a_repin_does_not_extend_the_pin() -> None:
    table = AffinityTable(max_entries=10, ttl_seconds=60.0)
    table.pin("k", "a", 0.0)
    assert table.choose("k", ["b"], 50.0) == (None, Outcome.REPIN)
    assert table.choose("k", ["a"], 61.0) == (None, Outcome.MISS)


def test_the_least_recently_used_pin_goes_when_the_table_is_full() -> None:
    table = AffinityTable(max_entries=2, ttl_seconds=60.0)
    table.pin("old", "a", 0.0)
    table.pin("mid", "a", 1.0)
    table.choose("old", ["a"], 2.0)  # "mid" is now the least recently used
    table.pin("new", "b", 3.0)
    assert len(table) == 2
    assert table.pinned("mid", 3.0) is None
    assert table.choose("old", ["a"], 4.0) == ("a", Outcome.HIT)
    assert table.choose("new", ["b"], 4.0) == ("b", Outcome.HIT)


def test_expired_pins_are_dropped_as_time_passes() -> None:
    table = AffinityTable(max_entries=100, ttl_seconds=10.0)
    for index in range(50):
        table.pin(f"k{index}", "a", float(index))
    table.pin("late", "b", 55.0)
    assert len(table) == 5  # k46..k49 and "late"; k45 has been idle for exactly ttl_seconds


def test_the_table_refuses_meaningless_limits() -> None:
    with pytest.raises(ValueError, match="max_entries"):
        AffinityTable(max_entries=0, ttl_seconds=1.0)
    with pytest.raises(ValueError, match="ttl_seconds"):
        AffinityTable(max_entries=1, ttl_seconds=0.0)
