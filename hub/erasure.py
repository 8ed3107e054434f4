"""Erasing a contact on request: everything personal goes; the leads stay as numbers.

The store deletes what its own tables hold. Channels that keep a customer's words elsewhere
(Telegram keeps the latest text of an edited message as state) register a hook that is given
the erased messages' ids first: a crash before the store's erasure leaves the request to be
repeated, never a text behind an erasure that was reported done.

Attachment files are content-addressed and shared by identical attachments of other messages,
so a file goes only when no remaining message names its ref, and only after the store's erasure
committed. The erased messages' refs are saved under the contact's state key first: a crash
between the store's erasure and the files' deletion leaves them listed there, and erasing the
contact again (the lead page still offers it) deletes them. There is no startup sweep.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable

from hub.attachments import AttachmentStore, is_stored_ref
from hub.domain import Event, utcnow
from hub.events import EventBus
from storage.base import LeadQuery, Store

log = logging.getLogger(__name__)

#: Given the ids of the messages about to be erased, deletes what a channel keeps of them.
ForgetMessages = Callable[[list[str]], Awaitable[None]]

_PAGE = 200
#: State key prefix (+ contact id): refs of an erasure's files not yet known to be deleted.
_PENDING_FILES = "erasure.files:"


class Erasure:
    def __init__(self, store: Store, bus: EventBus, files: AttachmentStore) -> None:
        self._store = store
        self._bus = bus
        self._files = files
        self.hooks: list[ForgetMessages] = []

    async def erase(self, contact_id: str, by: str) -> list[int]:
        """Erase the contact's personal data; returns its (now anonymous) lead numbers."""
        message_ids, refs = await self._messages(contact_id)
        pending_key = _PENDING_FILES + contact_id
        refs |= set(await self._store.get_state(pending_key) or [])  # left by an interrupted run
        if refs:
            await self._store.set_state(pending_key, sorted(refs))
        for forget in self.hooks:
            await forget(message_ids)
        numbers = await self._store.erase_contact(contact_id)
        if refs:
            deleted = await self._delete_unused(refs)
            await self._store.set_state(pending_key, None)
            log.info("contact %s erasure deleted %d of %d attachment files", contact_id, deleted, len(refs))
        # The audit entry names who erased what, by ids only: no name, address or text survives.
        event = Event(
            "contact.erased", utcnow(), None, {"contact_id": contact_id, "leads": numbers, "by": by}
        )
        await self._store.append_event(event)
        await self._bus.publish(event, None)
        log.info("contact %s erased on request by %s (%d leads anonymised)", contact_id, by, len(numbers))
        return numbers

    async def _messages(self, contact_id: str) -> tuple[list[str], set[str]]:
        """The contact's message ids and the refs of their files in the attachment store."""
        ids: list[str] = []
        refs: set[str] = set()
        cursor: str | None = None
        while True:
            page = await self._store.list_leads(LeadQuery(contact_id=contact_id), _PAGE, cursor)
            for lead in page.items:
                for message in await self._store.list_messages(lead.number):
                    ids.append(message.id)
                    refs.update(a.ref for a in message.attachments if is_stored_ref(a.ref))
            cursor = page.next_cursor
            if cursor is None:
                return ids, refs

    async def _delete_unused(self, refs: set[str]) -> int:
        """Delete the files of `refs` that no remaining message names; returns how many went."""
        unused = refs - await self._store.attachment_refs_in_use(sorted(refs))
        deleted = 0
        for ref in sorted(unused):
            deleted += await self._files.delete(ref)
        return deleted
