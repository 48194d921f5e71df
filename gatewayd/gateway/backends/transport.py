"""The upstream HTTP client: the one module that knows aiohttp, and the one place its errors become ours.

aiohttp runs only on asyncio, so this module uses asyncio's own ``asyncio.timeout`` for its bounds: it
costs a fraction of a generic cancel scope, and these bounds sit on every request and every stream chunk.

Why aiohttp and not httpx here: measured on 2 cores behind the same quart+hypercorn proxy, httpx's pool
reached 555 req/s at 16 clients and 211 at 64 (4.7 ms CPU per request) where aiohttp's client reached 2,273
and 1,861 (~0.45 ms); per relayed stream chunk ~180 µs vs ~83 µs. Swapping the client means rewriting only
this module: the rest of the gateway sees ``Transport`` and ``UpstreamResponse``.
"""

from __future__ import annotations

import asyncio
import errno
import logging
import weakref
from collections.abc import AsyncIterator, Mapping
from contextvars import ContextVar
from types import TracebackType
from typing import Any

import aiohttp
import anyio
from aiohttp import hdrs
from multidict import CIMultiDict

from gatewayd.config import Timeouts
from gatewayd.errors import BackendRefused, BackendTimeout, BackendUnavailable, BadGateway, Draining

log = logging.getLogger("gatewayd.transport")

#: a pooled connection unused for this long is closed (backends often close theirs at 5 to 60 s)
POOL_IDLE_SECONDS = 4.0

#: the default headers aiohttp would add that an upstream request goes without: a User-Agent says nothing
#: the backend needs, and an Accept-Encoding would invite a compressed body the relay passes on as is
_SKIPPED_AUTO_HEADERS: CIMultiDict[None] = CIMultiDict({hdrs.USER_AGENT: None, hdrs.ACCEPT_ENCODING: None})

_STALE_CONNECTION_ERRORS = (aiohttp.ServerDisconnectedError, aiohttp.ClientOSError)
#: what the kernel says when nothing listens at the address (or the listener went away mid-handshake)
_REFUSED_ERRNOS = frozenset({errno.ECONNREFUSED, errno.ECONNRESET})


class UpstreamResponse:
    """A response whose headers have arrived. The body is read with ``read`` or ``chunks``; ``close`` is
    idempotent and must be called (the relay does so in a finally)."""

    __slots__ = ("__weakref__", "_backend", "_response", "_session", "_timeouts", "headers", "status")

    def __init__(
        self,
        response: aiohttp.ClientResponse,
        timeouts: Timeouts,
        backend: str,
        session: aiohttp.ClientSession,
    ) -> None:
        self._response = response
        self._session = session
        self._timeouts = timeouts
        self._backend = backend
        self.status = response.status
        self.headers: Mapping[str, str] = response.headers

    @property
    def content_type(self) -> str:
        return self._response.content_type

    async def read(self) -> bytes:
        """The whole body, bounded by the idle timeout between reads.

        Raises BackendTimeout, BackendUnavailable (connection lost), Draining (the transport closed)."""
        try:
            async with asyncio.timeout(self._timeouts.idle_seconds):
                return await self._response.read()
        except TimeoutError:
            raise BackendTimeout(
                f"backend {self._backend} sent no data for {self._timeouts.idle_seconds:g} s",
                backend=self._backend,
            ) from None
        except (aiohttp.ClientError, OSError) as error:
            raise _lost(error, self._backend, self._session, "its answer") from error
        except RuntimeError as error:  # aiohttp on a connection its closed session dropped
            if self._session.closed:
                raise Draining() from error
            raise

    async def chunks(self) -> AsyncIterator[bytes]:
        """Body bytes as they arrive. Each wait is bounded by ``idle_seconds``.

        Raises BackendTimeout (idle gap), BackendUnavailable (connection lost mid-body) and Draining (the
        transport closed: the gateway is restarting)."""
        content = self._response.content
        idle = self._timeouts.idle_seconds
        while True:
            try:
                async with asyncio.timeout(idle):
                    data = await content.readany()
            except TimeoutError:
                raise BackendTimeout(
                    f"backend {self._backend} went silent for {idle:g} s mid-stream", backend=self._backend
                ) from None
            except (aiohttp.ClientError, OSError) as error:
                raise _lost(error, self._backend, self._session, "the stream") from error
            except RuntimeError as error:
                if self._session.closed:
                    raise Draining() from error
                raise
            if not data:
                if not content.is_eof():  # pragma: no cover - aiohttp returns b"" only at EOF
                    continue
                return
            yield data

    def close(self) -> None:
        """Release the connection: back to the pool when the body was read, else closed."""
        self._response.release()

    def abort(self) -> None:
        """Drop the connection at once (the client went away; the backend stops generating)."""
        self._response.close()

    def cut(self) -> None:
        """The transport is closing under this response: its reader gets Draining at once (aiohttp closes
        the connection but does not wake a reader waiting for more of a body whose length it knows)."""
        self._response.content.set_exception(Draining())


class _Attempt:
    """What the connector learned about one attempt's connection."""

    __slots__ = ("reused",)

    def __init__(self) -> None:
        self.reused = False


#: the attempt ``Transport.open`` is making in this task, for the connector to mark
_ATTEMPT: ContextVar[_Attempt | None] = ContextVar("gatewayd_transport_attempt", default=None)


class _ReuseAwareConnector(aiohttp.TCPConnector):
    """Notes on the current attempt whether its connection came from the pool (its protocol was seen
    before). aiohttp's tracing says the same, but costs every request the dispatch of all its signals
    (measured ~90 µs of CPU per request here); this costs a set lookup. Reaches into aiohttp only through
    ``BaseConnector.connect(req, traces, timeout)``, which tests/integration/gateway/test_transport.py
    guards."""

    def __init__(self, **options: Any) -> None:
        super().__init__(**options)
        self._seen: weakref.WeakSet[Any] = weakref.WeakSet()

    async def connect(self, req: Any, traces: Any, timeout: Any) -> Any:
        connection = await super().connect(req, traces, timeout)
        protocol = connection.protocol
        if protocol is not None:
            attempt = _ATTEMPT.get()
            if attempt is not None:
                attempt.reused = protocol in self._seen
            self._seen.add(protocol)
        return connection


class _UpstreamRequest(aiohttp.ClientRequest):
    """aiohttp's request with its automatic headers decided once: ``Accept: */*`` unless given, and neither
    ``User-Agent`` nor ``Accept-Encoding``. (The session's ``skip_auto_headers`` does the same by building a
    sorted multidict and a copy of every header on each request: 3% of the gateway's CPU at 16 clients.)"""

    def update_auto_headers(self, skip_auto_headers: Any) -> None:
        self._skip_auto_headers = _SKIPPED_AUTO_HEADERS  # read only, by aiohttp's body headers
        if hdrs.ACCEPT not in self.headers:
            self.headers[hdrs.ACCEPT] = "*/*"


class Transport:
    """Owns one aiohttp session for one generation. Enter it before use; exiting closes every connection."""

    def __init__(self) -> None:
        self._session: aiohttp.ClientSession | None = None
        #: responses whose body may still be read: cut when the transport closes
        self._responses: weakref.WeakSet[UpstreamResponse] = weakref.WeakSet()

    async def __aenter__(self) -> Transport:
        connector = _ReuseAwareConnector(
            limit=0,
            limit_per_host=0,
            keepalive_timeout=POOL_IDLE_SECONDS,
            enable_cleanup_closed=False,
            ttl_dns_cache=60,
        )
        self._session = aiohttp.ClientSession(
            connector=connector,
            timeout=aiohttp.ClientTimeout(total=None),
            auto_decompress=False,
            request_class=_UpstreamRequest,
            raise_for_status=False,
        )
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        if self._session is not None:
            for response in list(self._responses):
                response.cut()
            with anyio.CancelScope(shield=True):
                await self._session.close()
            self._session = None

    async def open(
        self,
        method: str,
        url: str,
        *,
        backend: str,
        timeouts: Timeouts,
        headers: Mapping[str, str] | None = None,
        body: bytes | None = None,
    ) -> UpstreamResponse:
        """Send a request and return once the response headers arrived.

        The connect phase is bounded by ``timeouts.connect_seconds`` and the wait for the first byte by
        ``timeouts.first_byte_seconds``. A request that fails at once on a reused pooled connection (the
        backend had closed it while idle, so the request never reached it) is sent once more; a failure on a
        fresh connection is not retried (the backend may have received it). Raises BackendRefused (nothing
        listens: refused or reset while connecting), BackendUnavailable (other connection failures),
        BackendTimeout, BadGateway (not HTTP) and Draining (the transport has closed, before or during the
        request: its generation is gone, the gateway is restarting; never blamed on the backend). On
        cancellation the request is abandoned and its connection closed."""
        session = self._session
        if session is None or session.closed:
            raise Draining()
        # sock_read runs from the moment the request is sent until the response headers (the first byte);
        # _stop_first_byte_bound then hands the body over to the idle bound of read() and chunks()
        request_timeout = aiohttp.ClientTimeout(
            total=None, sock_connect=timeouts.connect_seconds, sock_read=timeouts.first_byte_seconds
        )
        for attempt in (1, 2):
            # a request that fails on a *reused* connection never reached the backend (it had closed the
            # idle connection) and is safe to send again; one that fails on a fresh connection may have
            noted = _Attempt()
            token = _ATTEMPT.set(noted)
            try:
                async with asyncio.timeout(timeouts.connect_seconds + timeouts.first_byte_seconds):
                    response = await session.request(
                        method,
                        url,
                        data=body,
                        headers=headers,
                        timeout=request_timeout,
                        allow_redirects=False,
                    )
            except aiohttp.SocketTimeoutError:
                raise BackendTimeout(
                    f"backend {backend} sent no response within {timeouts.first_byte_seconds:g} s",
                    backend=backend,
                ) from None
            except aiohttp.ServerTimeoutError as error:
                raise BackendTimeout(
                    f"backend {backend}: connect timed out after {timeouts.connect_seconds:g} s",
                    backend=backend,
                ) from error
            except TimeoutError:
                raise BackendTimeout(
                    f"backend {backend} did not answer within "
                    f"{timeouts.connect_seconds + timeouts.first_byte_seconds:g} s",
                    backend=backend,
                ) from None
            except _STALE_CONNECTION_ERRORS as error:
                if session.closed:  # our own session was closed under the request, not the backend's doing
                    raise Draining() from error
                if attempt == 1 and noted.reused and not isinstance(error, aiohttp.ClientConnectorError):
                    continue
                raise _unavailable(error, backend) from error
            except (aiohttp.ClientResponseError, aiohttp.ClientPayloadError) as error:
                log.warning("backend %s sent an invalid HTTP response: %r", backend, error)
                raise BadGateway(
                    f"backend {backend} sent an invalid HTTP response", backend=backend
                ) from error
            except (aiohttp.ClientError, OSError, asyncio.IncompleteReadError) as error:
                if session.closed:
                    raise Draining() from error
                raise _unavailable(error, backend) from error
            except RuntimeError as error:  # aiohttp: "Session is closed" (closed between two attempts)
                if session.closed:
                    raise Draining() from error
                raise
            finally:
                _ATTEMPT.reset(token)
            _stop_first_byte_bound(response)
            upstream = UpstreamResponse(response, timeouts, backend, session)
            self._responses.add(upstream)
            return upstream
        raise AssertionError("unreachable")  # pragma: no cover


def _stop_first_byte_bound(response: aiohttp.ClientResponse) -> None:
    """The headers are in: stop aiohttp's read timer (sock_read, the first-byte bound) so that it does not
    also cut the body, whose reads are bounded by ``idle_seconds`` instead."""
    connection = response.connection
    protocol = connection.protocol if connection is not None else None
    if protocol is not None:
        protocol.read_timeout = None
        protocol.start_timeout()  # with no read timeout set, this only cancels the pending timer


def _unavailable(error: BaseException, backend: str) -> BackendUnavailable:
    detail = str(error) or type(error).__name__
    cause = error.os_error if isinstance(error, aiohttp.ClientConnectorError) else error
    refused = isinstance(cause, OSError) and cause.errno in _REFUSED_ERRNOS
    if refused or isinstance(error, aiohttp.ServerDisconnectedError):
        return BackendRefused(f"backend {backend} is unreachable: {detail}", backend=backend)
    return BackendUnavailable(f"backend {backend} is unreachable: {detail}", backend=backend)


def _lost(
    error: BaseException, backend: str, session: aiohttp.ClientSession, what: str
) -> Draining | BackendUnavailable:
    """The error for a body cut short while ``what`` (the stream, its answer) was being read: Draining when
    our own session was closed under it (the gateway is restarting), else the backend's doing. The client is
    told what happened in its terms; the HTTP client's own wording (``TransferEncodingError: 400,
    message='Not enough data...'``) goes to the log only."""
    if session.closed:
        return Draining()
    log.warning("backend %s: connection lost mid-body: %r", backend, error)
    return BackendUnavailable(f"backend {backend} closed {what} before it ended", backend=backend)
