"""Outbox sender for channel `telegram`: replies and acknowledgements in the customer's chat.

Staff media is sent by copyMessage from the staff group, so it arrives "from the company".
Multi-part deliveries remember which parts went out, so a retry never repeats a part.
"""

from __future__ import annotations

import logging

from aiogram.exceptions import (
    ClientDecodeError,
    TelegramAPIError,
    TelegramBadRequest,
    TelegramNotFound,
)
from aiogram.methods import CopyMessage, EditMessageText, SendMessage

from channels.telegram.api import TelegramApi
from channels.telegram.texts import esc, split_html_escaped
from hub.delivery_failures import NO_ADDRESS, REJECTED, UNREACHABLE
from hub.domain import Contact, IdentityKind, Lead, OutboxItem
from hub.errors import HubError, PermanentError, TransientError
from storage.base import Store

log = logging.getLogger(__name__)

COPY_PREFIX = "tg-copy:"


def copy_ref(chat_id: int, message_id: int, file_id: str = "") -> str:
    """`tg-copy:<chat>:<message_id>[:<file_id>]`: a staff message to copy, and its file for channels
    that must carry the bytes themselves (Bot API file ids hold no colons)."""
    ref = f"{COPY_PREFIX}{chat_id}:{message_id}"
    return f"{ref}:{file_id}" if file_id else ref


def parse_copy_ref(ref: str) -> tuple[int, int, str]:
    """(chat, message_id, file_id) of a `copy_ref`; file_id is "" in refs stored before it was kept."""
    chat, message_id, *rest = ref.removeprefix(COPY_PREFIX).split(":", 2)
    return int(chat), int(message_id), rest[0] if rest else ""


def staff_message_ref(external_id: str | None) -> str | None:
    """`tg:<chat>:<message_id>` of a reply written in the staff group (its stored key prefixes lead and source)."""
    if not external_id:
        return None
    _, found, rest = external_id.partition("tg:")
    return f"tg:{rest}" if found else None


def relay_key(external_id: str) -> str:
    """State key: where a staff message (`tg:<chat>:<message_id>`) was relayed to."""
    return f"tg.relay.{external_id}"


def pending_edit_key(external_id: str) -> str:
    """State key: the latest text of a staff message edited before it was relayed."""
    return f"tg.relay_edit.{external_id}"


class TelegramSender:
    """Delivers outbox rows of channel `telegram` (the lead's customer chat)."""

    channel = "telegram"

    def __init__(self, api: TelegramApi, store: Store) -> None:
        self._api = api
        self._store = store

    async def send(self, item: OutboxItem, lead: Lead, contact: Contact | None) -> str:
        """Send the row's text (split when long) and copies of staff media; returns `chat:msg`."""
        identity = contact.identity(IdentityKind.TELEGRAM) if contact else None
        if identity is None:
            raise PermanentError(
                f"{lead.ref}: the contact has no Telegram account to write to", code=NO_ADDRESS
            )
        chat_id = int(identity.value)
        message = await self._store.get_message(item.message_id)
        staff_ref = staff_message_ref(message.external_id if message else None)
        progress_key = f"tg.out.{item.id}"
        sent: list[int] = list(await self._store.get_state(progress_key) or [])
        steps: list[tuple[str, str]] = []
        text = str(item.payload.get("text") or "")
        edited = await self._store.get_state(pending_edit_key(staff_ref)) if staff_ref and not sent else None
        if isinstance(edited, str) and edited:
            # The manager corrected it while it waited in the queue (once parts of it are out,
            # the parts still to send must be those of the same text).
            text = edited
        copies = [a.ref for a in (message.attachments if message else []) if a.ref.startswith(COPY_PREFIX)]
        if text and not copies:
            steps.extend(("text", part) for part in split_html_escaped(text))
        steps.extend(("copy", ref) for ref in copies)
        for index, (kind, value) in enumerate(steps):
            if index < len(sent):
                continue  # delivered by an earlier attempt
            try:
                if kind == "text":
                    result = await self._api.call(SendMessage(chat_id=chat_id, text=value), chat_id)
                    sent.append(result.message_id)
                else:
                    from_chat, from_message, _ = parse_copy_ref(value)
                    copied = await self._api.call(
                        CopyMessage(chat_id=chat_id, from_chat_id=from_chat, message_id=from_message),
                        chat_id,
                    )
                    sent.append(copied.message_id)
            except (TelegramBadRequest, TelegramNotFound) as exc:
                if staff_ref is not None:
                    # This reply will never go out: an edit waiting for it has nothing to change.
                    await self._store.set_state(pending_edit_key(staff_ref), None)
                # "chat not found": the customer deleted their account (or never wrote to the bot).
                gone = "chat not found" in exc.message.lower() or "user not found" in exc.message.lower()
                raise PermanentError(
                    f"{lead.ref}: Telegram rejected the reply: {exc.message}",
                    code=UNREACHABLE if gone else REJECTED,
                ) from exc
            except (TelegramAPIError, ClientDecodeError) as exc:
                # Anything else from the Bot API (a conflict, an unreadable answer): try later.
                raise TransientError(f"{lead.ref}: Telegram did not take the reply: {exc}") from exc
            if len(steps) > 1:
                await self._store.set_state(progress_key, sent)
        if not sent:
            raise PermanentError(f"{lead.ref}: nothing to send in reply {item.message_id}")
        if staff_ref is not None:
            await self._store.set_state(
                relay_key(staff_ref), {"chat": chat_id, "message_id": sent[0], "lead": lead.number}
            )
            await self._late_edit(staff_ref, chat_id, sent, steps, text)
            # Applied: an edit from now on finds the relay above and edits the sent message itself.
            await self._store.set_state(pending_edit_key(staff_ref), None)
        log.info("%s telegram: delivered %s part(s) of %s", lead.ref, len(sent), item.message_id)
        return f"{chat_id}:{sent[0]}"

    async def _late_edit(
        self, staff_ref: str, chat_id: int, sent: list[int], steps: list[tuple[str, str]], text: str
    ) -> None:
        """An edit that came while this reply was being sent (it found no relay yet): apply it."""
        edited = await self._store.get_state(pending_edit_key(staff_ref))
        if not isinstance(edited, str) or not edited or edited == text:
            return
        if len(steps) != 1 or steps[0][0] != "text":
            log.info("telegram: a staff edit of a media or multi-part reply is not relayed")
            return
        try:
            await self._api.call(
                EditMessageText(chat_id=chat_id, message_id=sent[0], text=esc(edited)), chat_id
            )
        except (TelegramAPIError, HubError) as exc:
            log.warning("telegram: could not relay a staff edit made while sending: %s", exc)
