"""Diagnostic bundles: what an operator needs after gatewayd failed, in one private JSON file.

The run loop keeps an ``EventRing`` attached to the root logger (one per run loop; nothing here is
process-global) and calls ``write_bundle`` when something went wrong: a forced exit, a failed restart.
Bundles go to ``<state dir>/diagnostics/bundle-<utc timestamp>-<reason>.json`` (mode 0600, newest
``BUNDLES_KEPT`` kept). Everything in a bundle passes through ``scrub``: anything that looks like a bearer
token, an API key, a password or URL credentials is replaced by ``[redacted]``, because log lines and error
messages quote request headers and upstream URLs.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import platform
import re
import socket
import sys
import time
import traceback
from collections import deque
from collections.abc import Callable, Mapping
from datetime import UTC, datetime
from pathlib import Path

import psutil

from gatewayd import __version__
from gatewayd.supervisor.statedir import ensure_private_dir, write_atomic

#: log records an EventRing keeps by default
EVENT_RING_CAPACITY = 500
#: bundles kept in the diagnostics directory; older ones are deleted as new ones are written
BUNDLES_KEPT = 20
REDACTED = "[redacted]"

Event = dict[str, object]


class EventRing(logging.Handler):
    """A logging handler that keeps the last ``capacity`` records as structured events:
    ``{"time": ISO 8601 UTC, "level", "logger", "message"}`` plus ``"exception"`` when the record has one.

    Every access log line passes through here, so ``emit`` keeps only a tuple (the message rendered, as
    the record's arguments may change later; an exception's traceback formatted, as it holds frames) and
    ``events`` builds the dicts and the times: a third of the cost of an access log line otherwise.
    Thread-safe (logging.Handler's lock guards the ring). Never raises from ``emit``."""

    def __init__(self, capacity: int = EVENT_RING_CAPACITY, level: int = logging.NOTSET) -> None:
        super().__init__(level)
        #: (created, level name, logger name, message, formatted exception or None)
        self._events: deque[tuple[float, str, str, str, str | None]] = deque(maxlen=capacity)
        self._exceptions = logging.Formatter()

    def emit(self, record: logging.LogRecord) -> None:
        try:
            exception = self._exceptions.formatException(record.exc_info) if record.exc_info else None
            self._events.append(
                (record.created, record.levelname, record.name, record.getMessage(), exception)
            )
        except Exception:
            self.handleError(record)

    def events(self) -> list[Event]:
        """A copy of the kept events, oldest first."""
        self.acquire()
        try:
            kept = list(self._events)
        finally:
            self.release()
        events: list[Event] = []
        for created, level, logger, message, exception in kept:
            event: Event = {
                "time": datetime.fromtimestamp(created, UTC).isoformat(timespec="milliseconds"),
                "level": level,
                "logger": logger,
                "message": message,
            }
            if exception is not None:
                event["exception"] = exception
            events.append(event)
        return events


def write_bundle(
    state_dir: Path,
    *,
    reason: str,
    error: BaseException | str | None,
    events: list[Event],
    config: Mapping[str, object] | None,
    started_at: float,
    extra: Mapping[str, object] | None = None,
) -> Path:
    """Write a bundle and return its path; delete all but the newest ``BUNDLES_KEPT``.

    ``config`` must already be redacted by the caller (it is scrubbed again all the same); ``started_at`` is
    the instance's time.time() at start. Creates the directories (mode 0700) if missing. Blocking file IO:
    call it from a worker thread in async code. Raises OSError if the state directory is not writable."""
    now = time.time()
    document = {
        "reason": reason,
        "written_at": datetime.fromtimestamp(now, UTC).isoformat(timespec="milliseconds"),
        "pid": os.getpid(),
        "platform": platform.platform(),
        "python": sys.version,
        "gatewayd_version": __version__,
        "started_at": started_at,
        "uptime_seconds": round(now - started_at, 3),
        "hostname_sha256": hashlib.sha256(socket.gethostname().encode()).hexdigest()[:16],
        "process": process_figures(),
        "error": describe_error(error),
        "config": None if config is None else dict(config),
        "events": events,
        "extra": None if extra is None else dict(extra),
    }
    directory = ensure_private_dir(ensure_private_dir(state_dir) / "diagnostics")
    stamp = datetime.fromtimestamp(now, UTC).strftime("%Y%m%dT%H%M%S.%fZ")
    slug = re.sub(r"[^a-z0-9]+", "-", reason.lower()).strip("-")[:40] or "unknown"
    path = directory / f"bundle-{stamp}-{slug}.json"
    content = json.dumps(scrub(document), indent=2, default=str) + "\n"
    write_atomic(path, content.encode())
    _prune(directory)
    return path


def _prune(directory: Path) -> None:
    # Names start with a fixed-width UTC timestamp, so name order is age order.
    bundles = sorted(directory.glob("bundle-*.json"))
    for old in bundles[:-BUNDLES_KEPT]:
        try:
            old.unlink()
        except FileNotFoundError:
            pass


def describe_error(error: BaseException | str | None) -> dict[str, object] | None:
    """``{"type", "message", "traceback"}`` for an exception; type and traceback are None for a string."""
    if error is None:
        return None
    if isinstance(error, str):
        return {"type": None, "message": error, "traceback": None}
    kind = type(error)
    return {
        "type": f"{kind.__module__}.{kind.__qualname__}",
        "message": str(error),
        "traceback": "".join(traceback.format_exception(error)),
    }


def process_figures() -> dict[str, int | None]:
    """Resource use of this process: rss_bytes, num_fds, num_threads, connections. A figure the platform
    or permissions deny is None."""
    process = psutil.Process()
    readers: dict[str, Callable[[], int]] = {
        "rss_bytes": lambda: process.memory_info().rss,
        "num_fds": process.num_fds,
        "num_threads": process.num_threads,
        "connections": lambda: len(process.net_connections()),
    }
    figures: dict[str, int | None] = {}
    for name, read in readers.items():
        try:
            figures[name] = read()
        except (psutil.Error, OSError, AttributeError):
            figures[name] = None
    return figures


_SENSITIVE_KEY = re.compile(
    r"(?i)^(authorization|proxy-authorization|x-api-key|api[_-]?key|apikey|access[_-]?token|"
    r"refresh[_-]?token|token|secret|client[_-]?secret|password|passwd|cookie|set-cookie)$"
)
_TEXT_PATTERNS: tuple[tuple[re.Pattern[str], str], ...] = (
    # Authorization: Bearer <token> / Basic <credentials>, anywhere in text
    (re.compile(r"(?i)\b(bearer)(\s+)[A-Za-z0-9._~+/=-]+"), rf"\1\2{REDACTED}"),
    (re.compile(r"(?i)\b(basic)(\s+)[A-Za-z0-9+/=]{8,}"), rf"\1\2{REDACTED}"),
    # OpenAI-style keys: sk-..., sk-proj-...
    (re.compile(r"\bsk-[A-Za-z0-9_-]{6,}"), f"sk-{REDACTED}"),
    # key=value, key: value, "key": "value" for credential-looking keys
    (
        re.compile(
            r"(?i)\b(api[_-]?key|apikey|x-api-key|access[_-]?token|refresh[_-]?token|token|secret|"
            r"client[_-]?secret|password|passwd)(\"?'?\s*[:=]\s*\"?'?)(?!\[redacted\])[^\s\"'&,;}]+"
        ),
        rf"\1\2{REDACTED}",
    ),
    # credentials in URLs: scheme://user:password@host
    (re.compile(r"(://[^/\s:@]+):[^/\s@]+@"), rf"\1:{REDACTED}@"),
)


def scrub(value: object) -> object:
    """``value`` with secrets replaced by ``[redacted]``: every string is scrubbed by pattern, and the
    whole value of a mapping key that names a credential (api_key, authorization, password...) is replaced.
    Containers are copied (lists and tuples become lists); other values are returned as they are."""
    if isinstance(value, str):
        for pattern, replacement in _TEXT_PATTERNS:
            value = pattern.sub(replacement, value)
        return value
    if isinstance(value, Mapping):
        return {
            key: REDACTED if isinstance(key, str) and _SENSITIVE_KEY.match(key) and item else scrub(item)
            for key, item in value.items()
        }
    if isinstance(value, list | tuple):
        return [scrub(item) for item in value]
    return value
