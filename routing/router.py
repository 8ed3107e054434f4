"""The config-driven router: rules pick a team, the team's strategy picks a manager."""

from __future__ import annotations

import asyncio
from datetime import datetime
from typing import Any

from hub.config import ManagerSettings, Settings
from hub.ports import ApplyDecision, RoutingDecision, RoutingRequest
from routing.availability import Availability
from routing.rules import first_match
from storage.base import Store


class ConfigRouter:
    """Routes by `routing.rules` and `teams.<name>.strategy` (least_loaded, round_robin)."""

    def __init__(self, settings: Settings, store: Store, availability: Availability) -> None:
        self._settings = settings
        self._store = store
        self._availability = availability
        self._lock = asyncio.Lock()

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
        team, reason, priority, tags = self._pick_team(request)
        async with self._lock:
            assignee = None
            visited: list[str] = []
            while team is not None and team not in visited:
                visited.append(team)
                assignee, detail = await self._pick_member(team, now)
                reason.setdefault("teams", []).append({"team": team, **detail})
                if assignee is not None:
                    break
                fallback = self._settings.teams[team].fallback
                if fallback is None:
                    break
                team = fallback
            if assignee is None:
                reason["result"] = "unassigned: nobody eligible"
            decision = RoutingDecision(
                team=team, assignee=assignee, priority=priority, tags=tags, reason=reason
            )
            await apply(decision)
        return decision

    async def _pick_member(self, team: str, now: datetime) -> tuple[str | None, dict[str, Any]]:
        members = self.team_members(team)
        strategy = self._settings.teams[team].strategy
        loads = await self._store.count_active_by_assignee([m.id for m in members])
        skipped: dict[str, str] = {}
        eligible: list[ManagerSettings] = []
        for member in members:
            why_not = await self._availability.why_not_eligible(member, loads[member.id], now)
            if why_not:
                skipped[member.id] = why_not
            else:
                eligible.append(member)
        detail: dict[str, Any] = {"strategy": strategy, "loads": loads, "skipped": skipped}
        if not eligible:
            return None, detail
        if strategy == "least_loaded":
            lowest = min(loads[m.id] for m in eligible)
            eligible = [m for m in eligible if loads[m.id] == lowest]
        # Ties (and round_robin itself) rotate through a cursor kept in the store, so the
        # order stays fair across restarts.
        turn = await self._store.incr_state(f"routing.rr.{team}")
        chosen = eligible[(turn - 1) % len(eligible)]
        detail["candidates"] = [m.id for m in eligible]
        return chosen.id, detail
