"""Email ingest benchmark: N messages pre-loaded into a private Dovecot, time until all are leads.

    python -m bench.email_ingest [--n 5000] [--ack] [--workers 16] [--batch 200]
    python -m bench.email_ingest --profile /tmp/email.txt   # + py-spy samples of the measured part

Prints messages per second (target: 500/s on SQLite on the 2-core machine) and the hub's
CPU time per message (its event loop and its other threads, i.e. aiosqlite's; Dovecot runs in
processes of its own). Needs Debian's dovecot-imapd; everything runs on 127.0.0.1 in a
throwaway directory.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import aiosqlite

from bench.ingest import cpu_plan
from hub.app import Hub
from hub.config import ProcessSettings, Settings, settings_from_dict
from hub.process import loop_factory, pin_to_cpus
from tests.email.helpers import make_mail
from tests.support.dovecot import DovecotServer, ImapClient, dovecot_available


async def _preload(server: DovecotServer, mailbox: str, n: int, connections: int = 4) -> None:
    async with ImapClient(server.account) as client:
        await client.create(mailbox)

    async def load(part: int) -> None:
        async with ImapClient(server.account) as client:
            for i in range(part, n, connections):
                raw, _ = make_mail(
                    sender=f"Customer {i} <customer{i}@example.com>",
                    subject=f"Order {i}: where is it?",
                    text=f"Hello,\n\nmy order {i} has not arrived yet. Could you check?\n\nThanks,\nCustomer {i}",
                )
                await client.append(raw, mailbox)

    await asyncio.gather(*(load(p) for p in range(connections)))


async def _count(conn: aiosqlite.Connection) -> int:
    async with conn.execute("SELECT COUNT(*) FROM messages WHERE channel = 'email'") as cursor:
        row = await cursor.fetchone()
    return int(row[0]) if row else 0


def _start_profiler(path: str) -> subprocess.Popen[bytes]:
    """py-spy (a local tool, not a dependency) sampling this process from now on.

    `--gil`: only the thread holding the GIL is sampled, i.e. where the one core the hub can
    use goes (SQLite's own work in aiosqlite's thread runs without the GIL and is not shown).
    """
    spy_bin = shutil.which("py-spy") or str(Path(sys.executable).with_name("py-spy"))
    command = [spy_bin, "record", "--pid", str(os.getpid()), "--gil", "-r", "200", "-f", "raw", "-o", path]
    spy = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    time.sleep(1.0)  # let it attach before the measured part starts
    return spy


def _thread_cpu() -> dict[int, float]:
    """CPU seconds (user + system) of each live thread of this process, by thread id."""
    ticks = os.sysconf("SC_CLK_TCK")
    found: dict[int, float] = {}
    for task in Path("/proc/self/task").iterdir():
        try:
            fields = (task / "stat").read_text().rpartition(")")[2].split()
        except OSError:
            continue  # the thread ended meanwhile
        # proc(5): after the command come field 3 (state) on; utime and stime are fields 14 and 15.
        found[int(task.name)] = (int(fields[11]) + int(fields[12])) / ticks
    return found


async def _fetch_and_parse_only(settings: Settings, n: int) -> None:
    """The channel's own share: IMAP FETCH plus MIME parsing, with no store behind it."""
    from datetime import UTC, datetime

    from channels.email.imap import Fetched, ImapPoller, MailboxPosition
    from channels.email.parse import parse_email
    from storage.sqlite import SqliteStore

    work = Path(tempfile.mkdtemp(prefix="hub-bench-fetch-"))
    store = SqliteStore(work / "state.db")
    await store.open()
    parsed = 0

    async def sink(batch: list[Fetched], position: MailboxPosition) -> None:
        nonlocal parsed
        for fetched in batch:
            parse_email(fetched.raw)
            parsed += 1

    poller = ImapPoller(settings.email, store, "bench", sink, lambda: datetime.now(UTC))
    poller._imap = settings.email.imap.model_copy(update={"move_to": None})
    try:
        client = await poller._connect()
        uidvalidity = await poller._select(client)
        t0 = time.perf_counter()
        # EXAMINE-like: pretend first sight, but never flag anything (the real run needs them unseen).
        poller._acknowledge = _no_ack  # type: ignore[method-assign]
        await poller.sync(client, uidvalidity)
        elapsed = time.perf_counter() - t0
        await poller._close()
    finally:
        await store.close()
        shutil.rmtree(work, ignore_errors=True)
    print(f"fetch+parse only: {parsed} messages in {elapsed:.2f}s = {parsed / elapsed:.0f} messages/s")


async def _no_ack(client: object, uids: list[int]) -> None:
    return None


async def run(
    n: int,
    ack: bool,
    workers: int,
    batch: int,
    profile: str = "",
    cpus: list[int] | None = None,
    parse_workers: int = 1,
) -> float:
    if not dovecot_available():
        print("bench/email_ingest: Debian's dovecot-imapd is not installed", file=sys.stderr)
        raise SystemExit(2)
    work = Path(tempfile.mkdtemp(prefix="hub-bench-email-"))
    server = DovecotServer()
    server.start()
    try:
        mailbox = "Bench"
        started = time.perf_counter()
        await _preload(server, mailbox, n)
        print(f"pre-loaded {n} messages into Dovecot in {time.perf_counter() - started:.1f}s")
        account = server.account
        settings = settings_from_dict(
            {
                "storage": {"url": f"sqlite:///{work / 'hub.db'}"},
                "web": {"enabled": False},
                # A realistic small team, so routing does its real work for every lead.
                "managers": [
                    {"id": "olena", "name": "Olena", "role": "lead", "teams": ["support"], "capacity": n},
                    {"id": "taras", "name": "Taras", "role": "agent", "teams": ["support"], "capacity": n},
                ],
                "teams": {"support": {"strategy": "least_loaded"}},
                "routing": {"default_team": "support"},
                "email": {
                    "enabled": True,
                    "ack": ack,
                    "workers": workers,
                    "parse_workers": parse_workers,
                    "attachments_dir": str(work / "attachments"),
                    "imap": {
                        "host": account.host,
                        "port": account.port,
                        "security": "plain",
                        "username": account.username,
                        "password": account.password,
                        "mailbox": mailbox,
                        "fetch_batch": batch,
                    },
                    "smtp": {"host": "127.0.0.1", "port": 9, "security": "plain"},
                },
                "log_level": "WARNING",
            },
            env={},
        )
        # Dovecot (started above) keeps every CPU; the hub's threads, and those it starts, get `cpus`.
        pin_to_cpus(cpus or [])
        await _fetch_and_parse_only(settings, n)
        hub = Hub(settings)
        db = work / "hub.db"
        main_thread = threading.get_native_id()
        spy = _start_profiler(profile) if profile else None
        before = _thread_cpu()
        cpu0 = time.process_time()
        t0 = time.perf_counter()
        await hub.start()
        try:
            # One connection for the whole wait: its cost stays out of the figures as far as it can.
            async with aiosqlite.connect(db) as conn:
                deadline = t0 + max(120.0, n / 20)
                while (stored := await _count(conn)) < n:
                    if time.perf_counter() > deadline:
                        raise TimeoutError(f"only {stored}/{n} messages stored")
                    await asyncio.sleep(0.05)
            elapsed = time.perf_counter() - t0
            cpu = time.process_time() - cpu0
            after = _thread_cpu()
        finally:
            if spy is not None:
                spy.send_signal(signal.SIGINT)
                spy.wait(timeout=60)
            await hub.stop()
        loop_cpu = after.get(main_thread, 0.0) - before.get(main_thread, 0.0)
        rate = n / elapsed
        print(f"email ingest: {n} messages -> {n} leads in {elapsed:.2f}s = {rate:.0f} messages/s (SQLite)")
        print(
            f"hub CPU: {cpu:.2f}s = {1000 * cpu / n:.2f} ms per message ({cpu / elapsed:.2f} cores); "
            f"event loop {1000 * loop_cpu / n:.2f} ms, other threads {1000 * (cpu - loop_cpu) / n:.2f} ms"
        )
        return rate
    finally:
        server.stop()
        shutil.rmtree(work, ignore_errors=True)


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--n", type=int, default=5000, help="messages to pre-load (default 5000)")
    parser.add_argument(
        "--ack", action="store_true", help="also queue acknowledgements (SMTP is not reached)"
    )
    parser.add_argument("--workers", type=int, default=64, help="senders processed at once")
    parser.add_argument("--batch", type=int, default=100, help="UIDs per FETCH (at most 200)")
    parser.add_argument(
        "--parse-workers", type=int, default=1, help="email.parse_workers (default 1; 0: parse in the hub)"
    )
    parser.add_argument("--profile", default="", help="record the measured part with py-spy into this file")
    parser.add_argument(
        "--pin",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="keep the hub on one CPU and leave the others to Dovecot (process.cpus; default on)",
    )
    parser.add_argument(
        "--event-loop",
        choices=["uvloop", "asyncio"],
        default=ProcessSettings().event_loop,
        help="the hub's process.event_loop (default: the hub's default)",
    )
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING)
    pinned = cpu_plan(1, args.pin)[0][0]  # the first CPU, when there is another one left
    print(f"event loop {args.event_loop}; hub pinned to {f'CPU {pinned[0]}' if pinned else 'no CPU'}")
    with asyncio.Runner(loop_factory=loop_factory(args.event_loop)) as runner:
        runner.run(run(args.n, args.ack, args.workers, args.batch, args.profile, pinned, args.parse_workers))


if __name__ == "__main__":
    main()
