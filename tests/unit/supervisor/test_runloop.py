"""The run loop's parts that run without a process of their own: a generation's life (start, retire, drain,
close), the force-exit watchdog thread, and what InstanceInfo reports. The whole loop, with real signals, is
exercised in tests/e2e/test_supervisor_*.py."""

from __future__ import annotations

import socket
import threading
import time
from collections.abc import AsyncIterator, Iterator, Mapping
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import anyio
import pytest

from gatewayd.config import Config
from gatewayd.supervisor.forceexit import ForceExitWatchdog
from gatewayd.supervisor.generations import GenerationRunner, GenerationState
from gatewayd.supervisor.instance import InstanceState
from gatewayd.supervisor.listeners import Listener, ListenerOrigin
from gatewayd.supervisor.portlock import PortLock, read_record

pytestmark = pytest.mark.anyio


class Gen:
    def __init__(self, log: list[str]) -> None:
        self.log = log
        self.release = anyio.Event()

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        await self.release.wait()

    def mark_draining(self) -> None:
        self.log.append("mark_draining")

    def end_streams(self) -> None:
        self.log.append("end_streams")
        self.release.set()

    def status(self) -> Mapping[str, object]:
        return {}


class Factory:
    def __init__(self, *, fail_start: bool = False, fail_close: bool = False) -> None:
        self.log: list[str] = []
        self.fail_start = fail_start
        self.fail_close = fail_close
        self.gen: Gen | None = None

    @asynccontextmanager
    async def lifetime(self) -> AsyncIterator[None]:
        yield

    def hand_over(self) -> None:
        pass

    def load_config(self, path: str | None) -> Config:
        return Config()

    @asynccontextmanager
    async def generation(self, config: Config, *, number: int, instance: Any) -> AsyncIterator[Gen]:
        self.log.append(f"start {number}")
        if self.fail_start:
            raise RuntimeError("cannot start")
        self.gen = Gen(self.log)
        try:
            yield self.gen
        finally:
            self.log.append(f"close {number}")
        if self.fail_close:
            raise RuntimeError("cannot close")


class NoInstance:
    def snapshot(self) -> Mapping[str, object]:
        return {}


def runner(factory: Factory, failures: list[BaseException] | None = None) -> GenerationRunner:
    return GenerationRunner(
        factory,
        Config(),
        number=3,
        instance=NoInstance(),
        on_failure=lambda _, error: (failures if failures is not None else []).append(error),
    )


async def test_a_start_failure_reaches_the_caller_and_leaves_nothing_running() -> None:
    factory = Factory(fail_start=True)
    generation = runner(factory)
    async with anyio.create_task_group() as tg:
        with pytest.raises(RuntimeError, match="cannot start"):
            await tg.start(generation.run)
    assert generation.state is GenerationState.CLOSED
    with pytest.raises(RuntimeError, match="has not started"):
        _ = generation.slot


async def test_retire_drains_the_pinned_requests_before_closing() -> None:
    factory = Factory()
    generation = runner(factory)
    async with anyio.create_task_group() as tg:
        await tg.start(generation.run)
        assert generation.state is GenerationState.SERVING
        slot = generation.slot
        slot.enter()  # one request in flight
        generation.retire(drain_timeout_seconds=5)
        await anyio.sleep(0.05)
        assert generation.state is GenerationState.DRAINING
        assert factory.log == ["start 3", "mark_draining"]
        slot.leave()
        with anyio.fail_after(5):
            await generation.wait_closed()
    assert factory.log == ["start 3", "mark_draining", "close 3"]
    assert generation.state is GenerationState.CLOSED


async def test_past_the_drain_bound_streams_are_ended_then_the_generation_closes() -> None:
    factory = Factory()
    generation = runner(factory)
    async with anyio.create_task_group() as tg:
        await tg.start(generation.run)
        generation.slot.enter()
        generation.retire(drain_timeout_seconds=0.1)
        started = time.monotonic()
        with anyio.fail_after(5):
            await generation.wait_closed()
        elapsed = time.monotonic() - started
    assert factory.log == ["start 3", "mark_draining", "end_streams", "close 3"]
    assert 0.09 < elapsed < 3


async def test_a_later_retire_with_a_shorter_bound_cuts_a_long_drain_short() -> None:
    factory = Factory()
    generation = runner(factory)
    async with anyio.create_task_group() as tg:
        await tg.start(generation.run)
        generation.slot.enter()
        generation.retire(drain_timeout_seconds=60)  # a reload's long drain
        await anyio.sleep(0.1)
        assert factory.log == ["start 3", "mark_draining"]
        generation.retire(drain_timeout_seconds=0.1)  # then a stop
        generation.retire(drain_timeout_seconds=30)  # a longer bound never extends it
        with anyio.fail_after(5):
            await generation.wait_closed()
    assert factory.log == ["start 3", "mark_draining", "end_streams", "close 3"]


async def test_a_failure_after_start_is_reported_not_raised() -> None:
    factory = Factory(fail_close=True)
    failures: list[BaseException] = []
    generation = runner(factory, failures=failures)
    async with anyio.create_task_group() as tg:
        await tg.start(generation.run)
        generation.retire(drain_timeout_seconds=5)
    assert [str(error) for error in failures] == ["cannot close"]
    assert generation.closed


def test_the_force_exit_watchdog_writes_then_exits_1_when_not_cancelled() -> None:
    calls: list[str] = []
    exited = threading.Event()

    def fake_exit(code: int) -> None:
        calls.append(f"exit {code}")
        exited.set()

    watchdog = ForceExitWatchdog(0.1, lambda: calls.append("bundle"), exit=fake_exit)
    watchdog.start()
    assert exited.wait(5)
    assert calls == ["bundle", "exit 1"]


def test_the_force_exit_watchdog_exits_even_if_the_bundle_fails() -> None:
    codes: list[int] = []
    exited = threading.Event()

    def broken_bundle() -> None:
        raise OSError("disk full")

    watchdog = ForceExitWatchdog(0.05, broken_bundle, exit=lambda code: (codes.append(code), exited.set()))
    watchdog.start()
    assert exited.wait(5)
    assert codes == [1]


def test_a_cancelled_force_exit_watchdog_does_nothing() -> None:
    calls: list[str] = []
    watchdog = ForceExitWatchdog(0.2, lambda: calls.append("bundle"), exit=lambda code: calls.append("exit"))
    watchdog.start()
    watchdog.cancel()
    time.sleep(0.4)
    assert calls == []


@pytest.fixture
def instance(tmp_path: Path) -> Iterator[InstanceState]:
    lock = PortLock(tmp_path / "state", 4343)
    lock.acquire()
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    sock.listen(1)
    yield InstanceState(
        lock=lock,
        listener=Listener(sock, ListenerOrigin.BOUND),
        state_dir=tmp_path / "state",
        config_path="/etc/gatewayd.yaml",
        started_at=time.time() - 10,
        generation=4,
        restarts=1,
    )
    lock.release()
    sock.close()


def test_the_instance_snapshot_reports_what_the_contract_names(instance: InstanceState) -> None:
    snapshot = instance.snapshot()
    assert set(snapshot) == {
        "pid",
        "started_at",
        "uptime_seconds",
        "generation",
        "restarts",
        "last_reload",
        "listen",
        "config_path",
        "version",
        "standby",
    }
    assert snapshot["standby"] is None  # restart.warm_standby is off by default
    assert snapshot["generation"] == 4
    assert snapshot["restarts"] == 1
    assert snapshot["last_reload"] is None
    assert 9 < float(snapshot["uptime_seconds"]) < 60  # type: ignore[arg-type]
    assert snapshot["listen"] == instance.listener.address


def test_the_lock_record_follows_the_generation(instance: InstanceState) -> None:
    instance.write_record()
    instance.generation = 5
    instance.write_record()
    record = read_record(instance.state_dir, 4343)
    assert record is not None
    assert (record.generation, record.restarts, record.config_path) == (5, 1, "/etc/gatewayd.yaml")
    assert record.host == "127.0.0.1"
