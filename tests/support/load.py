"""A bounded load of real HTTP clients, run on a background thread, for restart tests and the benchmark.

    with HttpLoad(url, keepalive_clients=8, fresh_clients=8) as load:
        ...                                  # signal the instance, reload, respawn
    load.result.assert_clean()               # zero failed requests, zero refused connections

Keep-alive clients reuse one pooled connection each (as SDKs do); fresh clients open a new connection for
every request (``Connection: close``). Nothing is retried: every error counts. A refused connection
(ConnectError) is counted apart from other failures, since "nothing refused" is a claim of its own.
"""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass, field
from types import TracebackType

import anyio
import httpx

#: per-request bound; a request slower than this counts as failed
REQUEST_TIMEOUT_SECONDS = 15.0


@dataclass
class LoadResult:
    sent: int = 0
    ok: int = 0
    failed: int = 0
    refused: int = 0
    #: (start time.monotonic(), seconds) of every successful request
    latencies: list[tuple[float, float]] = field(default_factory=list)
    #: the first few failures, described
    errors: list[str] = field(default_factory=list)
    #: status code -> count, for answered requests
    statuses: dict[int, int] = field(default_factory=dict)

    def record_error(self, text: str, *, refused: bool) -> None:
        if refused:
            self.refused += 1
        else:
            self.failed += 1
        if len(self.errors) < 20:
            self.errors.append(text)

    def assert_clean(self, *, minimum: int = 1) -> None:
        summary = f"{self.failed} failed and {self.refused} refused of {self.sent}: {self.errors}"
        assert self.refused == 0, summary
        assert self.failed == 0, summary
        assert self.ok >= minimum, f"only {self.ok} requests completed; the load did not run"

    def percentile(self, fraction: float, *, between: tuple[float, float] | None = None) -> float | None:
        """Latency percentile (seconds) of requests started within ``between`` (monotonic), or of all."""
        values = sorted(
            duration
            for started, duration in self.latencies
            if between is None or between[0] <= started <= between[1]
        )
        if not values:
            return None
        return values[min(len(values) - 1, int(fraction * len(values)))]


class HttpLoad:
    """Runs until the ``with`` block exits (or ``max_seconds``); ``result`` is final after exit."""

    def __init__(
        self,
        url: str,
        *,
        keepalive_clients: int = 4,
        fresh_clients: int = 4,
        expect_status: int = 200,
        max_seconds: float = 90.0,
    ) -> None:
        self.url = url
        self.keepalive_clients = keepalive_clients
        self.fresh_clients = fresh_clients
        self.expect_status = expect_status
        self.max_seconds = max_seconds
        self.result = LoadResult()
        self._stop = threading.Event()
        self._started = threading.Event()
        self._thread = threading.Thread(target=self._thread_main, name="http-load", daemon=True)
        self._error: BaseException | None = None

    def __enter__(self) -> HttpLoad:
        self._thread.start()
        self._started.wait(10)
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.stop()

    def stop(self) -> LoadResult:
        self._stop.set()
        self._thread.join(REQUEST_TIMEOUT_SECONDS + 10)
        if self._error is not None:
            raise self._error
        return self.result

    def wait_for_requests(self, count: int, timeout: float = 10.0) -> None:
        """Block until ``count`` more requests have completed successfully."""
        target = self.result.ok + count
        deadline = time.monotonic() + timeout
        while self.result.ok < target:
            if time.monotonic() > deadline:
                raise AssertionError(f"load made no progress: {self.result}")
            time.sleep(0.01)

    def _thread_main(self) -> None:
        try:
            anyio.run(self._main)
        except BaseException as error:
            self._error = error

    async def _main(self) -> None:
        deadline = time.monotonic() + self.max_seconds
        async with anyio.create_task_group() as tg:
            for _ in range(self.keepalive_clients):
                tg.start_soon(self._client, True, deadline)
            for _ in range(self.fresh_clients):
                tg.start_soon(self._client, False, deadline)
            self._started.set()
            while not self._stop.is_set() and time.monotonic() < deadline:
                await anyio.sleep(0.01)
            tg.cancel_scope.cancel()

    async def _client(self, keepalive: bool, deadline: float) -> None:
        limits = httpx.Limits(max_connections=1, max_keepalive_connections=1 if keepalive else 0)
        headers = {} if keepalive else {"connection": "close"}
        async with httpx.AsyncClient(
            limits=limits, timeout=REQUEST_TIMEOUT_SECONDS, headers=headers
        ) as client:
            while not self._stop.is_set() and time.monotonic() < deadline:
                await self._one(client)

    async def _one(self, client: httpx.AsyncClient) -> None:
        result = self.result
        started = time.monotonic()
        result.sent += 1
        try:
            response = await client.get(self.url)
        except httpx.ConnectError as error:
            result.record_error(f"refused: {error!r}", refused=True)
            await anyio.sleep(0.01)
            return
        except httpx.HTTPError as error:
            result.record_error(f"{type(error).__name__}: {error!r}", refused=False)
            return
        result.statuses[response.status_code] = result.statuses.get(response.status_code, 0) + 1
        if response.status_code != self.expect_status:
            result.record_error(f"status {response.status_code}: {response.text[:200]}", refused=False)
            return
        result.ok += 1
        result.latencies.append((started, time.monotonic() - started))
