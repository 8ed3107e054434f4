"""Whether a manager can take a new lead now: active, not away, on shift, under capacity."""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable, Sequence
from datetime import datetime
from typing import Any

from hub.business_hours import BusinessHours, parse_weekly_hours
from hub.config import ManagerSettings
from storage.base import Store

log = logging.getLogger(__name__)

OnChange = Callable[[str, bool], Awaitable[None]]


def _key(manager_id: str) -> str:
    return f"manager.{manager_id}.away"


def shift_calendar(manager: ManagerSettings) -> BusinessHours | None:
    """The manager's own working hours in their time zone (None: always on shift)."""
    hours = manager.working_hours
    if hours is None or hours.hours == "24x7":
        return None
    key = f"managers[{manager.id}].working_hours.hours"
    return BusinessHours(hours.timezone, parse_weekly_hours(hours.hours, key))


def why_not_eligible(
    manager: ManagerSettings,
    load: int | None,
    now: datetime,
    away: bool,
    shift: BusinessHours | None,
) -> str | None:
    """None if the manager may take a lead at `now`, else a short reason for the decision log
    (`load` None: capacity not checked)."""
    if not manager.active:
        return "inactive"
    if away:
        return "away"
    if shift is not None and not shift.is_on_shift(now):
        return "off shift"
    if load is not None and load >= manager.capacity:
        return f"at capacity ({load}/{manager.capacity})"
    return None


class Availability:
    """Availability flags (set by /away and /back, or the dashboard) live in the store.

    `on_change` (set by the app) reacts to a change: a manager who is back drains the
    unassigned queue; one who goes away may hand their leads on.
    """

    def __init__(self, store: Store, on_change: OnChange | None = None) -> None:
        self._store = store
        self.on_change = on_change
        self._shifts: dict[str, BusinessHours | None] = {}

    async def is_away(self, manager_id: str) -> bool:
        """True when the manager marked themselves away."""
        return bool(await self._store.get_state(_key(manager_id)))

    async def set_away(self, manager_id: str, away: bool) -> None:
        """Record `/away` (True) or `/back` (False), then let the router react."""
        await self._store.set_state(_key(manager_id), away)
        log.info("manager %s is %s", manager_id, "away" if away else "back")
        if self.on_change is not None:
            await self.on_change(manager_id, away)

    def shift(self, manager: ManagerSettings) -> BusinessHours | None:
        """The manager's shift calendar, built once."""
        if manager.id not in self._shifts:
            self._shifts[manager.id] = shift_calendar(manager)
        return self._shifts[manager.id]

    @staticmethod
    def away_key(manager_id: str) -> str:
        """The state key of a manager's away flag."""
        return _key(manager_id)

    def why_not_available_all(
        self, managers: Sequence[ManagerSettings], now: datetime, flags: dict[str, Any]
    ) -> list[str | None]:
        """Inactive, away or off shift, short of capacity (which needs the load), for several
        managers; `flags` holds the state values read under `away_key`."""
        return [
            why_not_eligible(m, None, now, m.active and bool(flags.get(_key(m.id))), self.shift(m))
            for m in managers
        ]

    async def why_not_eligible(self, manager: ManagerSettings, load: int, now: datetime) -> str | None:
        """None if the manager may take a lead now, else a short reason for the decision log."""
        away = await self.is_away(manager.id) if manager.active else False
        return why_not_eligible(manager, load, now, away, self.shift(manager))
