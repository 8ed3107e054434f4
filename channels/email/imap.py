"""IMAP receiving: one poller per mailbox, run where the store lease for that mailbox is held.

The loop: connect (SSL, STARTTLS or plain), log in, select the mailbox, then fetch by UID
above the last UID handled. IDLE (RFC 2177) wakes it when the server offers it; otherwise it
polls every `poll_every`. A dropped connection reconnects with jittered exponential backoff.

UIDVALIDITY (RFC 3501 2.3.1.1) is kept per mailbox: when it changes, every UID we remember is
meaningless, so the whole mailbox is re-synced and messages already taken are recognised by
the hash of their bytes (see `ingest.py`).

A batch is handed to the sink, which writes it to the inbox; only then is it flagged \\Seen
(or moved) and the last UID advanced. A crash in between means a redelivery, which the
idempotent inbox and intake absorb.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
import re
import ssl
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from aioimaplib import aioimaplib

from hub.config import EmailSettings
from storage.base import Store, StoreError

log = logging.getLogger(__name__)

_UIDVALIDITY = re.compile(rb"UIDVALIDITY (\d+)")
_FETCH_UID = re.compile(rb"UID (\d+)")
_LITERAL = re.compile(rb"\{(\d+)\}$")


class _Protocol(aioimaplib.IMAP4ClientProtocol):  # type: ignore[misc]
    """aioimaplib's protocol, but an unsolicited BYE (RFC 3501 7.1.5) ends the connection.

    aioimaplib only logs it and lets the running command wait for its timeout; Dovecot sends
    one when the selected mailbox is deleted or rebuilt under us.
    """

    def connection_lost(self, exc: Exception | None) -> None:
        # aioimaplib leaves commands waiting for their timeout on a dead connection: fail them
        # now, so the poller notices at the next IMAP call (never in the middle of a store write).
        pending = [self.pending_sync_command, *self.pending_async_commands.values()]
        for command in pending:
            if command is not None:
                command._exception = aioimaplib.Abort(f"connection closed during {command.name}")
                command.close(b"connection closed", "NO")
        super().connection_lost(exc)

    async def execute(self, command: Any, scrub: str | None = None) -> Any:
        if self.transport is None or self.transport.is_closing():
            raise aioimaplib.Abort(f"connection closed before {command.name}")
        return await super().execute(command, scrub)

    def _untagged_response(self, line: bytes) -> Any:
        pending = self.pending_sync_command
        logging_out = pending is not None and pending.name == "LOGOUT"
        if line.startswith(b"* BYE") and not logging_out and self.transport is not None:
            self.transport.close()
        return super()._untagged_response(line)


class _Fetch(aioimaplib.FetchCommand):  # type: ignore[misc]
    """aioimaplib's FETCH, minus two costs per response line that add up on large batches.

    aioimaplib asks after every line whether the response is complete by re-scanning every
    line received so far (quadratic in the batch), and re-arms its inactivity timer (a new
    timer handle) for every line and literal chunk. Here the parenthesis balance since the last
    `n FETCH (` line is kept as lines arrive, and one timer checks the last activity when due.
    """

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        self._open = 0  # '(' minus ')' on the text lines since the last `n FETCH (` line
        self._touched = 0.0
        super().__init__(*args, **kwargs)

    def append_to_resp(self, line: bytes, result: str = "Pending") -> None:
        super().append_to_resp(line, result)
        if type(line) is bytes:  # literal data arrives as bytearray and is not counted
            balance = line.count(b"(") - line.count(b")")
            self._open = balance if self.FETCH_MESSAGE_DATA_RE.match(line) else self._open + balance

    def wait_data(self) -> bool:
        return bool(self._open)

    def _set_timer(self) -> None:
        self._touched = self._loop.time()
        if self._timeout is not None:
            self._timer = self._loop.call_later(self._timeout, self._check_idle)

    def _reset_timer(self) -> None:
        self._touched = self._loop.time()  # the armed timer looks at this when it fires

    def _check_idle(self) -> None:
        idle = self._loop.time() - self._touched
        if idle >= self._timeout:
            self._timeout_callback()
        else:
            self._timer = self._loop.call_later(self._timeout - idle, self._check_idle)


class _Client(aioimaplib.IMAP4):  # type: ignore[misc]
    def create_client(
        self,
        host: str,
        port: int,
        loop: asyncio.AbstractEventLoop | None,
        conn_lost_cb: Callable[[Exception | None], None] | None = None,
        ssl_context: ssl.SSLContext | None = None,
    ) -> None:
        local_loop = loop if loop is not None else asyncio.get_running_loop()
        self.protocol = _Protocol(local_loop, conn_lost_cb)
        self._client_task = local_loop.create_task(
            local_loop.create_connection(lambda: self.protocol, host, port, ssl=ssl_context)
        )


class ImapError(Exception):
    """The IMAP server refused something; the session reconnects after a backoff."""


class LeaseLost(Exception):
    """Another process took the mailbox's lease; stop polling until we can take it back."""


@dataclass(frozen=True, slots=True)
class Fetched:
    uid: int
    raw: bytes


@dataclass(frozen=True, slots=True)
class MailboxPosition:
    account: str
    mailbox: str
    uidvalidity: int
    resync: bool  # UIDVALIDITY changed: messages must be recognised by content


Sink = Callable[[list[Fetched], MailboxPosition], Awaitable[None]]


def _drop(task: asyncio.Future[Any] | None) -> None:
    """Cancel a prefetch nobody will use; its batch is not acknowledged, so it comes again."""
    if task is None:
        return
    task.cancel()
    task.add_done_callback(_note_dropped)


def _note_dropped(task: asyncio.Future[Any]) -> None:
    if not task.cancelled() and task.exception() is not None:
        log.info("IMAP: a prefetched batch ended with %r after the batch before it failed", task.exception())


def parse_fetch(lines: list[Any]) -> list[Fetched]:
    """(UID, raw bytes) pairs from an aioimaplib FETCH response."""
    found: list[Fetched] = []
    pending_uid: int | None = None
    expecting_literal = False
    waiting_uid_for: bytes | None = None
    for line in lines:
        if isinstance(line, bytearray) and expecting_literal:
            data = bytes(line)
            expecting_literal = False
            if pending_uid is not None:
                found.append(Fetched(pending_uid, data))
                pending_uid = None
            else:
                waiting_uid_for = data
            continue
        if not isinstance(line, bytes | bytearray):
            continue
        line = bytes(line)
        uid_match = _FETCH_UID.search(line)
        if waiting_uid_for is not None and uid_match:
            # Some servers send the UID after the literal, in the closing line.
            found.append(Fetched(int(uid_match.group(1)), waiting_uid_for))
            waiting_uid_for = None
            continue
        if b"FETCH" in line and _LITERAL.search(line):
            pending_uid = int(uid_match.group(1)) if uid_match else None
            expecting_literal = True
    return found


def _ssl_context(verify: bool) -> ssl.SSLContext:
    context = ssl.create_default_context(ssl.Purpose.SERVER_AUTH)
    if not verify:
        context.check_hostname = False
        context.verify_mode = ssl.CERT_NONE
    return context


def _uid_set(uids: list[int]) -> str:
    """`1,2,3,7` -> `1:3,7` (keeps long commands short)."""
    ranges: list[str] = []
    start = prev = uids[0]
    for uid in uids[1:]:
        if uid == prev + 1:
            prev = uid
            continue
        ranges.append(f"{start}:{prev}" if start != prev else str(start))
        start = prev = uid
    ranges.append(f"{start}:{prev}" if start != prev else str(start))
    return ",".join(ranges)


class ImapPoller:
    """Receives one mailbox into `sink`; `run()` loops until cancelled."""

    def __init__(
        self,
        settings: EmailSettings,
        store: Store,
        holder: str,
        sink: Sink,
        clock: Callable[[], datetime],
        prepare: Callable[[list[Fetched]], None] | None = None,
    ) -> None:
        self._settings = settings
        self._imap = settings.imap
        self._store = store
        self._holder = holder
        self._sink = sink
        self._prepare = prepare
        self._now = clock
        self.account = settings.account or f"{settings.imap.username}@{settings.imap.host}"
        self.mailbox = settings.imap.mailbox
        self.lease_name = f"email:{self.account}:{self.mailbox}"
        self.state_key = f"email:imap:{self.account}:{self.mailbox}"
        # When the hub first read this mailbox (IMAP dates `taken_from`, and `unread_from` for
        # the unread mail it took then), kept in the mailbox's state for a later resync.
        self._origin: dict[str, str] = {}
        self._client: aioimaplib.IMAP4 | None = None
        self._dropped = asyncio.Event()
        self.connected = asyncio.Event()
        # Set while no batch is being written to the store. Store writes are never cancelled
        # half-way (that can leave a transaction open); we wait for this instead.
        self.sink_idle = asyncio.Event()
        self.sink_idle.set()

    # --- the outer loop: lease, reconnect with backoff ---------------------------------------
    async def run(self) -> None:
        """Hold the mailbox lease and keep a session going; reconnect with backoff on errors."""
        ttl = self._settings.lease_ttl.total_seconds()
        delay = 1.0
        try:
            while True:
                try:
                    if not await self._store.acquire_lease(self.lease_name, self._holder, self._now(), ttl):
                        await asyncio.sleep(ttl / 3)
                        continue
                    await self._session()
                except LeaseLost:
                    log.warning("email %s: lease lost to another process; standing by", self.mailbox)
                    await self._close()
                    await asyncio.sleep(ttl / 3)
                    continue
                except (OSError, TimeoutError, ImapError, aioimaplib.AioImapException, StoreError) as exc:
                    log.warning(
                        "email %s: IMAP session ended (%s: %s)", self.mailbox, type(exc).__name__, exc
                    )
                except Exception:
                    # A bug or an unexpected server answer must not end polling for good.
                    log.exception("email %s: IMAP session failed unexpectedly", self.mailbox)
                if self.connected.is_set():
                    delay = 1.0  # the session had worked: start the backoff afresh
                await self._close()
                wait = random.uniform(delay / 2, delay)
                log.info("email %s: reconnecting in %.1fs", self.mailbox, wait)
                await asyncio.sleep(wait)
                delay = min(delay * 2, self._imap.reconnect_max.total_seconds())
        finally:
            await self._close()
            with contextlib.suppress(StoreError):
                await self._store.release_lease(self.lease_name, self._holder)

    async def _close(self) -> None:
        client, self._client = self._client, None
        self.connected.clear()
        if client is None:
            return
        with contextlib.suppress(Exception):
            if client.has_pending_idle():
                client.idle_done()
        with contextlib.suppress(Exception):
            async with asyncio.timeout(2):
                await client.logout()
        with contextlib.suppress(Exception):
            if client.protocol is not None and client.protocol.transport is not None:
                client.protocol.transport.close()

    # --- one session --------------------------------------------------------------------------
    async def _connect(self) -> aioimaplib.IMAP4:
        imap = self._imap
        timeout = imap.timeout.total_seconds()
        self._dropped.clear()

        def lost(exc: Exception | None) -> None:
            self._dropped.set()

        client = _Client(
            host=imap.host,
            port=imap.port,
            timeout=timeout,
            conn_lost_cb=lost,
            ssl_context=_ssl_context(imap.verify_tls) if imap.security == "ssl" else None,
        )
        self._client = client
        await client.wait_hello_from_server()
        if imap.security == "starttls":
            await self._starttls(client)
        password = imap.password.get_secret_value() if imap.password else ""
        response = await client.login(imap.username, password)
        if response.result != "OK":
            raise ImapError(f"login as {imap.username!r} refused: {_text(response.lines)}")
        return client

    async def _starttls(self, client: aioimaplib.IMAP4) -> None:
        """Upgrade the plain connection (RFC 3501 6.2.1); aioimaplib has no helper for it."""
        protocol = client.protocol
        if "STARTTLS" not in protocol.capabilities:
            raise ImapError("the server does not offer STARTTLS (set email.imap.security)")
        # asyncio.timeout rather than wait_for: on Python 3.11 wait_for can lose a cancellation.
        async with asyncio.timeout(client.timeout):
            response = await protocol.execute(
                aioimaplib.Command("STARTTLS", protocol.new_tag(), loop=protocol.loop)
            )
        if response.result != "OK":
            raise ImapError(f"STARTTLS refused: {_text(response.lines)}")
        loop = asyncio.get_running_loop()
        transport = await loop.start_tls(
            protocol.transport,
            protocol,
            _ssl_context(self._imap.verify_tls),
            server_hostname=self._imap.host,
        )
        protocol.transport = transport
        # Capabilities may change after TLS (RFC 3501 6.2.1): ask again.
        async with asyncio.timeout(client.timeout):
            await protocol.capability()

    async def _select(self, client: aioimaplib.IMAP4) -> int:
        response = await client.select(self.mailbox)
        if response.result != "OK":
            raise ImapError(f"cannot select mailbox {self.mailbox!r}: {_text(response.lines)}")
        for line in response.lines:
            if isinstance(line, bytes | bytearray) and (match := _UIDVALIDITY.search(bytes(line))):
                return int(match.group(1))
        raise ImapError(f"mailbox {self.mailbox!r}: the server sent no UIDVALIDITY")

    async def _session(self) -> None:
        client = await self._connect()
        if self._imap.move_to:
            # Create the folder processed mail goes to; "already exists" is the usual answer.
            await client.create(self._imap.move_to)
        uidvalidity = await self._select(client)
        self.connected.set()
        log.info("email %s: connected (%s), UIDVALIDITY %s", self.mailbox, self._imap.security, uidvalidity)
        use_idle = self._imap.idle and client.has_capability("IDLE")
        ttl = self._settings.lease_ttl.total_seconds()
        poll = self._imap.poll_every.total_seconds()
        loop = asyncio.get_running_loop()
        next_poll = 0.0
        while True:
            if self._dropped.is_set():
                raise ImapError("connection closed by the server")
            if not await self._store.acquire_lease(self.lease_name, self._holder, self._now(), ttl):
                raise LeaseLost()
            if loop.time() >= next_poll or use_idle:
                await self.sync(client, uidvalidity)
                next_poll = loop.time() + poll
            wait = min(ttl / 3, max(next_poll - loop.time(), 0.05))
            if use_idle:
                await self._idle(client, min(ttl / 3, poll if poll > 0 else ttl / 3))
            else:
                await asyncio.sleep(wait)

    async def _idle(self, client: aioimaplib.IMAP4, seconds: float) -> None:
        """Wait in IDLE until the server pushes something, `seconds` pass or the connection drops."""
        idle = await client.idle_start(timeout=seconds)
        dropped = asyncio.ensure_future(self._dropped.wait())
        try:
            while True:
                push = asyncio.ensure_future(client.wait_server_push(timeout=seconds + 5))
                done, _ = await asyncio.wait({push, dropped}, return_when=asyncio.FIRST_COMPLETED)
                if dropped in done:
                    push.cancel()
                    raise ImapError("connection closed by the server during IDLE")
                lines = push.result()
                if lines == aioimaplib.STOP_WAIT_SERVER_PUSH:
                    break
                if any(isinstance(x, bytes | bytearray) and (b"EXISTS" in x or b"BYE" in x) for x in lines):
                    break
        finally:
            dropped.cancel()
            if not self._dropped.is_set():
                if client.has_pending_idle():
                    client.idle_done()
                async with asyncio.timeout(client.timeout):
                    await idle
            else:
                idle.cancel()

    # --- fetching -----------------------------------------------------------------------------
    async def _position(self, uidvalidity: int) -> tuple[int, str]:
        """(last UID handled, mode): mode is 'new' on first sight, 'resync' after a change."""
        state = await self._store.get_state(self.state_key)
        if not isinstance(state, dict):
            return 0, "new"
        origin = state.get("origin")
        self._origin = {str(k): str(v) for k, v in origin.items()} if isinstance(origin, dict) else {}
        if int(state.get("uidvalidity", 0)) != uidvalidity:
            log.warning(
                "email %s: UIDVALIDITY changed %s -> %s; re-syncing the mailbox by content",
                self.mailbox,
                state.get("uidvalidity"),
                uidvalidity,
            )
            return 0, "resync"
        return int(state.get("last_uid", 0)), str(state.get("mode", "normal"))

    async def _search(self, client: aioimaplib.IMAP4, *criteria: str) -> list[int]:
        response = await client.uid_search(*criteria, charset=None)
        if response.result != "OK":
            raise ImapError(f"UID SEARCH {' '.join(criteria)} failed: {_text(response.lines)}")
        uids: list[int] = []
        for line in response.lines:
            if isinstance(line, bytes | bytearray):
                # aioimaplib strips "* SEARCH" from the untagged line, except when it is empty.
                tokens = bytes(line).decode("ascii", "replace").removeprefix("SEARCH").split()
                if tokens and all(t.isdigit() for t in tokens):
                    uids.extend(int(t) for t in tokens)
        return sorted(set(uids))

    async def _first_sync_uids(self, client: aioimaplib.IMAP4) -> list[int]:
        """The unread mail a first start takes: only what arrived within `first_sync_max_age`."""
        unseen = await self._search(client, "UNSEEN")
        max_age = self._imap.first_sync_max_age
        if max_age is None or not unseen:
            return unseen
        # SINCE compares the server's arrival date (day granularity), not the sender's Date header.
        recent = set(await self._search(client, "UNSEEN", "SINCE", imap_date(self._now() - max_age)))
        left = len(unseen) - len(recent)
        if left:
            log.warning(
                "email %s: first start: %d unread message(s) older than %s left in the mailbox, "
                "unread (email.imap.first_sync_max_age)",
                self.mailbox,
                left,
                max_age,
            )
        return [uid for uid in unseen if uid in recent]

    async def _resync_uids(self, client: aioimaplib.IMAP4) -> list[int]:
        """After a UIDVALIDITY change: what the first start would have taken, and everything
        that arrived since; mail from before the hub read the mailbox stays as it is (a mailbox
        of years of read mail would become that many leads). Mailboxes first read by an older
        version have no record of that start: everything."""
        taken_from = self._origin.get("taken_from")
        if not taken_from:
            return await self._search(client, "ALL")
        unread_from = self._origin.get("unread_from")
        unread = ("UNSEEN", "SINCE", unread_from) if unread_from else ("UNSEEN",)
        since = await self._search(client, "SINCE", taken_from)
        return sorted(set(since) | set(await self._search(client, *unread)))

    def _state(self, uidvalidity: int, last_uid: int, mode: str) -> dict[str, Any]:
        return {"uidvalidity": uidvalidity, "last_uid": last_uid, "mode": mode, "origin": self._origin}

    async def sync(self, client: aioimaplib.IMAP4, uidvalidity: int) -> int:
        """Fetch and hand over everything new; returns how many messages were handed over."""
        last_uid, mode = await self._position(uidvalidity)
        floor = 0
        if mode == "new":
            # First sight of this mailbox: take what nobody has read, not years of history.
            everything = await self._search(client, "ALL")
            floor = max(everything, default=0)
            uids = await self._first_sync_uids(client)
            max_age = self._imap.first_sync_max_age
            self._origin = {
                "taken_from": imap_date(self._now()),
                "unread_from": imap_date(self._now() - max_age) if max_age is not None else "",
            }
        elif mode == "resync":
            uids = [u for u in await self._resync_uids(client) if u > last_uid]
        else:
            uids = [u for u in await self._search(client, "UID", f"{last_uid + 1}:*") if u > last_uid]
        if mode != "normal":
            # Remember that this mailbox is being re-synced, so a crash mid-way resumes it.
            await self._store.set_state(self.state_key, self._state(uidvalidity, last_uid, mode))
        position = MailboxPosition(self.account, self.mailbox, uidvalidity, resync=mode != "normal")
        handled = 0
        batch_size = self._imap.fetch_batch
        chunks = [uids[start : start + batch_size] for start in range(0, len(uids), batch_size)]
        ahead: asyncio.Future[list[Fetched]] | None = None
        try:
            for index, chunk in enumerate(chunks):
                fetched = await (ahead or self._fetch_batch(client, chunk))
                ahead = None
                if fetched:
                    self.sink_idle.clear()
                    try:
                        sinking = asyncio.ensure_future(self._sink(fetched, position))
                        if index + 1 < len(chunks):
                            # The next batch travels (and is prepared) while this one is stored;
                            # the connection still carries one command at a time.
                            ahead = asyncio.ensure_future(self._fetch_batch(client, chunks[index + 1]))
                        await sinking
                    finally:
                        self.sink_idle.set()
                    if ahead is not None:
                        await asyncio.wait({ahead})  # its outcome is awaited in the next round
                # A long backlog must not outlive the lease: renew it between batches. The
                # renewal is read at once; its commit is the one the barrier below waits for.
                ttl = self._settings.lease_ttl.total_seconds()
                async with self._store.deferred_commit(wait=False):
                    held = await self._store.acquire_lease(self.lease_name, self._holder, self._now(), ttl)
                if not held:
                    raise LeaseLost()
                if fetched:
                    # The batch's "done" marks are written without a wait; the server hears
                    # \Seen only once they are durable, or a crash would leave them pending.
                    await self._store.sync()
                    await self._acknowledge(client, [f.uid for f in fetched])
                last_uid = max(last_uid, *chunk)
                handled += len(fetched)
                await self._store.set_state(self.state_key, self._state(uidvalidity, last_uid, mode))
        finally:
            _drop(ahead)  # only set when this round failed: that batch was not acknowledged
        if mode != "normal":
            await self._store.set_state(
                self.state_key, self._state(uidvalidity, max(last_uid, floor), "normal")
            )
        return handled

    async def _fetch_batch(self, client: aioimaplib.IMAP4, chunk: list[int]) -> list[Fetched]:
        """Fetch these UIDs and let the sink start preparing them (e.g. parsing elsewhere)."""
        response = await self._fetch(client, _uid_set(chunk))
        if response.result != "OK":
            raise ImapError(f"UID FETCH failed: {_text(response.lines)}")
        wanted = set(chunk)
        fetched = [f for f in parse_fetch(response.lines) if f.uid in wanted]
        if fetched and self._prepare is not None:
            self._prepare(fetched)
        return fetched

    async def _fetch(self, client: aioimaplib.IMAP4, uid_set: str) -> Any:
        """`UID FETCH uid_set (UID BODY.PEEK[])` (what `client.uid("fetch", ...)` sends)."""
        protocol = client.protocol
        command = _Fetch(
            protocol.new_tag(),
            uid_set,
            "(UID BODY.PEEK[])",
            prefix="UID",
            loop=protocol.loop,
            timeout=client.timeout,
        )
        return await protocol.execute(command)

    async def _acknowledge(self, client: aioimaplib.IMAP4, uids: list[int]) -> None:
        """Mark handed-over messages processed: \\Seen, or moved to `move_to`."""
        uid_set = _uid_set(sorted(uids))
        target = self._imap.move_to
        if target:
            if client.has_capability("MOVE"):
                response = await client.uid("move", uid_set, target)
            else:
                response = await client.uid("copy", uid_set, target)
                if response.result == "OK":
                    response = await client.uid("store", uid_set, "+FLAGS.SILENT", r"(\Deleted \Seen)")
                    if response.result == "OK":
                        response = await client.expunge()
        else:
            response = await client.uid("store", uid_set, "+FLAGS.SILENT", r"(\Seen)")
        if response.result != "OK":
            # The inbox has the messages already; a redelivery later is absorbed by intake.
            log.warning(
                "email %s: could not mark %d message(s) processed: %s",
                self.mailbox,
                len(uids),
                _text(response.lines),
            )


_MONTHS = ("Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec")


def imap_date(moment: datetime) -> str:
    """`1-Mar-2025`: an IMAP SEARCH date (RFC 3501 date), English month names whatever the locale."""
    return f"{moment.day}-{_MONTHS[moment.month - 1]}-{moment.year}"


def _text(lines: list[Any]) -> str:
    return " ".join(bytes(x).decode("utf-8", "replace") for x in lines if isinstance(x, bytes | bytearray))[
        :300
    ]
