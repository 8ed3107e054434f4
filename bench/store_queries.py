"""Prints what the hot store queries cost as the lead table grows (sweep, queue pages, counts).

    python -m bench.store_queries [--leads 50000] [--due 1000] [--url sqlite:////tmp/bench.db]

The sweep and queue views must cost O(results), not O(all leads): the figures for an empty
sweep and a first page should stay flat when --leads grows. Works on any storage URL
(e.g. a MongoDB replica set); the database should be empty (a fresh file or database name).
"""

from __future__ import annotations

import argparse
import asyncio
import tempfile
import time
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime, timedelta
from typing import Any

from hub.domain import Lead, LeadKind, LeadStatus, Page
from storage import LeadQuery, Store, store_from_url

T0 = datetime(2026, 1, 5, 9, 0, tzinfo=UTC)
MANAGERS = [f"m{n}" for n in range(20)]


def make_lead(number: int, due: bool) -> Lead:
    history = number % 10 != 0  # nine in ten leads are old, answered and resolved
    return Lead(
        number=number,
        kind=LeadKind.MESSAGE,
        channel="webform",
        contact_id=f"c{number % 5000}",
        status=LeadStatus.RESOLVED if history and not due else LeadStatus.OPEN,
        created_at=T0,
        updated_at=T0,
        subject=f"request {number}",
        assignee=MANAGERS[number % len(MANAGERS)],
        origin_external_id=f"bench-{number}",
        first_response_at=T0 + timedelta(minutes=30) if history and not due else None,
        first_response_due=T0 + timedelta(hours=1 if due else 1000),
        warn_due=T0 + timedelta(minutes=45 if due else 60_000),
        breached_at=T0 + timedelta(hours=2) if number % 97 == 0 and not due else None,
    )


async def timed(label: str, repeat: int, call: Callable[[], Awaitable[Any]]) -> Any:
    result = None
    start = time.perf_counter()
    for _ in range(repeat):
        result = await call()
    per_call = (time.perf_counter() - start) / repeat * 1000
    if isinstance(result, Page):
        size: object = len(result.items)
    elif isinstance(result, list | dict):
        size = len(result)
    else:
        size = "1" if result is not None else "0"
    print(f"  {label:<44} {per_call:9.3f} ms/call   results: {size}")
    return result


async def populate(store: Store, leads: int, due: int, make: Callable[[int, bool], Lead] = make_lead) -> None:
    due_every = max(leads // max(due, 1), 1)
    start = time.perf_counter()
    batch: list[Awaitable[Any]] = []
    for _ in range(leads):
        number = await store.next_lead_number()
        batch.append(store.create_lead(make(number, number % due_every == 0 and due > 0)))
        if len(batch) >= 500:
            await asyncio.gather(*batch)
            batch = []
    await asyncio.gather(*batch)
    elapsed = time.perf_counter() - start
    print(f"  inserted {leads} leads in {elapsed:.1f} s ({leads / elapsed:.0f} leads/s)")


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--leads", type=int, default=50_000)
    parser.add_argument("--due", type=int, default=1_000)
    parser.add_argument("--url", default="")
    args = parser.parse_args()
    url = args.url or f"sqlite:///{tempfile.mkdtemp(prefix='hub-bench-')}/bench.db"
    store = store_from_url(url)
    await store.open()
    try:
        print(f"{store.backend}: {url}")
        await populate(store, args.leads, args.due)
        now = T0 + timedelta(hours=3)
        await timed("claim_due_breaches, nothing due yet", 50, lambda: store.claim_due_breaches(T0, 500))
        await timed("claim_due_warnings, nothing due yet", 50, lambda: store.claim_due_warnings(T0, 500))
        start = time.perf_counter()
        claimed = 0
        while batch := await store.claim_due_breaches(now, 500):
            claimed += len(batch)
        elapsed = (time.perf_counter() - start) * 1000
        print(
            f"  {'claim every due breach (batches of 500)':<44} {elapsed:9.3f} ms total  claimed: {claimed}"
        )
        active = (LeadStatus.NEW, LeadStatus.OPEN, LeadStatus.WAITING_CUSTOMER)
        await timed("list_leads first page, no filter", 50, lambda: store.list_leads(LeadQuery(), 50))
        await timed(
            "list_leads first page, active", 20, lambda: store.list_leads(LeadQuery(statuses=active), 50)
        )
        await timed(
            "list_leads first page, one agent's active",
            20,
            lambda: store.list_leads(LeadQuery(assignee="m0", statuses=active), 50),
        )
        await timed(
            "list_leads first page, breached", 20, lambda: store.list_leads(LeadQuery(breached=True), 50)
        )
        await timed(
            "count_active_by_assignee, 20 managers", 20, lambda: store.count_active_by_assignee(MANAGERS)
        )
        await timed("find_active_lead", 50, lambda: store.find_active_lead("c42", "webform"))
    finally:
        await store.close()


if __name__ == "__main__":
    asyncio.run(main())
