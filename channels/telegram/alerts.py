"""SLA alerts to the alerts chat, posted from the store's event log by one process at a time.

The sweep claims a mark and records its sla.* event in one write (see `hub.sla`). Posting
the alert from the sweeping process's memory would lose every alert of a batch it claimed
and did not finish announcing when it dies, and two processes sharing one queue in the
store would race. So one process (a store lease) walks the event log past a cursor kept in
the store, posts each alert and then moves the cursor: a claim is announced whoever made it.
The window left: the holder killed after Telegram accepted a post and before the cursor
moved posts that one alert again (Telegram's sendMessage has no idempotency key).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from datetime import timedelta
from typing import TYPE_CHECKING

from aiogram.exceptions import TelegramBadRequest
from aiogram.methods import SendMessage

from channels.telegram.api import TelegramApi
from hub.domain import Event, EventType, utcnow
from hub.errors import PermanentError, TransientError
from hub.tasks import stop_task
from storage.base import StoreError

if TYPE_CHECKING:
    from channels.telegram.desk import StaffDesk
    from hub.app import Hub

log = logging.getLogger(__name__)

LEASE = "telegram:alerts"
CURSOR_KEY = "tg.alerts.cursor"
TYPES = [EventType.SLA_WARNING.value, EventType.SLA_BREACHED.value, EventType.SLA_ESCALATED.value]
#: With no cursor yet (a new database, or an upgrade), older alerts are not posted again.
FIRST_LOOK_BACK = timedelta(hours=1)
MONGO_SETTLE_SECONDS = 3.0


class AlertRelay:
    """Posts every sla.warning / sla.breached / sla.escalated event to `telegram.alerts_chat_id`."""

    def __init__(
        self, hub: Hub, api: TelegramApi, desk: StaffDesk, every: float = 1.0, lease_seconds: float = 10.0
    ) -> None:
        self._hub = hub
        self._api = api
        self._desk = desk
        self._every = every
        self._lease_seconds = lease_seconds
        self._wake = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self._holding = False
        self.posted = 0

    def start(self) -> None:
        """Start the relay loop (it posts only while it holds the lease)."""
        if self._task is None and self._hub.settings.telegram.alerts_chat_id is not None:
            self._task = asyncio.create_task(self._run(), name="telegram-alerts")

    async def stop(self) -> None:
        """Stop and give the lease up, so another process takes over at once."""
        if self._task is not None:
            await stop_task(self._task)
            self._task = None
        if self._holding:
            with contextlib.suppress(StoreError):
                await self._hub.store.release_lease(LEASE, self._hub.instance_id)
            self._holding = False

    async def on_event(self, event: Event, lead: object) -> None:
        """Bus subscriber: an alert was claimed here; post it now rather than on the next tick."""
        if event.type in TYPES:
            self._wake.set()

    async def _run(self) -> None:
        delay = self._every
        while True:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wake.wait(), timeout=delay)
            self._wake.clear()
            delay = self._every
            try:
                if await self._lease():
                    await self.drain()
            except TransientError as exc:
                delay = max(self._every, exc.retry_after or 5.0)
                log.warning("telegram alerts: postponed %.1fs: %s", delay, exc)
            except StoreError as exc:
                log.warning("telegram alerts: store unavailable, will retry: %s", exc)

    async def _lease(self) -> bool:
        held = await self._hub.store.acquire_lease(
            LEASE, self._hub.instance_id, utcnow(), self._lease_seconds
        )
        if held != self._holding:
            log.info("telegram alerts: this process %s posting alerts", "starts" if held else "stops")
            self._holding = held
        return held

    async def drain(self, batch: int = 100) -> int:
        """Post every alert past the cursor, moving the cursor after each one."""
        chat = self._hub.settings.telegram.alerts_chat_id
        if chat is None:
            return 0
        store = self._hub.store
        cursor = await store.get_state(CURSOR_KEY)
        since = None if cursor is not None else utcnow() - FIRST_LOOK_BACK
        after = int(cursor) if cursor is not None else 0
        # MongoDB takes event ids from a counter before the insert, so a lower id can commit
        # after a higher one; the relay stays a few seconds behind there so none is passed over.
        settle = store.backend == "mongo"
        settled = utcnow() - timedelta(seconds=MONGO_SETTLE_SECONDS)
        posted = 0
        renewed = time.monotonic()
        for _ in range(10_000):
            events = await store.list_events(types=TYPES, limit=batch, after_id=after)
            for event in events:
                assert event.id is not None
                if settle and event.at > settled:
                    self._wake_later()
                    return posted
                if (since is None or event.at >= since) and event.lead_number is not None:
                    await self._post(chat, event)
                    posted += 1
                after = event.id
                await store.set_state(CURSOR_KEY, after)
                if time.monotonic() - renewed > self._lease_seconds / 3:
                    # A long backlog must not outlive the lease (another holder would repeat it).
                    if not await self._lease():
                        return posted
                    renewed = time.monotonic()
            if len(events) < batch:
                break
        return posted

    def _wake_later(self) -> None:
        asyncio.get_running_loop().call_later(MONGO_SETTLE_SECONDS, self._wake.set)

    async def _post(self, chat: int, event: Event) -> None:
        assert event.lead_number is not None
        lead = await self._hub.store.get_lead(event.lead_number)
        if lead is None:
            return
        data = dict(event.data)
        if "notify" not in data:
            data["notify"] = self._hub.sweeper.who_to_notify(lead, str(data.get("level", "")))
        text = self._desk.alert_text(lead, event.type != EventType.SLA_WARNING.value, data)
        try:
            await self._api.call(SendMessage(chat_id=chat, text=text), chat)
        except (PermanentError, TelegramBadRequest) as exc:
            # The chat refuses us for good (bot removed, chat gone): skipping is all we can do.
            log.error("%s telegram: alert to the alerts chat dropped: %s", lead.ref, exc)
            return
        self.posted += 1
