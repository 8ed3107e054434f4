"""The config-driven router: rules pick a team, the team's strategy picks a manager.

Strategies (`teams.<name>.strategy`):
- `round_robin`: a cursor per team, kept in the store, walks the team's eligible members in
  config order, so an away or inactive member's turns are shared by everyone, not handed to
  the next in the roster; fair across restarts and across processes (the cursor is
  incremented atomically, so every decision gets its own turn).
- `least_loaded`: the eligible manager with the smallest priority-weighted load (each active
  lead counts 1 + its priority); ties are broken by the round-robin cursor.
- `sticky`: a returning customer goes back to the manager who served their last lead, if that
  manager is eligible; otherwise least_loaded.

What we guarantee under concurrency: the final write is a compare-and-set in the store
(`assign_if_load`): a lead goes to the chosen manager only if that manager's load is still
the load the decision was based on. SQLite takes its write lock for that check-and-write,
so two hub processes on one file never both hand out the same "slot"; the loser re-reads the
loads and decides again (bounded retries). In one process an asyncio lock also serializes
decisions, so retries only happen between processes. That lock is not held across commit
waits (`Store.deferred_commit`): a decision's writes are visible to the next decision in this
process as soon as they are applied, and the caller hears of the decision once they are durable.
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
from collections.abc import Sequence
from datetime import datetime
from typing import Any

from hub.config import ManagerSettings, Settings
from hub.domain import Event, EventType, Lead
from hub.events import EventBus
from hub.ports import ApplyDecision, CreateRouted, RoutingDecision, RoutingRequest
from hub.sla import SlaClock, update_clock
from routing.availability import Availability, why_not_eligible
from routing.rules import first_match
from storage.base import LeadChanges, Store

log = logging.getLogger(__name__)

_MAX_ATTEMPTS = 25
#: The decision's reason when no team on the way had an eligible manager.
_NOBODY_ELIGIBLE = "unassigned: nobody eligible"


def rotate(members: Sequence[ManagerSettings], turn: int) -> list[ManagerSettings]:
    """The members starting at position `turn` (1-based cursor), wrapping around."""
    if not members:
        return []
    start = (turn - 1) % len(members)
    return [*members[start:], *members[:start]]


def choose(
    strategy: str,
    roster: Sequence[ManagerSettings],
    eligible_ids: set[str],
    loads: dict[str, tuple[int, int]],
    turn: int,
    sticky_id: str | None = None,
) -> tuple[ManagerSettings | None, str]:
    """Pick a manager from the roster by strategy; returns (manager, why) (pure function)."""
    # The eligible members are rotated, not the whole roster: rotating the roster and then
    # skipping the ineligible gave each skipped member's turns to the one after them.
    order = rotate([m for m in roster if m.id in eligible_ids], turn)
    if not order:
        return None, "nobody eligible"
    if strategy == "sticky" and sticky_id is not None and sticky_id in eligible_ids:
        chosen = next(m for m in order if m.id == sticky_id)
        return chosen, "sticky: served this customer last"
    if strategy == "round_robin":
        return order[0], f"round robin turn {turn}"
    lowest = min(loads[m.id][1] for m in order)
    chosen = next(m for m in order if loads[m.id][1] == lowest)
    prefix = "sticky manager not eligible; " if strategy == "sticky" and sticky_id else ""
    return chosen, f"{prefix}least loaded (weighted load {lowest})"


class ConfigRouter:
    """Routes by `routing.rules` and `teams.<name>.strategy` (least_loaded, round_robin, sticky)."""

    def __init__(
        self,
        settings: Settings,
        store: Store,
        availability: Availability,
        bus: EventBus | None = None,
        clock: SlaClock | None = None,
    ) -> None:
        self._settings = settings
        self._store = store
        self._availability = availability
        self._bus = bus
        self._clock = clock
        self._lock = asyncio.Lock()
        for manager in settings.managers:
            availability.shift(manager)  # bad working hours stop start-up, naming the key

    def team_members(self, team: str) -> list[ManagerSettings]:
        """Managers of a team in config order."""
        return [m for m in self._settings.managers if team in m.teams]

    def _pick_team(self, request: RoutingRequest) -> tuple[str | None, dict[str, Any], int, tuple[str, ...]]:
        match = first_match(self._settings.routing.rules, request)
        if match is not None:
            return (
                match.rule.team,
                {"rule": match.label},
                match.rule.priority,
                tuple(match.rule.tags),
            )
        if request.preferred_team:
            return request.preferred_team, {"rule": f"forms.{request.form_id}.team"}, 0, ()
        default = self._settings.routing.default_team or next(iter(self._settings.teams), None)
        return default, {"rule": "default_team"}, 0, ()

    async def route(self, request: RoutingRequest, now: datetime, apply: ApplyDecision) -> RoutingDecision:
        """Pick team and manager for a new lead, claim the slot in the store, then `apply`."""
        team, reason, priority, tags = self._pick_team(request)
        # Writes under the lock do not wait for their commit (the next decision reads them on
        # this process's connection at once); the block's end waits, outside the lock.
        async with self._store.deferred_commit():
            async with self._lock:
                assignee, team = await self._assign_unheld(
                    request, request.lead_number, team, now, reason, priority
                )
            decision = RoutingDecision(
                team=team, assignee=assignee, priority=priority, tags=tags, reason=reason
            )
            # The compare-and-set already wrote what loads count (assignee, team, priority),
            # so the rest of the decision is recorded outside the lock.
            await apply(decision)
        if assignee is None:
            await self._alert_unassigned(request.lead_number, team, now, reason)
        return decision

    async def open_routed(
        self, request: RoutingRequest, now: datetime, create: CreateRouted
    ) -> tuple[Lead, RoutingDecision, bool]:
        """Decide for a lead not stored yet, then let `create` store it routed in one write."""
        team, reason, priority, tags = self._pick_team(request)
        async with self._store.deferred_commit(), self._lock:
            first_team = team
            assignee, team, load = await self._plan(team, request.contact_id, now, reason)
            decision = RoutingDecision(
                team=team, assignee=assignee, priority=priority, tags=tags, reason=reason
            )
            lead, created = await create(decision, load)
            if created and assignee is not None and lead.assignee != assignee:
                # Another process on the store changed that manager's load first: decide
                # again on the stored lead, with the compare-and-set every reroute uses.
                reason["claim_lost"] = assignee
                assignee, team = await self._assign_unheld(
                    request, lead.number, first_team, now, reason, priority
                )
                decision = RoutingDecision(
                    team=team, assignee=assignee, priority=priority, tags=tags, reason=reason
                )
        if created and decision.assignee is None and not reason.get("taken"):
            await self._alert_unassigned(lead.number, decision.team, now, reason)
        return lead, decision, created

    async def _assign_unheld(
        self,
        request: RoutingRequest,
        number: int,
        team: str | None,
        now: datetime,
        reason: dict[str, Any],
        priority: int,
    ) -> tuple[str | None, str | None]:
        """`_assign` for a lead nobody holds; with nobody eligible it keeps the rule's team."""
        assignee, chosen_team = await self._assign(
            number,
            team,
            request.contact_id,
            now,
            reason,
            exclude=(),
            previous=None,
            priority=priority or None,
        )
        if assignee is None:
            reason["result"] = _NOBODY_ELIGIBLE
            return None, team
        return assignee, chosen_team

    async def _plan(
        self, team: str | None, contact_id: str, now: datetime, reason: dict[str, Any]
    ) -> tuple[str | None, str | None, tuple[int, int] | None]:
        """Walk the team and its fallbacks as `_assign` does, deciding without writing the
        lead: (manager, team, the manager's load the decision was based on); with nobody
        eligible, (None, the rule's team, None)."""
        first_team = team
        visited: list[str] = []
        while team is not None and team not in visited:
            visited.append(team)
            detail: dict[str, Any] = {"strategy": self._settings.teams[team].strategy}
            sticky_id = await self._sticky_id(team, contact_id, 0)
            chosen, load, why = await self._pick_member(team, now, (), sticky_id, detail)
            if chosen is not None:
                detail.update(chosen=chosen.id, why=why, attempts=1)
            reason.setdefault("teams", []).append({"team": team, **detail})
            if chosen is not None:
                return chosen.id, team, load
            team = self._settings.teams[team].fallback
        reason["result"] = _NOBODY_ELIGIBLE
        return None, first_team, None

    async def reroute(
        self,
        lead: Lead,
        now: datetime,
        why: str,
        exclude: Sequence[str] = (),
        unassign_if_nobody: bool = False,
    ) -> str | None:
        """Route an existing lead again (queue drain, away, breach); returns the new assignee."""
        assignee, taken = await self.reroute_outcome(lead, now, why, exclude, unassign_if_nobody)
        return None if taken else assignee

    async def reroute_outcome(
        self,
        lead: Lead,
        now: datetime,
        why: str,
        exclude: Sequence[str] = (),
        unassign_if_nobody: bool = False,
    ) -> tuple[str | None, bool]:
        """(new assignee, taken): `taken` when another process routed the lead meanwhile."""
        reason: dict[str, Any] = {"rule": why}
        team = lead.team or self._settings.routing.default_team or next(iter(self._settings.teams), None)
        async with self._store.deferred_commit(), self._lock:
            assignee, chosen_team = await self._assign(
                lead.number, team, lead.contact_id, now, reason, exclude, previous=lead.assignee
            )
            if reason.get("taken"):
                return assignee, True  # another process routed it meanwhile; its event says why
            unassigned = None
            if assignee is None and unassign_if_nobody and lead.assignee is not None:
                unassigned = await self._store.update_lead(
                    lead.number, LeadChanges(clear_assignee=True, updated_at=now)
                )
        # Events go out after the lock: a subscriber may well route again.
        if assignee is None:
            if unassigned is not None:
                await self._record(
                    unassigned,
                    EventType.LEAD_UNASSIGNED,
                    now,
                    {"assignee": None, "team": lead.team, "by": "router", "reason": reason},
                )
            return None, False
        updated = await self._store.get_lead(lead.number) or lead
        if self._clock is not None and chosen_team is not None and chosen_team != lead.team:
            # Another team may have its own policy; claimed marks stay claimed (see retarget).
            clock = self._clock

            def retarget(current: Lead) -> LeadChanges | None:
                changes = clock.retarget(dataclasses.replace(current, team=lead.team), team=chosen_team)
                return None if changes is None else dataclasses.replace(changes, updated_at=now)

            _, updated = await update_clock(self._store, updated, retarget)
        await self._record(
            updated,
            EventType.LEAD_ASSIGNED,
            now,
            {
                "assignee": assignee,
                "team": chosen_team,
                "by": "router",
                "previous": lead.assignee,
                "reason": reason,
            },
        )
        return assignee, False

    async def _record(self, lead: Lead, event_type: EventType, now: datetime, data: dict[str, Any]) -> None:
        event = Event(event_type.value, now, lead.number, data)
        await self._store.append_event(event)
        if self._bus is not None:
            await self._bus.publish(event, lead)

    async def _alert_unassigned(
        self, number: int, team: str | None, now: datetime, reason: dict[str, Any]
    ) -> None:
        log.warning("L-%s: nobody eligible in team %s; the lead waits in the unassigned queue", number, team)
        event = Event(EventType.ROUTING_NOBODY_ELIGIBLE.value, now, number, {"team": team, "reason": reason})
        await self._store.append_event(event)
        if self._bus is not None:
            lead = await self._store.get_lead(number)
            await self._bus.publish(event, lead)

    async def _assign(
        self,
        number: int,
        team: str | None,
        contact_id: str,
        now: datetime,
        reason: dict[str, Any],
        exclude: Sequence[str],
        previous: str | None,
        priority: int | None = None,
    ) -> tuple[str | None, str | None]:
        """Walk the team and its fallbacks; claim the first manager the strategy picks."""
        visited: list[str] = []
        while team is not None and team not in visited:
            visited.append(team)
            assignee, detail = await self._claim_member(
                number, team, contact_id, now, exclude, previous, priority
            )
            reason.setdefault("teams", []).append({"team": team, **detail})
            if detail.get("taken"):
                reason["taken"] = True
                current = await self._store.get_lead(number)
                return (current.assignee, current.team) if current else (None, None)
            if assignee is not None:
                return assignee, team
            team = self._settings.teams[team].fallback
        return None, None

    async def _pick_member(
        self,
        team: str,
        now: datetime,
        exclude: Sequence[str],
        sticky_id: str | None,
        detail: dict[str, Any],
    ) -> tuple[ManagerSettings | None, tuple[int, int], str]:
        """One decision in `team`: (manager, the load it was based on, why); records the
        candidates in `detail`. The manager is None when nobody is eligible."""
        members = self.team_members(team)
        # Loads, availability and this decision's turn are fetched together: one round trip to
        # the store while the lock is held, not one per manager and then one more. Ties (and
        # round_robin itself) rotate through a cursor kept in the store, so the order stays
        # fair across restarts and processes; every decision takes its own turn.
        snapshot = await self._store.routing_snapshot(
            [m.id for m in members],
            [self._availability.away_key(m.id) for m in members if m.active],
            f"routing.rr.{team}",
        )
        loads, turn = snapshot.loads, snapshot.turn
        reasons = self._availability.why_not_available_all(members, now, snapshot.states)
        skipped: dict[str, str] = {}
        eligible: set[str] = set()
        for member, why_not in zip(members, reasons, strict=True):
            if member.id in exclude:
                skipped[member.id] = "excluded (reassigning away from them)"
                continue
            why_not = why_not or why_not_eligible(member, loads[member.id][0], now, False, None)
            if why_not:
                skipped[member.id] = why_not
            else:
                eligible.add(member.id)
        detail.update(
            loads={m: {"leads": n, "weighted": w} for m, (n, w) in loads.items()},
            skipped=skipped,
            candidates=[m.id for m in members if m.id in eligible],
        )
        if sticky_id:
            detail["sticky"] = sticky_id
        if not eligible:
            return None, (0, 0), "nobody eligible"
        chosen, why = choose(self._settings.teams[team].strategy, members, eligible, loads, turn, sticky_id)
        assert chosen is not None
        return chosen, loads[chosen.id], why

    async def _sticky_id(self, team: str, contact_id: str, number: int) -> str | None:
        if self._settings.teams[team].strategy == "sticky" and contact_id:
            return await self._store.last_assignee_of_contact(contact_id, number)
        return None

    async def _claim_member(
        self,
        number: int,
        team: str,
        contact_id: str,
        now: datetime,
        exclude: Sequence[str],
        previous: str | None,
        priority: int | None = None,
    ) -> tuple[str | None, dict[str, Any]]:
        sticky_id = await self._sticky_id(team, contact_id, number)
        detail: dict[str, Any] = {"strategy": self._settings.teams[team].strategy}
        for attempt in range(1, _MAX_ATTEMPTS + 1):
            chosen, load, why = await self._pick_member(team, now, exclude, sticky_id, detail)
            if chosen is None:
                return None, detail
            if await self._store.assign_if_load(number, chosen.id, team, load, now, previous, priority):
                detail.update(chosen=chosen.id, why=why, attempts=attempt)
                return chosen.id, detail
            current = await self._store.get_lead(number)
            if current is None or current.assignee != previous:
                detail.update(taken=True, why="routed by another process meanwhile")
                return None, detail
            log.debug("L-%s: load of %s changed under us, deciding again", number, chosen.id)
        detail["why"] = f"gave up after {_MAX_ATTEMPTS} contended attempts"
        return None, detail
