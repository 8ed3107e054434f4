"""Email in over a real Dovecot, replies out over a real SMTP server (aiosmtpd), end to end."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import aiohttp
import pytest

from hub.app import Hub
from tests.email.helpers import (
    header_ids,
    inbound_messages,
    leads,
    make_mail,
    wait_for,
    wait_leads,
    wait_messages,
)
from tests.support.dovecot import ImapClient
from tests.support.settings import API_TOKEN
from tests.support.smtp import SmtpServer

pytestmark = pytest.mark.server

AUTH = {"Authorization": f"Bearer {API_TOKEN}"}


async def test_plain_message_becomes_lead_and_is_acknowledged(
    email_hub: Hub, imap: ImapClient, mailbox: str, smtp_server: SmtpServer
) -> None:
    raw, mid = make_mail(subject="Де моє замовлення?", text="Добрий день! Де моє замовлення 1234?")
    await imap.append(raw, mailbox)
    (lead,) = await wait_leads(email_hub, 1)
    assert lead.channel == "email"
    assert lead.subject == "Де моє замовлення?"
    assert lead.kind.value == "message"
    (message,) = await wait_messages(email_hub, lead.number, 1)
    assert message.text == "Добрий день! Де моє замовлення 1234?"
    assert message.refs == [mid]
    contact = await email_hub.store.get_contact(lead.contact_id)
    assert contact is not None and contact.identities[0].value == "olena@example.com"

    # The acknowledgement goes out through the outbox, in Ukrainian, marked automatic.
    ack = (await wait_for(lambda: _parsed(smtp_server), what="the acknowledgement"))[0]
    assert ack["Auto-Submitted"] == "auto-replied"
    assert ack["To"].addresses[0].addr_spec == "olena@example.com"
    assert f"[#{lead.ref}]" in ack["Subject"]
    assert header_ids(ack["In-Reply-To"]) == [mid]
    body = ack.get_body(("plain",))
    assert body is not None and lead.ref in body.get_content() and "Дякуємо" in body.get_content()
    # An acknowledgement is not a response: the SLA clock keeps running.
    fresh = await email_hub.store.get_lead(lead.number)
    assert fresh is not None and fresh.first_response_at is None and fresh.status.value == "new"
    # Processed mail is flagged \Seen only after the store has it.
    seen = await wait_for(lambda: _seen(imap, mailbox), what="\\Seen flag")
    assert seen == [1]


async def _parsed(smtp_server: SmtpServer) -> list:  # type: ignore[type-arg]
    return smtp_server.parsed()


async def _seen(imap: ImapClient, mailbox: str) -> list[int]:
    return await imap.uids_with_flag(mailbox, "\\Seen")


async def test_reply_threads_and_staff_reply_carries_thread_headers(
    email_hub: Hub, imap: ImapClient, mailbox: str, smtp_server: SmtpServer
) -> None:
    raw, first_id = make_mail(subject="Broken heater", text="My heater is broken.")
    await imap.append(raw, mailbox)
    (lead,) = await wait_leads(email_hub, 1)
    await wait_for(lambda: _parsed(smtp_server), what="the acknowledgement")

    # The customer adds something, replying to their own first mail with a new subject.
    raw, second_id = make_mail(
        subject="Photos of the heater",
        text="Here is more detail.\n\nOn Mon, Support wrote:\n> earlier text",
        in_reply_to=f"<{first_id}>",
        references=f"<{first_id}>",
    )
    await imap.append(raw, mailbox)
    messages = await wait_messages(email_hub, lead.number, 2)
    assert messages[1].text == "Here is more detail."
    assert len(await leads(email_hub)) == 1

    # Staff answer through the API; the customer receives a proper reply in the thread.
    base = f"http://127.0.0.1:{email_hub.web_port}"
    async with aiohttp.ClientSession() as http:
        resp = await http.post(
            f"{base}/api/v1/leads/{lead.ref}/replies",
            json={"text": "We will send a technician tomorrow.", "author": "olena"},
            headers=AUTH,
        )
        assert resp.status == 201, await resp.text()

    async def staff_reply() -> list:  # type: ignore[type-arg]
        return [m for m in smtp_server.parsed() if m["Auto-Submitted"] is None]

    (reply,) = await wait_for(staff_reply, what="the staff reply")
    assert reply["Subject"] == f"Re: Broken heater [#{lead.ref}]"
    assert reply["From"].addresses[0].addr_spec == "support@example.com"
    assert reply["To"].addresses[0].addr_spec == "olena@example.com"
    (reply_id,) = header_ids(reply["Message-ID"])
    assert reply_id.endswith("@example.com")
    assert header_ids(reply["In-Reply-To"]) == [second_id]
    assert header_ids(reply["References"]) == [first_id, second_id]
    assert reply.get_body(("plain",)).get_content().strip() == "We will send a technician tomorrow."
    assert "technician" in reply.get_body(("html",)).get_content()
    fresh = await email_hub.store.get_lead(lead.number)
    assert fresh is not None and fresh.first_response_at is not None

    # The customer's client (Outlook-like) keeps only References; it still threads, even
    # with another subject and no token.
    raw, _ = make_mail(subject="thanks", text="Thank you!", references=f"<{reply_id}>")
    await imap.append(raw, mailbox)
    messages = await wait_messages(email_hub, lead.number, 3)
    assert messages[2].text == "Thank you!"

    # A colleague in Cc answers in the thread: it joins the lead too.
    raw, _ = make_mail(
        sender="Petro <petro@example.org>",
        subject=f"Re: Broken heater [#{lead.ref}]",
        text="I am her colleague, the heater is in room 5.",
        in_reply_to=f"<{reply_id}>",
    )
    await imap.append(raw, mailbox)
    messages = await wait_messages(email_hub, lead.number, 4)
    assert len(await leads(email_hub)) == 1


async def test_lead_token_only_counts_for_the_leads_own_contact(
    email_hub: Hub, imap: ImapClient, mailbox: str
) -> None:
    raw, _ = make_mail(subject="First question", text="Question one")
    await imap.append(raw, mailbox)
    (lead,) = await wait_leads(email_hub, 1)
    # Somebody else quoting the ticket number gets a lead of their own.
    raw, _ = make_mail(
        sender="mallory@example.net", subject=f"About [#{lead.ref}]", text="Let me into this ticket"
    )
    await imap.append(raw, mailbox)
    found = await wait_leads(email_hub, 2)
    assert found[1].number != lead.number
    assert len(await wait_messages(email_hub, found[1].number, 1)) == 1
    assert len(await inbound_messages(email_hub, lead.number)) == 1


@pytest.mark.parametrize("security", ["ssl", "starttls"])
async def test_imap_over_tls_and_starttls(
    security: str,
    settings_factory,  # type: ignore[no-untyped-def]
    dovecot,  # type: ignore[no-untyped-def]
    mailbox: str,
    imap: ImapClient,
    smtp_server: SmtpServer,
    tmp_path,  # type: ignore[no-untyped-def]
) -> None:
    from tests.email.conftest import email_config

    account = dovecot.tls_account if security == "ssl" else dovecot.account
    config = email_config(account, mailbox, smtp_server.port, tmp_path, ack=False)
    config["imap"].update({"security": security, "verify_tls": False, "move_to": f"{mailbox}.done"})
    hub = Hub(settings_factory(email=config))
    await hub.start()
    try:
        raw, _ = make_mail(subject=f"Over {security}", text="Encrypted hello")
        await imap.append(raw, mailbox)
        (lead,) = await wait_leads(hub, 1)
        assert lead.subject == f"Over {security}"
        # move_to: processed mail leaves the mailbox for the configured folder.
        await wait_for(lambda: _moved(imap, mailbox), what="the move")
    finally:
        await hub.stop()


async def _moved(imap: ImapClient, mailbox: str) -> bool:
    return await imap.count(mailbox) == 0 and await imap.count(f"{mailbox}.done") == 1


@pytest.mark.parametrize("security", ["ssl", "starttls"])
@pytest.mark.filterwarnings("ignore:Requiring AUTH while not requiring TLS:UserWarning")
async def test_smtp_over_tls_with_auth(
    security: str,
    settings_factory,  # type: ignore[no-untyped-def]
    imap_account,  # type: ignore[no-untyped-def]
    mailbox: str,
    imap: ImapClient,
    tmp_path,  # type: ignore[no-untyped-def]
) -> None:
    from tests.email.conftest import email_config
    from tests.support.tls import self_signed_certificate

    certificate = self_signed_certificate(tmp_path, "smtp")
    assert certificate is not None, "openssl is needed for the TLS tests (a dependency of dovecot-core)"
    server = SmtpServer(certificate=certificate, mode=security, credentials=("support", "smtp-secret"))
    server.start()
    try:
        config = email_config(imap_account, mailbox, server.port, tmp_path)
        config["smtp"].update(
            {"security": security, "verify_tls": False, "username": "support", "password": "smtp-secret"}
        )
        hub = Hub(settings_factory(email=config))
        await hub.start()
        try:
            raw, _ = make_mail(subject="TLS out", text="Please confirm")
            await imap.append(raw, mailbox)
            await wait_leads(hub, 1)
            (ack,) = await wait_for(lambda: _parsed(server), what="the acknowledgement over TLS")
            assert ack["Auto-Submitted"] == "auto-replied"
            assert server.logins == ["support"]
        finally:
            await hub.stop()
    finally:
        server.stop()


async def test_poller_reconnects_after_the_server_drops_it(
    email_hub: Hub,
    imap: ImapClient,
    mailbox: str,
    dovecot,  # type: ignore[no-untyped-def]
) -> None:
    channel = next(c for c in email_hub.channels if c.name == "email")
    poller = channel.poller  # type: ignore[attr-defined]
    await wait_for(lambda: _is_set(poller.connected), what="the first connection")
    raw, _ = make_mail(sender="before@example.com", subject="Before", text="one")
    await imap.append(raw, mailbox)
    await wait_leads(email_hub, 1)
    dovecot.kick()  # also drops the test's own client
    async with ImapClient(dovecot.account) as fresh:
        raw, _ = make_mail(sender="after@example.com", subject="After", text="two")
        await fresh.append(raw, mailbox)
    found = await wait_leads(email_hub, 2, timeout=30)
    assert [lead.subject for lead in found] == ["Before", "After"]


async def _is_set(event) -> bool:  # type: ignore[no-untyped-def]
    return bool(event.is_set())


async def test_first_start_leaves_months_old_unread_mail_alone(
    settings_factory,  # type: ignore[no-untyped-def]
    imap_account,  # type: ignore[no-untyped-def]
    mailbox: str,
    imap: ImapClient,
    smtp_server: SmtpServer,
    tmp_path,  # type: ignore[no-untyped-def]
) -> None:
    from tests.email.conftest import email_config

    # A shared mailbox nobody marked read: each of these became a lead with a fresh 4 h clock
    # and an acknowledgement to a customer who wrote months ago.
    arrived = datetime.now(UTC) - timedelta(days=200)
    for number in range(5):
        raw, _ = make_mail(sender=f"old{number}@example.com", subject=f"Old {number}", text="old")
        response = await imap.imap.append(raw, mailbox=mailbox, date=arrived + timedelta(hours=number))
        assert response.result == "OK"
    raw, _ = make_mail(sender="recent@example.com", subject="Recent", text="still waiting")
    response = await imap.imap.append(raw, mailbox=mailbox, date=datetime.now(UTC) - timedelta(days=2))
    assert response.result == "OK"
    hub = Hub(settings_factory(email=email_config(imap_account, mailbox, smtp_server.port, tmp_path)))
    await hub.start()
    try:
        (lead,) = await wait_leads(hub, 1)
        assert lead.subject == "Recent"
        raw, _ = make_mail(sender="new@example.com", subject="New", text="hello")
        await imap.append(raw, mailbox)
        found = await wait_leads(hub, 2)
        assert [one.subject for one in found] == ["Recent", "New"]
        # The old mail stays unread, for people to see.
        await wait_for(lambda: _seen_exactly(imap, mailbox, [6, 7]), what="\\Seen on the new mail only")
        acks = await wait_for(lambda: _acks_to(smtp_server, 2), what="two acknowledgements")
        assert sorted(acks) == ["new@example.com", "recent@example.com"]
    finally:
        await hub.stop()


async def _seen_exactly(imap: ImapClient, mailbox: str, uids: list[int]) -> bool:
    return await _seen(imap, mailbox) == uids


async def _acks_to(smtp_server: SmtpServer, count: int) -> list[str] | None:
    found = [rcpt for rcpts in smtp_server.recipients for rcpt in rcpts]
    return found if len(found) >= count else None


async def test_a_site_form_relay_is_answered_at_each_customers_reply_to(
    email_hub: Hub, imap: ImapClient, mailbox: str, smtp_server: SmtpServer
) -> None:
    # A website's form mails From: itself with Reply-To: the visitor. Every visitor became the
    # relay's contact: their requests piled into one lead, acknowledged at wordpress@.
    visitors = [("Іван", "ivan@example.net", "Хочу замовити котел"), ("Марія", "maria@example.org", "Скарга")]
    for name, address, text in visitors:
        raw, _ = make_mail(
            sender="WordPress <wordpress@shop.example>",
            subject="Нове повідомлення з сайту",
            text=f"{name}: {text}",
            headers={"Reply-To": f"{name} <{address}>"},
        )
        await imap.append(raw, mailbox)
    found = await wait_leads(email_hub, 2)
    for lead, (name, address, _) in zip(found, visitors, strict=True):
        contact = await email_hub.store.get_contact(lead.contact_id)
        assert contact is not None and [i.value for i in contact.identities] == [address]
        (message,) = await inbound_messages(email_hub, lead.number)
        assert message.author == name
    acks = await wait_for(lambda: _acks_to(smtp_server, 2), what="two acknowledgements")
    assert sorted(acks) == ["ivan@example.net", "maria@example.org"]
