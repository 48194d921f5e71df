"""The open-file limit, and the connection cap derived from it.

Every client connection is a file descriptor, and a busy one holds a second for its upstream request; the
process also needs some for its listener, log files, the SQLite store, probes and the servers it runs. An
accept() that fails with EMFILE serves no one, so gatewayd raises its soft limit to the hard one at start and
keeps its connections below what is left.
"""

from __future__ import annotations

import logging
import resource

log = logging.getLogger("gatewayd.server")

#: descriptors kept free for everything that is not a client connection: the listener, log files, the SQLite
#: store, probes and managed servers' pipes
RESERVED_FDS = 256
#: the derived cap never exceeds this: each connection costs memory (about 16 KiB in hypercorn's buffers),
#: and a single gateway process cannot serve more concurrent connections usefully anyway
MAX_DERIVED_CONNECTIONS = 4096
#: and never goes below this, even under a tiny open-file limit
MIN_DERIVED_CONNECTIONS = 16
#: macOS refuses RLIM_INFINITY (and anything above kern.maxfilesperproc) for RLIMIT_NOFILE; this is its
#: OPEN_MAX, the value its own shells fall back to
_DARWIN_OPEN_MAX = 10240


def raise_open_file_limit() -> int:
    """Raise the soft RLIMIT_NOFILE to the hard limit (as far as the system allows); return the soft limit
    now in force. Never raises: a limit that cannot be raised is kept (and logged)."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    candidates = [hard] if hard != resource.RLIM_INFINITY else []
    candidates.append(_DARWIN_OPEN_MAX)
    for wanted in candidates:
        if soft != resource.RLIM_INFINITY and wanted <= soft:
            break
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (wanted, hard))
        except (ValueError, OSError):
            continue
        log.debug("raised the open-file limit from %d to %d", soft, wanted)
        return wanted
    return open_file_limit()


def open_file_limit() -> int:
    """The soft RLIMIT_NOFILE (a large number when unlimited)."""
    soft, _hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    return 1 << 20 if soft == resource.RLIM_INFINITY else soft


def connection_cap(configured: int | None, open_files: int) -> int:
    """``server.max_connections``, or when it is not set: half of what the open-file limit leaves after
    ``RESERVED_FDS`` (a busy connection holds two descriptors), within [MIN_DERIVED_CONNECTIONS,
    MAX_DERIVED_CONNECTIONS]."""
    if configured is not None:
        return configured
    derived = (open_files - RESERVED_FDS) // 2
    return max(MIN_DERIVED_CONNECTIONS, min(MAX_DERIVED_CONNECTIONS, derived))
