"""The SLA clock: due times for new leads and the sweep that marks warnings and breaches.

Due times are computed once, on the business calendar, and stored on the lead; the sweep
asks the store for marks whose time has passed and the store claims each exactly once,
so several hub processes on one database never alert twice.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from datetime import datetime, timedelta

from hub.calendar import Calendar
from hub.config import SlaPolicy, SlaSettings
from hub.domain import Event, EventType, LeadKind
from hub.events import EventBus
from storage.base import Store

log = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class DueTimes:
    first_response_due: datetime
    warn_due: datetime


class SlaClock:
    """Computes due times from the policies and the calendar."""

    def __init__(self, settings: SlaSettings, calendar: Calendar) -> None:
        self._settings = settings
        self.calendar = calendar

    def policy(self, kind: LeadKind) -> SlaPolicy:
        """The policy for a lead kind (config validation guarantees one exists)."""
        return self._settings.policies[kind]

    def due_times(self, kind: LeadKind, start: datetime) -> DueTimes:
        """First-response due time and its warning time for a lead opened at `start`."""
        policy = self.policy(kind)
        due = self.calendar.add(start, policy.first_response)
        warn = self.calendar.add(
            start, timedelta(seconds=policy.first_response.total_seconds() * policy.warn_at)
        )
        return DueTimes(first_response_due=due, warn_due=warn)


class SlaSweeper:
    """Claims passed warning and breach marks and publishes them, a bounded batch at a time."""

    def __init__(self, store: Store, bus: EventBus, batch: int = 500) -> None:
        self._store = store
        self._bus = bus
        self._batch = batch

    async def sweep(self, now: datetime) -> tuple[int, int]:
        """Mark every warning and breach due by `now`; returns (warnings, breaches) claimed."""
        warnings = await self._drain(now, warning=True)
        breaches = await self._drain(now, warning=False)
        return warnings, breaches

    async def _drain(self, now: datetime, warning: bool) -> int:
        total = 0
        # Bounded: a backlog after downtime is caught up in batches, each claimed atomically.
        for _ in range(10_000):
            if warning:
                leads = await self._store.claim_due_warnings(now, self._batch)
            else:
                leads = await self._store.claim_due_breaches(now, self._batch)
            for lead in leads:
                kind = EventType.SLA_WARNING if warning else EventType.SLA_BREACHED
                log.warning(
                    "%s %s: first response due %s, assignee %s",
                    kind.value,
                    lead.ref,
                    lead.first_response_due.isoformat() if lead.first_response_due else "-",
                    lead.assignee or "unassigned",
                )
                # The store recorded the durable event in the claim; this tells live listeners.
                event = Event(
                    type=kind.value,
                    at=now,
                    lead_number=lead.number,
                    data={"assignee": lead.assignee, "team": lead.team},
                )
                await self._bus.publish(event, lead)
            total += len(leads)
            if len(leads) < self._batch:
                break
        return total
