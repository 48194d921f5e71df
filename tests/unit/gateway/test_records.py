"""Adoption records: the round trip through disk, bad files, and telling our child from a recycled PID."""

from __future__ import annotations

import json
import logging
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import replace
from pathlib import Path

import anyio
import psutil
import pytest

from gatewayd.gateway.backends import records
from gatewayd.gateway.backends.records import Record

#: long enough for any child in these tests; they are killed long before
CHILD_SLEEP_SECONDS = 600


def record_for(pid: int, *, backend_id: str = "llama", tmp_path: Path | None = None) -> Record:
    return Record(
        backend_id=backend_id,
        pid=pid,
        pgid=os.getpgid(pid),
        create_time=psutil.Process(pid).create_time(),
        port=18080,
        fingerprint="sha256:abc",
        log_path=(tmp_path or Path("/tmp")) / f"{backend_id}.log",
        started_at=time.time(),
    )


@contextmanager
def sleeper(*code: str) -> Iterator[tuple[subprocess.Popen[bytes], list[str]]]:
    """A child in a session (and process group) of its own, like a managed backend, that has run ``code``
    by the time this yields, with the lines ``code`` printed. Killed and reaped on the way out."""
    lines = ("import time", *code, "print('ready', flush=True)", f"time.sleep({CHILD_SLEEP_SECONDS})")
    child = subprocess.Popen(
        [sys.executable, "-c", "\n".join(lines)], stdout=subprocess.PIPE, start_new_session=True
    )
    stdout = child.stdout
    assert stdout is not None
    try:
        printed: list[str] = []
        for line in stdout:
            if line == b"ready\n":
                break
            printed.append(line.decode().strip())
        else:
            raise AssertionError(f"the child exited before it was ready: {printed}")
        yield child, printed
    finally:
        child.kill()
        child.wait()
        stdout.close()


def gone(pid: int) -> bool:
    """The process has ended: no such PID, or only a zombie waiting for its parent (init, here)."""
    try:
        return psutil.Process(pid).status() == psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return True


def test_a_record_survives_the_round_trip(tmp_path: Path) -> None:
    directory = tmp_path / "backends"
    record = record_for(os.getpid(), tmp_path=tmp_path)
    path = records.write_record(directory, record)
    assert path == directory / "llama.json"
    assert records.read_records(directory) == {"llama": record}
    assert [p.name for p in directory.iterdir()] == ["llama.json"]  # no temporary file left behind
    assert path.stat().st_mode & 0o777 == 0o600

    newer = replace(record, port=18081)
    records.write_record(directory, newer)
    assert records.read_records(directory) == {"llama": newer}

    records.remove_record(directory, "llama")
    records.remove_record(directory, "llama")  # already gone: not an error
    assert records.read_records(directory) == {}


def test_a_missing_directory_has_no_records(tmp_path: Path) -> None:
    assert records.read_records(tmp_path / "nowhere") == {}


def test_unreadable_files_are_skipped_and_reported(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    directory = tmp_path / "backends"
    good = record_for(os.getpid(), tmp_path=tmp_path)
    records.write_record(directory, good)
    (directory / "torn.json").write_text('{"pid": 12')
    (directory / "binary.json").write_bytes(b"\xff\xfe\x00")
    (directory / "wrongtype.json").write_text(
        json.dumps({**good.to_json(), "backend_id": "wrongtype", "pid": "1"})
    )
    (directory / "other.json").write_text(json.dumps(good.to_json()))  # names "llama", not "other"
    missing = good.to_json()
    del missing["create_time"]
    (directory / "missing.json").write_text(json.dumps({**missing, "backend_id": "missing"}))

    with caplog.at_level(logging.WARNING, logger="gatewayd.backends"):
        found = records.read_records(directory)

    assert found == {"llama": good}
    reported = "\n".join(message for message in caplog.messages if "unreadable backend record" in message)
    for name in ("torn", "binary", "wrongtype", "other", "missing"):
        assert f"{name}.json" in reported
    assert "'pid' is not a positive integer" in reported
    assert "missing 'create_time'" in reported


def test_an_id_that_is_not_a_file_name_is_refused(tmp_path: Path) -> None:
    record = replace(record_for(os.getpid()), backend_id="../escape")
    with pytest.raises(ValueError, match="cannot name a record file"):
        records.write_record(tmp_path, record)
    assert list(tmp_path.iterdir()) == []


def test_is_alive_for_a_running_process_with_its_own_create_time() -> None:
    assert records.is_alive(record_for(os.getpid()))


def test_is_alive_is_false_for_a_pid_with_another_create_time() -> None:
    record = record_for(os.getpid())
    assert not records.is_alive(replace(record, create_time=record.create_time - 5.0))


def test_is_alive_is_false_for_a_dead_pid() -> None:
    child = subprocess.Popen([sys.executable, "-c", "pass"])
    record = record_for(child.pid)
    child.wait()
    assert not records.is_alive(record)


def test_is_alive_is_false_for_a_zombie() -> None:
    with sleeper() as (child, _):
        record = record_for(child.pid)
        os.kill(child.pid, signal.SIGKILL)
        deadline = time.monotonic() + 10
        while psutil.Process(child.pid).status() != psutil.STATUS_ZOMBIE:
            assert time.monotonic() < deadline, "the child never became a zombie"
            time.sleep(0.01)
        assert not records.is_alive(record)


@pytest.mark.anyio
async def test_terminate_group_ends_the_leader_and_the_rest_of_its_group() -> None:
    member_code = f"import time; time.sleep({CHILD_SLEEP_SECONDS})"
    start_member = f"member = subprocess.Popen([sys.executable, '-c', {member_code!r}])"
    with sleeper("import subprocess, sys", start_member, "print(member.pid, flush=True)") as (child, printed):
        member = int(printed[0])
        assert os.getpgid(member) == child.pid
        record = record_for(child.pid)
        assert await records.terminate_group(record, signal.SIGTERM, timeout_seconds=5.0)
        assert child.wait(timeout=5) == -signal.SIGTERM
        assert not records.is_alive(record)
        with anyio.fail_after(5):
            while not gone(member):
                await anyio.sleep(0.01)


@pytest.mark.anyio
async def test_terminate_group_kills_a_leader_that_ignores_the_stop_signal() -> None:
    with sleeper("import signal", "signal.signal(signal.SIGTERM, signal.SIG_IGN)") as (child, _):
        record = record_for(child.pid)
        assert await records.terminate_group(record, signal.SIGTERM, timeout_seconds=0.3)
        assert child.wait(timeout=5) == -signal.SIGKILL


@pytest.mark.anyio
async def test_terminate_group_signals_nothing_when_the_pid_is_not_ours() -> None:
    with sleeper() as (child, _):
        record = record_for(child.pid)
        assert not await records.terminate_group(
            replace(record, create_time=record.create_time - 5.0), signal.SIGKILL, timeout_seconds=1.0
        )
        assert child.poll() is None
        assert not await records.terminate_group(
            replace(record, pgid=os.getpgid(0)), signal.SIGKILL, timeout_seconds=1.0
        )
        assert child.poll() is None
