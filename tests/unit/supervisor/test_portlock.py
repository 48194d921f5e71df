from __future__ import annotations

import contextlib
import json
import logging
import os
import signal
import stat
import subprocess
import sys
import textwrap
import time
from collections.abc import Iterator
from pathlib import Path

import psutil
import pytest

from gatewayd.errors import AlreadyRunning, InstanceError
from gatewayd.supervisor.portlock import (
    LockRecord,
    PortLock,
    holder_alive,
    read_record,
    record_path,
    running_instances,
)

PORT = 18484

# Acquires the lock in a separate process, writes its record, reports its pid and waits for stdin to close.
HOLDER = textwrap.dedent(
    """
    import sys, time
    from pathlib import Path
    from gatewayd.supervisor.portlock import LockRecord, PortLock
    lock = PortLock(Path(sys.argv[1]), int(sys.argv[2]))
    lock.acquire(timeout_seconds=5)
    lock.write_record(LockRecord.for_this_process(
        port=int(sys.argv[2]), host="127.0.0.1", config_path=None, started_at=time.time(),
        generation=1, restarts=0))
    print("held", flush=True)
    sys.stdin.read()
    """
)

# Acquires the lock, hands it to a grandchild through pass_fds, then leaves in the way argv[3] says:
#   "release": adopt in the grandchild, release() and a normal exit (atexit handlers run)
#   "orphan":  the grandchild only keeps the fd; the parent dies with os._exit, its record left behind
HANDOFF = textwrap.dedent(
    """
    import os, subprocess, sys, time
    from pathlib import Path
    from gatewayd.supervisor.portlock import LockRecord, PortLock
    state_dir, port, how = Path(sys.argv[1]), int(sys.argv[2]), sys.argv[3]
    lock = PortLock(state_dir, port)
    lock.acquire(timeout_seconds=5)
    lock.write_record(LockRecord.for_this_process(
        port=port, host="127.0.0.1", config_path=None, started_at=time.time(), generation=1, restarts=0))
    fd = lock.fileno()
    adopt = (
        "import sys, time\\n"
        "from pathlib import Path\\n"
        "from gatewayd.supervisor.portlock import LockRecord, PortLock\\n"
        f"lock = PortLock.inherit(Path({str(state_dir)!r}), {port}, {fd})\\n"
        f"lock.write_record(LockRecord.for_this_process(port={port}, host='127.0.0.1', config_path=None,"
        " started_at=time.time(), generation=2, restarts=1))\\n"
    ) if how == "release" else ""
    code = adopt + "print('adopted', flush=True)\\nimport time\\ntime.sleep(120)\\n"
    child = subprocess.Popen([sys.executable, "-c", code], pass_fds=[fd], stdout=subprocess.PIPE, text=True)
    os.close(fd)
    assert child.stdout.readline() == "adopted\\n"
    print(child.pid, flush=True)
    if how == "release":
        lock.release()
        sys.exit(0)
    os._exit(0)
    """
)


@pytest.fixture
def state_dir(tmp_path: Path) -> Path:
    return tmp_path / "state"


@contextlib.contextmanager
def holding(state_dir: Path, port: int = PORT) -> Iterator[subprocess.Popen[str]]:
    """Another process holding the lock for ``port`` (with its record) until the block ends."""
    with subprocess.Popen(
        [sys.executable, "-c", HOLDER, str(state_dir), str(port)],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    ) as holder:
        try:
            assert holder.stdout is not None
            assert holder.stdout.readline() == "held\n"
            yield holder
        finally:
            holder.kill()


@pytest.fixture
def holder(state_dir: Path) -> Iterator[subprocess.Popen[str]]:
    with holding(state_dir) as process:
        yield process


def record_for(pid: int, create_time: float, port: int = PORT) -> LockRecord:
    return LockRecord(
        pid=pid,
        create_time=create_time,
        port=port,
        host="127.0.0.1",
        config_path=None,
        version="0",
        started_at=time.time(),
        generation=1,
        restarts=0,
    )


def test_second_instance_in_another_process_is_refused_naming_the_holder(
    state_dir: Path, holder: subprocess.Popen[str]
) -> None:
    lock = PortLock(state_dir, PORT)
    with pytest.raises(AlreadyRunning) as caught:
        lock.acquire(timeout_seconds=0.2)
    assert caught.value.pid == holder.pid
    assert f"already running on port {PORT} (pid {holder.pid})" in caught.value.message
    assert f"gatewayd stop --port {PORT}" in caught.value.message
    assert not lock.held


def test_a_killed_holder_is_taken_over_within_a_second_even_as_an_unreaped_zombie(
    state_dir: Path, holder: subprocess.Popen[str]
) -> None:
    os.kill(holder.pid, signal.SIGKILL)
    # not reaped: the holder stays a zombie while we take over
    lock = PortLock(state_dir, PORT)
    started = time.monotonic()
    lock.acquire(timeout_seconds=1.0)
    assert time.monotonic() - started < 1.0
    assert psutil.Process(holder.pid).status() == psutil.STATUS_ZOMBIE
    record = read_record(state_dir, PORT)
    assert record is not None
    assert record.pid == holder.pid
    assert not holder_alive(record)
    lock.release()


def test_taking_over_a_stale_lock_is_logged_naming_the_dead_holder(
    state_dir: Path, holder: subprocess.Popen[str], caplog: pytest.LogCaptureFixture
) -> None:
    os.kill(holder.pid, signal.SIGKILL)
    holder.wait(10)  # reaped: the pid names no process
    with caplog.at_level(logging.WARNING, logger="gatewayd.supervisor.portlock"):
        lock = PortLock(state_dir, PORT)
        lock.acquire(timeout_seconds=1.0)
    lock.release()
    (warning,) = [r for r in caplog.records if r.levelno == logging.WARNING]
    message = warning.getMessage()
    assert f"took over the lock for port {PORT} from a holder that is gone: pid {holder.pid}" in message
    assert "no such process" in message
    assert "generation 1, config built-in defaults" in message


def test_a_lock_taken_after_a_clean_release_logs_nothing(
    state_dir: Path, caplog: pytest.LogCaptureFixture
) -> None:
    with caplog.at_level(logging.WARNING, logger="gatewayd.supervisor.portlock"):
        lock = PortLock(state_dir, PORT)
        lock.acquire(timeout_seconds=1.0)
        lock.write_record(record_for(os.getpid(), psutil.Process().create_time()))
        lock.release()  # removes its record
        # a record that names this very process (left by an earlier lock of it) is no takeover either
        own = record_for(os.getpid(), psutil.Process().create_time())
        record_path(state_dir, PORT).write_text(json.dumps(own.to_json()))
        lock.acquire(timeout_seconds=1.0)
    lock.release()
    assert [r for r in caplog.records if r.levelno >= logging.WARNING] == []


def test_a_released_lock_is_free_for_the_next_process_at_once(state_dir: Path) -> None:
    first = PortLock(state_dir, PORT)
    first.acquire()
    first.release()
    first.release()  # idempotent
    second = PortLock(state_dir, PORT)  # another open file description: contends like another process
    second.acquire(timeout_seconds=0)
    with pytest.raises(AlreadyRunning):
        first.acquire(timeout_seconds=0)
    second.release()


def test_holder_alive_tells_a_reused_pid_and_a_zombie_from_the_real_holder() -> None:
    me = psutil.Process()
    assert holder_alive(record_for(os.getpid(), me.create_time()))
    assert not holder_alive(record_for(os.getpid(), me.create_time() - 100.0))
    assert not holder_alive(record_for(0, 0.0))

    gone = subprocess.Popen([sys.executable, "-c", "pass"])
    gone.wait()
    assert not holder_alive(record_for(gone.pid, time.time()))

    zombie = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    zombie_record = record_for(zombie.pid, psutil.Process(zombie.pid).create_time())
    assert holder_alive(zombie_record)
    zombie.kill()
    deadline = time.monotonic() + 10
    while psutil.Process(zombie.pid).status() != psutil.STATUS_ZOMBIE and time.monotonic() < deadline:
        time.sleep(0.01)
    assert not holder_alive(zombie_record)
    zombie.wait()


def test_a_child_holding_the_inherited_lock_keeps_it_after_the_parent_releases_and_exits(
    state_dir: Path,
) -> None:
    parent = subprocess.run(
        [sys.executable, "-c", HANDOFF, str(state_dir), str(PORT), "release"],
        stdout=subprocess.PIPE,
        text=True,
        timeout=60,
        check=True,
    )
    child_pid = int(parent.stdout.strip())
    try:
        lock = PortLock(state_dir, PORT)
        with pytest.raises(AlreadyRunning) as caught:
            lock.acquire(timeout_seconds=0.2)
        assert caught.value.pid == child_pid  # the child's own record, which the parent's release kept
        record = read_record(state_dir, PORT)
        assert record is not None
        assert record.generation == 2
    finally:
        os.kill(child_pid, signal.SIGKILL)
    lock.acquire(timeout_seconds=1.0)
    lock.release()


def test_an_orphaned_child_still_holding_the_lock_is_named_in_the_refusal(state_dir: Path) -> None:
    parent = subprocess.run(
        [sys.executable, "-c", HANDOFF, str(state_dir), str(PORT), "orphan"],
        stdout=subprocess.PIPE,
        text=True,
        timeout=60,
        check=True,
    )
    orphan_pid = int(parent.stdout.strip())
    try:
        record = read_record(state_dir, PORT)
        assert record is not None
        assert not holder_alive(record)  # it names the parent, which is gone
        with pytest.raises(AlreadyRunning) as caught:
            PortLock(state_dir, PORT).acquire(timeout_seconds=0.2)
        assert caught.value.pid == orphan_pid
        assert f"held by pid {orphan_pid}" in caught.value.message
        assert "orphaned child" in caught.value.message
    finally:
        os.kill(orphan_pid, signal.SIGKILL)


def test_inherit_refuses_a_descriptor_that_is_not_the_lock_file(state_dir: Path, tmp_path: Path) -> None:
    lock = PortLock(state_dir, PORT)
    lock.acquire()
    other = os.open(tmp_path / "other", os.O_RDWR | os.O_CREAT, 0o600)
    try:
        with pytest.raises(InstanceError, match="is not the port lock"):
            PortLock.inherit(state_dir, PORT, other)
    finally:
        os.close(other)
        lock.release()


def test_inherit_refuses_a_descriptor_whose_lock_another_process_took(
    state_dir: Path, holder: subprocess.Popen[str]
) -> None:
    # our own open file description of the same file: it never held the lock the holder has
    fd = os.open(state_dir / f"port-{PORT}.lock", os.O_RDWR)
    try:
        with pytest.raises(InstanceError, match="another process took it"):
            PortLock.inherit(state_dir, PORT, fd)
    finally:
        os.close(fd)


def test_fileno_shares_the_lock_until_the_duplicate_is_closed(state_dir: Path) -> None:
    lock = PortLock(state_dir, PORT)
    lock.acquire()
    duplicate = lock.fileno()
    assert not os.get_inheritable(duplicate)
    lock.release()
    other = PortLock(state_dir, PORT)
    with pytest.raises(AlreadyRunning):
        other.acquire(timeout_seconds=0.1)
    os.close(duplicate)
    other.acquire(timeout_seconds=0.1)
    other.release()


def test_record_and_state_dir_are_private_and_release_removes_only_our_own_record(state_dir: Path) -> None:
    lock = PortLock(state_dir, PORT)
    with pytest.raises(RuntimeError, match="not held"):
        lock.write_record(record_for(os.getpid(), psutil.Process().create_time()))
    lock.acquire()
    assert stat.S_IMODE(state_dir.stat().st_mode) == 0o700
    mine = LockRecord.for_this_process(
        port=PORT,
        host="127.0.0.1",
        config_path="/etc/gatewayd.yaml",
        started_at=1.0,
        generation=3,
        restarts=2,
    )
    lock.write_record(mine)
    assert stat.S_IMODE(lock.record_path.stat().st_mode) == 0o600
    assert read_record(state_dir, PORT) == mine
    assert running_instances(state_dir) == [mine]
    lock.release()
    assert read_record(state_dir, PORT) is None

    lock.acquire()
    someone_else = record_for(1, psutil.Process(1).create_time())
    lock.write_record(someone_else)
    lock.release()
    assert read_record(state_dir, PORT) == someone_else


def test_running_instances_lists_only_live_holders(state_dir: Path) -> None:
    with holding(state_dir, 18486) as first, holding(state_dir, 18485) as second:
        dead = PortLock(state_dir, 18487)
        dead.acquire()
        dead.write_record(record_for(os.getpid(), psutil.Process().create_time() - 50, port=18487))
        (state_dir / "port-garbage.json").write_text("{}")
        (state_dir / "port-18488.json").write_text("not json")
        assert [record.pid for record in running_instances(state_dir)] == [second.pid, first.pid]
        assert [record.port for record in running_instances(state_dir)] == [18485, 18486]
        dead.release()
    assert running_instances(state_dir) == []
    assert running_instances(state_dir / "missing") == []


def test_a_malformed_record_reads_as_none(state_dir: Path) -> None:
    state_dir.mkdir()
    path = state_dir / f"port-{PORT}.json"
    for content in ("[]", '{"pid": 1}', '{"pid": "1", "create_time": 0}', "{"):
        path.write_text(content)
        assert read_record(state_dir, PORT) is None
