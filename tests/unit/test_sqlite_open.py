"""Several hub processes may start on one new SQLite file at the same moment."""

from __future__ import annotations

import asyncio
from pathlib import Path

from storage.sqlite import SqliteStore


async def test_concurrent_opens_of_a_new_file_all_succeed(tmp_path: Path) -> None:
    for round_ in range(10):
        path = tmp_path / f"new-{round_}.db"
        stores = [SqliteStore(path) for _ in range(4)]
        await asyncio.gather(*(store.open() for store in stores))
        try:
            assert all([await store.ping() for store in stores])
        finally:
            await asyncio.gather(*(store.close() for store in stores))
