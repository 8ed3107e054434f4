"""SQLite adapter (aiosqlite, WAL): the embedded default store.

One connection per process. Write units run one at a time inside a savepoint, so a failing
unit undoes only itself; concurrent units share one commit (group commit), which is what
lets a single file take thousands of small durable writes a second. Several processes on one
file serialize through `BEGIN IMMEDIATE` and SQLite's busy timeout.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import sqlite3
import time
import urllib.parse
from collections.abc import AsyncIterator, Callable, Iterable
from dataclasses import dataclass, replace
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, TypeVar

import aiosqlite

from hub.domain import (
    ACTIVE_STATUSES,
    Attachment,
    Contact,
    DeliveryState,
    Direction,
    Event,
    EventType,
    Identity,
    IdentityKind,
    InboxItem,
    Lead,
    LeadKind,
    LeadStatus,
    Message,
    OutboxItem,
    Page,
)
from storage.base import DuplicateError, LeadChanges, LeadQuery, StoreError

SCHEMA_VERSION = 1

_SCHEMA = """
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS counters (name TEXT PRIMARY KEY, value INTEGER NOT NULL);
CREATE TABLE IF NOT EXISTS kv (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS inbox (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    channel TEXT NOT NULL, external_id TEXT NOT NULL, payload BLOB NOT NULL,
    meta TEXT NOT NULL DEFAULT '{}', received_at REAL NOT NULL,
    status TEXT NOT NULL DEFAULT 'pending', reason TEXT NOT NULL DEFAULT '',
    lead_number INTEGER, attempts INTEGER NOT NULL DEFAULT 0,
    claimed_by TEXT, claimed_until REAL,
    UNIQUE (channel, external_id)
);
CREATE INDEX IF NOT EXISTS inbox_pending ON inbox (id) WHERE status = 'pending';
CREATE INDEX IF NOT EXISTS inbox_status ON inbox (status, id);
CREATE TABLE IF NOT EXISTS contacts (
    id TEXT PRIMARY KEY, name TEXT NOT NULL, language TEXT NOT NULL DEFAULT '',
    tags TEXT NOT NULL DEFAULT '[]', created_at REAL NOT NULL
);
CREATE TABLE IF NOT EXISTS identities (
    kind TEXT NOT NULL, value TEXT NOT NULL, contact_id TEXT NOT NULL,
    display_name TEXT NOT NULL DEFAULT '', PRIMARY KEY (kind, value)
);
CREATE INDEX IF NOT EXISTS identities_contact ON identities (contact_id);
CREATE TABLE IF NOT EXISTS leads (
    number INTEGER PRIMARY KEY, kind TEXT NOT NULL, channel TEXT NOT NULL,
    contact_id TEXT NOT NULL, status TEXT NOT NULL, subject TEXT NOT NULL DEFAULT '',
    form_id TEXT NOT NULL DEFAULT '', assignee TEXT, team TEXT,
    priority INTEGER NOT NULL DEFAULT 0, tags TEXT NOT NULL DEFAULT '[]',
    origin_external_id TEXT NOT NULL,
    created_at REAL NOT NULL, updated_at REAL NOT NULL,
    first_response_at REAL, resolved_at REAL,
    first_response_due REAL, warn_due REAL, warned_at REAL, breached_at REAL,
    breach_pending_at REAL, warn_pending_at REAL,
    extra TEXT NOT NULL DEFAULT '{}',
    UNIQUE (channel, origin_external_id)
);
CREATE INDEX IF NOT EXISTS leads_breach_pending ON leads (breach_pending_at)
    WHERE breach_pending_at IS NOT NULL;
CREATE INDEX IF NOT EXISTS leads_warn_pending ON leads (warn_pending_at)
    WHERE warn_pending_at IS NOT NULL;
CREATE INDEX IF NOT EXISTS leads_contact_status ON leads (contact_id, status);
CREATE INDEX IF NOT EXISTS leads_assignee_status ON leads (assignee, status);
CREATE INDEX IF NOT EXISTS leads_status_number ON leads (status, number);
CREATE INDEX IF NOT EXISTS leads_created ON leads (created_at);
CREATE TABLE IF NOT EXISTS messages (
    id TEXT PRIMARY KEY, lead_number INTEGER NOT NULL, direction TEXT NOT NULL,
    channel TEXT NOT NULL, author TEXT NOT NULL, text TEXT NOT NULL,
    html TEXT NOT NULL DEFAULT '', attachments TEXT NOT NULL DEFAULT '[]',
    external_id TEXT, refs TEXT NOT NULL DEFAULT '[]', delivery TEXT,
    created_at REAL NOT NULL, seq INTEGER NOT NULL,
    UNIQUE (channel, external_id)
);
CREATE INDEX IF NOT EXISTS messages_lead ON messages (lead_number, seq);
CREATE TABLE IF NOT EXISTS refs (ref TEXT PRIMARY KEY, lead_number INTEGER NOT NULL);
CREATE TABLE IF NOT EXISTS outbox (
    id TEXT PRIMARY KEY, message_id TEXT NOT NULL, lead_number INTEGER NOT NULL,
    channel TEXT NOT NULL, payload TEXT NOT NULL, state TEXT NOT NULL,
    attempts INTEGER NOT NULL DEFAULT 0, next_attempt_at REAL NOT NULL,
    last_error TEXT NOT NULL DEFAULT '', claimed_by TEXT, claimed_until REAL,
    sent_at REAL, external_ref TEXT NOT NULL DEFAULT '', created_at REAL NOT NULL
);
CREATE INDEX IF NOT EXISTS outbox_due ON outbox (channel, next_attempt_at) WHERE state = 'queued';
CREATE TABLE IF NOT EXISTS events (
    id INTEGER PRIMARY KEY AUTOINCREMENT, lead_number INTEGER, type TEXT NOT NULL,
    at REAL NOT NULL, data TEXT NOT NULL DEFAULT '{}'
);
CREATE INDEX IF NOT EXISTS events_lead ON events (lead_number, id);
CREATE INDEX IF NOT EXISTS events_type ON events (type, id);
CREATE TABLE IF NOT EXISTS leases (name TEXT PRIMARY KEY, holder TEXT NOT NULL, expires_at REAL NOT NULL);
"""


def _ts(value: datetime | None) -> float | None:
    return None if value is None else value.timestamp()


def _dt(value: float | None) -> datetime | None:
    return None if value is None else datetime.fromtimestamp(value, UTC)


def _req_dt(value: float) -> datetime:
    return datetime.fromtimestamp(value, UTC)


def _attachments_json(items: Iterable[Attachment]) -> str:
    return json.dumps(
        [
            {
                "name": a.name,
                "content_type": a.content_type,
                "size": a.size,
                "ref": a.ref,
                "dropped_reason": a.dropped_reason,
            }
            for a in items
        ],
        ensure_ascii=False,
    )


def _attachments(raw: str) -> list[Attachment]:
    return [Attachment(**item) for item in json.loads(raw)]


_LEAD_COLUMNS = (
    "number, kind, channel, contact_id, status, subject, form_id, assignee, team, priority, tags, "
    "origin_external_id, created_at, updated_at, first_response_at, resolved_at, "
    "first_response_due, warn_due, warned_at, breached_at"
)


def _lead(row: sqlite3.Row) -> Lead:
    return Lead(
        number=row["number"],
        kind=LeadKind(row["kind"]),
        channel=row["channel"],
        contact_id=row["contact_id"],
        status=LeadStatus(row["status"]),
        subject=row["subject"],
        form_id=row["form_id"],
        assignee=row["assignee"],
        team=row["team"],
        priority=row["priority"],
        tags=json.loads(row["tags"]),
        origin_external_id=row["origin_external_id"],
        created_at=_req_dt(row["created_at"]),
        updated_at=_req_dt(row["updated_at"]),
        first_response_at=_dt(row["first_response_at"]),
        resolved_at=_dt(row["resolved_at"]),
        first_response_due=_dt(row["first_response_due"]),
        warn_due=_dt(row["warn_due"]),
        warned_at=_dt(row["warned_at"]),
        breached_at=_dt(row["breached_at"]),
    )


def _message(row: sqlite3.Row) -> Message:
    return Message(
        id=row["id"],
        lead_number=row["lead_number"],
        direction=Direction(row["direction"]),
        channel=row["channel"],
        author=row["author"],
        text=row["text"],
        html=row["html"],
        attachments=_attachments(row["attachments"]),
        external_id=row["external_id"],
        refs=json.loads(row["refs"]),
        delivery=DeliveryState(row["delivery"]) if row["delivery"] else None,
        created_at=_req_dt(row["created_at"]),
    )


def _outbox(row: sqlite3.Row) -> OutboxItem:
    return OutboxItem(
        id=row["id"],
        message_id=row["message_id"],
        lead_number=row["lead_number"],
        channel=row["channel"],
        payload=json.loads(row["payload"]),
        state=DeliveryState(row["state"]),
        attempts=row["attempts"],
        next_attempt_at=_dt(row["next_attempt_at"]),
        last_error=row["last_error"],
        sent_at=_dt(row["sent_at"]),
        external_ref=row["external_ref"],
        created_at=_req_dt(row["created_at"]),
    )


def _inbox(row: sqlite3.Row) -> InboxItem:
    return InboxItem(
        id=row["id"],
        channel=row["channel"],
        external_id=row["external_id"],
        payload=bytes(row["payload"]),
        received_at=_req_dt(row["received_at"]),
        status=row["status"],
        reason=row["reason"],
        lead_number=row["lead_number"],
        attempts=row["attempts"],
        meta=json.loads(row["meta"]),
    )


def _event(row: sqlite3.Row) -> Event:
    return Event(
        id=row["id"],
        type=row["type"],
        at=_req_dt(row["at"]),
        lead_number=row["lead_number"],
        data=json.loads(row["data"]),
    )


_ACTIVE = tuple(s.value for s in ACTIVE_STATUSES)
_ACTIVE_SQL = "(" + ",".join(f"'{s}'" for s in sorted(_ACTIVE)) + ")"


_T = TypeVar("_T")


async def _in_thread(db: aiosqlite.Connection, fn: Callable[..., _T], *args: Any) -> _T:
    """Run `fn(*args)` in aiosqlite's database thread, as one hop (aiosqlite's own mechanism)."""
    result: _T = await db._execute(fn, *args)  # type: ignore[no-untyped-call]
    return result


@dataclass(slots=True)
class _Result:
    """A statement's outcome, fetched in the database thread (cursor-like for the unit code)."""

    rows: list[sqlite3.Row]
    rowcount: int
    lastrowid: int | None

    async def fetchone(self) -> sqlite3.Row | None:
        return self.rows[0] if self.rows else None

    async def fetchall(self) -> list[sqlite3.Row]:
        return self.rows

    async def close(self) -> None:
        """Nothing to close: the cursor was closed in the database thread."""


class _PendingCommit:
    """A COMMIT owed to waiting units, run by the next unit's first hop (see _UnitDb._run)."""

    def __init__(self, waiters: list[asyncio.Future[None]]) -> None:
        self.waiters = waiters
        self.attempted = False
        self.error: StoreError | None = None

    def run(self, conn: sqlite3.Connection, store: SqliteStore) -> None:
        # In the database thread, before the next unit's BEGIN/SAVEPOINT.
        self.attempted = True
        try:
            conn.execute("COMMIT")
            store._last_commit = time.monotonic()
        except sqlite3.Error as exc:
            self.error = StoreError(f"SQLite {store.path}: commit failed: {exc}")
            with contextlib.suppress(sqlite3.Error):
                conn.execute("ROLLBACK")
        finally:
            store._in_txn = False
            store._savepoint_open = False

    def report(self, store: SqliteStore) -> None:
        # Back in the event loop: tell the waiters, or hand them back if no COMMIT ran.
        if not self.attempted:
            store._commit_waiters[:0] = self.waiters
            return
        for waiter in self.waiters:
            if waiter.done():
                continue
            if self.error is None:
                waiter.set_result(None)
            else:
                waiter.set_exception(self.error)


class _UnitDb:
    """The connection as a write unit sees it: each statement is ONE trip to the database thread.

    aiosqlite runs every call (execute, fetchone, close) as its own hop through its worker
    thread, and under load each hop waits a full event-loop turn; writes are serialized, so
    hops per unit bound the write rate. Here a statement, its rows and its cursor's close go
    in one hop, and the unit's bookkeeping rides along with its first statement: BEGIN
    IMMEDIATE when no transaction is open, RELEASE of the previous unit's savepoint (done
    lazily; COMMIT releases it too) and this unit's SAVEPOINT.
    """

    def __init__(self, store: SqliteStore, db: aiosqlite.Connection) -> None:
        self._store = store
        self._db = db
        self._started = False

    def _job(self, sql: str, params: Any, many: bool, commit: _PendingCommit | None) -> _Result:
        # Runs in aiosqlite's thread; the store's lock is held by this unit meanwhile.
        conn: sqlite3.Connection = self._db._conn
        store = self._store
        if not self._started:
            if commit is not None:
                commit.run(conn, store)
            if not store._in_txn:
                conn.execute("BEGIN IMMEDIATE")
                store._in_txn = True
            if store._savepoint_open:
                conn.execute("RELEASE unit")
                store._savepoint_open = False
            conn.execute("SAVEPOINT unit")
            store._savepoint_open = True
            self._started = True
        cursor = conn.executemany(sql, params) if many else conn.execute(sql, params)
        try:
            rows = cursor.fetchall()  # RETURNING rows; rowcount is final only after this
            return _Result(rows, cursor.rowcount, cursor.lastrowid)
        finally:
            cursor.close()

    async def _run(self, sql: str, params: Any, many: bool) -> _Result:
        commit = None
        store = self._store
        if not self._started and store._commit_waiters and store._in_txn and not store._txn_lost:
            # Units that finished before this one still wait for their COMMIT: it rides along
            # with this unit's first statement (no extra hop, and no wait for the flush task
            # at the back of the queue). Waiters are told once the hop is back.
            commit = _PendingCommit(store._commit_waiters)
            store._commit_waiters = []
        try:
            return await _in_thread(self._db, self._job, sql, params, many, commit)
        finally:
            if commit is not None:
                commit.report(store)

    async def execute(self, sql: str, params: Iterable[Any] = ()) -> _Result:
        """Run one statement of the unit."""
        return await self._run(sql, tuple(params), False)

    async def executemany(self, sql: str, params: Iterable[Iterable[Any]]) -> _Result:
        """Run one statement for each parameter tuple."""
        return await self._run(sql, [tuple(p) for p in params], True)

    async def rollback(self) -> None:
        """Undo this unit's statements only (the transaction keeps the other units' work)."""
        if not self._started:
            return

        def undo() -> None:
            conn: sqlite3.Connection = self._db._conn
            store = self._store
            store._savepoint_open = False
            try:
                conn.execute("ROLLBACK TO unit")
                conn.execute("RELEASE unit")
            except sqlite3.Error:
                if conn.in_transaction:
                    raise
                # SQLite rolled the whole transaction back (I/O error, disk full): the other
                # units waiting for this commit lost their work too, and must hear so.
                store._in_txn = False
                store._txn_lost = True

        await _in_thread(self._db, undo)


class SqliteStore:
    """The Store protocol on one SQLite file."""

    backend = "sqlite"

    def __init__(self, path: str | Path, busy_timeout_ms: int = 10_000) -> None:
        self.path = Path(path)
        self._busy_timeout_ms = busy_timeout_ms
        self._db: aiosqlite.Connection | None = None
        self._lock = asyncio.Lock()
        self._in_txn = False
        self._savepoint_open = False  # the previous unit's savepoint, released lazily
        self._txn_lost = False  # SQLite rolled back units that still wait for their commit
        self._queued = 0  # units waiting for the lock (the last of a burst commits)
        self._last_commit = 0.0  # time.monotonic() of the last successful commit
        self._commit_waiters: list[asyncio.Future[None]] = []
        self._commit_scheduled = False

    @classmethod
    def from_url(cls, url: str) -> SqliteStore:
        """`sqlite:///data/hub.db` (relative) or `sqlite:////abs/path.db`; `?busy_timeout=10s`
        sets how long a write waits for another process's lock before failing (503)."""
        path, _, query = url.removeprefix("sqlite:///").partition("?")
        if not path:
            raise StoreError(f"storage url {url!r} has no file path")
        options = urllib.parse.parse_qs(query)
        unknown = set(options) - {"busy_timeout"}
        if unknown:
            raise StoreError(f"storage url {url!r}: unknown option(s) {sorted(unknown)}; known: busy_timeout")
        if "busy_timeout" in options:
            from hub.config import parse_duration

            try:
                timeout = parse_duration(options["busy_timeout"][-1])
            except ValueError as exc:
                raise StoreError(f"storage url {url!r}: busy_timeout: {exc}") from exc
            return cls(path, busy_timeout_ms=int(timeout.total_seconds() * 1000))
        return cls(path)

    # --- lifecycle ------------------------------------------------------------------------
    async def open(self) -> None:
        if self._db is not None:
            return
        self.path.parent.mkdir(parents=True, exist_ok=True)
        # isolation_level=None: we open transactions ourselves with BEGIN IMMEDIATE, so two
        # processes never deadlock upgrading a read lock (SQLITE_BUSY_SNAPSHOT in WAL mode).
        self._db = await aiosqlite.connect(self.path, isolation_level=None)
        self._db.row_factory = sqlite3.Row
        await self._db.execute(f"PRAGMA busy_timeout = {int(self._busy_timeout_ms)}")
        await self._db.execute("PRAGMA journal_mode = WAL")
        # NORMAL in WAL mode is durable against process crashes (SIGKILL); only an OS crash
        # or power loss can lose the last commits.
        await self._db.execute("PRAGMA synchronous = NORMAL")
        await self._db.execute("PRAGMA foreign_keys = OFF")
        await self._db.execute("BEGIN IMMEDIATE")
        try:
            await self._create_schema()
            await self._db.execute(
                "INSERT OR IGNORE INTO meta (key, value) VALUES ('schema_version', ?)",
                (str(SCHEMA_VERSION),),
            )
            await self._db.execute("INSERT OR IGNORE INTO counters (name, value) VALUES ('lead', 0)")
            await self._db.execute("COMMIT")
        except BaseException:
            await self._db.execute("ROLLBACK")
            raise

    async def _create_schema(self) -> None:
        assert self._db is not None
        for statement in _SCHEMA.split(";"):
            if statement.strip():
                await self._db.execute(statement)

    async def close(self) -> None:
        if self._db is None:
            return
        async with self._lock:
            if self._in_txn:
                await self._db.execute("COMMIT")
                self._in_txn = False
        await self._db.close()
        self._db = None

    async def ping(self) -> bool:
        try:
            await self._conn.execute_fetchall("SELECT 1")
        except (sqlite3.Error, ValueError, StoreError):
            return False
        if time.monotonic() - self._last_commit < 2.0:
            return True  # we wrote a moment ago
        # Reads work even while another connection holds the write lock (WAL), so ask for the
        # write lock itself, briefly, on a connection of its own: "degraded" must mean that a
        # submission would fail now.
        return await asyncio.to_thread(self._can_write)

    def _can_write(self) -> bool:
        try:
            conn = sqlite3.connect(self.path, timeout=0.5, isolation_level=None)
        except sqlite3.Error:
            return False
        try:
            conn.execute("BEGIN IMMEDIATE")
            conn.execute("ROLLBACK")
        except sqlite3.Error:
            return False
        finally:
            conn.close()
        return True

    @property
    def _conn(self) -> aiosqlite.Connection:
        if self._db is None:
            raise StoreError("the SQLite store is not open (call open() first)")
        return self._db

    # --- write units and group commit ------------------------------------------------------
    @contextlib.asynccontextmanager
    async def _unit(self) -> AsyncIterator[_UnitDb]:
        """Run statements as one all-or-nothing unit, then wait until they are committed."""
        db = _UnitDb(self, self._conn)
        self._queued += 1
        try:
            await self._lock.acquire()
        finally:
            self._queued -= 1
        try:
            try:
                yield db
            except sqlite3.Error as exc:
                await db.rollback()
                if isinstance(exc, sqlite3.IntegrityError):
                    raise  # a unique key: the caller decides whether that is idempotency
                # Locked, read-only, disk full: transient for the caller (HTTP 503, retry later).
                raise StoreError(f"SQLite {self.path}: write failed: {exc}") from exc
            except BaseException:
                await db.rollback()
                raise
            waiter = self._join_commit()
            if self._queued == 0:
                # Group commit: nobody else is waiting to write, so commit now for every unit
                # that joined; under load the flush task commits after the queued units.
                await self._commit_locked()
        finally:
            self._lock.release()
        await waiter

    def _join_commit(self) -> asyncio.Future[None]:
        loop = asyncio.get_running_loop()
        waiter: asyncio.Future[None] = loop.create_future()
        self._commit_waiters.append(waiter)
        if not self._commit_scheduled:
            self._commit_scheduled = True
            # call_soon lets every unit that is ready in this loop turn join the same commit.
            loop.call_soon(lambda: asyncio.ensure_future(self._flush()))
        return waiter

    async def _flush(self) -> None:
        async with self._lock:
            self._commit_scheduled = False
            await self._commit_locked()

    async def _commit_locked(self) -> None:
        """COMMIT (the store's lock held) and tell every waiting unit how it went."""
        waiters, self._commit_waiters = self._commit_waiters, []
        if not waiters:
            return
        error: BaseException | None = None
        if self._txn_lost:
            self._txn_lost = False
            error = StoreError(f"SQLite {self.path}: the transaction was rolled back after an error")
        try:
            if self._in_txn:
                # COMMIT also releases the last unit's savepoint (see _UnitDb).
                await self._conn.execute("COMMIT")
                self._last_commit = time.monotonic()
        except sqlite3.Error as exc:
            error = StoreError(f"SQLite {self.path}: commit failed: {exc}")
            with contextlib.suppress(sqlite3.Error):
                await self._conn.execute("ROLLBACK")
        finally:
            self._in_txn = False
            self._savepoint_open = False
        for waiter in waiters:
            if waiter.done():
                continue
            if error is None:
                waiter.set_result(None)
            else:
                waiter.set_exception(error)

    async def _read(self, sql: str, params: Iterable[Any] = ()) -> list[sqlite3.Row]:
        try:
            # One hop to the database thread (execute + fetch + close), not three.
            return list(await self._conn.execute_fetchall(sql, tuple(params)))
        except sqlite3.Error as exc:
            raise StoreError(f"SQLite {self.path}: query failed: {exc}") from exc

    async def _read_one(self, sql: str, params: Iterable[Any] = ()) -> sqlite3.Row | None:
        rows = await self._read(sql, params)
        return rows[0] if rows else None

    # --- inbox ----------------------------------------------------------------------------
    async def inbox_put(
        self,
        channel: str,
        external_id: str,
        payload: bytes,
        received_at: datetime,
        meta: dict[str, Any] | None = None,
        holder: str | None = None,
        lease_seconds: float = 0.0,
    ) -> tuple[InboxItem, bool]:
        claimed_until = received_at.timestamp() + lease_seconds if holder else None
        async with self._unit() as db:
            cursor = await db.execute(
                "INSERT INTO inbox (channel, external_id, payload, meta, received_at, claimed_by, "
                "claimed_until) VALUES (?, ?, ?, ?, ?, ?, ?) ON CONFLICT (channel, external_id) "
                "DO NOTHING RETURNING *",
                (
                    channel,
                    external_id,
                    payload,
                    json.dumps(meta or {}, ensure_ascii=False),
                    received_at.timestamp(),
                    holder,
                    claimed_until,
                ),
            )
            row = await cursor.fetchone()
            await cursor.close()
            if row is not None:
                return _inbox(row), True
            cursor = await db.execute(
                "SELECT * FROM inbox WHERE channel = ? AND external_id = ?", (channel, external_id)
            )
            existing = await cursor.fetchone()
            await cursor.close()
        assert existing is not None
        return _inbox(existing), False

    async def inbox_claim(
        self, holder: str, now: datetime, lease_seconds: float, limit: int
    ) -> list[InboxItem]:
        async with self._unit() as db:
            cursor = await db.execute(
                "UPDATE inbox SET claimed_by = ?, claimed_until = ?, attempts = attempts + 1 "
                "WHERE id IN (SELECT id FROM inbox WHERE status = 'pending' AND "
                "(claimed_until IS NULL OR claimed_until < ?) ORDER BY id LIMIT ?) RETURNING *",
                (holder, now.timestamp() + lease_seconds, now.timestamp(), limit),
            )
            rows = await cursor.fetchall()
            await cursor.close()
        return sorted((_inbox(r) for r in rows), key=lambda item: item.id)

    async def inbox_get(self, item_id: int) -> InboxItem | None:
        row = await self._read_one("SELECT * FROM inbox WHERE id = ?", (item_id,))
        return _inbox(row) if row else None

    async def inbox_done(self, item_id: int, lead_number: int | None) -> None:
        async with self._unit() as db:
            await db.execute(
                "UPDATE inbox SET status = 'done', lead_number = ?, claimed_by = NULL, "
                "claimed_until = NULL WHERE id = ?",
                (lead_number, item_id),
            )

    async def inbox_quarantine(self, item_id: int, reason: str) -> None:
        async with self._unit() as db:
            await db.execute(
                "UPDATE inbox SET status = 'quarantined', reason = ?, claimed_by = NULL, "
                "claimed_until = NULL WHERE id = ?",
                (reason, item_id),
            )

    async def inbox_requeue(self, item_id: int) -> bool:
        async with self._unit() as db:
            cursor = await db.execute(
                "UPDATE inbox SET status = 'pending', reason = '', claimed_until = NULL "
                "WHERE id = ? AND status = 'quarantined'",
                (item_id,),
            )
            changed = cursor.rowcount
            await cursor.close()
        return changed > 0

    async def inbox_list(self, status: str, limit: int = 100) -> list[InboxItem]:
        rows = await self._read(
            "SELECT * FROM inbox WHERE status = ? ORDER BY id DESC LIMIT ?", (status, limit)
        )
        return [_inbox(r) for r in rows]

    # --- contacts -------------------------------------------------------------------------
    async def _load_contact(self, contact_id: str) -> Contact | None:
        row = await self._read_one("SELECT * FROM contacts WHERE id = ?", (contact_id,))
        if row is None:
            return None
        ids = await self._read(
            "SELECT kind, value, display_name FROM identities WHERE contact_id = ? ORDER BY rowid",
            (contact_id,),
        )
        return Contact(
            id=row["id"],
            name=row["name"],
            language=row["language"],
            tags=json.loads(row["tags"]),
            created_at=_req_dt(row["created_at"]),
            identities=[Identity(IdentityKind(i["kind"]), i["value"], i["display_name"]) for i in ids],
        )

    async def find_contact(self, identity: Identity) -> Contact | None:
        row = await self._read_one(
            "SELECT contact_id FROM identities WHERE kind = ? AND value = ?",
            (identity.kind.value, identity.value),
        )
        return await self._load_contact(row["contact_id"]) if row else None

    async def get_contact(self, contact_id: str) -> Contact | None:
        return await self._load_contact(contact_id)

    async def create_contact(self, contact: Contact) -> Contact:
        try:
            async with self._unit() as db:
                await db.execute(
                    "INSERT INTO contacts (id, name, language, tags, created_at) VALUES (?, ?, ?, ?, ?)",
                    (
                        contact.id,
                        contact.name,
                        contact.language,
                        json.dumps(contact.tags, ensure_ascii=False),
                        contact.created_at.timestamp(),
                    ),
                )
                await db.executemany(
                    "INSERT INTO identities (kind, value, contact_id, display_name) VALUES (?, ?, ?, ?)",
                    [(i.kind.value, i.value, contact.id, i.display_name) for i in contact.identities],
                )
        except sqlite3.IntegrityError as exc:
            raise DuplicateError(f"contact {contact.id}: an identity is already taken: {exc}") from exc
        return contact

    async def add_identity(self, contact_id: str, identity: Identity) -> bool:
        async with self._unit() as db:
            cursor = await db.execute(
                "INSERT INTO identities (kind, value, contact_id, display_name) VALUES (?, ?, ?, ?) "
                "ON CONFLICT (kind, value) DO NOTHING",
                (identity.kind.value, identity.value, contact_id, identity.display_name),
            )
            inserted = cursor.rowcount
            await cursor.close()
            if inserted:
                return True
            cursor = await db.execute(
                "SELECT contact_id FROM identities WHERE kind = ? AND value = ?",
                (identity.kind.value, identity.value),
            )
            row = await cursor.fetchone()
            await cursor.close()
        return row is not None and row["contact_id"] == contact_id

    async def merge_contacts(self, keep_id: str, merge_id: str) -> None:
        if keep_id == merge_id:
            return
        async with self._unit() as db:
            await db.execute("UPDATE identities SET contact_id = ? WHERE contact_id = ?", (keep_id, merge_id))
            await db.execute("UPDATE leads SET contact_id = ? WHERE contact_id = ?", (keep_id, merge_id))
            await db.execute("DELETE FROM contacts WHERE id = ?", (merge_id,))

    # --- leads ----------------------------------------------------------------------------
    async def next_lead_number(self) -> int:
        async with self._unit() as db:
            cursor = await db.execute(
                "UPDATE counters SET value = value + 1 WHERE name = 'lead' RETURNING value"
            )
            row = await cursor.fetchone()
            await cursor.close()
        assert row is not None
        return int(row[0])

    async def create_lead(self, lead: Lead) -> tuple[Lead, bool]:
        pending = lead.first_response_at is None and lead.breached_at is None
        values = (
            lead.number,
            lead.kind.value,
            lead.channel,
            lead.contact_id,
            lead.status.value,
            lead.subject,
            lead.form_id,
            lead.assignee,
            lead.team,
            lead.priority,
            json.dumps(lead.tags, ensure_ascii=False),
            lead.origin_external_id,
            lead.created_at.timestamp(),
            lead.updated_at.timestamp(),
            _ts(lead.first_response_at),
            _ts(lead.resolved_at),
            _ts(lead.first_response_due),
            _ts(lead.warn_due),
            _ts(lead.warned_at),
            _ts(lead.breached_at),
            _ts(lead.first_response_due) if pending else None,
            _ts(lead.warn_due) if pending and lead.warned_at is None else None,
        )
        async with self._unit() as db:
            cursor = await db.execute(
                f"INSERT INTO leads ({_LEAD_COLUMNS}, breach_pending_at, warn_pending_at) "
                f"VALUES ({','.join('?' * 22)}) ON CONFLICT (channel, origin_external_id) DO NOTHING",
                values,
            )
            inserted = cursor.rowcount
            await cursor.close()
            if not inserted:
                cursor = await db.execute(
                    f"SELECT {_LEAD_COLUMNS} FROM leads WHERE channel = ? AND origin_external_id = ?",
                    (lead.channel, lead.origin_external_id),
                )
                row = await cursor.fetchone()
                await cursor.close()
                if row is None:
                    raise DuplicateError(f"lead number {lead.number} is already taken")
                return _lead(row), False
        return lead, True

    async def get_lead(self, number: int) -> Lead | None:
        row = await self._read_one(f"SELECT {_LEAD_COLUMNS} FROM leads WHERE number = ?", (number,))
        return _lead(row) if row else None

    async def find_lead_by_origin(self, channel: str, external_id: str) -> Lead | None:
        row = await self._read_one(
            f"SELECT {_LEAD_COLUMNS} FROM leads WHERE channel = ? AND origin_external_id = ?",
            (channel, external_id),
        )
        return _lead(row) if row else None

    async def find_active_lead(self, contact_id: str, channel: str | None) -> Lead | None:
        sql = f"SELECT {_LEAD_COLUMNS} FROM leads WHERE contact_id = ? AND status IN {_ACTIVE_SQL}"
        params: list[Any] = [contact_id]
        if channel is not None:
            sql += " AND channel = ?"
            params.append(channel)
        row = await self._read_one(sql + " ORDER BY number DESC LIMIT 1", params)
        return _lead(row) if row else None

    async def update_lead(self, number: int, changes: LeadChanges) -> Lead | None:
        sets: list[str] = []
        params: list[Any] = []

        def put(column: str, value: Any) -> None:
            sets.append(f"{column} = ?")
            params.append(value)

        if changes.status is not None:
            put("status", changes.status.value)
            if changes.status not in ACTIVE_STATUSES:
                sets.append("breach_pending_at = NULL")
                sets.append("warn_pending_at = NULL")
        if changes.kind is not None:
            put("kind", changes.kind.value)
        if changes.clear_assignee:
            put("assignee", None)
        elif changes.assignee is not None:
            put("assignee", changes.assignee)
        if changes.team is not None:
            put("team", changes.team)
        if changes.priority is not None:
            put("priority", changes.priority)
        if changes.tags is not None:
            put("tags", json.dumps(changes.tags, ensure_ascii=False))
        if changes.first_response_at is not None:
            put("first_response_at", _ts(changes.first_response_at))
            sets.append("breach_pending_at = NULL")
            sets.append("warn_pending_at = NULL")
        if changes.clear_resolved_at:
            put("resolved_at", None)
        elif changes.resolved_at is not None:
            put("resolved_at", _ts(changes.resolved_at))
        if changes.clear_due:
            sets.append("breach_pending_at = NULL")
            sets.append("warn_pending_at = NULL")
        if changes.first_response_due is not None:
            put("first_response_due", _ts(changes.first_response_due))
            put("breached_at", None)
            put("breach_pending_at", _ts(changes.first_response_due))
        if changes.warn_due is not None:
            put("warn_due", _ts(changes.warn_due))
            put("warned_at", None)
            put("warn_pending_at", _ts(changes.warn_due))
        if changes.extra:
            row = await self._read_one("SELECT extra FROM leads WHERE number = ?", (number,))
            merged = {**(json.loads(row["extra"]) if row else {}), **changes.extra}
            put("extra", json.dumps(merged, ensure_ascii=False))
        put("updated_at", _ts(changes.updated_at or datetime.now(UTC)))
        params.append(number)
        async with self._unit() as db:
            await db.execute(f"UPDATE leads SET {', '.join(sets)} WHERE number = ?", params)
            cursor = await db.execute(f"SELECT {_LEAD_COLUMNS} FROM leads WHERE number = ?", (number,))
            row = await cursor.fetchone()
            await cursor.close()
        return _lead(row) if row else None

    async def list_leads(self, query: LeadQuery, limit: int, cursor: str | None = None) -> Page[Lead]:
        where: list[str] = []
        params: list[Any] = []
        if query.statuses:
            where.append(f"status IN ({','.join('?' * len(query.statuses))})")
            params.extend(s.value for s in query.statuses)
        if query.kind is not None:
            where.append("kind = ?")
            params.append(query.kind.value)
        if query.unassigned:
            where.append("assignee IS NULL")
        elif query.assignee is not None:
            where.append("assignee = ?")
            params.append(query.assignee)
        if query.team is not None:
            where.append("team = ?")
            params.append(query.team)
        if query.channel is not None:
            where.append("channel = ?")
            params.append(query.channel)
        if query.breached is not None:
            where.append("breached_at IS NOT NULL" if query.breached else "breached_at IS NULL")
        if query.contact_id is not None:
            where.append("contact_id = ?")
            params.append(query.contact_id)
        if query.text:
            like = f"%{query.text}%"
            where.append(
                "(subject LIKE ? OR contact_id IN (SELECT id FROM contacts WHERE name LIKE ?) "
                "OR contact_id IN (SELECT contact_id FROM identities WHERE value LIKE ?))"
            )
            params.extend([like, like, like])
        if cursor is not None:
            if not cursor.isdigit():
                raise ValueError(f"invalid cursor {cursor!r}")
            where.append("number < ?")
            params.append(int(cursor))
        sql = f"SELECT {_LEAD_COLUMNS} FROM leads"
        if where:
            sql += " WHERE " + " AND ".join(where)
        sql += " ORDER BY number DESC LIMIT ?"
        params.append(limit + 1)
        rows = await self._read(sql, params)
        leads = [_lead(r) for r in rows[:limit]]
        next_cursor = str(leads[-1].number) if len(rows) > limit and leads else None
        return Page(items=leads, next_cursor=next_cursor)

    async def count_active_by_assignee(self, manager_ids: list[str]) -> dict[str, int]:
        counts = dict.fromkeys(manager_ids, 0)
        if not manager_ids:
            return counts
        rows = await self._read(
            f"SELECT assignee, COUNT(*) AS n FROM leads WHERE status IN {_ACTIVE_SQL} AND assignee IN "
            f"({','.join('?' * len(manager_ids))}) GROUP BY assignee",
            manager_ids,
        )
        for row in rows:
            counts[row["assignee"]] = row["n"]
        return counts

    async def _claim_marks(
        self, column: str, mark: str, event: EventType, now: datetime, limit: int
    ) -> list[Lead]:
        now_ts = now.timestamp()
        async with self._unit() as db:
            cursor = await db.execute(
                f"UPDATE leads SET {mark} = ?, {column} = NULL WHERE number IN (SELECT number FROM leads "
                f"WHERE {column} IS NOT NULL AND {column} <= ? ORDER BY {column} LIMIT ?) "
                f"RETURNING {_LEAD_COLUMNS}",
                (now_ts, now_ts, limit),
            )
            rows = await cursor.fetchall()
            await cursor.close()
            leads = [_lead(r) for r in rows]
            await db.executemany(
                "INSERT INTO events (lead_number, type, at, data) VALUES (?, ?, ?, ?)",
                [
                    (
                        lead.number,
                        event.value,
                        now_ts,
                        json.dumps(
                            {
                                "due": (lead.first_response_due or now).isoformat(),
                                "assignee": lead.assignee,
                                "team": lead.team,
                            }
                        ),
                    )
                    for lead in leads
                ],
            )
        return sorted(leads, key=lambda lead: lead.number)

    async def claim_due_warnings(self, now: datetime, limit: int) -> list[Lead]:
        return await self._claim_marks("warn_pending_at", "warned_at", EventType.SLA_WARNING, now, limit)

    async def claim_due_breaches(self, now: datetime, limit: int) -> list[Lead]:
        return await self._claim_marks("breach_pending_at", "breached_at", EventType.SLA_BREACHED, now, limit)

    # --- messages -------------------------------------------------------------------------
    async def add_message(self, message: Message) -> tuple[Message, bool]:
        async with self._unit() as db:
            inserted = await self._insert_message(db, message)
            if not inserted:
                cursor = await db.execute(
                    "SELECT * FROM messages WHERE channel = ? AND external_id = ?",
                    (message.channel, message.external_id),
                )
                row = await cursor.fetchone()
                await cursor.close()
                assert row is not None
                return _message(row), False
        return message, True

    async def _insert_message(self, db: _UnitDb, message: Message) -> bool:
        cursor = await db.execute(
            "INSERT INTO messages (id, lead_number, direction, channel, author, text, html, attachments, "
            "external_id, refs, delivery, created_at, seq) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, "
            "(SELECT COALESCE(MAX(seq), 0) + 1 FROM messages WHERE lead_number = ?)) "
            "ON CONFLICT (channel, external_id) DO NOTHING",
            (
                message.id,
                message.lead_number,
                message.direction.value,
                message.channel,
                message.author,
                message.text,
                message.html,
                _attachments_json(message.attachments),
                message.external_id,
                json.dumps(message.refs, ensure_ascii=False),
                message.delivery.value if message.delivery else None,
                message.created_at.timestamp(),
                message.lead_number,
            ),
        )
        inserted = cursor.rowcount > 0
        await cursor.close()
        return inserted

    async def find_message(self, channel: str, external_id: str) -> Message | None:
        row = await self._read_one(
            "SELECT * FROM messages WHERE channel = ? AND external_id = ?", (channel, external_id)
        )
        return _message(row) if row else None

    async def get_message(self, message_id: str) -> Message | None:
        row = await self._read_one("SELECT * FROM messages WHERE id = ?", (message_id,))
        return _message(row) if row else None

    async def list_messages(self, lead_number: int) -> list[Message]:
        rows = await self._read("SELECT * FROM messages WHERE lead_number = ? ORDER BY seq", (lead_number,))
        return [_message(r) for r in rows]

    async def add_refs(self, lead_number: int, refs: list[str]) -> None:
        if not refs:
            return
        async with self._unit() as db:
            await db.executemany(
                "INSERT INTO refs (ref, lead_number) VALUES (?, ?) ON CONFLICT (ref) DO UPDATE SET "
                "lead_number = MAX(refs.lead_number, excluded.lead_number)",
                [(ref, lead_number) for ref in refs],
            )

    async def find_lead_by_refs(self, refs: list[str]) -> int | None:
        if not refs:
            return None
        row = await self._read_one(
            f"SELECT MAX(lead_number) AS n FROM refs WHERE ref IN ({','.join('?' * len(refs))})",
            refs,
        )
        return int(row["n"]) if row and row["n"] is not None else None

    # --- outbox ---------------------------------------------------------------------------
    async def add_outbound(self, message: Message, item: OutboxItem | None) -> None:
        async with self._unit() as db:
            await self._insert_message(db, message)
            if item is not None:
                await db.execute(
                    "INSERT INTO outbox (id, message_id, lead_number, channel, payload, state, attempts, "
                    "next_attempt_at, created_at) VALUES (?, ?, ?, ?, ?, ?, 0, ?, ?)",
                    (
                        item.id,
                        item.message_id,
                        item.lead_number,
                        item.channel,
                        json.dumps(item.payload, ensure_ascii=False),
                        DeliveryState.QUEUED.value,
                        (item.next_attempt_at or item.created_at).timestamp(),
                        item.created_at.timestamp(),
                    ),
                )

    async def outbox_claim(
        self, channels: list[str], holder: str, now: datetime, lease_seconds: float, limit: int
    ) -> list[OutboxItem]:
        if not channels:
            return []
        now_ts = now.timestamp()
        async with self._unit() as db:
            cursor = await db.execute(
                "UPDATE outbox SET claimed_by = ?, claimed_until = ?, attempts = attempts + 1 WHERE id IN "
                f"(SELECT id FROM outbox WHERE state = 'queued' AND channel IN ({','.join('?' * len(channels))}) "
                "AND next_attempt_at <= ? AND (claimed_until IS NULL OR claimed_until < ?) "
                "ORDER BY next_attempt_at LIMIT ?) RETURNING *",
                (holder, now_ts + lease_seconds, *channels, now_ts, now_ts, limit),
            )
            rows = await cursor.fetchall()
            await cursor.close()
        return sorted((_outbox(r) for r in rows), key=lambda i: (i.next_attempt_at or i.created_at, i.id))

    async def outbox_sent(self, item_id: str, now: datetime, external_ref: str) -> None:
        async with self._unit() as db:
            await db.execute(
                "UPDATE outbox SET state = 'sent', sent_at = ?, external_ref = ?, claimed_until = NULL, "
                "last_error = '' WHERE id = ?",
                (now.timestamp(), external_ref, item_id),
            )
            await db.execute(
                "UPDATE messages SET delivery = 'sent' WHERE id = (SELECT message_id FROM outbox WHERE id = ?)",
                (item_id,),
            )

    async def outbox_retry(self, item_id: str, next_attempt_at: datetime, error: str) -> None:
        async with self._unit() as db:
            await db.execute(
                "UPDATE outbox SET next_attempt_at = ?, last_error = ?, claimed_until = NULL WHERE id = ?",
                (next_attempt_at.timestamp(), error[:2000], item_id),
            )

    async def outbox_failed(self, item_id: str, error: str) -> None:
        async with self._unit() as db:
            await db.execute(
                "UPDATE outbox SET state = 'failed', last_error = ?, claimed_until = NULL WHERE id = ?",
                (error[:2000], item_id),
            )
            await db.execute(
                "UPDATE messages SET delivery = 'failed' WHERE id = (SELECT message_id FROM outbox WHERE id = ?)",
                (item_id,),
            )

    async def outbox_get(self, item_id: str) -> OutboxItem | None:
        row = await self._read_one("SELECT * FROM outbox WHERE id = ?", (item_id,))
        return _outbox(row) if row else None

    async def outbox_counts(self) -> dict[str, int]:
        rows = await self._read("SELECT state, COUNT(*) AS n FROM outbox GROUP BY state")
        counts = {state.value: 0 for state in DeliveryState}
        counts.update({r["state"]: r["n"] for r in rows})
        return counts

    # --- events, leases, state ------------------------------------------------------------
    async def append_event(self, event: Event) -> Event:
        async with self._unit() as db:
            cursor = await db.execute(
                "INSERT INTO events (lead_number, type, at, data) VALUES (?, ?, ?, ?)",
                (
                    event.lead_number,
                    event.type,
                    event.at.timestamp(),
                    json.dumps(event.data, ensure_ascii=False),
                ),
            )
            event_id = cursor.lastrowid
            await cursor.close()
        return replace(event, id=event_id)

    async def list_events(
        self, lead_number: int | None = None, types: list[str] | None = None, limit: int = 1000
    ) -> list[Event]:
        where: list[str] = []
        params: list[Any] = []
        if lead_number is not None:
            where.append("lead_number = ?")
            params.append(lead_number)
        if types:
            where.append(f"type IN ({','.join('?' * len(types))})")
            params.extend(types)
        sql = "SELECT * FROM events" + (" WHERE " + " AND ".join(where) if where else "")
        rows = await self._read(sql + " ORDER BY id LIMIT ?", [*params, limit])
        return [_event(r) for r in rows]

    async def acquire_lease(self, name: str, holder: str, now: datetime, ttl_seconds: float) -> bool:
        now_ts = now.timestamp()
        async with self._unit() as db:
            await db.execute(
                "INSERT INTO leases (name, holder, expires_at) VALUES (?, ?, ?) ON CONFLICT (name) DO UPDATE "
                "SET holder = excluded.holder, expires_at = excluded.expires_at "
                "WHERE leases.holder = excluded.holder OR leases.expires_at < ?",
                (name, holder, now_ts + ttl_seconds, now_ts),
            )
            cursor = await db.execute("SELECT holder FROM leases WHERE name = ?", (name,))
            row = await cursor.fetchone()
            await cursor.close()
        return row is not None and row["holder"] == holder

    async def release_lease(self, name: str, holder: str) -> None:
        async with self._unit() as db:
            await db.execute("DELETE FROM leases WHERE name = ? AND holder = ?", (name, holder))

    async def get_state(self, key: str) -> Any:
        row = await self._read_one("SELECT value FROM kv WHERE key = ?", (key,))
        return json.loads(row["value"]) if row else None

    async def set_state(self, key: str, value: Any) -> None:
        async with self._unit() as db:
            await db.execute(
                "INSERT INTO kv (key, value) VALUES (?, ?) ON CONFLICT (key) DO UPDATE SET value = excluded.value",
                (key, json.dumps(value, ensure_ascii=False)),
            )

    async def incr_state(self, key: str) -> int:
        async with self._unit() as db:
            cursor = await db.execute(
                "INSERT INTO kv (key, value) VALUES (?, '1') ON CONFLICT (key) DO UPDATE "
                "SET value = CAST(CAST(kv.value AS INTEGER) + 1 AS TEXT) RETURNING value",
                (key,),
            )
            row = await cursor.fetchone()
            await cursor.close()
        assert row is not None
        return int(row[0])
