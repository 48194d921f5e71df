"""Stored /v1/responses conversations: kept in the store file (another process finds them), bounded in
number and age, and kept in memory when the store cannot be used."""

from __future__ import annotations

from pathlib import Path

import anyio

from gatewayd.config import ResponsesSettings
from gatewayd.gateway.conversations import Conversations

ITEMS = [{"type": "message", "role": "user", "content": "hi"}]


def test_a_conversation_is_found_again_from_the_store_file(tmp_path: Path) -> None:
    settings = ResponsesSettings()
    db = tmp_path / "state" / "gatewayd.db"

    async def main() -> None:
        first = Conversations(db)
        await first.save("resp_1", ITEMS, settings)
        first.close()
        second = Conversations(db)  # a respawned gatewayd
        assert await second.load("resp_1", settings) == ITEMS
        assert await second.load("resp_2", settings) is None
        second.close()

    anyio.run(main)


def test_the_oldest_go_beyond_max_stored_and_expired_ones_are_not_found(tmp_path: Path) -> None:
    async def main(db: Path) -> None:
        kept = Conversations(db)
        bounded = ResponsesSettings(max_stored=2)
        for n in range(3):
            await kept.save(f"resp_{n}", ITEMS, bounded)
        assert await kept.load("resp_0", bounded) is None
        assert await kept.load("resp_2", bounded) == ITEMS
        assert await kept.load("resp_2", ResponsesSettings(retention_seconds=-1.0)) is None
        kept.close()

    anyio.run(main, tmp_path / "gatewayd.db")  # the store
    (tmp_path / "a-file").write_text("")
    anyio.run(main, tmp_path / "a-file" / "gatewayd.db")  # memory: no store can be created under a file
