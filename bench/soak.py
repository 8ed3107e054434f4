"""Soak: mixed traffic at a fixed rate for a fixed time against a real hub process, then counts.

    python -m bench.soak                         # 200 msg/s for 300 s (the defaults)
    python -m bench.soak --rate 50 --seconds 30

Traffic, by share: web forms 35 % (JSON over loopback), email 25 % (APPENDed to a private
Dovecot mailbox the hub polls), Telegram 30 % (direct messages through the Bot API emulator
the hub long-polls), staff replies 10 % (REST API, to leads the forms opened; delivered by
SMTP to a capturing aiosmtpd server). Every input and reply carries a unique token. After the
run the bench waits (bounded) for the backlog to drain, then counts: every input exactly one
stored message, every reply exactly one delivery (SMTP), and the hub's memory at start, end
and peak. Needs Dovecot (Debian dovecot-imapd) like the email tests.
"""

from __future__ import annotations

import argparse
import asyncio
import re
import sys
import tempfile
import time
import uuid
from collections import Counter
from pathlib import Path

import aiohttp
import aiosqlite

from tests.support.dovecot import DovecotServer, ImapClient
from tests.support.process import HubProcess
from tests.support.settings import API_TOKEN, base_config, deep_merge
from tests.support.smtp import SmtpServer
from tests.support.telegram_emulator import TelegramEmulator

TOKEN_RE = re.compile(r"soak-(?:form|mail|tg)-\d+")
REPLY_RE = re.compile(r"reply-\d+")
STAFF = -100100


def rss_mb(pid: int, field: str = "VmRSS") -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1]) / 1024
    return float("nan")


def kind_of(i: int) -> str:
    slot = i % 20
    if slot < 7:
        return "form"
    if slot < 12:
        return "mail"
    if slot < 18:
        return "tg"
    return "reply"


async def soak(rate: float, seconds: float, drain: float) -> int:
    tmp = Path(tempfile.mkdtemp(prefix="hub-soak-"))
    dovecot = DovecotServer()
    dovecot.start()
    smtp = SmtpServer()
    smtp.start()
    emu = TelegramEmulator()
    await emu.start()
    emu.add_group(STAFF, forum=True)
    mailbox = f"Soak{uuid.uuid4().hex[:6]}"
    account = dovecot.account
    imap = ImapClient(account)
    await imap.__aenter__()
    await imap.create(mailbox)
    config = deep_merge(
        base_config(tmp),
        {
            "log_level": "WARNING",
            "sla": {"check_every": "10s"},
            "telegram": {
                "enabled": True,
                "token": emu.token,
                "api_base": emu.base_url,
                "staff_group_id": STAFF,
                "poll_timeout": "1s",
                "poller_lease": "10s",
                "limits": {
                    "chat_per_second": 1000,
                    "group_per_minute": 1_000_000,
                    "global_per_second": 10_000,
                },
            },
            "email": {
                "enabled": True,
                "imap": {
                    "host": account.host,
                    "port": account.port,
                    "security": "plain",
                    "username": account.username,
                    "password": account.password,
                    "mailbox": mailbox,
                    "poll_every": "1s",
                },
                "smtp": {"host": "127.0.0.1", "port": smtp.port, "security": "plain", "username": None},
                "attachments_dir": str(tmp / "attachments"),
                "ack": False,
            },
        },
    )
    for manager in config["managers"]:
        manager["capacity"] = 1_000_000
    hub = HubProcess(tmp, config, name="soak")
    hub.start()
    sent: Counter[str] = Counter()
    failed: Counter[str] = Counter()
    form_leads: list[int] = []
    replies: list[str] = []
    samples: list[tuple[float, float]] = []
    try:
        await hub.wait_ready(timeout=60)
        assert hub.proc is not None
        pid = hub.proc.pid
        rss_start = rss_mb(pid)
        headers = {"Authorization": f"Bearer {API_TOKEN}"}
        limit = asyncio.Semaphore(128)
        imap_lock = asyncio.Lock()  # one IMAP connection: one APPEND at a time
        users = [{"id": 8000 + u, "is_bot": False, "first_name": f"S{u}"} for u in range(300)]

        async def one(session: aiohttp.ClientSession, i: int) -> None:
            kind = kind_of(i)
            if kind == "reply" and not form_leads:
                kind = "form"
            token = f"soak-{kind}-{i}"
            try:
                async with limit:
                    if kind == "form":
                        body = {"name": f"F {i}", "email": f"f{i % 500}@example.com", "message": token}
                        async with session.post(f"{hub.url}/forms/contact", json=body) as resp:
                            if resp.status != 201:
                                raise RuntimeError(f"form {resp.status}")
                            form_leads.append(int((await resp.json())["lead"].removeprefix("L-")))
                    elif kind == "mail":
                        from tests.email.helpers import make_mail

                        raw, _ = make_mail(sender=f"m{i % 300}@example.com", subject=f"Soak {i}", text=token)
                        async with imap_lock:
                            await imap.append(raw, mailbox)
                    elif kind == "tg":
                        user = users[i % len(users)]
                        emu.send_text(user["id"], user, token)
                    else:
                        reply = f"reply-{i}"
                        number = form_leads[i % len(form_leads)]
                        async with session.post(
                            f"{hub.url}/api/v1/leads/{number}/replies",
                            json={"text": reply, "author": "olena"},
                            headers={**headers, "Idempotency-Key": f"soak-{reply}"},  # 8+ characters
                        ) as resp:
                            if resp.status != 201:
                                raise RuntimeError(f"reply {resp.status}")
                        replies.append(reply)
                sent[kind] += 1
            except (aiohttp.ClientError, OSError, RuntimeError, TimeoutError) as exc:
                failed[kind] += 1
                print(f"  {token}: {exc}", file=sys.stderr)

        total = int(rate * seconds)
        started = time.monotonic()
        async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=60)) as session:
            tasks: list[asyncio.Task[None]] = []
            next_sample = started
            for i in range(total):
                due = started + i / rate
                delay = due - time.monotonic()
                if delay > 0:
                    await asyncio.sleep(delay)
                if time.monotonic() >= next_sample:
                    samples.append((time.monotonic() - started, rss_mb(pid)))
                    next_sample += 5
                tasks.append(asyncio.create_task(one(session, i)))
            await asyncio.gather(*tasks)
        offered = time.monotonic() - started
        print(
            f"offered {total} in {offered:.1f} s ({total / offered:.0f}/s): {dict(sent)}; failed {dict(failed)}"
        )

        # Drain: every token stored, every reply delivered (bounded wait).
        expected = {f"soak-{k}-{i}" for i in range(total) for k in [kind_of(i)] if k != "reply"}
        expected = {t for t in expected if t.split("-")[1] in sent}
        db = tmp / "hub.db"
        deadline = time.monotonic() + drain
        stored: Counter[str] = Counter()
        delivered: Counter[str] = Counter()
        while True:
            async with aiosqlite.connect(db) as conn:
                cursor = await conn.execute("SELECT text FROM messages WHERE direction = 'in'")
                rows = await cursor.fetchall()
            stored = Counter(m for (text,) in rows for m in TOKEN_RE.findall(str(text)))
            delivered = Counter(
                m for raw in smtp.raw for m in set(REPLY_RE.findall(raw.decode("utf-8", "replace")))
            )
            done_inputs = len(set(stored) & expected)
            if (done_inputs >= len(expected) and len(set(delivered) & set(replies)) >= len(replies)) or (
                time.monotonic() > deadline
            ):
                break
            await asyncio.sleep(1)
        drained = time.monotonic() - started - offered
        samples.append((time.monotonic() - started, rss_mb(pid)))
        missing = expected - set(stored)
        doubled = {t: n for t, n in stored.items() if n > 1}
        undelivered = set(replies) - set(delivered)
        twice = {r: n for r, n in delivered.items() if n > 1}
        print(f"backlog drained {drained:.1f} s after the last input (limit {drain:.0f} s)")
        print(
            f"inputs   {len(expected)} sent, {len(set(stored) & expected)} stored, {len(missing)} missing, {len(doubled)} stored twice"
        )
        print(
            f"replies  {len(replies)} recorded, {len(set(delivered) & set(replies))} delivered by SMTP, "
            f"{len(undelivered)} undelivered, {len(twice)} delivered twice"
        )
        print(
            f"memory   hub RSS {rss_start:.0f} MiB at start, {rss_mb(pid):.0f} MiB at end, peak {rss_mb(pid, 'VmHWM'):.0f} MiB"
        )
        print("rss over time (s: MiB)  " + "  ".join(f"{t:.0f}:{m:.0f}" for t, m in samples))
        return 0 if not (missing or doubled or undelivered or twice) else 1
    finally:
        hub.stop()
        await imap.__aexit__(None, None, None)
        await emu.stop()
        smtp.stop()
        dovecot.stop()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rate", type=float, default=200.0, help="messages per second offered")
    parser.add_argument("--seconds", type=float, default=300.0, help="how long traffic is offered")
    parser.add_argument("--drain", type=float, default=300.0, help="max seconds to wait for the backlog")
    args = parser.parse_args(argv)
    return asyncio.run(soak(args.rate, args.seconds, args.drain))


if __name__ == "__main__":
    sys.exit(main())
