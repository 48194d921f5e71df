"""Request ids: the client's ``X-Request-Id`` when it is usable, else a fresh one."""

from __future__ import annotations

import re
import secrets

#: a client's id is echoed (and logged) only if it is this short and made of visible ASCII
MAX_CLIENT_REQUEST_ID_CHARS = 128
_USABLE = re.compile(rf"[\x21-\x7e]{{1,{MAX_CLIENT_REQUEST_ID_CHARS}}}")


def request_id(client_value: str | None) -> str:
    """``client_value`` if it is a usable id (so a caller can correlate its logs with ours), else 16 random
    hex digits. An unusable one (too long, spaces, control or non-ASCII characters) is replaced, never
    echoed: it would end up in response headers and log lines."""
    if client_value and _USABLE.fullmatch(client_value):
        return client_value
    return secrets.token_hex(8)
