"""No ack loops, bounces on their lead, UIDVALIDITY re-sync, SMTP outages: against real servers."""

from __future__ import annotations

import asyncio
import hashlib
from collections.abc import Callable
from dataclasses import replace
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest

from channels.email.imap import Fetched, MailboxPosition
from channels.email.ingest import external_id
from hub.app import Hub
from hub.config import Settings
from hub.domain import Identity, IdentityKind, InboxItem, Message
from tests.email.conftest import email_config
from tests.email.helpers import (
    header_ids,
    inbound_messages,
    leads,
    make_mail,
    wait_for,
    wait_leads,
    wait_messages,
)
from tests.support.dovecot import ImapAccount, ImapClient
from tests.support.smtp import SmtpServer

pytestmark = pytest.mark.server


async def _acks(smtp_server: SmtpServer) -> list:  # type: ignore[type-arg]
    return [m for m in smtp_server.parsed() if m["Auto-Submitted"] == "auto-replied"]


async def test_autoresponder_reply_creates_no_ack_loop(
    email_hub: Hub, imap: ImapClient, mailbox: str, smtp_server: SmtpServer
) -> None:
    raw, _ = make_mail(subject="Need help", text="Please call me back.")
    await imap.append(raw, mailbox)
    (lead,) = await wait_leads(email_hub, 1)
    (ack,) = await wait_for(lambda: _acks(smtp_server), what="the acknowledgement")
    (ack_id,) = header_ids(ack["Message-ID"])

    # The customer's out-of-office answers our acknowledgement...
    raw, _ = make_mail(
        subject=f"Automatic reply: {ack['Subject']}",
        text="I am out of office until Monday.",
        in_reply_to=f"<{ack_id}>",
        headers={"Auto-Submitted": "auto-replied"},
    )
    await imap.append(raw, mailbox)
    await wait_messages(email_hub, lead.number, 2)
    # ...and a vacation robot of another address writes without any thread headers.
    raw, _ = make_mail(
        sender="robot@example.org",
        subject="Vacation",
        text="This mailbox is not monitored.",
        headers={"Precedence": "bulk"},
    )
    await imap.append(raw, mailbox)
    raw, _ = make_mail(
        sender="list@example.org", subject="News", text="Digest", headers={"List-Id": "<news.example.org>"}
    )
    await imap.append(raw, mailbox)
    await wait_leads(email_hub, 3)
    await asyncio.sleep(1.5)  # give a wrong acknowledgement the time to go out
    assert len(await _acks(smtp_server)) == 1
    assert len(smtp_server.raw) == 1


async def test_acks_are_rate_limited_per_address(
    settings_factory: Callable[..., Settings],
    imap_account: ImapAccount,
    mailbox: str,
    smtp_server: SmtpServer,
    imap: ImapClient,
    tmp_path: Path,
) -> None:
    settings = settings_factory(
        email=email_config(imap_account, mailbox, smtp_server.port, tmp_path, ack_rate_limit="1/d")
    )
    hub = Hub(settings)
    await hub.start()
    try:
        raw, _ = make_mail(subject="One", text="First")
        await imap.append(raw, mailbox)
        (first,) = await wait_leads(hub, 1)
        await wait_for(lambda: _acks(smtp_server), what="the first acknowledgement")
        await hub.actions.resolve(first.number, by="test")
        raw, _ = make_mail(subject="Two", text="Second, a new request")
        await imap.append(raw, mailbox)
        await wait_leads(hub, 2)
        await asyncio.sleep(1.5)
        assert len(await _acks(smtp_server)) == 1
    finally:
        await hub.stop()


def _dsn(original_id: str, recipient: str, delayed: bool = False) -> bytes:
    """An RFC 3464 delivery status notification as Postfix sends it (a delay warning with `delayed`)."""
    boundary = "dsn-boundary-42"
    action = "Action: delayed\r\nStatus: 4.2.2\r\n" if delayed else "Action: failed\r\nStatus: 5.1.1\r\n"
    return (
        "From: MAILER-DAEMON@mx.example.com (Mail Delivery System)\r\n"
        "To: support@example.com\r\n"
        "Subject: Undelivered Mail Returned to Sender\r\n"
        "Auto-Submitted: auto-replied\r\n"
        "Message-ID: <dsn-1@mx.example.com>\r\n"
        "MIME-Version: 1.0\r\n"
        f'Content-Type: multipart/report; report-type=delivery-status; boundary="{boundary}"\r\n\r\n'
        f"--{boundary}\r\nContent-Type: text/plain\r\n\r\n"
        "I'm sorry to have to inform you that your message could not be delivered.\r\n\r\n"
        f"--{boundary}\r\nContent-Type: message/delivery-status\r\n\r\n"
        "Reporting-MTA: dns; mx.example.com\r\n\r\n"
        f"Final-Recipient: rfc822; {recipient}\r\n{action}"
        f"Diagnostic-Code: smtp; 550 5.1.1 <{recipient}>: Recipient address rejected\r\n\r\n"
        f"--{boundary}\r\nContent-Type: text/rfc822-headers\r\n\r\n"
        f"From: Support <support@example.com>\r\nTo: {recipient}\r\nSubject: Re: Help\r\n"
        f"Message-ID: <{original_id}>\r\n\r\n"
        f"--{boundary}--\r\n"
    ).encode()


async def test_bounce_attaches_to_its_lead_as_delivery_failure(
    email_hub: Hub, imap: ImapClient, mailbox: str, smtp_server: SmtpServer
) -> None:
    raw, _ = make_mail(subject="Help", text="Help me")
    await imap.append(raw, mailbox)
    (lead,) = await wait_leads(email_hub, 1)
    reply = await email_hub.replies.record_reply(lead.number, "Here is the answer.", "olena")

    async def staff() -> list:  # type: ignore[type-arg]
        return [m for m in smtp_server.parsed() if m["Auto-Submitted"] is None]

    (sent,) = await wait_for(staff, what="the staff reply")
    (sent_id,) = header_ids(sent["Message-ID"])
    await imap.append(_dsn(sent_id, "olena@example.com"), mailbox)

    async def bounced() -> list:  # type: ignore[type-arg]
        return [
            e
            for e in await email_hub.store.list_events(lead.number, ["delivery.failed"])
            if e.data.get("bounce")
        ]

    (event,) = await wait_for(bounced, what="the bounce event")
    assert event.data["message_id"] == reply.id
    assert "5.1.1" in event.data["error"] and "Recipient address rejected" in event.data["error"]
    assert event.data["reason"] == "recipient_refused"  # 5.1.x: the address does not exist
    message = await email_hub.store.get_message(reply.id)
    assert message is not None and message.delivery is not None and message.delivery.value == "failed"
    assert len(await leads(email_hub)) == 1  # the bounce opened no lead

    # The inbox row is marked done after the handler's event is written, not with it.
    async def bounce_done() -> list:  # type: ignore[type-arg]
        return [
            i
            for i in await email_hub.store.inbox_list("done")
            if i.lead_number == lead.number and b"delivery-status" in i.payload
        ]

    (done,) = await wait_for(bounce_done, what="the bounce's inbox row marked done")
    assert done.lead_number == lead.number


def _qmail_bounce(original_id: str, recipient: str) -> bytes:
    """A bounce as qmail sends it: plain text, no RFC 3464 report, our headers quoted in the body."""
    return (
        "From: MAILER-DAEMON@mx.example.net\r\nTo: support@example.com\r\n"
        "Subject: failure notice\r\nMessage-ID: <qmail-1@mx.example.net>\r\n\r\n"
        "Hi. This is the qmail-send program at mx.example.net.\r\n"
        "I'm afraid I wasn't able to deliver your message to the following addresses.\r\n"
        "This is a permanent error; I've given up. Sorry it didn't work out.\r\n\r\n"
        f"<{recipient}>:\r\nSorry, no mailbox here by that name. (#5.1.1)\r\n\r\n"
        "--- Below this line is a copy of the message.\r\n\r\n"
        f"From: Support <support@example.com>\r\nTo: {recipient}\r\nSubject: Re: Help [#L-1]\r\n"
        f"Message-ID: <{original_id}>\r\n\r\nHere is the answer.\r\n"
    ).encode()


async def test_a_plain_text_bounce_quoting_our_reply_marks_it_failed(
    email_hub: Hub, imap: ImapClient, mailbox: str, smtp_server: SmtpServer
) -> None:
    # Without a delivery-status report, a bounce opened a lead of its own ("failure notice" from
    # MAILER-DAEMON) and the reply it bounced stayed "sent": nobody knew the customer never got it.
    raw, _ = make_mail(subject="Help", text="Help me")
    await imap.append(raw, mailbox)
    (lead,) = await wait_leads(email_hub, 1)
    reply = await email_hub.replies.record_reply(lead.number, "Here is the answer.", "olena")

    async def staff() -> list:  # type: ignore[type-arg]
        return [m for m in smtp_server.parsed() if m["Auto-Submitted"] is None]

    (sent,) = await wait_for(staff, what="the staff reply")
    (sent_id,) = header_ids(sent["Message-ID"])
    await imap.append(_qmail_bounce(sent_id, "olena@example.com"), mailbox)

    async def bounced() -> list:  # type: ignore[type-arg]
        events = await email_hub.store.list_events(lead.number, ["delivery.failed"])
        return [e for e in events if e.data.get("bounce")]

    (event,) = await wait_for(bounced, what="the bounce event")
    assert event.data["message_id"] == reply.id and "qmail-send" in event.data["error"]
    message = await email_hub.store.get_message(reply.id)
    assert message is not None and message.delivery is not None and message.delivery.value == "failed"
    assert len(await leads(email_hub)) == 1


async def test_a_delay_notice_leaves_the_reply_as_it_is(
    email_hub: Hub, imap: ImapClient, mailbox: str, smtp_server: SmtpServer
) -> None:
    # "Delayed Mail (still being retried)" marked the reply failed: staff resent it, and the
    # customer got it twice once the first copy arrived.
    raw, _ = make_mail(subject="Help", text="Help me")
    await imap.append(raw, mailbox)
    (lead,) = await wait_leads(email_hub, 1)
    reply = await email_hub.replies.record_reply(lead.number, "Here is the answer.", "olena")

    async def staff() -> list:  # type: ignore[type-arg]
        return [m for m in smtp_server.parsed() if m["Auto-Submitted"] is None]

    (sent,) = await wait_for(staff, what="the staff reply")
    (sent_id,) = header_ids(sent["Message-ID"])
    await imap.append(_dsn(sent_id, "olena@example.com", delayed=True), mailbox)

    async def filed() -> list:  # type: ignore[type-arg]
        return [i for i in await email_hub.store.inbox_list("done") if b"4.2.2" in i.payload]

    (notice,) = await wait_for(filed, what="the delay notice filed")
    assert notice.lead_number == lead.number
    assert await email_hub.store.list_events(lead.number, ["delivery.failed"]) == []
    message = await email_hub.store.get_message(reply.id)
    assert message is not None and message.delivery is not None and message.delivery.value == "sent"
    assert len(await leads(email_hub)) == 1


async def test_uidvalidity_change_resyncs_without_duplicates(
    email_hub: Hub, imap: ImapClient, mailbox: str
) -> None:
    mails = [
        make_mail(sender=f"c{i}@example.com", subject=f"Request {i}", text=f"Text {i}")[0] for i in range(3)
    ]
    for raw in mails:
        await imap.append(raw, mailbox)
    await wait_leads(email_hub, 3)
    for lead in await leads(email_hub):
        await wait_messages(email_hub, lead.number, 1)
    channel = next(c for c in email_hub.channels if c.name == "email")
    poller = channel.poller  # type: ignore[attr-defined]
    before = await email_hub.store.get_state(poller.state_key)

    # The server rebuilds the mailbox: same messages, new UIDs, new UIDVALIDITY, plus one new mail.
    await asyncio.sleep(1.1)  # Dovecot derives UIDVALIDITY from the clock (seconds)
    staging = f"{mailbox}new"
    await imap.create(staging)
    for raw in [*mails, make_mail(sender="c9@example.com", subject="Request 9", text="Text 9")[0]]:
        await imap.append(raw, staging)
    await imap.delete(mailbox)
    response = await imap.imap.rename(staging, mailbox)
    assert response.result == "OK", response

    found = await wait_leads(email_hub, 4, timeout=30)

    async def resynced() -> bool:
        state = await email_hub.store.get_state(poller.state_key)
        return bool(state and state["uidvalidity"] != before["uidvalidity"] and state["mode"] == "normal")

    await wait_for(resynced, what="the re-sync")
    await asyncio.sleep(1.0)
    found = await leads(email_hub)
    assert sorted(lead.subject for lead in found) == ["Request 0", "Request 1", "Request 2", "Request 9"]
    for lead in found:
        messages = await wait_messages(email_hub, lead.number, 1)
        assert len(messages) == 1, lead.subject


async def test_a_resync_leaves_mail_from_before_the_hub_alone(
    settings_factory: Callable[..., Settings],
    imap_account: ImapAccount,
    mailbox: str,
    imap: ImapClient,
    smtp_server: SmtpServer,
    tmp_path: Path,
) -> None:
    # A UIDVALIDITY change re-read the whole mailbox: years of mail people had read before the
    # hub came (never taken at its first start) became that many leads and acknowledgements.
    long_ago = datetime.now(UTC) - timedelta(days=400)
    history = [
        (make_mail(sender=f"h{i}@example.com", subject=f"History {i}", text="old")[0], r"(\Seen)", long_ago)
        for i in range(3)
    ]
    history.append(
        (make_mail(sender="u@example.com", subject="Unread history", text="old")[0], None, long_ago)
    )
    for raw, flags, date in history:
        assert (await imap.imap.append(raw, mailbox=mailbox, flags=flags, date=date)).result == "OK"
    current, _ = make_mail(sender="c@example.com", subject="Current", text="new")
    await imap.append(current, mailbox)
    hub = Hub(settings_factory(email=email_config(imap_account, mailbox, smtp_server.port, tmp_path)))
    await hub.start()
    try:
        await wait_leads(hub, 1)
        channel = next(c for c in hub.channels if c.name == "email")
        poller = channel.poller  # type: ignore[attr-defined]
        before = await hub.store.get_state(poller.state_key)

        # The mailbox is rebuilt with its flags and arrival dates: new UIDs, a new UIDVALIDITY.
        await asyncio.sleep(1.1)  # Dovecot derives UIDVALIDITY from the clock (seconds)
        staging = f"{mailbox}new"
        await imap.create(staging)
        for raw, flags, date in [*history, (current, r"(\Seen)", None)]:
            assert (await imap.imap.append(raw, mailbox=staging, flags=flags, date=date)).result == "OK"
        later, _ = make_mail(sender="l@example.com", subject="Later", text="newer")
        await imap.append(later, staging)
        await imap.delete(mailbox)
        assert (await imap.imap.rename(staging, mailbox)).result == "OK"

        async def resynced() -> bool:
            state = await hub.store.get_state(poller.state_key)
            return bool(state and state["uidvalidity"] != before["uidvalidity"] and state["mode"] == "normal")

        await wait_for(resynced, timeout=30, what="the re-sync")
        await asyncio.sleep(1.0)
        assert [lead.subject for lead in await leads(hub)] == ["Current", "Later"]
    finally:
        await hub.stop()


async def test_smtp_down_then_back_delivers_each_reply_exactly_once(
    settings_factory: Callable[..., Settings],
    imap_account: ImapAccount,
    mailbox: str,
    imap: ImapClient,
    tmp_path: Path,
) -> None:
    down = SmtpServer()  # not started yet: connections are refused
    settings = settings_factory(email=email_config(imap_account, mailbox, down.port, tmp_path))
    hub = Hub(settings)
    await hub.start()
    try:
        raw, _ = make_mail(subject="Outage", text="Are you there?")
        await imap.append(raw, mailbox)
        (lead,) = await wait_leads(hub, 1)
        for i in range(3):
            await hub.replies.record_reply(lead.number, f"Answer {i}", "olena")

        async def retried() -> bool:
            rows = await hub.store.list_events(lead.number, ["reply.recorded"])
            return len(rows) == 4 and (await hub.store.outbox_counts())["queued"] == 4

        await wait_for(retried, what="queued replies")
        await asyncio.sleep(2.5)  # several attempts fail while the server is down
        assert (await hub.store.outbox_counts())["sent"] == 0
        down.start()
        try:

            async def all_sent() -> bool:
                return (await hub.store.outbox_counts())["sent"] == 4

            await wait_for(all_sent, timeout=30, what="delivery after the outage")
            await asyncio.sleep(1.5)
            ids = [header_ids(m["Message-ID"])[0] for m in down.parsed()]
            assert len(ids) == 4 and len(set(ids)) == 4
            texts = sorted(m.get_body(("plain",)).get_content().strip() for m in down.parsed())
            assert texts[:3] == ["Answer 0", "Answer 1", "Answer 2"]
        finally:
            down.stop()
    finally:
        await hub.stop()


async def test_permanent_smtp_rejection_marks_the_reply_failed_once(
    email_hub: Hub, imap: ImapClient, mailbox: str, smtp_server: SmtpServer
) -> None:
    smtp_server.reject("gone@example.com")
    raw, _ = make_mail(sender="gone@example.com", subject="Last words", text="Goodbye")
    await imap.append(raw, mailbox)
    (lead,) = await wait_leads(email_hub, 1)
    reply = await email_hub.replies.record_reply(lead.number, "Sorry to see you go", "olena")

    async def failed() -> list:  # type: ignore[type-arg]
        events = await email_hub.store.list_events(lead.number, ["delivery.failed"])
        return [e for e in events if e.data.get("message_id") == reply.id]

    (event,) = await wait_for(failed, what="the permanent failure")
    assert "550" in event.data["error"] and "gone@example.com" not in event.data["error"]
    assert event.data["reason"] == "recipient_refused"
    message = await email_hub.store.get_message(reply.id)
    assert message is not None and message.delivery is not None and message.delivery.value == "failed"
    await asyncio.sleep(1.5)  # no retry follows a permanent failure
    assert len(await failed()) == 1
    assert smtp_server.raw == []


async def test_a_refused_sender_address_is_retried_not_failed(
    settings_factory: Callable[..., Settings],
    imap_account: ImapAccount,
    mailbox: str,
    imap: ImapClient,
    smtp_server: SmtpServer,
    tmp_path: Path,
) -> None:
    # A From the SMTP account may not use is the operator's to fix: every reply queued meanwhile
    # failed for good at its first attempt, so staff had to resend each one.
    settings = settings_factory(
        email=email_config(imap_account, mailbox, smtp_server.port, tmp_path, ack=False),
        outbox={"poll_every": "1s", "backoff_base": "1s", "backoff_max": "1s"},
    )
    hub = Hub(settings)
    await hub.start()
    try:
        smtp_server.refuse_sender(
            "553 5.7.1 <support@example.com>: Sender address rejected: not owned by user"
        )
        raw, _ = make_mail(subject="Refused", text="Hello?")
        await imap.append(raw, mailbox)
        (lead,) = await wait_leads(hub, 1)
        reply = await hub.replies.record_reply(lead.number, "Відповідь", "olena")

        async def retried() -> bool:
            return smtp_server.senders_refused >= 2

        await wait_for(retried, what="a second attempt")
        assert await hub.store.list_events(lead.number, ["delivery.failed"]) == []
        smtp_server.refuse_sender("")

        async def sent() -> bool:
            message = await hub.store.get_message(reply.id)
            return message is not None and message.delivery is not None and message.delivery.value == "sent"

        await wait_for(sent, what="delivery once the sender is accepted")
        assert len(smtp_server.raw) == 1

        # Refused for its size (RFC 1870 SIZE at MAIL FROM), a message fails for good.
        smtp_server.refuse_sender("552 5.3.4 Message size exceeds fixed limit")
        large = await hub.replies.record_reply(lead.number, "Великий лист", "olena")

        async def failed() -> list[Any]:
            events = await hub.store.list_events(lead.number, ["delivery.failed"])
            return [e for e in events if e.data.get("message_id") == large.id]

        (event,) = await wait_for(failed, what="the size refusal")
        assert "552" in event.data["error"]
    finally:
        await hub.stop()


async def test_only_the_lease_holder_polls_the_mailbox(
    email_settings: Settings, imap: ImapClient, mailbox: str
) -> None:
    first, second = Hub(email_settings), Hub(email_settings)  # two hubs on one store file
    await first.start()
    await second.start()
    try:
        pollers = [next(c for c in h.channels if c.name == "email").poller for h in (first, second)]  # type: ignore[attr-defined]

        async def one_connected() -> bool:
            return sum(p.connected.is_set() for p in pollers) == 1

        await wait_for(one_connected, what="one poller connected")
        for i in range(10):
            raw, _ = make_mail(sender=f"p{i}@example.com", subject=f"Parallel {i}", text="hi")
            await imap.append(raw, mailbox)
        found = await wait_leads(first, 10)
        for lead in found:
            assert len(await wait_messages(first, lead.number, 1)) == 1
        assert sum(p.connected.is_set() for p in pollers) == 1
    finally:
        await second.stop()
        await first.stop()


async def test_a_bounce_replayed_from_the_inbox_still_attaches_to_its_lead(
    email_hub: Hub, imap: ImapClient, mailbox: str, smtp_server: SmtpServer
) -> None:
    raw, _ = make_mail(subject="Help", text="Help me")
    await imap.append(raw, mailbox)
    (lead,) = await wait_leads(email_hub, 1)
    reply = await email_hub.replies.record_reply(lead.number, "Answer", "olena")

    async def staff() -> list:  # type: ignore[type-arg]
        return [m for m in smtp_server.parsed() if m["Auto-Submitted"] is None]

    (sent,) = await wait_for(staff, what="the staff reply")
    (sent_id,) = header_ids(sent["Message-ID"])
    # As if a crash left the bounce stored but unprocessed: the replay loop, not the poller, takes it.
    item, _ = await email_hub.store.inbox_put(
        "email", "acct/INBOX/1/99/replayed", _dsn(sent_id, "olena@example.com"), email_hub.now()
    )
    await email_hub.inbox.replay_once()
    stored = await email_hub.store.inbox_get(item.id)
    assert stored is not None and stored.status == "done" and stored.lead_number == lead.number
    message = await email_hub.store.get_message(reply.id)
    assert message is not None and message.delivery is not None and message.delivery.value == "failed"
    assert len(await leads(email_hub)) == 1


async def test_mail_replayed_from_the_inbox_still_gets_its_acknowledgement(
    email_hub: Hub, smtp_server: SmtpServer
) -> None:
    # As if a crash came between storing the mail raw and processing it: the replay loop, not
    # the poller, opens the lead, and the customer still hears that we have it.
    raw, _ = make_mail(subject="Replayed", text="Are you there?")
    item, _ = await email_hub.store.inbox_put("email", "acct/INBOX/1/77/replayed", raw, email_hub.now())
    await email_hub.inbox.replay_once()
    (lead,) = await wait_leads(email_hub, 1)
    stored = await email_hub.store.inbox_get(item.id)
    assert stored is not None and stored.status == "done" and stored.lead_number == lead.number
    (ack,) = await wait_for(lambda: _acks(smtp_server), what="the acknowledgement")
    assert lead.ref in ack["Subject"] or lead.ref in ack.get_body(("plain",)).get_content()
    # Replaying the same item again (it is done) sends nothing more.
    await email_hub.inbox.replay_once()
    await asyncio.sleep(1.0)
    assert len(await _acks(smtp_server)) == 1


async def _email_messages(hub: Hub) -> list[Message]:
    return [m for lead in await leads(hub) for m in await inbound_messages(hub, lead.number)]


async def test_the_same_mail_delivered_again_is_one_message(
    email_hub: Hub, imap: ImapClient, mailbox: str, smtp_server: SmtpServer
) -> None:
    raw, mid = make_mail(subject="Замовлення 1234", text="Де моє замовлення?")
    # A server's re-delivery after a timeout (another Received line), and a byte-identical copy.
    again = b"Received: from mx2.example.net by mx.example.com; Tue, 1 Dec 2026 10:00:05 +0000\r\n" + raw
    await imap.append(raw, mailbox)
    await wait_leads(email_hub, 1)
    # Later, in the poller's normal mode: a first sight of a mailbox recognises identical bytes.
    for copy in (again, raw):
        await imap.append(copy, mailbox)
    # The same Message-ID with another body, or from another sender, is another message.
    other_text, _ = make_mail(subject="Замовлення 1234", text="Це вже інше питання.", message_id=mid)
    other_sender, _ = make_mail(
        sender="petro@example.com", subject="Замовлення 1234", text="Де моє замовлення?", message_id=mid
    )
    await imap.append(other_text, mailbox)
    await imap.append(other_sender, mailbox)

    async def all_seen() -> list[int] | None:
        seen = await imap.uids_with_flag(mailbox, "\\Seen")
        return seen if len(seen) == 5 else None

    await wait_for(all_seen, what="every copy flagged \\Seen")
    await asyncio.sleep(1.0)  # give a second message or acknowledgement the time to appear
    messages = await _email_messages(email_hub)
    assert sorted((m.author, m.text) for m in messages) == [
        ("Olena", "Де моє замовлення?"),
        ("Olena", "Це вже інше питання."),
        ("petro@example.com", "Де моє замовлення?"),
    ]
    acks = [m for m in await _acks(smtp_server) if "olena@example.com" in m["To"]]
    assert len(acks) == len({m.lead_number for m in messages if m.author == "Olena"})
    assert len(await email_hub.store.inbox_list("done")) == 5


async def test_mail_stored_before_content_keys_is_not_stored_again(
    make_hub: Callable[..., Any], imap_account: ImapAccount, tmp_path: Path
) -> None:
    hub = await make_hub(email=email_config(imap_account, "INBOX", 1, tmp_path))
    channel = next(c for c in hub.channels if c.name == "email")
    old = MailboxPosition("acct", "INBOX", 1, resync=False)

    async def stored_the_old_way(uid: int, raw: bytes) -> tuple[InboxItem, int]:
        # An older version: no intake key in the row's meta, the message keyed by the row's id.
        digest = hashlib.sha256(raw).hexdigest()
        item, _ = await hub.store.inbox_put("email", external_id(old, uid, digest), raw, hub.now(), {})
        await hub.store.set_state(f"email:seen:acct:INBOX:{digest}", item.external_id)
        inbound = replace(channel.decoder(item), external_id=item.external_id)  # type: ignore[attr-defined]
        result = await hub.intake.accept(inbound)
        return item, result.lead.number

    # Processed and marked done, then the mailbox is rebuilt: the re-sync recognises the bytes.
    first, _ = make_mail(subject="Old", text="Stored by an older version")
    done, number = await stored_the_old_way(1, first)
    await hub.store.inbox_done(done.id, number)
    await channel.ingest([Fetched(7, first)], MailboxPosition("acct", "INBOX", 2, resync=True))  # type: ignore[attr-defined]
    # A crash lost the done mark of another one: the replay finds its message under the old key.
    second, _ = make_mail(subject="Old too", text="Also stored by an older version")
    pending, _ = await stored_the_old_way(2, second)
    await hub.inbox.replay_once(now=hub.now() + timedelta(minutes=5))

    texts = sorted(m.text for m in await _email_messages(hub))
    assert texts == ["Also stored by an older version", "Stored by an older version"]
    replayed = await hub.store.inbox_get(pending.id)
    assert replayed is not None and replayed.status == "done"


async def test_mail_from_our_own_address_gets_no_acknowledgement(
    email_hub: Hub, imap: ImapClient, mailbox: str, smtp_server: SmtpServer
) -> None:
    # A colleague writes to the support mailbox as the support address itself (any letter case):
    # a lead, but no acknowledgement sent to ourselves (one went out).
    raw, _ = make_mail(sender="Support <Support@Example.com>", subject="Call the supplier", text="Today.")
    await imap.append(raw, mailbox)
    (lead,) = await wait_leads(email_hub, 1)
    raw, _ = make_mail(subject="Help", text="A customer's question")
    await imap.append(raw, mailbox)
    await wait_leads(email_hub, 2)
    (ack,) = await wait_for(lambda: _acks(smtp_server), what="the customer's acknowledgement")
    assert ack["To"] == "Olena <olena@example.com>"
    await asyncio.sleep(1.5)  # give a wrong acknowledgement the time to go out
    assert len(smtp_server.raw) == 1
    assert lead.channel == "email"


async def test_a_copy_of_our_own_reply_in_the_mailbox_is_no_customer(
    email_hub: Hub, imap: ImapClient, mailbox: str, smtp_server: SmtpServer
) -> None:
    raw, _ = make_mail(subject="Help", text="Help me")
    await imap.append(raw, mailbox)
    (lead,) = await wait_leads(email_hub, 1)
    await wait_for(lambda: _acks(smtp_server), what="the acknowledgement")
    await email_hub.replies.record_reply(lead.number, "Answer", "olena")

    async def staff() -> list:  # type: ignore[type-arg]
        return [m for m in smtp_server.raw if b"Auto-Submitted" not in m]

    (sent,) = await wait_for(staff, what="the staff reply")
    # The mail server files a copy of what we sent in the support mailbox (a Bcc, a sent copy):
    # it opened a lead for our own address and acknowledged it to ourselves.
    await imap.append(sent, mailbox)

    async def done() -> list[InboxItem] | None:
        items = await email_hub.store.inbox_list("done", limit=10)
        return items if len(items) == 2 else None

    items = await wait_for(done, what="the copy marked done")
    assert [i.lead_number for i in items] == [lead.number, lead.number]
    # The replay path (a crash between storing and processing it) files it the same way.
    item, _ = await email_hub.store.inbox_put("email", "acct/INBOX/1/98/own-copy", sent, email_hub.now())
    await email_hub.inbox.replay_once()
    stored = await email_hub.store.inbox_get(item.id)
    assert stored is not None and stored.status == "done" and stored.lead_number == lead.number
    await asyncio.sleep(1.5)  # give a wrong lead or acknowledgement the time to appear
    assert len(await leads(email_hub)) == 1
    assert len(await inbound_messages(email_hub, lead.number)) == 1
    assert len(await _acks(smtp_server)) == 1
    assert await email_hub.store.find_contact(Identity(IdentityKind.EMAIL, "support@example.com")) is None
