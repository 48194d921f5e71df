"""The state directory: where the supervisor keeps its files, and how they are written.

Which directory is chosen is ``gatewayd.config.paths``' business; this module only writes into it.

Every file here is private to the user running gatewayd: the directory is created with mode 0700 and files
with mode 0600. Writers replace files atomically (temporary file in the same directory, fsync, rename), so a
reader sees either the old content or the new, never a torn write. Temporary files are named
``.<name>.<random>.tmp`` so that no ``*.json`` glob ever matches one.
"""

from __future__ import annotations

import contextlib
import json
import os
import secrets
from collections.abc import Iterator
from pathlib import Path

from filelock import FileLock

STATE_DIR_MODE = 0o700
STATE_FILE_MODE = 0o600


def ensure_private_dir(path: Path) -> Path:
    """Create ``path`` (and missing parents) if needed; the leaf gets mode 0700. An existing directory is
    left as it is. Returns ``path``. Raises OSError if it cannot be created."""
    path.mkdir(mode=STATE_DIR_MODE, parents=True, exist_ok=True)
    return path


def write_atomic(path: Path, data: bytes, *, mode: int = STATE_FILE_MODE) -> None:
    """Replace ``path`` with ``data`` atomically; the file ends up with ``mode``. The parent must exist.

    On any failure the temporary file is removed and the old content (if any) is left untouched."""
    tmp = path.with_name(f".{path.name}.{secrets.token_hex(6)}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, mode)
    try:
        with os.fdopen(fd, "wb") as file:
            file.write(data)
            file.flush()
            os.fsync(file.fileno())
        os.chmod(
            tmp, mode
        )  # the umask may have narrowed the mode given to open(); never widen it by accident
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise


def write_json_atomic(path: Path, value: object) -> None:
    """``write_atomic`` of ``value`` as one line of JSON (keys sorted) followed by a newline."""
    write_atomic(path, (json.dumps(value, sort_keys=True) + "\n").encode())


def read_json(path: Path) -> object | None:
    """The JSON value stored at ``path``, or None if the file is missing, unreadable or not valid JSON."""
    try:
        return json.loads(path.read_bytes())
    except (OSError, ValueError):
        return None


@contextlib.contextmanager
def exclusive_lock(path: Path) -> Iterator[None]:
    """Hold an exclusive lock on ``path`` (created with mode 0600) for the duration of the block.

    Serialises read-modify-write cycles between processes (for example an old and a new process recording
    outcomes during a respawn). Blocks until the lock is free; the holders keep it for microseconds.
    (The port lock does not use filelock: its release unlocks the whole open file description, which a
    respawned child shares; see portlock.py.)"""
    with FileLock(path, mode=STATE_FILE_MODE, thread_local=False):
        yield
