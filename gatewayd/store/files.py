"""Files written whole or not at all: what every part of gatewayd that keeps state on disk uses."""

from __future__ import annotations

import contextlib
import json
import os
import secrets
from pathlib import Path

#: private to the user running gatewayd
STATE_FILE_MODE = 0o600


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
        os.chmod(tmp, mode)  # the umask may have narrowed the mode given to open(); never widen it
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise


def write_json_atomic(path: Path, value: object, *, mode: int = STATE_FILE_MODE) -> None:
    """``write_atomic`` of ``value`` as one line of JSON (keys sorted) followed by a newline."""
    write_atomic(path, (json.dumps(value, sort_keys=True) + "\n").encode(), mode=mode)
