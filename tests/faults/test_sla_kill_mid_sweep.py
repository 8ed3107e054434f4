"""6a: two hub processes, 100 leads breaching in the same minute, one process SIGKILLed mid-sweep.

Exactly 100 sla.breached events land in the store, and the alerts chat (the Telegram emulator)
gets one breach alert per lead: the alert relay posts from the durable event log, not from the
sweeping process's memory, so the claims a killed sweeper made are still announced.
"""

from __future__ import annotations

import asyncio
import time
from collections import Counter
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from storage.sqlite import SqliteStore
from tests.integration.test_telegram import ALERTS, STAFF, telegram_config
from tests.support.process import HubProcess
from tests.support.settings import base_config, deep_merge
from tests.support.telegram_emulator import TelegramEmulator, running_emulator

LEADS = 100


@pytest.fixture
async def emu() -> AsyncIterator[TelegramEmulator]:
    async with running_emulator(STAFF, ALERTS) as emulator:
        yield emulator


def _config(tmp_path: Path, emu: TelegramEmulator) -> dict[str, Any]:
    return deep_merge(
        base_config(tmp_path),
        {
            "sla": {
                "check_every": "1s",
                "policies": {
                    "message": {"first_response": "12s", "warn_at": 0.99},
                    "service_request": {"first_response": "12h"},
                },
            },
            "telegram": telegram_config(emu),
        },
    )


async def _submit(session: aiohttp.ClientSession, url: str, i: int) -> int:
    async with session.post(
        f"{url}/forms/contact",
        json={"name": f"Клієнт {i}", "email": f"c{i}@example.com", "message": "Допоможіть"},
    ) as resp:
        assert resp.status == 201, await resp.text()
        return int((await resp.json())["lead"].removeprefix("L-"))


async def _breaches(store: SqliteStore) -> Counter[int]:
    events = await store.list_events(types=["sla.breached"], limit=100_000)
    return Counter(e.lead_number for e in events if e.lead_number is not None)


def _breach_alerts(emu: TelegramEmulator) -> Counter[str]:
    refs: Counter[str] = Counter()
    for text in emu.texts_to(ALERTS):
        if text.startswith("🔥"):
            refs[text.split("L-", 1)[1].split()[0].strip(".,:;<")] += 1
    return refs


async def test_kill_one_of_two_mid_sweep_gives_exactly_one_alert_per_breach(
    tmp_path: Path, emu: TelegramEmulator
) -> None:
    config = _config(tmp_path, emu)
    a = HubProcess(tmp_path, config, name="a")
    b = HubProcess(tmp_path, config, name="b")
    store = SqliteStore(tmp_path / "hub.db")
    procs = {"a": a, "b": b}
    a.start()
    b.start()
    try:
        await asyncio.gather(a.wait_ready(), b.wait_ready())
        await store.open()
        async with aiohttp.ClientSession() as session:
            sem = asyncio.Semaphore(16)

            async def one(i: int) -> int:
                async with sem:
                    return await _submit(session, (a if i % 2 else b).url, i)

            numbers = sorted(await asyncio.gather(*(one(i) for i in range(LEADS))))
        assert numbers == list(range(1, LEADS + 1))
        # Wait for the first breach claims, then SIGKILL a process that is reporting them.
        victim: str | None = None
        deadline = time.monotonic() + 40
        while victim is None and time.monotonic() < deadline:
            if await _breaches(store):
                reporting = {n: p.log().count(" sla.breached: ") for n, p in procs.items()}
                victim = max(reporting, key=lambda n: reporting[n])
                procs[victim].kill()
            else:
                await asyncio.sleep(0.02)
        assert victim is not None, "no breach was claimed in time"
        survivor = procs["b" if victim == "a" else "a"]
        claimed_by_victim = procs[victim].log().count(" sla.breached: ")
        deadline = time.monotonic() + 40
        while time.monotonic() < deadline:
            breached = await _breaches(store)
            if len(breached) == LEADS and len(_breach_alerts(emu)) == LEADS:
                break
            await asyncio.sleep(0.3)
        await asyncio.sleep(3)  # more sweeps and relay rounds: nothing is reported again
        breached = await _breaches(store)
        alerts = _breach_alerts(emu)
        print(
            f"victim {victim} had logged {claimed_by_victim} breach(es) when killed; "
            f"events {sum(breached.values())}, alert posts {sum(alerts.values())}"
        )
        assert sorted(breached) == numbers
        assert set(breached.values()) == {1}, breached
        assert sorted(int(r) for r in alerts) == numbers, alerts
        assert survivor.proc is not None and survivor.proc.poll() is None
        # Exactly once each: a relay killed between Telegram's answer and its cursor write may
        # repeat the one alert in flight (README, "How it works"); nothing else is repeated.
        assert sum(alerts.values()) <= LEADS + 1, [r for r, n in alerts.items() if n > 1]
    finally:
        a.kill()
        b.kill()
        await store.close()
