"""The unassigned queue drains by itself, and leads move when their owner goes away.

`drain(now)` hands unassigned active leads, oldest first, to whoever is eligible now. The app
calls it when someone may have become eligible: a manager comes back, a lead is resolved
(capacity freed), and on a timer (a shift starts). Each lead is claimed through the router's
compare-and-set, so drains running in two processes at once never double-assign a lead's
slot; the router's lead.assigned event records why.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from datetime import datetime

from hub.domain import Event, EventType, Lead
from hub.events import EventBus
from routing.router import ConfigRouter
from storage.base import Store

log = logging.getLogger(__name__)


class QueueDrainer:
    """Assigns the unassigned queue oldest first; reassigns leads of managers who go away."""

    def __init__(self, store: Store, router: ConfigRouter, batch: int = 200) -> None:
        self._store = store
        self._router = router
        self._batch = batch
        self._lock = asyncio.Lock()

    async def drain(self, now: datetime) -> int:
        """Assign what can be assigned now; returns how many leads got an owner."""
        assigned = 0
        async with self._lock:
            leads = await self._store.oldest_unassigned(self._batch)
            stuck_teams: set[str | None] = set()
            for lead in leads:
                # Once nobody in a team could take its oldest lead, its younger ones wait too.
                if lead.team in stuck_teams:
                    continue
                assignee, taken = await self._router.reroute_outcome(lead, now, "unassigned queue")
                if assignee and not taken:
                    assigned += 1
                elif not taken:
                    stuck_teams.add(lead.team)
        if assigned:
            log.info("unassigned queue: %d lead(s) assigned", assigned)
        return assigned

    async def reassign_from(self, manager_id: str, now: datetime, why: str) -> int:
        """Route a manager's active leads to others (leads nobody can take join the queue)."""
        moved = 0
        for lead in await self._store.active_leads_of(manager_id, self._batch):
            if await self._router.reroute(lead, now, why, exclude=[manager_id], unassign_if_nobody=True):
                moved += 1
        log.info("manager %s: %d lead(s) reassigned (%s)", manager_id, moved, why)
        return moved

    async def reassign_one(self, lead: Lead, now: datetime, why: str) -> str | None:
        """Route one lead to someone other than its current owner (breach escalation)."""
        exclude = [lead.assignee] if lead.assignee else []
        return await self._router.reroute(lead, now, why, exclude=exclude)

    def subscribe(self, bus: EventBus, now: Callable[[], datetime]) -> None:
        """Drain after a lead is resolved (its owner may be under capacity again)."""

        async def on_event(event: Event, lead: Lead | None) -> None:
            if event.type == EventType.LEAD_RESOLVED.value:
                # The action's own time: tests and replays pass theirs, live actions pass now.
                await self.drain(min(event.at, now()))

        bus.subscribe("routing.queue", on_event)
