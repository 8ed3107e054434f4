"""Outgoing webhook: alert events as a JSON POST to `notify.webhook.url`, retried with backoff.

A bus subscriber. Delivery runs in background tasks so a slow receiver never holds up the
sweep or intake. Transient failures (connection errors, timeouts, 429 and 5xx) are retried
with exponential backoff and jitter up to `max_attempts`; other 4xx answers are permanent and
logged once. Delivery is at-least-once within a running process: receivers de-duplicate on
the `X-Hub-Delivery` header. A process that dies mid-retry does not resend after restart
(the store's event log stays the durable record).
"""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import json
import logging
import random
from typing import Any

import aiohttp

from hub.config import WebhookSettings
from hub.domain import Event, Lead
from hub.errors import PermanentError, TransientError

log = logging.getLogger(__name__)


def webhook_body(event: Event, lead: Lead | None) -> dict[str, Any]:
    """The JSON document receivers get (stable field names)."""
    return {
        "event": event.type,
        "at": event.at.isoformat(),
        "lead": lead.ref if lead else None,
        "lead_number": event.lead_number,
        "data": event.data,
        "lead_summary": (
            {
                "kind": lead.kind.value,
                "status": lead.status.value,
                "channel": lead.channel,
                "team": lead.team,
                "assignee": lead.assignee,
                "priority": lead.priority,
                "subject": lead.subject,
            }
            if lead
            else None
        ),
    }


class WebhookNotifier:
    """Posts the configured event types to one URL."""

    def __init__(self, settings: WebhookSettings) -> None:
        self._settings = settings
        self._session: aiohttp.ClientSession | None = None
        self._tasks: set[asyncio.Task[None]] = set()
        self.delivered = 0
        self.failed = 0

    async def on_event(self, event: Event, lead: Lead | None) -> None:
        """Bus subscriber: queue a delivery for the configured event types."""
        if event.type not in self._settings.events:
            return
        body = json.dumps(webhook_body(event, lead), ensure_ascii=False).encode("utf-8")
        delivery = hashlib.sha256(
            f"{event.type}|{event.lead_number}|{event.at.isoformat()}".encode()
        ).hexdigest()[:32]
        task = asyncio.create_task(self._deliver(body, delivery, lead.ref if lead else "-", event.type))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def drain(self) -> None:
        """Wait for deliveries in flight (tests, shutdown)."""
        while self._tasks:
            await asyncio.gather(*list(self._tasks), return_exceptions=True)

    async def close(self) -> None:
        """Give in-flight deliveries a moment, then cancel the rest and close the session."""
        if self._tasks:
            _, pending = await asyncio.wait(list(self._tasks), timeout=5)
            for task in pending:
                task.cancel()
        if self._session is not None:
            await self._session.close()
            self._session = None

    def _headers(self, body: bytes, delivery: str, event_type: str) -> dict[str, str]:
        headers = {
            **self._settings.headers,
            "Content-Type": "application/json; charset=utf-8",
            "X-Hub-Event": event_type,
            "X-Hub-Delivery": delivery,
        }
        if self._settings.secret is not None:
            key = self._settings.secret.get_secret_value().encode("utf-8")
            headers["X-Hub-Signature-256"] = "sha256=" + hmac.new(key, body, hashlib.sha256).hexdigest()
        return headers

    async def _post(self, body: bytes, headers: dict[str, str]) -> None:
        if self._session is None:
            self._session = aiohttp.ClientSession(
                timeout=aiohttp.ClientTimeout(total=self._settings.timeout.total_seconds())
            )
        try:
            async with self._session.post(self._settings.url, data=body, headers=headers) as resp:
                if resp.status < 300:
                    return
                text = (await resp.text())[:200]
                if resp.status == 429 or resp.status >= 500:
                    raise TransientError(f"HTTP {resp.status}: {text}")
                raise PermanentError(f"HTTP {resp.status}: {text}")
        except (aiohttp.ClientError, TimeoutError) as exc:
            raise TransientError(f"{type(exc).__name__}: {exc}") from exc

    async def _deliver(self, body: bytes, delivery: str, ref: str, event_type: str) -> None:
        headers = self._headers(body, delivery, event_type)
        base = self._settings.backoff_base.total_seconds()
        for attempt in range(1, self._settings.max_attempts + 1):
            try:
                await self._post(body, headers)
            except PermanentError as exc:
                self.failed += 1
                log.error("webhook %s for %s refused, not retrying: %s", event_type, ref, exc)
                return
            except TransientError as exc:
                if attempt == self._settings.max_attempts:
                    self.failed += 1
                    log.error("webhook %s for %s failed after %d attempts: %s", event_type, ref, attempt, exc)
                    return
                delay = base * 2 ** (attempt - 1) * (0.5 + random.random())
                log.warning(
                    "webhook %s for %s: attempt %d failed (%s), retry in %.1fs",
                    event_type,
                    ref,
                    attempt,
                    exc,
                    delay,
                )
                await asyncio.sleep(delay)
            else:
                self.delivered += 1
                return
