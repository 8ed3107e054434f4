"""Building test mail and waiting for the hub to take it."""

from __future__ import annotations

import asyncio
import email.policy
import time
import uuid
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime
from email.message import EmailMessage
from email.utils import format_datetime
from typing import Any, TypeVar

from hub.app import Hub
from hub.domain import Lead, Message
from storage.base import LeadQuery

T = TypeVar("T")


def make_mail(
    sender: str = "Olena <olena@example.com>",
    to: str = "support@example.com",
    subject: str = "Question about my order",
    text: str | None = "Hello, where is my order 1234?",
    html: str | None = None,
    message_id: str | None = None,
    in_reply_to: str | None = None,
    references: str | None = None,
    headers: dict[str, str] | None = None,
    attachments: list[tuple[str, str, bytes | str]] = (),  # type: ignore[assignment]
) -> tuple[bytes, str]:
    """(raw bytes, Message-ID without brackets) of a test email.

    An attachment given as text is a text part encoded in the charset its type names
    (`text/plain; charset=koi8-r`)."""
    msg = EmailMessage(policy=email.policy.SMTP)
    msg["From"] = sender
    msg["To"] = to
    msg["Subject"] = subject
    msg["Date"] = format_datetime(datetime.now(UTC))
    mid = message_id or f"{uuid.uuid4().hex}@mail.example.com"
    msg["Message-ID"] = f"<{mid}>"
    if in_reply_to:
        msg["In-Reply-To"] = in_reply_to
    if references:
        msg["References"] = references
    for name, value in (headers or {}).items():
        msg[name] = value
    if text is not None:
        msg.set_content(text)
        if html is not None:
            msg.add_alternative(html, subtype="html")
    elif html is not None:
        msg.set_content(html, subtype="html")
    for name, ctype, data in attachments:
        kind, _, params = ctype.partition(";")
        maintype, _, subtype = kind.strip().partition("/")
        if isinstance(data, str):
            charset = params.partition("charset=")[2].strip() or "utf-8"
            msg.add_attachment(data, subtype=subtype, charset=charset, filename=name)
        else:
            msg.add_attachment(data, maintype=maintype, subtype=subtype, filename=name)
    return msg.as_bytes(), mid


async def wait_for(check: Callable[[], Awaitable[T | None]], timeout: float = 20.0, what: str = "") -> T:
    """Await `check()` until it returns something truthy (bounded)."""
    deadline = time.monotonic() + timeout
    while True:
        value = await check()
        if value:
            return value
        if time.monotonic() > deadline:
            raise TimeoutError(f"timed out after {timeout}s waiting for {what or check}")
        await asyncio.sleep(0.05)


async def leads(hub: Hub) -> list[Lead]:
    page = await hub.store.list_leads(LeadQuery(), 1000)
    return sorted(page.items, key=lambda lead: lead.number)


async def wait_leads(hub: Hub, count: int, timeout: float = 20.0) -> list[Lead]:
    async def check() -> list[Lead] | None:
        found = await leads(hub)
        return found if len(found) >= count else None

    return await wait_for(check, timeout, f"{count} lead(s)")


async def inbound_messages(hub: Hub, number: int) -> list[Message]:
    return [m for m in await hub.store.list_messages(number) if m.direction.value == "in"]


async def wait_messages(hub: Hub, number: int, count: int, timeout: float = 20.0) -> list[Message]:
    async def check() -> list[Message] | None:
        found = await inbound_messages(hub, number)
        return found if len(found) >= count else None

    return await wait_for(check, timeout, f"{count} message(s) in L-{number}")


def header_ids(value: Any) -> list[str]:
    import re

    return re.findall(r"<([^<>\s]+)>", str(value or ""))
