"""Connection state that channels report (IMAP logged in, Telegram polling, ...), for /metrics and health."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime

from hub.domain import utcnow


@dataclass(frozen=True, slots=True)
class ChannelState:
    name: str
    connected: bool
    detail: str
    since: datetime


class ChannelStates:
    """The latest state each channel reported; a channel that never reported is absent."""

    def __init__(self) -> None:
        self._states: dict[str, ChannelState] = {}

    def report(self, name: str, connected: bool, detail: str = "", now: datetime | None = None) -> None:
        """Record a channel's connection state (keeps `since` while the state does not change)."""
        previous = self._states.get(name)
        if previous is not None and previous.connected == connected:
            self._states[name] = ChannelState(name, connected, detail, previous.since)
            return
        self._states[name] = ChannelState(name, connected, detail, now or utcnow())

    def snapshot(self) -> list[ChannelState]:
        """Every reported state, by channel name."""
        return [self._states[name] for name in sorted(self._states)]
