"""``gatewayd keys create|list|revoke`` and ``gatewayd usage``: the key and usage store in the state
directory, used directly (no running instance needed). A running instance notices a key change within
half a second; ``create`` and ``revoke`` also tell it at once when they can reach it."""

from __future__ import annotations

import dataclasses
import json
import os
import time
from collections.abc import Sequence
from datetime import UTC, datetime
from pathlib import Path

import click
import httpx
from rich.markup import escape
from rich.table import Table
from rich.text import Text

from gatewayd.cli.commands_instance import find_instance
from gatewayd.cli.output import stderr_console, stdout_console
from gatewayd.config.paths import resolve_state_dir
from gatewayd.errors import GatewaydError, NotRunning
from gatewayd.gateway.guard import DB_FILE, STORE_BUSY_TIMEOUT_SECONDS
from gatewayd.store.db import Store, UsageRow
from gatewayd.store.keys import KeyRecord, parse_expiry

#: how long ``create``/``revoke`` wait for a running instance to take the change
NOTIFY_TIMEOUT_SECONDS = 2.0
_SINCE_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 604800}

_state_dir_option = click.option(
    "--state-dir", metavar="DIR", help="State directory [default: $GATEWAYD_STATE_DIR, else per-user]."
)


def _open_store(state_dir: str | None) -> tuple[Store, Path]:
    state = resolve_state_dir(state_dir, os.environ)
    return Store.open(state / DB_FILE, busy_timeout_seconds=STORE_BUSY_TIMEOUT_SECONDS), state


@click.group()
def keys() -> None:
    """Create, list and revoke API keys (stored hashed in the state directory)."""


@keys.command("create")
@click.option("--name", required=True, help="What the key is for (shown in lists and usage).")
@click.option("--models", metavar="A,B", help="Models it may use, comma-separated [default: all].")
@click.option("--rpm", type=click.IntRange(min=1), help="Requests per minute.")
@click.option("--tpm", type=click.IntRange(min=1), help="Tokens per minute.")
@click.option("--max-concurrency", type=click.IntRange(min=1), help="Requests at once.")
@click.option("--budget-tokens", type=click.IntRange(min=1), help="Tokens in all.")
@click.option("--expires", metavar="DATE", help="UTC date or date-time after which it is refused.")
@click.option("--json", "as_json", is_flag=True, help="Print JSON (the key included) instead of text.")
@_state_dir_option
def create(
    name: str,
    models: str | None,
    rpm: int | None,
    tpm: int | None,
    max_concurrency: int | None,
    budget_tokens: int | None,
    expires: str | None,
    as_json: bool,
    state_dir: str | None,
) -> None:
    """Create a key and print it once: only its hash is kept."""
    try:
        expires_at = parse_expiry(expires) if expires else None
    except ValueError as error:
        raise click.BadParameter(str(error), param_hint="--expires") from None
    store, state = _open_store(state_dir)
    try:
        record, secret = store.create_key(
            name=name,
            models=tuple(m.strip() for m in models.split(",") if m.strip()) if models else None,
            rpm=rpm,
            tpm=tpm,
            max_concurrency=max_concurrency,
            budget_tokens=budget_tokens,
            expires_at=expires_at,
            source="cli",
        )
    finally:
        store.close()
    _notify_instance(state)
    if as_json:
        click.echo(json.dumps({**record.public(), "key": secret}, indent=2))
        return
    console = stdout_console()
    console.print(f"created key [bold]{escape(record.name)}[/] ({record.id}); it is shown this once:")
    console.print(secret, markup=False)


@keys.command("list")
@click.option("--json", "as_json", is_flag=True, help="Print JSON instead of a table.")
@_state_dir_option
def list_keys(as_json: bool, state_dir: str | None) -> None:
    """List the keys (never the keys themselves: their first characters identify them)."""
    store, _ = _open_store(state_dir)
    try:
        records = store.list_keys()
    finally:
        store.close()
    if as_json:
        click.echo(json.dumps([record.public() for record in records], indent=2))
        return
    stdout_console().print(format_keys(records))


@keys.command("revoke")
@click.argument("ref")
@_state_dir_option
def revoke(ref: str, state_dir: str | None) -> None:
    """Revoke a key (by id, prefix or name): it is refused from now on, by a running instance too."""
    store, state = _open_store(state_dir)
    try:
        record = store.revoke_key(ref)
    finally:
        store.close()
    told = _notify_instance(state)
    suffix = "; the running instance refuses it now" if told else ""
    stdout_console().print(f"revoked key [bold]{escape(record.name)}[/] ({record.id}){suffix}")


@click.command()
@click.option("--since", metavar="AGE|DATE", help="Only requests after this: 1h, 7d, 30m, or a UTC date.")
@click.option("--by", type=click.Choice(["key", "model", "backend"]), default="model", show_default=True)
@click.option("--json", "as_json", is_flag=True, help="Print JSON instead of a table.")
@_state_dir_option
def usage(since: str | None, by: str, as_json: bool, state_dir: str | None) -> None:
    """Summarise the usage record: requests, errors, tokens and latency per key, model or backend."""
    since_at = parse_since(since) if since else None
    store, _ = _open_store(state_dir)
    try:
        rows = store.usage_summary(since=since_at, by=by)
    finally:
        store.close()
    if as_json:
        click.echo(json.dumps([dataclasses.asdict(row) for row in rows], indent=2))
        return
    stdout_console().print(format_usage(rows, by))


def parse_since(text: str) -> float:
    """ "1h", "7d", "30m", "45s", "2w" ago, or a UTC date/date-time. Raises click.BadParameter."""
    text = text.strip()
    unit = _SINCE_UNITS.get(text[-1:].lower())
    if unit is not None and text[:-1].replace(".", "", 1).isdigit():
        return time.time() - float(text[:-1]) * unit
    try:
        return parse_expiry(text)
    except ValueError:
        raise click.BadParameter(
            f"'{text}' is neither an age (30m, 1h, 7d) nor a UTC date (2026-11-01)", param_hint="--since"
        ) from None


def _notify_instance(state: Path) -> bool:
    """Tell a running instance to re-read its keys now (else it notices within half a second)."""
    try:
        record = find_instance(state, None)
    except (NotRunning, GatewaydError):
        return False
    host = "127.0.0.1" if record.host in ("0.0.0.0", "::", "") else record.host
    netloc = f"[{host}]:{record.port}" if ":" in host else f"{host}:{record.port}"
    try:
        response = httpx.post(
            f"http://{netloc}/keys/refresh",
            timeout=NOTIFY_TIMEOUT_SECONDS,
            trust_env=False,
        )
    except httpx.HTTPError:
        return False
    return response.status_code == 200


def _when(epoch: float | None) -> str:
    if epoch is None:
        return "-"
    return datetime.fromtimestamp(epoch, UTC).strftime("%Y-%m-%d %H:%M")


def format_keys(records: Sequence[KeyRecord]) -> Table:
    table = Table(title="API keys", title_justify="left")
    for column in ("id", "name", "key", "models", "limits", "expires", "state", "from"):
        table.add_column(column)
    for record in records:
        limits = ", ".join(
            f"{label} {value:,}"
            for label, value in (
                ("rpm", record.rpm),
                ("tpm", record.tpm),
                ("conc", record.max_concurrency),
                ("budget", record.budget_tokens),
            )
            if value is not None
        )
        state = "revoked" if record.revoked_at is not None else ("active" if record.active else "expired")
        table.add_row(
            record.id,
            Text(record.name),
            f"{record.prefix}…",
            ", ".join(record.models) if record.models is not None else "all",
            limits or "-",
            _when(record.expires_at),
            state,
            record.source,
        )
    return table


def _ms(seconds: float | None) -> str:
    return "-" if seconds is None else f"{seconds * 1000:,.0f} ms"


def format_usage(rows: Sequence[UsageRow], by: str) -> Table:
    table = Table(title=f"usage by {by}", title_justify="left")
    table.add_column(by)
    for column in ("requests", "errors", "prompt tokens", "completion tokens", "p50", "p95", "avg ttft"):
        table.add_column(column, justify="right")
    for row in rows:
        table.add_row(
            Text(row.group),
            f"{row.requests:,}",
            f"{row.errors:,}",
            f"{row.prompt_tokens:,}",
            f"{row.completion_tokens:,}",
            _ms(row.p50_latency_seconds),
            _ms(row.p95_latency_seconds),
            _ms(row.avg_ttft_seconds),
        )
    if not rows:
        stderr_console().print("no requests recorded in that period")
    return table


COMMANDS = (keys, usage)
