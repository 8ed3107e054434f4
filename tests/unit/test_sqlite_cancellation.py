"""A write cancelled half-way (a channel stopping) must not wedge the SQLite store."""

from __future__ import annotations

import asyncio
from pathlib import Path

from storage.sqlite import SqliteStore


async def test_cancelled_writes_leave_the_store_usable(tmp_path: Path) -> None:
    store = SqliteStore(tmp_path / "hub.db")
    await store.open()
    try:
        for i in range(60):
            task = asyncio.create_task(store.set_state(f"k{i}", i))
            # Cancel at different points: before, during and after BEGIN / the write.
            for _ in range(i % 6):
                await asyncio.sleep(0)
            task.cancel()
            await asyncio.gather(task, return_exceptions=True)
            await asyncio.wait_for(store.set_state("after", i), timeout=5)
            assert await store.get_state("after") == i
    finally:
        await store.close()
