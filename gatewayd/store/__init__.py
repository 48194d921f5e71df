"""The embedded store: API keys and usage records in one SQLite file (WAL mode) in the state directory.

Sits below ``gatewayd.gateway`` and ``gatewayd.cli`` (which both use it) and imports only the standard
library, anyio, ``gatewayd.config`` and ``gatewayd.errors``. ``keys`` is pure logic (hashing, records,
importing declared keys), ``db`` the blocking ``Store``, ``usage`` the records and the batching writer.
"""

from gatewayd.store.db import Store, UsageRow
from gatewayd.store.keys import KEY_PREFIX, ImportReport, KeyRecord, hash_key, parse_expiry
from gatewayd.store.usage import UsageRecord, UsageWriter

__all__ = [
    "KEY_PREFIX",
    "ImportReport",
    "KeyRecord",
    "Store",
    "UsageRecord",
    "UsageRow",
    "UsageWriter",
    "hash_key",
    "parse_expiry",
]
