"""Staff actions on a lead: assign, unassign, resolve, reopen, change kind, mark as spam. Each
records an event."""

from __future__ import annotations

from datetime import datetime

from hub.config import Settings
from hub.domain import AUTO_AUTHOR, Direction, Event, EventType, Lead, LeadKind, LeadStatus, Message, utcnow
from hub.errors import ConflictError, NotFoundError, ValidationFailed
from hub.events import EventBus
from hub.sla import SlaClock, merge_changes, update_clock
from storage.base import LeadChanges, Store

SPAM_TAG = "spam"
#: The event a change of tags records (the same type Telegram's Spam button writes).
LEAD_TAGGED = "lead.tagged"


def customer_waiting(messages: list[Message]) -> bool:
    """True when the customer's last message came after the last reply to them.

    Automatic messages (an email acknowledgement, author `auto`) answer nothing."""
    last_in = max((m.created_at for m in messages if m.direction == Direction.IN), default=None)
    if last_in is None:
        return False
    replies = (m.created_at for m in messages if m.direction == Direction.OUT and m.author != AUTO_AUTHOR)
    last_reply = max(replies, default=None)
    return last_reply is None or last_in > last_reply


class LeadActions:
    """Commands staff give from the API, the dashboard or Telegram."""

    def __init__(self, store: Store, bus: EventBus, settings: Settings, clock: SlaClock) -> None:
        self._store = store
        self._bus = bus
        self._settings = settings
        self._clock = clock

    async def _lead(self, number: int) -> Lead:
        lead = await self._store.get_lead(number)
        if lead is None:
            raise NotFoundError(f"lead L-{number} does not exist")
        return lead

    async def _record(
        self, lead: Lead, event_type: EventType, now: datetime, data: dict[str, object]
    ) -> None:
        event = Event(event_type.value, now, lead.number, dict(data))
        await self._store.append_event(event)
        await self._bus.publish(event, lead)

    async def assign(self, number: int, manager_id: str, by: str, now: datetime | None = None) -> Lead:
        """Give the lead to a configured manager (manual assignment overrides the router)."""
        now = now or utcnow()
        manager = self._settings.manager(manager_id)
        if manager is None:
            known = ", ".join(m.id for m in self._settings.managers) or "none configured"
            raise ValidationFailed(
                f"unknown manager {manager_id!r}", {"manager": f"not one of: {known}"}, code="no_manager"
            )
        lead = await self._lead(number)
        team = lead.team if lead.team in manager.teams else (manager.teams[0] if manager.teams else lead.team)
        if lead.assignee == manager.id and lead.team == team:
            return lead  # already theirs: no second notice, no second event
        changes = LeadChanges(assignee=manager.id, team=team, updated_at=now)
        # Another team may have its own SLA policy.
        _, lead = await update_clock(
            self._store,
            lead,
            lambda current: merge_changes(changes, self._clock.retarget(current, team=team)),
        )
        await self._record(
            lead,
            EventType.LEAD_ASSIGNED,
            now,
            {"assignee": manager.id, "team": team, "by": by, "reason": {"manual": by}},
        )
        return lead

    async def unassign(self, number: int, by: str, now: datetime | None = None) -> Lead:
        """Take the lead from its manager: it waits in the unassigned queue until the router or a
        person gives it to someone. An unassigned lead stays as it is (no second event)."""
        now = now or utcnow()
        lead = await self._lead(number)
        previous = lead.assignee
        if previous is None:
            return lead
        changes = LeadChanges(clear_assignee=True, updated_at=now)
        lead = await self._store.update_lead(number, changes) or lead
        await self._record(
            lead,
            EventType.LEAD_UNASSIGNED,
            now,
            {"assignee": None, "team": lead.team, "by": by, "previous": previous},
        )
        return lead

    async def resolve(self, number: int, by: str, now: datetime | None = None) -> Lead:
        """Mark the lead resolved; its SLA clocks stop. A customer message reopens it."""
        now = now or utcnow()
        lead = await self._lead(number)
        if lead.status in (LeadStatus.RESOLVED, LeadStatus.CLOSED):
            raise ConflictError(f"{lead.ref} is already {lead.status.value}", code="already_resolved")
        changes = LeadChanges(status=LeadStatus.RESOLVED, resolved_at=now, updated_at=now)
        lead = await self._store.update_lead(number, changes) or lead
        await self._record(lead, EventType.LEAD_RESOLVED, now, {"by": by})
        return lead

    async def reopen(self, number: int, by: str, now: datetime | None = None) -> Lead:
        """Put a resolved lead back in the queue."""
        now = now or utcnow()
        lead = await self._lead(number)
        if lead.is_active:
            raise ConflictError(f"{lead.ref} is already {lead.status.value}", code="already_open")
        changes = LeadChanges(status=LeadStatus.OPEN, clear_resolved_at=True, updated_at=now)
        waiting = lead.first_response_at is not None and customer_waiting(
            await self._store.list_messages(number)
        )

        def reopened(current: Lead) -> LeadChanges:
            if current.is_active:
                raise ConflictError(f"{current.ref} is already {current.status.value}", code="already_open")
            return merge_changes(changes, self._clock.on_reopen(current, now, customer_waiting=waiting))

        _, lead = await update_clock(self._store, lead, reopened)
        await self._record(lead, EventType.LEAD_REOPENED, now, {"by": by})
        return lead

    async def mark_spam(self, number: int, by: str, now: datetime | None = None) -> Lead:
        """Tag the lead `spam` and resolve it if it is open (nothing is owed to a spammer); a
        reopen undoes the resolution, the tag stays as a record."""
        now = now or utcnow()
        lead = await self._lead(number)
        if SPAM_TAG in lead.tags and not lead.is_active:
            raise ConflictError(f"{lead.ref} is already marked as spam", code="already_spam")
        if SPAM_TAG not in lead.tags:
            tags = sorted({*lead.tags, SPAM_TAG})
            lead = await self._store.update_lead(number, LeadChanges(tags=tags, updated_at=now)) or lead
            event = Event(LEAD_TAGGED, now, lead.number, {"tags": tags, "by": by})
            await self._store.append_event(event)
            await self._bus.publish(event, lead)
        if lead.is_active:
            lead = await self.resolve(number, by, now)
        return lead

    async def set_kind(self, number: int, kind: LeadKind, by: str, now: datetime | None = None) -> Lead:
        """Change a lead's kind; an unanswered lead gets the new kind's due time."""
        now = now or utcnow()
        lead = await self._lead(number)
        if lead.kind == kind:
            return lead
        # The new kind's policy moves the due times of the targets still running.
        changes = LeadChanges(kind=kind, updated_at=now)
        _, lead = await update_clock(
            self._store,
            lead,
            lambda current: merge_changes(changes, self._clock.retarget(current, kind=kind)),
        )
        await self._record(lead, EventType.LEAD_STATUS, now, {"kind": kind.value, "by": by})
        return lead
