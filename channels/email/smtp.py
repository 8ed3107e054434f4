"""SMTP sending: staff replies and acknowledgements as proper replies in the customer's thread.

Each outbox row becomes one message with a Message-ID derived from the row id, so a retry
after a lost answer re-sends the same id (receivers and our own threading see one message),
and a bounce of it leads back to the row. The id is registered as a ref of the lead before
sending, so the customer's answer threads even if it arrives within the same second.
"""

from __future__ import annotations

import html as html_lib
import logging
import re
import ssl
from email.headerregistry import Address
from email.message import EmailMessage
from email.utils import format_datetime, getaddresses
from typing import Any

import aiosmtplib

from hub.config import EmailSettings
from hub.delivery_failures import FILE_TOO_LARGE, NO_ADDRESS, RECIPIENT_REFUSED, REJECTED
from hub.domain import Attachment, Contact, Direction, IdentityKind, Lead, OutboxItem, utcnow
from hub.errors import PermanentError, TransientError, UncertainDelivery
from hub.files import FileSources, FileUnavailable
from hub.ports import Delivered, LeftOut
from storage.base import Store

from .parse import clean_subject, encoded_words, new_message, one_line, redact

log = logging.getLogger(__name__)

CHANNEL = "email"
OUR_ID = re.compile(r"^hub\.([0-9a-f]{32})@")
MAX_REFERENCES = 20
SIZE_EXCEEDED = 552  # RFC 1870: the message is larger than the server takes
MIME_TYPE = re.compile(r"^[a-z0-9][a-z0-9!#$&^_.+-]*/[a-z0-9][a-z0-9!#$&^_.+-]*$")


def sender_address(from_header: str) -> str:
    """The address of the configured From header."""
    pairs = getaddresses([from_header])
    return pairs[0][1] if pairs else ""


def sender_domain(from_header: str) -> str:
    """The domain of the configured From address (for our Message-IDs)."""
    return sender_address(from_header).rpartition("@")[2] or "hub.invalid"


def our_message_id(item_id: str, domain: str) -> str:
    """The Message-ID (without brackets) of the email for one outbox row."""
    return f"hub.{item_id}@{domain}"


def outbox_id_of(message_id: str) -> str | None:
    """The outbox row id inside one of our Message-IDs, or None for anyone else's."""
    match = OUR_ID.match(message_id)
    return match.group(1) if match else None


def is_own_address(from_header: str, address: str) -> bool:
    """Whether `address` is our own sending address (email.smtp.from), in any letter case."""
    own = sender_address(from_header).lower()
    return bool(own) and address.lower() == own


def is_own_copy(from_header: str, sender: str, message_id: str) -> bool:
    """Whether a received mail is a copy of one we sent (a Bcc to the support mailbox, a server
    that files sent mail in the inbox): from our address, under a Message-ID only we make."""
    row_id = outbox_id_of(message_id)
    return (
        row_id is not None
        and is_own_address(from_header, sender)
        and message_id == our_message_id(row_id, sender_domain(from_header))
    )


def reply_subject(lead: Lead) -> str:
    """`Re: <subject> [#L-1042]`: the token lets a reply find its lead even without headers."""
    subject = one_line(clean_subject(lead.subject)) or "Your request"
    return f"Re: {subject} [#{lead.ref}]"


def text_to_html(text: str) -> str:
    """A minimal HTML alternative for a plain-text reply."""
    paragraphs = [p for p in re.split(r"\n{2,}", text.strip()) if p.strip()]
    body = "".join(f"<p>{html_lib.escape(p).replace(chr(10), '<br>')}</p>" for p in paragraphs)
    return f"<!DOCTYPE html><html><body>{body}</body></html>"


def _set_address(msg: EmailMessage, header: str, name: str, addr: str) -> None:
    """`header: name <addr>`, a non-ASCII name encoded for the reason `encoded_words` gives."""
    if name and not name.isascii() and addr.isascii():
        # The address gets a line of its own, so no line is long enough for the policy to refold.
        msg.set_raw(header, f"{encoded_words(header, name)}\n <{addr}>")
    elif name:
        local, _, domain = addr.partition("@")
        msg[header] = Address(display_name=name, username=local, domain=domain)
    else:
        msg[header] = addr


def compose(
    item: OutboxItem,
    lead: Lead,
    to_addr: str,
    to_name: str,
    from_header: str,
    thread_refs: list[str],
    files: list[tuple[Attachment, bytes]] | None = None,
) -> EmailMessage:
    """The email for one outbox row (text plus HTML alternative, threading headers, files)."""
    payload = item.payload
    msg = new_message(reply_subject(lead))
    from_name, from_addr = next(iter(getaddresses([from_header])), ("", ""))
    if from_name and not from_name.isascii() and from_addr.isascii():
        _set_address(msg, "From", one_line(from_name), from_addr)
    else:
        msg["From"] = from_header
    # Names stored before names were cleaned at parsing may still hold CR/LF.
    _set_address(msg, "To", one_line(to_name), to_addr)
    msg["Date"] = format_datetime(utcnow())
    msg["Message-ID"] = f"<{our_message_id(item.id, sender_domain(from_header))}>"
    if thread_refs:
        msg["In-Reply-To"] = f"<{thread_refs[-1]}>"
        msg["References"] = " ".join(f"<{r}>" for r in thread_refs[-MAX_REFERENCES:])
    msg["X-Hub-Lead"] = lead.ref
    if payload.get("auto"):
        # RFC 3834: mark automatic mail so well-behaved responders never answer it.
        msg["Auto-Submitted"] = "auto-replied"
        msg["X-Auto-Response-Suppress"] = "All"
    text = str(payload.get("text") or "")
    html = str(payload.get("html") or "") or text_to_html(text)
    msg.set_content(text)
    msg.add_alternative(html, subtype="html")
    for attachment, data in files or []:
        content_type = attachment.content_type.lower()
        maintype, _, subtype = (
            content_type if MIME_TYPE.match(content_type) else "application/octet-stream"
        ).partition("/")
        name = one_line(attachment.name) or "file"
        msg.add_attachment(data, maintype=maintype, subtype=subtype, filename=name)
    return msg


class _TrackedSmtp(aiosmtplib.SMTP):
    """An SMTP client that remembers whether the message content was handed to the server."""

    data_started = False

    async def data(self, message: str | bytes, /, **kwargs: Any) -> aiosmtplib.SMTPResponse:
        self.data_started = True
        return await super().data(message, **kwargs)


def _tls_context(verify: bool) -> ssl.SSLContext:
    context = ssl.create_default_context()
    if not verify:
        context.check_hostname = False
        context.verify_mode = ssl.CERT_NONE
    return context


class SmtpSender:
    """The email channel's `Sender`: one outbox row -> one SMTP submission."""

    channel = CHANNEL

    def __init__(self, settings: EmailSettings, store: Store, files: FileSources | None = None) -> None:
        self._settings = settings
        self._smtp = settings.smtp
        self._store = store
        self._files = files or FileSources()

    async def _files_of(
        self, lead: Lead, attachments: list[Attachment]
    ) -> tuple[list[tuple[Attachment, bytes]], tuple[LeftOut, ...]]:
        """The reply's files fetched for attaching, and those it must go without (and why)."""
        limit = self._settings.max_attachment_bytes
        files: list[tuple[Attachment, bytes]] = []
        left_out: list[LeftOut] = []
        for attachment in attachments:
            if attachment.size > limit:
                left_out.append(LeftOut(attachment.name, FILE_TOO_LARGE))
                continue
            try:
                files.append((attachment, await self._files.fetch(attachment, limit)))
            except FileUnavailable as exc:
                # The text still goes out: staff are told which file it went without.
                log.warning("%s email: the reply goes without a file (%s): %s", lead.ref, exc.code, exc)
                left_out.append(LeftOut(attachment.name, exc.code))
        return files, tuple(left_out)

    async def _thread_refs(self, lead: Lead) -> list[str]:
        """Message-IDs of the customer's mail in this lead, oldest first (for References)."""
        refs: list[str] = []
        for message in await self._store.list_messages(lead.number):
            if message.direction == Direction.IN and message.channel == CHANNEL:
                refs.extend(message.refs)
        return list(dict.fromkeys(refs))

    async def send(self, item: OutboxItem, lead: Lead, contact: Contact | None) -> Delivered:
        """Send one row; TransientError to retry later, PermanentError when it cannot succeed."""
        identity = contact.identity(IdentityKind.EMAIL) if contact else None
        if identity is None:
            raise PermanentError(f"{lead.ref}: the contact has no email address to reply to", code=NO_ADDRESS)
        message = await self._store.get_message(item.message_id)
        # Fetched on every attempt, before sending, so a failed fetch never sends the reply twice.
        files, left_out = await self._files_of(lead, list(message.attachments) if message else [])
        msg = compose(
            item,
            lead,
            identity.value,
            contact.name if contact and contact.name != identity.value else "",
            self._smtp.from_,
            await self._thread_refs(lead),
            files,
        )
        message_id = our_message_id(item.id, sender_domain(self._smtp.from_))
        await self._store.add_refs(lead.number, [message_id])
        smtp = self._smtp
        security = smtp.security
        client = _TrackedSmtp(
            hostname=smtp.host,
            port=smtp.port,
            username=smtp.username if smtp.password else None,
            password=smtp.password.get_secret_value() if smtp.password else None,
            use_tls=security == "ssl",
            start_tls=security == "starttls",
            tls_context=_tls_context(smtp.verify_tls) if security != "plain" else None,
            timeout=smtp.timeout.total_seconds(),
        )
        try:
            async with client:
                await client.send_message(msg)
        except aiosmtplib.SMTPRecipientsRefused as exc:
            codes = [r.code for r in exc.recipients]
            # The dispatcher logs this text: keep the customer's address out of it.
            detail = "; ".join(f"{r.code} {redact(r.message)}" for r in exc.recipients)
            if codes and all(c >= 500 for c in codes):
                raise PermanentError(
                    f"{lead.ref}: the recipient was refused: {detail}", code=RECIPIENT_REFUSED
                ) from exc
            raise TransientError(f"{lead.ref}: the recipient was deferred: {detail}") from exc
        except aiosmtplib.SMTPSenderRefused as exc:
            text = f"{exc.code} {redact(exc.message)}"
            if exc.code == SIZE_EXCEEDED:
                # Refused for this message's size (RFC 1870 SIZE): no retry will pass.
                raise PermanentError(f"{lead.ref}: the SMTP server refused the message: {text}") from exc
            # Our own sender address refused (a From the account may not use, a blocked account):
            # the operator's to fix, like a wrong password; failing every queued reply would lose them.
            raise TransientError(
                f"the SMTP server refused our sender address {sender_address(smtp.from_)!r} "
                f"(email.smtp.from): {text}"
            ) from exc
        except aiosmtplib.SMTPAuthenticationError as exc:
            # A wrong password is the operator's to fix; failing every queued reply would lose them.
            raise TransientError(
                f"SMTP login as {smtp.username!r} refused: {exc.code} {exc.message}"
            ) from exc
        except aiosmtplib.SMTPResponseException as exc:
            text = f"{exc.code} {redact(exc.message)}"
            if 500 <= exc.code < 600:
                raise PermanentError(
                    f"{lead.ref}: the SMTP server rejected the message: {text}", code=REJECTED
                ) from exc
            raise TransientError(f"{lead.ref}: the SMTP server deferred the message: {text}") from exc
        except (aiosmtplib.SMTPException, OSError, TimeoutError) as exc:
            if client.data_started:
                # The content may have reached the server: its reply (250 or not) never came back.
                raise UncertainDelivery(
                    f"{lead.ref}: SMTP {smtp.host}:{smtp.port} dropped after DATA, before its reply "
                    f"({type(exc).__name__}); the message may have been delivered"
                ) from exc
            raise TransientError(
                f"SMTP {smtp.host}:{smtp.port} unavailable: {type(exc).__name__}: {exc}"
            ) from exc
        log.info("%s email: sent %s", lead.ref, "acknowledgement" if item.payload.get("auto") else "reply")
        return Delivered(f"<{message_id}>", left_out)
