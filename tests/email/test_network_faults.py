"""Network faults between the hub and its mail servers, injected by a TCP proxy on loopback.

SMTP dropped after DATA and before its 250: the delivery is uncertain, retried at most once with
the same Message-ID. SMTP blackholed: a timeout before DATA is an ordinary retry, delivered once.
IMAP dropped in the middle of a FETCH literal: the poller reconnects, nothing lost or doubled.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable
from pathlib import Path

import pytest

from hub.app import Hub
from hub.config import Settings
from tests.email.conftest import email_config
from tests.email.helpers import header_ids, inbound_messages, make_mail, wait_for, wait_leads
from tests.support.dovecot import ImapAccount, ImapClient
from tests.support.smtp import SmtpServer
from tests.support.tcp_proxy import TcpProxy

pytestmark = pytest.mark.server

QUEUED = b"250 OK: queued"  # the test SMTP server's answer to the message content


@pytest.fixture
async def smtp_proxy(smtp_server: SmtpServer) -> AsyncIterator[TcpProxy]:
    proxy = TcpProxy("127.0.0.1", smtp_server.port)
    await proxy.start()
    try:
        yield proxy
    finally:
        await proxy.stop()


@pytest.fixture
async def hub_via_proxy(
    settings_factory: Callable[..., Settings],
    imap_account: ImapAccount,
    mailbox: str,
    smtp_proxy: TcpProxy,
    tmp_path: Path,
) -> AsyncIterator[Hub]:
    config = email_config(imap_account, mailbox, smtp_proxy.port, tmp_path, smtp={"timeout": "2s"})
    hub = Hub(settings_factory(email=config))
    await hub.start()
    try:
        yield hub
    finally:
        await hub.stop()


async def _lead_with_ack(hub: Hub, imap: ImapClient, mailbox: str, smtp_server: SmtpServer) -> int:
    raw, _ = make_mail(subject="Network", text="Is anyone there?")
    await imap.append(raw, mailbox)
    (lead,) = await wait_leads(hub, 1)

    async def acked() -> bool:
        return len(smtp_server.raw) == 1

    await wait_for(acked, what="the acknowledgement")
    return lead.number


def _copies(smtp_server: SmtpServer, text: str) -> list[str]:
    return [
        header_ids(m["Message-ID"])[0]
        for m in smtp_server.parsed()
        if m.get_body(("plain",)).get_content().strip() == text
    ]


async def test_smtp_drop_after_data_is_retried_once_with_the_same_message_id(
    hub_via_proxy: Hub, imap: ImapClient, mailbox: str, smtp_server: SmtpServer, smtp_proxy: TcpProxy
) -> None:
    hub = hub_via_proxy
    number = await _lead_with_ack(hub, imap, mailbox, smtp_server)
    smtp_proxy.cut_before("down", QUEUED)  # the server queues it, the hub never hears so
    reply = await hub.replies.record_reply(number, "Yes, we are here", "olena")

    async def sent() -> bool:
        message = await hub.store.get_message(reply.id)
        return message is not None and message.delivery is not None and message.delivery.value == "sent"

    await wait_for(sent, timeout=20, what="the retried delivery")
    await asyncio.sleep(1.5)  # no further attempt follows
    ids = _copies(smtp_server, "Yes, we are here")
    assert smtp_proxy.cuts == 1
    assert len(ids) == 2 and len(set(ids)) == 1, ids  # the one retry, same Message-ID


async def test_smtp_uncertain_twice_is_not_retried_again(
    hub_via_proxy: Hub, imap: ImapClient, mailbox: str, smtp_server: SmtpServer, smtp_proxy: TcpProxy
) -> None:
    hub = hub_via_proxy
    number = await _lead_with_ack(hub, imap, mailbox, smtp_server)
    smtp_proxy.cut_before("down", QUEUED, times=10)
    reply = await hub.replies.record_reply(number, "Are you getting this?", "olena")

    async def failed() -> list:  # type: ignore[type-arg]
        events = await hub.store.list_events(number, ["delivery.failed"])
        return [e for e in events if e.data.get("message_id") == reply.id]

    (event,) = await wait_for(failed, timeout=20, what="the uncertain failure")
    assert "may have been delivered" in event.data["error"] and event.data["reason"] == "maybe_sent"
    await asyncio.sleep(2.5)
    ids = _copies(smtp_server, "Are you getting this?")
    assert len(ids) == 2 and len(set(ids)) == 1, ids
    assert len(await failed()) == 1


async def test_smtp_blackhole_then_back_delivers_once(
    hub_via_proxy: Hub, imap: ImapClient, mailbox: str, smtp_server: SmtpServer, smtp_proxy: TcpProxy
) -> None:
    hub = hub_via_proxy
    number = await _lead_with_ack(hub, imap, mailbox, smtp_server)
    smtp_proxy.blackhole(times=1)  # connect succeeds, no greeting: a timeout before DATA
    await hub.replies.record_reply(number, "After the silence", "olena")

    async def delivered() -> bool:
        return bool(_copies(smtp_server, "After the silence"))

    await wait_for(delivered, timeout=20, what="delivery after the blackhole")
    await asyncio.sleep(1.5)
    assert len(_copies(smtp_server, "After the silence")) == 1
    assert smtp_proxy.connections >= 3  # ack, the blackholed attempt, the retry


async def test_imap_dropped_mid_fetch_loses_and_doubles_nothing(
    settings_factory: Callable[..., Settings],
    imap_account: ImapAccount,
    mailbox: str,
    imap: ImapClient,
    smtp_server: SmtpServer,
    tmp_path: Path,
) -> None:
    proxy = TcpProxy(imap_account.host, imap_account.port)
    await proxy.start()
    # The first two sessions die inside the FETCH literal, 40 bytes into the first message.
    proxy.cut_after("down", b"BODY[]", extra=40, times=2)
    for i in range(5):
        raw, _ = make_mail(sender=f"c{i}@example.com", subject=f"Mid-fetch {i}", text=f"body {i}")
        await imap.append(raw, mailbox)
    config = email_config(
        imap_account, mailbox, smtp_server.port, tmp_path, imap={"host": "127.0.0.1", "port": proxy.port}
    )
    hub = Hub(settings_factory(email=config))
    await hub.start()
    try:
        found = await wait_leads(hub, 5, timeout=30)
        await asyncio.sleep(1.5)  # more polls: nothing new appears
        found = await wait_leads(hub, 5)
        assert sorted(lead.subject for lead in found) == [f"Mid-fetch {i}" for i in range(5)]
        for lead in found:
            assert len(await inbound_messages(hub, lead.number)) == 1
        assert proxy.cuts == 2
    finally:
        await hub.stop()
        await proxy.stop()
