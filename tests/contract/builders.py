"""Small builders for core objects, so each contract test states only what it is about."""

from __future__ import annotations

from dataclasses import replace
from datetime import UTC, datetime, timedelta
from typing import Any

from hub.domain import (
    ACTIVE_STATUSES,
    Contact,
    Direction,
    Identity,
    IdentityKind,
    Lead,
    LeadKind,
    LeadStatus,
    Message,
    OutboxItem,
    new_id,
)
from storage.base import Store

# Whole seconds: MongoDB keeps milliseconds, SQLite a float; both round-trip these exactly.
T0 = datetime(2026, 3, 2, 9, 0, 0, tzinfo=UTC)


def at(seconds: float = 0, *, minutes: float = 0, hours: float = 0) -> datetime:
    """T0 plus an offset."""
    return T0 + timedelta(seconds=seconds, minutes=minutes, hours=hours)


def email(value: str, name: str = "") -> Identity:
    return Identity(IdentityKind.EMAIL, value, name)


def contact(*identities: Identity, name: str = "Customer", **kw: Any) -> Contact:
    return Contact(id=new_id(), name=name, identities=list(identities), created_at=T0, **kw)


def lead(number: int, contact_id: str = "c-1", **kw: Any) -> Lead:
    fields: dict[str, Any] = {
        "kind": LeadKind.MESSAGE,
        "channel": "webform",
        "status": LeadStatus.NEW,
        "created_at": T0,
        "updated_at": T0,
        "origin_external_id": f"ext-{number}",
    }
    fields.update(kw)
    due = fields.get("first_response_due")
    if (
        due is not None
        and "sla_target" not in kw
        and fields.get("first_response_at") is None
        and fields["status"] in ACTIVE_STATUSES
    ):
        # As the SLA clock starts a new lead: its first response is the running target.
        fields.update(
            sla_target="first_response",
            sla_started_at=fields["created_at"],
            sla_due=due,
            sla_warn_due=fields.get("warn_due"),
        )
    return Lead(number=number, contact_id=contact_id, **fields)


async def new_lead(store: Store, contact_id: str = "c-1", **kw: Any) -> Lead:
    """A stored lead with the next number."""
    number = await store.next_lead_number()
    created, was_new = await store.create_lead(lead(number, contact_id, **kw))
    assert was_new
    return created


def message(lead_number: int, **kw: Any) -> Message:
    fields: dict[str, Any] = {
        "id": new_id(),
        "direction": Direction.IN,
        "channel": "webform",
        "author": "Customer",
        "text": "hello",
        "created_at": T0,
    }
    fields.update(kw)
    return Message(lead_number=lead_number, **fields)


def outbound(lead_number: int, channel: str = "email", **kw: Any) -> tuple[Message, OutboxItem]:
    """An outbound reply and its delivery row (due at creation time unless told)."""
    msg = message(lead_number, direction=Direction.OUT, channel=channel, author="olena", text="reply")
    item_fields: dict[str, Any] = {"created_at": T0, "payload": {"text": "reply", "to": "a@example.com"}}
    item_fields.update(kw)
    item = OutboxItem(id=new_id(), message_id=msg.id, lead_number=lead_number, channel=channel, **item_fields)
    return replace(msg, delivery=item.state), item
