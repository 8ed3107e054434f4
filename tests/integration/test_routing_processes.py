"""Routing fairness with two hub processes on one SQLite file and 100 leads arriving at once."""

from __future__ import annotations

import asyncio
from collections import Counter
from pathlib import Path

import aiohttp

from storage.sqlite import SqliteStore
from tests.support.process import HubProcess
from tests.support.settings import base_config, deep_merge


async def test_hundred_leads_across_two_processes_spread_by_least_loaded(tmp_path: Path) -> None:
    config = deep_merge(base_config(tmp_path), {"routing": {"rules": []}})
    config["managers"] = [
        {"id": f"m{i}", "name": f"Менеджер {i}", "teams": ["support"], "capacity": 100} for i in range(1, 5)
    ]
    config["teams"] = {"support": {"strategy": "least_loaded"}}
    a = HubProcess(tmp_path, config, name="a")
    b = HubProcess(tmp_path, config, name="b")
    a.start()
    b.start()
    try:
        await asyncio.gather(a.wait_ready(), b.wait_ready())
        async with aiohttp.ClientSession() as session:

            async def submit(i: int) -> None:
                url = (a if i % 2 else b).url
                body = {"name": f"Клієнт {i}", "email": f"p{i}@example.com", "message": "Питання"}
                async with session.post(f"{url}/forms/contact", json=body) as resp:
                    assert resp.status == 201, await resp.text()

            await asyncio.gather(*(submit(i) for i in range(100)))
    finally:
        a.stop()
        b.stop()
    store = SqliteStore(tmp_path / "hub.db")
    await store.open()
    try:
        loads = await store.load_by_assignee(["m1", "m2", "m3", "m4"])
        assigned = await store.list_events(types=["lead.assigned"], limit=1000)
    finally:
        await store.close()
    assert {m: n for m, (n, _) in loads.items()} == {"m1": 25, "m2": 25, "m3": 25, "m4": 25}
    assert len(assigned) == 100
    retried = sum(1 for e in assigned if e.data["reason"]["teams"][0]["attempts"] > 1)
    print("decisions that lost a compare-and-set race and decided again:", retried)
    assert Counter(e.data["reason"]["teams"][0]["strategy"] for e in assigned) == {"least_loaded": 100}
