"""SQLite adapter (aiosqlite, WAL): the embedded default store.

One connection per process. Write units run one at a time inside a savepoint, so a failing
unit undoes only itself; concurrent units share one commit (group commit), which is what
lets a single file take thousands of small durable writes a second. Several processes on one
file serialize through `BEGIN IMMEDIATE` and SQLite's busy timeout.
"""

from __future__ import annotations

import asyncio
import contextlib
import contextvars
import functools
import json
import logging
import math
import os
import random
import sqlite3
import urllib.parse
from collections.abc import AsyncIterator, Callable, Iterable, Sequence
from dataclasses import dataclass, replace
from datetime import UTC, datetime, time, timedelta
from pathlib import Path
from time import monotonic
from time import sleep as sleep_in_db_thread  # only ever called in aiosqlite's thread
from typing import Any, TypeVar
from zoneinfo import ZoneInfo

import aiosqlite

from hub.domain import (
    ACTIVE_STATUSES,
    AUTO_AUTHOR,
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
from hub.identities import renormalized_phone
from storage import sqlite_kpi
from storage.base import (
    EVENT_TEXT_KEYS,
    KPI_GROUPS,
    LEAD_ORDERS,
    PHONE_RENORMALIZED_KEY,
    SLA_STATE_FIELDS,
    ContactMissing,
    DuplicateError,
    KpiQuery,
    KpiRow,
    LeadChanges,
    LeadCursor,
    LeadQuery,
    RoutingSnapshot,
    SlaClaim,
    StoreError,
    interpolated_percentiles,
    lead_page,
    phone_conflict_line,
)
from storage.kpi_rollup import KPI_SORT_LIMIT

log = logging.getLogger(__name__)

SCHEMA_VERSION = 1

#: Shortest time between two group commits while writes keep coming (seconds). A lone write
#: commits at once; under load a COMMIT (~0.6 ms here, for the pages its units dirtied) is
#: shared by more units the longer the gap: 10 ms gave 10-20 % more leads/s than 5 ms.
COMMIT_EVERY = 0.010

#: SQLite's page cache per connection (KiB) and the WAL size (pages) that triggers a checkpoint.
CACHE_KIB = 64 * 1024
WAL_CHECKPOINT_PAGES = 10_000

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
CREATE INDEX IF NOT EXISTS leads_assignee_load ON leads (assignee, status, priority);
CREATE INDEX IF NOT EXISTS leads_status_number ON leads (status, number);
CREATE TABLE IF NOT EXISTS messages (
    id TEXT PRIMARY KEY, lead_number INTEGER NOT NULL, direction TEXT NOT NULL,
    channel TEXT NOT NULL, author TEXT NOT NULL, text TEXT NOT NULL,
    html TEXT NOT NULL DEFAULT '', attachments TEXT NOT NULL DEFAULT '[]',
    external_id TEXT, refs TEXT NOT NULL DEFAULT '[]', delivery TEXT,
    created_at REAL NOT NULL, seq INTEGER NOT NULL, subject TEXT NOT NULL DEFAULT '',
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
CREATE INDEX IF NOT EXISTS leads_report ON leads (created_at, team, assignee, channel, kind,
    first_response_at, first_response_due, resolved_at, breached_at);
CREATE INDEX IF NOT EXISTS leads_frt ON leads (first_response_at - created_at, created_at, team, assignee,
    channel, kind) WHERE first_response_at IS NOT NULL;
CREATE INDEX IF NOT EXISTS leads_rt ON leads (resolved_at - created_at, created_at, team, assignee,
    channel, kind) WHERE resolved_at IS NOT NULL;
"""

#: Columns of the generalised SLA clock, added to older files by `_create_schema`.
_SLA_COLUMNS = (
    "sla_target TEXT",
    "sla_started_at REAL",
    "sla_due REAL",
    "sla_warn_due REAL",
    "resolution_due REAL",
    "resolution_warn_due REAL",
    "sla_paused_at REAL",
    "res_breach_pending_at REAL",
    "res_warn_pending_at REAL",
    "escalate_pending_at REAL",
    "escalate_target TEXT",
    "escalated_at REAL",
    "sla_warned_at REAL",
    "sla_breached_at REAL",
    "res_warned_at REAL",
    "res_breached_at REAL",
    "res_escalate_pending_at REAL",
)
#: Files from before the per-target marks: a mark whose due time is set but no longer armed on
#: an active lead was claimed (nothing else disarms it while the target runs), so the target's
#: episode is marked and a recomputed due time does not arm it again.
_EPISODE_MARKS_BACKFILL = (
    "UPDATE leads SET sla_warned_at = COALESCE(warned_at, sla_warn_due) WHERE sla_target IS NOT NULL "
    "AND sla_warn_due IS NOT NULL AND warn_pending_at IS NULL AND status IN {active}",
    "UPDATE leads SET sla_breached_at = COALESCE(breached_at, sla_due) WHERE sla_target IS NOT NULL "
    "AND sla_due IS NOT NULL AND breach_pending_at IS NULL AND status IN {active}",
    "UPDATE leads SET res_warned_at = COALESCE(warned_at, resolution_warn_due) WHERE sla_paused_at IS NULL "
    "AND resolution_warn_due IS NOT NULL AND res_warn_pending_at IS NULL AND status IN {active}",
    "UPDATE leads SET res_breached_at = COALESCE(breached_at, resolution_due) WHERE sla_paused_at IS NULL "
    "AND resolution_due IS NOT NULL AND res_breach_pending_at IS NULL AND status IN {active}",
)
# Partial indexes hold only armed marks, so the sweep reads O(due) rows however many are open.
_SLA_INDEXES = """
CREATE INDEX IF NOT EXISTS leads_res_breach_pending ON leads (res_breach_pending_at)
    WHERE res_breach_pending_at IS NOT NULL;
CREATE INDEX IF NOT EXISTS leads_res_warn_pending ON leads (res_warn_pending_at)
    WHERE res_warn_pending_at IS NOT NULL;
CREATE INDEX IF NOT EXISTS leads_escalate_pending ON leads (escalate_pending_at)
    WHERE escalate_pending_at IS NOT NULL;
CREATE INDEX IF NOT EXISTS leads_res_escalate_pending ON leads (res_escalate_pending_at)
    WHERE res_escalate_pending_at IS NOT NULL;
CREATE INDEX IF NOT EXISTS leads_unassigned ON leads (number) WHERE assignee IS NULL AND status IN
    ('new', 'open', 'waiting_customer');
"""


#: Indexes older files have that others now cover (a prefix of leads_assignee_load and of
#: leads_report): every index is one more B-tree each lead's insert and routing update write.
#: leads_owed_due and leads_breached: the queue now orders by the running target (sla_due) and
#: the breaches count next-response ones too (leads_owed_sla_due, leads_response_breached).
_RETIRED_INDEXES = ("leads_assignee_status", "leads_created", "leads_owed_due", "leads_breached")


#: Per-manager active load, kept by triggers in the same write as any change to a lead's
#: assignee, status or priority, so the router's load read and its compare-and-set cost O(1)
#: instead of a SUM over the team's active leads (which grows with every open lead).
_LOAD_TABLE = """
CREATE TABLE IF NOT EXISTS assignee_load (
    assignee TEXT PRIMARY KEY, n INTEGER NOT NULL, w INTEGER NOT NULL
)
"""
_LOAD_ACTIVE = "(" + ",".join(sorted(f"'{s.value}'" for s in ACTIVE_STATUSES)) + ")"
_LOAD_TRIGGERS = f"""
CREATE TRIGGER IF NOT EXISTS leads_load_insert AFTER INSERT ON leads
WHEN new.assignee IS NOT NULL AND new.status IN {_LOAD_ACTIVE}
BEGIN
    INSERT INTO assignee_load (assignee, n, w) VALUES (new.assignee, 1, 1 + MAX(new.priority, 0))
    ON CONFLICT (assignee) DO UPDATE SET n = n + 1, w = w + excluded.w;
END;
CREATE TRIGGER IF NOT EXISTS leads_load_delete AFTER DELETE ON leads
WHEN old.assignee IS NOT NULL AND old.status IN {_LOAD_ACTIVE}
BEGIN
    UPDATE assignee_load SET n = n - 1, w = w - (1 + MAX(old.priority, 0)) WHERE assignee = old.assignee;
END;
CREATE TRIGGER IF NOT EXISTS leads_load_update AFTER UPDATE OF assignee, status, priority ON leads
WHEN old.assignee IS NOT new.assignee OR old.status IS NOT new.status OR old.priority IS NOT new.priority
BEGIN
    UPDATE assignee_load SET n = n - 1, w = w - (1 + MAX(old.priority, 0))
    WHERE assignee = old.assignee AND old.status IN {_LOAD_ACTIVE};
    INSERT INTO assignee_load (assignee, n, w)
    SELECT new.assignee, 1, 1 + MAX(new.priority, 0)
    WHERE new.assignee IS NOT NULL AND new.status IN {_LOAD_ACTIVE}
    ON CONFLICT (assignee) DO UPDATE SET n = n + 1, w = w + excluded.w;
END;
"""


class _Deferred:
    """Commit waits of one `deferred_commit` block, awaited when the block ends."""

    def __init__(self, store: SqliteStore) -> None:
        self.store = store
        self.waiters: list[asyncio.Future[None]] = []
        self.open = True


_DEFERRED: contextvars.ContextVar[_Deferred | None] = contextvars.ContextVar("sqlite_deferred", default=None)


def _ts(value: datetime | None) -> float | None:
    return None if value is None else value.timestamp()


def _dt(value: float | None) -> datetime | None:
    return None if value is None else datetime.fromtimestamp(value, UTC)


def _req_dt(value: float) -> datetime:
    return datetime.fromtimestamp(value, UTC)


def _fold(value: str | None) -> str | None:
    """Unicode case folding for text search (SQLite's own lower() knows ASCII only)."""
    return None if value is None else value.casefold()


#: json.dumps(value, ensure_ascii=False) builds a new encoder on every call; JSON columns are
#: written several times per message, so they share this one.
_to_json = json.JSONEncoder(ensure_ascii=False).encode


def _attachments_json(items: Iterable[Attachment]) -> str:
    return _to_json(
        [
            {
                "name": a.name,
                "content_type": a.content_type,
                "size": a.size,
                "ref": a.ref,
                "dropped_reason": a.dropped_reason,
            }
            for a in items
        ]
    )


def _attachments(raw: str) -> list[Attachment]:
    return [Attachment(**item) for item in json.loads(raw)]


_LEAD_COLUMNS = (
    "number, kind, channel, contact_id, status, subject, form_id, assignee, team, priority, tags, "
    "origin_external_id, created_at, updated_at, first_response_at, resolved_at, "
    "first_response_due, warn_due, warned_at, breached_at, "
    "sla_target, sla_started_at, sla_due, sla_warn_due, resolution_due, resolution_warn_due, sla_paused_at, "
    "sla_warned_at, sla_breached_at, res_warned_at, res_breached_at"
)

_ASSIGNEE_AT = [c.strip() for c in _LEAD_COLUMNS.split(",")].index("assignee")


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
        sla_target=row["sla_target"],
        sla_started_at=_dt(row["sla_started_at"]),
        sla_due=_dt(row["sla_due"]),
        sla_warn_due=_dt(row["sla_warn_due"]),
        resolution_due=_dt(row["resolution_due"]),
        resolution_warn_due=_dt(row["resolution_warn_due"]),
        sla_paused_at=_dt(row["sla_paused_at"]),
        sla_warned_at=_dt(row["sla_warned_at"]),
        sla_breached_at=_dt(row["sla_breached_at"]),
        res_warned_at=_dt(row["res_warned_at"]),
        res_breached_at=_dt(row["res_breached_at"]),
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
        subject=row["subject"],
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


def _sla_state_condition(expected: Lead | None) -> tuple[str, list[Any]]:
    """The WHERE clause (and its parameters) matching a lead whose SLA state is `expected`'s."""
    if expected is None:
        return "", []
    where: list[str] = []
    params: list[Any] = []
    for name in SLA_STATE_FIELDS:
        value = getattr(expected, name)
        where.append(f" AND {name} IS ?")
        params.append(
            value.value
            if isinstance(value, LeadStatus)
            else _ts(value)
            if isinstance(value, datetime)
            else value
        )
    return "".join(where), params


#: Armed SLA marks: (pending column, mark columns set by its claim, level, event), warnings
#: before breaches. The target's own mark records that its episode fired (see hub.sla retarget).
_MARKS = (
    ("warn_pending_at", ("sla_warned_at",), "warning", EventType.SLA_WARNING),
    ("res_warn_pending_at", ("res_warned_at",), "warning", EventType.SLA_WARNING),
    ("breach_pending_at", ("sla_breached_at",), "breach", EventType.SLA_BREACHED),
    ("res_breach_pending_at", ("res_breached_at",), "breach", EventType.SLA_BREACHED),
    ("escalate_pending_at", ("escalated_at",), "escalation", EventType.SLA_ESCALATED),
    # The resolution target's escalation has a slot of its own: a response breach's step
    # (escalate_pending_at) and a resolution breach's can both be pending.
    ("res_escalate_pending_at", ("escalated_at",), "escalation", EventType.SLA_ESCALATED),
)
#: warned_at / breached_at are the first-response target's marks only (the KPI's breaches, the
#: breached-open gauge, the queue's and the breaches page's state): set by its claims alone.
_FIRST_RESPONSE_MARK = {"warn_pending_at": "warned_at", "breach_pending_at": "breached_at"}

#: Files from before that: warned_at / breached_at held the last mark of any target. The
#: recorded sla.* events say exactly which target fired (a claim writes its event in the same
#: unit); a lead without any such event falls back to its first-response due time.
_FIRST_RESPONSE_MARKS_KEY = "storage.first_response_marks"
_FIRST_RESPONSE_MARKS_MIGRATION = """
UPDATE leads SET {mark} = CASE
    WHEN EXISTS (SELECT 1 FROM events e WHERE e.lead_number = leads.number AND e.type = '{event}')
    THEN (SELECT MAX(e.at) FROM events e WHERE e.lead_number = leads.number AND e.type = '{event}'
          AND COALESCE(json_extract(e.data, '$.target'), 'first_response') = 'first_response')
    WHEN {due} <= {mark} AND (first_response_at IS NULL OR first_response_at > {due}) THEN {mark}
    END
WHERE {mark} IS NOT NULL
"""

#: Files from before a pause kept passed resolution marks: a reply disarmed a resolution warning
#: or breach that had already fallen due, so a lead paused then (or resumed with nothing left)
#: never reported it. Such a mark is due while the clock ran (before the pause, if any), not
#: armed, not claimed in its episode (no mark) and has no claim event at or after its due time
#: (a claim records its event in the same unit): it is armed again for the next sweep.
_PAUSED_MARKS_KEY = "storage.paused_resolution_marks"
_PAUSED_MARKS_MIGRATION = """
UPDATE leads SET {pending} = {due}
WHERE status IN {active} AND {due} IS NOT NULL AND {pending} IS NULL AND {mark} IS NULL{extra}
    AND (sla_paused_at IS NULL OR {due} <= sla_paused_at)
    AND NOT EXISTS (SELECT 1 FROM events e WHERE e.lead_number = leads.number AND e.type = '{event}'
        AND json_extract(e.data, '$.target') = 'resolution' AND e.at >= leads.{due})
"""
#: (pending column, due column, the episode's mark, its event, more conditions): a warning is
#: not restored once the breach it warns of was reported.
_PAUSED_MARKS = (
    ("res_breach_pending_at", "resolution_due", "res_breached_at", EventType.SLA_BREACHED, ""),
    (
        "res_warn_pending_at",
        "resolution_warn_due",
        "res_warned_at",
        EventType.SLA_WARNING,
        " AND res_breached_at IS NULL",
    ),
)

#: KPI measure -> (timestamp column, the partial index that keeps leads sorted by it - created_at).
_KPI_MEASURES = {"frt": ("first_response_at", "leads_frt"), "rt": ("resolved_at", "leads_rt")}

#: Up to this many leads in a report period, percentiles come from one sort instead of index walks.
_KPI_SORT_LIMIT = KPI_SORT_LIMIT


def _local_days(start: datetime, end: datetime, zone_name: str) -> list[Any]:
    """(label, start ts, end ts) triples, flattened, for each local day touching [start, end)."""
    zone = ZoneInfo(zone_name)
    day = start.astimezone(zone).date()
    flat: list[Any] = []
    while True:
        begins = datetime.combine(day, time(0), tzinfo=zone)
        if begins >= end:
            break
        following = day + timedelta(days=1)
        ends = datetime.combine(following, time(0), tzinfo=zone)
        flat.extend([day.isoformat(), max(begins, start).timestamp(), min(ends, end).timestamp()])
        day = following
    return flat


_INSERT_MESSAGE = (
    "INSERT INTO messages (id, lead_number, direction, channel, author, text, html, attachments, "
    "external_id, refs, delivery, created_at, subject, seq) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, "
    "(SELECT COALESCE(MAX(seq), 0) + 1 FROM messages WHERE lead_number = ?)) "
    "ON CONFLICT (channel, external_id) DO NOTHING"
)

_ACTIVE = tuple(s.value for s in ACTIVE_STATUSES)
_ACTIVE_SQL = "(" + ",".join(f"'{s}'" for s in sorted(_ACTIVE)) + ")"
#: An active lead owed a response (first or next) by its running target's due time: the first
#: part of the queue's due order.
_OWED_SQL = f"status IN {_ACTIVE_SQL} AND sla_target IS NOT NULL AND sla_due IS NOT NULL"
#: Any response breach: the first response's (kept for the KPI) or the current episode's, which
#: is how a next-response breach is on record.
_BREACHED_SQL = "(breached_at IS NOT NULL OR sla_breached_at IS NOT NULL)"
#: The due order's two parts, each paged along its own index from a cursor (list_leads), and the
#: breaches' index. Made at every open, so older files get them too.
_QUEUE_INDEXES = f"""
CREATE INDEX IF NOT EXISTS leads_owed_sla_due ON leads (sla_due, number) WHERE {_OWED_SQL};
CREATE INDEX IF NOT EXISTS leads_status_updated ON leads (status, updated_at, number);
CREATE INDEX IF NOT EXISTS leads_response_breached ON leads (number) WHERE {_BREACHED_SQL};
"""
#: Active leads from before the generalised clock owe their first response under first_response_*
#: only: they take the running target's columns once, so the queue's owed part holds them too.
_LEGACY_TARGET_KEY = "storage.legacy_first_response_target"
_LEGACY_TARGET_BACKFILL = (
    "UPDATE leads SET sla_target = 'first_response', sla_started_at = created_at, "
    "sla_due = first_response_due, sla_warn_due = warn_due, sla_warned_at = warned_at, "
    "sla_breached_at = breached_at WHERE sla_target IS NULL AND first_response_at IS NULL "
    "AND first_response_due IS NOT NULL AND status IN {active}"
)


def _cursor_key(at: LeadCursor) -> float:
    """A due-order cursor's sort value (a REAL this adapter wrote into the cursor with repr)."""
    try:
        value = float(at.key)
    except ValueError:
        raise ValueError(f"invalid cursor key {at.key[:40]!r}") from None
    if not math.isfinite(value):
        raise ValueError(f"invalid cursor key {at.key[:40]!r}")
    return value


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


def _answer(waiters: list[asyncio.Future[None]], error: StoreError | None) -> None:
    """Tell the units a COMMIT covered how it went (a waiter whose caller left is skipped)."""
    for waiter in waiters:
        if waiter.done():
            continue
        if error is None:
            waiter.set_result(None)
        else:
            waiter.set_exception(error)


class _PendingCommit:
    """A COMMIT owed to waiting units, run by the next unit's first hop (see _UnitDb._run)."""

    def __init__(self, waiters: list[asyncio.Future[None]]) -> None:
        self.waiters = waiters
        self.attempted = False
        self.error: StoreError | None = None

    def run(self, conn: sqlite3.Connection, store: SqliteStore) -> None:
        # In the database thread, before the next unit's BEGIN/SAVEPOINT.
        self.attempted = True
        self.error = store._commit_in_thread(conn)

    def report(self, store: SqliteStore) -> None:
        # Back in the event loop: tell the waiters, or hand them back if no COMMIT ran.
        if not self.attempted:
            store._commit_waiters[:0] = self.waiters
            store._schedule_flush()
            return
        _answer(self.waiters, self.error)


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
        self._submitted = False  # a statement was handed to the database thread
        self._started = False  # (set in that thread) BEGIN/SAVEPOINT done for this unit

    def _job(self, sql: str, params: Any, many: bool, commit: _PendingCommit | None) -> _Result:
        # Runs in aiosqlite's thread; the store's lock is held by this unit meanwhile.
        conn: sqlite3.Connection = self._db._conn
        store = self._store
        if not self._started:
            if commit is not None:
                commit.run(conn, store)
            store._begin_unit_in_thread(conn)
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
        if not self._started and store._commit_waiters:
            # Units that finished before this one still wait for their COMMIT: it rides along
            # with this unit's first statement (no extra hop, and no wait for the flush task
            # at the back of the queue). Waiters are told once the hop is back.
            commit = _PendingCommit(store._commit_waiters)
            store._commit_waiters = []
        self._submitted = True
        if commit is None:
            return await _in_thread(self._db, self._job, sql, params, many, None)
        hop = asyncio.ensure_future(_in_thread(self._db, self._job, sql, params, many, commit))

        # The waiters hear about the COMMIT when the hop is really back, even if this unit's
        # caller is cancelled meanwhile (the hop runs regardless).
        def reported(done: asyncio.Future[_Result]) -> None:
            if not done.cancelled():
                done.exception()  # retrieved here when the unit's caller is gone
            commit.report(store)

        hop.add_done_callback(reported)
        return await asyncio.shield(hop)

    async def execute(self, sql: str, params: Iterable[Any] = ()) -> _Result:
        """Run one statement of the unit."""
        return await self._run(sql, tuple(params), False)

    async def executemany(self, sql: str, params: Iterable[Iterable[Any]]) -> _Result:
        """Run one statement for each parameter tuple."""
        return await self._run(sql, [tuple(p) for p in params], True)

    async def rollback(self) -> None:
        """Undo this unit's statements only (the transaction keeps the other units' work)."""
        if not self._submitted:
            return

        def undo() -> None:
            # Decided here, in the database thread: a statement whose caller was cancelled
            # still runs (aiosqlite's queue is FIFO), and this undo runs after it.
            if self._started:
                self._store._undo_unit_in_thread(self._db._conn)

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
        self._last_commit = 0.0  # monotonic() of the last successful commit
        self._commit_queued_at = 0.0  # monotonic() of the last COMMIT put on the queue
        self._commit_waiters: list[asyncio.Future[None]] = []
        self._commit_scheduled = False
        self._flush_handle: asyncio.Handle | None = None
        self._flush_task: asyncio.Future[None] | None = None
        # /healthz must say "degraded" when a submission would be lost or refused: the last
        # write failure (kept until a COMMIT succeeds), and the file we have open no longer
        # being the file at our path (deleted or replaced: writes would go to a lost inode).
        self._write_error: str | None = None
        self._file_id: tuple[int, int] | None = None
        self._file_gone: str | None = None
        self._file_checked = 0.0

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
        """Open (creating if need be) the file; a file that cannot be used is a StoreError
        naming it, and nothing is left running (no database thread outlives a failed open)."""
        if self._db is not None:
            return
        try:
            await asyncio.to_thread(self.path.parent.mkdir, parents=True, exist_ok=True)
            if await asyncio.to_thread(self.path.is_dir):
                raise StoreError(f"SQLite {self.path}: is a directory; name a database file")
            # isolation_level=None: we open transactions ourselves with BEGIN IMMEDIATE, so two
            # processes never deadlock upgrading a read lock (SQLITE_BUSY_SNAPSHOT in WAL mode).
            connection = aiosqlite.connect(self.path, isolation_level=None)
            try:
                self._db = await connection
            except BaseException:
                # aiosqlite stops its thread without waiting for it: wait here, or the thread
                # reports to an event loop that is closed by then ("Event loop is closed").
                await asyncio.to_thread(connection._thread.join, 5.0)
                raise
            await self._prepare()
            st = await asyncio.to_thread(os.stat, self.path)
            self._file_id = (st.st_dev, st.st_ino)
            self._file_gone = self._write_error = None
        except BaseException as exc:
            if self._db is not None:
                db, self._db = self._db, None
                with contextlib.suppress(Exception):
                    await db.close()
            if isinstance(exc, (sqlite3.Error, OSError)):
                raise StoreError(f"SQLite {self.path}: cannot open: {exc}") from exc
            raise

    async def _prepare(self) -> None:
        """Pragmas, schema and migrations of a freshly opened connection."""
        assert self._db is not None
        self._db.row_factory = sqlite3.Row
        await self._db.execute(f"PRAGMA busy_timeout = {int(self._busy_timeout_ms)}")
        await self._enable_wal()
        # NORMAL in WAL mode is durable against process crashes (SIGKILL); only an OS crash
        # or power loss can lose the last commits.
        await self._db.execute("PRAGMA synchronous = NORMAL")
        await self._db.execute("PRAGMA foreign_keys = OFF")
        # The default 2 MiB page cache holds a few thousand leads' index pages; past that every
        # write re-reads pages from the OS. And a checkpoint every 1,000 WAL pages copies the
        # same hot index pages back into the file over and over: every 10,000 (the WAL then
        # peaks near 40 MB) copies each once per 10x the writes. Together: 10-25 % more
        # leads/s in bench.ingest, with the hub's CPU per lead down as much.
        await self._db.execute(f"PRAGMA cache_size = -{CACHE_KIB}")
        await self._db.execute(f"PRAGMA wal_autocheckpoint = {WAL_CHECKPOINT_PAGES}")
        await self._db.create_function("hub_fold", 1, _fold, deterministic=True)
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

    async def _enable_wal(self) -> None:
        """Switch to WAL mode, waiting out another process that is creating the same file.

        Changing the journal mode needs an exclusive lock and SQLite does not call the busy
        handler for it, so two hubs starting on a new file at once would fail: retry, bounded.
        """
        assert self._db is not None
        deadline = asyncio.get_running_loop().time() + self._busy_timeout_ms / 1000
        delay = 0.01
        while True:
            try:
                await self._db.execute("PRAGMA journal_mode = WAL")
                return
            except sqlite3.OperationalError as exc:
                if "locked" not in str(exc) or asyncio.get_running_loop().time() >= deadline:
                    raise StoreError(f"SQLite {self.path}: cannot switch to WAL mode: {exc}") from exc
            await asyncio.sleep(delay)
            delay = min(delay * 2, 0.2)

    async def _create_schema(self) -> None:
        assert self._db is not None
        for statement in _SCHEMA.split(";"):
            if statement.strip():
                await self._db.execute(statement)
        async with self._db.execute("PRAGMA table_info(leads)") as cursor:
            have = {row[1] for row in await cursor.fetchall()}
        for column in _SLA_COLUMNS:
            if column.split()[0] not in have:
                await self._db.execute(f"ALTER TABLE leads ADD COLUMN {column}")
        async with self._db.execute("PRAGMA table_info(messages)") as cursor:
            if "subject" not in {row[1] for row in await cursor.fetchall()}:
                await self._db.execute("ALTER TABLE messages ADD COLUMN subject TEXT NOT NULL DEFAULT ''")
        if have and "sla_breached_at" not in have:
            for statement in _EPISODE_MARKS_BACKFILL:
                await self._db.execute(statement.format(active=_LOAD_ACTIVE))
        async with self._db.execute("SELECT 1 FROM kv WHERE key = ?", (_FIRST_RESPONSE_MARKS_KEY,)) as cursor:
            migrated = await cursor.fetchone() is not None
        if not migrated:
            # In the open's transaction; the KPI rollup triggers (or their first fill) follow.
            for mark, event, due in (
                ("breached_at", EventType.SLA_BREACHED, "first_response_due"),
                ("warned_at", EventType.SLA_WARNING, "warn_due"),
            ):
                await self._db.execute(
                    _FIRST_RESPONSE_MARKS_MIGRATION.format(mark=mark, event=event.value, due=due)
                )
            await self._db.execute(
                "INSERT INTO kv (key, value) VALUES (?, 'true') ON CONFLICT (key) DO NOTHING",
                (_FIRST_RESPONSE_MARKS_KEY,),
            )
        async with self._db.execute("SELECT 1 FROM kv WHERE key = ?", (_PAUSED_MARKS_KEY,)) as cursor:
            restored = await cursor.fetchone() is not None
        if not restored:
            for pending, due, mark, event, extra in _PAUSED_MARKS:
                await self._db.execute(
                    _PAUSED_MARKS_MIGRATION.format(
                        pending=pending,
                        due=due,
                        mark=mark,
                        event=event.value,
                        active=_LOAD_ACTIVE,
                        extra=extra,
                    )
                )
            await self._db.execute(
                "INSERT INTO kv (key, value) VALUES (?, 'true') ON CONFLICT (key) DO NOTHING",
                (_PAUSED_MARKS_KEY,),
            )
        async with self._db.execute("SELECT 1 FROM kv WHERE key = ?", (_LEGACY_TARGET_KEY,)) as cursor:
            targeted = await cursor.fetchone() is not None
        if not targeted:
            await self._db.execute(_LEGACY_TARGET_BACKFILL.format(active=_LOAD_ACTIVE))
            await self._db.execute(
                "INSERT INTO kv (key, value) VALUES (?, 'true') ON CONFLICT (key) DO NOTHING",
                (_LEGACY_TARGET_KEY,),
            )
        await self._renormalize_phones()
        for statement in (_SLA_INDEXES + _QUEUE_INDEXES).split(";"):
            if statement.strip():
                await self._db.execute(statement)
        for index in _RETIRED_INDEXES:
            await self._db.execute(f"DROP INDEX IF EXISTS {index}")
        async with self._db.execute(
            "SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = 'assignee_load'"
        ) as cursor:
            had_loads = await cursor.fetchone() is not None
        await self._db.execute(_LOAD_TABLE)
        if not had_loads:
            # A file from before the counters: count once, in the same transaction that
            # creates the triggers, so no write slips between the count and the triggers.
            await self._db.execute(
                f"INSERT INTO assignee_load (assignee, n, w) SELECT assignee, COUNT(*), "
                f"SUM(1 + MAX(priority, 0)) FROM leads WHERE assignee IS NOT NULL AND status IN "
                f"{_LOAD_ACTIVE} GROUP BY assignee"
            )
        for statement in _LOAD_TRIGGERS.split("END;"):
            if statement.strip():
                await self._db.execute(statement + "END;")
        await sqlite_kpi.create_rollups(self._db)

    async def _renormalize_phones(self) -> None:
        """Once per file, in the open's transaction: phone identities stored in the old form
        take today's (`renormalized_phone`), so their customer is found again. One whose new
        value another contact has is left as it was and logged, for staff to merge."""
        assert self._db is not None
        async with self._db.execute(
            "SELECT 1 FROM kv WHERE key = ? AND value = 'true'", (PHONE_RENORMALIZED_KEY,)
        ) as cursor:
            if await cursor.fetchone() is not None:
                return
        async with self._db.execute(
            "SELECT value, contact_id FROM identities WHERE kind = 'phone' "
            "AND (value LIKE '+0%' OR value LIKE '+8%') ORDER BY rowid"
        ) as cursor:
            rows = [(row[0], row[1]) for row in await cursor.fetchall()]
        for old, contact_id in rows:
            new = renormalized_phone(old)
            if new is None:
                continue
            async with self._db.execute(
                "SELECT contact_id FROM identities WHERE kind = 'phone' AND value = ?", (new,)
            ) as cursor:
                owner = await cursor.fetchone()
            if owner is None:
                await self._db.execute(
                    "UPDATE identities SET value = ? WHERE kind = 'phone' AND value = ?", (new, old)
                )
            elif owner[0] == contact_id:
                await self._db.execute("DELETE FROM identities WHERE kind = 'phone' AND value = ?", (old,))
            else:
                log.warning("%s", phone_conflict_line(contact_id, owner[0]))
        await self._db.execute(
            "INSERT INTO kv (key, value) VALUES (?, 'true') ON CONFLICT (key) DO UPDATE SET value = 'true'",
            (PHONE_RENORMALIZED_KEY,),
        )

    async def close(self) -> None:
        if self._db is None:
            return
        async with self._lock:
            # Always: writes nobody waits for (deferred_commit(wait=False)) are committed too.
            await self._finish_commit(*self._queue_commit())
        # A flush still due has nothing left to commit: end it here, not with the event loop.
        if self._flush_handle is not None:
            self._flush_handle.cancel()
            self._flush_handle = None
        if self._flush_task is not None:
            await asyncio.gather(self._flush_task, return_exceptions=True)
            self._flush_task = None
        self._commit_scheduled = False
        await self._db.close()
        self._db = None

    def _file_state(self) -> str | None:
        """Why the open file is not the file at our path any more (None: it still is)."""
        try:
            st = os.stat(self.path)
        except FileNotFoundError:
            return "the database file was deleted while the hub had it open"
        except OSError as exc:
            return f"the database file cannot be checked: {exc}"
        if self._file_id is not None and (st.st_dev, st.st_ino) != self._file_id:
            return "the database file was replaced while the hub had it open"
        return None

    async def _check_file(self) -> None:
        """Refresh `_file_gone`, at most once a second (a stat, off the event loop)."""
        now = monotonic()
        if now - self._file_checked < 1.0:
            return
        self._file_checked = now
        gone = await asyncio.to_thread(self._file_state)
        if gone is not None and self._file_gone is None:
            log.error("SQLite %s: %s; writes are refused: restart the hub", self.path, gone)
        self._file_gone = gone

    async def _writable(self) -> None:
        """Refuse a write (StoreError: 503) that would go into a deleted or replaced file."""
        await self._check_file()
        if self._file_gone is not None:
            raise StoreError(f"SQLite {self.path}: {self._file_gone}; restart the hub")

    async def ping(self) -> bool:
        try:
            await self._conn.execute_fetchall("SELECT 1")
        except (sqlite3.Error, ValueError, StoreError):
            return False
        await self._check_file()
        if self._file_gone is not None or self._write_error is not None:
            return False  # a submission would be lost or refused now
        if monotonic() - self._last_commit < 2.0:
            return True  # we wrote a moment ago
        # Reads work even while another connection holds the write lock (WAL), so ask for the
        # write lock itself, briefly, on a connection of its own: "degraded" must mean that a
        # submission would fail now.
        return await asyncio.to_thread(self._can_write)

    def _can_write(self) -> bool:
        try:
            # mode=rw: never create a new, empty file where ours was deleted.
            uri = self.path.resolve().as_uri() + "?mode=rw"
            conn = sqlite3.connect(uri, timeout=0.5, isolation_level=None, uri=True)
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
        await self._writable()
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
                self._write_error = f"SQLite {self.path}: write failed: {exc}"
                raise StoreError(self._write_error) from exc
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
        deferred = _DEFERRED.get()
        if deferred is not None and deferred.open and deferred.store is self:
            deferred.waiters.append(waiter)  # awaited when the deferred_commit block ends
            return
        await waiter

    @contextlib.asynccontextmanager
    async def deferred_commit(self, wait: bool = True) -> AsyncIterator[None]:
        """Writes in the block return once applied (this process reads them at once); the
        block's end waits until every one of them is committed (a nested block's end, for its own).
        With `wait=False` it does not wait: the writes commit with the next group commit."""
        deferred = _Deferred(self)
        token = _DEFERRED.set(deferred)
        try:
            yield
        except BaseException:
            deferred.open = False
            for waiter in deferred.waiters:
                # The block failed anyway; a commit error now must not go unretrieved.
                waiter.add_done_callback(lambda f: f.cancelled() or f.exception())
            raise
        finally:
            _DEFERRED.reset(token)
        deferred.open = False
        if not wait:
            for waiter in deferred.waiters:
                waiter.add_done_callback(self._log_unwaited_commit)
            return
        waiters = deferred.waiters
        for waiter in waiters:
            try:
                await waiter
            except BaseException:
                # The others are retrieved when they end: a disk-full COMMIT fails them all, and
                # unretrieved they flooded the log. (asyncio.wait on all of them cost ~4% of a
                # lead's CPU: this is the hot path of every write.)
                for other in waiters:
                    other.add_done_callback(lambda f: f.cancelled() or f.exception())
                raise

    async def sync(self) -> None:
        """Return once every write issued so far is committed: the COMMIT this joins is queued
        behind them on the database thread's FIFO queue."""
        await self._join_commit()

    def _log_unwaited_commit(self, done: asyncio.Future[None]) -> None:
        if not done.cancelled() and done.exception() is not None:
            # Only writes a replay repeats go unwaited; the replay will redo them.
            log.warning("SQLite %s: a commit nobody waited for failed: %s", self.path, done.exception())

    def _join_commit(self) -> asyncio.Future[None]:
        loop = asyncio.get_running_loop()
        waiter: asyncio.Future[None] = loop.create_future()
        self._commit_waiters.append(waiter)
        self._schedule_flush()
        return waiter

    def _schedule_flush(self) -> None:
        if not self._commit_scheduled:
            self._commit_scheduled = True
            # call_soon lets every unit that is ready in this loop turn join the same commit.
            # Under load, commits are paced (at most one per COMMIT_EVERY): each COMMIT writes
            # every page its transaction dirtied to the WAL, and a lead dirties the same few
            # index pages as its neighbours, so fewer, larger commits cost far less.
            loop = asyncio.get_running_loop()
            wait = max(self._last_commit, self._commit_queued_at) + COMMIT_EVERY - monotonic()
            if wait > 0:
                self._flush_handle = loop.call_later(wait, self._start_flush)
            else:
                self._flush_handle = loop.call_soon(self._start_flush)

    def _start_flush(self) -> None:
        self._flush_handle = None
        self._flush_task = asyncio.ensure_future(self._flush())

    async def _flush(self) -> None:
        # The lock is held only while the COMMIT is queued, as for single-hop units: units
        # queued after it go into the next transaction instead of waiting for this one to end.
        async with self._lock:
            self._commit_scheduled = False
            if not self._commit_waiters:
                return
            commit = self._queue_commit()
        await self._finish_commit(*commit)

    # The transaction flags (_in_txn, _savepoint_open, _txn_lost) are read and written only in
    # the database thread: single-hop units run there while the event loop goes on.
    def _begin_unit_in_thread(self, conn: sqlite3.Connection, savepoint: bool = True) -> None:
        if not self._in_txn:
            self._begin_immediate_in_thread(conn)
            self._in_txn = True
        if not savepoint:
            return
        if self._savepoint_open:
            conn.execute("RELEASE unit")
            self._savepoint_open = False
        conn.execute("SAVEPOINT unit")
        self._savepoint_open = True

    def _begin_immediate_in_thread(self, conn: sqlite3.Connection) -> None:
        """Take the file's write lock, polling briefly while another process holds it.

        SQLite's own busy handler sleeps longer the longer it waits (up to 100 ms a try), so a
        process that keeps re-taking the lock starves the others for seconds; short polls with
        jitter keep turns fair. Runs in the database thread: only this store's queue waits.
        """
        conn.execute("PRAGMA busy_timeout = 0")  # for this statement only: we poll ourselves
        try:
            deadline = monotonic() + self._busy_timeout_ms / 1000
            while True:
                try:
                    conn.execute("BEGIN IMMEDIATE")
                    return
                except sqlite3.OperationalError as exc:
                    if "locked" not in str(exc) or monotonic() >= deadline:
                        raise
                sleep_in_db_thread(random.uniform(0.0002, 0.001))
        finally:
            conn.execute(f"PRAGMA busy_timeout = {int(self._busy_timeout_ms)}")

    def _undo_unit_in_thread(self, conn: sqlite3.Connection) -> None:
        self._savepoint_open = False
        try:
            conn.execute("ROLLBACK TO unit")
            conn.execute("RELEASE unit")
        except sqlite3.Error:
            if conn.in_transaction:
                raise
            self._note_rollback_in_thread()

    def _note_rollback_in_thread(self) -> None:
        # SQLite rolled the whole transaction back (I/O error, disk full): the other units
        # waiting for this commit lost their work too, and must hear so.
        self._in_txn = self._savepoint_open = False
        self._txn_lost = True

    def _commit_in_thread(self, conn: sqlite3.Connection) -> StoreError | None:
        error: StoreError | None = None
        if self._txn_lost:
            self._txn_lost = False
            error = StoreError(f"SQLite {self.path}: the transaction was rolled back after an error")
        try:
            if self._in_txn:
                # COMMIT also releases the last unit's savepoint.
                conn.execute("COMMIT")
                self._last_commit = monotonic()
                self._write_error = None
        except sqlite3.Error as exc:
            error = StoreError(f"SQLite {self.path}: commit failed: {exc}")
            self._write_error = str(error)
            with contextlib.suppress(sqlite3.Error):
                conn.execute("ROLLBACK")
        finally:
            self._in_txn = False
            self._savepoint_open = False
        return error

    def _unit_in_thread(self, fn: Callable[[sqlite3.Connection], _T], one_write: bool = False) -> _T:
        conn: sqlite3.Connection = self._conn._conn
        # A single statement is all or nothing by itself (SQLite undoes a failed statement and
        # keeps the transaction): no savepoint to open, release or roll back to.
        self._begin_unit_in_thread(conn, savepoint=not one_write)
        try:
            return fn(conn)
        except BaseException:
            if not one_write:
                self._undo_unit_in_thread(conn)
            elif not conn.in_transaction:
                self._note_rollback_in_thread()
            raise

    async def _write(self, fn: Callable[[sqlite3.Connection], _T], one_write: bool = False) -> _T:
        """Run `fn(conn)` as one all-or-nothing unit in ONE hop to the database thread, then
        wait for its commit (or leave that to the enclosing `deferred_commit` block).
        `one_write`: `fn` changes the database with one statement at most (reads aside).

        The store's lock is held only while the job is queued: aiosqlite's queue is FIFO, so
        the job runs after any multi-hop unit queued before it and before any queued after.
        Units therefore pipeline instead of each holding the lock for a round trip. The job
        runs whole even if the caller is cancelled (all or nothing, decided in that thread).
        """
        await self._writable()
        db = self._conn
        async with self._lock:
            loop = asyncio.get_running_loop()
            done: asyncio.Future[_T] = loop.create_future()
            # aiosqlite's own queue (what Connection._execute does), filled synchronously here
            # so no other unit can slip in between the lock and the queue.
            db._tx.put_nowait((done, functools.partial(self._unit_in_thread, fn, one_write)))
        try:
            result = await done
        except sqlite3.IntegrityError:
            raise  # a unique key: the caller decides whether that is idempotency
        except sqlite3.Error as exc:
            self._write_error = f"SQLite {self.path}: write failed: {exc}"
            raise StoreError(self._write_error) from exc
        waiter = self._join_commit()
        deferred = _DEFERRED.get()
        if deferred is not None and deferred.open and deferred.store is self:
            deferred.waiters.append(waiter)
        else:
            await waiter
        return result

    async def _commit_locked(self) -> None:
        """COMMIT (the store's lock held) and tell every waiting unit how it went."""
        if self._commit_waiters:
            await self._finish_commit(*self._queue_commit())

    def _queue_commit(self) -> tuple[asyncio.Future[StoreError | None], list[asyncio.Future[None]]]:
        """Take the units waiting for a commit and put a COMMIT for them on the database
        thread's FIFO queue (the store's lock held)."""
        waiters, self._commit_waiters = self._commit_waiters, []
        db = self._conn
        done: asyncio.Future[StoreError | None] = asyncio.get_running_loop().create_future()
        db._tx.put_nowait((done, functools.partial(self._commit_in_thread, db._conn)))
        # Pacing counts from now: a flush scheduled while this one runs waits its turn.
        self._commit_queued_at = monotonic()
        return done, waiters

    async def _finish_commit(
        self, done: asyncio.Future[StoreError | None], waiters: list[asyncio.Future[None]]
    ) -> None:
        """Wait for a queued COMMIT and tell every unit it covers how it went."""
        try:
            error = await done
        except BaseException as exc:
            # Cancelled or broken: the units must not wait forever for an answer.
            failure = StoreError(f"SQLite {self.path}: commit did not complete: {exc!r}")
            for waiter in waiters:
                if not waiter.done():
                    waiter.set_exception(failure)
                    waiter.add_done_callback(lambda f: f.exception())
            raise
        _answer(waiters, error)

    async def _read(self, sql: str, params: Iterable[Any] = ()) -> list[sqlite3.Row]:
        try:
            # One hop to the database thread (execute + fetch + close), not three.
            return list(await self._conn.execute_fetchall(sql, tuple(params)))
        except sqlite3.Error as exc:
            raise StoreError(f"SQLite {self.path}: query failed: {exc}") from exc

    async def _read_job(self, fn: Callable[[sqlite3.Connection], _T]) -> _T:
        """Run several reads as one hop to the database thread (`fn` gets the raw connection)."""
        db = self._conn
        try:
            return await _in_thread(db, fn, db._conn)
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
        params = (
            channel,
            external_id,
            payload,
            _to_json(meta or {}),
            received_at.timestamp(),
            holder,
            claimed_until,
        )

        def put(conn: sqlite3.Connection) -> tuple[sqlite3.Row, bool]:
            row = conn.execute(
                "INSERT INTO inbox (channel, external_id, payload, meta, received_at, claimed_by, "
                "claimed_until) VALUES (?, ?, ?, ?, ?, ?, ?) ON CONFLICT (channel, external_id) "
                "DO NOTHING RETURNING *",
                params,
            ).fetchone()
            if row is not None:
                return row, True
            existing = conn.execute(
                "SELECT * FROM inbox WHERE channel = ? AND external_id = ?", (channel, external_id)
            ).fetchone()
            assert existing is not None
            return existing, False

        row, created = await self._write(put, one_write=True)
        return _inbox(row), created

    async def inbox_claim(
        self, holder: str, now: datetime, lease_seconds: float, limit: int
    ) -> list[InboxItem]:
        rows = await self._write(
            lambda conn: conn.execute(
                "UPDATE inbox SET claimed_by = ?, claimed_until = ?, attempts = attempts + 1 "
                "WHERE id IN (SELECT id FROM inbox WHERE status = 'pending' AND "
                "(claimed_until IS NULL OR claimed_until < ?) ORDER BY id LIMIT ?) RETURNING *",
                (holder, now.timestamp() + lease_seconds, now.timestamp(), limit),
            ).fetchall()
        )
        return sorted((_inbox(r) for r in rows), key=lambda item: item.id)

    async def inbox_get(self, item_id: int) -> InboxItem | None:
        row = await self._read_one("SELECT * FROM inbox WHERE id = ?", (item_id,))
        return _inbox(row) if row else None

    async def inbox_find(self, channel: str, external_id: str) -> InboxItem | None:
        row = await self._read_one(
            "SELECT * FROM inbox WHERE channel = ? AND external_id = ?", (channel, external_id)
        )
        return _inbox(row) if row else None

    async def inbox_done(self, item_id: int, lead_number: int | None) -> None:
        await self._write(
            lambda conn: conn.execute(
                "UPDATE inbox SET status = 'done', lead_number = ?, claimed_by = NULL, "
                "claimed_until = NULL WHERE id = ?",
                (lead_number, item_id),
            ).close(),
            one_write=True,
        )

    async def inbox_quarantine(self, item_id: int, reason: str) -> None:
        await self._write(
            lambda conn: conn.execute(
                "UPDATE inbox SET status = 'quarantined', reason = ?, claimed_by = NULL, "
                "claimed_until = NULL WHERE id = ?",
                (reason, item_id),
            ).close()
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

    async def inbox_list(
        self, status: str, limit: int = 100, before_id: int | None = None
    ) -> list[InboxItem]:
        rows = await self._read(
            "SELECT * FROM inbox WHERE status = ? AND id < ? ORDER BY id DESC LIMIT ?",
            (status, before_id if before_id is not None else 2**63 - 1, limit),
        )
        return [_inbox(r) for r in rows]

    # --- contacts -------------------------------------------------------------------------
    @staticmethod
    def _contact_in_thread(conn: sqlite3.Connection, contact_id: str) -> Contact | None:
        row = conn.execute("SELECT * FROM contacts WHERE id = ?", (contact_id,)).fetchone()
        if row is None:
            return None
        ids = conn.execute(
            "SELECT kind, value, display_name FROM identities WHERE contact_id = ? ORDER BY rowid",
            (contact_id,),
        ).fetchall()
        return Contact(
            id=row["id"],
            name=row["name"],
            language=row["language"],
            tags=json.loads(row["tags"]),
            created_at=_req_dt(row["created_at"]),
            identities=[Identity(IdentityKind(i["kind"]), i["value"], i["display_name"]) for i in ids],
        )

    async def _load_contact(self, contact_id: str) -> Contact | None:
        return await self._read_job(lambda conn: self._contact_in_thread(conn, contact_id))

    async def find_contact(self, identity: Identity) -> Contact | None:
        return await self.find_contact_of([identity])

    async def find_contact_of(self, identities: Sequence[Identity]) -> Contact | None:
        keys = [(i.kind.value, i.value) for i in identities]

        def find(conn: sqlite3.Connection) -> Contact | None:
            # In the caller's order: the first identity that has a contact decides.
            for key in keys:
                row = conn.execute(
                    "SELECT contact_id FROM identities WHERE kind = ? AND value = ?", key
                ).fetchone()
                if row is not None:
                    return self._contact_in_thread(conn, row["contact_id"])
            return None

        return await self._read_job(find)

    async def get_contact(self, contact_id: str) -> Contact | None:
        return await self._load_contact(contact_id)

    async def create_contact(self, contact: Contact) -> Contact:
        row = (
            contact.id,
            contact.name,
            contact.language,
            _to_json(contact.tags),
            contact.created_at.timestamp(),
        )
        identities = [(i.kind.value, i.value, contact.id, i.display_name) for i in contact.identities]

        def insert(conn: sqlite3.Connection) -> None:
            conn.execute(
                "INSERT INTO contacts (id, name, language, tags, created_at) VALUES (?, ?, ?, ?, ?)", row
            ).close()
            conn.executemany(
                "INSERT INTO identities (kind, value, contact_id, display_name) VALUES (?, ?, ?, ?)",
                identities,
            ).close()

        try:
            await self._write(insert)
        except sqlite3.IntegrityError as exc:
            raise DuplicateError(f"contact {contact.id}: an identity is already taken: {exc}") from exc
        return contact

    async def add_identity(self, contact_id: str, identity: Identity) -> bool:
        key = (identity.kind.value, identity.value)

        def add(conn: sqlite3.Connection) -> bool:
            inserted = conn.execute(
                "INSERT INTO identities (kind, value, contact_id, display_name) VALUES (?, ?, ?, ?) "
                "ON CONFLICT (kind, value) DO NOTHING",
                (*key, contact_id, identity.display_name),
            ).rowcount
            if inserted:
                return True
            row = conn.execute(
                "SELECT contact_id FROM identities WHERE kind = ? AND value = ?", key
            ).fetchone()
            return row is not None and row["contact_id"] == contact_id

        return await self._write(add)

    async def merge_contacts(self, keep_id: str, merge_id: str) -> None:
        if keep_id == merge_id:
            return
        async with self._unit() as db:
            # Checked in the write itself: merging into an erased contact would move the other
            # customer's identities and leads onto a contact row that no longer exists.
            cursor = await db.execute("SELECT id FROM contacts WHERE id IN (?, ?)", (keep_id, merge_id))
            found = {str(row[0]) for row in await cursor.fetchall()}
            await cursor.close()
            for contact_id in (keep_id, merge_id):
                if contact_id not in found:
                    raise ContactMissing(contact_id)
            await db.execute("UPDATE identities SET contact_id = ? WHERE contact_id = ?", (keep_id, merge_id))
            await db.execute("UPDATE leads SET contact_id = ? WHERE contact_id = ?", (keep_id, merge_id))
            await db.execute("DELETE FROM contacts WHERE id = ?", (merge_id,))

    # --- leads ----------------------------------------------------------------------------
    async def next_lead_number(self) -> int:
        row = await self._write(
            lambda conn: conn.execute(
                "UPDATE counters SET value = value + 1 WHERE name = 'lead' RETURNING value"
            ).fetchone()
        )
        assert row is not None
        return int(row[0])

    async def create_lead(
        self, lead: Lead, expected_load: tuple[int, int] | None = None
    ) -> tuple[Lead, bool]:
        pending = lead.first_response_at is None and lead.breached_at is None
        # The generalised response clock (sla_due) arms the same marks as first_response_due.
        response_due = lead.sla_due if lead.sla_target else lead.first_response_due
        response_warn = lead.sla_warn_due if lead.sla_target else lead.warn_due
        running = lead.sla_paused_at is None and lead.is_active
        values = [
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
            _to_json(lead.tags),
            lead.origin_external_id,
            lead.created_at.timestamp(),
            lead.updated_at.timestamp(),
            _ts(lead.first_response_at),
            _ts(lead.resolved_at),
            _ts(lead.first_response_due),
            _ts(lead.warn_due),
            _ts(lead.warned_at),
            _ts(lead.breached_at),
            lead.sla_target,
            _ts(lead.sla_started_at),
            _ts(lead.sla_due),
            _ts(lead.sla_warn_due),
            _ts(lead.resolution_due),
            _ts(lead.resolution_warn_due),
            _ts(lead.sla_paused_at),
            _ts(lead.sla_warned_at),
            _ts(lead.sla_breached_at),
            _ts(lead.res_warned_at),
            _ts(lead.res_breached_at),
            _ts(response_due) if pending and running else None,
            _ts(response_warn) if pending and running and lead.warned_at is None else None,
            _ts(lead.resolution_due) if running else None,
            _ts(lead.resolution_warn_due) if running else None,
        ]

        number = [lead.number]
        claim_lost = [False]

        def insert(conn: sqlite3.Connection) -> sqlite3.Row | None:
            # BEGIN IMMEDIATE holds the write lock: the load cannot change before the insert.
            if (
                expected_load is not None
                and lead.assignee is not None
                and self._loads_in_thread(conn, [lead.assignee])[lead.assignee] != tuple(expected_load)
            ):
                claim_lost[0] = True
                values[_ASSIGNEE_AT] = None
            if lead.number == 0:
                # Numbered in the same write: one hop instead of two.
                number[0] = values[0] = int(
                    conn.execute(
                        "UPDATE counters SET value = value + 1 WHERE name = 'lead' RETURNING value"
                    ).fetchone()[0]
                )
            cursor = conn.execute(
                f"INSERT INTO leads ({_LEAD_COLUMNS}, breach_pending_at, warn_pending_at, "
                f"res_breach_pending_at, res_warn_pending_at) "
                f"VALUES ({','.join('?' * len(values))}) ON CONFLICT (channel, origin_external_id) DO NOTHING",
                values,
            )
            inserted = cursor.rowcount
            cursor.close()
            if inserted:
                return None
            row: sqlite3.Row | None = conn.execute(
                f"SELECT {_LEAD_COLUMNS} FROM leads WHERE channel = ? AND origin_external_id = ?",
                (lead.channel, lead.origin_external_id),
            ).fetchone()
            assert row is not None
            return row

        try:
            existing = await self._write(insert)
            if existing is not None:
                return _lead(existing), False
        except sqlite3.IntegrityError as exc:
            # ON CONFLICT names only the origin key: a taken number still raises here.
            raise DuplicateError(f"lead number {number[0]} is already taken: {exc}") from exc
        if claim_lost[0]:
            return replace(lead, number=number[0], assignee=None), True
        return (lead if lead.number else replace(lead, number=number[0])), True

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

    async def update_lead(
        self, number: int, changes: LeadChanges, expected: Lead | None = None
    ) -> Lead | None:
        sets: list[str] = []
        params: list[Any] = []

        def put(column: str, value: Any) -> None:
            sets.append(f"{column} = ?")
            params.append(value)

        now_ts = _ts(changes.updated_at or datetime.now(UTC))

        def disarm(*columns: str) -> None:
            for col in columns:
                sets.append(f"{col} = NULL")

        if changes.status is not None:
            put("status", changes.status.value)
            if changes.status not in ACTIVE_STATUSES:
                disarm("breach_pending_at", "warn_pending_at", "res_breach_pending_at", "res_warn_pending_at")
                disarm("escalate_pending_at", "res_escalate_pending_at")
                sets.append("sla_target = NULL")
        if changes.clear_sla:
            disarm("breach_pending_at", "warn_pending_at", "escalate_pending_at")
            sets.append("sla_target = NULL")
        if changes.escalate_at is not None and changes.escalate_target == "resolution":
            put("res_escalate_pending_at", _ts(changes.escalate_at))
        elif changes.escalate_at is not None:
            put("escalate_pending_at", _ts(changes.escalate_at))
            put("escalate_target", changes.escalate_target)
        if changes.pause_sla:
            stopped = changes.status is not None and changes.status not in ACTIVE_STATUSES
            for col in ("res_breach_pending_at", "res_warn_pending_at"):
                if stopped:
                    disarm(col)
                else:
                    # Pausing cancels only the resolution marks still ahead: one already passed
                    # fell due while the clock ran and stays armed for the next sweep (a reply
                    # between the due time and the sweep lost the breach).
                    sets.append(f"{col} = CASE WHEN {col} <= {now_ts!r} THEN {col} END")
            sets.append(f"sla_paused_at = COALESCE(sla_paused_at, {now_ts!r})")
        if changes.sla_target is not None:
            put("sla_target", changes.sla_target)
        if changes.sla_started_at is not None:
            put("sla_started_at", _ts(changes.sla_started_at))
            put("sla_warned_at", None)
            put("sla_breached_at", None)
        if changes.restart_resolution:
            put("res_warned_at", None)
            put("res_breached_at", None)
        if changes.sla_due is not None:
            put("sla_due", _ts(changes.sla_due))
            put("breach_pending_at", _ts(changes.sla_due))
            put("sla_warn_due", _ts(changes.sla_warn_due))
            put("warn_pending_at", _ts(changes.sla_warn_due))
        if changes.resolution_due is not None:
            put("resolution_due", _ts(changes.resolution_due))
            put("res_breach_pending_at", _ts(changes.resolution_due))
            put("resolution_warn_due", _ts(changes.resolution_warn_due))
            put("res_warn_pending_at", _ts(changes.resolution_warn_due))
        if changes.clear_sla_paused:
            put("sla_paused_at", None)
        if changes.clear_resolution:
            put("resolution_due", None)
            put("resolution_warn_due", None)
            disarm("res_breach_pending_at", "res_warn_pending_at")
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
            put("tags", _to_json(changes.tags))
        if changes.first_response_at is not None:
            # Two replies that both read the lead unanswered both send their time: the earliest
            # one is the first response, whichever write lands last (the later one won).
            sets.append("first_response_at = MIN(IFNULL(first_response_at, ?), ?)")
            params.extend([_ts(changes.first_response_at)] * 2)
            disarm("breach_pending_at", "warn_pending_at")
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
        put("updated_at", now_ts)

        def update(conn: sqlite3.Connection) -> sqlite3.Row | None:
            if changes.extra:
                # Read inside the unit: a read before it could lose another writer's keys.
                row = conn.execute("SELECT extra FROM leads WHERE number = ?", (number,)).fetchone()
                merged = {**(json.loads(row["extra"]) if row else {}), **changes.extra}
                put("extra", _to_json(merged))
            where, where_params = _sla_state_condition(expected)
            cursor = conn.execute(
                f"UPDATE leads SET {', '.join(sets)} WHERE number = ?{where}",
                [*params, number, *where_params],
            )
            applied = cursor.rowcount > 0
            cursor.close()
            if not applied:
                return None
            found: sqlite3.Row | None = conn.execute(
                f"SELECT {_LEAD_COLUMNS} FROM leads WHERE number = ?", (number,)
            ).fetchone()
            return found

        row = await self._write(update)
        return _lead(row) if row else None

    async def list_leads(self, query: LeadQuery, limit: int, cursor: str | None = None) -> Page[Lead]:
        if query.order not in LEAD_ORDERS:
            raise ValueError(f"unknown lead order {query.order!r}; use one of {LEAD_ORDERS}")
        at = LeadCursor.parse(cursor, query.order) if cursor is not None else None
        if query.order == "due":
            found = await self._leads_by_due(query, limit, at)
        else:
            where, params = self._lead_where(query)
            backward = at is not None and at.backward
            if at is not None:
                where.append("number > ?" if backward else "number < ?")
                params.append(at.number)
            sql = f"SELECT {_LEAD_COLUMNS} FROM leads"
            if where:
                sql += " WHERE " + " AND ".join(where)
            sql += f" ORDER BY number {'ASC' if backward else 'DESC'} LIMIT ?"
            rows = await self._read(sql, [*params, limit + 1])
            found = [(_lead(r), LeadCursor(backward=False, number=r["number"])) for r in rows]
        page = lead_page(query.order, found, limit, at)
        return page if page is not None else await self.list_leads(query, limit)

    async def _leads_by_due(
        self, query: LeadQuery, limit: int, at: LeadCursor | None
    ) -> list[tuple[Lead, LeadCursor]]:
        """Up to `limit + 1` leads in due order from `at` (backward: nearest first).

        Two parts, each read along an index from the cursor and stopped at the page's end: the
        owed leads by their running target's (sla_due, number) in leads_owed_sla_due (a partial
        index, so leads owed nothing are never walked), then the rest by (updated_at, number) in
        leads_status_updated, one range per status merged (as MongoDB's SORT_MERGE does), never
        a sort of every match.
        """
        backward = at is not None and at.backward
        parts: tuple[str, ...] = ("rest", "owed") if backward else ("owed", "rest")
        if at is not None:
            # Begin in the cursor's own part: the other one lies entirely behind it.
            parts = parts[parts.index("owed" if at.owed else "rest") :]
        found: list[tuple[Lead, LeadCursor]] = []
        for part in parts:
            want = limit + 1 - len(found)
            if want <= 0:
                break
            bound = at if at is not None and at.owed == (part == "owed") else None
            if part == "owed":
                rows = await self._owed_rows(query, want, bound, backward)
                column = "sla_due"
            else:
                rows = await self._rest_rows(query, want, bound, backward)
                column = "updated_at"
            found += [
                (_lead(r), LeadCursor(False, r["number"], part == "owed", repr(float(r[column]))))
                for r in rows
            ]
        return found

    async def _owed_rows(
        self, query: LeadQuery, limit: int, bound: LeadCursor | None, backward: bool
    ) -> list[sqlite3.Row]:
        if query.statuses is not None and not set(query.statuses) & ACTIVE_STATUSES:
            return []  # nothing asked for can be owed
        where, params = self._lead_where(query)
        # Written as leads_owed_sla_due's own WHERE, so SQLite can use the partial index.
        where.append(_OWED_SQL)
        if bound is not None:
            where.append(f"(sla_due, number) {'<' if backward else '>'} (?, ?)")
            params += [_cursor_key(bound), bound.number]
        direction = "DESC" if backward else "ASC"
        # INDEXED BY: the planner would rather take a status index and sort every owed match
        # (it cannot know the partial index holds only the few owed leads of 1M).
        return await self._read(
            f"SELECT {_LEAD_COLUMNS} FROM leads INDEXED BY leads_owed_sla_due WHERE {' AND '.join(where)} "
            f"ORDER BY sla_due {direction}, number {direction} LIMIT ?",
            [*params, limit],
        )

    async def _rest_rows(
        self, query: LeadQuery, limit: int, bound: LeadCursor | None, backward: bool
    ) -> list[sqlite3.Row]:
        where, params = self._lead_where(query)
        if bound is not None:
            where.append(f"(updated_at, number) {'>' if backward else '<'} (?, ?)")
            params += [_cursor_key(bound), bound.number]
        direction = "ASC" if backward else "DESC"
        order = f"ORDER BY updated_at {direction}, number {direction}"
        parts: list[str] = []
        part_params: list[Any] = []
        for status in sorted(query.statuses if query.statuses is not None else LeadStatus):
            # An active lead is here only when no response is owed on it (the rest are the owed part).
            answered = " AND (sla_target IS NULL OR sla_due IS NULL)"
            parts.append(
                f"SELECT * FROM (SELECT {_LEAD_COLUMNS} FROM leads WHERE {' AND '.join([*where, 'status = ?'])}"
                f"{answered if status in ACTIVE_STATUSES else ''} {order} LIMIT ?)"
            )
            part_params += [*params, status.value, limit]
        if not parts:
            return []
        return await self._read(f"{' UNION ALL '.join(parts)} {order} LIMIT ?", [*part_params, limit])

    async def count_leads(self, query: LeadQuery) -> int:
        where, params = self._lead_where(query)
        sql = "SELECT COUNT(*) AS n FROM leads" + (" WHERE " + " AND ".join(where) if where else "")
        rows = await self._read(sql, params)
        return int(rows[0]["n"])

    @staticmethod
    def _lead_where(query: LeadQuery) -> tuple[list[str], list[Any]]:
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
        elif query.assignee is not None and query.or_unassigned:
            where.append("(assignee = ? OR assignee IS NULL)")
            params.append(query.assignee)
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
            where.append(_BREACHED_SQL if query.breached else f"NOT {_BREACHED_SQL}")
        if query.contact_id is not None:
            where.append("contact_id = ?")
            params.append(query.contact_id)
        if query.text:
            # LIKE folds ASCII only and treats % and _ as patterns: staff search Cyrillic names
            # in any case and type literal text, so compare Unicode-casefolded substrings.
            needle = query.text.casefold()
            where.append(
                "(instr(hub_fold(subject), ?) > 0 "
                "OR contact_id IN (SELECT id FROM contacts WHERE instr(hub_fold(name), ?) > 0) "
                "OR contact_id IN (SELECT contact_id FROM identities WHERE instr(hub_fold(value), ?) > 0))"
            )
            params.extend([needle, needle, needle])
        return where, params

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

    async def claim_sla_marks(self, now: datetime, limit: int) -> list[SlaClaim]:
        now_ts = now.timestamp()
        # A read first: a sweep with nothing due costs four index probes and takes no write lock.
        probe = " UNION ALL ".join(
            f"SELECT 1 FROM (SELECT 1 FROM leads WHERE {col} <= ? LIMIT 1)" for col, *_ in _MARKS
        )
        if not await self._read(probe, [now_ts] * len(_MARKS)):
            return []
        claims: list[SlaClaim] = []
        async with self._unit() as db:
            for column, marks, level, event in _MARKS:
                room = limit - len(claims)
                if room <= 0:
                    break
                # Select then update inside one BEGIN IMMEDIATE unit: no other process can claim
                # the same rows in between, and the old due time is still readable here.
                cursor = await db.execute(
                    f"SELECT {_LEAD_COLUMNS}, {column} AS due_mark, escalate_target FROM leads "
                    f"WHERE {column} IS NOT NULL AND {column} <= ? ORDER BY {column} LIMIT ?",
                    (now_ts, room),
                )
                rows = list(await cursor.fetchall())
                await cursor.close()
                if not rows:
                    continue
                numbers = [r["number"] for r in rows]
                await db.execute(
                    f"UPDATE leads SET {column} = NULL, {', '.join(f'{m} = ?' for m in marks)} "
                    f"WHERE number IN ({','.join('?' * len(numbers))})",
                    (*[now_ts] * len(marks), *numbers),
                )
                batch = []
                first_response: list[int] = []
                for row in rows:
                    lead = _lead(row)
                    due = _req_dt(row["due_mark"])
                    if column == "escalate_pending_at":
                        target = row["escalate_target"] or "first_response"
                    elif column.startswith("res_"):
                        target = "resolution"
                    elif lead.sla_target:
                        target = lead.sla_target
                    else:
                        target = (
                            "first_response"
                            if due in (lead.first_response_due, lead.warn_due)
                            else "next_response"
                        )
                    for m in marks:
                        if m != "escalated_at":
                            setattr(lead, m, now)
                    if column in _FIRST_RESPONSE_MARK and target == "first_response":
                        setattr(lead, _FIRST_RESPONSE_MARK[column], now)
                        first_response.append(lead.number)
                    batch.append(SlaClaim(lead=lead, target=target, level=level, due=due))
                if first_response:
                    await db.execute(
                        f"UPDATE leads SET {_FIRST_RESPONSE_MARK[column]} = ? "
                        f"WHERE number IN ({','.join('?' * len(first_response))})",
                        (now_ts, *first_response),
                    )
                await db.executemany(
                    "INSERT INTO events (lead_number, type, at, data) VALUES (?, ?, ?, ?)",
                    [
                        (
                            c.lead.number,
                            event.value,
                            now_ts,
                            json.dumps(
                                {
                                    "target": c.target,
                                    "level": c.level,
                                    "due": c.due.isoformat(),
                                    "assignee": c.lead.assignee,
                                    "team": c.lead.team,
                                }
                            ),
                        )
                        for c in batch
                    ],
                )
                claims.extend(batch)
        return claims

    @staticmethod
    def _loads_in_thread(conn: sqlite3.Connection, manager_ids: Sequence[str]) -> dict[str, tuple[int, int]]:
        loads = dict.fromkeys(manager_ids, (0, 0))
        if manager_ids:
            marks = ",".join("?" * len(manager_ids))
            for row in conn.execute(
                f"SELECT assignee, n, w FROM assignee_load WHERE assignee IN ({marks})", manager_ids
            ):
                loads[row["assignee"]] = (int(row["n"]), int(row["w"]))
        return loads

    @staticmethod
    def _states_in_thread(conn: sqlite3.Connection, keys: Sequence[str]) -> dict[str, Any]:
        values: dict[str, Any] = dict.fromkeys(keys)
        if keys:
            for row in conn.execute(
                f"SELECT key, value FROM kv WHERE key IN ({','.join('?' * len(keys))})", keys
            ):
                values[row["key"]] = json.loads(row["value"])
        return values

    @staticmethod
    def _incr_in_thread(conn: sqlite3.Connection, key: str) -> int:
        row = conn.execute(
            "INSERT INTO kv (key, value) VALUES (?, '1') ON CONFLICT (key) DO UPDATE "
            "SET value = CAST(CAST(kv.value AS INTEGER) + 1 AS TEXT) RETURNING value",
            (key,),
        ).fetchone()
        return int(row[0])

    async def load_by_assignee(self, manager_ids: list[str]) -> dict[str, tuple[int, int]]:
        return await self._read_job(lambda conn: self._loads_in_thread(conn, manager_ids))

    async def routing_snapshot(
        self, manager_ids: list[str], state_keys: list[str], turn_key: str
    ) -> RoutingSnapshot:
        def snapshot(conn: sqlite3.Connection) -> RoutingSnapshot:
            return RoutingSnapshot(
                self._loads_in_thread(conn, manager_ids),
                self._states_in_thread(conn, state_keys),
                self._incr_in_thread(conn, turn_key),
            )

        # The turn's increment is the only write, and the last statement.
        return await self._write(snapshot, one_write=True)

    async def assign_if_load(
        self,
        number: int,
        assignee: str,
        team: str | None,
        expected: tuple[int, int],
        now: datetime,
        previous: str | None = None,
        priority: int | None = None,
    ) -> bool:

        def assign(conn: sqlite3.Connection) -> bool:
            # BEGIN IMMEDIATE holds SQLite's write lock: the load read here cannot change before
            # the update below, in this process or any other on the same file.
            if self._loads_in_thread(conn, [assignee])[assignee] != tuple(expected):
                return False
            cursor = conn.execute(
                "UPDATE leads SET assignee = ?, team = COALESCE(?, team), priority = COALESCE(?, priority), "
                "updated_at = ? WHERE number = ? AND assignee IS ?",
                (assignee, team, priority, now.timestamp(), number, previous),
            )
            changed = cursor.rowcount
            cursor.close()
            return changed > 0

        return await self._write(assign)

    async def oldest_unassigned(self, limit: int) -> list[Lead]:
        rows = await self._read(
            f"SELECT {_LEAD_COLUMNS} FROM leads WHERE assignee IS NULL AND status IN "
            "('new', 'open', 'waiting_customer') ORDER BY number LIMIT ?",
            (limit,),
        )
        return [_lead(r) for r in rows]

    async def last_assignee_of_contact(self, contact_id: str, exclude_number: int) -> str | None:
        row = await self._read_one(
            "SELECT assignee FROM leads WHERE contact_id = ? AND number != ? AND assignee IS NOT NULL "
            "ORDER BY number DESC LIMIT 1",
            (contact_id, exclude_number),
        )
        return str(row["assignee"]) if row else None

    async def active_leads_of(self, assignee: str, limit: int) -> list[Lead]:
        rows = await self._read(
            f"SELECT {_LEAD_COLUMNS} FROM leads WHERE assignee = ? AND status IN {_ACTIVE_SQL} "
            "ORDER BY number LIMIT ?",
            (assignee, limit),
        )
        return [_lead(r) for r in rows]

    # --- messages -------------------------------------------------------------------------
    async def add_message(self, message: Message) -> tuple[Message, bool]:
        params = self._message_params(message)

        def add(conn: sqlite3.Connection) -> sqlite3.Row | None:
            cursor = conn.execute(_INSERT_MESSAGE, params)
            inserted = cursor.rowcount > 0
            cursor.close()
            if inserted:
                return None
            row: sqlite3.Row | None = conn.execute(
                "SELECT * FROM messages WHERE channel = ? AND external_id = ?",
                (message.channel, message.external_id),
            ).fetchone()
            assert row is not None
            return row

        existing = await self._write(add, one_write=True)
        return (message, True) if existing is None else (_message(existing), False)

    async def _insert_message(self, db: _UnitDb, message: Message) -> bool:
        cursor = await db.execute(_INSERT_MESSAGE, self._message_params(message))
        inserted = cursor.rowcount > 0
        await cursor.close()
        return inserted

    @staticmethod
    def _message_params(message: Message) -> tuple[Any, ...]:
        return (
            message.id,
            message.lead_number,
            message.direction.value,
            message.channel,
            message.author,
            message.text,
            message.html,
            _attachments_json(message.attachments),
            message.external_id,
            _to_json(message.refs),
            message.delivery.value if message.delivery else None,
            message.created_at.timestamp(),
            message.subject,
            message.lead_number,
        )

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
        rows = [(ref, lead_number) for ref in refs]
        await self._write(
            lambda conn: conn.executemany(
                "INSERT INTO refs (ref, lead_number) VALUES (?, ?) ON CONFLICT (ref) DO UPDATE SET "
                "lead_number = MAX(refs.lead_number, excluded.lead_number)",
                rows,
            ).close()
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
        try:
            async with self._unit() as db:
                if not await self._insert_message(db, message):
                    # Same (channel, external_id) as a stored message: a retried request.
                    # Refuse the whole unit so no second delivery row is queued for it.
                    raise DuplicateError(
                        f"message {message.channel}:{message.external_id} is already stored (lead L-{message.lead_number})"
                    )
                if item is not None:
                    await db.execute(
                        "INSERT INTO outbox (id, message_id, lead_number, channel, payload, state, attempts, "
                        "next_attempt_at, created_at) VALUES (?, ?, ?, ?, ?, ?, 0, ?, ?)",
                        (
                            item.id,
                            item.message_id,
                            item.lead_number,
                            item.channel,
                            _to_json(item.payload),
                            DeliveryState.QUEUED.value,
                            (item.next_attempt_at or item.created_at).timestamp(),
                            item.created_at.timestamp(),
                        ),
                    )
        except sqlite3.IntegrityError as exc:
            # The unit rolled back, so the message is not stored without its delivery row.
            raise DuplicateError(f"outbox {item.id if item else '-'} / message {message.id}: {exc}") from exc

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
        params = (
            event.lead_number,
            event.type,
            event.at.timestamp(),
            _to_json(event.data),
        )

        def insert(conn: sqlite3.Connection) -> int | None:
            cursor = conn.execute(
                "INSERT INTO events (lead_number, type, at, data) VALUES (?, ?, ?, ?)", params
            )
            event_id = cursor.lastrowid
            cursor.close()
            return event_id

        return replace(event, id=await self._write(insert))

    async def append_events(self, events: Sequence[Event]) -> list[Event]:
        if not events:
            return []
        rows = [(e.lead_number, e.type, e.at.timestamp(), _to_json(e.data)) for e in events]

        def insert(conn: sqlite3.Connection) -> list[int | None]:
            ids: list[int | None] = []
            for params in rows:
                cursor = conn.execute(
                    "INSERT INTO events (lead_number, type, at, data) VALUES (?, ?, ?, ?)", params
                )
                ids.append(cursor.lastrowid)
                cursor.close()
            return ids

        ids = await self._write(insert)
        return [replace(event, id=event_id) for event, event_id in zip(events, ids, strict=True)]

    async def list_events(
        self,
        lead_number: int | None = None,
        types: list[str] | None = None,
        limit: int = 1000,
        after_id: int | None = None,
    ) -> list[Event]:
        where: list[str] = []
        params: list[Any] = []
        if after_id is not None:
            where.append("id > ?")
            params.append(after_id)
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

    async def get_states(self, keys: Sequence[str]) -> dict[str, Any]:
        return await self._read_job(lambda conn: self._states_in_thread(conn, keys))

    async def set_state(self, key: str, value: Any) -> None:
        encoded = _to_json(value)
        await self._write(
            lambda conn: conn.execute(
                "INSERT INTO kv (key, value) VALUES (?, ?) ON CONFLICT (key) DO UPDATE SET value = excluded.value",
                (key, encoded),
            ).close()
        )

    async def incr_state(self, key: str) -> int:
        return await self._write(lambda conn: self._incr_in_thread(conn, key))

    # --- dashboard: reports, erasure, small aggregates --------------------------------------
    @staticmethod
    def _kpi_filters(query: KpiQuery) -> tuple[list[str], list[Any]]:
        where = ["created_at >= ?", "created_at < ?"]
        params: list[Any] = [query.start.timestamp(), query.end.timestamp()]
        for column, value in (
            ("team", query.team),
            ("assignee", query.assignee),
            ("channel", query.channel),
            ("kind", query.kind.value if query.kind else None),
        ):
            if value is not None:
                where.append(f"{column} = ?")
                params.append(value)
        return where, params

    async def _kpi_rank_values(
        self,
        query: KpiQuery,
        group: tuple[str, Any] | None,
        measure: str,
        count: int,
        fractions: tuple[float, ...],
    ) -> dict[float, float]:
        """Linearly interpolated percentiles of `measure` among `count` non-null values."""
        # The partial expression indexes keep leads sorted by response/resolution time, so the
        # k-th value is found by walking the index (no sort of the whole period).
        column, index = _KPI_MEASURES[measure]
        where, params = self._kpi_filters(query)
        where.insert(0, f"{column} IS NOT NULL")
        if group is not None:
            where.append(f"{group[0]} IS ?")
            params.append(group[1])
        sql = (
            f"SELECT {column} - created_at AS v FROM leads INDEXED BY {index} WHERE {' AND '.join(where)} "
            f"ORDER BY {column} - created_at LIMIT 2 OFFSET ?"
        )
        result: dict[float, float] = {}
        for fraction in fractions:
            h = (count - 1) * fraction
            low = int(h)
            rows = await self._read(sql, [*params, low])
            if not rows:
                continue
            value = float(rows[0]["v"])
            if len(rows) > 1:
                value += (h - low) * (float(rows[1]["v"]) - value)
            result[fraction] = value
        return result

    async def _kpi_small_percentiles(
        self, query: KpiQuery, group: str
    ) -> tuple[dict[Any, dict[float, float]], dict[Any, dict[float, float]]]:
        """Percentiles per group for a small period: its few times are sorted here, not in SQL."""
        where, params = self._kpi_filters(query)
        rows = await self._read(
            f"SELECT {group} AS g, first_response_at - created_at AS f, resolved_at - created_at AS r "
            f"FROM leads WHERE (first_response_at IS NOT NULL OR resolved_at IS NOT NULL) "
            f"AND {' AND '.join(where)}",
            params,
        )
        frt: dict[Any, list[float]] = {}
        resolution: dict[Any, list[float]] = {}
        for key, f, r in rows:
            if f is not None:
                frt.setdefault(key, []).append(f)
            if r is not None:
                resolution.setdefault(key, []).append(r)
        return (
            {k: interpolated_percentiles(v, (0.5, 0.9)) for k, v in frt.items()},
            {k: interpolated_percentiles(v, (0.5,)) for k, v in resolution.items()},
        )

    async def kpi_rows(self, query: KpiQuery) -> list[KpiRow]:
        source = "leads"
        days: list[Any] = []
        if query.group_by is None:
            group = "NULL"
        elif query.group_by == "day":
            # Local days from the zone's own midnights, so DST days are 23 or 25 hours long.
            days = _local_days(query.start, query.end, query.day_zone)
            values = ",".join("(?, ?, ?)" for _ in range(len(days) // 3))
            source = (
                f"(WITH days(label, s, e) AS (VALUES {values}) SELECT days.label, leads.* FROM days "
                "JOIN leads ON leads.created_at >= days.s AND leads.created_at < days.e)"
            )
            group = "label"
        elif query.group_by in KPI_GROUPS:
            group = query.group_by
        else:
            raise ValueError(f"cannot group a KPI report by {query.group_by!r}: use one of {KPI_GROUPS}")
        where, params = self._kpi_filters(query)
        rows = await self._read(
            f"SELECT {group} AS g, COUNT(*) AS received, COUNT(first_response_at) AS responded, "
            "TOTAL(first_response_at <= first_response_due) AS within, "
            "TOTAL(breached_at IS NOT NULL) AS breached, "
            "TOTAL(breached_at IS NOT NULL AND first_response_at IS NOT NULL) AS breached_answered, "
            "COUNT(resolved_at) AS resolved, AVG(first_response_at - created_at) AS frt_mean, "
            f"AVG(resolved_at - created_at) AS rt_mean FROM {source} WHERE {' AND '.join(where)} "
            "GROUP BY g ORDER BY g",
            [*days, *params],
        )
        # Small periods: their times are read once and sorted in Python. Large periods: walk
        # the expression indexes per group, which never sorts but reads the index up to the rank.
        windowed = query.group_by != "day" and sum(r["received"] for r in rows) <= _KPI_SORT_LIMIT
        frt_by: dict[Any, dict[float, float]] = {}
        rt_by: dict[Any, dict[float, float]] = {}
        if windowed:
            frt_by, rt_by = await self._kpi_small_percentiles(query, group)
        result = []
        for row in rows:
            key = row["g"]
            frt: dict[float, float] = frt_by.get(key, {})
            resolution: dict[float, float] = rt_by.get(key, {})
            # Per-day series carry counts and means only: a percentile walk per day would cost
            # one index pass per day.
            if query.group_by != "day" and not windowed:
                selector = None if query.group_by is None else (query.group_by, key)
                if row["responded"]:
                    frt = await self._kpi_rank_values(query, selector, "frt", row["responded"], (0.5, 0.9))
                if row["resolved"]:
                    resolution = await self._kpi_rank_values(query, selector, "rt", row["resolved"], (0.5,))
            label = None if key is None else str(key)
            result.append(
                KpiRow(
                    group=label,
                    received=row["received"],
                    responded=row["responded"],
                    within_target=int(row["within"]),
                    breached=int(row["breached"]),
                    resolved=row["resolved"],
                    frt_mean=row["frt_mean"],
                    frt_median=frt.get(0.5),
                    frt_p90=frt.get(0.9),
                    resolution_mean=row["rt_mean"],
                    resolution_median=resolution.get(0.5),
                    breached_answered=int(row["breached_answered"]),
                )
            )
        if query.group_by is None and result and result[0].received == 0:
            return []
        return result

    async def kpi_breakdowns(
        self, query: KpiQuery, groupings: tuple[str | None, ...]
    ) -> dict[str | None, list[KpiRow]]:
        """`kpi_rows` for several groupings at once: exact scans, or the rollups for large periods."""
        return await sqlite_kpi.kpi_breakdowns(
            self._read, self._kpi_filters, query, groupings, _KPI_SORT_LIMIT
        )

    async def erase_contact(self, contact_id: str) -> list[int]:
        async with self._unit() as db:
            cursor = await db.execute("SELECT number FROM leads WHERE contact_id = ?", (contact_id,))
            numbers = [int(r[0]) for r in await cursor.fetchall()]
            await cursor.close()
            if numbers:
                marks = ",".join("?" * len(numbers))
                for table in ("outbox", "messages", "refs", "inbox"):
                    await db.execute(f"DELETE FROM {table} WHERE lead_number IN ({marks})", numbers)
                paths = ", ".join(f"'$.{key}'" for key in EVENT_TEXT_KEYS)
                await db.execute(
                    f"UPDATE events SET data = json_remove(data, {paths}) WHERE lead_number IN ({marks})",
                    numbers,
                )
                await db.execute(
                    "UPDATE leads SET subject = '', tags = '[]', extra = '{}', "
                    "origin_external_id = 'erased:' || number WHERE contact_id = ?",
                    (contact_id,),
                )
            await db.execute("DELETE FROM identities WHERE contact_id = ?", (contact_id,))
            await db.execute("DELETE FROM contacts WHERE id = ?", (contact_id,))
        return sorted(numbers)

    async def attachment_refs_in_use(self, refs: Sequence[str]) -> set[str]:
        wanted = sorted(set(refs))
        used: set[str] = set()
        # A scan of the messages with attachments: no index on refs inside the JSON column, and
        # only erasure asks. Chunks keep each query under SQLite's bound-parameter limit.
        for start in range(0, len(wanted), 500):
            chunk = wanted[start : start + 500]
            rows = await self._read(
                "SELECT DISTINCT json_extract(a.value, '$.ref') AS ref "
                "FROM messages, json_each(messages.attachments) AS a "
                f"WHERE messages.attachments != '[]' AND json_extract(a.value, '$.ref') IN ({','.join('?' * len(chunk))})",
                chunk,
            )
            used.update(str(r["ref"]) for r in rows)
        return used

    async def handled_since(self, since: datetime) -> dict[str, int]:
        ts = since.timestamp()
        # A lead first answered since then is the first reply's author's (along messages_lead),
        # whoever holds it now; one only resolved since then is its assignee's.
        rows = await self._read(
            "SELECT who, COUNT(*) AS n FROM (SELECT COALESCE(CASE WHEN l.first_response_at >= ? THEN "
            "(SELECT m.author FROM messages m WHERE m.lead_number = l.number AND m.direction = ? "
            "AND m.author != ? ORDER BY m.seq LIMIT 1) END, l.assignee) AS who FROM leads l "
            "WHERE l.first_response_at >= ? OR l.resolved_at >= ?) WHERE who IS NOT NULL GROUP BY who",
            (ts, Direction.OUT.value, AUTO_AUTHOR, ts, ts),
        )
        return {r["who"]: r["n"] for r in rows}

    async def active_counts(self) -> list[tuple[str | None, bool, int]]:
        rows = await self._read(
            f"SELECT team, breached_at IS NOT NULL AS b, COUNT(*) AS n FROM leads "
            f"WHERE status IN {_ACTIVE_SQL} GROUP BY team, b"
        )
        return [(r["team"], bool(r["b"]), r["n"]) for r in rows]
