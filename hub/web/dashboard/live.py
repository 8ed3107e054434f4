"""Live dashboard updates: hub events fanned out to browsers as server-sent events.

An event only says which lead changed and how; the page then fetches what it may see, so
the role checks stay in one place (the views).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
from dataclasses import dataclass, field
from typing import Any

from aiohttp import web

from hub.domain import Event, EventType, Lead

log = logging.getLogger(__name__)

#: Events that change what the queue shows.
LIVE_TYPES = frozenset(
    {
        EventType.LEAD_CREATED,
        EventType.LEAD_ASSIGNED,
        EventType.LEAD_UNASSIGNED,
        EventType.LEAD_STATUS,
        EventType.LEAD_RESOLVED,
        EventType.LEAD_REOPENED,
        EventType.MESSAGE_ADDED,
        EventType.REPLY_RECORDED,
        EventType.DELIVERY_SENT,
        EventType.DELIVERY_FAILED,
        EventType.SLA_WARNING,
        EventType.SLA_BREACHED,
    }
)

HEARTBEAT_SECONDS = 15.0
QUEUE_SIZE = 200


@dataclass(eq=False)
class Listener:
    manager_id: str
    sees_all: bool
    queue: asyncio.Queue[dict[str, Any] | None] = field(default_factory=lambda: asyncio.Queue(QUEUE_SIZE))

    def wants(self, event: Event, lead: Lead | None) -> bool:
        """Agents hear about their own leads, unassigned ones, and any reassignment (one may
        have just left their queue)."""
        if self.sees_all or lead is None:
            return self.sees_all
        return lead.assignee in (None, self.manager_id) or event.type == EventType.LEAD_ASSIGNED


class LiveBroker:
    """Subscribed to the hub's event bus; holds one queue per open event stream."""

    def __init__(self) -> None:
        self._listeners: set[Listener] = set()
        self._closed = False

    async def on_event(self, event: Event, lead: Lead | None) -> None:
        """Bus subscriber: tell every interested listener (a full queue drops its oldest news)."""
        if event.type not in LIVE_TYPES:
            return
        message = {"type": event.type, "lead": lead.ref if lead else None}
        for listener in list(self._listeners):
            if not listener.wants(event, lead):
                continue
            if listener.queue.full():
                with contextlib.suppress(asyncio.QueueEmpty):
                    listener.queue.get_nowait()
            listener.queue.put_nowait(message)

    async def close(self) -> None:
        """End every open stream (on shutdown, so the server does not wait for them)."""
        self._closed = True
        for listener in list(self._listeners):
            with contextlib.suppress(asyncio.QueueFull):
                listener.queue.put_nowait(None)

    async def stream(self, request: web.Request, manager_id: str, sees_all: bool) -> web.StreamResponse:
        """Serve `text/event-stream` until the browser goes away or the hub stops."""
        response = web.StreamResponse(
            headers={
                "Content-Type": "text/event-stream",
                "Cache-Control": "no-store",
                "X-Accel-Buffering": "no",
            }
        )
        await response.prepare(request)
        listener = Listener(manager_id, sees_all)
        self._listeners.add(listener)
        try:
            await response.write(b"retry: 3000\n: connected\n\n")
            while not self._closed:
                try:
                    message = await asyncio.wait_for(listener.queue.get(), HEARTBEAT_SECONDS)
                except TimeoutError:
                    await response.write(b": keep-alive\n\n")
                    continue
                if message is None:
                    break
                data = json.dumps(message, ensure_ascii=False)
                await response.write(f"event: lead\ndata: {data}\n\n".encode())
        except ConnectionResetError:
            log.debug("dashboard event stream of %s closed by the browser", manager_id)
        finally:
            self._listeners.discard(listener)
        return response
