"""The customer side of the bot: /start, the kind keyboard, shared contacts, deep links, edits.

Plain customer messages go through the inbox decoder into intake; what lands here is the
control traffic of private chats (commands, buttons, shared phone numbers and email
addresses, which may merge contacts) and edited messages.
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING

from aiogram.methods import SendMessage
from aiogram.types import ChatMemberUpdated, KeyboardButton, Message, ReplyKeyboardMarkup

from channels.telegram import links
from channels.telegram.api import TelegramApi
from channels.telegram.desk import StaffDesk, edit_key
from channels.telegram.texts import esc, local_time, staff, t
from channels.telegram.updates import (
    CustomerDecoder,
    command_of,
    customer_text,
    kind_buttons,
    message_external_id,
    private_command,
)
from hub import i18n
from hub.domain import (
    Contact,
    DeliveryState,
    Direction,
    Event,
    Identity,
    IdentityKind,
    InboxItem,
    Lead,
    LeadKind,
    OutboxItem,
    utcnow,
)
from hub.domain import Message as HubMessage
from hub.errors import PermanentError, TransientError
from storage.base import DuplicateError

if TYPE_CHECKING:
    from hub.app import Hub

log = logging.getLogger(__name__)

MESSAGE_EDITED = "message.edited"
BOT_BLOCKED = "telegram.blocked"
BOT_UNBLOCKED = "telegram.unblocked"


class CustomerSide:
    """Handles customers' private-chat control traffic and acknowledges new leads."""

    def __init__(self, hub: Hub, api: TelegramApi, desk: StaffDesk, decoder: CustomerDecoder) -> None:
        self._hub = hub
        self._api = api
        self._desk = desk
        self._decoder = decoder
        self.bot_username = hub.settings.telegram.bot_username

    def language(self, code: str | None) -> str:
        """The language to answer a Telegram user in (see `i18n.pick_language`)."""
        return i18n.pick_language(code, self._hub.settings.telegram.russian_fallback)

    def keyboard(self, language: str) -> ReplyKeyboardMarkup:
        """The customer keyboard: the two kinds, and sharing the phone number."""
        return ReplyKeyboardMarkup(
            keyboard=[
                [
                    KeyboardButton(text=i18n.text("tg.kind.service", language)),
                    KeyboardButton(text=i18n.text("tg.kind.message", language)),
                ],
                [KeyboardButton(text=i18n.text("tg.kind.share_phone", language), request_contact=True)],
            ],
            resize_keyboard=True,
        )

    async def _say(self, chat_id: int, html: str, language: str | None = None) -> None:
        markup = self.keyboard(language) if language else None
        try:
            await self._api.call(SendMessage(chat_id=chat_id, text=html, reply_markup=markup), chat_id)
        except (TransientError, PermanentError) as exc:
            # A greeting that cannot be delivered is not worth holding the queue for.
            log.warning("telegram: could not answer in a customer chat: %s", exc)

    # --- private chat control ---------------------------------------------------------------
    async def on_message(self, message: Message, item: InboxItem) -> int | None:
        """A command, a kind button, or a message carrying a phone/email; returns the lead."""
        user = message.from_user
        if user is None:
            return None
        language = self.language(user.language_code)
        text = (message.text or "").strip()
        _, argument = command_of(text)
        if private_command(text) in ("/start", "/help"):
            return await self._start(message, argument, language)
        buttons = kind_buttons()
        if text in buttons:
            kind = buttons[text]
            await self._hub.store.set_state(f"tg.kind.{user.id}", kind.value)
            await self._apply_kind_to_open_lead(user.id, kind)
            key = "tg.kind.chosen.service" if kind == LeadKind.SERVICE_REQUEST else "tg.kind.chosen.message"
            await self._say(message.chat.id, t(key, language))
            return None
        # A message that carries a phone number or an email address: part of the lead, and
        # proof that this Telegram account and that address are the same person.
        kind = item.meta.get("kind") or await self._hub.store.get_state(f"tg.kind.{user.id}")
        if kind:
            item.meta["kind"] = kind
        inbound = self._decoder.inbound(message, item)
        result = await self._hub.intake.accept(inbound)
        if result.created_lead and kind:
            await self._hub.store.set_state(f"tg.kind.{user.id}", None)
        await self._merge(result.contact, inbound.other_identities)
        if message.contact is not None and not result.duplicate:
            await self._answer_contact(message, inbound.other_identities, language)
        return result.lead.number

    async def _answer_contact(
        self, message: Message, identities: tuple[Identity, ...], language: str
    ) -> None:
        """Thank for a saved number; say why someone else's contact card saved nothing."""
        if any(ident.kind == IdentityKind.PHONE for ident in identities):
            await self._say(message.chat.id, t("tg.contact.thanks", language))
            return
        user, card = message.from_user, message.contact
        if user is not None and card is not None and card.user_id != user.id:
            # Only the sender's own card proves the number is theirs (see updates.sender_identities).
            await self._say(message.chat.id, t("tg.contact.not_own", language), language)
            return
        log.info("telegram: a shared own number could not be read as a phone number; nothing saved")

    async def _apply_kind_to_open_lead(self, user_id: int, kind: LeadKind) -> None:
        """A customer who already has an open lead says what it is: the lead takes that kind."""
        contact = await self._hub.store.find_contact(Identity(IdentityKind.TELEGRAM, str(user_id)))
        lead = await self._hub.store.find_active_lead(contact.id, "telegram") if contact else None
        if lead is not None and lead.first_response_at is None and lead.kind != kind:
            await self._hub.actions.set_kind(lead.number, kind, "customer")
            await self._hub.store.set_state(f"tg.kind.{user_id}", None)

    async def _merge(self, contact: Contact, identities: tuple[Identity, ...]) -> None:
        """Fold the other contact that owns a proven phone/email into this person."""
        for ident in identities:
            if ident.kind not in (IdentityKind.PHONE, IdentityKind.EMAIL):
                continue
            owner = await self._hub.store.find_contact(ident)
            if owner is None or owner.id == contact.id:
                continue
            # Keep the older contact: its leads and history stay where staff know them.
            keep, merge = (owner, contact) if owner.created_at <= contact.created_at else (contact, owner)
            await self._hub.store.merge_contacts(keep.id, merge.id)
            log.info("telegram: contacts %s and %s merged by a shared %s", keep.id, merge.id, ident.kind)
            await self._hub.store.append_event(
                Event(
                    "contact.merged", utcnow(), None, {"keep": keep.id, "merged": merge.id, "by": ident.kind}
                )
            )
            return

    async def _start(self, message: Message, argument: str, language: str) -> int | None:
        user = message.from_user
        assert user is not None
        name = user.first_name or user.full_name
        parsed = links.token_lead(argument) if argument else None
        secret = self._hub.settings.web.secret_key
        if parsed is not None and secret is not None:
            number, signature = parsed
            lead = await self._hub.store.get_lead(number)
            if lead is not None and links.verify(
                secret.get_secret_value(), number, lead.contact_id, signature
            ):
                await self._link(lead, user.id, user.full_name)
                await self._say(
                    message.chat.id, t("tg.start.linked", language, name=name, lead=lead.ref), language
                )
                return lead.number
            await self._say(message.chat.id, t("tg.start.bad_link", language), language)
            return None
        await self._say(message.chat.id, t("tg.start", language, name=name), language)
        return None

    async def _link(self, lead: Lead, user_id: int, display_name: str) -> None:
        """Attach this Telegram account to the lead's contact (merging an earlier bot contact)."""
        ident = Identity(IdentityKind.TELEGRAM, str(user_id), display_name)
        owner = await self._hub.store.find_contact(ident)
        if owner is not None and owner.id != lead.contact_id:
            await self._hub.store.merge_contacts(lead.contact_id, owner.id)
        elif owner is None:
            await self._hub.store.add_identity(lead.contact_id, ident)
        await self._hub.store.append_event(
            Event(
                "contact.linked", utcnow(), lead.number, {"channel": "telegram", "contact": lead.contact_id}
            )
        )
        log.info("%s telegram: chat linked to the lead's contact by a signed link", lead.ref)

    # --- blocking -------------------------------------------------------------------------
    async def on_membership(self, update: ChatMemberUpdated) -> int | None:
        """A customer blocked (or unblocked) the bot: say so in their open lead's topic at once,
        before a reply fails on it, and record it on the lead."""
        status = update.new_chat_member.status
        if status not in ("kicked", "member"):
            return None
        blocked = status == "kicked"
        contact = await self._hub.store.find_contact(Identity(IdentityKind.TELEGRAM, str(update.chat.id)))
        lead = await self._hub.store.find_active_lead(contact.id, "telegram") if contact else None
        if lead is None:
            log.info(
                "telegram: a customer without an open lead %s the bot", "blocked" if blocked else "unblocked"
            )
            return None
        event = BOT_BLOCKED if blocked else BOT_UNBLOCKED
        await self._hub.store.append_event(Event(event, utcnow(), lead.number, {"channel": "telegram"}))
        key = "tg.event.customer_blocked" if blocked else "tg.event.customer_unblocked"
        await self._desk.notice(lead, ("🚫 " if blocked else "✅ ") + staff(key))
        log.info("%s telegram: the customer %s the bot", lead.ref, "blocked" if blocked else "unblocked")
        return lead.number

    # --- edits -----------------------------------------------------------------------------
    async def on_edit(self, message: Message) -> int | None:
        """A customer edited a message: keep both versions, update the staff copy."""
        known = await self._hub.store.find_message(
            "telegram", message_external_id(message.chat.id, message.message_id)
        )
        if known is None:
            return None
        new_text = customer_text(message)
        await self._hub.store.set_state(edit_key(known.id), new_text)
        await self._hub.store.append_event(
            Event(
                MESSAGE_EDITED,
                utcnow(),
                known.lead_number,
                {"message_id": known.id, "before": known.text, "after": new_text},
            )
        )
        lead = await self._hub.store.get_lead(known.lead_number)
        if lead is None:
            return known.lead_number
        await self._desk.customer_edited(lead, known.id)
        if not lead.is_active:
            await self._edited_after_resolution(lead, new_text)
        return known.lead_number

    async def _edited_after_resolution(self, lead: Lead, new_text: str) -> None:
        """Rewriting an old post in a closed topic tells nobody: say it in the topic, and treat
        an edit within `leads.reopen_within` of the resolution as the new message it stands
        for (the customer who adds "it leaks again" expects an answer, and would get one had they
        written anew); a later edit is only noted, as a new message then opens a new lead."""
        await self._desk.notice(lead, f"✏️ {staff('tg.event.edited_resolved')}\n{esc(new_text[:3500])}")
        window = self._hub.settings.leads.reopen_within
        if lead.resolved_at is not None and utcnow() - lead.resolved_at <= window:
            await self._hub.intake.customer_edited(lead.number)

    # --- acknowledgements ----------------------------------------------------------------------
    async def acknowledge(self, lead: Lead) -> None:
        """Queue the one acknowledgement of a new Telegram lead (number and due time)."""
        if lead.channel != "telegram" or not self._hub.settings.telegram.ack:
            return
        external_id = f"ack:{lead.number}"
        if await self._hub.store.find_message("telegram", external_id) is not None:
            return
        contact = await self._hub.store.get_contact(lead.contact_id)
        language = (contact.language if contact else "") or i18n.DEFAULT
        tz = self._hub.settings.sla.calendar.timezone
        text = i18n.text("tg.ack", language, lead=lead.ref, due=local_time(lead.first_response_due, tz))
        now = utcnow()
        message = HubMessage(
            id=f"tg-ack-{lead.number}",
            lead_number=lead.number,
            direction=Direction.OUT,
            channel="telegram",
            author="bot",
            text=text,
            external_id=external_id,
            created_at=now,
            delivery=DeliveryState.QUEUED,
        )
        item = OutboxItem(
            id=f"tg-ack-{lead.number}",
            message_id=message.id,
            lead_number=lead.number,
            channel="telegram",
            payload={"text": text, "html": "", "author": "bot", "kind": "ack"},
            created_at=now,
            next_attempt_at=now,
        )
        try:
            await self._hub.store.add_outbound(message, item)
        except DuplicateError:
            return  # queued already (a replay raced this one)
        self._hub.outbox.wake("telegram")
