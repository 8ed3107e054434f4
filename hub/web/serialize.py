"""Core types -> JSON-ready dicts for the API and the dashboard."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from hub.domain import Contact, Event, InboxItem, Lead, Message


def iso(value: datetime | None) -> str | None:
    return value.isoformat() if value else None


def lead_json(lead: Lead) -> dict[str, Any]:
    return {
        "lead": lead.ref,
        "number": lead.number,
        "kind": lead.kind.value,
        "channel": lead.channel,
        "status": lead.status.value,
        "subject": lead.subject,
        "form": lead.form_id or None,
        "contact_id": lead.contact_id,
        "assignee": lead.assignee,
        "team": lead.team,
        "priority": lead.priority,
        "tags": lead.tags,
        "created_at": iso(lead.created_at),
        "updated_at": iso(lead.updated_at),
        "first_response_due": iso(lead.first_response_due),
        "warn_due": iso(lead.warn_due),
        "first_response_at": iso(lead.first_response_at),
        "resolved_at": iso(lead.resolved_at),
        "warned_at": iso(lead.warned_at),
        "breached_at": iso(lead.breached_at),
        # Any response breach (the `breached` filter's meaning): breached_at keeps the first
        # response's alone, a next response's is the current episode's mark.
        "breached": lead.breached_at is not None or lead.sla_breached_at is not None,
        "sla": {
            "target": lead.sla_target,
            "due": iso(lead.sla_due),
            "warn_due": iso(lead.sla_warn_due),
            "resolution_due": iso(lead.resolution_due),
            "paused_since": iso(lead.sla_paused_at),
        },
    }


def contact_json(contact: Contact) -> dict[str, Any]:
    return {
        "id": contact.id,
        "name": contact.name,
        "language": contact.language or None,
        "identities": [{"kind": i.kind.value, "value": i.value} for i in contact.identities],
    }


def message_json(message: Message) -> dict[str, Any]:
    return {
        "id": message.id,
        "direction": message.direction.value,
        "channel": message.channel,
        "author": message.author,
        "subject": message.subject or None,
        "text": message.text,
        "html": message.html or None,
        "attachments": [
            {
                "name": a.name,
                "type": a.content_type,
                "size": a.size,
                "dropped": a.dropped_reason or None,
            }
            for a in message.attachments
        ],
        "delivery": message.delivery.value if message.delivery else None,
        "created_at": iso(message.created_at),
    }


def event_json(event: Event) -> dict[str, Any]:
    return {
        "id": event.id,
        "type": event.type,
        "at": iso(event.at),
        "lead": event.lead_number,
        "data": event.data,
    }


def inbox_json(item: InboxItem) -> dict[str, Any]:
    return {
        "id": item.id,
        "channel": item.channel,
        "external_id": item.external_id,
        "status": item.status,
        "reason": item.reason or None,
        "received_at": iso(item.received_at),
        "lead": f"L-{item.lead_number}" if item.lead_number else None,
        "attempts": item.attempts,
        "size": len(item.payload),
    }
