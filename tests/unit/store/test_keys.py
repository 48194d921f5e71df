"""API keys in a real store file: the secret is shown once and only its hash is kept; listing, revoking by
id, prefix or name; expiry; importing the keys declared in the config file across edits of that file."""

from __future__ import annotations

import datetime as dt
import sqlite3
import stat
import time
from dataclasses import replace
from pathlib import Path

import pytest

from gatewayd.config import ApiKey
from gatewayd.errors import ConfigError, KeyNotFound, StoreError
from gatewayd.store import KEY_PREFIX, Store, hash_key, parse_expiry
from gatewayd.store.keys import KeyRecord, StoredKey, plan_import
from tests.unit.store.conftest import StoreOpener

SECRET_A = "sk-alice-0123456789abcdefghijklmnopqrstuv"
SECRET_B = "sk-bob-0123456789abcdefghijklmnopqrstuvwx"
SECRET_C = "sk-carol-0123456789abcdefghijklmnopqrstuv"
SECRET_D = "sk-dave-0123456789abcdefghijklmnopqrstuvw"


def store_files(path: Path) -> bytes:
    """Every byte SQLite keeps for ``path``: the file, and its WAL and shared memory if still there."""
    return b"".join(p.read_bytes() for p in sorted(path.parent.glob(path.name + "*")))


def test_create_shows_the_secret_once_and_stores_only_its_hash(tmp_path: Path) -> None:
    path = tmp_path / "state" / "gatewayd.db"
    store = Store.open(path)
    record, secret = store.create_key(name="ci", models=["llama"], rpm=60, budget_tokens=10_000)
    assert secret.startswith(KEY_PREFIX)
    assert len(secret) == len(KEY_PREFIX) + 32
    assert record.prefix == secret[len(KEY_PREFIX) : len(KEY_PREFIX) + 8]
    assert (record.name, record.models, record.rpm, record.budget_tokens) == ("ci", ("llama",), 60, 10_000)
    assert record.source == "cli"
    assert record.active
    assert store.list_keys() == [record]
    assert store.key_by_hash(hash_key(secret)) == record
    assert store.key_by_hash(hash_key(secret + "x")) is None

    stored = store_files(path)
    assert secret.encode() not in stored
    assert secret[len(KEY_PREFIX) :].encode() not in stored
    assert hash_key(secret) in stored
    store.close()
    stored = store_files(path)
    assert secret[len(KEY_PREFIX) :].encode() not in stored
    assert hash_key(secret) in stored

    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert stat.S_IMODE(path.parent.stat().st_mode) == 0o700


def test_a_secret_is_stored_once(open_store: StoreOpener) -> None:
    store = open_store()
    store.create_key(name="one", secret=SECRET_A)
    with pytest.raises(StoreError, match="already exists"):
        store.create_key(name="two", secret=SECRET_A)
    assert [record.name for record in store.list_keys()] == ["one"]


def test_revoke_by_id_prefix_or_name(open_store: StoreOpener) -> None:
    store = open_store()
    by_id, _ = store.create_key(name="first")
    by_prefix, secret = store.create_key(name="second")
    by_name, _ = store.create_key(name="third")
    kept, kept_secret = store.create_key(name="kept")
    counter = store.change_counter()

    assert store.revoke_key(by_id.id).id == by_id.id
    assert store.revoke_key(KEY_PREFIX + by_prefix.prefix).id == by_prefix.id
    assert store.revoke_key("third").id == by_name.id
    assert store.change_counter() == counter + 3

    listed = {record.id: record for record in store.list_keys()}
    assert all(listed[r.id].revoked_at is not None for r in (by_id, by_prefix, by_name))
    assert not listed[by_prefix.id].active
    assert store.all_active_keys() == {hash_key(kept_secret): kept}
    assert store.list_keys(include_revoked=False) == [kept]
    # a revoked key is still found by its hash, so the gateway can say why it is refused
    found = store.key_by_hash(hash_key(secret))
    assert found is not None
    assert not found.active


def test_a_name_shared_by_two_live_keys_is_ambiguous(open_store: StoreOpener) -> None:
    store = open_store()
    one, _ = store.create_key(name="team")
    two, _ = store.create_key(name="team")
    with pytest.raises(StoreError, match="ambiguous") as raised:
        store.revoke_key("team")
    assert one.id in str(raised.value)
    assert two.id in str(raised.value)
    assert all(record.active for record in store.list_keys())

    store.revoke_key(one.id)
    assert store.revoke_key("team").id == two.id  # the only live one left
    again = store.revoke_key(two.id)  # revoking twice is not an error and changes nothing
    assert again.revoked_at == store.list_keys()[1].revoked_at


def test_an_unknown_reference_says_how_to_list_keys(open_store: StoreOpener) -> None:
    store = open_store()
    store.create_key(name="someone")
    with pytest.raises(KeyNotFound, match="gatewayd keys list") as raised:
        store.revoke_key("nobody")
    assert raised.value.exit_code == 1


def test_an_expired_key_is_inactive(open_store: StoreOpener) -> None:
    store = open_store()
    expired, secret = store.create_key(name="old", expires_at=time.time() - 1)
    current, current_secret = store.create_key(name="new", expires_at=time.time() + 3600)
    assert not expired.active
    assert current.active
    assert store.all_active_keys() == {hash_key(current_secret): current}
    assert store.key_by_hash(hash_key(secret)) == expired
    assert current.expires_at is not None
    assert not current.active_at(current.expires_at)


def test_key_changes_are_seen_through_another_connection(open_store: StoreOpener) -> None:
    writer = open_store()
    reader = open_store()
    before = reader.change_counter()
    record, secret = writer.create_key(name="fresh")
    assert reader.change_counter() > before
    assert reader.all_active_keys() == {hash_key(secret): record}
    before = reader.change_counter()
    writer.revoke_key(record.id)
    assert reader.change_counter() > before
    assert reader.all_active_keys() == {}
    reader.close()


def test_parse_expiry() -> None:
    midnight = dt.datetime(2027, 1, 1, tzinfo=dt.UTC).timestamp()
    assert parse_expiry("2027-01-01") == midnight
    assert parse_expiry("2027-01-01T12:00:00") == midnight + 12 * 3600
    assert parse_expiry("2027-01-01T12:00:00Z") == midnight + 12 * 3600
    assert parse_expiry("2027-01-01T12:00:00+02:00") == midnight + 10 * 3600
    with pytest.raises(ValueError, match=r"invalid expiry 'next week'.*2027-01-01"):
        parse_expiry("next week")


def declared(name: str, key: str, **limits: object) -> ApiKey:
    return ApiKey(name=name, key=key, **limits)  # type: ignore[arg-type]


def test_import_reports_imported_unchanged_updated_and_orphans(open_store: StoreOpener) -> None:
    store = open_store()
    first = [
        declared("alice", SECRET_A, models=("llama",)),
        declared("bob", SECRET_B, rpm=10),
        declared("dave", SECRET_D, expires="2999-01-01"),
    ]
    report = store.import_keys(first)
    assert report.imported == ("alice", "bob", "dave")
    assert (report.unchanged, report.updated, report.orphans) == ((), (), ())
    ids = {record.name: record.id for record in store.list_keys()}
    assert all(record.source == "config" for record in store.list_keys())
    assert store.key_by_hash(hash_key(SECRET_D)) is not None

    counter = store.change_counter()
    assert store.import_keys(first).unchanged == ("alice", "bob", "dave")
    assert store.change_counter() == counter  # nothing written, caches stay valid

    edited = [first[0], declared("bob", SECRET_B, rpm=20), declared("carol", SECRET_C)]
    report = store.import_keys(edited)
    assert report.imported == ("carol",)
    assert report.unchanged == ("alice",)
    assert report.updated == ("bob",)
    assert [orphan.name for orphan in report.orphans] == ["dave"]
    assert report.orphans[0].id == ids["dave"]
    assert store.change_counter() > counter

    keys = {record.name: record for record in store.list_keys()}
    assert keys["bob"].rpm == 20
    assert keys["bob"].id == ids["bob"]
    assert keys["dave"].active  # an orphan is reported, never revoked on its own


def test_a_rotated_secret_keeps_the_key_and_stops_the_old_secret(open_store: StoreOpener) -> None:
    store = open_store()
    store.import_keys([declared("alice", SECRET_A)])
    (before,) = store.list_keys()
    report = store.import_keys([declared("alice", SECRET_C)])
    assert report.updated == ("alice",)
    assert report.orphans == ()
    (after,) = store.list_keys()
    assert after.id == before.id
    assert after.prefix != before.prefix
    assert store.key_by_hash(hash_key(SECRET_A)) is None
    assert store.key_by_hash(hash_key(SECRET_C)) == after


def test_a_revoked_declared_key_stays_revoked(open_store: StoreOpener) -> None:
    store = open_store()
    store.import_keys([declared("alice", SECRET_A)])
    store.revoke_key("alice")
    report = store.import_keys([declared("alice", SECRET_A)])
    assert report.revoked == ("alice",)
    assert (report.imported, report.unchanged, report.updated) == ((), (), ())
    assert store.all_active_keys() == {}


def test_a_cli_key_declared_in_the_config_is_adopted(open_store: StoreOpener) -> None:
    store = open_store()
    record, secret = store.create_key(name="made-by-hand")
    report = store.import_keys([declared("pinned", secret, tpm=1000)])
    assert report.updated == ("pinned",)
    (adopted,) = store.list_keys()
    assert (adopted.id, adopted.name, adopted.tpm, adopted.source) == (record.id, "pinned", 1000, "config")


def test_declared_mistakes_are_config_errors_and_nothing_is_written(open_store: StoreOpener) -> None:
    store = open_store()
    mistakes = [
        declared("alice", SECRET_A, expires="soon"),
        declared("alice", SECRET_B),
        declared("carol", SECRET_A),
    ]
    with pytest.raises(ConfigError) as raised:
        store.import_keys(mistakes)
    assert {issue.key for issue in raised.value.issues} == {"keys[0].expires", "keys[1].name", "keys[2].key"}
    assert store.list_keys() == []


def test_only_live_config_keys_are_orphans() -> None:
    now = 1_000_000.0
    base = KeyRecord(
        id="k_1",
        name="gone",
        prefix="abcd",
        models=None,
        rpm=None,
        tpm=None,
        max_concurrency=None,
        budget_tokens=None,
        expires_at=None,
        revoked_at=None,
        created_at=now - 100,
        source="config",
    )
    stored = [
        StoredKey(base, hash_key("1")),
        StoredKey(replace(base, id="k_2", expires_at=now - 1), hash_key("2")),
        StoredKey(replace(base, id="k_3", revoked_at=now - 1), hash_key("3")),
        StoredKey(replace(base, id="k_4", source="cli"), hash_key("4")),
    ]
    writes, report = plan_import(stored, [], now=now)
    assert writes == []
    assert [orphan.id for orphan in report.orphans] == ["k_1"]


def test_a_file_that_is_not_a_store_is_refused_clearly(tmp_path: Path) -> None:
    path = tmp_path / "k.db"
    path.write_bytes(b"this is not a database" * 100)
    with pytest.raises(StoreError, match="not a gatewayd store"):
        Store.open(path)


def test_a_store_from_a_newer_gatewayd_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "k.db"
    Store.open(path).close()
    with sqlite3.connect(path) as conn:
        conn.execute("PRAGMA user_version = 99")
    conn.close()
    with pytest.raises(StoreError, match="newer gatewayd"):
        Store.open(path)


def test_a_closed_store_raises_store_error(open_store: StoreOpener) -> None:
    store = open_store()
    store.close()
    with pytest.raises(StoreError, match="closed"):
        store.list_keys()
