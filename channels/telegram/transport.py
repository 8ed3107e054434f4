"""Getting updates from Telegram, raw first: long polling under a lease, or the webhook.

An update is written to the store's inbox before Telegram learns we have it: the webhook
answers 200 only after the write, and the polling offset (persisted in the store) moves
only past stored updates. aiogram's Dispatcher polling acknowledges first, so it is not used.
"""

from __future__ import annotations

import asyncio
import contextlib
import hmac
import json
import logging
import os
import random
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Any

import aiohttp
from aiohttp import web

from channels.telegram.updates import CONTROL, CUSTOMER, classify, kind_choice, private_sender, update_id_of
from hub.domain import Identity, IdentityKind, InboxItem, utcnow
from hub.errors import DecodeError
from hub.tasks import cancel_until_done
from storage.base import LeadQuery, StoreError

if TYPE_CHECKING:
    from hub.app import Hub

log = logging.getLogger(__name__)

#: How long an update stored by this process stays reserved for its inline processing.
CLAIM_SECONDS = 30.0
#: Updates processed at once (different customers'; one customer's stay in order).
WORKERS = 16
SECRET_HEADER = "X-Telegram-Bot-Api-Secret-Token"
#: Test-only fault injection: seconds to wait between storing an update and processing it.
HOLD_ENV = "HUB_TELEGRAM_TEST_HOLD_AFTER_STORE"
STOP_GRACE_SECONDS = 5.0


class Ingest:
    """Stores one raw update in the inbox, then processes it (once)."""

    def __init__(self, hub: Hub, bot_id: Callable[[], int]) -> None:
        self._hub = hub
        self._bot_id = bot_id
        self._hold = float(os.environ.get(HOLD_ENV, "0") or 0)
        self._staff = frozenset(m.telegram_id for m in hub.settings.managers if m.telegram_id is not None)

    def queue_of(self, data: dict[str, Any]) -> str:
        """The inbox queue of a raw update (a manager's private messages are control traffic)."""
        return classify(data, self._staff)

    def external_id(self, update_id: int) -> str:
        """The inbox key of an update: (bot, update_id)."""
        return f"{self._bot_id()}:{update_id}"

    async def store(self, data: dict[str, Any]) -> tuple[InboxItem, bool]:
        """The durable write; returns (item, created). A redelivered update is not created again."""
        return await self.put(data, await self.meta(data))

    async def meta(self, data: dict[str, Any]) -> dict[str, Any]:
        """What is decided about an update as it is stored (reads only; DecodeError if unusable)."""
        meta: dict[str, Any] = {"update_id": update_id_of(data)}
        if self.queue_of(data) == CUSTOMER:
            sender = (data.get("message") or {}).get("from") or {}
            kind, recent = await asyncio.gather(
                self._hub.store.get_state(f"tg.kind.{sender.get('id')}"),
                self.recent_lead(str(sender.get("id", ""))),
            )
            if kind:
                meta["kind"] = kind
                meta["user"] = sender.get("id")
            if recent is not None:
                meta["lead"] = recent
        return meta

    async def put(self, data: dict[str, Any], meta: dict[str, Any]) -> tuple[InboxItem, bool]:
        """Write one update with its `meta` to the inbox; returns (item, created)."""
        payload = json.dumps(data, ensure_ascii=False, separators=(",", ":")).encode("utf-8")
        return await self._hub.store.inbox_put(
            self.queue_of(data),
            self.external_id(update_id_of(data)),
            payload,
            utcnow(),
            meta,
            holder=self._hub.instance_id,
            lease_seconds=CLAIM_SECONDS,
        )

    async def recent_lead(self, user_id: str) -> int | None:
        """The customer's lead a new message continues: resolved lately, so it reopens.

        Decided when the update is stored (and kept with it), so a replay decides the same.
        """
        if not user_id:
            return None
        contact = await self._hub.store.find_contact(Identity(IdentityKind.TELEGRAM, user_id))
        if contact is None:
            return None
        page = await self._hub.store.list_leads(LeadQuery(contact_id=contact.id), limit=1)
        if not page.items:
            return None
        lead = page.items[0]
        window = self._hub.settings.leads.reopen_within
        if lead.is_active or (lead.resolved_at is not None and utcnow() - lead.resolved_at <= window):
            return lead.number
        return None

    async def process(self, item: InboxItem) -> None:
        """Process a stored update; a failure leaves it pending for the inbox replay."""
        if self._hold > 0:
            await asyncio.sleep(self._hold)
        try:
            result = await self._hub.inbox.process(item)
        except StoreError as exc:
            log.warning("telegram update %s: store error, replay will retry: %s", item.external_id, exc)
            return
        except Exception:
            # Stored input is never lost: the replay loop retries it and quarantines it then.
            log.exception("telegram update %s: processing failed, left for replay", item.external_id)
            return
        if result is not None and result.created_lead and item.meta.get("kind"):
            # The chosen kind applied to the lead it opened; the next lead starts from default.
            await self._hub.store.set_state(f"tg.kind.{item.meta.get('user')}", None)

    async def process_orphans(self) -> int:
        """Process updates a previous poller stored but never processed (it crashed)."""
        pending = await self._hub.store.inbox_list("pending", limit=1000)
        mine = sorted((i for i in pending if i.channel in (CUSTOMER, CONTROL)), key=lambda i: i.id)
        await self.process_all(mine)
        return len(mine)

    async def process_all(self, items: list[InboxItem]) -> None:
        """Process stored updates (in the order given) as if one after another, but faster.

        Different customers' private-chat updates run at once (at most `WORKERS`), each
        customer's strictly in order; an update that may reach across customers (staff
        traffic, contact merges: `updates.private_sender`) waits until everything before it
        is done, and everything after it waits for it.
        """
        slots = asyncio.Semaphore(WORKERS)
        groups: dict[int, list[InboxItem]] = {}

        async def run(group: list[InboxItem]) -> None:
            for item in group:
                async with slots:
                    await self.process(item)

        async def drain() -> None:
            results = await asyncio.gather(*(run(g) for g in groups.values()), return_exceptions=True)
            groups.clear()
            for result in results:
                if isinstance(result, BaseException):
                    # Only store outages get here; the rest stays pending for the replay.
                    raise result

        for item in items:
            key = self.order_key(item)
            if key is None:
                await drain()
                await self.process(item)
            else:
                groups.setdefault(key, []).append(item)
        await drain()

    def order_key(self, item: InboxItem) -> int | None:
        """The customer whose updates this one must follow in order; None: process it alone."""
        try:
            data = json.loads(item.payload)
        except ValueError:
            return None  # processing quarantines it, in its place
        return private_sender(data, self._staff) if isinstance(data, dict) else None


class Poller:
    """Long polling with getUpdates, one poller per database (a store lease)."""

    LEASE = "telegram:poller"

    def __init__(
        self,
        hub: Hub,
        ingest: Ingest,
        api_url: Callable[[str], str],
        timeout: float,
        lease_seconds: float,
    ) -> None:
        self._hub = hub
        self._ingest = ingest
        self._api_url = api_url
        self._timeout = timeout
        self._lease_seconds = lease_seconds
        self._task: asyncio.Task[None] | None = None
        self._session: aiohttp.ClientSession | None = None
        self._holding = False
        self.on_acquired: Callable[[], Awaitable[None]] | None = None

    @property
    def offset_key(self) -> str:
        """State key of this bot's getUpdates offset."""
        return f"tg.offset.{self._ingest.external_id(0).split(':')[0]}"

    def start(self) -> None:
        """Start the polling loop (it waits for the lease)."""
        if self._task is None:
            self._task = asyncio.create_task(self._run(), name="telegram-poller")

    async def stop(self) -> None:
        """Stop polling and give the lease up, so another process can take over at once."""
        task, self._task = self._task, None
        if task is not None and not await cancel_until_done(task, STOP_GRACE_SECONDS, every=0.5):
            # Stuck in a call that ignores cancellation: closing the session aborts it.
            log.warning(
                "telegram: the poller did not stop in %.0fs; closing its HTTP session", STOP_GRACE_SECONDS
            )
        if self._session is not None:
            await self._session.close()
            self._session = None
        if (
            task is not None
            and not task.done()
            and not await cancel_until_done(task, STOP_GRACE_SECONDS, every=0.5)
        ):
            log.error("telegram: the poller still runs after its session was closed; leaving it")
        if task is not None and task.done() and not task.cancelled() and task.exception() is not None:
            log.warning("telegram: the poller ended with %r", task.exception())
        if self._holding:
            with contextlib.suppress(StoreError):
                await self._hub.store.release_lease(self.LEASE, self._hub.instance_id)
            self._holding = False

    async def _lease(self) -> bool:
        held = await self._hub.store.acquire_lease(
            self.LEASE, self._hub.instance_id, utcnow(), self._lease_seconds
        )
        if held and not self._holding:
            log.info("telegram: this process (%s) now polls for updates", self._hub.instance_id)
            self._holding = True
            await self._ingest.process_orphans()
            if self.on_acquired is not None:
                await self.on_acquired()
        elif not held and self._holding:
            log.warning("telegram: lost the poller lease; another process polls now")
            self._holding = False
        return held

    async def _keep_lease(self) -> None:
        """Renew the lease while a batch is processed (cancelled when it is done)."""
        while True:
            await asyncio.sleep(self._lease_seconds / 3)
            try:
                held = await self._hub.store.acquire_lease(
                    self.LEASE, self._hub.instance_id, utcnow(), self._lease_seconds
                )
            except StoreError as exc:
                log.warning("telegram: could not renew the poller lease: %s", exc)
                continue
            if not held and self._holding:
                log.warning("telegram: lost the poller lease while processing; another process polls now")
                self._holding = False

    async def _run(self) -> None:
        failures = 0
        while True:
            try:
                if not await self._lease():
                    await asyncio.sleep(min(self._lease_seconds / 3, 5.0))
                    continue
                await self.poll_once()
                failures = 0
            except (aiohttp.ClientError, OSError, TimeoutError, StoreError, RuntimeError, ValueError) as exc:
                self._hub.channel_states.report("telegram", False, f"polling failed: {type(exc).__name__}")
                failures += 1
                delay = min(30.0, 0.5 * 2 ** min(failures, 6)) * random.uniform(0.5, 1.0)
                log.warning("telegram polling failed (%s), retry in %.1fs: %s", failures, delay, exc)
                await asyncio.sleep(delay)

    async def poll_once(self) -> int:
        """One getUpdates call; every update is stored before the offset moves past it."""
        if self._session is None:
            self._session = aiohttp.ClientSession()
        offset = await self._hub.store.get_state(self.offset_key)
        # The long poll must end well before the lease would lapse.
        timeout = int(max(0, min(self._timeout, self._lease_seconds / 3)))
        body: dict[str, Any] = {"timeout": timeout, "limit": 100}
        if offset is not None:
            body["offset"] = int(offset)
        async with self._session.post(
            self._api_url("getUpdates"),
            json=body,
            timeout=aiohttp.ClientTimeout(total=timeout + 15),
        ) as resp:
            answer = await resp.json(content_type=None)
        self._hub.channel_states.report("telegram", bool(answer.get("ok")), "polling")
        if not answer.get("ok"):
            retry_after = (answer.get("parameters") or {}).get("retry_after")
            if retry_after:
                await asyncio.sleep(float(retry_after))
                return 0
            raise RuntimeError(f"getUpdates: {answer.get('description', 'error')}")
        updates = answer.get("result") or []
        stored: list[InboxItem] = []
        last_id: int | None = None
        # What the batch's updates continue is read for all of them at once (nothing in the
        # batch changes it: they are processed only after the whole batch is stored).
        metas = await asyncio.gather(
            *(self._ingest.meta(d) if isinstance(d, dict) else _unusable(d) for d in updates),
            return_exceptions=True,
        )
        # One commit wait for the whole batch: the writes are visible at once, and the block
        # ends only when every one of them is durable.
        # A kind chosen earlier in this batch is not in the store yet (it is stored when the
        # button's update is processed): carry it to that customer's later messages here.
        chosen: dict[int, str] = {}
        async with self._hub.store.deferred_commit():
            for data, meta in zip(updates, metas, strict=True):
                if isinstance(data, dict) and isinstance(data.get("update_id"), int):
                    last_id = data["update_id"]
                if isinstance(meta, DecodeError):
                    log.warning("telegram: skipping an unusable update: %s", meta)
                    continue
                if isinstance(meta, BaseException):
                    raise meta
                choice = kind_choice(data)
                if choice is not None:
                    chosen[choice[0]] = choice[1]
                elif self._ingest.queue_of(data) == CUSTOMER:
                    user = ((data.get("message") or {}).get("from") or {}).get("id")
                    if user in chosen:
                        meta = {**meta, "kind": chosen[user], "user": user}
                item, created = await self._ingest.put(data, meta)
                if created:
                    stored.append(item)
            if last_id is not None:
                # Last in the batch's block: it commits with the updates (or after them, never
                # before), which leaves a crash little room to find the updates stored without
                # it; the next getUpdates confirms the batch only once the block has ended.
                await self._hub.store.set_state(self.offset_key, last_id + 1)
        if stored:
            # A long batch must not outlive the lease.
            keeper = asyncio.create_task(self._keep_lease(), name="telegram-poller-lease")
            try:
                await self._ingest.process_all(stored)
            finally:
                keeper.cancel()
                # Not `suppress(CancelledError)`: a stop() cancelling this task while it waits
                # here would be swallowed with the keeper's, and the polling loop would go on.
                await asyncio.wait({keeper})
        return len(updates)


async def _unusable(data: object) -> dict[str, Any]:
    raise DecodeError(f"an update that is not a JSON object: {type(data).__name__}")


def webhook_handler(ingest: Ingest, secret: str) -> Callable[[web.Request], Awaitable[web.Response]]:
    """POST handler for Telegram's webhook: secret checked, stored, then 200."""
    expected = secret.encode("utf-8")

    async def handle(request: web.Request) -> web.Response:
        given = request.headers.get(SECRET_HEADER, "").encode("utf-8")
        if not hmac.compare_digest(given, expected):
            log.warning("telegram webhook: request without the right secret token refused")
            return web.json_response({"ok": False, "error": "unauthorized"}, status=401)
        try:
            data = await request.json()
            if not isinstance(data, dict):
                raise DecodeError("the body is not a JSON object")
            item, created = await ingest.store(data)
        except (ValueError, DecodeError) as exc:
            # Telegram would redeliver a refused update forever; it is unusable, so say so once.
            log.warning("telegram webhook: unusable update: %s", exc)
            return web.json_response({"ok": False, "error": "bad_update"}, status=400)
        except StoreError as exc:
            log.warning("telegram webhook: store unavailable, Telegram will redeliver: %s", exc)
            return web.json_response({"ok": False, "error": "unavailable"}, status=503)
        if created:
            await ingest.process(item)
        return web.json_response({"ok": True})

    return handle
