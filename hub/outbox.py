"""The outbox dispatcher: delivers queued rows through each channel's sender, with retries.

The row is the truth: it is claimed before sending (so two processes never send it at the
same time), marked sent after the channel accepted it, retried with jittered exponential
backoff on transient errors and marked failed, once, on permanent ones.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
from datetime import datetime, timedelta

from hub.config import OutboxSettings
from hub.delivery_failures import FAILED, GAVE_UP, MAYBE_SENT, failure_reason
from hub.domain import Event, EventType, OutboxItem, utcnow
from hub.errors import PermanentError, TransientError, UncertainDelivery
from hub.events import EventBus
from hub.ports import Delivered, Sender
from hub.tasks import stop_task
from storage.base import Store, StoreError

log = logging.getLogger(__name__)

CLAIM_SECONDS = 120.0


def backoff_delay(
    attempt: int, base: timedelta, cap: timedelta, rng: random.Random | None = None
) -> timedelta:
    """Full-jitter exponential backoff: uniform in [base/2, min(cap, base * 2**(attempt-1))]."""
    rng = rng or random.Random()
    ceiling = min(cap.total_seconds(), base.total_seconds() * 2 ** max(attempt - 1, 0))
    return timedelta(seconds=rng.uniform(min(base.total_seconds() / 2, ceiling), ceiling))


class OutboxDispatcher:
    """Runs one delivery loop for all registered senders."""

    def __init__(self, store: Store, bus: EventBus, settings: OutboxSettings, holder: str) -> None:
        self._store = store
        self._bus = bus
        self._settings = settings
        self._holder = holder
        self._senders: dict[str, Sender] = {}
        self._wake = asyncio.Event()
        self._task: asyncio.Task[None] | None = None

    def register(self, sender: Sender) -> None:
        """Add a channel's sender; a channel may have only one."""
        if sender.channel in self._senders:
            raise ValueError(f"outbox: a sender for channel {sender.channel!r} is registered twice")
        self._senders[sender.channel] = sender

    @property
    def channels(self) -> frozenset[str]:
        return frozenset(self._senders)

    def wake(self, channel: str = "") -> None:
        """Deliver now instead of at the next poll (called when a reply is queued)."""
        self._wake.set()

    async def start(self) -> None:
        if self._senders and self._task is None:
            self._task = asyncio.create_task(self._run(), name="outbox-dispatcher")

    async def stop(self) -> None:
        if self._task is not None:
            # aiosmtplib's wait_for can swallow a cancellation that races a completing send.
            await stop_task(self._task)
            self._task = None

    async def _run(self) -> None:
        poll = self._settings.poll_every.total_seconds()
        while True:
            try:
                sent = await self.dispatch_once()
            except StoreError as exc:
                log.warning("outbox: store unavailable, retrying in %.0fs: %s", poll, exc)
                sent = 0
            if sent:
                continue
            self._wake.clear()
            # asyncio.timeout, not wait_for: on Python 3.11 wait_for loses a cancellation that
            # arrives as the wake event fires, and stop() then waits forever.
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(poll):
                    await self._wake.wait()

    async def dispatch_once(self, now: datetime | None = None, limit: int = 50) -> int:
        """Claim and deliver one batch of due rows; returns how many were handled."""
        now = now or utcnow()
        items = await self._store.outbox_claim(sorted(self._senders), self._holder, now, CLAIM_SECONDS, limit)
        for item in items:
            await self._deliver(item)
        return len(items)

    async def _deliver(self, item: OutboxItem) -> None:
        lead = await self._store.get_lead(item.lead_number)
        if lead is None:
            # Nobody left to tell in the lead's topic: the failure is on the row and in the log.
            await self._store.outbox_failed(item.id, "the lead no longer exists")
            log.error(
                "L-%s %s: delivery of %s failed: the lead no longer exists",
                item.lead_number,
                item.channel,
                item.message_id,
            )
            return
        contact = await self._store.get_contact(lead.contact_id)
        sender = self._senders[item.channel]
        try:
            delivered = await sender.send(item, lead, contact)
        except PermanentError as exc:
            await self._store.outbox_failed(item.id, str(exc))
            await self._failed(item, str(exc), failure_reason(exc))
            return
        except UncertainDelivery as exc:
            await self._uncertain(item, str(exc))
            return
        except TransientError as exc:
            await self._retry(item, str(exc), exc.retry_after)
            return
        except (OSError, TimeoutError) as exc:
            await self._retry(item, f"{type(exc).__name__}: {exc}", None)
            return
        except StoreError:
            # The store is down, not the row: the loop waits and the claim hands the row back.
            raise
        except Exception as exc:
            # A sender bug on one row (e.g. a header it cannot build) must not end delivery of
            # every other row: give up on this one, as for a permanent failure, and go on.
            log.exception(
                "%s %s: sending outbox row %s (message %s) raised unexpectedly; marked failed",
                lead.ref,
                item.channel,
                item.id,
                item.message_id,
            )
            message = f"the {item.channel} sender failed unexpectedly: {type(exc).__name__}: {exc}"
            await self._store.outbox_failed(item.id, message)
            await self._failed(item, message, FAILED)
            return
        if not isinstance(delivered, Delivered):
            delivered = Delivered(delivered)
        now = utcnow()
        await self._store.outbox_sent(item.id, now, delivered.ref)
        event = Event(
            EventType.DELIVERY_SENT.value,
            now,
            lead.number,
            {"message_id": item.message_id, "channel": item.channel, "ref": delivered.ref},
        )
        await self._store.append_event(event)
        await self._bus.publish(event, lead)
        log.info("%s %s: reply %s delivered", lead.ref, item.channel, item.message_id)
        if delivered.left_out:
            await self._left_out(item, delivered)

    async def _left_out(self, item: OutboxItem, delivered: Delivered) -> None:
        """The reply went out without some of its files: recorded on the lead, so staff are told."""
        lead = await self._store.get_lead(item.lead_number)
        files = [{"name": f.name, "reason": f.reason} for f in delivered.left_out]
        event = Event(
            EventType.DELIVERY_FILES_LEFT_OUT.value,
            utcnow(),
            item.lead_number,
            {"message_id": item.message_id, "channel": item.channel, "files": files},
        )
        await self._store.append_event(event)
        await self._bus.publish(event, lead)
        log.warning(
            "L-%s %s: reply %s went out without %s",
            item.lead_number,
            item.channel,
            item.message_id,
            ", ".join(f"{f.name!r} ({f.reason})" for f in delivered.left_out),
        )

    async def _uncertain(self, item: OutboxItem, error: str) -> None:
        """Sent, but never confirmed: retry once (same Message-ID), then give up as 'maybe sent'."""
        key = f"outbox.uncertain.{item.id}"
        seen = int(await self._store.get_state(key) or 0) + 1
        await self._store.set_state(key, seen)
        if seen > 1:
            message = f"uncertain twice, not retried again (it may have been delivered): {error}"
            await self._store.outbox_failed(item.id, message)
            await self._failed(item, message, MAYBE_SENT)
            return
        log.warning("L-%s %s: delivery uncertain, retrying once: %s", item.lead_number, item.channel, error)
        delay = backoff_delay(item.attempts, self._settings.backoff_base, self._settings.backoff_max)
        await self._store.outbox_retry(item.id, utcnow() + delay, f"uncertain: {error}")

    async def _retry(self, item: OutboxItem, error: str, retry_after: float | None) -> None:
        if item.attempts >= self._settings.max_attempts:
            message = f"gave up after {item.attempts} attempts: {error}"
            await self._store.outbox_failed(item.id, message)
            await self._failed(item, message, GAVE_UP)
            return
        delay = backoff_delay(item.attempts, self._settings.backoff_base, self._settings.backoff_max)
        if retry_after is not None:
            delay = max(delay, timedelta(seconds=retry_after))
        log.warning(
            "L-%s %s: delivery attempt %s failed, retry in %.0fs: %s",
            item.lead_number,
            item.channel,
            item.attempts,
            delay.total_seconds(),
            error,
        )
        await self._store.outbox_retry(item.id, utcnow() + delay, error)

    async def _failed(self, item: OutboxItem, error: str, reason: str) -> None:
        """Record a delivery that failed for good: `reason` (hub.delivery_failures) is what staff
        read; `error`, the channel's own words, stays in the event and the log."""
        lead = await self._store.get_lead(item.lead_number)
        event = Event(
            EventType.DELIVERY_FAILED.value,
            utcnow(),
            item.lead_number,
            {
                "message_id": item.message_id,
                "channel": item.channel,
                "reason": reason,
                "error": error,
                # An acknowledgement the hub wrote itself, not a reply staff are waiting on.
                "automatic": bool(item.payload.get("auto") or item.payload.get("kind") == "ack"),
            },
        )
        await self._store.append_event(event)
        await self._bus.publish(event, lead)
        log.error(
            "L-%s %s: delivery of %s failed for good (%s): %s",
            item.lead_number,
            item.channel,
            item.message_id,
            reason,
            error,
        )
