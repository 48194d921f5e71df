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
from collections.abc import Iterator
from pathlib import Path

from filelock import FileLock

from gatewayd.store.files import STATE_FILE_MODE, write_atomic, write_json_atomic

__all__ = [
    "STATE_DIR_MODE",
    "STATE_FILE_MODE",
    "ensure_private_dir",
    "exclusive_lock",
    "read_json",
    "write_atomic",
    "write_json_atomic",
]

STATE_DIR_MODE = 0o700


def ensure_private_dir(path: Path) -> Path:
    """Create ``path`` (and missing parents) if needed; the leaf gets mode 0700. An existing directory is
    left as it is. Returns ``path``. Raises OSError if it cannot be created."""
    path.mkdir(mode=STATE_DIR_MODE, parents=True, exist_ok=True)
    return path


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
