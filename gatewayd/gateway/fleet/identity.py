"""Who answered: the instance's name, carried by every response in ``X-Gatewayd-Instance``."""

from __future__ import annotations

import socket
from collections.abc import Awaitable, Callable, MutableMapping
from typing import Any

from gatewayd.config import ServerSettings

Send = Callable[[MutableMapping[str, Any]], Awaitable[None]]

#: the response header naming the instance that answered (lower case, as ASGI carries header names)
INSTANCE_HEADER = b"x-gatewayd-instance"


def instance_name(settings: ServerSettings) -> str:
    """``server.instance_name``, else "host:port": this machine's host name and the configured port, which
    tell apart two instances on one machine as well as two machines."""
    if settings.instance_name is not None:
        return settings.instance_name
    return f"{socket.gethostname()}:{settings.port}"


def instance_header(name: str) -> tuple[bytes, bytes]:
    """The header pair, built once per generation (a name that is not ASCII is replaced character by
    character: the loader refuses such a name in a file, this keeps a host name from breaking responses)."""
    return INSTANCE_HEADER, name.encode("ascii", "replace")


def with_instance_header(send: Send, header: tuple[bytes, bytes]) -> Send:
    """``send`` that adds ``header`` to the response's start: every answer, error and stream."""

    async def send_with_instance(message: MutableMapping[str, Any]) -> None:
        if message["type"] == "http.response.start":
            message = {**message, "headers": [*message.get("headers", ()), header]}
        await send(message)

    return send_with_instance
