"""Staff replies and internal notes: recorded with their outbox row in one write.

The first public reply stops the first-response clock. Delivery happens later, through the
outbox dispatcher of the channel chosen here.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Collection
from datetime import datetime
from typing import Any

from hub.delivery_failures import NO_ADDRESS
from hub.domain import (
    Attachment,
    Contact,
    DeliveryState,
    Direction,
    Event,
    EventType,
    IdentityKind,
    Lead,
    LeadStatus,
    Message,
    OutboxItem,
    new_id,
    utcnow,
)
from hub.errors import (
    ConflictError,
    ContactErased,
    IdempotencyKeyReused,
    NotFoundError,
    ValidationFailed,
)
from hub.events import EventBus
from storage.base import DuplicateError, LeadChanges, Store

log = logging.getLogger(__name__)

MAX_REPLY_CHARS = 20_000


def delivery_channels(lead: Lead, contact: Contact | None) -> list[str]:
    """Channels that can reach this customer, best first: the one they wrote on, then others."""
    order: list[str] = []
    if lead.channel in ("email", "telegram"):
        order.append(lead.channel)
    if contact is not None:
        if contact.identity(IdentityKind.EMAIL) and "email" not in order:
            order.append("email")
        if contact.identity(IdentityKind.TELEGRAM) and "telegram" not in order:
            order.append("telegram")
    return order


#: Where internal notes are stored, and the source their form keys are scoped to.
NOTE_CHANNEL = "internal"
NOTE_SOURCE = "note"


def _reply_key(lead_number: int, source: str, external_id: str) -> str:
    """The stored external id of a keyed reply: a key is scoped to its lead and its source.

    It starts with the lead (`L-42:api:...`), so it can never equal an older unscoped `api:...` key.
    """
    return f"L-{lead_number}:{source}:{external_id}"


def _same_request(known: Message, text: str, author: str) -> Message:
    """The stored reply of a retried request; IdempotencyKeyReused if the key came with other content."""
    if known.text != text or known.author != author:
        raise IdempotencyKeyReused(
            f"this idempotency key already recorded a different reply on L-{known.lead_number}: "
            "repeat the same text and author to retry it, or use a new key for a new reply"
        )
    return known


class Replies:
    """Records staff replies and notes on leads."""

    def __init__(
        self,
        store: Store,
        bus: EventBus,
        available_channels: Callable[[], Collection[str]] = frozenset,
        on_queued: Callable[[str], None] | None = None,
    ) -> None:
        self._store = store
        self._bus = bus
        self._available = available_channels
        self._on_queued = on_queued

    async def record_reply(
        self,
        lead_number: int,
        text: str,
        author: str,
        now: datetime | None = None,
        html: str = "",
        attachments: list[Attachment] | None = None,
        source: str = "api",
        external_id: str | None = None,
        counts_as_response: bool = True,
        payload_extra: dict[str, Any] | None = None,
    ) -> Message:
        """Record a public reply and queue its delivery; the first one stops the first-response clock.

        `counts_as_response=False` is for automatic messages (an email acknowledgement): they are
        delivered like replies but neither stop the clock nor change the lead's status. With an
        `external_id`, see `record_keyed_reply`.
        """
        message, _ = await self._record(
            lead_number,
            text,
            author,
            now,
            html,
            attachments,
            source,
            external_id,
            counts_as_response,
            payload_extra,
        )
        return message

    def _channel_for(self, lead: Lead, contact: Contact) -> str | None:
        candidates = delivery_channels(lead, contact)
        available = set(self._available())
        return next((c for c in candidates if c in available), candidates[0] if candidates else None)

    async def delivery_channel(self, lead_number: int) -> str | None:
        """The channel a reply to this lead would go out on now (None: no way to reach the customer)."""
        lead = await self._store.get_lead(lead_number)
        contact = await self._store.get_contact(lead.contact_id) if lead is not None else None
        return self._channel_for(lead, contact) if lead is not None and contact is not None else None

    async def record_keyed_reply(
        self, lead_number: int, text: str, author: str, source: str, key: str
    ) -> tuple[Message, bool]:
        """A reply under an idempotency key: (the message, whether the key had already recorded it).

        The key is the lead's own; reusing it there for another text or author raises IdempotencyKeyReused.
        """
        return await self._record(lead_number, text, author, source=source, external_id=key)

    async def _record(
        self,
        lead_number: int,
        text: str,
        author: str,
        now: datetime | None = None,
        html: str = "",
        attachments: list[Attachment] | None = None,
        source: str = "api",
        external_id: str | None = None,
        counts_as_response: bool = True,
        payload_extra: dict[str, Any] | None = None,
    ) -> tuple[Message, bool]:
        now = now or utcnow()
        text = text.strip()
        if not text and not attachments:
            raise ValidationFailed("a reply needs text", {"text": "must not be empty"}, code="empty_text")
        if len(text) > MAX_REPLY_CHARS:
            raise ValidationFailed(
                "reply too long", {"text": f"at most {MAX_REPLY_CHARS} characters"}, code="too_long"
            )
        lead = await self._store.get_lead(lead_number)
        if lead is None:
            raise NotFoundError(f"lead L-{lead_number} does not exist")
        contact = await self._store.get_contact(lead.contact_id)
        if contact is None:
            # Recorded, it would only fail delivery later: refuse it while someone is there to read why.
            raise ContactErased(
                f"{lead.ref}: its contact was erased, so there is nobody to deliver a reply to"
            )
        channel = self._channel_for(lead, contact)
        key = None
        if external_id is not None:
            # A retried request (same key from the same source, on the same lead) returns the first reply.
            key = _reply_key(lead.number, source, external_id)
            known = await self._find_keyed(lead, source, external_id)
            if known is not None:
                return _same_request(known, text, author), True
        message = Message(
            id=new_id(),
            lead_number=lead.number,
            direction=Direction.OUT,
            channel=channel or lead.channel,
            author=author,
            text=text,
            html=html,
            attachments=list(attachments or []),
            external_id=key,
            created_at=now,
            delivery=DeliveryState.QUEUED if channel else DeliveryState.FAILED,
        )
        item = (
            OutboxItem(
                id=new_id(),
                message_id=message.id,
                lead_number=lead.number,
                channel=channel,
                payload={"text": text, "html": html, "author": author, **(payload_extra or {})},
                created_at=now,
                next_attempt_at=now,
            )
            if channel
            else None
        )
        try:
            await self._store.add_outbound(message, item)
        except DuplicateError:
            # A concurrent retry of the same request won; its reply is the one that counts.
            if key is not None and (known := await self._store.find_message(message.channel, key)):
                return _same_request(known, text, author), True
            raise
        if not counts_as_response:
            # An automatic message (an email acknowledgement) owes nothing and answers nothing.
            changes = LeadChanges(updated_at=now)
        else:
            changes = LeadChanges(
                first_response_at=now if lead.first_response_at is None else None,
                status=LeadStatus.WAITING_CUSTOMER if lead.is_active else None,
                # A public reply answers the response owed; waiting for the customer pauses resolution.
                clear_sla=lead.is_active,
                pause_sla=lead.is_active,
                updated_at=now,
            )
        lead = await self._store.update_lead(lead.number, changes) or lead
        events = [
            Event(
                EventType.REPLY_RECORDED.value,
                now,
                lead.number,
                {
                    "message_id": message.id,
                    "author": author,
                    "channel": message.channel,
                    "source": source,
                },
            )
        ]
        if channel is None:
            events.append(
                Event(
                    EventType.DELIVERY_FAILED.value,
                    now,
                    lead.number,
                    {
                        "message_id": message.id,
                        "reason": NO_ADDRESS,
                        "error": "the contact has no address on any channel",
                    },
                )
            )
        for event in events:
            await self._store.append_event(event)
            await self._bus.publish(event, lead)
        if item is not None and self._on_queued is not None:
            self._on_queued(item.channel)
        log.info("%s: reply %s by %s queued on %s", lead.ref, message.id, author, channel or "(none)")
        return message, False

    async def _find_keyed(self, lead: Lead, source: str, external_id: str) -> Message | None:
        """The reply a key already recorded on this lead, whichever channel it went out on.

        The key belongs to the lead, so the lead's own messages are where to look: the channel is
        chosen per attempt from the contact's addresses, which can change between a request and
        its retry (a merge adds an email). Replies stored before keys were scoped to their lead
        carry `source:key`; on their own lead they are still this request's retry."""
        keys = {_reply_key(lead.number, source, external_id), f"{source}:{external_id}"}
        for message in await self._store.list_messages(lead.number):
            if message.direction == Direction.OUT and message.external_id in keys:
                return message
        return None

    async def add_note(
        self, lead_number: int, text: str, author: str, now: datetime | None = None, key: str | None = None
    ) -> Message:
        """Record an internal note: visible to staff, never sent to the customer.

        With a `key` (the form's, one per rendering of the page), the same text by the same author
        under it is one note however often it is posted; another text under it is a note of its own.
        """
        now = now or utcnow()
        text = text.strip()
        if not text:
            raise ValidationFailed("a note needs text", {"text": "must not be empty"}, code="empty_text")
        if len(text) > MAX_REPLY_CHARS:
            # Refused like a reply: a cut note would lose what staff wrote without telling them.
            raise ValidationFailed(
                "note too long", {"text": f"at most {MAX_REPLY_CHARS} characters"}, code="too_long"
            )
        lead = await self._store.get_lead(lead_number)
        if lead is None:
            raise NotFoundError(f"lead L-{lead_number} does not exist")
        if lead.status == LeadStatus.CLOSED:
            raise ConflictError(f"{lead.ref} is closed", code="closed")
        stored_key = _reply_key(lead.number, NOTE_SOURCE, key) if key is not None else None
        if stored_key is not None:
            known = await self._store.find_message(NOTE_CHANNEL, stored_key)
            if known is not None:
                if known.text == text and known.author == author:
                    return known  # the same form posted again (a double click, a resend)
                stored_key = None  # the same page used again for another note
        message = Message(
            id=new_id(),
            lead_number=lead.number,
            direction=Direction.NOTE,
            channel=NOTE_CHANNEL,
            author=author,
            text=text,
            external_id=stored_key,
            created_at=now,
        )
        try:
            await self._store.add_outbound(message, None)
        except DuplicateError:
            # A concurrent post of the same form won; its note is the one that counts.
            known = await self._store.find_message(NOTE_CHANNEL, stored_key) if stored_key else None
            if known is not None and known.text == text and known.author == author:
                return known
            raise
        event = Event(
            EventType.MESSAGE_ADDED.value,
            now,
            lead.number,
            {"message_id": message.id, "direction": "note"},
        )
        await self._store.append_event(event)
        await self._bus.publish(event, lead)
        return message
