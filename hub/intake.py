"""The one door into the core: `Intake.accept(inbound)`.

Every channel ends here. Idempotent on (channel, external_id): a redelivered inbound returns
the lead it produced before and changes nothing. Each step is itself idempotent, so a crash
between steps is repaired by replaying the same inbound from the inbox.
"""

from __future__ import annotations

import asyncio
import logging
import weakref
from dataclasses import dataclass, field, replace
from datetime import datetime, timedelta

from hub.actions import SPAM_TAG
from hub.domain import (
    Contact,
    Direction,
    Event,
    EventType,
    Inbound,
    Lead,
    LeadKind,
    LeadStatus,
    Message,
    new_id,
    utcnow,
)
from hub.events import EventBus
from hub.ports import Router, RoutingDecision, RoutingRequest
from hub.sla import SlaClock, merge_changes, update_clock
from hub.subjects import follow_up_subject
from storage.base import DuplicateError, LeadChanges, Store

log = logging.getLogger(__name__)


@dataclass(slots=True)
class IntakeResult:
    lead: Lead
    message: Message
    contact: Contact
    created_lead: bool
    duplicate: bool
    events: list[Event] = field(default_factory=list)


class Intake:
    """Turns inbounds into contacts, leads and messages, routes new leads, publishes events."""

    def __init__(
        self,
        store: Store,
        clock: SlaClock,
        router: Router,
        bus: EventBus,
        reopen_within: timedelta = timedelta(days=7),
    ) -> None:
        self._store = store
        self._reopen_within = reopen_within
        self._clock = clock
        self._router = router
        self._bus = bus
        # Messages from one sender are taken one at a time, so a burst from a new customer
        # (an album, three quick messages) opens one lead, not three.
        self._sender_locks: weakref.WeakValueDictionary[tuple[str, str], asyncio.Lock] = (
            weakref.WeakValueDictionary()
        )

    async def accept(self, inbound: Inbound, now: datetime | None = None) -> IntakeResult:
        """Store one customer message in its lead (new or existing); safe to call twice."""
        key = (inbound.sender.kind.value, inbound.sender.value)
        lock = self._sender_locks.get(key)
        if lock is None:
            lock = asyncio.Lock()
            self._sender_locks[key] = lock
        async with lock:
            # One commit wait for the whole inbound instead of one per write; events go out
            # only once everything they describe is durable.
            async with self._store.deferred_commit():
                result = await self._accept(inbound, now or utcnow())
            for event in result.events:
                await self._bus.publish(event, result.lead)
            return result

    async def customer_edited(self, lead_number: int, now: datetime | None = None) -> Lead | None:
        """A customer changed what they wrote on a resolved lead: it reopens with a reply owed, as
        a new message would, unless staff marked it spam. Returns the lead as it is now."""
        now = now or utcnow()
        lead = await self._store.get_lead(lead_number)
        if lead is None or lead.is_active or SPAM_TAG in lead.tags:
            return lead
        lead, events = await self._customer_wrote_again(lead, now)
        if events:
            events = await self._store.append_events(events)
        for event in events:
            await self._bus.publish(event, lead)
        return lead

    async def _accept(self, inbound: Inbound, now: datetime) -> IntakeResult:
        known = await self._store.find_message(inbound.channel, inbound.external_id)
        if known is not None:
            lead = await self._store.get_lead(known.lead_number)
            if lead is None:
                raise LookupError(f"message {known.id} points at missing lead L-{known.lead_number}")
            contact = await self._store.get_contact(lead.contact_id)
            assert contact is not None
            return IntakeResult(lead, known, contact, created_lead=False, duplicate=True)

        contact, fresh = await self._resolve_contact(inbound, now)
        events: list[Event] = []
        lead, created, assigned = await self._find_or_open_lead(inbound, contact, fresh, now)
        if created:
            events.append(
                Event(
                    EventType.LEAD_CREATED.value,
                    now,
                    lead.number,
                    {"channel": lead.channel, "kind": lead.kind.value, "form": lead.form_id},
                )
            )
        events.extend(assigned)
        if (
            not created
            and lead.assignee is None
            and lead.team is None
            and lead.origin_external_id == inbound.external_id
        ):
            # This inbound opened the lead, but it was stored unrouted (by an older version).
            lead, assigned = await self._route(lead, inbound, contact, now)
            events.extend(assigned)

        message = Message(
            id=new_id(),
            lead_number=lead.number,
            direction=Direction.IN,
            channel=inbound.channel,
            author=inbound.sender.display_name or contact.name,
            text=inbound.text,
            html=inbound.html,
            attachments=list(inbound.attachments),
            external_id=inbound.external_id,
            refs=list(inbound.own_refs),
            created_at=inbound.received_at,
            subject="" if created else follow_up_subject(inbound.subject, lead.subject),
        )
        message, stored = await self._store.add_message(message)
        if inbound.own_refs:
            await self._store.add_refs(lead.number, list(inbound.own_refs))
        if stored:
            events.append(
                Event(
                    EventType.MESSAGE_ADDED.value,
                    now,
                    lead.number,
                    {"message_id": message.id, "direction": "in", "channel": inbound.channel},
                )
            )
        if not created and stored:
            if inbound.meta.get("automatic"):
                # An out-of-office or other machine mail is filed, but nobody owes it a reply:
                # it neither reopens the lead nor restarts its SLA clock.
                log.info(
                    "%s %s: automatic message %s filed without a status change",
                    lead.ref,
                    inbound.channel,
                    message.id,
                )
            elif SPAM_TAG in lead.tags and not lead.is_active:
                # Staff called it spam: more of it is kept on the lead, but it does not come
                # back to the queue (nor to the staff topic) with a clock owed.
                log.info(
                    "%s %s: message %s filed on a lead marked spam", lead.ref, inbound.channel, message.id
                )
            else:
                lead, changed = await self._customer_wrote_again(lead, now, inbound.received_at)
                events.extend(changed)

        if events:
            events = await self._store.append_events(events)
        log.info(
            "%s %s: %s message %s",
            lead.ref,
            inbound.channel,
            "new lead," if created else "",
            message.id,
        )
        return IntakeResult(lead, message, contact, created_lead=created, duplicate=not stored, events=events)

    async def _resolve_contact(self, inbound: Inbound, now: datetime) -> tuple[Contact, bool]:
        """The sender's contact, created on first sight (then True); other identities are
        attached when free."""
        everyone = [inbound.sender, *inbound.other_identities]
        contact = await self._store.find_contact_of(everyone)
        if contact is None:
            fresh = Contact(
                id=new_id(),
                name=inbound.sender.display_name or inbound.sender.value,
                identities=list(dict.fromkeys(everyone)),
                created_at=now,
                language=inbound.language,
            )
            try:
                return await self._store.create_contact(fresh), True
            except DuplicateError:
                # Another message from the same person won the race; use its contact.
                contact = await self._store.find_contact_of(everyone)
                if contact is None:
                    raise
        known = {(i.kind, i.value) for i in contact.identities}
        for ident in everyone:
            if (ident.kind, ident.value) in known:
                continue
            if await self._store.add_identity(contact.id, ident):
                contact.identities.append(ident)
            else:
                # Typed into a form, an address proves nothing; staff merge contacts explicitly.
                log.info(
                    "contact %s: identity %s already belongs to another contact",
                    contact.id,
                    ident.kind,
                )
        return contact, False

    async def _find_or_open_lead(
        self, inbound: Inbound, contact: Contact, fresh: bool, now: datetime
    ) -> tuple[Lead, bool, list[Event]]:
        """(lead, created, the routing events of a lead opened now)."""
        # A contact created just now has no leads yet: only a thread reference can name one
        # (a reply from someone in Cc).
        if not fresh:
            replayed = await self._store.find_lead_by_origin(inbound.channel, inbound.external_id)
            if replayed is not None:
                return replayed, False, []
        if inbound.thread.message_ids:
            number = await self._store.find_lead_by_refs(list(inbound.thread.message_ids))
            lead = await self._store.get_lead(number) if number else None
            if lead is not None:
                return await self._continue(lead, inbound, contact, now)
        if fresh:
            return await self._open_lead(inbound, contact, now)
        if inbound.thread.lead_number is not None:
            lead = await self._store.get_lead(inbound.thread.lead_number)
            # A ticket number alone proves nothing: only the lead's own contact may use it.
            if lead is not None and lead.contact_id == contact.id:
                return await self._continue(lead, inbound, contact, now)
        active = await self._store.find_active_lead(contact.id, inbound.channel)
        if active is not None and not (
            # A service request is work of its own (its own team, its own SLA): it must not
            # vanish into the customer's open question. A question may join an open request.
            inbound.kind_hint == LeadKind.SERVICE_REQUEST and active.kind != LeadKind.SERVICE_REQUEST
        ):
            return active, False, []
        return await self._open_lead(inbound, contact, now)

    async def _continue(
        self, lead: Lead, inbound: Inbound, contact: Contact, now: datetime
    ) -> tuple[Lead, bool, list[Event]]:
        """The lead a message on `lead`'s thread goes to: `lead`, or a new one naming it.

        A reply to a thread resolved longer ago than the reopen window is a new request (a
        months-old order's thread reopened the old lead, with its old team and history). Timed
        from when the customer wrote, so a replay decides the same. A machine reply reopens
        nothing, so it is filed on the old lead whatever its age."""
        if lead.is_active or inbound.meta.get("automatic"):
            return lead, False, []
        stopped = lead.resolved_at or lead.updated_at
        if inbound.received_at - stopped <= self._reopen_within:
            return lead, False, []
        opened, created, events = await self._open_lead(inbound, contact, now)
        if created:
            events.append(
                Event(EventType.LEAD_FOLLOWS_UP.value, now, opened.number, {"follows": lead.number})
            )
        return opened, created, events

    async def _open_lead(
        self, inbound: Inbound, contact: Contact, now: datetime
    ) -> tuple[Lead, bool, list[Event]]:
        kind = inbound.kind_hint or LeadKind.MESSAGE
        request = self._routing_request(0, inbound.channel, kind, inbound.form_id, inbound, contact)

        async def create(decision: RoutingDecision, load: tuple[int, int] | None) -> tuple[Lead, bool]:
            # Routed before it is stored: the insert carries the assignee (checked against the
            # load the decision read), and the SLA clock starts on the team's own policy.
            lead = Lead(
                number=0,  # numbered by the store in the same write
                kind=kind,
                channel=inbound.channel,
                contact_id=contact.id,
                status=LeadStatus.NEW,
                created_at=inbound.received_at,
                updated_at=now,
                subject=inbound.subject[:500],
                form_id=inbound.form_id,
                origin_external_id=inbound.external_id,
                assignee=decision.assignee,
                team=decision.team,
                priority=decision.priority,
                tags=sorted(set(decision.tags)),
            )
            return await self._store.create_lead(self._clock.start(lead), expected_load=load)

        lead, decision, created = await self._router.open_routed(request, now, create)
        if not created:
            return lead, False, []
        if lead.assignee == decision.assignee and lead.team == decision.team:
            return lead, True, [self._assignment_event(decision, lead.number, now)]
        # Routed again after the insert (another process won the load): record the outcome.
        lead, event = await self._apply_decision(lead, decision, now)
        return lead, True, [event]

    @staticmethod
    def _routing_request(
        number: int, channel: str, kind: LeadKind, form_id: str, inbound: Inbound, contact: Contact
    ) -> RoutingRequest:
        return RoutingRequest(
            lead_number=number,
            channel=channel,
            kind=kind,
            form_id=form_id,
            subject=inbound.subject,
            text=inbound.text[:5000],
            language=inbound.language or contact.language,
            contact_id=contact.id,
            contact_tags=tuple(contact.tags),
            recipient=str(inbound.meta.get("recipient", "")),
            preferred_team=inbound.meta.get("team"),
        )

    @staticmethod
    def _assignment_event(decision: RoutingDecision, number: int, now: datetime) -> Event:
        event_type = EventType.LEAD_ASSIGNED if decision.assignee else EventType.LEAD_UNASSIGNED
        return Event(
            event_type.value,
            now,
            number,
            {
                "assignee": decision.assignee,
                "team": decision.team,
                "by": "router",
                "reason": decision.reason,
            },
        )

    async def _apply_decision(
        self, lead: Lead, decision: RoutingDecision, now: datetime
    ) -> tuple[Lead, Event]:
        """Write what the router's compare-and-set did not (tags, SLA targets); the event."""
        changes = LeadChanges(
            assignee=decision.assignee,
            team=decision.team,
            priority=decision.priority or None,
            tags=sorted({*lead.tags, *decision.tags}) if decision.tags else None,
            updated_at=now,
        )
        # A team's or priority's own SLA policy moves the due times set at creation.
        retarget = self._clock.retarget(lead, team=decision.team, priority=decision.priority)
        if decision.assignee and not decision.tags and retarget is None:
            # The router's compare-and-set already wrote assignee, team, priority and
            # updated_at: nothing is left to write.
            updated = replace(
                lead,
                assignee=decision.assignee,
                team=decision.team if decision.team is not None else lead.team,
                priority=decision.priority if decision.priority else lead.priority,
                updated_at=now,
            )
        else:

            def recompute(current: Lead) -> LeadChanges:
                # The router's compare-and-set may have written the team and priority already:
                # the policy they replace is the one the lead had before routing.
                before = replace(current, team=lead.team, priority=lead.priority)
                return merge_changes(
                    changes, self._clock.retarget(before, team=decision.team, priority=decision.priority)
                )

            _, updated = await update_clock(self._store, lead, recompute)
        return updated, self._assignment_event(decision, lead.number, now)

    async def _route(
        self, lead: Lead, inbound: Inbound, contact: Contact, now: datetime
    ) -> tuple[Lead, list[Event]]:
        request = self._routing_request(lead.number, lead.channel, lead.kind, lead.form_id, inbound, contact)
        events: list[Event] = []
        updated = lead

        async def apply(decision: RoutingDecision) -> None:
            nonlocal updated
            updated, event = await self._apply_decision(lead, decision, now)
            events.append(event)

        await self._router.route(request, now, apply)
        return updated, events

    async def _customer_wrote_again(
        self, lead: Lead, now: datetime, received_at: datetime | None = None
    ) -> tuple[Lead, list[Event]]:
        """A customer message on an existing lead reopens it, resumes its clock, owes a reply."""
        # SLA time runs from when the customer wrote (a replay after downtime keeps it honest).
        at = min(received_at or now, now)

        def resumed(current: Lead) -> LeadChanges | None:
            changes = self._clock.on_customer_message(current, at)
            return None if changes is None else replace(changes, updated_at=now)

        before, updated = await update_clock(self._store, lead, resumed)
        if updated is before:
            return updated, []
        previous = before.status
        if previous in (LeadStatus.NEW, LeadStatus.OPEN):
            return updated, []
        event_type = (
            EventType.LEAD_REOPENED
            if previous in (LeadStatus.RESOLVED, LeadStatus.CLOSED)
            else EventType.LEAD_STATUS
        )
        return updated, [
            Event(
                event_type.value,
                now,
                lead.number,
                {"from": previous.value, "to": "open", "by": "customer"},
            )
        ]
