"""``gatewayd jobs list|show|cancel``: the jobs in the store of the state directory, read directly (no running
instance needed). A running instance ends a cancelled running job at its next lease renewal."""

from __future__ import annotations

import json
import os
import time
from collections.abc import Sequence
from datetime import UTC, datetime

import click
from rich.console import Group
from rich.live import Live
from rich.table import Table
from rich.text import Text

from gatewayd.cli.output import stdout_console
from gatewayd.config.paths import resolve_state_dir
from gatewayd.errors import GatewaydError
from gatewayd.gateway.guard import DB_FILE, STORE_BUSY_TIMEOUT_SECONDS
from gatewayd.gateway.jobs.model import Job, JobState
from gatewayd.gateway.jobs.store import ANY_KEY, SqliteJobStore

#: ``show --wait`` reads the job this often
WAIT_POLL_SECONDS = 0.5

_state_dir_option = click.option(
    "--state-dir", metavar="DIR", help="State directory [default: $GATEWAYD_STATE_DIR, else per-user]."
)


class JobNotFound(GatewaydError):
    def __init__(self, job_id: str) -> None:
        super().__init__(f"no job {job_id!r} in this state directory: 'gatewayd jobs list' shows the jobs")


def _open_store(state_dir: str | None) -> SqliteJobStore:
    state = resolve_state_dir(state_dir, os.environ)
    return SqliteJobStore(state / DB_FILE, busy_timeout_seconds=STORE_BUSY_TIMEOUT_SECONDS)


@click.group()
def jobs() -> None:
    """List, show and cancel durable jobs (POST /v1/jobs)."""


@jobs.command("list")
@click.option("--state", type=click.Choice([s.value for s in JobState]), help="Only jobs in this state.")
@click.option("--model", help="Only jobs for this model.")
@click.option("--limit", type=click.IntRange(1, 1000), default=50, show_default=True, help="Jobs shown.")
@click.option("--json", "as_json", is_flag=True, help="Print JSON instead of a table.")
@_state_dir_option
def list_jobs(state: str | None, model: str | None, limit: int, as_json: bool, state_dir: str | None) -> None:
    """The newest jobs first."""
    store = _open_store(state_dir)
    try:
        page = store.page(
            key_id=ANY_KEY, state=JobState(state) if state else None, model=model, limit=limit, after=None
        )
    finally:
        store.close()
    if as_json:
        click.echo(json.dumps([job.public() for job in page.jobs], indent=2))
        return
    stdout_console().print(format_jobs(page.jobs))


@jobs.command("show")
@click.argument("job_id")
@click.option("--wait", is_flag=True, help="Wait until the job has finished, with a progress line.")
@click.option("--json", "as_json", is_flag=True, help="Print the job as JSON (as GET /v1/jobs/ID shows it).")
@_state_dir_option
def show_job(job_id: str, wait: bool, as_json: bool, state_dir: str | None) -> None:
    """One job, with its result or error."""
    store = _open_store(state_dir)
    try:
        job = _get(store, job_id)
        if wait and not job.state.terminal:
            with Live(format_progress(job), console=stdout_console(), transient=True) as live:
                while not job.state.terminal:
                    time.sleep(WAIT_POLL_SECONDS)
                    job = _get(store, job_id)
                    live.update(format_progress(job))
    finally:
        store.close()
    if as_json:
        click.echo(json.dumps(job.public(), indent=2))
        return
    stdout_console().print(format_job(job))


@jobs.command("cancel")
@click.argument("job_id")
@_state_dir_option
def cancel_job(job_id: str, state_dir: str | None) -> None:
    """Cancel a job: a queued one at once, a running one at its instance's next lease renewal."""
    store = _open_store(state_dir)
    try:
        job = store.cancel(job_id, time.time())
    finally:
        store.close()
    if job is None:
        raise JobNotFound(job_id)
    if job.state is JobState.RUNNING:
        click.echo(f"{job_id}: running; the instance running it cancels it within a few seconds")
    elif job.state is JobState.CANCELLED:
        click.echo(f"{job_id}: cancelled")
    else:
        click.echo(f"{job_id}: already {job.state.value}, nothing to cancel")


def _get(store: SqliteJobStore, job_id: str) -> Job:
    job = store.get(job_id)
    if job is None:
        raise JobNotFound(job_id)
    return job


def _when(moment: float | None) -> str:
    if moment is None:
        return "-"
    return datetime.fromtimestamp(moment, UTC).strftime("%Y-%m-%d %H:%M:%S")


def _took(start: float | None, end: float | None) -> str:
    return "-" if start is None or end is None else f"{end - start:,.1f} s"


def format_jobs(listed: Sequence[Job]) -> Table:
    table = Table(title="Jobs", title_justify="left")
    for column in ("id", "state", "endpoint", "model", "attempts", "created", "took"):
        table.add_column(column)
    for job in listed:
        table.add_row(
            job.id,
            job.state.value,
            job.endpoint,
            Text(job.model),
            str(job.attempts),
            _when(job.created_at),
            _took(job.started_at, job.finished_at),
        )
    return table


def format_job(job: Job) -> Group:
    table = Table(show_header=False, title=job.id, title_justify="left")
    table.add_column("field")
    table.add_column("value")
    rows = [
        ("state", job.state.value),
        ("endpoint", job.endpoint),
        ("model", job.model),
        ("attempts", str(job.attempts)),
        ("created", _when(job.created_at)),
        ("started", _when(job.started_at)),
        ("finished", _when(job.finished_at)),
    ]
    if job.webhook_url is not None:
        rows.append(("webhook", f"{job.webhook_url} ({'delivered' if job.webhook_delivered else 'pending'}, "
                                f"{len(job.deliveries)} tries)"))  # fmt: skip
    for name, value in rows:
        table.add_row(name, Text(value))
    parts: list[Table | Text] = [table]
    if job.error is not None:
        parts.append(Text(f"error: {job.error.get('message', job.error)}"))
    if job.result is not None:
        parts.append(Text(json.dumps(job.result, indent=2)))
    return Group(*parts)


def format_progress(job: Job) -> Text:
    since = job.started_at if job.state is JobState.RUNNING and job.started_at else job.created_at
    return Text(f"{job.id}: {job.state.value}, attempt {job.attempts}, {time.time() - since:,.1f} s")


COMMANDS = (jobs,)
