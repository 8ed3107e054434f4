"""Ingest and queue-view cost with 10k, 100k and 1M leads already stored (should stay flat).

    python -m bench.scaling                            # sizes 10000,100000,1000000; SQLite
    python -m bench.scaling --sizes 10000,100000 -n 2000 -c 32

One SQLite file grows through the sizes (leads inserted through the store, nine in ten
resolved history, one in ten open, spread over 20 other managers; due times in the future, so
the SLA sweep has no backlog to work through during the measurement). At each size a real hub
process is started on the file and measured: form ingest over loopback (throughput and
latency, the load from a separate process as in bench.ingest), then the queue views through
the REST API (first page of open leads, of one agent's open leads, of breached leads).
Flat figures across sizes mean the hot paths are served by indexes, not scans.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import subprocess
import sys
import tempfile
import time
import uuid
from datetime import UTC, datetime
from pathlib import Path

import aiohttp
import yaml

from bench.ingest import ROOT, TOKEN, free_port, hub_config, percentile, run_generator, wait_ready
from bench.store_queries import T0, make_lead, populate
from hub.domain import Lead
from storage import store_from_url

VIEWS = {
    "open leads, first page": "status=open&limit=50",
    "one agent's open leads": "status=open&assignee=m0&limit=50",
    "breached leads": "breached=true&limit=50",
}


def future_lead(number: int, due: bool) -> Lead:
    """bench.store_queries' lead, its clocks moved to now: no breach is due during the run."""
    lead = make_lead(number, due)
    shift = datetime.now(UTC) - T0
    for name in (
        "created_at",
        "updated_at",
        "first_response_at",
        "first_response_due",
        "warn_due",
        "breached_at",
    ):
        value = getattr(lead, name)
        if value is not None:
            setattr(lead, name, value + shift)
    return lead


async def grow(url: str, count: int) -> None:
    """Insert `count` more leads through the store."""
    store = store_from_url(url)
    await store.open()
    try:
        if count > 0:
            await populate(store, count, due=0, make=future_lead)
    finally:
        await store.close()


async def views(url: str, repeat: int) -> dict[str, tuple[float, float]]:
    headers = {"Authorization": f"Bearer {TOKEN}"}
    result: dict[str, tuple[float, float]] = {}
    async with aiohttp.ClientSession(headers=headers) as session:
        for label, query in VIEWS.items():
            times: list[float] = []
            for _ in range(repeat):
                started = time.perf_counter()
                async with session.get(f"{url}/api/v1/leads?{query}") as resp:
                    await resp.read()
                    assert resp.status == 200, resp.status
                times.append(time.perf_counter() - started)
            times.sort()
            result[label] = (percentile(times, 0.5) * 1000, percentile(times, 0.95) * 1000)
    return result


def measure(storage_url: str, tmp: Path, total: int, concurrency: int, repeat: int) -> None:
    port = free_port()
    config = hub_config(storage_url, port)
    config["log_level"] = "WARNING"
    config_path = tmp / f"config-{port}.yaml"
    config_path.write_text(yaml.safe_dump(config, allow_unicode=True))
    env = {**os.environ, "PYTHONPATH": str(ROOT), "HUB_API_TOKEN": TOKEN}
    with (tmp / "hub.log").open("ab") as log:
        proc = subprocess.Popen(
            [sys.executable, "-m", "hub", "run", "--config", str(config_path)],
            cwd=ROOT,
            env=env,
            stdout=log,
            stderr=subprocess.STDOUT,
        )
    url = f"http://127.0.0.1:{port}"
    try:
        asyncio.run(wait_ready(url, proc, timeout=120))
        result = run_generator(url, total, concurrency, uuid.uuid4().hex[:8])
        latencies = sorted(result["latencies"])
        p50, p99 = (percentile(latencies, f) * 1000 for f in (0.5, 0.99))
        print(
            f"  ingest {total} forms at c={concurrency}: {total / result['elapsed']:,.0f} leads/s, "
            f"p50 {p50:.1f} ms, p99 {p99:.1f} ms, statuses {result['statuses']}"
        )
        for label, (v50, v95) in asyncio.run(views(url, repeat)).items():
            print(f"  queue view {label:<26} p50 {v50:7.2f} ms   p95 {v95:7.2f} ms")
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=60)
        except subprocess.TimeoutExpired:
            proc.kill()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", default="10000,100000,1000000")
    parser.add_argument("-n", type=int, default=2000, help="form submissions measured per size")
    parser.add_argument("-c", type=int, default=32, help="submissions in flight")
    parser.add_argument("--repeat", type=int, default=50, help="requests per queue view")
    args = parser.parse_args(argv)
    tmp = Path(tempfile.mkdtemp(prefix="hub-scaling-"))
    storage_url = f"sqlite:///{tmp / 'hub.db'}"
    print(f"sqlite file {tmp / 'hub.db'}")
    stored = 0
    for size in (int(s) for s in args.sizes.split(",")):
        started = time.perf_counter()
        asyncio.run(grow(storage_url, size - stored))
        stored = size
        print(f"{size:,} leads stored (+{time.perf_counter() - started:.0f} s to insert)")
        measure(storage_url, tmp, args.n, args.c, args.repeat)
        stored += args.n
    return 0


if __name__ == "__main__":
    sys.exit(main())
