"""Raw Bot API updates: which inbox queue they go to, and customer messages -> `Inbound`.

Customer messages in a private chat are queued as channel `telegram` and decoded into an
`Inbound` here (parse at the edge); everything else (commands, buttons, staff group
traffic, edits) is queued as `telegram.control` for the channel's own handlers.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from functools import cache
from typing import Any

from aiogram.enums import ContentType
from aiogram.types import Message, Update

from hub import i18n
from hub.domain import Attachment, Identity, IdentityKind, Inbound, InboxItem, LeadKind, ThreadHints
from hub.errors import DecodeError
from hub.identities import normalize_phone, normalize_telegram_username, normalize_typed_email

CUSTOMER = "telegram"
CONTROL = "telegram.control"

#: Private-chat commands handled by the bot itself rather than becoming part of a lead.
PRIVATE_COMMANDS = frozenset({"/start", "/help", "/away", "/back", "/my", "/dashboard"})
#: The stored text of a customer message the hub cannot show (the topic says it in staff words).
UNSHOWN = "[a message of a type the hub does not show]"
QUOTE_CHARS = 80  # of the answered message, on the "↩" line above a customer's reply
#: What a t.me link's start parameter can be (anything else after /start is typed words).
_START_PARAMETER = re.compile(r"^[A-Za-z0-9_-]{1,64}$")
_EMAIL_IN_TEXT = re.compile(r"[A-Za-z0-9._%+-]+@[A-Za-z0-9.-]+\.[A-Za-z]{2,}")


@cache  # the locale files are read once (hub.i18n), so the labels never change
def kind_buttons() -> dict[str, LeadKind]:
    """Every label of the kind keyboard, in every language, and the kind it stands for."""
    labels: dict[str, LeadKind] = {}
    for language in i18n.SUPPORTED:
        labels[i18n.text("tg.kind.service", language)] = LeadKind.SERVICE_REQUEST
        labels[i18n.text("tg.kind.message", language)] = LeadKind.MESSAGE
    return labels


def command_of(text: str | None) -> tuple[str, str]:
    """`/assign@bot olena` -> (`/assign`, `olena`); ('', '') for text that is not a command."""
    if not text or not text.startswith("/") or text.startswith("//"):
        return "", ""
    head, _, rest = text.partition(" ")
    return head.split("@", 1)[0].lower(), rest.strip()


def private_command(text: str | None) -> str:
    """The bot's own command a private message is (`PRIVATE_COMMANDS`), or '' for a message.

    "/help my boiler leaks" is a request in words, not a command: only a link's start parameter
    may follow /start or /help (the words were dropped after a greeting).
    """
    command, argument = command_of(text)
    if command not in PRIVATE_COMMANDS:
        return ""
    if command in ("/start", "/help") and argument and not _START_PARAMETER.match(argument):
        return ""
    return command


def parse_update(payload: bytes) -> Update:
    """The stored JSON of one update as aiogram's typed object."""
    try:
        data = json.loads(payload.decode("utf-8"))
        return Update.model_validate(data)
    except (ValueError, TypeError) as exc:
        raise DecodeError(f"not a Bot API update: {exc}") from exc


def update_id_of(data: dict[str, Any]) -> int:
    """The update_id of a raw update, or DecodeError."""
    value = data.get("update_id")
    if not isinstance(value, int):
        raise DecodeError("update without an integer update_id")
    return value


def emails_in(text: str) -> list[str]:
    """Plausible email addresses written in a message (normalized)."""
    found = (normalize_typed_email(m) for m in _EMAIL_IN_TEXT.findall(text or ""))
    return [e for e in dict.fromkeys(found) if e]


def classify(data: dict[str, Any], staff: frozenset[int] = frozenset()) -> str:
    """The inbox queue for one raw update: a customer message, or control traffic.

    `staff`: the managers' Telegram ids; what they write to the bot is never a customer's.
    """
    message = data.get("message")
    if not isinstance(message, dict):
        return CONTROL
    chat = message.get("chat") or {}
    sender = message.get("from") or {}
    if chat.get("type") != "private" or sender.get("is_bot") or sender.get("id") in staff:
        return CONTROL
    text = message.get("text") or ""
    if private_command(text) or text.strip() in kind_buttons():
        return CONTROL
    if message.get("contact") or emails_in(text or message.get("caption") or ""):
        # Shared phone numbers and email addresses may merge contacts: handled with care.
        return CONTROL
    return CUSTOMER


def kind_choice(data: dict[str, Any]) -> tuple[int, str] | None:
    """(user id, kind) when the update is a customer's press of a kind button, else None."""
    message = data.get("message")
    if not isinstance(message, dict) or (message.get("chat") or {}).get("type") != "private":
        return None
    user = (message.get("from") or {}).get("id")
    kind = kind_buttons().get(str(message.get("text") or "").strip())
    return (user, kind.value) if isinstance(user, int) and kind is not None else None


def private_sender(data: dict[str, Any], staff: frozenset[int]) -> int | None:
    """The customer whose own order this update keeps, or None when it must be handled alone.

    A customer's plain messages, commands, kind buttons and edits in the private chat change
    only that customer's leads, so different customers' updates may be processed at once.
    Everything else may reach across customers and is processed in its place in the stream:
    staff traffic (group posts, buttons, managers' own commands), and messages that may merge
    contacts (a shared phone or email, a signed /start link).
    """
    message = data.get("message")
    if not isinstance(message, dict):
        message = data.get("edited_message")
    if not isinstance(message, dict):
        return None
    chat = message.get("chat") or {}
    sender = message.get("from") or {}
    user = sender.get("id")
    if chat.get("type") != "private" or not isinstance(user, int) or user in staff or sender.get("is_bot"):
        return None
    text = str(message.get("text") or message.get("caption") or "")
    command, argument = command_of(text)
    if message.get("contact") or emails_in(text) or (command == "/start" and argument):
        return None
    return user


#: What a person's message may carry that the hub passes on (media as a copy of the message).
RELAYABLE = frozenset(
    {
        ContentType.TEXT,
        ContentType.PHOTO,
        ContentType.DOCUMENT,
        ContentType.VIDEO,
        ContentType.VOICE,
        ContentType.AUDIO,
        ContentType.VIDEO_NOTE,
        ContentType.ANIMATION,
        ContentType.STICKER,
        ContentType.LOCATION,
        ContentType.VENUE,
        ContentType.CONTACT,
    }
)
#: What a person may send that the hub cannot pass on; every other type is a service message.
UNRELAYABLE = frozenset(
    {
        ContentType.DICE,
        ContentType.POLL,
        ContentType.GAME,
        ContentType.STORY,
        ContentType.INVOICE,
        ContentType.PAID_MEDIA,
        ContentType.GIVEAWAY,
        ContentType.CHECKLIST,
        ContentType.LIVE_PHOTO,
    }
)


def is_service(message: Message) -> bool:
    """True for Telegram's service messages (pins, topic changes, video chats, chat photo...)."""
    # Unknown types count as service: Telegram adds new service messages far more often than
    # new kinds of content, and relaying a service message to a customer is the worse mistake.
    return message.content_type not in RELAYABLE | UNRELAYABLE


def is_relayable(message: Message) -> bool:
    """True when the hub can pass this message on (text, media, a location or a contact)."""
    return message.content_type in RELAYABLE


#: Ref of a file a customer sent (its Bot API file id follows).
FILE_PREFIX = "tg-file:"


@dataclass(frozen=True, slots=True)
class Content:
    """What a Telegram message carries, flattened for the hub."""

    text: str
    attachments: tuple[Attachment, ...]


def content_of(message: Message) -> Content:
    """Text (or caption, or a description of a location/contact) and attachment facts."""
    text = message.text or message.caption or ""
    attachments: list[Attachment] = []
    if message.photo:
        largest = message.photo[-1]
        attachments.append(
            Attachment("photo.jpg", "image/jpeg", largest.file_size or 0, f"{FILE_PREFIX}{largest.file_id}")
        )
    for media, default_type in (
        (message.document, "application/octet-stream"),
        (message.video, "video/mp4"),
        (message.voice, "audio/ogg"),
        (message.audio, "audio/mpeg"),
        (message.video_note, "video/mp4"),
        (message.animation, "video/mp4"),
    ):
        if media is None:
            continue
        name = getattr(media, "file_name", None) or type(media).__name__.lower()
        mime = getattr(media, "mime_type", None) or default_type
        attachments.append(Attachment(name, mime, media.file_size or 0, f"{FILE_PREFIX}{media.file_id}"))
    if message.sticker:
        sticker = message.sticker
        mime = "video/webm" if sticker.is_video else "image/webp"
        if sticker.is_animated:
            mime = "application/x-tgsticker"
        # A file like any other: staff stickers reach the customer as a copy, not as a word.
        attachments.append(
            Attachment("sticker", mime, sticker.file_size or 0, f"{FILE_PREFIX}{sticker.file_id}")
        )
        text = text or f"[sticker {sticker.emoji or ''}]".strip()
    if message.location:
        loc = message.location
        text = (text + "\n" if text else "") + f"📍 {loc.latitude:.6f}, {loc.longitude:.6f}"
    if message.contact:
        contact = message.contact
        name = " ".join(p for p in (contact.first_name, contact.last_name) if p)
        text = (text + "\n" if text else "") + f"☎ {name} {contact.phone_number}".strip()
    if message.dice:
        text = f"{message.dice.emoji} {message.dice.value}"
    if message.poll:
        poll = message.poll
        text = "\n".join([f"📊 {poll.question}", *(f"• {option.text}" for option in poll.options)])
    if not text and attachments:
        text = ", ".join(f"[{a.name}]" for a in attachments)
    if not text:
        # Games, stories, invoices...: staff still see that the customer wrote something.
        text = UNSHOWN
    return Content(text=text, attachments=tuple(attachments))


def replied_line(message: Message) -> str:
    """`↩ <start of the answered message>` when the customer used Telegram's Reply ('' otherwise):
    the hub keeps no link to that message, so without it staff cannot tell what is answered."""
    quoted = message.quote.text if message.quote is not None else ""
    replied = message.reply_to_message
    if not quoted and replied is not None:
        quoted = replied.text or replied.caption or ""
        if not quoted and (described := content_of(replied).text) != UNSHOWN:
            quoted = described  # a photo, a location...: what the topic would call it
    quoted = " ".join(quoted.split())
    if len(quoted) > QUOTE_CHARS:
        quoted = quoted[: QUOTE_CHARS - 1].rstrip() + "…"
    return f"↩ {quoted}" if quoted else ""


def customer_text(message: Message) -> str:
    """A customer message's text as the hub keeps it: what it answers (`replied_line`) above it."""
    text = content_of(message).text
    line = replied_line(message)
    # UNSHOWN stays alone: the topic replaces that marker with its own words.
    return f"{line}\n{text}" if line and text != UNSHOWN else text


def sender_identities(message: Message) -> tuple[Identity, tuple[Identity, ...]]:
    """The sender's Telegram identity and what else this message proves about them."""
    user = message.from_user
    if user is None:
        raise DecodeError(f"message {message.chat.id}:{message.message_id} has no sender")
    name = user.full_name
    sender = Identity(IdentityKind.TELEGRAM, str(user.id), name)
    others: list[Identity] = []
    if user.username and (username := normalize_telegram_username(user.username)):
        others.append(Identity(IdentityKind.TELEGRAM_USERNAME, username, name))
    contact = message.contact
    # Only the user's own number proves anything: a forwarded card of someone else does not.
    if contact is not None and contact.user_id == user.id:
        # Telegram sends the full international number, mostly without its "+".
        number = contact.phone_number.strip()
        phone = normalize_phone(number if number.startswith("+") else f"+{number}")
        if phone:
            others.append(Identity(IdentityKind.PHONE, phone, name))
    for email in emails_in(message.text or message.caption or ""):
        others.append(Identity(IdentityKind.EMAIL, email, name))
    return sender, tuple(others)


def message_external_id(chat_id: int, message_id: int) -> str:
    """The idempotency key of a customer message: (chat, message_id)."""
    return f"{chat_id}:{message_id}"


class CustomerDecoder:
    """Decodes a stored private-chat message into an `Inbound` (the `telegram` queue)."""

    def __init__(self, russian_fallback: str) -> None:
        self._fallback = russian_fallback

    def __call__(self, item: InboxItem) -> Inbound:
        update = parse_update(item.payload)
        message = update.message
        if message is None:
            raise DecodeError(f"update {item.external_id} carries no message")
        return self.inbound(message, item)

    def inbound(self, message: Message, item: InboxItem) -> Inbound:
        """The `Inbound` for one customer message stored as `item`."""
        sender, others = sender_identities(message)
        content = content_of(message)
        text = customer_text(message)
        kind = item.meta.get("kind")
        lead = item.meta.get("lead")
        user = message.from_user
        language = i18n.pick_language(user.language_code if user else None, self._fallback)
        return Inbound(
            channel=CUSTOMER,
            external_id=message_external_id(message.chat.id, message.message_id),
            sender=sender,
            other_identities=others,
            text=text,
            attachments=content.attachments,
            received_at=item.received_at,
            kind_hint=LeadKind(kind) if kind else None,
            thread=ThreadHints(lead_number=int(lead)) if isinstance(lead, int) else ThreadHints(),
            language=language,
            meta={"chat_id": message.chat.id, "message_id": message.message_id, "inbox": item.external_id},
        )
