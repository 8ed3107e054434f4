"""The SLA clock: due times for leads and the sweep that marks warnings and breaches.

Targets per policy (`sla.policies.<kind>`, optionally overridden per team and per priority):
`first_response` (from the lead's first message to the first public reply; again from the
customer's message that reopens a lead resolved unanswered), `next_response`
(from a customer message on an answered, still active lead to the next public reply) and
`resolution` (from creation to resolved, paused while the lead waits for the customer).

Due times are computed on the business calendar and stored on the lead; the store arms a mark
for each. The sweep asks the store for marks whose time has passed and the store claims each
exactly once, so several hub processes on one database never alert twice, and a sweep after
downtime reports every missed mark once.
"""

from __future__ import annotations

import hashlib
import logging
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, replace
from datetime import datetime, timedelta
from typing import Any

from hub.calendar import Calendar
from hub.config import SlaEscalation, SlaPolicy, SlaSettings
from hub.domain import ACTIVE_STATUSES, Event, EventType, Lead, LeadKind, LeadStatus, Role
from hub.errors import NotFoundError
from hub.events import EventBus
from storage.base import LeadChanges, LeadQuery, SlaClaim, Store, StoreError

log = logging.getLogger(__name__)

FIRST_RESPONSE = "first_response"
NEXT_RESPONSE = "next_response"
RESOLUTION = "resolution"


@dataclass(frozen=True, slots=True)
class DueTimes:
    first_response_due: datetime
    warn_due: datetime


@dataclass(frozen=True, slots=True)
class EffectivePolicy:
    """A kind's policy with the team's and the priority's overrides applied."""

    targets: dict[str, timedelta]
    warn_at: dict[str, float]
    escalation: SlaEscalation

    def warn_after(self, target: str) -> timedelta:
        """How much working time after the target starts its warning fires."""
        return self.targets[target] * self.warn_at[target]


def merge_changes(base: LeadChanges, extra: LeadChanges | None) -> LeadChanges:
    """`base` with every field `extra` sets laid over it (None / False in `extra` keep `base`)."""
    if extra is None:
        return base
    fields: dict[str, Any] = {}
    for name in LeadChanges.__dataclass_fields__:
        value = getattr(extra, name)
        if value is not None and value is not False and value != {}:
            fields[name] = value
    # Warning times travel with their due times even when they are None (no warning).
    if extra.sla_due is not None:
        fields["sla_warn_due"] = extra.sla_warn_due
    if extra.resolution_due is not None:
        fields["resolution_warn_due"] = extra.resolution_warn_due
    return replace(base, **fields)


class SlaClock:
    """Computes due times from the policies and the calendar, and how they move."""

    def __init__(self, settings: SlaSettings, calendar: Calendar) -> None:
        self._settings = settings
        self.calendar = calendar

    def policy(self, kind: LeadKind) -> SlaPolicy:
        """The policy for a lead kind (config validation guarantees one exists)."""
        return self._settings.policies[kind]

    def effective(self, kind: LeadKind, team: str | None = None, priority: int = 0) -> EffectivePolicy:
        """The kind's policy, overridden by its `teams.<team>` then `priorities.<priority>` entry."""
        base = self.policy(kind)
        targets: dict[str, timedelta | None] = {
            FIRST_RESPONSE: base.first_response,
            NEXT_RESPONSE: base.next_response,
            RESOLUTION: base.resolution,
        }
        default_warn = base.warn_at
        warn: dict[str, float] = {str(k): v for k, v in base.target_warn_at.items()}
        escalation = base.escalation
        for override in (base.teams.get(team or ""), base.priorities.get(priority)):
            if override is None:
                continue
            for name in targets:
                value = getattr(override, name)
                if value is not None:
                    targets[name] = value
            if override.warn_at is not None:
                default_warn = override.warn_at
                warn = {}
            warn.update({str(k): v for k, v in override.target_warn_at.items()})
            escalation = override.escalation or escalation
        active = {name: value for name, value in targets.items() if value is not None}
        return EffectivePolicy(
            targets=active,
            warn_at={name: warn.get(name, default_warn) for name in active},
            escalation=escalation,
        )

    def _due(self, policy: EffectivePolicy, target: str, start: datetime) -> tuple[datetime, datetime]:
        due = self.calendar.add(start, policy.targets[target])
        return due, self.calendar.add(start, policy.warn_after(target))

    def due_times(self, kind: LeadKind, start: datetime) -> DueTimes:
        """First-response due time and its warning time for a lead opened at `start`."""
        due, warn = self._due(self.effective(kind), FIRST_RESPONSE, start)
        return DueTimes(first_response_due=due, warn_due=warn)

    def start(self, lead: Lead) -> Lead:
        """A new lead with every target of its policy started at its creation."""
        policy = self.effective(lead.kind, lead.team, lead.priority)
        due, warn = self._due(policy, FIRST_RESPONSE, lead.created_at)
        lead.first_response_due, lead.warn_due = due, warn
        lead.sla_target, lead.sla_started_at, lead.sla_due, lead.sla_warn_due = (
            FIRST_RESPONSE,
            lead.created_at,
            due,
            warn,
        )
        if RESOLUTION in policy.targets:
            lead.resolution_due, lead.resolution_warn_due = self._due(policy, RESOLUTION, lead.created_at)
        return lead

    def fingerprint(self) -> str:
        """A digest of the policies and the calendar: when it changes, due times are recomputed."""
        raw = self._settings.model_dump_json(include={"policies", "calendar"})
        return hashlib.sha256(raw.encode("utf-8")).hexdigest()[:16]

    def retarget(
        self,
        lead: Lead,
        kind: LeadKind | None = None,
        team: str | None = None,
        priority: int | None = None,
        force: bool = False,
    ) -> LeadChanges | None:
        """New due times after the lead's kind, team or priority (so its policy) changed.

        `force` recomputes even when the policy looks the same (the config itself changed).
        """
        kind = kind or lead.kind
        team = team if team is not None else lead.team
        priority = priority if priority is not None else lead.priority
        old = self.effective(lead.kind, lead.team, lead.priority)
        new = self.effective(kind, team, priority)
        if (old == new and not force) or not lead.is_active:
            return None
        changes = LeadChanges()
        # A mark already claimed in the target's current episode is not armed again: a breach
        # keeps the due time it was reported against, a warning sent is not sent twice.
        if lead.sla_target == FIRST_RESPONSE or (lead.sla_target is None and lead.first_response_at is None):
            if lead.sla_target == FIRST_RESPONSE:
                # This episode's own marks: a reopened lead's earlier breach (breached_at, kept
                # for the KPI) does not hold the new episode to the old policy.
                breached, warned = lead.sla_breached_at is not None, lead.sla_warned_at is not None
            else:  # a lead from before the generalised clock has only the first-response marks
                breached, warned = lead.breached_at is not None, lead.warned_at is not None
            if not breached and lead.first_response_at is None:
                start = lead.sla_started_at or lead.created_at
                due, warn = self._due(new, FIRST_RESPONSE, start)
                changes = replace(
                    changes, sla_target=FIRST_RESPONSE, sla_due=due, sla_warn_due=None if warned else warn
                )
                if start == lead.created_at:
                    changes = replace(changes, first_response_due=due, warn_due=None if warned else warn)
                if lead.sla_started_at is None:
                    # A lead from before the generalised clock: this is its first episode.
                    changes = replace(changes, sla_started_at=lead.created_at)
        elif lead.sla_target == NEXT_RESPONSE and lead.sla_started_at is not None:
            if NEXT_RESPONSE not in new.targets:
                changes = replace(changes, clear_sla=True)
            elif lead.sla_breached_at is None:
                due, warn = self._due(new, NEXT_RESPONSE, lead.sla_started_at)
                changes = replace(
                    changes,
                    sla_target=NEXT_RESPONSE,
                    sla_due=due,
                    sla_warn_due=None if lead.sla_warned_at is not None else warn,
                )
        # Resolution is recomputed only while it has never paused (before the first reply);
        # afterwards the paused spans are not on record and the old due stands. Unanswered, its
        # episode started with the first-response one: at creation, or at the reopen that
        # restarted both (a reopened lead timed from creation would be overdue at once).
        if (
            RESOLUTION in new.targets
            and lead.first_response_at is None
            and lead.sla_paused_at is None
            and lead.res_breached_at is None
        ):
            due, warn = self._due(new, RESOLUTION, lead.sla_started_at or lead.created_at)
            changes = replace(
                changes,
                resolution_due=due,
                resolution_warn_due=None if lead.res_warned_at is not None else warn,
            )
        elif RESOLUTION not in new.targets and lead.resolution_due is not None:
            changes = replace(changes, clear_resolution=True)
        return changes

    def on_reopen(self, lead: Lead, now: datetime, customer_waiting: bool = False) -> LeadChanges | None:
        """Staff reopened a resolved lead: its resolution target starts again from `now`.

        A response is owed as when the customer reopens it: a first response on a lead never
        answered, a next response when the customer's last message (`customer_waiting`) came
        after the last reply; each a new episode timed from `now` (no clock ran while resolved).
        Reopening a lead whose last word was ours owes no response."""
        policy = self.effective(lead.kind, lead.team, lead.priority)
        changes = LeadChanges(clear_sla_paused=lead.sla_paused_at is not None)
        owed = None
        if lead.first_response_at is None:
            owed = FIRST_RESPONSE
        elif customer_waiting:
            owed = NEXT_RESPONSE
        if owed is not None and owed in policy.targets:
            due, warn = self._due(policy, owed, now)
            changes = replace(changes, sla_target=owed, sla_started_at=now, sla_due=due, sla_warn_due=warn)
        if RESOLUTION in policy.targets:
            changes = self._restart_resolution(changes, policy, now)
        return None if changes == LeadChanges() else changes

    def _restart_resolution(
        self, changes: LeadChanges, policy: EffectivePolicy, now: datetime
    ) -> LeadChanges:
        """`changes` plus a resolution target timed afresh from `now` (a reopen)."""
        due, warn = self._due(policy, RESOLUTION, now)
        return replace(
            changes,
            resolution_due=due,
            resolution_warn_due=warn,
            clear_sla_paused=True,
            restart_resolution=True,
        )

    def on_customer_message(self, lead: Lead, now: datetime) -> LeadChanges | None:
        """A customer wrote on an existing lead: reopen, resume the clock, owe a reply.

        The reply owed is a next response, or a first response on a lead resolved unanswered."""
        policy = self.effective(lead.kind, lead.team, lead.priority)
        changes = LeadChanges(updated_at=now)
        changed = False
        reopening = lead.status in (LeadStatus.RESOLVED, LeadStatus.CLOSED)
        if lead.status not in (LeadStatus.NEW, LeadStatus.OPEN):
            changes = replace(changes, status=LeadStatus.OPEN, clear_resolved_at=reopening)
            changed = True
        owes_reply = lead.first_response_at is not None and (lead.sla_target is None or reopening)
        if owes_reply and NEXT_RESPONSE in policy.targets:
            due, warn = self._due(policy, NEXT_RESPONSE, now)
            changes = replace(
                changes, sla_target=NEXT_RESPONSE, sla_started_at=now, sla_due=due, sla_warn_due=warn
            )
            changed = True
        elif reopening and lead.first_response_at is None and FIRST_RESPONSE in policy.targets:
            # Resolved without ever answering: the customer is still owed a first response, a
            # new episode timed from this message (no clock ran, so it could never breach).
            due, warn = self._due(policy, FIRST_RESPONSE, now)
            changes = replace(
                changes, sla_target=FIRST_RESPONSE, sla_started_at=now, sla_due=due, sla_warn_due=warn
            )
            changed = True
        if RESOLUTION in policy.targets:
            if reopening:
                changes = self._restart_resolution(changes, policy, now)
                changed = True
            elif lead.sla_paused_at is not None and lead.resolution_due is not None:
                changes = replace(changes, clear_sla_paused=True)
                changed = True
                left = self.calendar.working_time_between(lead.sla_paused_at, lead.resolution_due)
                # A due time still ahead at the pause was disarmed by it: it is armed again even
                # when no working time is left (a holiday or new hours since), due at once.
                # One already passed stayed armed through the pause and keeps its time.
                if lead.resolution_due > lead.sla_paused_at:
                    warn_at: datetime | None = None
                    if lead.resolution_warn_due is not None and lead.resolution_warn_due > lead.sla_paused_at:
                        warn_left = self.calendar.working_time_between(
                            lead.sla_paused_at, lead.resolution_warn_due
                        )
                        warn_at = self.calendar.add(now, warn_left)
                    elif lead.resolution_warn_due is not None and lead.res_warned_at is None:
                        # The warning fell due while the clock ran and no sweep has claimed it
                        # yet: it stays armed at its own time, as the pause left it.
                        warn_at = lead.resolution_warn_due
                    changes = replace(
                        changes, resolution_due=self.calendar.add(now, left), resolution_warn_due=warn_at
                    )
        elif lead.sla_paused_at is not None:
            changes = replace(changes, clear_sla_paused=True)
            changed = True
        return changes if changed else None


#: How often a clock update is recomputed when the lead's SLA state keeps moving under it.
#: Each retry follows a real change (a claim, a reply, a pause), so a few are plenty.
CLOCK_WRITE_ATTEMPTS = 10


async def update_clock(
    store: Store, lead: Lead, compute: Callable[[Lead], LeadChanges | None]
) -> tuple[Lead, Lead]:
    """Write `compute(lead)` only while the lead's SLA state is still as read; else read again.

    A due time recomputed from a lead read before a sweep claimed one of its marks would arm
    that mark again (a second alert), so the write is a compare-and-set on the state it was
    computed from (`Store.update_lead(expected=...)`). Returns (the lead the changes were
    computed from, the lead after them); nothing to write returns the lead twice."""
    current = lead
    for _ in range(CLOCK_WRITE_ATTEMPTS):
        changes = compute(current)
        if changes is None:
            return current, current
        updated = await store.update_lead(current.number, changes, expected=current)
        if updated is not None:
            return current, updated
        fresh = await store.get_lead(current.number)
        if fresh is None:
            raise NotFoundError(f"{current.ref} does not exist")
        current = fresh
    raise StoreError(f"{lead.ref}: its SLA state kept changing while its due times were updated")


Reassign = Callable[[Lead, datetime, str], Awaitable[str | None]]


class SlaSweeper:
    """Claims passed warning and breach marks and publishes them, a bounded batch at a time.

    Escalation per policy: a warning goes to the assignee; a breach goes to the assignee and
    the team's leads (role lead) and, when the policy says `reassign`, the lead is routed again
    to someone else. Who to notify travels in the event's `notify` list for the notifiers.
    """

    def __init__(
        self,
        store: Store,
        bus: EventBus,
        batch: int = 500,
        clock: SlaClock | None = None,
        team_leads: Callable[[str | None], list[str]] | None = None,
        reassign: Reassign | None = None,
    ) -> None:
        self._store = store
        self._bus = bus
        self._batch = batch
        self._clock = clock
        self._team_leads = team_leads or (lambda team: [])
        self._reassign = reassign
        self.escalations = 0

    async def sweep(self, now: datetime) -> tuple[int, int]:
        """Report every warning and breach due by `now`; returns (warnings, breaches) claimed.

        Escalation steps due by `now` are reported too (counted in `self.escalations`).
        """
        warnings = breaches = 0
        # Bounded: a backlog after downtime is caught up in batches, each claimed atomically.
        for _ in range(10_000):
            claims = await self._store.claim_sla_marks(now, self._batch)
            for claim in claims:
                await self._report(claim, now)
                if claim.level == "warning":
                    warnings += 1
                elif claim.level == "breach":
                    breaches += 1
                else:
                    self.escalations += 1
            if len(claims) < self._batch:
                break
        return warnings, breaches

    def _escalation(self, lead: Lead) -> SlaEscalation:
        if self._clock is None:
            return SlaEscalation()
        return self._clock.effective(lead.kind, lead.team, lead.priority).escalation

    def who_to_notify(self, lead: Lead, level: str) -> list[str]:
        """Manager ids an SLA mark of this level on this lead is addressed to."""
        escalation = self._escalation(lead)
        delayed = escalation.team_lead_after is not None
        # The chain: the assignee hears of the warning and the breach; the team's leads hear of
        # the breach (or, with team_lead_after, of the escalation that follows it); then reassign.
        leads_step = level == "escalation" or (level == "breach" and not delayed)
        notify: list[str] = []
        if lead.assignee and escalation.notify_assignee:
            notify.append(lead.assignee)
        if leads_step and escalation.notify_team_lead:
            notify.extend(m for m in self._team_leads(lead.team) if m not in notify)
        return notify

    async def _report(self, claim: SlaClaim, now: datetime) -> None:
        lead = claim.lead
        kind = {
            "warning": EventType.SLA_WARNING,
            "breach": EventType.SLA_BREACHED,
            "escalation": EventType.SLA_ESCALATED,
        }[claim.level]
        escalation = self._escalation(lead)
        delayed = escalation.team_lead_after is not None
        leads_step = claim.level == "escalation" or (claim.level == "breach" and not delayed)
        notify = self.who_to_notify(lead, claim.level)
        log.warning(
            "%s %s %s: %s mark due %s, assignee %s",
            lead.ref,
            lead.channel,
            kind.value,
            claim.target,
            claim.due.isoformat(),
            lead.assignee or "unassigned",
        )
        # The store recorded the durable event in the claim; this tells live listeners.
        event = Event(
            type=kind.value,
            at=now,
            lead_number=lead.number,
            data={
                "target": claim.target,
                "level": claim.level,
                "due": claim.due.isoformat(),
                "assignee": lead.assignee,
                "team": lead.team,
                "notify": notify,
            },
        )
        await self._bus.publish(event, lead)
        if claim.level == "breach" and delayed and escalation.team_lead_after is not None:
            # Window: a crash between the claim and this write skips the escalation step only.
            step = LeadChanges(
                escalate_at=claim.due + escalation.team_lead_after,
                escalate_target=claim.target,
                updated_at=now,
            )
            # Publishing can take a while (a batch after downtime): a reply that answered the
            # target meanwhile disarmed the step before it was armed, so it must not arm it now.
            await update_clock(
                self._store, lead, lambda current: step if _still_breached(current, claim.target) else None
            )
        if leads_step and escalation.reassign and self._reassign is not None:
            # Read again: an answer that landed while the sweep was publishing ends the breach,
            # and the lead stays with whoever answered it.
            current = await self._store.get_lead(lead.number)
            if current is None or not _still_breached(current, claim.target):
                return
            new_owner = await self._reassign(current, now, f"sla breach: {claim.target}")
            if new_owner:
                log.info("%s %s: reassigned to %s after the breach", lead.ref, lead.channel, new_owner)


def _still_breached(lead: Lead, target: str) -> bool:
    """True while the breached `target` is still the lead's open breach (its step may follow).

    A response target stays breached until a reply answers it or a new episode starts; the
    resolution target until the lead is resolved or reopened."""
    if not lead.is_active:
        return False
    if target == RESOLUTION:
        return lead.res_breached_at is not None
    legacy = target == FIRST_RESPONSE and lead.sla_target is None and lead.first_response_at is None
    return lead.sla_breached_at is not None and (lead.sla_target == target or legacy)


def _same_due_times(lead: Lead, changes: LeadChanges) -> bool:
    """True when applying `changes` would leave every due time as it is."""
    if changes.clear_sla or changes.clear_resolution:
        return False
    same_response = changes.sla_due is None or (
        changes.sla_due == lead.sla_due and changes.sla_warn_due in (None, lead.sla_warn_due)
    )
    same_resolution = changes.resolution_due is None or (
        changes.resolution_due == lead.resolution_due
        and changes.resolution_warn_due == lead.resolution_warn_due
    )
    return same_response and same_resolution


async def retarget_after_config_change(
    store: Store, clock: SlaClock, holder: str, now: datetime, batch: int = 500
) -> int:
    """Recompute due times of active leads once after the SLA policies or calendar changed.

    One process does it (a lease); the new fingerprint is stored when every lead is done, so
    an interrupted run starts over on the next start. Costs O(active leads), once per change.
    """
    key = "sla.policy_fingerprint"
    fingerprint = clock.fingerprint()
    stored = await store.get_state(key)
    if stored == fingerprint:
        return 0
    if stored is None:
        await store.set_state(key, fingerprint)  # a fresh database: nothing to recompute
        return 0
    if not await store.acquire_lease("sla.retarget", holder, now, ttl_seconds=600):
        return 0
    done = 0
    try:
        cursor: str | None = None
        while True:
            page = await store.list_leads(LeadQuery(statuses=tuple(ACTIVE_STATUSES)), batch, cursor)
            for lead in page.items:

                def recompute(current: Lead) -> LeadChanges | None:
                    changes = clock.retarget(current, force=True)
                    if changes is None or _same_due_times(current, changes):
                        return None
                    return replace(changes, updated_at=current.updated_at)

                before, after = await update_clock(store, lead, recompute)
                done += after is not before
            await store.acquire_lease("sla.retarget", holder, now, ttl_seconds=600)
            cursor = page.next_cursor
            if cursor is None:
                break
        await store.set_state(key, fingerprint)
    finally:
        await store.release_lease("sla.retarget", holder)
    log.info("sla: policies or calendar changed; recomputed due times of %d active lead(s)", done)
    return done


def team_leads_from(managers: list[Any]) -> Callable[[str | None], list[str]]:
    """A lookup of the active managers with role lead in a team (for breach escalation)."""

    def leads(team: str | None) -> list[str]:
        return [m.id for m in managers if m.active and m.role == Role.LEAD and team in m.teams]

    return leads
