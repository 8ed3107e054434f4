"""The SLA sweep as real hub processes on one SQLite file: every mark is reported exactly once."""

from __future__ import annotations

import asyncio
import time
from collections import Counter
from pathlib import Path
from typing import Any

import aiohttp

from storage.sqlite import SqliteStore
from tests.support.process import HubProcess
from tests.support.settings import base_config, deep_merge


def _config(tmp_path: Path, first_response: str) -> dict[str, Any]:
    return deep_merge(
        base_config(tmp_path),
        {
            "sla": {
                "check_every": "1s",
                "policies": {
                    "message": {"first_response": first_response, "warn_at": 0.5},
                    "service_request": {"first_response": "12h"},
                },
            },
        },
    )


async def _submit(session: aiohttp.ClientSession, url: str, i: int) -> int:
    async with session.post(
        f"{url}/forms/contact",
        json={"name": f"Клієнт {i}", "email": f"c{i}@example.com", "message": "Допоможіть"},
    ) as resp:
        assert resp.status == 201, await resp.text()
        body = await resp.json()
        return int(body["lead"].removeprefix("L-"))


async def _marks(db: Path) -> tuple[Counter[int], Counter[int]]:
    store = SqliteStore(db)
    await store.open()
    try:
        warned = Counter(e.lead_number for e in await store.list_events(types=["sla.warning"], limit=100_000))
        breached = Counter(
            e.lead_number for e in await store.list_events(types=["sla.breached"], limit=100_000)
        )
    finally:
        await store.close()
    return warned, breached  # type: ignore[return-value]


async def _wait_for_breaches(
    db: Path, numbers: list[int], timeout: float
) -> tuple[Counter[int], Counter[int]]:
    deadline = time.monotonic() + timeout
    while True:
        warned, breached = await _marks(db)
        if set(numbers) <= set(breached) or time.monotonic() > deadline:
            return warned, breached
        await asyncio.sleep(0.3)


async def test_two_processes_on_one_file_alert_each_breach_once(tmp_path: Path) -> None:
    config = _config(tmp_path, "3s")
    db = tmp_path / "hub.db"
    a = HubProcess(tmp_path, config, name="a")
    b = HubProcess(tmp_path, config, name="b")
    a.start()
    try:
        await a.wait_ready()
        await asyncio.sleep(0.5)  # out of phase: each process's sweep finds some marks first
        b.start()
        await b.wait_ready()
        numbers: list[int] = []
        async with aiohttp.ClientSession() as session:
            # Waves 0.4s apart, so deadlines fall between the two processes' sweeps.
            for wave in range(10):
                numbers += await asyncio.gather(
                    *(_submit(session, (a if i % 2 else b).url, wave * 4 + i) for i in range(4))
                )
                await asyncio.sleep(0.4)
        warned, breached = await _wait_for_breaches(db, numbers, timeout=30)
        # Two more sweeps of each process after everything was reported: still once each.
        await asyncio.sleep(2.5)
        warned, breached = await _marks(db)
        assert sorted(breached) == sorted(numbers)
        assert set(breached.values()) == {1}, breached
        assert sorted(warned) == sorted(numbers)
        assert set(warned.values()) == {1}, warned
        # The live alerts (what notifiers see) are once per lead too, whichever process sent them.
        published = [p.log().count(" sla.breached: ") for p in (a, b)]
        print("breach alerts published per process:", published)
        assert sum(published) == len(numbers), published
    finally:
        a.stop()
        b.stop()


async def test_restart_after_downtime_alerts_each_missed_breach_once(tmp_path: Path) -> None:
    config = _config(tmp_path, "6s")
    db = tmp_path / "hub.db"
    hub = HubProcess(tmp_path, config, name="first")
    hub.start()
    try:
        await hub.wait_ready()
        async with aiohttp.ClientSession() as session:
            numbers = list(await asyncio.gather(*(_submit(session, hub.url, i) for i in range(10))))
    finally:
        hub.kill()  # SIGKILL: no clean shutdown, before any deadline passed
    warned, breached = await _marks(db)
    assert not breached
    await asyncio.sleep(7)  # downtime longer than every deadline (and every warning)
    again = HubProcess(tmp_path, config, name="second")
    again.start()
    try:
        await again.wait_ready()
        warned, breached = await _wait_for_breaches(db, numbers, timeout=20)
        await asyncio.sleep(2.5)
        warned, breached = await _marks(db)
    finally:
        again.stop()
    assert sorted(breached) == sorted(numbers)
    assert set(breached.values()) == {1}
    assert set(warned.values()) == {1}
