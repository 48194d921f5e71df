"""Addresses shown without their credentials (a store URL in logs, /status and ``gatewayd config``)."""

from __future__ import annotations

from urllib.parse import parse_qsl, urlencode, urlsplit

#: what a redacted secret is shown as
REDACTED = "***"
#: query parameters of a libpq URL that carry a secret
_SECRET_PARAMS = frozenset({"password", "sslpassword"})


def redact_url(url: str) -> str:
    """``url`` with its password (``user:password@``, ``?password=``) replaced by ``***``."""
    try:
        parts = urlsplit(url)
    except ValueError:
        return "<unparsable store URL>"
    netloc = parts.netloc
    if "@" in netloc:
        userinfo, _, hostinfo = netloc.rpartition("@")
        user, sep, _password = userinfo.partition(":")
        netloc = f"{user}:{REDACTED}@{hostinfo}" if sep else f"{user}@{hostinfo}"
    query = parts.query
    if query:
        pairs = parse_qsl(query, keep_blank_values=True)
        query = urlencode([(k, REDACTED if k.lower() in _SECRET_PARAMS else v) for k, v in pairs], safe="*/")
    if (netloc, query) == (parts.netloc, parts.query):
        return url
    # built by hand: urlunsplit drops the empty host of postgresql:///db
    shown = f"{parts.scheme}://{netloc}{parts.path}"
    return shown + (f"?{query}" if query else "") + (f"#{parts.fragment}" if parts.fragment else "")
