from __future__ import annotations

import dataclasses
import json
import os
import stat
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

from gatewayd.config.compare import ConfigChanges, NameChanges
from gatewayd.errors import ReloadError
from gatewayd.supervisor.sentinel import (
    HISTORY_LIMIT,
    ReloadOutcome,
    cancel_reload_request,
    history_path,
    last_outcome,
    latest_outcome_path,
    outcome_history,
    record_outcome,
    requests_dir,
    submit_reload_request,
    take_reload_requests,
    wait_for_outcome,
)

PORT = 18484


def outcome(*request_ids: str, result: str = "ok", generation: int = 2) -> ReloadOutcome:
    return ReloadOutcome(
        request_ids=tuple(request_ids),
        kind="reload",
        mode="in-process",
        reason="cli" if request_ids else "signal",
        outcome=result,
        message="reloaded",
        errors=(),
        old_pid=10,
        new_pid=10,
        generation=generation,
        started_at=time.time(),
        duration_seconds=0.25,
    )


# Plays the daemon: waits for a pending request, takes it, and records an outcome that names it.
DAEMON = textwrap.dedent(
    """
    import sys, time
    from pathlib import Path
    from gatewayd.supervisor.sentinel import ReloadOutcome, record_outcome, take_reload_requests
    state_dir, port = Path(sys.argv[1]), int(sys.argv[2])
    while not (requests := take_reload_requests(state_dir, port)):
        time.sleep(0.01)
    record_outcome(state_dir, port, ReloadOutcome(
        request_ids=tuple(r.id for r in requests), kind="reload",
        mode="respawn" if any(r.respawn for r in requests) else "in-process", reason="cli",
        outcome="rejected", message="config invalid", errors=("config.yaml:3: unknown key 'prot'",),
        old_pid=1, new_pid=1, generation=1, started_at=time.time(), duration_seconds=0.01))
    """
)


def test_submitted_requests_are_taken_once_oldest_first(tmp_path: Path) -> None:
    assert take_reload_requests(tmp_path, PORT) == []
    first = submit_reload_request(tmp_path, PORT, respawn=False)
    second = submit_reload_request(tmp_path, PORT, respawn=True)
    assert first.requested_by_pid == os.getpid()
    assert first.id != second.id
    assert stat.S_IMODE(requests_dir(tmp_path, PORT).stat().st_mode) == 0o700
    assert stat.S_IMODE((requests_dir(tmp_path, PORT) / f"{first.id}.json").stat().st_mode) == 0o600
    assert take_reload_requests(tmp_path, PORT) == [first, second]
    assert take_reload_requests(tmp_path, PORT) == []
    assert list(requests_dir(tmp_path, PORT).iterdir()) == []


def test_requests_are_per_port_and_can_be_cancelled(tmp_path: Path) -> None:
    mine = submit_reload_request(tmp_path, PORT, respawn=False)
    other = submit_reload_request(tmp_path, PORT + 1, respawn=False)
    assert cancel_reload_request(tmp_path, PORT, mine.id)
    assert not cancel_reload_request(tmp_path, PORT, mine.id)
    assert take_reload_requests(tmp_path, PORT) == []
    assert take_reload_requests(tmp_path, PORT + 1) == [other]


def test_malformed_requests_are_dropped(tmp_path: Path) -> None:
    good = submit_reload_request(tmp_path, PORT, respawn=True)
    directory = requests_dir(tmp_path, PORT)
    (directory / "junk.json").write_text("{not json")
    (directory / "wrong.json").write_text(json.dumps({"id": 1, "respawn": "yes"}))
    (directory / ".x.json.abc.tmp").write_text("half written")
    assert take_reload_requests(tmp_path, PORT) == [good]
    assert sorted(path.name for path in directory.iterdir()) == [".x.json.abc.tmp"]


def test_record_outcome_keeps_the_latest_and_a_bounded_history(tmp_path: Path) -> None:
    state_dir = tmp_path / "state"
    assert last_outcome(state_dir, PORT) is None
    assert outcome_history(state_dir, PORT) == []
    for generation in range(1, HISTORY_LIMIT + 6):
        record_outcome(state_dir, PORT, outcome(f"r{generation}", generation=generation))
    latest = last_outcome(state_dir, PORT)
    assert latest is not None
    assert latest.generation == HISTORY_LIMIT + 5
    assert latest.request_ids == (f"r{HISTORY_LIMIT + 5}",)
    history = outcome_history(state_dir, PORT)
    assert len(history) == HISTORY_LIMIT
    assert [item.generation for item in history] == list(range(6, HISTORY_LIMIT + 6))
    assert len(history_path(state_dir, PORT).read_text().splitlines()) == HISTORY_LIMIT
    for path in (latest_outcome_path(state_dir, PORT), history_path(state_dir, PORT)):
        assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert sorted(path.name for path in state_dir.iterdir()) == [
        f"reload-{PORT}.json",
        f"reload-{PORT}.jsonl",
        f"reload-{PORT}.lock",
    ]


def test_outcomes_round_trip_and_unreadable_ones_read_as_none(tmp_path: Path) -> None:
    original = ReloadOutcome(
        request_ids=("a", "b"),
        kind="reload",
        mode="respawn",
        reason="systemd",
        outcome="fallback",
        message="the child did not become ready; reloaded in process",
        errors=("child exited with 1",),
        old_pid=100,
        new_pid=100,
        generation=4,
        started_at=12.5,
        duration_seconds=15.2,
    )
    record_outcome(tmp_path, PORT, original)
    assert last_outcome(tmp_path, PORT) == original
    assert outcome_history(tmp_path, PORT) == [original]

    latest_outcome_path(tmp_path, PORT).write_text('{"outcome": "ok"}')
    assert last_outcome(tmp_path, PORT) is None
    with history_path(tmp_path, PORT).open("a") as history:
        history.write("garbage\n")
    assert outcome_history(tmp_path, PORT) == [original]


def test_an_outcome_with_an_unknown_value_is_refused() -> None:
    with pytest.raises(ValueError, match="outcome must be one of"):
        outcome(result="okay")


def test_concurrent_writers_lose_no_history_line(tmp_path: Path) -> None:
    writer = textwrap.dedent(
        """
        import sys, time
        from pathlib import Path
        from gatewayd.supervisor.sentinel import ReloadOutcome, record_outcome
        for n in range(40):
            record_outcome(Path(sys.argv[1]), 18484, ReloadOutcome(
                request_ids=(f"{sys.argv[2]}-{n}",), kind="reload", mode="in-process", reason="cli",
                outcome="ok", message="", errors=(), old_pid=1, new_pid=1, generation=n,
                started_at=time.time(), duration_seconds=0.0))
        """
    )
    writers = [subprocess.Popen([sys.executable, "-c", writer, str(tmp_path), name]) for name in "ab"]
    assert [process.wait(timeout=60) for process in writers] == [0, 0]
    ids = sorted(item.request_ids[0] for item in outcome_history(tmp_path, PORT))
    assert ids == sorted(f"{name}-{n}" for name in "ab" for n in range(40))


def test_wait_for_outcome_returns_the_daemons_answer_to_this_request(tmp_path: Path) -> None:
    record_outcome(tmp_path, PORT, outcome("someone-else"))
    with subprocess.Popen([sys.executable, "-c", DAEMON, str(tmp_path), str(PORT)]) as daemon:
        request = submit_reload_request(tmp_path, PORT, respawn=True)
        answer = wait_for_outcome(
            tmp_path, PORT, request.id, timeout_seconds=60, pid_alive=lambda: daemon.poll() is None
        )
    assert answer.request_ids == (request.id,)
    assert answer.outcome == "rejected"
    assert answer.mode == "respawn"
    assert answer.errors == ("config.yaml:3: unknown key 'prot'",)


def test_wait_for_outcome_gives_up_after_the_timeout(tmp_path: Path) -> None:
    request = submit_reload_request(tmp_path, PORT, respawn=False)
    started = time.monotonic()
    with pytest.raises(ReloadError, match=r"within 0\.2 s.*gatewayd status --port 18484"):
        wait_for_outcome(tmp_path, PORT, request.id, timeout_seconds=0.2, pid_alive=lambda: True)
    assert 0.2 <= time.monotonic() - started < 2


def test_wait_for_outcome_fails_at_once_when_the_instance_is_gone(tmp_path: Path) -> None:
    request = submit_reload_request(tmp_path, PORT, respawn=False)
    started = time.monotonic()
    with pytest.raises(ReloadError, match="stopped before it reported"):
        wait_for_outcome(tmp_path, PORT, request.id, timeout_seconds=30, pid_alive=lambda: False)
    assert time.monotonic() - started < 1


def test_wait_for_outcome_returns_an_outcome_recorded_just_before_the_instance_exited(tmp_path: Path) -> None:
    request = submit_reload_request(tmp_path, PORT, respawn=False)
    calls = 0

    def alive_once_then_recorded_and_gone() -> bool:
        nonlocal calls
        calls += 1
        record_outcome(tmp_path, PORT, outcome(request.id))
        return False

    answer = wait_for_outcome(
        tmp_path, PORT, request.id, timeout_seconds=30, pid_alive=alive_once_then_recorded_and_gone
    )
    assert answer.request_ids == (request.id,)
    assert calls == 1


def test_an_outcome_keeps_its_change_summary_and_bundle_and_an_older_record_without_them_still_reads(
    tmp_path: Path,
) -> None:
    summary = ConfigChanges(backends=NameChanges(added=("new",)), settings=("limits",))
    full = dataclasses.replace(outcome("r1"), changes=summary, bundle="/state/diagnostics/bundle-x.json")
    record_outcome(tmp_path, PORT, full)
    assert last_outcome(tmp_path, PORT) == full
    older = full.to_json()
    del older["changes"], older["bundle"]
    parsed = ReloadOutcome.from_json(older)
    assert parsed == dataclasses.replace(full, changes=None, bundle=None)


def test_a_request_carries_allow_weaker(tmp_path: Path) -> None:
    plain = submit_reload_request(tmp_path, PORT, respawn=False)
    weaker = submit_reload_request(tmp_path, PORT, respawn=False, allow_weaker=True)
    taken = {request.id: request.allow_weaker for request in take_reload_requests(tmp_path, PORT)}
    assert taken == {plain.id: False, weaker.id: True}
