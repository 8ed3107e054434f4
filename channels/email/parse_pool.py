"""MIME parsing in helper processes, so it runs on another core than the hub's event loop.

Parsing is pure CPU (about a quarter of the hub's time per message in `bench.email_ingest`)
and the hub is one interpreter, held to one core by the GIL. The IMAP poller fetches the next
batch while the current one is stored and processed; that next batch is parsed meanwhile in
`email.parse_workers` spawned processes. With the setting at 0, or when a worker died, the
hub parses it itself.
"""

from __future__ import annotations

import asyncio
import logging
import multiprocessing
import os
import threading
import time
from collections.abc import Collection
from concurrent.futures import ProcessPoolExecutor
from concurrent.futures.process import BrokenProcessPool

from hub.errors import DecodeError
from hub.process import spare_cpus

from .parse import ParsedEmail, parse_email

log = logging.getLogger(__name__)

Parsed = ParsedEmail | DecodeError


def parse_all(raws: list[bytes]) -> list[Parsed]:
    """Parse each message; an unusable one comes back as its DecodeError (never raised)."""
    results: list[Parsed] = []
    for raw in raws:
        try:
            results.append(parse_email(raw))
        except DecodeError as exc:
            results.append(exc)
    return results


def _init_worker(cpus: Collection[int], parent: int) -> None:
    # A worker inherits the hub's pinning (process.cpus); it is there to use the other CPUs.
    if cpus and hasattr(os, "sched_setaffinity"):
        os.sched_setaffinity(0, set(cpus))
    threading.Thread(target=_exit_with_parent, args=(parent,), name="parent-watch", daemon=True).start()


def _exit_with_parent(parent: int) -> None:
    # A hub killed with SIGKILL cannot stop its workers: each one leaves when it sees that.
    while os.getppid() == parent:
        time.sleep(1.0)  # a thread of its own in the worker process, not an event loop
    os._exit(0)


class ParsePool:
    """Parses batches in `workers` helper processes (0: in this process)."""

    def __init__(self, workers: int) -> None:
        self._workers = workers
        self._pool: ProcessPoolExecutor | None = None

    @property
    def enabled(self) -> bool:
        return self._workers > 0

    async def parse(self, raws: list[bytes]) -> list[Parsed]:
        """The parse of every message, in order (DecodeError for the unusable ones)."""
        if not self.enabled or not raws:
            return parse_all(raws)
        pool = self._pool
        if pool is None:
            # spawn, not fork: the hub has threads (aiosqlite's), and a forked child would copy
            # their locks in whatever state they were in.
            pool = ProcessPoolExecutor(
                self._workers,
                mp_context=multiprocessing.get_context("spawn"),
                initializer=_init_worker,
                initargs=(frozenset(spare_cpus()), os.getpid()),
            )
            self._pool = pool
        loop = asyncio.get_running_loop()
        size = -(-len(raws) // self._workers)
        chunks = [raws[i : i + size] for i in range(0, len(raws), size)]
        try:
            parts = await asyncio.gather(*(loop.run_in_executor(pool, parse_all, c) for c in chunks))
        except BrokenProcessPool as exc:
            log.warning("email: a parse worker died (%s); this batch is parsed in the hub process", exc)
            if self._pool is pool:
                self._pool = None
            pool.shutdown(wait=False, cancel_futures=True)
            return parse_all(raws)
        return [parsed for part in parts for parsed in part]

    async def close(self) -> None:
        """Stop the workers (waits in a thread, never on the event loop)."""
        pool, self._pool = self._pool, None
        if pool is not None:
            await asyncio.to_thread(pool.shutdown, True, cancel_futures=True)
