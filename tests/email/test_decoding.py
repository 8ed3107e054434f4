"""Charsets, HTML, attachments and kinds, through the real mailbox and the real channel."""

from __future__ import annotations

import base64
import hashlib
from email.header import Header
from pathlib import Path

import pytest

from hub.app import Hub
from tests.email.helpers import make_mail, wait_leads, wait_messages
from tests.support.dovecot import ImapClient

pytestmark = pytest.mark.server


def _legacy_mail(sender: str, subject: str, body: str, charset: str, encoding: str = "8bit") -> bytes:
    """A message as old Russian/Ukrainian clients send it: a legacy charset, RFC 2047 subject."""
    encoded_subject = Header(subject, charset).encode()
    payload = body.encode(charset)
    if encoding == "base64":
        payload = base64.encodebytes(payload)
    head = (
        f"From: {sender}\r\nTo: support@example.com\r\nSubject: {encoded_subject}\r\n"
        f"Message-ID: <{hashlib.md5(payload).hexdigest()}@legacy.example>\r\nMIME-Version: 1.0\r\n"
        f"Content-Type: text/plain; charset={charset}\r\nContent-Transfer-Encoding: {encoding}\r\n\r\n"
    )
    return head.encode("ascii") + payload


async def test_legacy_cyrillic_charsets_decode(email_hub: Hub, imap: ImapClient, mailbox: str) -> None:
    cases = [
        (
            "a@example.com",
            "Заявка на ремонт котла",
            "Добрий день! Котел не гріє, ремонт потрібен.",
            "windows-1251",
        ),
        ("b@example.com", "Вопрос по счёту", "Здравствуйте, пришлите счёт за ноябрь.", "koi8-r"),
        ("c@example.com", "Оплата замовлення", "Чи можна оплатити карткою?", "iso-8859-5"),
    ]
    for sender, subject, body, charset in cases:
        await imap.append(
            _legacy_mail(sender, subject, body, charset, "base64" if charset == "koi8-r" else "8bit"), mailbox
        )
    # Unencoded 8-bit windows-1251 in the Subject header (still seen from old clients).
    raw = (
        b"From: d@example.com\r\nTo: support@example.com\r\nSubject: "
        + "Тема без кодування".encode("cp1251")
        + b"\r\nContent-Type: text/plain; charset=windows-1251\r\n\r\n"
        + "Текст листа".encode("cp1251")
    )
    await imap.append(raw, mailbox)
    found = await wait_leads(email_hub, 4)
    by_subject = {lead.subject: lead for lead in found}
    for _, subject, body, _ in cases:
        lead = by_subject[subject]
        (message,) = await wait_messages(email_hub, lead.number, 1)
        assert message.text == body
    assert "Тема без кодування" in by_subject
    # The subject keyword "ремонт" maps to a service request (email.kinds).
    assert by_subject["Заявка на ремонт котла"].kind.value == "service_request"
    assert by_subject["Вопрос по счёту"].kind.value == "message"


async def test_html_only_and_malicious_html_are_sanitized(
    email_hub: Hub, imap: ImapClient, mailbox: str
) -> None:
    evil = (
        "<html><head><style>p{color:red}</style><script>alert('x')</script></head><body>"
        '<p onclick="steal()">Hello <b>team</b>,</p><img src=x onerror="alert(1)">'
        '<p>see <a href="javascript:alert(document.cookie)">this</a> and '
        '<a href="https://example.com/order">my order</a></p>'
        '<iframe src="https://evil.example"></iframe></body></html>'
    )
    raw, _ = make_mail(text=None, html=evil, subject="HTML only")
    await imap.append(raw, mailbox)
    (lead,) = await wait_leads(email_hub, 1)
    (message,) = await wait_messages(email_hub, lead.number, 1)
    assert "Hello team," in message.text and "my order" in message.text
    assert "alert" not in message.text and "color:red" not in message.text
    html = message.html.lower()
    assert "<b>team</b>" in html and 'href="https://example.com/order"' in html
    for bad in ("<script", "onerror", "onclick", "javascript:", "<iframe", "<img", "<style"):
        assert bad not in html, bad


async def test_attachments_are_stored_by_hash_and_oversize_ones_noted(
    email_hub: Hub, imap: ImapClient, mailbox: str, tmp_path: Path
) -> None:
    small = b"%PDF-1.4 small invoice"
    big = b"x" * (email_hub.settings.email.max_attachment_bytes + 1)
    raw, _ = make_mail(
        subject="Invoice attached",
        text="Please see the attachments.",
        attachments=[
            ("Рахунок №5.pdf", "application/pdf", small),
            ("video.bin", "application/octet-stream", big),
        ],
    )
    await imap.append(raw, mailbox)
    (lead,) = await wait_leads(email_hub, 1)
    (message,) = await wait_messages(email_hub, lead.number, 1)
    kept, dropped = message.attachments
    assert kept.name == "Рахунок №5.pdf" and kept.size == len(small)
    digest = hashlib.sha256(small).hexdigest()
    assert kept.ref == f"sha256:{digest}"
    stored = Path(email_hub.settings.email.attachments_dir) / digest[:2] / digest
    assert stored.read_bytes() == small
    assert dropped.name == "video.bin" and dropped.ref == "" and "limit" in dropped.dropped_reason
    assert dropped.size == len(big)


async def test_plus_address_and_recipient_map_to_kinds(
    email_hub: Hub, imap: ImapClient, mailbox: str
) -> None:
    raw, _ = make_mail(sender="x1@example.com", to="support+repair@example.com", subject="Boiler")
    await imap.append(raw, mailbox)
    raw, _ = make_mail(sender="x2@example.com", to="service@example.com", subject="Pump")
    await imap.append(raw, mailbox)
    raw, _ = make_mail(sender="x3@example.com", to="support@example.com", subject="Hello")
    await imap.append(raw, mailbox)
    found = {lead.subject: lead.kind.value for lead in await wait_leads(email_hub, 3)}
    assert found == {"Boiler": "service_request", "Pump": "service_request", "Hello": "message"}
