"""In-process fan-out of domain events to the parts that react to them (notifier, metrics).

The store's event log is the durable record; this bus only tells live subscribers. A failing
subscriber is logged and the others still run (one broken channel must not stop intake).
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable

from hub.domain import Event, Lead

log = logging.getLogger(__name__)

Subscriber = Callable[[Event, Lead | None], Awaitable[None]]


class EventBus:
    """Publishes events to subscribers in the order they subscribed."""

    def __init__(self) -> None:
        self._subscribers: list[tuple[str, Subscriber]] = []

    def subscribe(self, name: str, subscriber: Subscriber) -> None:
        """Register a subscriber under a unique name (a duplicate name is a wiring bug)."""
        if any(existing == name for existing, _ in self._subscribers):
            raise ValueError(f"event subscriber {name!r} is registered twice")
        self._subscribers.append((name, subscriber))

    async def publish(self, event: Event, lead: Lead | None = None) -> None:
        """Hand the event to every subscriber; errors are logged, never raised."""
        for name, subscriber in self._subscribers:
            try:
                await subscriber(event, lead)
            except Exception:
                ref = lead.ref if lead else "-"
                log.exception("subscriber %s failed on %s for lead %s", name, event.type, ref)
