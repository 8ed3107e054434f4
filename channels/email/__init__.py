"""The email channel: IMAP in (one leased poller per mailbox), SMTP out through the outbox.

Parts: `imap.py` receives, `ingest.py` stores raw first and drives intake, bounces and
acknowledgements, `parse.py`/`decode.py` turn MIME into an `Inbound`, `smtp.py` sends.
Attachment files are kept by content hash in `hub.attachments`.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from typing import TYPE_CHECKING

from hub.attachments import AttachmentStore
from hub.config import EmailSettings
from hub.tasks import stop_task

from .decode import CHANNEL, EmailDecoder
from .imap import ImapPoller
from .ingest import EmailIngest
from .parse_pool import ParsePool
from .smtp import SmtpSender

if TYPE_CHECKING:
    from hub.app import Hub

log = logging.getLogger(__name__)

__all__ = ["EmailChannel"]

STOP_GRACE_SECONDS = 10.0


class EmailChannel:
    """Registers the decoder and the SMTP sender; `start` runs the IMAP poller."""

    name = CHANNEL

    def __init__(self, settings: EmailSettings) -> None:
        self.settings = settings
        self.decoder = EmailDecoder(settings)
        self.attachments = AttachmentStore(settings.attachments_dir)
        self.parser = ParsePool(settings.parse_workers)
        self.poller: ImapPoller | None = None
        self.ingest: EmailIngest | None = None
        self._hub: Hub | None = None
        self._task: asyncio.Task[None] | None = None

    def attach(self, hub: Hub) -> None:
        """Register the decoder and sender; build the poller (started by `start`)."""
        self._hub = hub
        self.ingest = EmailIngest(hub, self.decoder, self.attachments, self.parser)
        hub.inbox.register(CHANNEL, self.decoder, after=self.ingest.after_intake)
        hub.outbox.register(SmtpSender(self.settings, hub.store, hub.files))
        hub.bus.subscribe("email.replayed-bounces", self.ingest.on_quarantined)
        self.poller = ImapPoller(
            self.settings, hub.store, hub.instance_id, self.ingest, hub.now, prepare=self.ingest.prepare
        )

    async def start(self) -> None:
        """Start polling the mailbox (where this process holds its lease)."""
        if self.poller is not None and self._task is None:
            self._task = asyncio.create_task(self.poller.run(), name=f"email-imap-{self.poller.mailbox}")

    async def ingest_stopped(self) -> None:
        """Drop parses prepared for batches nobody will store, and stop the parse workers."""
        if self.ingest is not None:
            self.ingest.forget_prepared()
        await self.parser.close()

    async def stop(self) -> None:
        """Stop polling; messages not yet acknowledged upstream are fetched again next time."""
        if self._task is not None:
            if self.poller is not None and not self.poller.sink_idle.is_set():
                # A batch is being written: let it finish (bounded) rather than cut a write short.
                with contextlib.suppress(TimeoutError):
                    async with asyncio.timeout(STOP_GRACE_SECONDS):
                        await self.poller.sink_idle.wait()
            # aioimaplib's wait_for can swallow one cancellation.
            await stop_task(self._task)
            self._task = None
        await self.ingest_stopped()
