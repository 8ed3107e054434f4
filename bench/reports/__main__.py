"""KPI report over many leads on SQLite (or MongoDB): prints how long the database aggregation takes.

    python -m bench.reports --leads 1000000
    python -m bench.reports --leads 1000000 --mongo mongodb://127.0.0.1/?replicaSet=rs0

Builds (once, then reuses) bench/out/reports-N.db with N leads spread over a year, four
managers in two teams, three channels and both kinds, then times the report the dashboard
and `GET /api/v1/reports/kpi` compute: the summary alone, and summary + the four breakdowns +
the per-day series, for the whole year and for one month. `--check` then compares the whole
year's histogram percentiles with exact ones. With `--mongo URL` the same leads go into the
database `hub_bench_reports_N` on that server (once; the first open fills the KPI rollups
from them, like an upgrade) and the same report is timed on `MongoStore`.
"""

from __future__ import annotations

import argparse
import asyncio
import random
import sqlite3
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path
from zoneinfo import ZoneInfo

from hub.domain import Lead, LeadKind, LeadStatus
from hub.reports import Filters, Period, _query, build_report
from storage.base import Store
from storage.mongo import MongoStore, _lead_doc
from storage.sqlite import SqliteStore

OUT = Path(__file__).resolve().parents[1] / "out"
START = datetime(2025, 1, 1, tzinfo=UTC)
MANAGERS = [("olena", "support"), ("taras", "support"), ("iryna", "service"), ("andrii", "service")]
CHANNELS = ["email", "webform", "telegram"]


def _rows(count: int, seed: int = 7):  # type: ignore[no-untyped-def]
    rng = random.Random(seed)
    year = 365 * 86400
    base = START.timestamp()
    for number in range(1, count + 1):
        created = base + rng.random() * year
        kind = "service_request" if rng.random() < 0.3 else "message"
        assignee, team = MANAGERS[rng.randrange(4) if kind == "message" else 2 + rng.randrange(2)]
        target = 12 * 3600 if kind == "service_request" else 4 * 3600
        due = created + target
        answered = rng.random() < 0.9
        first = created + rng.expovariate(1 / (target * 0.5)) if answered else None
        breached = due if (first is None or first > due) else None
        resolved = (first + rng.expovariate(1 / 86400)) if first is not None and rng.random() < 0.8 else None
        status = "resolved" if resolved else ("waiting_customer" if first else "open")
        yield (
            number, kind, CHANNELS[rng.randrange(3)], f"c{number % 200000}", status, "", "", assignee, team,
            0, "[]", f"bench-{number}", created, created, first, resolved, due, created + target * 0.8,
            None, breached,
        )  # fmt: skip


async def build(path: Path, count: int) -> None:
    store = SqliteStore(path)
    await store.open()
    await store.close()
    with sqlite3.connect(path) as db:
        db.execute("PRAGMA journal_mode = WAL")
        db.execute("PRAGMA synchronous = OFF")
        db.executemany(
            "INSERT INTO leads (number, kind, channel, contact_id, status, subject, form_id, assignee, team, "
            "priority, tags, origin_external_id, created_at, updated_at, first_response_at, resolved_at, "
            "first_response_due, warn_due, warned_at, breached_at) VALUES "
            "(?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
            _rows(count),
        )
        db.execute("ANALYZE")


async def build_mongo(url: str, database: str, count: int) -> None:
    """Insert the leads straight into `leads` (no rollups yet: the store's first open fills them)."""
    from pymongo import AsyncMongoClient

    client: AsyncMongoClient[dict[str, object]] = AsyncMongoClient(url, tz_aware=True, tzinfo=UTC)
    try:
        db = client[database]
        if await db["leads"].estimated_document_count() == count:
            return
        await client.drop_database(database)
        batch = []
        for row in _rows(count):
            batch.append(_lead_doc(_lead(row)))
            if len(batch) == 10_000:
                await db["leads"].insert_many(batch, ordered=False)
                batch = []
        if batch:
            await db["leads"].insert_many(batch, ordered=False)
    finally:
        await client.close()


def _lead(row: tuple) -> Lead:  # type: ignore[type-arg]
    def when(ts: float | None) -> datetime | None:
        return None if ts is None else datetime.fromtimestamp(ts, UTC)

    number, kind, channel, contact, status, _, _, assignee, team, _, _, origin, created = row[:13]
    first, resolved, due, warn_due, _, breached = row[14:]
    return Lead(
        number=number, kind=LeadKind(kind), channel=channel, contact_id=contact, status=LeadStatus(status),
        assignee=assignee, team=team, origin_external_id=origin, created_at=datetime.fromtimestamp(created, UTC),
        updated_at=datetime.fromtimestamp(created, UTC), first_response_at=when(first), resolved_at=when(resolved),
        first_response_due=when(due), warn_due=when(warn_due), breached_at=when(breached),
    )  # fmt: skip


async def timed(label: str, store: Store, period: Period, breakdowns: bool, repeat: int = 3) -> None:
    zone = ZoneInfo("Europe/Kyiv")
    best = float("inf")
    received = 0
    for _ in range(repeat):
        began = time.perf_counter()
        report = await build_report(store, period, Filters(), zone, breakdowns=breakdowns)
        best = min(best, time.perf_counter() - began)
        received = report.summary.row.received
    approximate = report.summary.row.percentiles_approximate
    how = "percentiles from histograms" if approximate else "exact"
    print(f"{label:<44} {received:>9} leads  {best:7.3f} s (best of {repeat}; {how})")


async def check(store: Store, period: Period) -> None:
    """Counts against exact ones, and the largest error of the histogram percentiles (`kpi_rows`, slow)."""
    zone = ZoneInfo("Europe/Kyiv")
    report = await build_report(store, period, Filters(), zone)
    worst = 0.0
    tables = {None: [(None, report.summary)], **report.breakdowns}
    for grouping, rows in tables.items():
        exact = {r.group: r for r in await store.kpi_rows(_query(period, Filters(), grouping))}
        for key, kpi in rows:
            mine, theirs = kpi.row, exact[key]
            counts = ("received", "responded", "within_target", "breached", "resolved", "breached_answered")
            if any(getattr(mine, c) != getattr(theirs, c) for c in counts):
                print(f"COUNTS DIFFER for {grouping}={key}: {mine} != {theirs}")
            for name in ("frt_median", "frt_p90", "resolution_median"):
                got, want = getattr(kpi.row, name), getattr(exact[key], name)
                if got is not None and want:
                    worst = max(worst, abs(got - want) / want)
    print(f"largest relative error of a median/p90 against the exact figure: {100 * worst:.2f} %")


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--leads", type=int, default=1_000_000)
    parser.add_argument("--check", action="store_true", help="compare histogram percentiles with exact ones")
    parser.add_argument("--mongo", metavar="URL", help="time MongoStore on this server instead of SQLite")
    args = parser.parse_args()
    store: Store
    if args.mongo:
        database = f"hub_bench_reports_{args.leads}"
        began = time.perf_counter()
        await build_mongo(args.mongo, database, args.leads)
        print(f"{database} holds {args.leads} leads ({time.perf_counter() - began:.1f} s)")
        store = MongoStore(args.mongo, database)
    else:
        OUT.mkdir(parents=True, exist_ok=True)
        path = OUT / f"reports-{args.leads}.db"
        if not path.exists():
            began = time.perf_counter()
            await build(path, args.leads)
            print(f"built {path} with {args.leads} leads in {time.perf_counter() - began:.1f} s")
        store = SqliteStore(path)
    began = time.perf_counter()
    await store.open()  # the first open after an upgrade fills the KPI rollups from the leads
    print(f"opened the store in {time.perf_counter() - began:.1f} s")
    try:
        year = Period(START, START + timedelta(days=365))
        month = Period(START + timedelta(days=31), START + timedelta(days=59))
        await timed("summary, whole year", store, year, breakdowns=False)
        await timed("summary + 4 breakdowns + per day, whole year", store, year, breakdowns=True)
        await timed("summary, one month", store, month, breakdowns=False)
        await timed("summary + 4 breakdowns + per day, one month", store, month, breakdowns=True)
        if args.check:
            await check(store, year)
    finally:
        await store.close()


if __name__ == "__main__":
    asyncio.run(main())
