"""Erasing a contact on request: everything personal goes; the leads stay as numbers.

The store deletes what its own tables hold. Channels that keep a customer's words elsewhere
(Telegram keeps the latest text of an edited message as state) register a hook that is given
the erased messages' ids first: a crash before the store's erasure leaves the request to be
repeated, never a text behind an erasure that was reported done.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable

from hub.domain import Event, utcnow
from hub.events import EventBus
from storage.base import LeadQuery, Store

log = logging.getLogger(__name__)

#: Given the ids of the messages about to be erased, deletes what a channel keeps of them.
ForgetMessages = Callable[[list[str]], Awaitable[None]]

_PAGE = 200


class Erasure:
    def __init__(self, store: Store, bus: EventBus) -> None:
        self._store = store
        self._bus = bus
        self.hooks: list[ForgetMessages] = []

    async def erase(self, contact_id: str, by: str) -> list[int]:
        """Erase the contact's personal data; returns its (now anonymous) lead numbers."""
        message_ids = await self._message_ids(contact_id)
        for forget in self.hooks:
            await forget(message_ids)
        numbers = await self._store.erase_contact(contact_id)
        # The audit entry names who erased what, by ids only: no name, address or text survives.
        event = Event(
            "contact.erased", utcnow(), None, {"contact_id": contact_id, "leads": numbers, "by": by}
        )
        await self._store.append_event(event)
        await self._bus.publish(event, None)
        log.info("contact %s erased on request by %s (%d leads anonymised)", contact_id, by, len(numbers))
        return numbers

    async def _message_ids(self, contact_id: str) -> list[str]:
        ids: list[str] = []
        cursor: str | None = None
        while True:
            page = await self._store.list_leads(LeadQuery(contact_id=contact_id), _PAGE, cursor)
            for lead in page.items:
                ids.extend(m.id for m in await self._store.list_messages(lead.number))
            cursor = page.next_cursor
            if cursor is None:
                return ids
