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
