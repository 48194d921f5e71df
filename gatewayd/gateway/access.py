"""The access policy (``gatewayd.gateway.core.access``) at the edge of a generation: every request, the
inference endpoints and the Quart app alike, passes ``AccessEdge.screen`` before it is served."""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable, MutableMapping
from typing import Any

from gatewayd.config import ServerSettings
from gatewayd.errors import AccessRefused
from gatewayd.gateway.core import access
from gatewayd.gateway.core.access import ALLOWED, AccessPolicy, Decision, Verdict
from gatewayd.gateway.core.requestid import request_id
from gatewayd.gateway.dialects.registry import dialect_of_path

Scope = MutableMapping[str, Any]
Send = Callable[[MutableMapping[str, Any]], Awaitable[None]]

access_log = logging.getLogger("gatewayd.access")

_MAX_AGE = str(access.PREFLIGHT_MAX_AGE_SECONDS).encode()


class AccessEdge:
    """Screens one generation's requests: answers refusals (403 in the path's dialect) and preflights
    itself, and adds CORS headers to the responses for allowed origins, streams included."""

    def __init__(self, settings: ServerSettings, *, access_log_enabled: bool) -> None:
        self.policy = AccessPolicy(
            listen_host=settings.host,
            allowed_hosts=settings.allowed_hosts,
            cors_origins=settings.cors_origins,
            listen_port=settings.port,
        )
        self._log = access_log_enabled

    async def screen(self, scope: Scope, send: Send) -> Send | None:
        """The ``send`` to serve the request with, or None when the request has been answered here."""
        server = scope.get("server")
        decision = self.policy.decide(
            scope["method"], scope["path"], scope["headers"], server[0] if server else None
        )
        if decision is ALLOWED:
            return send
        if decision.verdict is Verdict.CORS:
            return _with_cors_headers(send, decision.origin)
        if decision.verdict is Verdict.PREFLIGHT:
            await _answer_preflight(scope, send, decision)
            return None
        assert decision.error is not None
        await self._refuse(scope, send, decision.error)
        return None

    async def _refuse(self, scope: Scope, send: Send, error: AccessRefused) -> None:
        path = scope["path"]
        dialect = dialect_of_path(path)
        body = dialect.error_body(error)
        rid = request_id(_header(scope, b"x-request-id"))
        headers = [
            (b"content-type", b"application/json"),
            (b"content-length", str(len(body)).encode()),
            (b"x-request-id", rid.encode()),
        ]
        status = dialect.error_status(error)
        await send({"type": "http.response.start", "status": status, "headers": headers})
        await send({"type": "http.response.body", "body": body, "more_body": False})
        if self._log:
            fields = {"request_id": rid, "path": path, "status": status, "error": error.message}
            access_log.info(
                "%s %s %s -> %s error=%r",
                rid,
                scope["method"],
                path,
                status,
                error.message,
                extra={"fields": fields},
            )


def _with_cors_headers(send: Send, origin: bytes) -> Send:
    cors = [
        (b"access-control-allow-origin", origin),
        (b"vary", b"Origin"),
        (b"access-control-expose-headers", access.EXPOSED_HEADERS),
    ]

    async def send_with_cors(message: MutableMapping[str, Any]) -> None:
        if message["type"] == "http.response.start":
            message = {**message, "headers": [*message.get("headers", ()), *cors]}
        await send(message)

    return send_with_cors


async def _answer_preflight(scope: Scope, send: Send, decision: Decision) -> None:
    headers = [
        (b"access-control-allow-origin", decision.origin),
        (b"vary", b"Origin, Access-Control-Request-Headers"),
        (b"access-control-allow-methods", access.ALLOWED_METHODS),
        (b"access-control-allow-headers", decision.allow_headers),
        (b"access-control-max-age", _MAX_AGE),
        (b"content-length", b"0"),
        (b"x-request-id", request_id(_header(scope, b"x-request-id")).encode()),
    ]
    await send({"type": "http.response.start", "status": 204, "headers": headers})
    await send({"type": "http.response.body", "body": b"", "more_body": False})


def _header(scope: Scope, wanted: bytes) -> str | None:
    for name, value in scope["headers"]:
        if name == wanted:
            return str(value.decode("latin-1"))
    return None
