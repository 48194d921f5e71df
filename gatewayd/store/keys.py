"""API keys: how a secret is generated and hashed, the stored record, and how declared keys are imported.

Nothing here performs IO; ``gatewayd.store.db`` stores what ``plan_import`` decides.

Only a key's SHA-256 digest is stored. A fast hash is the right one here: a generated key carries 192 random
bits, so no amount of guessing finds a preimage, and a slow password hash (bcrypt, argon2) would only add
its cost to every request. An unsalted digest can also be looked up through an index, which a salted one
cannot. Keys declared in the config file are the operator's choice and should be as long and random.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import json
import secrets
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from typing import Any, TypeVar

from gatewayd.config import ApiKey
from gatewayd.errors import ConfigError, ConfigIssue

#: generated keys are this followed by 32 url-safe random characters (192 bits)
KEY_PREFIX = "gwd-"
SECRET_RANDOM_BYTES = 24
#: characters of the secret (after KEY_PREFIX) kept in clear to tell keys apart
DISPLAY_PREFIX_CHARS = 8
#: a short declared key shows at most this fraction of itself as its prefix
DISPLAY_PREFIX_MAX_FRACTION = 4

_T = TypeVar("_T")

SOURCE_CLI = "cli"
SOURCE_API = "api"
SOURCE_CONFIG = "config"
SOURCES = (SOURCE_CLI, SOURCE_API, SOURCE_CONFIG)
#: a KeyRecord's columns in the store, in the order of ``to_row`` / ``from_row``
KEY_COLUMNS = (
    "id",
    "name",
    "prefix",
    "models",
    "rpm",
    "tpm",
    "max_concurrency",
    "budget_tokens",
    "expires_at",
    "revoked_at",
    "created_at",
    "source",
)


def hash_key(secret: str) -> bytes:
    """The SHA-256 digest stored for ``secret`` (see the module docstring for why a fast hash)."""
    return hashlib.sha256(secret.encode()).digest()


def generate_secret() -> str:
    return KEY_PREFIX + secrets.token_urlsafe(SECRET_RANDOM_BYTES)


def generate_key_id() -> str:
    return "k_" + secrets.token_hex(4)


def display_prefix(secret: str) -> str:
    """The first characters of ``secret`` after KEY_PREFIX, shown to tell keys apart. A short declared key
    shows at most a quarter of itself, so its prefix never gives most of it away."""
    body = secret.removeprefix(KEY_PREFIX)
    return body[: min(DISPLAY_PREFIX_CHARS, len(body) // DISPLAY_PREFIX_MAX_FRACTION)]


@dataclass(frozen=True, slots=True)
class KeyRecord:
    """One stored key. The secret itself is never stored; ``prefix`` identifies it in listings."""

    id: str
    name: str
    prefix: str
    #: models it may use; None = all
    models: tuple[str, ...] | None
    rpm: int | None
    tpm: int | None
    max_concurrency: int | None
    budget_tokens: int | None
    #: epoch seconds after which it is refused; None = never
    expires_at: float | None
    revoked_at: float | None
    created_at: float
    #: who made it: "cli" | "api" | "config"
    source: str

    @property
    def active(self) -> bool:
        """Neither revoked nor expired, now."""
        return self.active_at(time.time())

    def active_at(self, now: float) -> bool:
        return self.revoked_at is None and (self.expires_at is None or now < self.expires_at)

    def public(self) -> dict[str, object]:
        """What the CLI and the admin API show of a key: everything but the key (its prefix identifies it)."""
        return {
            "id": self.id,
            "name": self.name,
            "prefix": self.prefix,
            "models": list(self.models) if self.models is not None else None,
            "rpm": self.rpm,
            "tpm": self.tpm,
            "max_concurrency": self.max_concurrency,
            "budget_tokens": self.budget_tokens,
            "expires_at": self.expires_at,
            "revoked_at": self.revoked_at,
            "created_at": self.created_at,
            "source": self.source,
            "active": self.active,
        }

    def to_row(self) -> tuple[object, ...]:
        """The values of KEY_COLUMNS (models as a JSON list)."""
        values: dict[str, object] = {column: getattr(self, column) for column in KEY_COLUMNS}
        values["models"] = json.dumps(list(self.models)) if self.models is not None else None
        return tuple(values.values())

    @classmethod
    def from_row(cls, row: Sequence[Any]) -> KeyRecord:
        """The record whose KEY_COLUMNS values are ``row``."""
        values = dict(zip(KEY_COLUMNS, row, strict=True))
        models = values["models"]
        return cls(
            id=str(values["id"]),
            name=str(values["name"]),
            prefix=str(values["prefix"]),
            models=tuple(json.loads(models)) if models is not None else None,
            rpm=_optional(int, values["rpm"]),
            tpm=_optional(int, values["tpm"]),
            max_concurrency=_optional(int, values["max_concurrency"]),
            budget_tokens=_optional(int, values["budget_tokens"]),
            expires_at=_optional(float, values["expires_at"]),
            revoked_at=_optional(float, values["revoked_at"]),
            created_at=float(values["created_at"]),
            source=str(values["source"]),
        )


def _optional(kind: Callable[[Any], _T], value: object) -> _T | None:
    return None if value is None else kind(value)


@dataclass(frozen=True, slots=True)
class ImportReport:
    """What importing the declared keys did, by key name."""

    imported: tuple[str, ...]
    unchanged: tuple[str, ...]
    #: limits changed, or the secret was rotated, or a stored key with this secret was renamed/adopted
    updated: tuple[str, ...]
    #: keys from the config file that are gone from it but still valid in the store (warn, naming them)
    orphans: tuple[KeyRecord, ...]
    #: declared keys whose secret was revoked in the store: they stay revoked (warn; rotate the secret)
    revoked: tuple[str, ...] = ()


def parse_expiry(text: str) -> float:
    """``"2027-01-01"`` (midnight UTC: refused from that day on) or ``"2027-01-01T12:00:00"`` with an
    optional ``Z`` or offset (UTC when there is none), as epoch seconds. Raises ValueError saying what is
    expected."""
    try:
        when = dt.datetime.fromisoformat(text.strip())
    except ValueError:
        raise ValueError(
            f"invalid expiry '{text}': expected an ISO date (2027-01-01) or date-time "
            "(2027-01-01T12:00:00Z), in UTC"
        ) from None
    if when.tzinfo is None:
        when = when.replace(tzinfo=dt.UTC)
    return when.timestamp()


@dataclass(frozen=True, slots=True)
class KeyWrite:
    """One row ``import_keys`` writes: ``record`` in full (inserted when ``insert``, else replacing the
    row with the same id) with the digest of its secret."""

    record: KeyRecord
    digest: bytes
    insert: bool


@dataclass(frozen=True, slots=True)
class StoredKey:
    record: KeyRecord
    digest: bytes


def plan_import(
    stored: Sequence[StoredKey],
    declared: Sequence[ApiKey],
    *,
    now: float,
    new_id: Callable[[], str] = generate_key_id,
) -> tuple[list[KeyWrite], ImportReport]:
    """Decide how the declared keys become stored ones, matching by secret first, then by name.

    - a stored key holding a declared secret is that key: unchanged, or updated (limits, name, source);
      if it was revoked it stays revoked and is reported as such;
    - otherwise a live config key of the same name whose secret nobody declares any more is rotated in
      place (its id and usage history stay; the old secret stops working);
    - otherwise the key is imported as a new one.

    Config keys that no declared key accounts for and that are still valid are orphans: reported, never
    revoked here. Raises ConfigError (every problem at once) for duplicate names or secrets and bad expiries.
    """
    digests, expiries = _validate(declared)
    by_digest = {key.digest: key for key in stored}
    declared_digests = set(digests)
    touched: set[str] = set()
    writes: list[KeyWrite] = []
    imported: list[str] = []
    unchanged: list[str] = []
    updated: list[str] = []
    revoked: list[str] = []
    for entry, digest, expires_at in zip(declared, digests, expiries, strict=True):
        owner = by_digest.get(digest)
        if owner is not None:
            touched.add(owner.record.id)
            wanted = _declared(owner.record, entry, expires_at)
            if owner.record.revoked_at is not None:
                revoked.append(entry.name)
            elif wanted == owner.record:
                unchanged.append(entry.name)
            else:
                writes.append(KeyWrite(wanted, digest, insert=False))
                updated.append(entry.name)
            continue
        rotated = _rotatable(stored, entry.name, declared_digests, touched)
        if rotated is not None:
            touched.add(rotated.id)
            record = replace(_declared(rotated, entry, expires_at), prefix=display_prefix(entry.key))
            writes.append(KeyWrite(record, digest, insert=False))
            updated.append(entry.name)
            continue
        record = KeyRecord(
            id=new_id(),
            name=entry.name,
            prefix=display_prefix(entry.key),
            models=None,
            rpm=None,
            tpm=None,
            max_concurrency=None,
            budget_tokens=None,
            expires_at=None,
            revoked_at=None,
            created_at=now,
            source=SOURCE_CONFIG,
        )
        writes.append(KeyWrite(_declared(record, entry, expires_at), digest, insert=True))
        imported.append(entry.name)
    orphans = tuple(
        key.record
        for key in stored
        if key.record.source == SOURCE_CONFIG and key.record.id not in touched and key.record.active_at(now)
    )
    report = ImportReport(tuple(imported), tuple(unchanged), tuple(updated), orphans, tuple(revoked))
    return writes, report


def _declared(record: KeyRecord, entry: ApiKey, expires_at: float | None) -> KeyRecord:
    return replace(
        record,
        name=entry.name,
        models=tuple(entry.models) if entry.models is not None else None,
        rpm=entry.rpm,
        tpm=entry.tpm,
        max_concurrency=entry.max_concurrency,
        budget_tokens=entry.budget_tokens,
        expires_at=expires_at,
        source=SOURCE_CONFIG,
    )


def _rotatable(
    stored: Sequence[StoredKey], name: str, declared_digests: set[bytes], touched: set[str]
) -> KeyRecord | None:
    """The newest live config key named ``name`` whose secret no declared key holds any more."""
    candidates = [
        key.record
        for key in stored
        if key.record.source == SOURCE_CONFIG
        and key.record.name == name
        and key.record.revoked_at is None
        and key.record.id not in touched
        and key.digest not in declared_digests
    ]
    return max(candidates, key=lambda record: record.created_at, default=None)


def _validate(declared: Sequence[ApiKey]) -> tuple[list[bytes], list[float | None]]:
    issues: list[ConfigIssue] = []
    names: dict[str, int] = {}
    owners: dict[bytes, int] = {}
    digests: list[bytes] = []
    expiries: list[float | None] = []
    for index, entry in enumerate(declared):
        digest = hash_key(entry.key)
        digests.append(digest)
        if entry.name in names:
            issues.append(
                _issue(index, "name", f"duplicate key name '{entry.name}' (also keys[{names[entry.name]}])")
            )
        names.setdefault(entry.name, index)
        if digest in owners:
            issues.append(_issue(index, "key", f"the same secret as keys[{owners[digest]}]"))
        owners.setdefault(digest, index)
        expires_at = None
        if entry.expires is not None:
            try:
                expires_at = parse_expiry(entry.expires)
            except ValueError as exc:
                issues.append(_issue(index, "expires", str(exc)))
        expiries.append(expires_at)
    if issues:
        raise ConfigError(issues)
    return digests, expiries


def _issue(index: int, field: str, message: str) -> ConfigIssue:
    return ConfigIssue(source="config", key=f"keys[{index}].{field}", message=message)
