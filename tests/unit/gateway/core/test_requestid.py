"""Request ids: a usable client id is kept, anything else is replaced by a fresh one."""

from __future__ import annotations

import re

import pytest

from gatewayd.gateway.core.requestid import MAX_CLIENT_REQUEST_ID_CHARS, request_id

_MINTED = re.compile(r"[0-9a-f]{16}")


@pytest.mark.parametrize("value", ["abc-123", "trace:7f/9", "x" * MAX_CLIENT_REQUEST_ID_CHARS])
def test_a_usable_client_id_is_kept(value: str) -> None:
    assert request_id(value) == value


@pytest.mark.parametrize(
    "value", [None, "", "has space", "new\nline", "caf\u00e9", "x" * (MAX_CLIENT_REQUEST_ID_CHARS + 1)]
)
def test_an_unusable_client_id_is_replaced(value: str | None) -> None:
    minted = request_id(value)
    assert _MINTED.fullmatch(minted)
    assert minted != request_id(value)
