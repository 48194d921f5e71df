"""OpenAI-compatible batches on top of jobs: uploaded files, and a batch that runs each line as a job.

A batch's input file is JSONL, one request a line (``custom_id``, ``method``, ``url``, ``body``). Creating
the batch submits every line as a job in one transaction; the batch's counts are read from its jobs, and
once every job is finished the output file (the lines that succeeded) and the error file (the others) are
written, in input order, and the batch is ``completed`` (``cancelled`` when it was cancelled). Object shapes
follow OpenAI's (``file``, ``batch`` with ``request_counts``, ``output_file_id``, ``error_file_id``).
"""

from __future__ import annotations

import json
import secrets
import sqlite3
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from gatewayd.errors import BadRequest
from gatewayd.gateway.jobs.model import JobState, body_digest, new_job_id
from gatewayd.gateway.jobs.store import ANY_KEY, SqliteJobStore

#: lines a batch may hold
MAX_BATCH_LINES = 50_000
_FILE_COLUMNS = "id, key_id, filename, purpose, bytes, created_at"
_BATCH_COLUMNS = (
    "id, key_id, endpoint, input_file_id, completion_window, status, total, created_at, finished_at,"
    " cancelling_at, output_file_id, error_file_id, metadata"
)
_DONE = ("succeeded", "failed", "cancelled")


@dataclass(frozen=True, slots=True)
class BatchLine:
    custom_id: str
    url: str
    body: dict[str, Any]
    model: str


def parse_lines(content: bytes, endpoint: str) -> list[BatchLine]:
    """The input file's lines. Raises BadRequest naming the first bad line."""
    lines: list[BatchLine] = []
    seen: set[str] = set()
    for number, text in enumerate(content.decode("utf-8", "replace").splitlines(), start=1):
        if not text.strip():
            continue
        try:
            line = json.loads(text)
        except ValueError:
            raise BadRequest(f"line {number} of the input file is not JSON", param="input_file_id") from None
        if not isinstance(line, dict) or not isinstance(line.get("body"), dict):
            raise BadRequest(f"line {number}: expected custom_id, method, url and a body object")
        custom_id, url = line.get("custom_id"), line.get("url", endpoint)
        if not isinstance(custom_id, str) or custom_id in seen:
            raise BadRequest(f"line {number}: custom_id must be a string unique in the file")
        if url != endpoint:
            raise BadRequest(f"line {number}: url {url!r} is not the batch's endpoint {endpoint}")
        model = line["body"].get("model")
        if not isinstance(model, str) or not model:
            raise BadRequest(f"line {number}: the body needs a 'model'")
        seen.add(custom_id)
        lines.append(BatchLine(custom_id, url, line["body"], model))
        if len(lines) > MAX_BATCH_LINES:
            raise BadRequest(f"a batch holds at most {MAX_BATCH_LINES} lines")
    if not lines:
        raise BadRequest("the input file holds no requests", param="input_file_id")
    return lines


def file_object(row: tuple[Any, ...]) -> dict[str, Any]:
    file_id, _, filename, purpose, size, created = row
    return {"id": file_id, "object": "file", "bytes": size, "created_at": int(created), "filename": filename,
            "purpose": purpose, "status": "processed"}  # fmt: skip


class SqliteBatchStore(SqliteJobStore):
    """Files and batches in the store file (the jobs schema's second version)."""

    def __init__(self, path: Path, *, busy_timeout_seconds: float = 5.0) -> None:
        super().__init__(path, busy_timeout_seconds=busy_timeout_seconds)

    def put_file(self, key_id: str | None, filename: str, purpose: str, content: bytes) -> dict[str, Any]:
        row = ("file-" + secrets.token_hex(12), key_id, filename, purpose, len(content), time.time())
        with self._transaction("store a file") as conn:
            conn.execute(f"INSERT INTO files ({_FILE_COLUMNS}, content) VALUES (?, ?, ?, ?, ?, ?, ?)",
                         (*row, content))  # fmt: skip
        return file_object(row)

    def get_file(self, file_id: str) -> tuple[str | None, dict[str, Any], bytes] | None:
        with self._locked("read a file") as conn:
            row = conn.execute(
                f"SELECT {_FILE_COLUMNS}, content FROM files WHERE id = ?", (file_id,)
            ).fetchone()
        return None if row is None else (row[1], file_object(row[:6]), bytes(row[6]))

    def create_batch(
        self, key_id: str | None, endpoint: str, input_file_id: str, window: str, metadata: Any,
        lines: list[BatchLine],
    ) -> dict[str, Any]:  # fmt: skip
        batch_id = "batch_" + secrets.token_hex(12)
        now = time.time()
        with self._transaction("create a batch") as conn:
            conn.execute(
                f"INSERT INTO batches ({_BATCH_COLUMNS}) VALUES (?, ?, ?, ?, ?, 'in_progress', ?, ?, NULL,"
                " NULL, NULL, NULL, ?)",
                (batch_id, key_id, endpoint, input_file_id, window, len(lines), now, json.dumps(metadata)),
            )
            conn.executemany(
                "INSERT INTO jobs (id, key_id, endpoint, model, request, digest, priority, state, attempts,"
                " created_at, not_before, batch_id, custom_id) VALUES (?, ?, ?, ?, ?, ?, -1, 'queued', 0,"
                " ?, ?, ?, ?)",
                [
                    (new_job_id(), key_id, endpoint, line.model, json.dumps(line.body),
                     body_digest(endpoint, line.body), now, now, batch_id, line.custom_id)
                    for line in lines
                ],
            )  # fmt: skip
        batch = self.get_batch(batch_id)
        assert batch is not None
        return batch[1]

    def get_batch(self, batch_id: str) -> tuple[str | None, dict[str, Any]] | None:
        """(owner key id, the batch object), finishing the batch first when its last job is done."""
        with self._transaction("read a batch") as conn:
            row = conn.execute(f"SELECT {_BATCH_COLUMNS} FROM batches WHERE id = ?", (batch_id,)).fetchone()
            if row is None:
                return None
            counts = dict(conn.execute("SELECT state, count(*) FROM jobs WHERE batch_id = ? GROUP BY state",
                                       (batch_id,)).fetchall())  # fmt: skip
            done = sum(counts.get(state, 0) for state in _DONE)
            if row[5] in ("in_progress", "cancelling") and done >= row[6]:
                _finish(conn, row)
                row = conn.execute(
                    f"SELECT {_BATCH_COLUMNS} FROM batches WHERE id = ?", (batch_id,)
                ).fetchone()
        return row[1], _batch_object(row, counts)

    def list_batches(self, key_id: object, limit: int) -> list[tuple[str | None, dict[str, Any]]]:
        """Newest first; ``key_id`` ANY_KEY for every key's."""
        with self._locked("list batches") as conn:
            rows = conn.execute("SELECT id, key_id FROM batches ORDER BY created_at DESC").fetchall()
        ids = [batch_id for batch_id, owner in rows if key_id is ANY_KEY or owner == key_id][:limit]
        return [batch for batch in (self.get_batch(i) for i in ids) if batch is not None]

    def cancel_batch(self, batch_id: str) -> None:
        now = time.time()
        with self._transaction("cancel a batch") as conn:
            conn.execute("UPDATE batches SET status = 'cancelling', cancelling_at = ? WHERE id = ?"
                         " AND status = 'in_progress'", (now, batch_id))  # fmt: skip
            conn.execute("UPDATE jobs SET state = 'cancelled', finished_at = ? WHERE batch_id = ?"
                         " AND state = 'queued'", (now, batch_id))  # fmt: skip
            conn.execute("UPDATE jobs SET cancel_requested = 1 WHERE batch_id = ? AND state = 'running'",
                         (batch_id,))  # fmt: skip


def _finish(conn: sqlite3.Connection, row: tuple[Any, ...]) -> None:
    """Write the output and error files of a batch whose jobs are all done, and close it."""
    batch_id, key_id = row[0], row[1]
    output: list[str] = []
    errors: list[str] = []
    for job_id, custom_id, state, result, error in conn.execute(
        "SELECT id, custom_id, state, result, error FROM jobs WHERE batch_id = ? ORDER BY seq", (batch_id,)
    ):
        line: dict[str, Any] = {"id": f"batch_req_{job_id.removeprefix('job_')}", "custom_id": custom_id}
        if state == JobState.SUCCEEDED.value:
            line["response"] = {"status_code": 200, "request_id": job_id, "body": json.loads(result)}
            line["error"] = None
            output.append(json.dumps(line))
        else:
            failure = json.loads(error) if error else {"message": state}
            status = failure.get("status")
            line["response"] = None if status is None else {"status_code": status, "request_id": job_id,
                                                              "body": {"error": failure}}  # fmt: skip
            line["error"] = {"code": failure.get("code") or state, "message": failure.get("message", state)}
            errors.append(json.dumps(line))
    now = time.time()
    ids: list[str | None] = []
    for lines, name in ((output, "output"), (errors, "errors")):
        if not lines:
            ids.append(None)
            continue
        file_id = "file-" + secrets.token_hex(12)
        content = ("\n".join(lines) + "\n").encode()
        conn.execute(
            f"INSERT INTO files ({_FILE_COLUMNS}, content) VALUES (?, ?, ?, 'batch_output', ?, ?, ?)",
            (file_id, key_id, f"{batch_id}_{name}.jsonl", len(content), now, content),
        )
        ids.append(file_id)
    status = "cancelled" if row[5] == "cancelling" else "completed"
    conn.execute(
        "UPDATE batches SET status = ?, finished_at = ?, output_file_id = ?, error_file_id = ? WHERE id = ?",
        (status, now, ids[0], ids[1], batch_id),
    )


def _batch_object(row: tuple[Any, ...], counts: dict[str, int]) -> dict[str, Any]:
    (batch_id, _, endpoint, input_file_id, window, status, total, created, finished, cancelling,
     output_file_id, error_file_id, metadata) = row  # fmt: skip
    return {
        "id": batch_id,
        "object": "batch",
        "endpoint": endpoint,
        "errors": None,
        "input_file_id": input_file_id,
        "completion_window": window,
        "status": status,
        "output_file_id": output_file_id,
        "error_file_id": error_file_id,
        "created_at": int(created),
        "in_progress_at": int(created),
        "expires_at": None,
        "finalizing_at": None if finished is None else int(finished),
        "completed_at": None if finished is None or status != "completed" else int(finished),
        "failed_at": None,
        "expired_at": None,
        "cancelling_at": None if cancelling is None else int(cancelling),
        "cancelled_at": None if finished is None or status != "cancelled" else int(finished),
        "request_counts": {
            "total": total,
            "completed": counts.get("succeeded", 0),
            "failed": counts.get("failed", 0) + counts.get("cancelled", 0),
        },
        "metadata": json.loads(metadata) if metadata else None,
    }
