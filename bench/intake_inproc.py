"""Form intake in process, no HTTP: CPU per lead by thread, and per SQL statement.

    python -m bench.intake_inproc                      # 5,000 new customers, concurrency 64
    python -m bench.intake_inproc --statements         # + CPU time of every SQL statement
    python -m bench.intake_inproc --hub-root /path/to/other/checkout   # before/after
    python -m bench.intake_inproc --against /path/to/other/checkout    # A/B at the same time

`--against` runs this checkout and the other one as two processes at the same time, both
pinned to CPU 0, for `--rounds` rounds, and compares their CPU per lead. On a VM whose speed
drifts by a third within minutes, runs one after another cannot show a change of a few per
cent; two processes sharing one CPU at the same moment see the same speed.

It builds a hub from bench.ingest's config on a SQLite file in a temp dir, pins the process to
CPU 0 and runs uvloop (as bench.ingest runs the hub), and calls `webform.submit` directly: the
work of a submission without aiohttp. `--statements` wraps the connection aiosqlite drives
(private attributes: a benchmark's licence), so each statement's CPU time in the database thread
is measured; that adds its own overhead to the database thread's figure.
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import logging
import os
import re
import sys
import tempfile
import time
from pathlib import Path
from typing import Any


class _TimedConnection:
    """A sqlite3 connection whose execute/executemany record CPU time per statement."""

    def __init__(self, conn: Any, stats: dict[str, list[int]]) -> None:
        self._conn = conn
        self._stats = stats

    def _timed(self, key: str, call: Any, *args: Any) -> Any:
        start = time.thread_time_ns()
        try:
            return call(*args)
        finally:
            entry = self._stats[" ".join(key.split())[:100]]
            entry[0] += 1
            entry[1] += time.thread_time_ns() - start

    def execute(self, sql: str, *args: Any) -> Any:
        return self._timed(sql, self._conn.execute, sql, *args)

    def executemany(self, sql: str, *args: Any) -> Any:
        return self._timed("MANY " + sql, self._conn.executemany, sql, *args)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._conn, name)


class _CountingQueue:
    """aiosqlite's job queue, counting the jobs (hops to the database thread) put on it."""

    def __init__(self, queue: Any) -> None:
        self._queue = queue
        self.count = 0

    def put_nowait(self, item: Any) -> None:
        self.count += 1
        self._queue.put_nowait(item)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._queue, name)


async def run(n: int, concurrency: int, warmup: int, statements: bool) -> None:
    import yaml

    from bench.ingest import cpu_seconds, hub_config, main_thread_cpu_seconds
    from channels import webform
    from hub.app import Hub
    from hub.config import load_settings
    from hub.domain import LeadKind

    logging.disable(logging.WARNING)
    tmp = Path(tempfile.mkdtemp(prefix="bench-inproc-"))
    config = tmp / "config.yaml"
    config.write_text(yaml.safe_dump(hub_config(f"sqlite:///{tmp}/hub.db", 0)))
    hub = Hub(load_settings(str(config)))
    await hub.store.open()
    db: Any = hub.store._conn  # type: ignore[attr-defined]
    stats: dict[str, list[int]] = collections.defaultdict(lambda: [0, 0])
    if statements:
        db._connection = _TimedConnection(db._connection, stats)
    hops = _CountingQueue(db._tx)
    db._tx = hops

    async def one(i: int, tag: str) -> None:
        fields = {
            "name": f"Клієнт {i}",
            "email": f"c{tag}{i}@example.com",
            "phone": f"+38050{i + (5_000_000 if tag == 'm' else 0):07d}",  # a new customer each
            "message": "Доброго дня, потрібна консультація щодо замовлення.",
        }
        submission, errors = webform.validate_submission(fields, "uk")
        assert submission is not None, errors
        await webform.submit(hub, "webform", "contact", LeadKind.MESSAGE, submission, None, "uk", "127.0.0.1")

    async def worker(first: int, total: int, tag: str) -> None:
        for i in range(first, total, concurrency):
            await one(i, tag)

    await asyncio.gather(*(worker(k, warmup, "w") for k in range(concurrency)))
    stats.clear()
    hops.count = 0
    pid = os.getpid()
    process_cpu, loop_cpu = cpu_seconds(pid), main_thread_cpu_seconds(pid)
    started = time.perf_counter()
    await asyncio.gather(*(worker(k, n, "m") for k in range(concurrency)))
    elapsed = time.perf_counter() - started
    loop_cpu = main_thread_cpu_seconds(pid) - loop_cpu
    other_cpu = cpu_seconds(pid) - process_cpu - loop_cpu
    await hub.store.close()
    print(f"leads          {n} new customers at concurrency {concurrency} (+{warmup} warm-up)")
    print(f"throughput     {n / elapsed:.0f} leads/s")
    print(
        f"CPU per lead   event loop {loop_cpu / n * 1e3:.3f} ms, other threads {other_cpu / n * 1e3:.3f} ms"
    )
    print(f"hops per lead  {hops.count / n:.2f} (jobs handed to the database thread)")
    if statements:
        total = sum(ns for _, ns in stats.values())
        print(f"SQL per lead   {total / n / 1e3:.1f} µs of CPU in the database thread")
        for sql, (calls, ns) in sorted(stats.items(), key=lambda kv: -kv[1][1])[:20]:
            print(
                f"  {ns / n / 1e3:7.1f} µs/lead {calls / n:5.2f}/lead {ns / calls / 1e3:7.1f} µs/call  {sql}"
            )


#: The figures `--against` compares: event loop + other threads, ms of CPU per lead.
CPU_PER_LEAD = re.compile(r"CPU per lead +event loop ([0-9.]+) ms, other threads ([0-9.]+) ms")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="bench.intake_inproc", description=__doc__.split("\n")[0])
    parser.add_argument("-n", type=int, default=5000, help="measured submissions")
    parser.add_argument("-c", type=int, default=64, help="submissions in flight")
    parser.add_argument("--warmup", type=int, default=500)
    parser.add_argument("--statements", action="store_true", help="time every SQL statement")
    parser.add_argument("--hub-root", type=Path, default=None, help="import the hub from this checkout")
    parser.add_argument("--against", type=Path, default=None, help="A/B with this checkout, at the same time")
    parser.add_argument("--rounds", type=int, default=3, help="A/B rounds (with --against)")
    args = parser.parse_args(argv)
    if args.against is not None:
        from bench.ab import side_by_side

        side_by_side(
            "bench.intake_inproc",
            ["-n", str(args.n), "-c", str(args.c)],
            args.against.resolve(),
            args.rounds,
            CPU_PER_LEAD,
        )
        return 0
    if args.hub_root is not None:
        sys.path.insert(0, str(args.hub_root.resolve()))
        for name in [
            m for m in sys.modules if m.split(".")[0] in {"bench", "hub", "channels", "storage", "routing"}
        ]:
            del sys.modules[name]
    from hub.process import loop_factory, pin_to_cpus

    pin_to_cpus([0])
    with asyncio.Runner(loop_factory=loop_factory("uvloop")) as runner:
        runner.run(run(args.n, args.c, args.warmup, args.statements))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
