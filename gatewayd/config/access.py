"""Validation of the settings that say which browsers and names may reach gatewayd: ``server.allowed_hosts``
and ``server.cors_origins`` (applied by ``gatewayd.gateway.core.access``).

Problems are (key, message, hint) triples; the loader locates them in the file."""

from __future__ import annotations

import ipaddress
import re

from gatewayd.config.schema import AuthMode, Config

Problem = tuple[str, str, str | None]

#: matches every host (allowed_hosts) or every origin (cors_origins)
ANY = "*"
_LABEL = r"[a-z0-9_](?:[a-z0-9_-]{0,61}[a-z0-9_])?"
_HOSTNAME = re.compile(rf"{_LABEL}(?:\.{_LABEL})*\.?", re.IGNORECASE)
_ORIGIN = re.compile(r"([a-z][a-z0-9+.-]*)://([^/?#\s]*)(.*)", re.IGNORECASE | re.DOTALL)
_DEFAULT_PORTS = {"http": "80", "https": "443"}


def access_problems(config: Config) -> list[Problem]:
    """Errors in ``server.allowed_hosts`` and ``server.cors_origins``."""
    server = config.server
    problems: list[Problem] = []
    for i, host in enumerate(server.allowed_hosts):
        key = f"server.allowed_hosts[{i}]"
        if host == ANY and config.auth.mode is not AuthMode.KEYS:
            hint = "list the names clients use; '*' (any Host) is only for auth.mode: keys"
            problems.append((key, "'*' would let any web page reach gatewayd by DNS rebinding", hint))
        elif host != ANY:
            problem = _host_problem(host)
            if problem is not None:
                problems.append((key, *problem))
    for i, origin in enumerate(server.cors_origins):
        problem = _origin_problem(origin)
        if problem is not None:
            problems.append((f"server.cors_origins[{i}]", *problem))
    return problems


def access_warnings(config: Config) -> list[Problem]:
    """Settings that are valid but weaken or limit access in a way worth saying."""
    server = config.server
    warnings: list[Problem] = []
    if ANY in server.cors_origins and config.auth.mode is not AuthMode.KEYS:
        index = server.cors_origins.index(ANY)
        message = "'*' lets every web page the user opens use gatewayd (and spend its backends' credit)"
        hint = "list the origins of the pages that need it, e.g. http://localhost:3000"
        warnings.append((f"server.cors_origins[{index}]", message, hint))
    if _is_wildcard(server.host) and not server.allowed_hosts:
        message = (
            f"listening on every address ({server.host}): requests that name this machine by a DNS name "
            "are refused (addresses are accepted)"
        )
        warnings.append(("server.host", message, "list the names clients use in server.allowed_hosts"))
    return warnings


def _is_wildcard(host: str) -> bool:
    return host.strip("[]") in ("", "0.0.0.0", "::")


def _host_problem(host: str) -> tuple[str, str | None] | None:
    text = host.strip()
    if not text:
        return "the host name is empty", "remove the entry"
    if "://" in text:
        match = _ORIGIN.fullmatch(text)
        name = match.group(2).rsplit(":", 1)[0] if match else ""
        hint = f"did you mean '{name}'?" if name else "write the name only, e.g. gateway.lan"
        return f"'{host}' is a URL, not a host name", hint
    bare = text[1:-1] if text.startswith("[") and text.endswith("]") else text
    if _is_address(bare):
        return None
    name, colon, port = text.rpartition(":")
    if colon and port.isdigit() and (_is_address(name.strip("[]")) or _HOSTNAME.fullmatch(name)):
        return f"'{host}' has a port", f"did you mean '{name.strip('[]')}'? Every port is accepted"
    if _HOSTNAME.fullmatch(text) and len(text.rstrip(".")) <= 253:
        return None
    return f"'{host}' is not a host name or an address", "e.g. gateway.lan, 192.168.1.20 or ::1"


def _origin_problem(origin: str) -> tuple[str, str | None] | None:
    if origin == ANY:
        return None
    if origin.strip().lower() == "null":
        hint = "sandboxed pages and local files send 'null': list the origin of a served page instead"
        return "'null' would match any sandboxed page or local file", hint
    match = _ORIGIN.fullmatch(origin.strip())
    if match is None:
        return (
            f"'{origin}' is not an origin (scheme://host[:port])",
            f"did you mean 'http://{origin.strip().strip('/')}'?" if "/" not in origin.strip("/") else None,
        )
    scheme, authority, rest = match.groups()
    if "@" in authority:
        authority = authority.rpartition("@")[2]
        hint = f"did you mean '{scheme}://{authority}'?".lower()
        return f"'{origin}' is not an origin: it has a user name", hint
    suggestion = f"{scheme}://{authority}".lower()
    if rest:
        return f"'{origin}' has a path: an origin is scheme://host[:port]", f"did you mean '{suggestion}'?"
    host, colon, port = authority.rpartition(":")
    if not colon or "]" in port:
        host, port = authority, ""
    if port and not port.isdigit():
        return f"'{origin}' has an invalid port", None
    if not (_HOSTNAME.fullmatch(host) or _is_address(host.strip("[]"))):
        return f"'{origin}' names no valid host", None
    if port and _DEFAULT_PORTS.get(scheme.lower()) == port:
        shown = f"{scheme}://{host}".lower()
        return f"'{origin}' names the default port, which browsers leave out", f"did you mean '{shown}'?"
    return None


def _is_address(text: str) -> bool:
    try:
        ipaddress.ip_address(text)
    except ValueError:
        return False
    return True
