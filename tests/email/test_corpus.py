"""The corpus of real-world-shaped mail through the real mailbox: lead or quarantine, never a crash."""

from __future__ import annotations

from pathlib import Path

import pytest

from hub.app import Hub
from tests.email.helpers import make_mail, wait_for
from tests.support.dovecot import ImapClient

pytestmark = pytest.mark.server

CORPUS = Path(__file__).resolve().parents[1] / "data" / "email"


async def test_every_corpus_message_becomes_a_lead_or_is_quarantined(
    email_hub: Hub, imap: ImapClient, mailbox: str
) -> None:
    files = sorted(CORPUS.glob("*.eml"))
    for path in files:
        await imap.append(path.read_bytes(), mailbox)
    # A normal message after the corpus proves the channel is still running.
    raw, sentinel_id = make_mail(sender="after@example.com", subject="Still alive?", text="After the corpus")
    await imap.append(raw, mailbox)

    expected_quarantines = sum(1 for p in files if p.name.startswith("quarantine-"))

    async def everything_handled() -> list | None:  # type: ignore[type-arg]
        done = await email_hub.store.inbox_list("done", 1000)
        quarantined = await email_hub.store.inbox_list("quarantined", 1000)
        pending = await email_hub.store.inbox_list("pending", 1000)
        handled = [*done, *quarantined]
        # A quarantine's event is written just after its inbox status: wait for both.
        events = await email_hub.store.list_events(types=["input.quarantined"])
        complete = len(handled) == len(files) + 1 and not pending and len(events) >= expected_quarantines
        return handled if complete else None

    handled = await wait_for(everything_handled, timeout=30, what="the whole corpus")
    by_uid = {item.meta["uid"]: item for item in handled}
    for uid, path in enumerate(files, start=1):
        item = by_uid[uid]
        # Stored raw exactly as the server gave it (Dovecot turns bare LF into CRLF).
        assert item.payload.replace(b"\r\n", b"\n") == path.read_bytes().replace(b"\r\n", b"\n")
        if path.name.startswith("lead-"):
            assert item.status == "done" and item.lead_number is not None, (path.name, item.reason)
        else:
            assert item.status == "quarantined", path.name
            assert item.reason.strip(), path.name
    sentinel = by_uid[len(files) + 1]
    assert sentinel.status == "done"
    lead = await email_hub.store.get_lead(sentinel.lead_number or 0)
    assert lead is not None and lead.subject == "Still alive?"
    quarantined_events = await email_hub.store.list_events(types=["input.quarantined"])
    assert len(quarantined_events) == expected_quarantines
    assert sentinel_id
