"""Store contract across real OS processes: what must happen once, happens once.

Two hub processes share one database in production (and one SQLite file on a small site).
These tests start separate Python processes on the same storage URL and check that lead
numbers stay unique and every SLA mark is claimed by exactly one of them.
"""

from __future__ import annotations

import asyncio
import json
import os
import sys
from pathlib import Path

from hub.domain import EventType
from storage.base import Store
from tests.contract.builders import at, new_lead
from tests.contract.conftest import StoreFactory

ROOT = Path(__file__).resolve().parents[2]

WORKER = """
import asyncio, json, sys
from datetime import datetime
from storage import store_from_url

async def main(url, job, count, now):
    store = store_from_url(url)
    await store.open()
    try:
        # Ready, then wait for the go line: all workers start their writes at the same moment.
        print("ready", flush=True)
        await asyncio.get_running_loop().run_in_executor(None, sys.stdin.readline)
        out = []
        if job == "numbers":
            for _ in range(count):
                out.append(await store.next_lead_number())
        else:
            for _ in range(count):
                out.extend(lead.number for lead in await store.claim_due_breaches(datetime.fromisoformat(now), 3))
        print(json.dumps(out))
    finally:
        await store.close()

asyncio.run(main(*sys.argv[1:3], int(sys.argv[3]), sys.argv[4]))
"""


async def run_workers(url: str, job: str, count: int, workers: int) -> list[list[int]]:
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    procs = [
        await asyncio.create_subprocess_exec(
            sys.executable,
            "-c",
            WORKER,
            url,
            job,
            str(count),
            at(hours=1).isoformat(),
            stdin=asyncio.subprocess.PIPE,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE,
            env=env,
        )
        for _ in range(workers)
    ]
    for proc in procs:
        assert proc.stdout is not None
        ready = await asyncio.wait_for(proc.stdout.readline(), timeout=60)
        assert ready == b"ready\n", ready
    for proc in procs:
        assert proc.stdin is not None
        proc.stdin.write(b"go\n")
        await proc.stdin.drain()
    outputs = await asyncio.wait_for(asyncio.gather(*(p.communicate() for p in procs)), timeout=60)
    results = []
    for proc, (out, err) in zip(procs, outputs, strict=True):
        assert proc.returncode == 0, err.decode()
        results.append(json.loads(out))
    return results


async def test_lead_numbers_unique_across_processes(store_url: str, store: Store) -> None:
    results = await run_workers(store_url, "numbers", 300, workers=3)
    numbers = [n for r in results for n in r]
    assert sorted(numbers) == list(range(1, 901))
    for r in results:
        assert r == sorted(r)  # increasing as each process sees them
    assert await store.next_lead_number() == 901


async def test_breaches_claimed_once_across_processes(store_url: str, store_factory: StoreFactory) -> None:
    store = await store_factory()
    leads = [await new_lead(store, first_response_due=at(minutes=n % 50), warn_due=None) for n in range(90)]
    results = await run_workers(store_url, "claims", 40, workers=3)
    claimed = [n for r in results for n in r]
    assert sorted(claimed) == sorted(lead.number for lead in leads)
    events = await store.list_events(types=[EventType.SLA_BREACHED.value], limit=10_000)
    assert sorted(e.lead_number or 0 for e in events) == sorted(claimed)
