"""From fetched bytes to leads: raw first, then bounces, decoding, intake and acknowledgements.

A fetched batch is stored raw as a whole first (parsed once, one commit wait for all of it),
then processed. Messages of one sender are handled in order (a reply must find the lead its
first message opened); different senders are handled concurrently, so the store's group
commit can batch their writes.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import re
from datetime import datetime, timedelta
from typing import TYPE_CHECKING, TypeVar
from zoneinfo import ZoneInfo

from hub import i18n
from hub.attachments import AttachmentStore
from hub.delivery_failures import BOUNCED, RECIPIENT_REFUSED
from hub.domain import AUTO_AUTHOR, Event, EventType, InboxItem, Lead
from hub.errors import DecodeError
from hub.inbox import CLAIM_SECONDS
from storage.base import StoreError

from .decode import CHANNEL, INTAKE_KEY, EmailDecoder
from .imap import Fetched, MailboxPosition
from .parse import ParsedEmail, parse_email, redact
from .parse_pool import Parsed, ParsePool, parse_all
from .smtp import is_own_address, is_own_copy, outbox_id_of
from .text import guess_language

if TYPE_CHECKING:
    from hub.app import Hub
    from hub.intake import IntakeResult

log = logging.getLogger(__name__)

_T = TypeVar("_T")

_FROM = re.compile(rb"^from:[ \t]*(.*(?:\r?\n[ \t].*)*)", re.IGNORECASE | re.MULTILINE)


def _seen_key(position: MailboxPosition, digest: str) -> str:
    return f"email:seen:{position.account}:{position.mailbox}:{digest}"


def external_id(position: MailboxPosition, uid: int, digest: str) -> str:
    """Unique by construction: (account, mailbox, UIDVALIDITY, UID) plus a hash of the bytes."""
    return f"{position.account}/{position.mailbox}/{position.uidvalidity}/{uid}/{digest[:16]}"


def intake_key(parsed: ParsedEmail, digest: str) -> str:
    """The message's idempotency key in intake, from its content: the same mail delivered again
    (another UID, other Received lines) is one message. Without a Message-ID, only the same bytes."""
    if not parsed.message_id:
        return f"bytes:{digest}"
    content = "\0".join(
        [
            parsed.message_id,
            parsed.sender,
            parsed.subject,
            " ".join(parsed.text.split()),  # line endings and re-wrapping are transport, not content
            *(attachment.sha256 for attachment in parsed.attachments),
        ]
    )
    return "mid:" + hashlib.sha256(content.encode("utf-8", "surrogatepass")).hexdigest()


_Stored = tuple[InboxItem, ParsedEmail | None]


def _raise_first(results: list[_T | BaseException]) -> list[_T]:
    """The results of a gather(return_exceptions=True); its first exception raised, if any."""
    for result in results:
        if isinstance(result, BaseException):
            # Nothing is acknowledged upstream: the batch is fetched again and deduplicated.
            raise result
    return [r for r in results if not isinstance(r, BaseException)]


def sender_key(raw: bytes) -> bytes:
    """A cheap grouping key (the From header's bytes) to keep one sender's mail in order."""
    head = raw[: raw.find(b"\r\n\r\n") if b"\r\n\r\n" in raw[:65536] else 65536]
    match = _FROM.search(head)
    return match.group(1).strip().lower() if match else b""


class EmailIngest:
    """The IMAP poller's sink."""

    def __init__(
        self, hub: Hub, decoder: EmailDecoder, attachments: AttachmentStore, parser: ParsePool | None = None
    ) -> None:
        self._hub = hub
        self._parser = parser or ParsePool(0)
        # Parses started when a batch arrived (by the list's identity), taken when it is stored.
        self._prepared: dict[int, asyncio.Future[list[Parsed]]] = {}
        self._settings = hub.settings.email
        self._decoder = decoder
        self._attachments = attachments
        # Parses of the items being processed right now, for their acknowledgement.
        self._parsed: dict[str, ParsedEmail] = {}

    def prepare(self, batch: list[Fetched]) -> None:
        """Start parsing a fetched batch in the parse workers (nothing to do without them)."""
        if not self._parser.enabled:
            return
        while len(self._prepared) >= 4:
            # Batches fetched but never stored (their sink failed): they are fetched again.
            self._forget(next(iter(self._prepared)))
        self._prepared[id(batch)] = asyncio.ensure_future(self._parser.parse([f.raw for f in batch]))

    def forget_prepared(self) -> None:
        """Drop every parse prepared for a batch that will not be stored."""
        for key in list(self._prepared):
            self._forget(key)

    def _forget(self, key: int) -> None:
        future = self._prepared.pop(key)
        future.cancel()
        future.add_done_callback(lambda f: f.cancelled() or f.exception())

    async def __call__(self, batch: list[Fetched], position: MailboxPosition) -> None:
        prepared = self._prepared.pop(id(batch), None)
        parses: list[Parsed | None] = [None] * len(batch)
        if prepared is not None:
            try:
                parses = list(await prepared)
            except Exception:
                # Never let the helper stop the mailbox: parse here instead, as without it.
                log.exception("email: parsing a batch in the parse workers failed; parsing it here")
        parsed_of = {id(f): p for f, p in zip(batch, parses, strict=True)}
        groups: dict[bytes, list[Fetched]] = {}
        for fetched in batch:
            groups.setdefault(sender_key(fetched.raw), []).append(fetched)
        slots = asyncio.Semaphore(self._settings.workers)
        # During a resync, the ids already given to these bytes come in one read for the batch;
        # `known` then also carries ids given earlier in this batch (the same bytes twice).
        digests = {id(f): hashlib.sha256(f.raw).hexdigest() for f in batch}
        known = await self._known_ids(position, list(digests.values()))

        async def store(group: list[Fetched]) -> list[_Stored]:
            stored: list[_Stored] = []
            for fetched in group:
                async with slots:
                    stored.append(
                        await self.store_one(
                            fetched, position, known, parsed_of[id(fetched)], digests[id(fetched)]
                        )
                    )
            return stored

        # First the whole batch raw, under ONE commit wait.
        async with self._hub.store.deferred_commit():
            stored = _raise_first(
                await asyncio.gather(*(store(g) for g in groups.values()), return_exceptions=True)
            )

        # Then processing, outside that block: intake and whatever reacts to its events wait for
        # their own writes as they always do.
        async def process(group: list[_Stored]) -> None:
            for one in group:
                async with slots:
                    await self.process_one(*one)

        _raise_first(await asyncio.gather(*(process(g) for g in stored), return_exceptions=True))

    async def ingest_one(self, fetched: Fetched, position: MailboxPosition) -> None:
        """Store one message raw, then process it; only store outages propagate."""
        await self.process_one(*await self.store_one(fetched, position))

    async def _known_ids(self, position: MailboxPosition, digests: list[str]) -> dict[str, str]:
        """{seen key: external id} stored for these bytes before (only needed during a resync)."""
        if not position.resync:
            return {}
        keys = [_seen_key(position, digest) for digest in digests]
        found = await self._hub.store.get_states(keys)
        return {key: value for key, value in found.items() if isinstance(value, str)}

    async def store_one(
        self,
        fetched: Fetched,
        position: MailboxPosition,
        known_ids: dict[str, str] | None = None,
        parse: Parsed | None = None,
        digest: str = "",
    ) -> _Stored:
        """Parse one message and store it raw in the inbox (its attachments first)."""
        hub = self._hub
        store = hub.store
        digest = digest or hashlib.sha256(fetched.raw).hexdigest()
        seen_key = _seen_key(position, digest)
        if known_ids is None:
            known_ids = await self._known_ids(position, [digest])
        # After a UIDVALIDITY change (or a crash during one) the same bytes under a new UID are the
        # message we already have: keep its original id, so the inbox and intake see one message.
        known = known_ids.get(seen_key)
        ext_id = known or external_id(position, fetched.uid, digest)
        if position.resync:
            known_ids[seen_key] = ext_id  # decided before any await: a copy later in the batch agrees
        if parse is None:
            parse = parse_all([fetched.raw])[0]
        # Unusable mail is stored anyway; decoding it again quarantines it with the reason.
        parsed = None if isinstance(parse, DecodeError) else parse
        if parsed is not None:
            await self._store_attachments(parsed)
        meta = {
            "account": position.account,
            "mailbox": position.mailbox,
            "uidvalidity": position.uidvalidity,
            "uid": fetched.uid,
            "sha256": digest,
        }
        if parsed is not None:
            # Kept with the raw row, so a replay after an upgrade that parses differently still
            # finds the message under the key it was stored with. Rows without it (stored before
            # this key existed) keep their own id as the key: their message may be stored under it.
            meta[INTAKE_KEY] = intake_key(parsed, digest)
        item, _ = await store.inbox_put(
            CHANNEL,
            ext_id,
            fetched.raw,
            hub.now(),
            meta,
            holder=hub.instance_id,
            lease_seconds=CLAIM_SECONDS,
        )
        if known is None:
            await store.set_state(seen_key, ext_id)
        return item, parsed

    async def process_one(self, item: InboxItem, parsed: ParsedEmail | None) -> None:
        """Decode a stored message into a lead (or attach a bounce), then acknowledge it."""
        hub = self._hub
        store = hub.store
        if item.status != "pending":
            return
        try:
            if parsed is not None and parsed.bounce is not None and await self.attach_bounce(item, parsed):
                return
            if parsed is not None and await self.file_own_copy(item, parsed):
                return
            if parsed is not None:
                self._decoder.prime(item.external_id, parsed)
                self._parsed[item.external_id] = parsed
            await hub.inbox.process(item)
        except StoreError:
            raise
        except Exception as exc:
            # A bug in decoding or intake must not stop the mailbox: keep the mail, say why.
            log.exception("email inbox %s: processing failed", item.id)
            await store.inbox_quarantine(item.id, f"processing failed: {type(exc).__name__}: {exc}")
            return
        finally:
            self._decoder.forget(item.external_id)
            self._parsed.pop(item.external_id, None)

    async def after_intake(self, item: InboxItem, result: IntakeResult) -> None:
        """Acknowledge a new lead, whether the poller or the crash replay processed its mail."""
        if result.duplicate:
            log.info(
                "%s email: inbox %s holds message %s, stored before (a copy delivered again, or a replay)",
                result.lead.ref,
                item.id,
                result.message.id,
            )
        if not result.created_lead:
            return
        parsed = self._parsed.pop(item.external_id, None)
        if parsed is None:
            try:
                parsed = parse_email(item.payload)
            except DecodeError:
                return  # intake decoded it, so this does not happen; without a parse, no ack
        await self.acknowledge(result, parsed)

    async def _store_attachments(self, parsed: ParsedEmail) -> None:
        limit = self._settings.max_attachment_bytes
        for attachment in parsed.attachments:
            if len(attachment.data) <= limit:
                await self._attachments.put(attachment.data)

    # --- bounces (RFC 3464) ---------------------------------------------------------------
    async def on_quarantined(self, event: Event, lead: Lead | None) -> None:
        """A bounce replayed from the inbox (after a crash) reaches the decoder, which cannot
        attach it and quarantines it; attach it here instead and mark the item done."""
        if event.type != EventType.INPUT_QUARANTINED.value or event.data.get("channel") != CHANNEL:
            return
        item = await self._hub.store.inbox_get(int(event.data["inbox_id"]))
        if item is None or item.status != "quarantined":
            return
        try:
            parsed = parse_email(item.payload)
        except DecodeError:
            return
        if parsed.bounce is not None:
            await self.attach_bounce(item, parsed)
        else:
            await self.file_own_copy(item, parsed)

    async def file_own_copy(self, item: InboxItem, parsed: ParsedEmail) -> bool:
        """Mark a copy of our own sent mail done without a contact or lead; False if it is not one.

        A Bcc of our replies to the support mailbox (or a server that files sent mail in the
        inbox) made our own address a customer: its lead was acknowledged to ourselves."""
        if not is_own_copy(self._settings.smtp.from_, parsed.sender, parsed.message_id):
            return False
        number = await self._hub.store.find_lead_by_refs([parsed.message_id])
        await self._hub.store.inbox_done(item.id, number)
        log.info("email inbox %s: our own sent mail %s came back; filed, no lead", item.id, parsed.message_id)
        return True

    async def attach_bounce(self, item: InboxItem, parsed: ParsedEmail) -> bool:
        """Record a DSN on the lead of the message it bounces; False when that is not ours."""
        assert parsed.bounce is not None
        bounce = parsed.bounce
        store = self._hub.store
        number = await store.find_lead_by_refs(bounce.original_ids)
        if number is None:
            return False
        if not bounce.failed:
            # "Still being retried": a failure, if it comes, comes as its own report.
            log.info(
                "L-%s email: a delivery delay notice (status %s); the reply stays as it is",
                number,
                bounce.status,
            )
            await store.inbox_done(item.id, number)
            return True
        reason = "bounced"
        if bounce.status:
            reason += f" (status {bounce.status})"
        if bounce.diagnostic:
            reason += f": {bounce.diagnostic}"
        message_id: str | None = None
        for original in bounce.original_ids:
            row_id = outbox_id_of(original)
            row = await store.outbox_get(row_id) if row_id else None
            if row is not None and row.lead_number == number:
                await store.outbox_failed(row.id, reason)
                message_id = row.message_id
                break
        now = self._hub.now()
        event = Event(
            EventType.DELIVERY_FAILED.value,
            now,
            number,
            {
                "message_id": message_id,
                "channel": CHANNEL,
                # 5.1.x: the address does not exist (RFC 3463); anything else: it came back.
                "reason": RECIPIENT_REFUSED if (bounce.status or "").startswith("5.1.") else BOUNCED,
                "error": reason,
                "bounce": True,
                "inbox_id": item.id,
            },
        )
        await store.append_event(event)
        await store.inbox_done(item.id, number)
        lead = await store.get_lead(number)
        await self._hub.bus.publish(event, lead)
        log.warning("L-%s email: a reply bounced: %s", number, redact(reason))
        return True

    # --- acknowledgements -------------------------------------------------------------------
    async def acknowledge(self, result: IntakeResult, parsed: ParsedEmail) -> bool:
        """Queue the templated receipt for a new lead, unless the mail is automatic or rate-limited."""
        settings = self._settings
        lead = result.lead
        if not settings.ack or lead.channel != CHANNEL:
            return False
        if parsed.automatic:
            log.info("%s email: no acknowledgement: the mail is automatic (%s)", lead.ref, parsed.automatic)
            return False
        if is_own_address(settings.smtp.from_, parsed.sender):
            # Mail from our own address (a test, a colleague's forward sent as the support
            # mailbox): the acknowledgement would go to ourselves, or loop.
            log.info("%s email: no acknowledgement: the mail is from our own address", lead.ref)
            return False
        limit = settings.ack_rate_limit
        now = self._hub.now()
        if limit.enabled:
            key = f"email:ack:{parsed.sender}"
            window_start = (now - timedelta(seconds=limit.per_seconds)).timestamp()
            recent = [t for t in (await self._hub.store.get_state(key) or []) if t > window_start]
            if len(recent) >= limit.count:
                log.info("%s email: no acknowledgement: rate limit for this address reached", lead.ref)
                return False
            await self._hub.store.set_state(key, [*recent, now.timestamp()])
        language = i18n.pick_language(
            parsed.content_language
            or result.contact.language
            or guess_language(f"{parsed.subject}\n{parsed.text}")
        )
        text = i18n.text(
            "ack.text", language, lead=lead.ref, due=self._due_text(lead.first_response_due, language)
        )
        await self._hub.replies.record_reply(
            lead.number,
            text,
            author=AUTO_AUTHOR,
            now=now,
            source="email-ack",
            counts_as_response=False,
            payload_extra={"auto": True},
        )
        return True

    def _due_text(self, due: datetime | None, language: str) -> str:
        if due is None:
            return ""
        local = due.astimezone(ZoneInfo(self._hub.settings.sla.calendar.timezone))
        return local.strftime("%d.%m.%Y %H:%M") if language == "uk" else local.strftime("%Y-%m-%d %H:%M")
