"""Benchmark: SLA sweep cost with 100k and 1M open leads, with 0 and 1,000 marks due.

Run: `python -m bench.sla_sweep` (add `--sizes 100000` for a quick run). The stores are built
once with bulk SQL into the temp directory and reused; every open lead has armed warning and
breach marks in the future (the worst case for the partial indexes). Prints the time of one
sweep (median of several) for each case. Target: nothing due at 1M open leads < 10 ms.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import random
import sqlite3
import statistics
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path

from hub.events import EventBus
from hub.sla import SlaSweeper
from storage.sqlite import SqliteStore

NOW = datetime(2026, 11, 23, 12, 0, tzinfo=UTC)
BUILD_VERSION = 1


async def build(path: Path, open_leads: int) -> None:
    """Create the schema through the store, then bulk-insert leads with one SQL statement."""
    store = SqliteStore(path)
    await store.open()
    await store.close()
    now = NOW.timestamp()
    db = sqlite3.connect(path)
    try:
        db.execute("PRAGMA journal_mode = WAL")
        db.execute("PRAGMA synchronous = OFF")
        # Due times spread from 1h to ~30 days ahead; warnings at 80%.
        db.execute(
            """
            WITH RECURSIVE seq(n) AS (SELECT 1 UNION ALL SELECT n + 1 FROM seq WHERE n < ?)
            INSERT INTO leads (number, kind, channel, contact_id, status, origin_external_id,
                created_at, updated_at, first_response_due, warn_due, sla_target, sla_started_at,
                sla_due, sla_warn_due, resolution_due, resolution_warn_due,
                breach_pending_at, warn_pending_at, res_breach_pending_at, res_warn_pending_at,
                assignee, team)
            SELECT n, 'message', 'webform', 'c' || (n % 50000), CASE n % 3 WHEN 0 THEN 'new'
                WHEN 1 THEN 'open' ELSE 'waiting_customer' END, 'e' || n,
                ?1 - 60, ?1 - 60,
                ?1 + 3600 + (n % 2592000), ?1 + 2880 + (n % 2592000), 'first_response', ?1 - 60,
                ?1 + 3600 + (n % 2592000), ?1 + 2880 + (n % 2592000),
                ?1 + 86400 + (n % 2592000), ?1 + 69120 + (n % 2592000),
                ?1 + 3600 + (n % 2592000), ?1 + 2880 + (n % 2592000),
                ?1 + 86400 + (n % 2592000), ?1 + 69120 + (n % 2592000),
                'm' || (n % 40), 'support'
            FROM seq
            """.replace("?1", str(now)),
            (open_leads,),
        )
        db.execute("UPDATE counters SET value = ? WHERE name = 'lead'", (open_leads,))
        db.execute(
            "INSERT OR REPLACE INTO meta (key, value) VALUES ('bench_build', ?)", (str(BUILD_VERSION),)
        )
        db.commit()
        db.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    finally:
        db.close()


def arm_due(path: Path, open_leads: int, due: int) -> None:
    """Make `due` random leads' breach marks fall due (1 minute ago)."""
    db = sqlite3.connect(path)
    try:
        numbers = random.sample(range(1, open_leads + 1), due)
        db.executemany(
            "UPDATE leads SET breach_pending_at = ? WHERE number = ?",
            [(NOW.timestamp() - 60, n) for n in numbers],
        )
        db.commit()
    finally:
        db.close()


async def time_sweep(store: SqliteStore, runs: int) -> tuple[float, tuple[int, int]]:
    sweeper = SlaSweeper(store, EventBus(), batch=500)
    timings = []
    result = (0, 0)
    for _ in range(runs):
        start = time.perf_counter()
        result = await sweeper.sweep(NOW)
        timings.append((time.perf_counter() - start) * 1000)
    return statistics.median(timings), result


async def bench(open_leads: int, directory: Path) -> None:
    path = directory / f"hub-bench-sla-{open_leads}-v{BUILD_VERSION}.db"
    if not path.exists():
        started = time.perf_counter()
        await build(path, open_leads)
        print(f"built {open_leads:>9,} open leads in {time.perf_counter() - started:.1f}s -> {path}")
    store = SqliteStore(path)
    await store.open()
    try:
        await time_sweep(store, 3)  # warm the page cache
        idle_ms, idle = await time_sweep(store, 21)
        print(f"{open_leads:>9,} open, {0:>5} due: sweep {idle_ms:8.2f} ms (claimed {sum(idle)})")
        due_timings = []
        for _ in range(3):
            arm_due(path, open_leads, 1000)
            ms, claimed = await time_sweep(store, 1)
            assert sum(claimed) == 1000, claimed
            due_timings.append(ms)
        print(
            f"{open_leads:>9,} open, {1000:>5} due: sweep {statistics.median(due_timings):8.2f} ms "
            f"(claimed 1000 marks and recorded 1000 events)"
        )
    finally:
        await store.close()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[100_000, 1_000_000])
    parser.add_argument("--dir", type=Path, default=Path(tempfile.gettempdir()))
    args = parser.parse_args()
    logging.basicConfig(level=logging.ERROR)  # one log line per claim would dominate the timing
    for size in args.sizes:
        asyncio.run(bench(size, args.dir))


if __name__ == "__main__":
    main()
