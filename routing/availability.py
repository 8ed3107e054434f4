"""Whether a manager can take a new lead now: active, not away, under capacity."""

from __future__ import annotations

from datetime import datetime

from hub.config import ManagerSettings
from storage.base import Store


def _key(manager_id: str) -> str:
    return f"manager.{manager_id}.away"


class Availability:
    """Availability flags (set by /away and /back, or the dashboard) live in the store."""

    def __init__(self, store: Store) -> None:
        self._store = store

    async def is_away(self, manager_id: str) -> bool:
        """True when the manager marked themselves away."""
        return bool(await self._store.get_state(_key(manager_id)))

    async def set_away(self, manager_id: str, away: bool) -> None:
        """Record `/away` (True) or `/back` (False)."""
        await self._store.set_state(_key(manager_id), away)

    async def why_not_eligible(self, manager: ManagerSettings, load: int, now: datetime) -> str | None:
        """None if the manager may take a lead now, else a short reason for the decision log."""
        if not manager.active:
            return "inactive"
        if await self.is_away(manager.id):
            return "away"
        if load >= manager.capacity:
            return f"at capacity ({load}/{manager.capacity})"
        return None
