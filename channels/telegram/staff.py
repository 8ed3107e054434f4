"""The staff side: replies, notes and commands in lead topics, card buttons, availability.

A manager's message in a lead's topic (or, in a group without topics, a reply to one of the
lead's posts) is a public reply, relayed through the lead's channel by the outbox. `//` or
`/note` makes it an internal note. Only configured managers act; others get a short hint.
"""

from __future__ import annotations

import logging
import time
from datetime import datetime
from typing import TYPE_CHECKING

from aiogram.enums import ContentType
from aiogram.exceptions import TelegramBadRequest
from aiogram.methods import AnswerCallbackQuery, EditMessageText, LeaveChat, SendMessage
from aiogram.types import (
    CallbackQuery,
    ChatMemberUpdated,
    InlineKeyboardButton,
    InlineKeyboardMarkup,
    Message,
)

from channels.telegram.api import TelegramApi
from channels.telegram.desk import StaffDesk, open_target
from channels.telegram.sender import COPY_PREFIX, copy_ref, pending_edit_key, relay_key
from channels.telegram.texts import esc, plain_staff, staff, staff_label, staff_refusal
from channels.telegram.updates import FILE_PREFIX, command_of, content_of, is_relayable, is_service
from hub.config import ManagerSettings
from hub.domain import ACTIVE_STATUSES, Attachment, Event, LeadKind, utcnow
from hub.errors import (
    ConflictError,
    HubError,
    NotFoundError,
    PermanentError,
    TransientError,
    ValidationFailed,
)
from hub.refusals import refusal_code
from hub.web.dashboard.auth import login_link
from storage.base import LeadQuery

if TYPE_CHECKING:
    from hub.app import Hub

log = logging.getLogger(__name__)

HINT_EVERY = 600.0  # seconds between hints to the same stranger
MY_LIMIT = 50  # leads listed by /my (one message)
LEAD_COMMANDS = frozenset({"/take", "/assign", "/resolve", "/reopen", "/kind", "/note"})
SELF_COMMANDS = frozenset({"/away", "/back", "/my", "/dashboard"})


class StaffSide:
    """Handles everything that happens in the staff group(s) and managers' own commands."""

    def __init__(self, hub: Hub, api: TelegramApi, desk: StaffDesk) -> None:
        self._hub = hub
        self._api = api
        self._desk = desk
        self._hinted: dict[int, float] = {}
        self._managers = {m.telegram_id: m for m in hub.settings.managers if m.telegram_id is not None}
        #: The bot's @username (without @), once known: `/cmd@other_bot` is another bot's command.
        self.bot_username = ""

    def manager(self, user_id: int | None) -> ManagerSettings | None:
        """The configured, active manager with this Telegram id."""
        manager = self._managers.get(user_id) if user_id is not None else None
        return manager if manager is not None and manager.active else None

    def _hint_key(self, user_id: int) -> str:
        """Why someone may not act: not a manager, or a manager switched off (`active: false`)."""
        return "tg.staff.inactive" if user_id in self._managers else "tg.staff.hint"

    async def _say(self, chat: int, thread: int | None, html: str, reply_to: int | None = None) -> None:
        try:
            await self._api.call(
                SendMessage(chat_id=chat, message_thread_id=thread, text=html, reply_to_message_id=reply_to),
                chat,
            )
        except (TransientError, PermanentError, TelegramBadRequest) as exc:
            log.warning("telegram: could not answer in chat %s: %s", chat, exc)

    # --- membership -------------------------------------------------------------------------
    async def leave_if_stranger(self, chat_id: int, chat_type: str) -> bool:
        """Leave a group that is not one of ours; True if it was a stranger's group."""
        if chat_type not in ("group", "supergroup", "channel") or chat_id in self._desk.staff_chats():
            return False
        log.warning("telegram: added to unknown chat %s; leaving", chat_id)
        try:
            await self._api.call(LeaveChat(chat_id=chat_id), None)
        except (TransientError, PermanentError, TelegramBadRequest) as exc:
            log.warning("telegram: could not leave chat %s: %s", chat_id, exc)
        return True

    async def on_membership(self, update: ChatMemberUpdated) -> None:
        """The bot was added to (or removed from) a chat."""
        if update.new_chat_member.status in ("member", "administrator"):
            await self.leave_if_stranger(update.chat.id, update.chat.type)

    # --- messages in the group ------------------------------------------------------------------
    async def on_group_message(self, message: Message) -> int | None:
        """A message in a staff group: reply, note or command, if a manager wrote it."""
        user = message.from_user
        if user is None or user.is_bot:
            return None
        if await self.leave_if_stranger(message.chat.id, message.chat.type):
            return None
        if message.content_type == ContentType.FORUM_TOPIC_CLOSED and message.is_topic_message:
            return await self._topic_closed_by_hand(message)
        if is_service(message):
            # Pins, members joining, topic and video chat changes: nobody wrote to the customer.
            return None
        chat, thread = message.chat.id, message.message_thread_id if message.is_topic_message else None
        manager = self.manager(user.id)
        if manager is None:
            now = time.monotonic()
            if now - self._hinted.get(user.id, -HINT_EVERY) >= HINT_EVERY:
                self._hinted[user.id] = now
                await self._say(
                    chat, thread, staff(self._hint_key(user.id), user_id=user.id), message.message_id
                )
            log.info("telegram: ignored a message from a non-manager in chat %s", chat)
            return None
        text = message.text or message.caption or ""
        command, argument = command_of(text)
        if command in SELF_COMMANDS:
            await self.self_command(manager, command, chat, thread)
            return None
        lead_number = await self._lead_of(message)
        if lead_number is None:
            # Staff talk among themselves outside lead topics; only a lead command needs a hint.
            if command in LEAD_COMMANDS or text.startswith("//"):
                await self._say(chat, thread, staff("tg.staff.unknown_lead"), message.message_id)
            return None
        try:
            if text.startswith("//") or command == "/note":
                note = text[2:] if text.startswith("//") else argument
                await self._hub.replies.add_note(lead_number, note, manager.id)
                return lead_number
            if command in LEAD_COMMANDS:
                await self._lead_command(manager, lead_number, command, argument, chat, thread)
                return lead_number
            if command:
                # Not a message for the customer either way; a typo ("/resolv") must not be
                # dropped without a word, while another bot's command is none of ours.
                if self._addressed_to_us(text):
                    await self._say(
                        chat, thread, staff("tg.staff.unknown_command", command=command), message.message_id
                    )
                return lead_number
            if not is_relayable(message):
                await self._say(chat, thread, staff("tg.staff.not_relayed"), message.message_id)
                return lead_number
            await self._reply(manager, lead_number, message, text)
        except (ValidationFailed, NotFoundError, ConflictError) as exc:
            asked = argument.strip().lstrip("@") if command == "/assign" else ""
            await self._say(chat, thread, esc(self._refusal(exc, asked)), message.message_id)
        return lead_number

    async def _topic_closed_by_hand(self, message: Message) -> int | None:
        """Someone closed a lead's topic in Telegram (the bot's own closes are not reported)."""
        thread = message.message_thread_id
        number = await self._desk.lead_for_thread(message.chat.id, thread) if thread is not None else None
        lead = await self._hub.store.get_lead(number) if number is not None else None
        if lead is None or not lead.is_active:
            return number
        log.info(
            "%s telegram: its topic was closed by hand while the lead is %s", lead.ref, lead.status.value
        )
        await self._desk.closed_by_hand(lead)
        return lead.number

    def _addressed_to_us(self, text: str) -> bool:
        """True for `/cmd` and `/cmd@<this bot>`; False for `/cmd@another_bot`."""
        head = text.split(maxsplit=1)[0]
        _, at, username = head.partition("@")
        return not at or (bool(self.bot_username) and username.lower() == self.bot_username.lower())

    def _refusal(self, exc: HubError, asked: str = "") -> str:
        """Why a staff action failed, as plain text in the staff's language (never the core's English)."""
        code = refusal_code(exc)
        log.info("telegram: a staff action was refused (%s): %s", code, exc)
        if code == "no_manager" and asked:
            # The id was typed (or a stale button carries it): say which one, and who there is.
            managers = ", ".join(m.id for m in self._hub.settings.managers)
            return plain_staff("tg.staff.no_manager", manager=asked, managers=managers)
        return staff_refusal(code)

    async def _lead_of(self, message: Message) -> int | None:
        chat = message.chat.id
        if message.is_topic_message and message.message_thread_id is not None:
            number = await self._desk.lead_for_thread(chat, message.message_thread_id)
            if number is not None:
                return number
        if message.reply_to_message is not None:
            return await self._desk.lead_for_post(chat, message.reply_to_message.message_id)
        return None

    async def _reply(self, manager: ManagerSettings, lead_number: int, message: Message, text: str) -> None:
        # Replies are idempotent on (source, external_id): a replayed update records nothing new.
        external_id = f"tg:{message.chat.id}:{message.message_id}"
        attachments: list[Attachment] = []
        content = content_of(message)
        # A location, a venue or a contact card is a pin or a card in Telegram, not coordinates.
        card = message.location is not None or message.contact is not None
        channel = await self._hub.replies.delivery_channel(lead_number) if card else None
        if card and not content.attachments and channel == "telegram":
            kind = "location" if message.location is not None else "contact"
            ref = f"{COPY_PREFIX}{message.chat.id}:{message.message_id}"
            attachments.append(Attachment(kind, f"application/vnd.telegram.{kind}", 0, ref))
        if content.attachments:
            # Staff media goes to the customer as a copy of this very message.
            first = content.attachments[0]
            # The file id lets a channel that cannot copy (email) fetch the file itself.
            ref = copy_ref(message.chat.id, message.message_id, first.ref.removeprefix(FILE_PREFIX))
            attachments.append(Attachment(first.name, first.content_type, first.size, ref))
        await self._hub.replies.record_reply(
            lead_number,
            text or content.text,
            manager.id,
            attachments=attachments,
            source="telegram",
            external_id=external_id,
        )

    async def on_group_edit(self, message: Message) -> int | None:
        """A manager edited a message they relayed: relay the edit where the channel allows."""
        user = message.from_user
        if self.manager(user.id if user else None) is None:
            return None
        external_id = f"tg:{message.chat.id}:{message.message_id}"
        relayed = await self._hub.store.get_state(relay_key(external_id))
        text = message.text or ""
        await self._hub.store.append_event(
            Event(
                "reply.edited",
                utcnow(),
                relayed.get("lead") if isinstance(relayed, dict) else None,
                {"external_id": external_id, "after": text, "relayed": isinstance(relayed, dict)},
            )
        )
        if not isinstance(relayed, dict) and text and await self._goes_by_telegram(message):
            # Still queued (a busy chat, a retry): the sender sends this text instead, or edits
            # what it has just sent, and then drops it. Read the relay again: it may have been
            # sent meanwhile.
            await self._hub.store.set_state(pending_edit_key(external_id), text)
            relayed = await self._hub.store.get_state(relay_key(external_id))
        if not isinstance(relayed, dict) or not text:
            return None  # not relayed yet, sent by email (no edits there), or a caption
        chat = int(relayed["chat"])
        try:
            await self._api.call(
                EditMessageText(chat_id=chat, message_id=int(relayed["message_id"]), text=esc(text)), chat
            )
        except (TelegramBadRequest, TransientError, PermanentError) as exc:
            log.warning("L-%s telegram: could not relay a staff edit: %s", relayed.get("lead"), exc)
        return int(relayed["lead"])

    async def _goes_by_telegram(self, message: Message) -> bool:
        """Whether replies in this message's lead go out by Telegram: only its sender applies (and
        then forgets) a pending edit, so one kept for an email reply would stay for good."""
        number = await self._lead_of(message)
        return number is not None and await self._hub.replies.delivery_channel(number) == "telegram"

    # --- commands ---------------------------------------------------------------------------------
    async def _lead_command(
        self,
        manager: ManagerSettings,
        number: int,
        command: str,
        argument: str,
        chat: int,
        thread: int | None,
    ) -> None:
        actions = self._hub.actions
        by = manager.id
        if command == "/take":
            if await self._is_assignee(number, manager):
                await self._say(chat, thread, staff("tg.staff.already_yours", lead=f"L-{number}"))
                return
            await actions.assign(number, manager.id, by)
        elif command == "/assign":
            target = argument.strip().lstrip("@")
            if not target:
                names = ", ".join(m.id for m in self._hub.settings.managers)
                await self._say(chat, thread, staff("tg.staff.usage_assign", managers=names))
                return
            await actions.assign(number, self._manager_id(target), by)
        elif command == "/resolve":
            await actions.resolve(number, by)
        elif command == "/reopen":
            await actions.reopen(number, by)
        elif command == "/kind":
            value = argument.strip().lower()
            kinds = {"service": LeadKind.SERVICE_REQUEST, "service_request": LeadKind.SERVICE_REQUEST}
            kinds |= {"message": LeadKind.MESSAGE, "question": LeadKind.MESSAGE}
            if value not in kinds:
                await self._say(chat, thread, staff("tg.staff.usage_kind"))
                return
            await actions.set_kind(number, kinds[value], by)

    async def _is_assignee(self, number: int, manager: ManagerSettings) -> bool:
        lead = await self._hub.store.get_lead(number)
        return lead is not None and lead.assignee == manager.id

    def _manager_id(self, target: str) -> str:
        """A manager by id, or by Telegram id, or by (a unique prefix of) name."""
        for manager in self._hub.settings.managers:
            if target in (manager.id, str(manager.telegram_id)):
                return manager.id
        matches = [m for m in self._hub.settings.managers if m.name.lower().startswith(target.lower())]
        return matches[0].id if len(matches) == 1 else target

    async def self_command(
        self, manager: ManagerSettings, command: str, chat: int, thread: int | None
    ) -> None:
        """/away, /back, /my: in a staff group or in a private chat with the bot."""
        if command == "/away":
            await self._hub.availability.set_away(manager.id, True)
            await self._say(chat, thread, staff("tg.staff.away"))
        elif command == "/back":
            await self._hub.availability.set_away(manager.id, False)
            await self._say(chat, thread, staff("tg.staff.back"))
        elif command == "/my":
            await self._say(chat, thread, await self.my_leads(manager, utcnow()))
        elif command == "/dashboard":
            if chat < 0:
                # A sign-in link in a group would sign in whoever taps it first.
                await self._say(chat, thread, staff("tg.staff.dashboard_private"))
                return
            url = login_link(self._hub.settings, manager.id, utcnow())
            await self._say(chat, thread, staff("tg.staff.dashboard", url=url))

    async def private_hint(self, chat: int) -> None:
        """What a manager can do in a private chat with the bot (anything else opened a lead)."""
        await self._say(chat, None, staff("tg.staff.private_hint"))

    async def my_leads(self, manager: ManagerSettings, now: datetime) -> str:
        """The manager's open leads, nearest breach first, with the time left."""
        query = LeadQuery(statuses=tuple(ACTIVE_STATUSES), assignee=manager.id, order="due")
        # The most urgent first from the store: the newest 50 hid the most overdue older leads.
        page = await self._hub.store.list_leads(query, limit=MY_LIMIT)
        if not page.items:
            return staff("tg.staff.my_empty")
        far = now.replace(year=now.year + 100)
        targets = {lead.number: open_target(lead) for lead in page.items}
        lines = [f"<b>{staff('tg.staff.my_title')}</b>"]
        for lead in sorted(page.items, key=lambda lead: (targets[lead.number] or ("", far))[1]):
            target = targets[lead.number]
            if target is None:
                left = "✓"
            else:
                seconds = int((target[1] - now).total_seconds())
                sign = "-" if seconds < 0 else ""
                seconds = abs(seconds)
                hours, minutes = seconds // 3600, f"{seconds % 3600 // 60:02d}"
                time_left = staff("tg.staff.my_left", sign=sign, hours=hours, minutes=minutes)
                left = f"{staff(f'tg.target.{target[0]}')} {time_left}"
            status = staff_label("status", lead.status.value)
            lines.append(f"{esc(lead.ref)} · {esc(status)} · {left}")
        if len(page.items) >= MY_LIMIT:
            total = await self._hub.store.count_leads(query)
            if total > len(page.items):
                lines.append(staff("tg.staff.my_more", count=total - len(page.items)))
        return "\n".join(lines)

    # --- card buttons -----------------------------------------------------------------------------
    async def on_callback(self, query: CallbackQuery) -> int | None:
        """Take / Resolve / Reassign / Spam on a lead card."""
        manager = self.manager(query.from_user.id)
        answer = ""
        number: int | None = None
        target = ""
        try:
            if manager is None:
                answer = plain_staff(self._hint_key(query.from_user.id), user_id=query.from_user.id)
                return None
            action, _, rest = (query.data or "").partition(":")
            if action == "assign":
                rest, _, target = rest.partition(":")
            number = int(rest)
            ref = f"L-{number}"
            actions = self._hub.actions
            if action == "take" and await self._is_assignee(number, manager):
                answer = plain_staff("tg.staff.already_yours", lead=ref)
                return number
            if action == "take":
                await actions.assign(number, manager.id, manager.id)
                answer = plain_staff("tg.staff.done.take", lead=ref)
            elif action == "resolve":
                await actions.resolve(number, manager.id)
                answer = plain_staff("tg.staff.done.resolve", lead=ref)
            elif action == "assign":
                lead = await actions.assign(number, target, manager.id)
                assignee = self._hub.settings.manager(lead.assignee or "")
                name = assignee.name if assignee else target
                answer = plain_staff("tg.staff.done.assign", lead=ref, manager=name)
            elif action == "spam":
                # The topic's notice comes from the desk's bus subscriber, as for the dashboard.
                await actions.mark_spam(number, manager.id)
                answer = plain_staff("tg.staff.done.spam", lead=ref)
            elif action == "reassign":
                await self._pick_manager(number, query)
                answer = plain_staff("tg.staff.done.reassign", lead=ref)
            else:
                answer = self._stale_button(query)
        except ValueError:
            answer = self._stale_button(query)
        except HubError as exc:
            answer = self._refusal(exc, target)
        finally:
            try:
                await self._api.call(
                    AnswerCallbackQuery(callback_query_id=query.id, text=answer[:200] or None), None
                )
            except (TelegramBadRequest, TransientError, PermanentError) as exc:
                # Old queries cannot be answered any more; the action itself was done.
                log.info("telegram: callback answer failed: %s", exc)
        return number

    def _stale_button(self, query: CallbackQuery) -> str:
        """A button this hub does not know (an older version's card, another bot's): nothing is
        done, and the manager is told to use the lead's current card."""
        log.info("telegram: a button with unknown data %r was pressed; nothing done", query.data)
        return plain_staff("tg.staff.stale_button")

    async def _pick_manager(self, number: int, query: CallbackQuery) -> None:
        message = query.message
        if message is None:
            return
        buttons = [
            [InlineKeyboardButton(text=m.name, callback_data=f"assign:{number}:{m.id}")]
            for m in self._hub.settings.managers
            if m.active
        ]
        chat = message.chat.id
        thread = getattr(message, "message_thread_id", None)
        await self._api.call(
            SendMessage(
                chat_id=chat,
                message_thread_id=thread,
                text=staff("tg.staff.pick_manager", lead=f"L-{number}"),
                reply_markup=InlineKeyboardMarkup(inline_keyboard=buttons),
            ),
            chat,
        )
