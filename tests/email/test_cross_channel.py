"""Email and Telegram together: an email lead is worked from its staff-group topic."""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from pathlib import Path

import pytest

from hub import i18n
from hub.app import Hub
from hub.config import Settings
from tests.email.conftest import email_config
from tests.email.helpers import header_ids, make_mail, wait_for, wait_leads
from tests.integration.test_telegram import ALERTS, OLENA, STAFF, telegram_config
from tests.support.dovecot import ImapAccount, ImapClient
from tests.support.smtp import SmtpServer
from tests.support.telegram_emulator import TelegramEmulator, running_emulator

pytestmark = pytest.mark.server


@pytest.fixture
async def emu() -> AsyncIterator[TelegramEmulator]:
    async with running_emulator(STAFF, ALERTS) as emulator:
        yield emulator


@pytest.fixture
async def both_hub(
    settings_factory: Callable[..., Settings],
    imap_account: ImapAccount,
    mailbox: str,
    smtp_server: SmtpServer,
    emu: TelegramEmulator,
    tmp_path: Path,
) -> AsyncIterator[Hub]:
    settings = settings_factory(
        email=email_config(imap_account, mailbox, smtp_server.port, tmp_path, ack=False),
        telegram=telegram_config(emu),
    )
    hub = Hub(settings)
    await hub.start()
    try:
        yield hub
    finally:
        await hub.stop()


async def test_email_lead_topic_reply_goes_out_by_smtp(
    both_hub: Hub, emu: TelegramEmulator, imap: ImapClient, mailbox: str, smtp_server: SmtpServer
) -> None:
    raw, mid = make_mail(subject="Рахунок за жовтень", text="Надішліть, будь ласка, рахунок.")
    await imap.append(raw, mailbox)
    (lead,) = await wait_leads(both_hub, 1)
    topic = await emu.wait_for(
        lambda: next(iter(emu.topics_in(STAFF)), None), what="topic for the email lead"
    )
    assert topic.name.startswith(f"{lead.ref} · ") and topic.name.endswith(
        i18n.text("dash.channel.email", "uk")
    )
    await emu.wait_for(
        lambda: any("Надішліть, будь ласка, рахунок." in t for t in emu.texts_to(STAFF, topic.thread)),
        what="card",
    )

    emu.send_text(STAFF, OLENA, "// перевірити оплату", thread=topic.thread)
    emu.send_text(STAFF, OLENA, "Рахунок у вкладенні до листа, який надійде окремо.", thread=topic.thread)

    async def delivered() -> list[object] | None:
        return smtp_server.parsed() or None

    (sent,) = await wait_for(delivered, what="the staff reply by SMTP")
    assert sent["To"].addresses[0].addr_spec == "olena@example.com"
    assert f"[#{lead.ref}]" in sent["Subject"] and sent["Subject"].startswith("Re: ")
    assert header_ids(sent["In-Reply-To"]) == [mid]
    body = sent.get_body(("plain",))
    assert body is not None and "Рахунок у вкладенні" in body.get_content()
    assert "перевірити оплату" not in body.get_content()

    # The customer answers the staff reply by email: it lands in the same lead and topic.
    answer, _ = make_mail(
        subject=f"Re: Рахунок за жовтень [#{lead.ref}]",
        text="Дякую, отримала!",
        in_reply_to=sent["Message-ID"],
    )
    await imap.append(answer, mailbox)
    await emu.wait_for(
        lambda: any("Дякую, отримала!" in t for t in emu.texts_to(STAFF, topic.thread)),
        what="customer answer in topic",
    )
    assert len(emu.topics_in(STAFF)) == 1
    assert [m.lead_number for m in await both_hub.store.list_messages(lead.number)].count(lead.number) >= 3


async def test_a_file_the_email_cannot_carry_gets_staff_a_notice_naming_it(
    both_hub: Hub, emu: TelegramEmulator, imap: ImapClient, mailbox: str, smtp_server: SmtpServer
) -> None:
    """A document posted with a caption in an email lead's topic went out as its caption alone,
    with no attachment and no word to staff: the file was silently lost."""
    raw, _ = make_mail(subject="Договір", text="Надішліть договір, будь ласка.")
    await imap.append(raw, mailbox)
    (lead,) = await wait_leads(both_hub, 1)
    topic = await emu.wait_for(lambda: next(iter(emu.topics_in(STAFF)), None), what="topic")
    await emu.wait_for(lambda: emu.texts_to(STAFF, topic.thread), what="card")
    # The emulator has no bytes for this file: it can never be attached.
    document = {
        "file_id": "doc-unknown",
        "file_unique_id": "u-doc-unknown",
        "file_name": "договір.pdf",
        "mime_type": "application/pdf",
        "file_size": 1234,
    }
    emu.enqueue(
        "message",
        emu.message(
            STAFF, OLENA, None, thread=topic.thread, document=document, caption="Договір у вкладенні"
        ),
    )

    async def delivered() -> list[object] | None:
        return smtp_server.parsed() or None

    (sent,) = await wait_for(delivered, what="the staff reply by SMTP")
    body = sent.get_body(("plain",))
    assert body is not None and "Договір у вкладенні" in body.get_content()
    notice = i18n.text(
        "tg.event.file_left_out", "uk", channel=i18n.text("dash.channel.email", "uk"), file="", reason=""
    )
    head = notice.split("«")[0]
    posts = await emu.wait_for(
        lambda: [t for t in emu.texts_to(STAFF, topic.thread) if head in t and "«договір.pdf»" in t],
        what="the notice naming the file",
    )
    assert posts[0].startswith("📎 ")
    events = await both_hub.store.list_events(lead.number)
    (left_out,) = [e for e in events if e.type == "delivery.files_left_out"]
    assert [f["name"] for f in left_out.data["files"]] == ["договір.pdf"]
    assert [e.type for e in events].count("delivery.sent") == 1


async def _email_lead_topic(hub: Hub, emu: TelegramEmulator, imap: ImapClient, mailbox: str) -> int:
    raw, _ = make_mail(subject="Рахунок", text="Надішліть рахунок, будь ласка.")
    await imap.append(raw, mailbox)
    await wait_leads(hub, 1)
    topic = await emu.wait_for(lambda: next(iter(emu.topics_in(STAFF)), None), what="topic")
    await emu.wait_for(lambda: emu.texts_to(STAFF, topic.thread), what="card")
    return int(topic.thread)


async def test_a_staff_document_reaches_the_email_customer_as_an_attachment(
    both_hub: Hub, emu: TelegramEmulator, imap: ImapClient, mailbox: str, smtp_server: SmtpServer
) -> None:
    """The file of a staff reply went nowhere by email: it is fetched through the Bot API
    (getFile, then the file URL under telegram.api_base) and attached with its name and type."""
    thread = await _email_lead_topic(both_hub, emu, imap, mailbox)
    data = bytes(range(256)) * 41  # binary, 10,496 bytes
    emu.add_file("doc-invoice", data)
    document = {
        "file_id": "doc-invoice",
        "file_unique_id": "u-doc-invoice",
        "file_name": "рахунок за жовтень.pdf",
        "mime_type": "application/pdf",
        "file_size": len(data),
    }
    emu.enqueue(
        "message",
        emu.message(STAFF, OLENA, None, thread=thread, document=document, caption="Рахунок у вкладенні"),
    )

    async def delivered() -> list[object] | None:
        return smtp_server.parsed() or None

    (sent,) = await wait_for(delivered, what="the staff reply by SMTP")
    body = sent.get_body(("plain",))
    assert body is not None and "Рахунок у вкладенні" in body.get_content()
    (attached,) = list(sent.iter_attachments())
    assert attached.get_filename() == "рахунок за жовтень.pdf"
    assert attached.get_content_type() == "application/pdf"
    assert attached.get_content() == data
    assert len(emu.downloads) == 1
    (lead,) = await wait_leads(both_hub, 1)

    async def sent_marked() -> list[str] | None:
        # The row is marked sent after the SMTP server's 250, a moment after the sink has the mail.
        types = [e.type for e in await both_hub.store.list_events(lead.number)]
        return types if "delivery.sent" in types else None

    types = await wait_for(sent_marked, what="delivery.sent")
    assert types.count("delivery.sent") == 1 and "delivery.files_left_out" not in types
    assert not [t for t in emu.texts_to(STAFF, thread) if "рахунок за жовтень.pdf" in t]


async def test_a_staff_photo_too_large_to_fetch_goes_without_it_and_staff_are_told_why(
    both_hub: Hub, emu: TelegramEmulator, imap: ImapClient, mailbox: str, smtp_server: SmtpServer
) -> None:
    """A file over what a bot may download (20 MB) or mail may carry is not fetched at all:
    the caption goes out once and the topic says the file was too large."""
    thread = await _email_lead_topic(both_hub, emu, imap, mailbox)
    photo = [
        {
            "file_id": "big-photo",
            "file_unique_id": "u-big",
            "width": 9000,
            "height": 9000,
            "file_size": 25_000_000,
        }
    ]
    emu.enqueue("message", emu.message(STAFF, OLENA, None, thread=thread, photo=photo, caption="Фото схеми"))

    async def delivered() -> list[object] | None:
        return smtp_server.parsed() or None

    (sent,) = await wait_for(delivered, what="the staff reply by SMTP")
    assert not list(sent.iter_attachments())
    reason = i18n.text("delivery.left_out.too_large", "uk")
    posts = await emu.wait_for(
        lambda: [t for t in emu.texts_to(STAFF, thread) if "«photo.jpg»" in t and reason[:30] in t],
        what="the notice that the photo was too large",
    )
    assert posts
    assert not emu.calls_of("getFile") and not emu.downloads
    assert len(smtp_server.parsed()) == 1


async def test_a_failed_file_download_sends_the_reply_once_without_it_and_says_so(
    both_hub: Hub, emu: TelegramEmulator, imap: ImapClient, mailbox: str, smtp_server: SmtpServer
) -> None:
    """getFile answers but the download fails: the reply goes out once, without the file, and
    the topic names the file (never a silent drop, never the reply twice)."""
    thread = await _email_lead_topic(both_hub, emu, imap, mailbox)
    emu.add_file("doc-lost", b"%PDF-1.4 lost")
    emu.download_status = 500
    document = {"file_id": "doc-lost", "file_unique_id": "u-lost", "file_name": "акт.pdf", "file_size": 13}
    emu.enqueue("message", emu.message(STAFF, OLENA, None, thread=thread, document=document, caption="Акт"))
    reason = i18n.text("delivery.left_out.unavailable", "uk")
    await emu.wait_for(
        lambda: [t for t in emu.texts_to(STAFF, thread) if "«акт.pdf»" in t and reason[:30] in t],
        what="the notice that the file could not be fetched",
    )
    assert emu.downloads
    (sent,) = smtp_server.parsed()
    assert not list(sent.iter_attachments())
    body = sent.get_body(("plain",))
    assert body is not None and "Акт" in body.get_content()
