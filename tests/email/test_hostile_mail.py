"""Hostile mail through the real mailbox: each becomes a bounded lead or is quarantined, never a crash.

A zip bomb (a small zip that inflates to 200 MB) is stored as the bytes it is, never unpacked;
an attachment over `max_attachment_bytes` is noted, not stored; 10,000 recipients and a 1 MB
subject are cut to size. After each, a normal message still becomes a lead.
"""

from __future__ import annotations

import io
import resource
import zipfile

import pytest

from hub.app import Hub
from tests.email.helpers import leads, make_mail, wait_for
from tests.support.dovecot import ImapClient

pytestmark = pytest.mark.server


def _zip_bomb(inflated: int = 200 * 1024 * 1024) -> bytes:
    buffer = io.BytesIO()
    block = b"\0" * (1024 * 1024)
    with (
        zipfile.ZipFile(buffer, "w", compression=zipfile.ZIP_DEFLATED, compresslevel=9) as archive,
        archive.open("zeros.bin", "w", force_zip64=True) as member,
    ):
        for _ in range(inflated // len(block)):
            member.write(block)
    return buffer.getvalue()


async def _handled(hub: Hub, count: int) -> None:
    async def done() -> bool:
        finished = await hub.store.inbox_list("done", 1000)
        quarantined = await hub.store.inbox_list("quarantined", 1000)
        return len(finished) + len(quarantined) >= count

    await wait_for(done, timeout=60, what=f"{count} message(s) handled")


def _peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


async def test_hostile_mail_is_bounded_and_the_channel_keeps_running(
    email_hub: Hub, imap: ImapClient, mailbox: str
) -> None:
    bomb = _zip_bomb()
    assert len(bomb) < 1024 * 1024  # small on the wire, 200 MB if anyone unpacked it
    oversize = b"\x89PNG" + bytes(range(256)) * (11 * 1024 * 4)  # ~11 MB, over the 10 MB limit
    recipients = ", ".join(f"r{i}@example.com" for i in range(10_000))
    mails = [
        make_mail(
            sender="bomb@example.com",
            subject="Invoice",
            text="see attachment",
            attachments=[("invoice.zip", "application/zip", bomb)],
        )[0],
        make_mail(
            sender="big@example.com",
            subject="Photo",
            text="a big photo",
            attachments=[("photo.png", "image/png", oversize)],
        )[0],
        make_mail(sender="many@example.com", to=recipients, subject="To everyone", text="spam")[0],
        make_mail(sender="long@example.com", subject="Ж" * 500_000, text="a 1 MB subject")[0],
    ]
    rss_before = _peak_rss_mb()
    for raw in mails:
        await imap.append(raw, mailbox)
    raw, _ = make_mail(sender="after@example.com", subject="Still alive?", text="normal mail")
    await imap.append(raw, mailbox)
    await _handled(email_hub, len(mails) + 1)

    by_sender: dict[str, int] = {}
    for lead in await leads(email_hub):
        contact = await email_hub.store.get_contact(lead.contact_id)
        assert contact is not None
        by_sender[contact.identities[0].value] = lead.number
        assert len(lead.subject) <= 1000, len(lead.subject)  # a 1 MB subject is cut to size
    assert "after@example.com" in by_sender  # the channel kept going
    quarantined = await email_hub.store.inbox_list("quarantined", 100)
    assert len(by_sender) + len(quarantined) == len(mails) + 1
    assert sorted(by_sender) == sorted(
        ["after@example.com", "big@example.com", "bomb@example.com", "long@example.com", "many@example.com"]
    )

    message = (await email_hub.store.list_messages(by_sender["bomb@example.com"]))[0]
    (attachment,) = [a for a in message.attachments if a.name == "invoice.zip"]
    assert attachment.size == len(bomb)  # stored as sent, never inflated
    message = (await email_hub.store.list_messages(by_sender["big@example.com"]))[0]
    assert all(a.size <= 10 * 1024 * 1024 or not a.ref for a in message.attachments)
    # Nothing was inflated: the test process (which runs the hub) grew far less than 200 MB.
    assert _peak_rss_mb() - rss_before < 150, (rss_before, _peak_rss_mb())
