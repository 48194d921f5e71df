"""Which requests a web browser may make to gatewayd, decided once per request from its raw headers.

A daemon on loopback is reachable from every page its user opens. Two things keep such pages out:

- **the Host header** must name this machine: a loopback name or address, the listen address, the local
  address the connection arrived on, or a name in ``server.allowed_hosts``. A page that rebinds its own
  name to 127.0.0.1 (DNS rebinding) sends that name as Host, so it is refused;
- **the site a request comes from**, as the browser states it in ``Origin`` and ``Sec-Fetch-Site``: a
  request from another site (Origin not this one, ``Origin: null``, or Sec-Fetch-Site cross-site or
  same-site) is refused unless its origin is in ``server.cors_origins``. Those origins get CORS answers:
  preflights are answered and responses carry Access-Control-* headers. A top-level navigation (a link
  followed to the status page) is let through: the page that made it cannot read the answer.

Non-browser clients (CLIs, SDKs) send neither Origin nor Sec-Fetch-Site, and are only subject to the Host
rule. /admin/* is same-origin only, whatever ``server.cors_origins`` says. /healthz and /readyz answer any
Host and any site: they reveal nothing, change nothing, and load balancers name the host in many ways.
"""

from __future__ import annotations

import enum
import ipaddress
from collections.abc import Iterable
from dataclasses import dataclass

from gatewayd.errors import AccessRefused

#: answered whatever the Host and the site (CORS headers still go to allowed origins)
PROBE_PATHS = frozenset({"/healthz", "/readyz"})
#: the path prefix that is same-origin only
ADMIN_PREFIX = "/admin/"
#: a ``server.allowed_hosts`` / ``server.cors_origins`` entry that matches every host / origin
ANY = "*"
#: listen addresses that are not one address (their real local address is the connection's)
WILDCARD_HOSTS = frozenset({"", "0.0.0.0", "::"})
#: Host names that are always this machine's
LOOPBACK_NAMES = frozenset({"localhost", "127.0.0.1", "::1"})

#: response headers a page of an allowed origin may read (every header gatewayd sets for clients)
EXPOSED_HEADERS = (
    b"x-request-id, x-gatewayd-backend, x-gatewayd-preferred-backend, x-gatewayd-affinity, "
    b"x-gatewayd-attempts, retry-after, x-ratelimit-limit-requests, x-ratelimit-remaining-requests, "
    b"x-ratelimit-reset-requests, x-ratelimit-limit-tokens, x-ratelimit-remaining-tokens, "
    b"x-ratelimit-reset-tokens"
)
#: request headers a preflight allows when it asks for none (the ones it asks for are allowed too)
ALLOWED_REQUEST_HEADERS = (
    b"authorization, content-type, x-api-key, anthropic-version, x-request-id, x-gatewayd-preferred-backend"
)
ALLOWED_METHODS = b"GET, POST, OPTIONS"
#: how long a browser may reuse a preflight's answer (browsers cap it: Chromium at 2 hours)
PREFLIGHT_MAX_AGE_SECONDS = 600

# indexes into the headers one request is decided on
_HOST, _ORIGIN, _SITE, _MODE, _DEST, _PREFLIGHT, _REQUEST_HEADERS = range(7)
_WATCHED = {
    b"host": _HOST,
    b"origin": _ORIGIN,
    b"sec-fetch-site": _SITE,
    b"sec-fetch-mode": _MODE,
    b"sec-fetch-dest": _DEST,
    b"access-control-request-method": _PREFLIGHT,
    b"access-control-request-headers": _REQUEST_HEADERS,
}
_OTHER_SITE = frozenset({b"cross-site", b"same-site"})
_TOKEN_CHARS = frozenset(b"abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789-_, ")


class Verdict(enum.Enum):
    ALLOW = enum.auto()  # serve it as it is
    CORS = enum.auto()  # serve it, adding CORS headers for its (allowed) origin
    PREFLIGHT = enum.auto()  # answer the CORS preflight of an allowed origin
    REFUSE = enum.auto()  # answer 403 with ``error``


@dataclass(frozen=True, slots=True)
class Decision:
    verdict: Verdict
    #: the request's Origin, as sent (CORS and PREFLIGHT)
    origin: bytes = b""
    #: the request headers a preflight may announce (PREFLIGHT)
    allow_headers: bytes = b""
    error: AccessRefused | None = None


ALLOWED = Decision(Verdict.ALLOW)


class AccessPolicy:
    """The rules above for one generation's settings; ``decide`` costs a dict lookup per header and a few
    set lookups, so it runs on every request, the inference hot path included."""

    def __init__(
        self,
        *,
        listen_host: str,
        allowed_hosts: Iterable[str],
        cors_origins: Iterable[str],
        listen_port: int = 0,
    ) -> None:
        hosts = {host_name(host) for host in allowed_hosts}
        self._any_host = ANY in hosts
        listen = host_name(listen_host)
        if listen not in WILDCARD_HOSTS:
            hosts.add(listen)
        self._hosts = frozenset(hosts | LOOPBACK_NAMES)
        #: Host headers as clients usually write them ("127.0.0.1:8484"): matched without parsing
        self._usual = frozenset(
            f"{f'[{name}]' if ':' in name else name}{suffix}".encode("latin-1")
            for name in self._hosts
            for suffix in ("", f":{listen_port}" if listen_port else "")
        )
        origins = {origin.lower().encode("latin-1") for origin in cors_origins}
        self._any_origin = ANY.encode() in origins
        self._origins = frozenset(origins)

    def decide(
        self,
        method: str,
        path: str,
        headers: Iterable[tuple[bytes, bytes]],
        local_address: str | None = None,
    ) -> Decision:
        """What to do with a request. ``headers`` are the ASGI scope's (lower-case names);
        ``local_address`` is the address the connection arrived on (the scope's ``server``)."""
        seen: list[bytes | None] = [None] * 7
        for name, value in headers:
            index = _WATCHED.get(name)
            if index is not None:
                seen[index] = value
        host, origin, site = seen[_HOST], seen[_ORIGIN], seen[_SITE]
        if origin is None and site is None:
            if host is None or self._any_host or self.host_allowed(host, local_address):
                return ALLOWED  # the usual request: a non-browser client naming this machine
            return self._refused(path, _host_error(host))
        return self._browser_decision(method, path, seen, local_address)

    def host_allowed(self, host: bytes, local_address: str | None = None) -> bool:
        if host in self._usual:
            return True
        name = host_name(host.decode("latin-1"))
        if name in self._hosts or name == local_address:
            return True
        try:
            return ipaddress.ip_address(name).is_loopback  # the rest of 127.0.0.0/8
        except ValueError:
            return False

    def _browser_decision(
        self, method: str, path: str, seen: list[bytes | None], local_address: str | None
    ) -> Decision:
        host, origin, site = seen[_HOST], seen[_ORIGIN], seen[_SITE]
        if host is not None and not self._any_host and not self.host_allowed(host, local_address):
            return self._refused(path, _host_error(host))
        admin = path.startswith(ADMIN_PREFIX)
        cors = False
        if origin is not None:
            if host is not None and _same_origin(origin, host):
                pass
            elif not admin and (self._any_origin or origin.lower() in self._origins):
                cors = True
            else:
                return self._refused(path, _origin_error(origin, admin))
        if site in _OTHER_SITE and not cors:
            navigation = (
                seen[_MODE] == b"navigate" and seen[_DEST] == b"document" and method in ("GET", "HEAD")
            )
            if admin or not navigation:
                return self._refused(path, _site_error(site, admin))
        if not cors:
            return ALLOWED
        assert origin is not None
        if method == "OPTIONS" and seen[_PREFLIGHT] is not None:
            return Decision(Verdict.PREFLIGHT, origin, _allow_headers(seen[_REQUEST_HEADERS]))
        return Decision(Verdict.CORS, origin)

    def _refused(self, path: str, error: AccessRefused) -> Decision:
        if path in PROBE_PATHS:
            return ALLOWED
        return Decision(Verdict.REFUSE, error=error)


def host_name(host: str) -> str:
    """The name or address in a Host header or a setting, lower-case, without port, brackets or final dot
    ("[::1]:8484" -> "::1"); "" for a value that is not one."""
    text = host.strip().lower()
    if text.startswith("["):
        end = text.find("]")
        rest = text[end + 1 :]
        if end < 0 or (rest and not (rest[0] == ":" and rest[1:].isdigit())):
            return ""
        return text[1:end]
    if text.count(":") == 1:
        text, _, port = text.partition(":")
        if port and not port.isdigit():
            return ""
    return text.removesuffix(".")


def _same_origin(origin: bytes, host: bytes) -> bool:
    """Origin names the host:port the request was sent to (the scheme is not compared: behind a TLS proxy
    the page is https while gatewayd speaks http, and nothing else listens on gatewayd's port)."""
    _, separator, netloc = origin.partition(b"://")
    return bool(separator) and netloc.lower() == host.lower()


def _allow_headers(requested: bytes | None) -> bytes:
    """The headers a preflight allows: the usual ones, plus those it asks for (kept only if they are a
    plain list of header names)."""
    if not requested or not _TOKEN_CHARS.issuperset(requested):
        return ALLOWED_REQUEST_HEADERS
    return ALLOWED_REQUEST_HEADERS + b", " + requested.strip(b", ")


def _host_error(host: bytes) -> AccessRefused:
    shown = host.decode("latin-1")[:100]
    return AccessRefused(
        f"Host {shown!r} is not allowed: gatewayd answers requests that name a loopback address, its listen "
        "address, or a name in server.allowed_hosts (add the name there if clients use it)",
        code="host_not_allowed",
    )


def _origin_error(origin: bytes, admin: bool) -> AccessRefused:
    shown = origin.decode("latin-1")[:100]
    if admin:
        return AccessRefused(
            f"admin requests must come from gatewayd's own page or a non-browser client, not from {shown}",
            code="cross_site_request",
        )
    return AccessRefused(
        f"requests from the web page at {shown} are refused: add its origin to server.cors_origins to let "
        "that page use gatewayd",
        code="cross_site_request",
    )


def _site_error(site: bytes, admin: bool) -> AccessRefused:
    if admin:
        return AccessRefused(
            "admin requests must come from gatewayd's own page or a non-browser client",
            code="cross_site_request",
        )
    return AccessRefused(
        f"a request a browser sent for another site (Sec-Fetch-Site: {site.decode('latin-1')}) is refused: "
        "add the page's origin to server.cors_origins to let it use gatewayd",
        code="cross_site_request",
    )
