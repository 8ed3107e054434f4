"""The composition root: the only module that knows every concrete part of the hub."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import re
import socket
from collections.abc import AsyncIterator, Callable
from datetime import datetime

from aiohttp import web
from apscheduler.schedulers.asyncio import AsyncIOScheduler

from channels.base import Channel
from hub.actions import LeadActions
from hub.attachments import AttachmentStore
from hub.calendar import AlwaysOpen, Calendar
from hub.channel_state import ChannelStates
from hub.config import Settings
from hub.domain import Lead, new_id, utcnow
from hub.erasure import Erasure
from hub.events import EventBus
from hub.files import FileSources
from hub.inbox import InboxProcessor
from hub.intake import Intake
from hub.notify_webhook import WebhookNotifier
from hub.outbox import OutboxDispatcher
from hub.replies import Replies
from hub.sla import SlaClock, SlaSweeper, retarget_after_config_change, team_leads_from
from hub.tasks import cancel_until_done
from hub.web.ratelimit import SlidingWindowLimiter
from hub.web.server import create_web_app
from routing.availability import Availability
from routing.queue import QueueDrainer
from routing.router import ConfigRouter
from storage import Store, store_from_url
from storage.base import StoreError

log = logging.getLogger(__name__)

_URL_PASSWORD = re.compile(r"(//[^:/@\s]+:)[^@\s]+@")


class StartError(Exception):
    """The hub could not start; the message is one line for the operator (what failed, where)."""


def _one_line(exc: BaseException, limit: int = 300) -> str:
    """An exception as one short line (pymongo's errors carry a whole topology description)."""
    text = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
    return text if len(text) <= limit else text[: limit - 1] + "…"


WebSetup = Callable[[web.Application], None]


def build_calendar(settings: Settings) -> Calendar:
    """The SLA calendar from `sla.calendar` (24x7 unless business hours are configured)."""
    calendar = settings.sla.calendar
    if calendar.hours == "24x7" and not calendar.holidays:
        return AlwaysOpen()
    from hub.business_hours import BusinessHours

    return BusinessHours.from_settings(calendar)


def build_channels(settings: Settings) -> list[Channel]:
    """Channel adapters enabled in the config, each registered once by name."""
    from channels.webform import WebformChannel

    channels: list[Channel] = []
    if settings.web.enabled:
        channels.append(WebformChannel())
    if settings.email.enabled:
        from channels.email import EmailChannel

        channels.append(EmailChannel(settings.email))
    if settings.telegram.enabled:
        from channels.telegram import TelegramChannel

        channels.append(TelegramChannel())
    names = [c.name for c in channels]
    if len(names) != len(set(names)):
        raise ValueError(f"channels registered twice: {names}")
    return channels


class Hub:
    """Every part of a running hub, wired together; `start()` and `stop()` run it."""

    def __init__(
        self,
        settings: Settings,
        store: Store | None = None,
        channels: list[Channel] | None = None,
        clock: Callable[[], datetime] = utcnow,
    ) -> None:
        self.settings = settings
        self.now = clock
        self.instance_id = f"{socket.gethostname()}:{os.getpid()}:{new_id()[-8:]}"
        self.store: Store = store or store_from_url(settings.storage.url)
        # Read here (dashboard, staff desk); the email channel writes what it receives.
        self.attachments = AttachmentStore(settings.email.attachments_dir)
        self.bus = EventBus()
        self.sla = SlaClock(settings.sla, build_calendar(settings))
        self.availability = Availability(self.store, on_change=self._availability_changed)
        self.router = ConfigRouter(settings, self.store, self.availability, self.bus, self.sla)
        self.queue = QueueDrainer(self.store, self.router)
        self.queue.subscribe(self.bus, lambda: self.now())
        self.intake = Intake(
            self.store, self.sla, self.router, self.bus, reopen_within=settings.leads.reopen_within
        )
        self.inbox = InboxProcessor(self.store, self.intake, self.bus, self.instance_id)
        self.outbox = OutboxDispatcher(self.store, self.bus, settings.outbox, self.instance_id)
        self.replies = Replies(self.store, self.bus, lambda: self.outbox.channels, self.outbox.wake)
        self.actions = LeadActions(self.store, self.bus, settings, self.sla)
        self.erasure = Erasure(self.store, self.bus, self.attachments)
        self.sweeper = SlaSweeper(
            self.store,
            self.bus,
            clock=self.sla,
            team_leads=team_leads_from(settings.managers),
            reassign=self.queue.reassign_one,
        )
        if settings.notify.webhook is not None:
            self.webhook: WebhookNotifier | None = WebhookNotifier(settings.notify.webhook)
            self.bus.subscribe("notify.webhook", self.webhook.on_event)
        else:
            self.webhook = None
        self.form_limiter = SlidingWindowLimiter(settings.web.form_rate_limit)
        self.web_setups: list[WebSetup] = []
        self.channel_states = ChannelStates()  # channels report connection state here (/metrics)
        self.files = FileSources()  # channels that keep files register fetchers here
        self.channels = channels if channels is not None else build_channels(settings)
        for channel in self.channels:
            channel.attach(self)
        self._scheduler: AsyncIOScheduler | None = None
        self._runner: web.AppRunner | None = None
        self._jobs: set[asyncio.Task[None]] = set()  # scheduler jobs running now
        self._stopping = False
        self._started_channels: list[Channel] = []
        self.web_port: int | None = None

    def telegram_link(self, lead: Lead) -> str:
        """A deep link that continues this lead in Telegram ('' while Telegram is off)."""
        for channel in self.channels:
            make_link = getattr(channel, "deep_link", None)
            if make_link is not None:
                return str(make_link(lead))
        return ""

    async def start(self, *, undo: bool = True) -> None:
        """Open the store, replay unfinished input, start sweeps, delivery, web and channels.

        A start that fails (or is cancelled) stops whatever it started before it raises: an
        open store keeps aiosqlite's thread alive, and the process would never exit. With
        `undo=False` the caller does that by calling `stop()`.
        """
        try:
            await self._start()
        except BaseException:
            if undo:
                await self.stop()
            raise

    async def _start(self) -> None:
        try:
            await self.store.open()
        except (StoreError, OSError, ValueError) as exc:
            url = _URL_PASSWORD.sub(r"\1***@", self.settings.storage.url)
            raise StartError(
                f"storage.url {url}: cannot open the store: {_one_line(exc)}; "
                "check that the database is reachable and the path is a writable file"
            ) from exc
        except Exception as exc:
            # MongoDB's driver errors (server selection timed out, auth failed) are not StoreErrors.
            url = _URL_PASSWORD.sub(r"\1***@", self.settings.storage.url)
            if type(exc).__module__.split(".")[0] not in ("pymongo", "bson"):
                raise
            raise StartError(
                f"storage.url {url}: cannot open the store: {_one_line(exc)}; "
                "check that the database is reachable and the credentials are right"
            ) from exc
        await retarget_after_config_change(self.store, self.sla, self.instance_id, self.now())
        await self.inbox.start()
        await self.outbox.start()
        self._scheduler = AsyncIOScheduler(timezone="UTC")
        self._scheduler.add_job(
            self.sweep_sla,
            "interval",
            seconds=self.settings.sla.check_every.total_seconds(),
            max_instances=1,
            coalesce=True,
            next_run_time=utcnow(),
            id="sla-sweep",
        )
        self._scheduler.add_job(
            self.drain_queue,
            "interval",
            seconds=self.settings.routing.drain_every.total_seconds(),
            max_instances=1,
            coalesce=True,
            next_run_time=utcnow(),
            id="routing-drain",
        )
        self._scheduler.start()
        if self.settings.web.enabled:
            self._runner = web.AppRunner(create_web_app(self), access_log=None, shutdown_timeout=10)
            await self._runner.setup()
            host, port = self.settings.web.host, self.settings.web.port
            site = web.TCPSite(
                self._runner,
                host,
                port,
                reuse_address=True,
                reuse_port=self.settings.web.reuse_port or None,
            )
            try:
                await site.start()
            except OSError as exc:
                # uvloop/asyncio say "error while attempting to bind on address (...): <reason>".
                reason = (exc.strerror or str(exc)).rsplit(": ", 1)[-1].lower()
                raise StartError(
                    f"web: cannot listen on {host}:{port}: {reason}; "
                    "stop what uses it or change web.port / web.host"
                ) from exc
            server = site._server
            sockets = getattr(server, "sockets", None) or []
            self.web_port = sockets[0].getsockname()[1] if sockets else port
            log.info("web: listening on http://%s:%s", host, self.web_port)
        for channel in self.channels:
            # Counted before its start: a channel that fails halfway is stopped too.
            self._started_channels.append(channel)
            try:
                await channel.start()
            except (StartError, StoreError):
                raise
            except Exception as exc:
                log.debug("channel %s failed to start", channel.name, exc_info=True)
                raise StartError(f"{channel.name}: cannot start: {_one_line(exc)}") from exc
        log.info("hub %s started (storage: %s)", self.instance_id, self.store.backend)

    @contextlib.asynccontextmanager
    async def _job(self) -> AsyncIterator[None]:
        """A scheduler job's run: `stop()` waits for it (the store must outlive it), and a job
        cancelled by the stop ends quietly (APScheduler logs any exception as an ERROR)."""
        task = asyncio.current_task()
        assert task is not None
        self._jobs.add(task)
        try:
            yield
        except asyncio.CancelledError:
            if not self._stopping:
                raise
            log.info("%s: cancelled by the stop", task.get_name())
        finally:
            self._jobs.discard(task)

    async def sweep_sla(self) -> None:
        """One SLA sweep at the current time (the scheduler's job)."""
        async with self._job():
            try:
                await self.sweeper.sweep(self.now())
            except StoreError as exc:
                log.warning("sla sweep: store unavailable, next sweep will catch up: %s", exc)

    async def drain_queue(self) -> None:
        """Hand the unassigned queue to whoever is eligible now (shift starts; the timer job)."""
        async with self._job():
            try:
                await self.queue.drain(self.now())
            except StoreError as exc:
                log.warning("routing drain: store unavailable, will retry: %s", exc)

    async def _finish_jobs(self, grace: float = 10.0) -> None:
        """Let running scheduler jobs end (bounded), then cancel what is left."""
        self._stopping = True
        jobs = set(self._jobs)
        if jobs:
            _, late = await asyncio.wait(jobs, timeout=grace)
            for task in late:
                task.cancel()
            if late:
                await asyncio.wait(late, timeout=grace)

    async def _availability_changed(self, manager_id: str, away: bool) -> None:
        if away and self.settings.routing.reassign_when_away:
            await self.queue.reassign_from(manager_id, self.now(), "assignee went away")
        if not away:
            await self.queue.drain(self.now())

    async def stop(self) -> None:
        """Stop taking input, finish in-flight requests, then close the store.

        Safe after a partial start: each part stops only if it started, and a part that fails
        to stop does not keep the store open (its thread would keep the process alive).
        """
        while self._started_channels:
            channel = self._started_channels.pop()
            try:
                await channel.stop()
            except Exception:
                log.exception("channel %s failed to stop cleanly", channel.name)
        try:
            if self._runner is not None:
                runner, self._runner = self._runner, None
                await runner.cleanup()
            if self._scheduler is not None:
                scheduler, self._scheduler = self._scheduler, None
                # Paused, not shut down, while running jobs finish: the shutdown cancels them.
                scheduler.pause()
                await self._finish_jobs()
                scheduler.shutdown(wait=False)
            if self.webhook is not None:
                await self.webhook.close()
            await self.outbox.stop()
            await self.inbox.stop()
        finally:
            await self.store.close()
        log.info("hub %s stopped", self.instance_id)


async def run_until_stopped(hub: Hub, stop: asyncio.Event) -> None:
    """Start the hub, wait for `stop`, then shut down cleanly.

    `stop` is honoured during the start too (a store may take 30 s to answer): the start is
    cancelled and undoes itself. A failed start raises (StartError: one line for the operator).
    """
    starting = asyncio.create_task(hub.start(undo=False), name="hub-start")
    stopping = asyncio.create_task(stop.wait(), name="hub-stop-signal")
    try:
        try:
            await asyncio.wait({starting, stopping}, return_when=asyncio.FIRST_COMPLETED)
        finally:
            stopping.cancel()
            if not starting.done():
                log.info("hub: stop requested while starting; stopping")
                await cancel_until_done(starting)
        if not starting.cancelled():
            starting.result()  # a failed start raises here (after the stop below)
            await stop.wait()
    finally:
        # Also after a failed or cancelled start: it stops only the parts that started.
        await hub.stop()
