"""The hub killed with SIGKILL in the middle of fetching, then restarted: nothing lost, nothing twice."""

from __future__ import annotations

import asyncio
import signal
import time
from pathlib import Path

import aiosqlite
import pytest

from tests.email.conftest import email_config
from tests.email.helpers import make_mail
from tests.support.dovecot import ImapAccount, ImapClient
from tests.support.process import HubProcess
from tests.support.settings import base_config, deep_merge
from tests.support.smtp import SmtpServer

pytestmark = pytest.mark.server

COUNT = 300


async def _counts(db_path: Path) -> tuple[int, int, int]:
    """(inbound email messages, distinct external ids, leads) in the hub's SQLite file."""
    if not await asyncio.to_thread(db_path.exists):
        return 0, 0, 0
    async with aiosqlite.connect(db_path) as db:
        await db.execute("PRAGMA busy_timeout = 5000")
        try:
            async with db.execute(
                "SELECT COUNT(*), COUNT(DISTINCT external_id) FROM messages WHERE channel = 'email' AND direction = 'in'"
            ) as cursor:
                row = await cursor.fetchone()
            async with db.execute("SELECT COUNT(*) FROM leads") as cursor:
                leads = await cursor.fetchone()
        except aiosqlite.OperationalError:
            return 0, 0, 0  # the schema is not there yet
    assert row is not None and leads is not None
    return int(row[0]), int(row[1]), int(leads[0])


async def test_sigkill_mid_fetch_then_restart_loses_and_duplicates_nothing(
    imap_account: ImapAccount,
    mailbox: str,
    imap: ImapClient,
    smtp_server: SmtpServer,
    tmp_path: Path,
) -> None:
    sent_ids = []
    for i in range(COUNT):
        raw, mid = make_mail(
            sender=f"customer{i}@example.com", subject=f"Order {i}", text=f"Where is order {i}?"
        )
        sent_ids.append(mid)
        await imap.append(raw, mailbox)
    email = email_config(imap_account, mailbox, smtp_server.port, tmp_path, ack=False, lease_ttl="3s")
    email["imap"]["fetch_batch"] = 20
    config = deep_merge(base_config(tmp_path), {"email": email})
    db_path = tmp_path / "hub.db"

    first = HubProcess(tmp_path, config, name="first")
    first.start()
    try:
        deadline = time.monotonic() + 60
        while True:
            stored, _, _ = await _counts(db_path)
            if stored >= 20:
                break
            assert time.monotonic() < deadline, f"no mail taken within 60s:\n{first.log()}"
            await asyncio.sleep(0.02)
        first.kill(signal.SIGKILL)
    finally:
        first.kill()
    stored_at_kill, _, _ = await _counts(db_path)
    assert stored_at_kill < COUNT, "the hub finished before it was killed; the test proves nothing"

    # The killed process still holds the mailbox lease until it lapses (lease_ttl 3s).
    second = HubProcess(tmp_path, config, name="second")
    second.start()
    try:
        deadline = time.monotonic() + 90
        while True:
            stored, distinct, lead_count = await _counts(db_path)
            if stored >= COUNT:
                break
            assert time.monotonic() < deadline, f"only {stored}/{COUNT} after restart:\n{second.log()}"
            await asyncio.sleep(0.1)
        await asyncio.sleep(1.0)  # a duplicate would show up now
        stored, distinct, lead_count = await _counts(db_path)
    finally:
        assert second.stop() == 0, second.log()
    assert (stored, distinct, lead_count) == (COUNT, COUNT, COUNT)
    async with aiosqlite.connect(db_path) as db:
        async with db.execute(
            "SELECT refs FROM messages WHERE channel = 'email' AND direction = 'in'"
        ) as cursor:
            refs = [row[0] async for row in cursor]
        async with db.execute(
            "SELECT COUNT(*) FROM inbox WHERE channel = 'email' AND status != 'done'"
        ) as cursor:
            not_done = await cursor.fetchone()
    import json

    seen = sorted(ref for raw in refs for ref in json.loads(raw))
    assert seen == sorted(sent_ids)
    assert not_done is not None and not_done[0] == 0
