"""Raw input first: every channel stores what it received before acknowledging it.

`InboxProcessor.submit` writes the raw payload, then decodes and accepts it at once; the
replay loop picks up anything a crash or an outage left pending. Input that cannot be
decoded is quarantined with its reason, never dropped.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable
from datetime import datetime
from typing import Any

from hub.domain import Event, EventType, Inbound, InboxItem, utcnow
from hub.errors import DecodeError, IdempotencyKeyReused
from hub.events import EventBus
from hub.intake import Intake, IntakeResult
from hub.tasks import stop_task
from storage.base import Store, StoreError

log = logging.getLogger(__name__)

Decoder = Callable[[InboxItem], Inbound]
#: Handles stored raw input that is not a customer message (staff commands, button presses);
#: returns the lead it concerned, if any. Raises DecodeError when the input is unusable.
Handler = Callable[[InboxItem], Awaitable[int | None]]
#: Runs after intake accepted a channel's item, on the live path and in the replay alike
#: (an email channel acknowledges new leads here, so a crash before processing loses no ack).
AfterIntake = Callable[[InboxItem, IntakeResult], Awaitable[None]]

CLAIM_SECONDS = 60.0


class InboxProcessor:
    """Decodes stored raw input with the channel's decoder and hands it to intake."""

    def __init__(self, store: Store, intake: Intake, bus: EventBus, holder: str) -> None:
        self._store = store
        self._intake = intake
        self._bus = bus
        self._holder = holder
        self._decoders: dict[str, Decoder] = {}
        self._handlers: dict[str, Handler] = {}
        self._after: dict[str, AfterIntake] = {}
        self._task: asyncio.Task[None] | None = None

    def register(self, channel: str, decoder: Decoder, after: AfterIntake | None = None) -> None:
        """Set the decoder for one channel's raw payloads (and what follows its intake)."""
        if channel in self._decoders:
            raise ValueError(f"inbox: a decoder for channel {channel!r} is registered twice")
        self._decoders[channel] = decoder
        if after is not None:
            self._after[channel] = after

    def register_handler(self, channel: str, handler: Handler) -> None:
        """Set the handler for one channel's raw input that does not go through intake."""
        if channel in self._handlers or channel in self._decoders:
            raise ValueError(f"inbox: a handler for channel {channel!r} is registered twice")
        self._handlers[channel] = handler

    async def submit(
        self,
        channel: str,
        external_id: str,
        payload: bytes,
        meta: dict[str, Any] | None = None,
        now: datetime | None = None,
        decoder: Decoder | None = None,
        same: Callable[[InboxItem], bool] | None = None,
    ) -> tuple[InboxItem, IntakeResult | None]:
        """Store raw input, then process it; returns once both are durable (None: quarantined).

        `decoder`: builds the new item's Inbound from the caller's own validated values instead
        of the channel's decoder reading back the bytes just written. An item stored earlier
        under the same key is decoded from its own stored bytes, which may differ.
        `same`: whether an item stored earlier under the same key holds this input; when it
        does not, IdempotencyKeyReused is raised and the stored item is left as it was."""
        now = now or utcnow()
        # The caller answers only after processing, so the raw write need not be durable on its
        # own first: it commits with (or before) intake's writes, one commit wait in all. A crash
        # before that commit loses nothing the sender was told we have.
        async with self._store.deferred_commit():
            item, created = await self._store.inbox_put(
                channel,
                external_id,
                payload,
                now,
                meta,
                holder=self._holder,
                lease_seconds=CLAIM_SECONDS,
            )
            if not created and item.status == "quarantined":
                return item, None
            if not created and same is not None and not same(item):
                # Processing the stored item here would answer with its lead as if this input
                # were it; a pending one is left to the replay.
                raise IdempotencyKeyReused(
                    f"inbox {channel} {external_id!r}: stored before with other content"
                )
            return item, await self.process(item, decoder if created else None)

    async def process(self, item: InboxItem, decoder: Decoder | None = None) -> IntakeResult | None:
        """Decode and accept one item (with `decoder`, else the channel's); quarantine it if it
        cannot be decoded."""
        handler = self._handlers.get(item.channel)
        if handler is not None:
            try:
                lead_number = await handler(item)
            except DecodeError as exc:
                await self._quarantine(item, str(exc))
                return None
            await self._store.inbox_done(item.id, lead_number)
            return None
        decoder = decoder or self._decoders.get(item.channel)
        if decoder is None:
            await self._quarantine(item, f"no decoder for channel {item.channel!r} (is the channel enabled?)")
            return None
        try:
            inbound = decoder(item)
        except DecodeError as exc:
            await self._quarantine(item, str(exc))
            return None
        result = await self._intake.accept(inbound)
        # Not waited for: if a crash loses this mark, the replay finds the message stored and
        # intake returns it as a duplicate.
        async with self._store.deferred_commit(wait=False):
            await self._store.inbox_done(item.id, result.lead.number)
        after = self._after.get(item.channel)
        if after is not None:
            try:
                await after(item, result)
            except StoreError:
                raise
            except Exception:
                # The input is stored and processed: a failing follow-up must not quarantine it.
                log.exception("inbox %s %s: the step after intake failed", item.channel, item.id)
        return result

    async def _quarantine(self, item: InboxItem, reason: str) -> None:
        log.warning("inbox %s %s: quarantined: %s", item.channel, item.id, reason)
        await self._store.inbox_quarantine(item.id, reason)
        event = Event(
            EventType.INPUT_QUARANTINED.value,
            utcnow(),
            None,
            {"inbox_id": item.id, "channel": item.channel, "reason": reason},
        )
        await self._store.append_event(event)
        await self._bus.publish(event, None)

    async def replay_once(self, now: datetime | None = None, limit: int = 100) -> int:
        """Process pending items whose claim lapsed (crash or outage); returns how many."""
        items = await self._store.inbox_claim(self._holder, now or utcnow(), CLAIM_SECONDS, limit)
        for item in items:
            try:
                await self.process(item)
            except StoreError as exc:
                log.warning("inbox %s %s: store error, will retry: %s", item.channel, item.id, exc)
                return len(items)
            except Exception as exc:
                # A bug in decoding or intake must not block the queue: keep the input, say why.
                log.exception("inbox %s %s: processing failed", item.channel, item.id)
                await self._quarantine(item, f"processing failed: {type(exc).__name__}: {exc}")
        return len(items)

    async def start(self, every: float = 5.0) -> None:
        """Replay what a previous run left, then keep retrying in the background."""
        if self._task is None:
            self._task = asyncio.create_task(self._run(every), name="inbox-replay")

    async def _run(self, every: float) -> None:
        while True:
            try:
                # Drain the backlog in bounded batches before sleeping.
                for _ in range(1000):
                    if await self.replay_once() == 0:
                        break
            except StoreError as exc:
                log.warning("inbox replay: store unavailable: %s", exc)
            await asyncio.sleep(every)

    async def stop(self) -> None:
        if self._task is not None:
            await stop_task(self._task)
            self._task = None
