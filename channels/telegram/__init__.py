"""Telegram channel: the customer bot and the staff group, on aiogram 3's Bot API client.

Modules: `transport` (polling and webhook, raw first), `updates` (classification and the
customer decoder), `customer` and `staff` (what each side can do), `desk` (lead topics in
the staff group), `sender` (the outbox sender for customer chats), `api` + `ratelimit`
(every call paced to Telegram's limits), `links` (signed deep links), `texts`.
"""

from __future__ import annotations

import logging
from datetime import timedelta
from typing import TYPE_CHECKING

from aiogram.client.telegram import TelegramAPIServer
from aiogram.exceptions import TelegramAPIError
from aiogram.methods import DeleteWebhook, GetMe, SetWebhook

from channels.telegram import links
from channels.telegram.alerts import AlertRelay
from channels.telegram.api import TelegramApi, make_bot
from channels.telegram.customer import CustomerSide
from channels.telegram.desk import StaffDesk, edit_key
from channels.telegram.files import StaffFiles
from channels.telegram.ratelimit import TelegramRateLimiter
from channels.telegram.sender import COPY_PREFIX, TelegramSender
from channels.telegram.staff import SELF_COMMANDS, StaffSide
from channels.telegram.transport import Ingest, Poller, webhook_handler
from channels.telegram.updates import CONTROL, CUSTOMER, CustomerDecoder, command_of, parse_update
from hub.config import ConfigError
from hub.domain import Event, EventType, InboxItem, Lead, LeadStatus, utcnow
from hub.errors import HubError

if TYPE_CHECKING:
    from aiohttp import web

    from hub.app import Hub

log = logging.getLogger(__name__)

#: Telegram unreachable must not hold up the hub's start: polling retries on its own.
STARTUP_TIMEOUT = 10


class TelegramChannel:
    """The `telegram` channel: attach registers its parts, start connects, stop disconnects."""

    name = "telegram"

    def __init__(self) -> None:
        self._hub: Hub | None = None
        self.api: TelegramApi | None = None
        self.desk: StaffDesk | None = None
        self.customer: CustomerSide | None = None
        self.staff: StaffSide | None = None
        self.poller: Poller | None = None
        self.ingest: Ingest | None = None
        self.alerts: AlertRelay | None = None
        self.bot_id = 0
        self.bot_username = ""

    def attach(self, hub: Hub) -> None:
        """Register the decoder, the control handler, the sender, the webhook and subscribers."""
        settings = hub.settings.telegram
        if settings.token is None:
            raise ConfigError("telegram.token: set HUB_TELEGRAM_TOKEN (telegram.enabled is true)")
        token = settings.token.get_secret_value()
        head = token.split(":", 1)[0]
        if not head.isdigit():
            raise ConfigError("telegram.token: not a bot token (expected <bot id>:<secret>)")
        if settings.mode == "webhook" and not (
            settings.webhook_secret and settings.webhook_secret.get_secret_value()
        ):
            raise ConfigError("telegram.webhook_secret: webhook mode needs HUB_TELEGRAM_WEBHOOK_SECRET")
        self._hub = hub
        self.bot_id = int(head)
        self.bot_username = settings.bot_username.lstrip("@")
        server = TelegramAPIServer.from_base(settings.api_base.rstrip("/"))
        self.api = TelegramApi(make_bot(token, settings.api_base), TelegramRateLimiter(settings.limits))
        self.desk = StaffDesk(hub, self.api)
        hub.erasure.hooks.append(self._forget_edits)
        decoder = CustomerDecoder(settings.russian_fallback)
        self.customer = CustomerSide(hub, self.api, self.desk, decoder)
        self.staff = StaffSide(hub, self.api, self.desk)
        self.staff.bot_username = self.bot_username
        self.ingest = Ingest(hub, lambda: self.bot_id)
        hub.inbox.register(CUSTOMER, decoder)
        hub.inbox.register_handler(CONTROL, self.handle_control)
        hub.outbox.register(TelegramSender(self.api, hub.store))
        hub.files.register(COPY_PREFIX, StaffFiles(self.api, token).fetch)
        hub.bus.subscribe("telegram.desk", self.desk.on_event)
        hub.bus.subscribe("telegram.ack", self._on_event)
        # One relay per database, like the poller: a dead holder is replaced within one lease.
        self.alerts = AlertRelay(
            hub, self.api, self.desk, lease_seconds=settings.poller_lease.total_seconds()
        )
        hub.bus.subscribe("telegram.alerts", self.alerts.on_event)
        if settings.mode == "webhook":
            assert settings.webhook_secret is not None
            handler = webhook_handler(self.ingest, settings.webhook_secret.get_secret_value())
            path = settings.webhook_path

            def setup(app: web.Application) -> None:
                app.router.add_post(path, handler)

            hub.web_setups.append(setup)
        else:
            self.poller = Poller(
                hub,
                self.ingest,
                lambda method: server.api_url(token, method),
                settings.poll_timeout.total_seconds(),
                settings.poller_lease.total_seconds(),
            )
            self.poller.on_acquired = self._resync

    async def _on_event(self, event: Event, lead: Lead | None) -> None:
        if event.type == EventType.LEAD_CREATED and lead is not None and self.customer is not None:
            await self.customer.acknowledge(lead)

    async def _resync(self) -> None:
        """After a restart: show what a crash left unshown, acknowledge unacknowledged leads."""
        assert self.desk is not None and self._hub is not None and self.customer is not None
        customer = self.customer
        recent = utcnow() - timedelta(hours=1)

        async def acknowledge_missed(lead: Lead) -> None:
            # A crash between opening a lead and publishing its events skipped the ack.
            if lead.channel == "telegram" and lead.status == LeadStatus.NEW and lead.created_at > recent:
                await customer.acknowledge(lead)

        await self.desk.resync(each=acknowledge_missed)

    async def start(self) -> None:
        """Learn who the bot is, then poll (or set the webhook) and start the staff desk."""
        assert self._hub is not None and self.api is not None and self.desk is not None
        settings = self._hub.settings.telegram
        try:
            me = await self.api.bot(GetMe(), request_timeout=STARTUP_TIMEOUT)
            self.bot_username = self.bot_username or (me.username or "")
            if self.staff is not None:
                self.staff.bot_username = self.bot_username
        except (TelegramAPIError, HubError, OSError) as exc:
            # Telegram unreachable at start: polling retries on its own; links use the config.
            log.warning("telegram: getMe failed, continuing: %s", exc)
        self.desk.start()
        await self.desk.load_pending()
        assert self.alerts is not None
        self.alerts.start()
        if settings.mode == "webhook":
            public = self._hub.settings.web.public_url.rstrip("/")
            if public:
                assert settings.webhook_secret is not None
                await self.api.call(
                    SetWebhook(
                        url=public + settings.webhook_path,
                        secret_token=settings.webhook_secret.get_secret_value(),
                        drop_pending_updates=False,
                    ),
                    None,
                    paced=False,
                )
            else:
                log.warning("telegram: webhook mode without web.public_url; set the webhook yourself")
            self._hub.channel_states.report("telegram", True, "webhook")
            await self._resync()
        else:
            try:
                await self.api.bot(DeleteWebhook(drop_pending_updates=False), request_timeout=STARTUP_TIMEOUT)
            except (TelegramAPIError, HubError, OSError) as exc:
                log.warning("telegram: deleteWebhook failed, polling may be refused: %s", exc)
            assert self.poller is not None
            self.poller.start()
        log.info("telegram: started in %s mode as @%s", settings.mode, self.bot_username or "?")

    async def stop(self) -> None:
        """Stop polling and the staff desk, then close the Bot API session."""
        if self.poller is not None:
            await self.poller.stop()
        if self.alerts is not None:
            await self.alerts.stop()
        if self.desk is not None:
            await self.desk.stop()
        if self.api is not None:
            await self.api.close()

    async def _forget_edits(self, message_ids: list[str]) -> None:
        """Erasure: the latest text of an edited customer message is kept as state, not on it."""
        assert self._hub is not None
        kept = await self._hub.store.get_states([edit_key(m) for m in message_ids])
        for key, text in kept.items():
            if text is not None:
                await self._hub.store.set_state(key, None)

    def deep_link(self, lead: Lead) -> str:
        """`t.me/<bot>?start=<signed token>` for this lead ('' without a secret or a username)."""
        assert self._hub is not None
        secret = self._hub.settings.web.secret_key
        if secret is None or not self.bot_username:
            return ""
        token = links.make_token(secret.get_secret_value(), lead.number, lead.contact_id)
        return links.deep_link(self.bot_username, token)

    async def handle_control(self, item: InboxItem) -> int | None:
        """Everything that is not a plain customer message (see `updates.classify`)."""
        assert self.customer is not None and self.staff is not None
        update = parse_update(item.payload)
        if update.callback_query is not None:
            return await self.staff.on_callback(update.callback_query)
        if update.my_chat_member is not None:
            if update.my_chat_member.chat.type == "private":
                return await self.customer.on_membership(update.my_chat_member)
            await self.staff.on_membership(update.my_chat_member)
            return None
        if update.message is not None:
            message = update.message
            if message.chat.type == "private":
                manager = self.staff.manager(message.from_user.id if message.from_user else None)
                command, _ = command_of(message.text)
                if manager is not None and command in SELF_COMMANDS:
                    await self.staff.self_command(manager, command, message.chat.id, None)
                    return None
                if manager is not None:
                    # A manager writing to the bot is not a customer: no lead, no acknowledgement.
                    await self.staff.private_hint(message.chat.id)
                    return None
                return await self.customer.on_message(message, item)
            return await self.staff.on_group_message(message)
        if update.edited_message is not None:
            message = update.edited_message
            if message.chat.type == "private":
                return await self.customer.on_edit(message)
            return await self.staff.on_group_edit(message)
        return None
