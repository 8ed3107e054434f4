"""MongoDB adapter on PyMongo's async API (`AsyncMongoClient`): production and scale-out.

Same semantics as `storage.sqlite`, checked by the same contract suite (`tests/contract`,
run when HUB_TEST_MONGODB_URL is set). How the guarantees are kept without one big lock:

- Uniqueness lives in unique indexes (leads by (channel, origin_external_id), messages by
  (channel, external_id), identities by (kind, value), inbox by (channel, external_id)); a
  duplicate key error is how the adapter learns that the first write won.
- Lead numbers, inbox and event ids come from `$inc` on a `counters` document: atomic on one
  document, so unique and increasing across any number of processes.
- Every claim (inbox items, outbox rows, SLA marks) is a `find_one_and_update` whose filter
  contains the thing being claimed (the pending mark, a lapsed or empty claim), so two
  processes can never both match the same document.
- Writes that must land together (a contact and its identities, a reply and its outbox row,
  a delivery state on both the row and its message, a contact merge) run in a transaction
  when the server supports them (replica set or sharded cluster, which production is). On a
  standalone server they run one after another; the windows this leaves are named where they
  occur.
- Write and read concerns come from the URL (`?w=majority&readConcernLevel=majority`), so the
  operator decides durability where the deployment is described.
- The KPI rollups (`kpi_hourly`, `kpi_hist`) have no triggers to keep them: every write of a
  lead's KPI fields returns the lead's pre-image and writes the delta as `$inc` upserts, in the
  same transaction when there is one (storage/mongo_kpi.py says how and what a crash leaves).
- Datetimes are BSON dates (UTC, millisecond precision); the client is tz-aware, so every
  datetime read back is aware UTC like the Store protocol promises.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import json
import logging
import re
from collections.abc import AsyncIterator, Awaitable, Callable, Coroutine, Mapping, Sequence
from dataclasses import replace
from datetime import UTC, datetime, timedelta
from typing import Any, ParamSpec, TypeVar

import pymongo
from pymongo import ASCENDING, DESCENDING, AsyncMongoClient, ReturnDocument, UpdateOne
from pymongo.asynchronous.client_session import AsyncClientSession
from pymongo.asynchronous.collection import AsyncCollection
from pymongo.asynchronous.database import AsyncDatabase
from pymongo.errors import BulkWriteError, DuplicateKeyError, PyMongoError, WriteConcernError, WriteError

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
from storage import mongo_kpi
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
    lead_page,
    phone_conflict_line,
)
from storage.kpi_rollup import KPI_SORT_LIMIT, LeadFacts, check_groupings, rollup_delta

log = logging.getLogger(__name__)

Doc = dict[str, Any]
P = ParamSpec("P")
R = TypeVar("R")

DEFAULT_DATABASE = "hub"
PING_TIMEOUT_SECONDS = 3.0
#: Text search turns matching contacts into an `$in` list; beyond this many it stops growing.
TEXT_MATCH_CONTACTS_CAP = 5000

_ACTIVE = sorted(s.value for s in ACTIVE_STATUSES)
_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
_MS = timedelta(milliseconds=1)


def _cursor_ms(value: datetime) -> str:
    """A due-order cursor's key: whole milliseconds, exactly what BSON keeps of a datetime."""
    aware = value if value.tzinfo is not None else value.replace(tzinfo=UTC)
    return str((aware - _EPOCH) // _MS)


def _cursor_time(at: LeadCursor) -> datetime:
    key = at.key[1:] if at.key.startswith("-") else at.key
    if not (key.isascii() and key.isdigit()) or len(key) > 15:
        raise ValueError(f"invalid cursor key {at.key[:40]!r}")
    return _EPOCH + int(at.key) * _MS


#: Armed SLA marks: (pending field, condition, mark fields set by its claim, level, event),
#: warnings before breaches. The target's own mark records that its episode fired (see hub.sla
#: retarget); warned_at / breached_at are the first-response target's marks only (the KPI's
#: breaches, the breached-open gauge, the queue's state), so the response marks are claimed
#: in two passes, split by the target on the clock.
_FIRST_RESPONSE: Doc = {"sla_target": {"$ne": "next_response"}}
_NEXT_RESPONSE: Doc = {"sla_target": "next_response"}
_MARKS: tuple[tuple[str, Doc, tuple[str, ...], str, EventType], ...] = (
    ("warn_pending_at", _FIRST_RESPONSE, ("warned_at", "sla_warned_at"), "warning", EventType.SLA_WARNING),
    ("warn_pending_at", _NEXT_RESPONSE, ("sla_warned_at",), "warning", EventType.SLA_WARNING),
    ("res_warn_pending_at", {}, ("res_warned_at",), "warning", EventType.SLA_WARNING),
    (
        "breach_pending_at",
        _FIRST_RESPONSE,
        ("breached_at", "sla_breached_at"),
        "breach",
        EventType.SLA_BREACHED,
    ),
    ("breach_pending_at", _NEXT_RESPONSE, ("sla_breached_at",), "breach", EventType.SLA_BREACHED),
    ("res_breach_pending_at", {}, ("res_breached_at",), "breach", EventType.SLA_BREACHED),
    ("escalate_pending_at", {}, ("escalated_at",), "escalation", EventType.SLA_ESCALATED),
    # The resolution target's escalation has a slot of its own: a response breach's step
    # (escalate_pending_at) and a resolution breach's can both be pending.
    ("res_escalate_pending_at", {}, ("escalated_at",), "escalation", EventType.SLA_ESCALATED),
)
#: Databases from before that held the last mark of any target in warned_at / breached_at.
_FIRST_RESPONSE_MARKS_KEY = "storage.first_response_marks"
_LEGACY_TARGET_KEY = "storage.legacy_first_response_target"
#: Leads from before the per-target marks: a mark whose due time is set but no longer armed on
#: an active lead was claimed, so its target's episode is marked (same rule as the SQLite
#: adapter's backfill). (mark field, the shared mark it was claimed with, due field, pending
#: field, extra condition).
_RUNNING = {"sla_paused_at": {"$exists": False}}
_EPISODE_MARKS_BACKFILL = (
    ("sla_warned_at", "warned_at", "sla_warn_due", "warn_pending_at", {"sla_target": {"$type": "string"}}),
    ("sla_breached_at", "breached_at", "sla_due", "breach_pending_at", {"sla_target": {"$type": "string"}}),
    ("res_warned_at", "warned_at", "resolution_warn_due", "res_warn_pending_at", _RUNNING),
    ("res_breached_at", "breached_at", "resolution_due", "res_breach_pending_at", _RUNNING),
)
#: Databases from before a pause kept passed resolution marks: a reply unset a resolution
#: warning or breach already due, so it was never reported. (pending field, due field, the
#: episode's mark, its event, more conditions), the same rule as the SQLite adapter's.
_PAUSED_MARKS_KEY = "storage.paused_resolution_marks"
_PAUSED_MARKS: tuple[tuple[str, str, str, EventType, Doc], ...] = (
    ("res_breach_pending_at", "resolution_due", "res_breached_at", EventType.SLA_BREACHED, {}),
    (
        "res_warn_pending_at",
        "resolution_warn_due",
        "res_warned_at",
        EventType.SLA_WARNING,
        {"res_breached_at": None},
    ),
)
_DUPLICATE_KEY = 11000
#: Tries of a lead update whose resolution marks (a pause) or first response a concurrent
#: claim or reply changed between its read and its write.
_READ_WRITE_ATTEMPTS = 10
#: Up to this many leads in a report period the report is exact; above, from the KPI rollups.
_KPI_SORT_LIMIT = KPI_SORT_LIMIT


def _translated(method: Callable[P, Coroutine[Any, Any, R]]) -> Callable[P, Coroutine[Any, Any, R]]:
    """Driver errors leave the adapter as StoreError (transient: the caller retries later)."""

    @functools.wraps(method)
    async def wrapper(*args: P.args, **kwargs: P.kwargs) -> R:
        store = args[0] if args and isinstance(args[0], MongoStore) else None
        try:
            result = await method(*args, **kwargs)
        except PyMongoError as exc:
            error = f"MongoDB: {method.__name__} failed: {exc}"
            refused = isinstance(exc, (WriteError, WriteConcernError, BulkWriteError))
            if store is not None and refused and not isinstance(exc, DuplicateKeyError):
                # The server answers pings but refuses writes (disk full): /healthz degraded.
                store._write_error = (method.__name__, error)
            raise StoreError(error) from exc
        if store is not None and store._write_error is not None and store._write_error[0] == method.__name__:
            store._write_error = None  # the write that failed succeeds again
        return result

    return wrapper


def _json(value: Any) -> Any:
    """The value as JSON would keep it (tuples to lists, non-string keys to strings), like SQLite."""
    return json.loads(json.dumps(value, ensure_ascii=False))


def _is_duplicate(exc: BulkWriteError) -> bool:
    errors = exc.details.get("writeErrors", [])
    return bool(errors) and all(e.get("code") == _DUPLICATE_KEY for e in errors)


def _utc(value: datetime | None) -> datetime | None:
    return None if value is None else value.astimezone(UTC)


def _req_utc(value: datetime) -> datetime:
    return value.astimezone(UTC)


def _no_nones(doc: Doc) -> Doc:
    return {k: v for k, v in doc.items() if v is not None}


# --- documents <-> core types -----------------------------------------------------------------
def _lead_doc(lead: Lead) -> Doc:
    pending = lead.first_response_at is None and lead.breached_at is None
    doc: Doc = {
        "_id": lead.number,
        "kind": lead.kind.value,
        "channel": lead.channel,
        "contact_id": lead.contact_id,
        "status": lead.status.value,
        "subject": lead.subject,
        "subject_folded": lead.subject.casefold(),
        "form_id": lead.form_id,
        "assignee": lead.assignee,
        "team": lead.team,
        "priority": lead.priority,
        "tags": list(lead.tags),
        "origin_external_id": lead.origin_external_id,
        "created_at": lead.created_at,
        "updated_at": lead.updated_at,
        "first_response_at": lead.first_response_at,
        "resolved_at": lead.resolved_at,
        "first_response_due": lead.first_response_due,
        "warn_due": lead.warn_due,
        "warned_at": lead.warned_at,
        "breached_at": lead.breached_at,
        "extra": {},
    }
    # The pending marks exist only while a mark is still to be claimed: the sweep's partial
    # indexes hold just those leads, so a sweep costs O(due leads), not O(all leads).
    if pending and lead.first_response_due is not None:
        doc["breach_pending_at"] = lead.first_response_due
    if pending and lead.warned_at is None and lead.warn_due is not None:
        doc["warn_pending_at"] = lead.warn_due
    _add_sla_fields(doc, lead, pending)
    return doc


def _add_sla_fields(doc: Doc, lead: Lead, pending: bool) -> None:
    """The generalised SLA clock (hub.sla): target, due times, pause, and its armed marks."""
    doc.update(
        sla_target=lead.sla_target,
        sla_started_at=lead.sla_started_at,
        sla_due=lead.sla_due,
        sla_warn_due=lead.sla_warn_due,
        resolution_due=lead.resolution_due,
        resolution_warn_due=lead.resolution_warn_due,
        sla_warned_at=lead.sla_warned_at,
        sla_breached_at=lead.sla_breached_at,
        res_warned_at=lead.res_warned_at,
        res_breached_at=lead.res_breached_at,
    )
    running = lead.sla_paused_at is None and lead.is_active
    if lead.sla_paused_at is not None:
        doc["sla_paused_at"] = lead.sla_paused_at  # absent while running: `$min` sets it on pause
    if lead.sla_target:
        doc.pop("breach_pending_at", None)
        doc.pop("warn_pending_at", None)
        if pending and running and lead.sla_due is not None:
            doc["breach_pending_at"] = lead.sla_due
        if pending and running and lead.warned_at is None and lead.sla_warn_due is not None:
            doc["warn_pending_at"] = lead.sla_warn_due
    # Resolution marks are dates while armed and null otherwise; their indexes hold dates only.
    doc["res_breach_pending_at"] = lead.resolution_due if running else None
    doc["res_warn_pending_at"] = lead.resolution_warn_due if running else None


def _lead(doc: Mapping[str, Any]) -> Lead:
    return Lead(
        number=int(doc["_id"]),
        kind=LeadKind(doc["kind"]),
        channel=doc["channel"],
        contact_id=doc["contact_id"],
        status=LeadStatus(doc["status"]),
        subject=doc.get("subject", ""),
        form_id=doc.get("form_id", ""),
        assignee=doc.get("assignee"),
        team=doc.get("team"),
        priority=int(doc.get("priority", 0)),
        tags=list(doc.get("tags", [])),
        origin_external_id=doc.get("origin_external_id", ""),
        created_at=_req_utc(doc["created_at"]),
        updated_at=_req_utc(doc["updated_at"]),
        first_response_at=_utc(doc.get("first_response_at")),
        resolved_at=_utc(doc.get("resolved_at")),
        first_response_due=_utc(doc.get("first_response_due")),
        warn_due=_utc(doc.get("warn_due")),
        warned_at=_utc(doc.get("warned_at")),
        breached_at=_utc(doc.get("breached_at")),
        sla_target=doc.get("sla_target"),
        sla_started_at=_utc(doc.get("sla_started_at")),
        sla_due=_utc(doc.get("sla_due")),
        sla_warn_due=_utc(doc.get("sla_warn_due")),
        resolution_due=_utc(doc.get("resolution_due")),
        resolution_warn_due=_utc(doc.get("resolution_warn_due")),
        sla_paused_at=_utc(doc.get("sla_paused_at")),
        sla_warned_at=_utc(doc.get("sla_warned_at")),
        sla_breached_at=_utc(doc.get("sla_breached_at")),
        res_warned_at=_utc(doc.get("res_warned_at")),
        res_breached_at=_utc(doc.get("res_breached_at")),
    )


def _attachment_doc(a: Attachment) -> Doc:
    return {
        "name": a.name,
        "content_type": a.content_type,
        "size": a.size,
        "ref": a.ref,
        "dropped_reason": a.dropped_reason,
    }


def _message_doc(message: Message, seq: int) -> Doc:
    doc: Doc = {
        "_id": message.id,
        "lead_number": message.lead_number,
        "direction": message.direction.value,
        "channel": message.channel,
        "author": message.author,
        "text": message.text,
        "html": message.html,
        "attachments": [_attachment_doc(a) for a in message.attachments],
        "refs": list(message.refs),
        "delivery": message.delivery.value if message.delivery else None,
        "created_at": message.created_at,
        "seq": seq,
    }
    if message.subject:
        doc["subject"] = message.subject
    # Absent, not null: the unique (channel, external_id) index is partial on its existence,
    # so notes and replies without an external id never collide.
    if message.external_id is not None:
        doc["external_id"] = message.external_id
    return doc


def _message(doc: Mapping[str, Any]) -> Message:
    return Message(
        id=doc["_id"],
        lead_number=int(doc["lead_number"]),
        direction=Direction(doc["direction"]),
        channel=doc["channel"],
        author=doc["author"],
        text=doc["text"],
        html=doc.get("html", ""),
        attachments=[Attachment(**a) for a in doc.get("attachments", [])],
        external_id=doc.get("external_id"),
        refs=list(doc.get("refs", [])),
        delivery=DeliveryState(doc["delivery"]) if doc.get("delivery") else None,
        created_at=_req_utc(doc["created_at"]),
        subject=doc.get("subject", ""),
    )


def _outbox(doc: Mapping[str, Any]) -> OutboxItem:
    return OutboxItem(
        id=doc["_id"],
        message_id=doc["message_id"],
        lead_number=int(doc["lead_number"]),
        channel=doc["channel"],
        payload=dict(doc.get("payload", {})),
        state=DeliveryState(doc["state"]),
        attempts=int(doc.get("attempts", 0)),
        next_attempt_at=_utc(doc.get("next_attempt_at")),
        last_error=doc.get("last_error", ""),
        sent_at=_utc(doc.get("sent_at")),
        external_ref=doc.get("external_ref", ""),
        created_at=_req_utc(doc["created_at"]),
    )


def _inbox(doc: Mapping[str, Any]) -> InboxItem:
    return InboxItem(
        id=int(doc["_id"]),
        channel=doc["channel"],
        external_id=doc["external_id"],
        payload=bytes(doc["payload"]),
        received_at=_req_utc(doc["received_at"]),
        status=doc.get("status", "pending"),
        reason=doc.get("reason", ""),
        lead_number=doc.get("lead_number"),
        attempts=int(doc.get("attempts", 0)),
        meta=dict(doc.get("meta", {})),
    )


def _event(doc: Mapping[str, Any]) -> Event:
    return Event(
        id=int(doc["_id"]),
        type=doc["type"],
        at=_req_utc(doc["at"]),
        lead_number=doc.get("lead_number"),
        data=dict(doc.get("data", {})),
    )


#: The resolution target's armed marks, which a pause cancels only while they are still ahead.
_RESOLUTION_MARKS = ("res_breach_pending_at", "res_warn_pending_at")


def marks_kept_by_pause(current: Mapping[str, Any], paused_at: datetime) -> dict[str, datetime]:
    """Of the lead's armed resolution marks (`current`), those a pause at `paused_at` keeps.

    A mark already passed fell due while the clock ran: it stays armed for the next sweep."""
    kept: dict[str, datetime] = {}
    for field in _RESOLUTION_MARKS:
        value = current.get(field)
        if isinstance(value, datetime) and _req_utc(value) <= paused_at:
            kept[field] = value
    return kept


def earliest(stored: datetime | None, first_response_at: datetime) -> datetime:
    """The first response to keep: the earlier of the one stored (if any) and the new one."""
    return first_response_at if stored is None else min(_req_utc(stored), first_response_at)


def sla_state_match(expected: Lead | None) -> Doc:
    """The filter matching a lead whose SLA state (SLA_STATE_FIELDS) is still `expected`'s.

    Dates are compared as stored (BSON keeps milliseconds, so a lead read back from this store
    matches itself); a null also matches an absent field, as `sla_paused_at` is while running."""
    if expected is None:
        return {}
    match: Doc = {}
    for name in SLA_STATE_FIELDS:
        value = getattr(expected, name)
        match[name] = value.value if isinstance(value, LeadStatus) else value
    return match


def lead_update(changes: LeadChanges, kept_marks: Mapping[str, datetime] | None = None) -> Doc:
    """The `$set` / `$unset` update that applies `changes` to a lead document.

    `kept_marks`: with `pause_sla`, the resolution marks the pause leaves armed (see
    `marks_kept_by_pause`); without it a pause disarms both."""
    # Later entries override earlier ones, the same precedence as the SQLite adapter.
    values: Doc = {}
    if changes.status is not None:
        values["status"] = changes.status.value
        if changes.status not in ACTIVE_STATUSES:
            values["breach_pending_at"] = values["warn_pending_at"] = None
            values["res_breach_pending_at"] = values["res_warn_pending_at"] = None
            values["sla_target"] = values["escalate_pending_at"] = None
            values["res_escalate_pending_at"] = None
            kept_marks = None  # a stopped lead keeps no mark, passed or not
    _sla_values(changes, values, kept_marks or {})
    if changes.kind is not None:
        values["kind"] = changes.kind.value
    if changes.clear_assignee:
        values["assignee"] = None
    elif changes.assignee is not None:
        values["assignee"] = changes.assignee
    if changes.team is not None:
        values["team"] = changes.team
    if changes.priority is not None:
        values["priority"] = changes.priority
    if changes.tags is not None:
        values["tags"] = list(changes.tags)
    if changes.first_response_at is not None:
        values["first_response_at"] = changes.first_response_at
        values["breach_pending_at"] = values["warn_pending_at"] = None
    if changes.clear_resolved_at:
        values["resolved_at"] = None
    elif changes.resolved_at is not None:
        values["resolved_at"] = changes.resolved_at
    if changes.clear_due:
        values["breach_pending_at"] = values["warn_pending_at"] = None
    if changes.first_response_due is not None:
        values["first_response_due"] = changes.first_response_due
        values["breached_at"] = None
        values["breach_pending_at"] = changes.first_response_due
    if changes.warn_due is not None:
        values["warn_due"] = changes.warn_due
        values["warned_at"] = None
        values["warn_pending_at"] = changes.warn_due
    values["updated_at"] = changes.updated_at or datetime.now(UTC)
    for key, value in _json(changes.extra).items():
        # Per-key $set merges atomically with what other writers put there.
        values[f"extra.{key}"] = value

    pending = ("breach_pending_at", "warn_pending_at", "sla_paused_at")
    to_set = {k: v for k, v in values.items() if v is not None or k not in pending}
    to_unset = {k: "" for k in pending if k in values and values[k] is None}
    update: Doc = {"$set": to_set}
    if to_unset:
        update["$unset"] = to_unset
    if changes.pause_sla and "sla_paused_at" not in values:
        # `$min` keeps an earlier pause (a second reply while waiting) and sets an absent one.
        update["$min"] = {"sla_paused_at": changes.updated_at or values["updated_at"]}
    return update


def _sla_values(changes: LeadChanges, values: Doc, kept_marks: Mapping[str, datetime]) -> None:
    """The generalised SLA fields of `changes` (same precedence as the SQLite adapter)."""
    if changes.clear_sla:
        values["breach_pending_at"] = values["warn_pending_at"] = None
        values["sla_target"] = values["escalate_pending_at"] = None
    if changes.escalate_at is not None and changes.escalate_target == "resolution":
        values["res_escalate_pending_at"] = changes.escalate_at
    elif changes.escalate_at is not None:
        values["escalate_pending_at"] = changes.escalate_at
        values["escalate_target"] = changes.escalate_target
    if changes.pause_sla:
        for field in _RESOLUTION_MARKS:
            values[field] = kept_marks.get(field)
    if changes.sla_target is not None:
        values["sla_target"] = changes.sla_target
    if changes.sla_started_at is not None:
        values["sla_started_at"] = changes.sla_started_at
        values["sla_warned_at"] = values["sla_breached_at"] = None
    if changes.restart_resolution:
        values["res_warned_at"] = values["res_breached_at"] = None
    if changes.sla_due is not None:
        values["sla_due"] = values["breach_pending_at"] = changes.sla_due
        values["sla_warn_due"] = values["warn_pending_at"] = changes.sla_warn_due
    if changes.resolution_due is not None:
        values["resolution_due"] = values["res_breach_pending_at"] = changes.resolution_due
        values["resolution_warn_due"] = values["res_warn_pending_at"] = changes.resolution_warn_due
    if changes.clear_sla_paused:
        values["sla_paused_at"] = None
    if changes.clear_resolution:
        values["resolution_due"] = values["resolution_warn_due"] = None
        values["res_breach_pending_at"] = values["res_warn_pending_at"] = None


def _contains(text: str) -> Doc:
    """A substring match for literal text against a `*_folded` field.

    Both sides are folded by Python's str.casefold, so "бойлер" finds "БОЙЛЕР" the same way the
    SQLite adapter does, without relying on the server's regex case rules.
    """
    return {"$regex": re.escape(text.casefold())}


class MongoStore:
    """The Store protocol on one MongoDB database."""

    backend = "mongo"

    def __init__(self, url: str, database: str | None = None) -> None:
        self.url = url
        self._database_name = database
        self._client: AsyncMongoClient[Doc] | None = None
        self._db: AsyncDatabase[Doc] | None = None
        self._transactions = False
        # The last write the server refused (method, message), until that write succeeds again.
        self._write_error: tuple[str, str] | None = None

    @classmethod
    def from_url(cls, url: str) -> MongoStore:
        """`mongodb://host:27017/hub?replicaSet=rs0`: the database is the URL path (default "hub")."""
        return cls(url)

    # --- lifecycle ------------------------------------------------------------------------
    @_translated
    async def open(self) -> None:
        """Connect, learn whether transactions are available, ensure indexes and counters."""
        if self._client is not None:
            return
        # The client is made here, not in from_url: it belongs to the running event loop.
        client: AsyncMongoClient[Doc] = AsyncMongoClient(self.url, tz_aware=True, tzinfo=UTC)
        try:
            db = (
                client[self._database_name]
                if self._database_name
                else client.get_default_database(DEFAULT_DATABASE)
            )
            hello = await client.admin.command("hello")
            # Transactions need a replica set member or a mongos, never a standalone server.
            self._transactions = "setName" in hello or hello.get("msg") == "isdbgrid"
            self._client, self._db = client, db
            await self._ensure_indexes()
            await self._backfill_episode_marks()
            await self._migrate_first_response_marks()
            await self._restore_paused_resolution_marks()
            await self._target_legacy_leads()
            await self._renormalize_phones()
            for name in ("lead", "inbox", "event", "message"):
                await self._ensure_counter(name)
            # The first open of a database without the KPI rollups fills them from its leads.
            await mongo_kpi.ensure_rollups(db)
        except BaseException:
            self._client = self._db = None
            await client.close()
            raise
        if not self._transactions:
            log.warning(
                "MongoDB %s is a standalone server: multi-document writes are not transactional; "
                "run a replica set in production",
                db.name,
            )

    async def _backfill_episode_marks(self) -> None:
        """Once per database: mark the target episodes whose marks fired before the fields existed."""
        key = "storage.episode_marks"
        if await self.get_state(key):
            return
        leads = self._col("leads")
        for mark, claimed, due, pending, condition in _EPISODE_MARKS_BACKFILL:
            # Old-style pending fields are absent when disarmed, resolution ones null.
            await leads.update_many(
                {
                    mark: {"$exists": False},
                    due: {"$type": "date"},
                    pending: {"$not": {"$type": "date"}},
                    "status": {"$in": _ACTIVE},
                    **condition,
                },
                [{"$set": {mark: {"$ifNull": [f"${claimed}", f"${due}"]}}}],
            )
        await self.set_state(key, True)

    async def _renormalize_phones(self) -> None:
        """Once per database: phone identities stored in the old form take today's
        (`renormalized_phone`), so their customer is found again. One whose new value another
        contact has is left as it was and logged, for staff to merge."""
        if await self.get_state(PHONE_RENORMALIZED_KEY):
            return
        identities = self._col("identities")
        old_form = {"kind": "phone", "value": {"$regex": r"^\+[08]"}}
        async for doc in identities.find(old_form).sort("_id", ASCENDING):
            new = renormalized_phone(doc["value"])
            if new is None:
                continue
            owner = await identities.find_one({"kind": "phone", "value": new})
            if owner is None:
                try:
                    await identities.update_one({"_id": doc["_id"]}, {"$set": {"value": new}})
                    continue
                except DuplicateKeyError:
                    # Another process (a customer writing, or its own migration) took it meanwhile.
                    owner = await identities.find_one({"kind": "phone", "value": new})
            if owner is None or owner["_id"] == doc["_id"]:
                continue  # another process's migration rewrote this one meanwhile
            if owner["contact_id"] == doc["contact_id"]:
                await identities.delete_one({"_id": doc["_id"]})
            else:
                log.warning("%s", phone_conflict_line(doc["contact_id"], owner["contact_id"]))
        await self.set_state(PHONE_RENORMALIZED_KEY, True)

    async def _migrate_first_response_marks(self) -> None:
        """Once per database: warned_at / breached_at keep only first-response marks.

        The sla.* events say which target fired; a lead without any (a claim's event can be lost
        in a crash) falls back to its first-response due time. The rollups are rebuilt after
        (mongo_kpi.ROLLUP_VERSION).
        """
        if await self.get_state(_FIRST_RESPONSE_MARKS_KEY):
            return
        leads, events = self._col("leads"), self._col("events")
        marks = (
            ("breached_at", EventType.SLA_BREACHED, "first_response_due"),
            ("warned_at", EventType.SLA_WARNING, "warn_due"),
        )
        query: Doc = {"$or": [{"breached_at": {"$type": "date"}}, {"warned_at": {"$type": "date"}}]}
        async for doc in leads.find(query):
            values: Doc = {}
            for mark, event, due in marks:
                at = doc.get(mark)
                if at is None:
                    continue
                fired = [e async for e in events.find({"lead_number": doc["_id"], "type": event.value})]
                if fired:
                    first = [
                        e["at"]
                        for e in fired
                        if e.get("data", {}).get("target", "first_response") == "first_response"
                    ]
                    values[mark] = max(first) if first else None
                else:
                    due_at, answered = doc.get(due), doc.get("first_response_at")
                    late = due_at is not None and due_at <= at and (answered is None or answered > due_at)
                    values[mark] = at if late else None
            if any(values[k] != doc.get(k) for k in values):
                await leads.update_one({"_id": doc["_id"]}, {"$set": values})
        await self.set_state(_FIRST_RESPONSE_MARKS_KEY, True)

    async def _target_legacy_leads(self) -> None:
        """Once per database: an active lead from before the generalised clock owes its first
        response under first_response_* only; it takes the running target's fields, so the
        queue's owed part (by sla_due) holds it too."""
        if await self.get_state(_LEGACY_TARGET_KEY):
            return
        await self._col("leads").update_many(
            {
                "sla_target": None,
                "first_response_at": None,
                "first_response_due": {"$type": "date"},
                "status": {"$in": _ACTIVE},
            },
            [
                {
                    "$set": {
                        "sla_target": "first_response",
                        "sla_started_at": "$created_at",
                        "sla_due": "$first_response_due",
                        "sla_warn_due": "$warn_due",
                        "sla_warned_at": "$warned_at",
                        "sla_breached_at": "$breached_at",
                    }
                }
            ],
        )
        await self.set_state(_LEGACY_TARGET_KEY, True)

    async def _restore_paused_resolution_marks(self) -> None:
        """Once per database: arm again the resolution marks an old pause unset though due.

        A mark is restored when it fell due while the clock ran (before the pause, if any), is
        not armed, was not claimed in its episode and has no claim event at or after its due
        time. The write matches only while it is still unarmed and unclaimed, so a process
        sweeping meanwhile is not undone."""
        if await self.get_state(_PAUSED_MARKS_KEY):
            return
        leads, events = self._col("leads"), self._col("events")
        for pending, due, mark, event, extra in _PAUSED_MARKS:
            unarmed: Doc = {pending: {"$not": {"$type": "date"}}, mark: None, **extra}
            query: Doc = {
                "status": {"$in": _ACTIVE},
                due: {"$type": "date"},
                **unarmed,
                "$or": [{"sla_paused_at": None}, {"$expr": {"$lte": [f"${due}", "$sla_paused_at"]}}],
            }
            async for doc in leads.find(query, projection={due: 1}):
                claimed = await events.find_one(
                    {
                        "lead_number": doc["_id"],
                        "type": event.value,
                        "data.target": "resolution",
                        "at": {"$gte": doc[due]},
                    }
                )
                if claimed is None:
                    await leads.update_one({"_id": doc["_id"], **unarmed}, {"$set": {pending: doc[due]}})
        await self.set_state(_PAUSED_MARKS_KEY, True)

    async def _ensure_indexes(self) -> None:
        leads = self._col("leads")
        await leads.create_index(
            [("channel", ASCENDING), ("origin_external_id", ASCENDING)], unique=True, name="lead_origin"
        )
        # The sweep reads only leads with a pending mark, earliest first.
        await leads.create_index(
            [("breach_pending_at", ASCENDING)],
            name="lead_breach_pending",
            partialFilterExpression={"breach_pending_at": {"$exists": True}},
        )
        await leads.create_index(
            [("warn_pending_at", ASCENDING)],
            name="lead_warn_pending",
            partialFilterExpression={"warn_pending_at": {"$exists": True}},
        )
        for res in (
            "res_breach_pending_at",
            "res_warn_pending_at",
            "escalate_pending_at",
            "res_escalate_pending_at",
        ):
            await leads.create_index(
                [(res, ASCENDING)], name=f"lead_{res}", partialFilterExpression={res: {"$type": "date"}}
            )
        # Queue views: equality (and $in on status) then newest first, so a page is read in
        # index order (a SORT_MERGE over the statuses) instead of sorting every match.
        await leads.create_index(
            [("contact_id", ASCENDING), ("status", ASCENDING), ("_id", DESCENDING)],
            name="lead_contact_status",
        )
        await leads.create_index(
            [("assignee", ASCENDING), ("status", ASCENDING), ("_id", DESCENDING)], name="lead_assignee_status"
        )
        await leads.create_index([("status", ASCENDING), ("_id", DESCENDING)], name="lead_status_number")
        await leads.create_index([("team", ASCENDING), ("_id", DESCENDING)], name="lead_team_number")
        # The queue in due order (list_leads order="due"): a SORT_MERGE over the statuses,
        # for the owed leads by their running target's due time, for the rest by update time;
        # read from a page's cursor.
        await leads.create_index(
            [("status", ASCENDING), ("sla_due", ASCENDING), ("_id", ASCENDING)],
            name="lead_status_sla_due",
        )
        # The first-response order it replaces: one index less for every lead write.
        if "lead_status_due" in await leads.index_information():
            await leads.drop_index("lead_status_due")
        await leads.create_index(
            [("status", ASCENDING), ("updated_at", ASCENDING), ("_id", ASCENDING)],
            name="lead_status_updated",
        )
        await leads.create_index(
            # A compound key (not _id alone, which the default _id index owns) in number order.
            [("_id", DESCENDING), ("breached_at", ASCENDING)],
            name="lead_breached_number",
            partialFilterExpression={"breached_at": {"$type": "date"}},
        )
        # The breaches' other branch: a response breach of the current episode (next response).
        await leads.create_index(
            [("_id", DESCENDING), ("sla_breached_at", ASCENDING)],
            name="lead_sla_breached_number",
            partialFilterExpression={"sla_breached_at": {"$type": "date"}},
        )

        await self._col("messages").create_index(
            [("channel", ASCENDING), ("external_id", ASCENDING)],
            unique=True,
            name="message_external",
            partialFilterExpression={"external_id": {"$exists": True}},
        )
        await self._col("messages").create_index(
            [("lead_number", ASCENDING), ("seq", ASCENDING)], name="message_lead_seq"
        )
        await self._col("identities").create_index(
            [("kind", ASCENDING), ("value", ASCENDING)], unique=True, name="identity_key"
        )
        await self._col("identities").create_index([("contact_id", ASCENDING)], name="identity_contact")
        await self._col("refs").create_index([("lead_number", ASCENDING)], name="ref_lead")
        await self._col("inbox").create_index(
            [("channel", ASCENDING), ("external_id", ASCENDING)], unique=True, name="inbox_key"
        )
        await self._col("inbox").create_index(
            [("status", ASCENDING), ("_id", ASCENDING)], name="inbox_status"
        )
        await self._col("outbox").create_index(
            [("channel", ASCENDING), ("next_attempt_at", ASCENDING)],
            name="outbox_due",
            partialFilterExpression={"state": DeliveryState.QUEUED.value},
        )
        await self._col("outbox").create_index([("state", ASCENDING)], name="outbox_state")
        await self._col("events").create_index(
            [("lead_number", ASCENDING), ("_id", ASCENDING)], name="event_lead"
        )
        await self._col("events").create_index([("type", ASCENDING), ("_id", ASCENDING)], name="event_type")
        # KPI reports: a period of leads by creation time, grouped in the pipeline.
        await leads.create_index(
            [("created_at", ASCENDING), ("team", ASCENDING), ("assignee", ASCENDING)], name="lead_report"
        )
        # KPI rollups: the key of each `$inc` upsert, unique so two first upserts of a key meet
        # in one document; time first, since a report reads a range of hours/weeks.
        for name, time_field in ((mongo_kpi.HOURLY, "hour"), (mongo_kpi.HIST, "week")):
            await self._col(name).create_index(
                [(time_field, ASCENDING), *((d, ASCENDING) for d in ("team", "assignee", "channel", "kind"))],
                unique=True,
                name=f"{name}_key",
            )

    async def _ensure_counter(self, name: str) -> None:
        # A DuplicateKeyError means another process created it between our match and our
        # insert: the counter exists, which is all this wants.
        with contextlib.suppress(DuplicateKeyError):
            await self._col("counters").update_one({"_id": name}, {"$setOnInsert": {"value": 0}}, upsert=True)

    async def close(self) -> None:
        """Disconnect; safe to call twice."""
        client, self._client, self._db = self._client, None, None
        if client is not None:
            await client.close()

    async def ping(self) -> bool:
        """True when the server answers a ping now."""
        if self._client is None:
            return False
        try:
            # Bounded: /healthz must answer "down" quickly, not after server selection's 30 s.
            with pymongo.timeout(PING_TIMEOUT_SECONDS):
                await self._client.admin.command("ping")
        except PyMongoError:
            return False
        return self._write_error is None

    @contextlib.asynccontextmanager
    async def deferred_commit(self, wait: bool = True) -> AsyncIterator[None]:
        """Every write here is acknowledged durable (majority) when it returns: nothing to defer."""
        yield

    async def sync(self) -> None:
        """Nothing to wait for: every write was durable (majority) when it returned."""

    # --- helpers --------------------------------------------------------------------------
    def _col(self, name: str) -> AsyncCollection[Doc]:
        if self._db is None:
            raise StoreError("the MongoDB store is not open (call open() first)")
        return self._db[name]

    async def _next(self, counter: str, count: int = 1) -> int:
        """The last of `count` new values of a counter (atomic `$inc` on one document)."""
        doc = await self._col("counters").find_one_and_update(
            {"_id": counter},
            {"$inc": {"value": count}},
            upsert=True,
            return_document=ReturnDocument.AFTER,
        )
        assert doc is not None
        return int(doc["value"])

    async def _atomic(self, work: Callable[[AsyncClientSession | None], Awaitable[R]]) -> R:
        """Run `work` in a transaction when the server has them, else as plain writes."""
        if not self._transactions or self._client is None:
            return await work(None)
        async with self._client.start_session() as session:
            # with_transaction retries the whole callback on transient transaction errors.
            return await session.with_transaction(work)

    async def _kpi_follow(
        self, old: LeadFacts | None, new: LeadFacts | None, session: AsyncClientSession | None
    ) -> None:
        """Move a lead's share of the KPI rollups from `old` to `new` (see storage/mongo_kpi.py)."""
        if self._db is None:
            raise StoreError("the MongoDB store is not open (call open() first)")
        await mongo_kpi.apply_delta(self._db, rollup_delta(old, new), session)

    async def _update_lead_doc(
        self,
        match: Doc,
        update: Doc,
        session: AsyncClientSession | None,
        projection: Doc | None = None,
        sort: list[tuple[str, int]] | None = None,
    ) -> Doc | None:
        """One atomic lead update whose pre-image moves the KPI rollups; returns that pre-image.

        The pre-image plus the update's `$set` is exactly what this write changed, whatever
        other processes do to the lead before or after it."""
        before = await self._col("leads").find_one_and_update(
            match,
            update,
            projection=projection,
            sort=sort,
            return_document=ReturnDocument.BEFORE,
            session=session,
        )
        if before is not None:
            await self._kpi_follow(mongo_kpi.facts_of(before), mongo_kpi.facts_after(before, update), session)
        return before

    # --- inbox ----------------------------------------------------------------------------
    @_translated
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
        """Store raw input durably; returns (item, created). A known key returns the old item."""
        inbox = self._col("inbox")
        existing = await inbox.find_one({"channel": channel, "external_id": external_id})
        if existing is not None:
            return _inbox(existing), False
        doc: Doc = {
            "_id": await self._next("inbox"),
            "channel": channel,
            "external_id": external_id,
            "payload": payload,
            "meta": _json(meta or {}),
            "received_at": received_at,
            "status": "pending",
            "reason": "",
            "lead_number": None,
            "attempts": 0,
            "claimed_by": holder,
            "claimed_until": received_at + timedelta(seconds=lease_seconds) if holder else None,
        }
        try:
            await inbox.insert_one(doc)
        except DuplicateKeyError:
            # A concurrent delivery of the same input won; its id is the item (ours is skipped).
            existing = await inbox.find_one({"channel": channel, "external_id": external_id})
            if existing is None:
                raise
            return _inbox(existing), False
        return _inbox(doc), True

    @_translated
    async def inbox_claim(
        self, holder: str, now: datetime, lease_seconds: float, limit: int
    ) -> list[InboxItem]:
        """Claim pending items (oldest first) for processing; a lapsed claim can be taken again."""
        claimed: list[InboxItem] = []
        until = now + timedelta(seconds=lease_seconds)
        for _ in range(max(limit, 0)):
            doc = await self._col("inbox").find_one_and_update(
                {"status": "pending", "$or": [{"claimed_until": None}, {"claimed_until": {"$lt": now}}]},
                {"$set": {"claimed_by": holder, "claimed_until": until}, "$inc": {"attempts": 1}},
                sort=[("_id", ASCENDING)],
                return_document=ReturnDocument.AFTER,
            )
            if doc is None:
                break
            claimed.append(_inbox(doc))
        return claimed

    @_translated
    async def inbox_get(self, item_id: int) -> InboxItem | None:
        """One inbox item by id."""
        doc = await self._col("inbox").find_one({"_id": item_id})
        return _inbox(doc) if doc else None

    @_translated
    async def inbox_find(self, channel: str, external_id: str) -> InboxItem | None:
        """The inbox item stored under (channel, external_id), if any."""
        doc = await self._col("inbox").find_one({"channel": channel, "external_id": external_id})
        return _inbox(doc) if doc else None

    @_translated
    async def inbox_done(self, item_id: int, lead_number: int | None) -> None:
        """Mark an item processed (it produced, or joined, that lead)."""
        await self._col("inbox").update_one(
            {"_id": item_id},
            {
                "$set": {
                    "status": "done",
                    "lead_number": lead_number,
                    "claimed_by": None,
                    "claimed_until": None,
                }
            },
        )

    @_translated
    async def inbox_quarantine(self, item_id: int, reason: str) -> None:
        """Keep an item that cannot be processed, with the reason, for staff to see."""
        await self._col("inbox").update_one(
            {"_id": item_id},
            {"$set": {"status": "quarantined", "reason": reason, "claimed_by": None, "claimed_until": None}},
        )

    @_translated
    async def inbox_requeue(self, item_id: int) -> bool:
        """Put a quarantined item back to pending; False if it was not quarantined."""
        result = await self._col("inbox").update_one(
            {"_id": item_id, "status": "quarantined"},
            {"$set": {"status": "pending", "reason": "", "claimed_until": None}},
        )
        return result.modified_count > 0

    @_translated
    async def inbox_list(
        self, status: str, limit: int = 100, before_id: int | None = None
    ) -> list[InboxItem]:
        """Items in one status, newest first; with `before_id`, those with a smaller id."""
        query: Doc = {"status": status}
        if before_id is not None:
            query["_id"] = {"$lt": before_id}
        cursor = self._col("inbox").find(query).sort("_id", DESCENDING).limit(limit)
        return [_inbox(doc) async for doc in cursor]

    # --- contacts -------------------------------------------------------------------------
    async def _load_contact(self, contact_id: str) -> Contact | None:
        doc = await self._col("contacts").find_one({"_id": contact_id})
        if doc is None:
            return None
        # ObjectIds grow with insertion, so identities come back in the order they were added.
        cursor = self._col("identities").find({"contact_id": contact_id}).sort("_id", ASCENDING)
        identities = [
            Identity(IdentityKind(i["kind"]), i["value"], i.get("display_name", "")) async for i in cursor
        ]
        return Contact(
            id=doc["_id"],
            name=doc["name"],
            language=doc.get("language", ""),
            tags=list(doc.get("tags", [])),
            created_at=_req_utc(doc["created_at"]),
            identities=identities,
        )

    @_translated
    async def find_contact(self, identity: Identity) -> Contact | None:
        """The contact that owns this identity (kind + normalized value), if any."""
        doc = await self._col("identities").find_one({"kind": identity.kind.value, "value": identity.value})
        return await self._load_contact(doc["contact_id"]) if doc else None

    @_translated
    async def find_contact_of(self, identities: Sequence[Identity]) -> Contact | None:
        """The contact of the first of these identities (in order) that has one."""
        if not identities:
            return None
        wanted = [{"kind": i.kind.value, "value": i.value} for i in identities]
        found = {
            (d["kind"], d["value"]): d["contact_id"]
            async for d in self._col("identities").find({"$or": wanted})
        }
        for ident in identities:
            contact_id = found.get((ident.kind.value, ident.value))
            if contact_id is not None:
                return await self._load_contact(contact_id)
        return None

    @_translated
    async def get_contact(self, contact_id: str) -> Contact | None:
        """One contact with all identities."""
        return await self._load_contact(contact_id)

    @_translated
    async def create_contact(self, contact: Contact) -> Contact:
        """Insert a contact with its identities; DuplicateError if an identity is taken."""
        contact_doc: Doc = {
            "_id": contact.id,
            "name": contact.name,
            "name_folded": contact.name.casefold(),
            "language": contact.language,
            "tags": list(contact.tags),
            "created_at": contact.created_at,
        }
        identity_docs = [
            {
                "kind": i.kind.value,
                "value": i.value,
                "value_folded": i.value.casefold(),
                "contact_id": contact.id,
                "display_name": i.display_name,
            }
            for i in contact.identities
        ]

        progress = {"contact": False}

        async def write(session: AsyncClientSession | None) -> None:
            # Contact first: until its identities exist nobody finds it by identity, so a
            # failure half-way leaves nothing visible.
            await self._col("contacts").insert_one(dict(contact_doc), session=session)
            progress["contact"] = session is None
            if identity_docs:
                await self._col("identities").insert_many([dict(d) for d in identity_docs], session=session)

        try:
            await self._atomic(write)
        except (DuplicateKeyError, BulkWriteError) as exc:
            if isinstance(exc, BulkWriteError) and not _is_duplicate(exc):
                raise
            if progress["contact"]:
                # No transaction: undo what this call wrote (the contact id is ours, fresh).
                await self._col("identities").delete_many({"contact_id": contact.id})
                await self._col("contacts").delete_one({"_id": contact.id})
            raise DuplicateError(f"contact {contact.id}: an identity (or the id) is already taken") from exc
        return contact

    @_translated
    async def add_identity(self, contact_id: str, identity: Identity) -> bool:
        """Attach an identity; False if it already belongs to another contact."""
        try:
            await self._col("identities").insert_one(
                {
                    "kind": identity.kind.value,
                    "value": identity.value,
                    "contact_id": contact_id,
                    "display_name": identity.display_name,
                    "value_folded": identity.value.casefold(),
                }
            )
        except DuplicateKeyError:
            owner = await self._col("identities").find_one(
                {"kind": identity.kind.value, "value": identity.value}
            )
            return owner is not None and owner["contact_id"] == contact_id
        return True

    @_translated
    async def merge_contacts(self, keep_id: str, merge_id: str) -> None:
        """Move identities and leads of `merge_id` onto `keep_id` and delete `merge_id`."""
        if keep_id == merge_id:
            return

        async def write(session: AsyncClientSession | None) -> None:
            # Checked in the write itself: merging into an erased contact would move the other
            # customer's identities and leads onto a contact document that no longer exists.
            found = {
                d["_id"]
                async for d in self._col("contacts").find(
                    {"_id": {"$in": [keep_id, merge_id]}}, {"_id": 1}, session=session
                )
            }
            for contact_id in (keep_id, merge_id):
                if contact_id not in found:
                    raise ContactMissing(contact_id)
            # Each step is idempotent: without a transaction a crash part-way is finished by
            # running the merge again (`merge_id` goes last, so the check above still passes).
            await self._col("identities").update_many(
                {"contact_id": merge_id}, {"$set": {"contact_id": keep_id}}, session=session
            )
            await self._col("leads").update_many(
                {"contact_id": merge_id}, {"$set": {"contact_id": keep_id}}, session=session
            )
            await self._col("contacts").delete_one({"_id": merge_id}, session=session)

        await self._atomic(write)

    # --- leads ----------------------------------------------------------------------------
    @_translated
    async def next_lead_number(self) -> int:
        """A new lead number, unique and increasing even under concurrent callers."""
        return await self._next("lead")

    @_translated
    async def create_lead(
        self, lead: Lead, expected_load: tuple[int, int] | None = None
    ) -> tuple[Lead, bool]:
        """Insert a lead; a lead with the same (channel, origin_external_id) is returned instead."""
        if lead.number == 0:
            lead = replace(lead, number=await self._next("lead"))
        routed = lead
        claim = lead.assignee if expected_load is not None else None
        if claim is not None:
            # The load check needs assign_if_load's guard document: stored unrouted first, then
            # claimed with the same compare-and-set as any other assignment (which sets the
            # team). A crash in between leaves a lead that a replay of its input routes.
            lead = replace(lead, assignee=None, team=None)
        doc = _lead_doc(lead)

        async def write(session: AsyncClientSession | None) -> None:
            # Without a transaction the rollups follow just after the insert (a crash between
            # the two leaves them one lead short until `rebuild_kpi_rollups`).
            await self._col("leads").insert_one(dict(doc), session=session)
            await self._kpi_follow(None, mongo_kpi.facts_of(doc), session)

        try:
            await self._atomic(write)
        except DuplicateKeyError as exc:
            existing = await self._col("leads").find_one(
                {"channel": lead.channel, "origin_external_id": lead.origin_external_id}
            )
            if existing is None:
                raise DuplicateError(f"lead number {lead.number} is already taken") from exc
            return _lead(existing), False
        if (
            claim is not None
            and expected_load is not None
            and await self.assign_if_load(
                lead.number, claim, routed.team, expected_load, lead.updated_at, None, lead.priority
            )
        ):
            lead = replace(routed, number=lead.number)
        return lead, True

    @_translated
    async def get_lead(self, number: int) -> Lead | None:
        """One lead by number."""
        doc = await self._col("leads").find_one({"_id": number})
        return _lead(doc) if doc else None

    @_translated
    async def find_lead_by_origin(self, channel: str, external_id: str) -> Lead | None:
        """The lead an inbound (channel, external_id) opened, if any."""
        doc = await self._col("leads").find_one({"channel": channel, "origin_external_id": external_id})
        return _lead(doc) if doc else None

    @_translated
    async def find_active_lead(self, contact_id: str, channel: str | None) -> Lead | None:
        """The contact's most recent active lead (on that channel when given)."""
        query: Doc = {"contact_id": contact_id, "status": {"$in": _ACTIVE}}
        if channel is not None:
            query["channel"] = channel
        doc = await self._col("leads").find_one(query, sort=[("_id", DESCENDING)])
        return _lead(doc) if doc else None

    @_translated
    async def update_lead(
        self, number: int, changes: LeadChanges, expected: Lead | None = None
    ) -> Lead | None:
        """Apply changes and return the updated lead (None if there is no such lead).

        With `expected`, only while the lead's SLA state is still `expected`'s (None if not)."""
        state = sla_state_match(expected)
        if not changes.pause_sla and changes.first_response_at is None:
            doc = await self._apply_lead_update({"_id": number, **state}, lead_update(changes))
            return _lead(doc) if doc else None
        # A pause keeps the resolution marks already passed (see marks_kept_by_pause), and a
        # first response keeps an earlier one already stored (two replies that both read the
        # lead unanswered: the later write won). What to keep is read first, and the write
        # matches only while it is still as read, so a sweep claiming a mark or another reply
        # meanwhile is never undone. Each changes rarely, so a retry is rare and the loop short.
        paused_at = changes.updated_at or datetime.now(UTC)
        if changes.pause_sla:
            changes = replace(changes, updated_at=paused_at)
        fields = [*_RESOLUTION_MARKS, "first_response_at"]
        for _ in range(_READ_WRITE_ATTEMPTS):
            # The SLA state is part of the read's filter: a lead no longer as expected is left
            # alone (None), while a field that moved only makes the loop read again.
            current = await self._col("leads").find_one(
                {"_id": number, **state}, projection=dict.fromkeys(fields, 1)
            )
            if current is None:
                return None
            match: Doc = {"_id": number, **state}
            kept: dict[str, datetime] | None = None
            applied = changes
            if changes.pause_sla:
                match.update({f: current.get(f) for f in _RESOLUTION_MARKS})
                kept = marks_kept_by_pause(current, paused_at)
            if changes.first_response_at is not None:
                answered = current.get("first_response_at")
                match["first_response_at"] = answered
                applied = replace(changes, first_response_at=earliest(answered, changes.first_response_at))
            doc = await self._apply_lead_update(match, lead_update(applied, kept))
            if doc is not None:
                return _lead(doc)
        raise StoreError(f"lead {number}: its SLA marks or first response kept changing while updating it")

    async def _apply_lead_update(self, match: Doc, update: Doc) -> Doc | None:
        """One atomic update of the lead `match` selects; the lead after it (None: no match)."""
        if not mongo_kpi.touches_kpi(update):
            doc: Doc | None = await self._col("leads").find_one_and_update(
                match, update, return_document=ReturnDocument.AFTER
            )
            return doc

        async def write(session: AsyncClientSession | None) -> Doc | None:
            if await self._update_lead_doc(match, update, session, mongo_kpi.PROJECTION) is None:
                return None
            # In a transaction this is the lead as this write left it; on a standalone server
            # a concurrent writer's later change may show too.
            return await self._col("leads").find_one({"_id": match["_id"]}, session=session)

        result: Doc | None = await self._atomic(write)
        return result

    async def _lead_query(self, query: LeadQuery) -> Doc:
        conditions: list[Doc] = []
        if query.statuses:
            conditions.append({"status": {"$in": [s.value for s in query.statuses]}})
        if query.kind is not None:
            conditions.append({"kind": query.kind.value})
        if query.unassigned:
            conditions.append({"assignee": None})
        elif query.assignee is not None and query.or_unassigned:
            conditions.append({"assignee": {"$in": [query.assignee, None]}})
        elif query.assignee is not None:
            conditions.append({"assignee": query.assignee})
        if query.team is not None:
            conditions.append({"team": query.team})
        if query.channel is not None:
            conditions.append({"channel": query.channel})
        if query.breached is not None:
            # Any response breach: the first response's (kept for the KPI) or the current
            # episode's (how a next-response breach is on record). `$type: date` is each
            # breached index's own filter, so the planner can use them.
            conditions.append(
                {"$or": [{"breached_at": {"$type": "date"}}, {"sla_breached_at": {"$type": "date"}}]}
                if query.breached
                else {"breached_at": None, "sla_breached_at": None}
            )
        if query.contact_id is not None:
            conditions.append({"contact_id": query.contact_id})
        if query.text:
            pattern = _contains(query.text)
            ids: set[str] = set()
            names = (
                self._col("contacts")
                .find({"name_folded": pattern}, {"_id": 1})
                .limit(TEXT_MATCH_CONTACTS_CAP)
            )
            ids.update([d["_id"] async for d in names])
            values = (
                self._col("identities")
                .find({"value_folded": pattern}, {"contact_id": 1})
                .limit(TEXT_MATCH_CONTACTS_CAP)
            )
            ids.update([d["contact_id"] async for d in values])
            conditions.append({"$or": [{"subject_folded": pattern}, {"contact_id": {"$in": sorted(ids)}}]})
        if not conditions:
            return {}
        return conditions[0] if len(conditions) == 1 else {"$and": conditions}

    @_translated
    async def list_leads(self, query: LeadQuery, limit: int, cursor: str | None = None) -> Page[Lead]:
        """Leads matching the query in `query.order` (newest first by default), keyset pages."""
        if query.order not in LEAD_ORDERS:
            raise ValueError(f"unknown lead order {query.order!r}; use one of {LEAD_ORDERS}")
        at = LeadCursor.parse(cursor, query.order) if cursor is not None else None
        if query.order == "due":
            found = await self._leads_by_due(query, limit, at)
        else:
            mongo_query = await self._lead_query(query)
            backward = at is not None and at.backward
            if at is not None:
                bound: Doc = {"_id": {"$gt" if backward else "$lt": at.number}}
                mongo_query = {"$and": [mongo_query, bound]} if mongo_query else bound
            docs = (
                self._col("leads")
                .find(mongo_query)
                .sort("_id", ASCENDING if backward else DESCENDING)
                .limit(limit + 1)
            )
            found = [(_lead(d), LeadCursor(backward=False, number=d["_id"])) async for d in docs]
        page = lead_page(query.order, found, limit, at)
        return page if page is not None else await self.list_leads(query, limit)

    async def _leads_by_due(
        self, query: LeadQuery, limit: int, at: LeadCursor | None
    ) -> list[tuple[Lead, LeadCursor]]:
        """Up to `limit + 1` leads in due order from `at` (backward: nearest first), as in
        SQLite: the owed part along lead_status_sla_due, then the rest along lead_status_updated,
        each a SORT_MERGE over the statuses asked for, stopped at the page's end."""
        base = await self._lead_query(query)
        backward = at is not None and at.backward
        parts: tuple[str, ...] = ("rest", "owed") if backward else ("owed", "rest")
        if at is not None:
            parts = parts[parts.index("owed" if at.owed else "rest") :]
        statuses = sorted(s.value for s in (query.statuses if query.statuses is not None else LeadStatus))
        found: list[tuple[Lead, LeadCursor]] = []
        for part in parts:
            want = limit + 1 - len(found)
            if want <= 0:
                break
            if part == "owed":
                # Only an active lead is still owed a response (first or next, by its running
                # target's due time): a resolved or closed one sorts with the rest, or it would
                # crowd the urgent ones out.
                asked = [s for s in statuses if s in _ACTIVE]
                if not asked:
                    continue
                field, ascending = "sla_due", not backward
                cond: Doc = {
                    "status": {"$in": asked},
                    "sla_target": {"$type": "string"},
                    "sla_due": {"$type": "date"},
                }
            else:
                field, ascending = "updated_at", backward
                cond = {
                    # Every status named, so the planner merges one index range per status.
                    "status": {"$in": statuses},
                    "$or": [
                        {"status": {"$nin": _ACTIVE}},
                        {"sla_target": None},
                        {"sla_due": None},
                    ],
                }
            conditions = [c for c in (base, cond) if c]
            bound = at if at is not None and at.owed == (part == "owed") else None
            if bound is not None:
                key = _cursor_time(bound)
                after, reach = ("$gt", "$gte") if ascending else ("$lt", "$lte")
                conditions.append({field: {reach: key}})  # the index range; the $or trims its edge
                conditions.append(
                    {"$or": [{field: {after: key}}, {field: key, "_id": {after: bound.number}}]}
                )
            direction = ASCENDING if ascending else DESCENDING
            docs = (
                self._col("leads")
                .find({"$and": conditions})
                .sort([(field, direction), ("_id", direction)])
                .limit(want)
            )
            found += [
                (_lead(d), LeadCursor(False, d["_id"], part == "owed", _cursor_ms(d[field])))
                async for d in docs
            ]
        return found

    @_translated
    async def count_leads(self, query: LeadQuery) -> int:
        """How many leads match the query (its order aside)."""
        return int(await self._col("leads").count_documents(await self._lead_query(query)))

    @_translated
    async def count_active_by_assignee(self, manager_ids: list[str]) -> dict[str, int]:
        """How many active leads each of these managers holds (0 included)."""
        counts = dict.fromkeys(manager_ids, 0)
        if not manager_ids:
            return counts
        pipeline: list[Doc] = [
            {"$match": {"assignee": {"$in": manager_ids}, "status": {"$in": _ACTIVE}}},
            {"$group": {"_id": "$assignee", "n": {"$sum": 1}}},
        ]
        async for row in await self._col("leads").aggregate(pipeline):
            counts[row["_id"]] = int(row["n"])
        return counts

    async def _claim_marks(
        self, pending: str, mark: str, event: EventType, now: datetime, limit: int
    ) -> list[Lead]:
        claimed: list[Lead] = []
        for _ in range(max(limit, 0)):
            # The pending mark is in the filter and removed by the same update: of any number of
            # processes racing, exactly one matches each lead. `$exists` repeats the partial
            # index's filter so the planner may use it (the sweep stays O(due leads)).
            doc = await self._claim_one(
                {pending: {"$exists": True, "$lte": now}}, pending, (mark,), now, after=True
            )
            if doc is None:
                break
            lead = _lead(doc)
            claimed.append(lead)
            # Window: a crash between the claim above and this insert leaves the lead marked
            # without its sla.* event (the mark, which decides "once", is never doubled).
            await self._insert_event(
                Event(
                    event.value,
                    now,
                    lead.number,
                    {
                        "due": (lead.first_response_due or now).isoformat(),
                        "assignee": lead.assignee,
                        "team": lead.team,
                    },
                )
            )
        return sorted(claimed, key=lambda lead: lead.number)

    async def _claim_one(
        self, match: Doc, pending: str, marks: tuple[str, ...], now: datetime, after: bool
    ) -> Doc | None:
        """Set `marks` on the earliest lead matching `match` and drop its `pending` field; returns
        the lead as it is after (`after`) or as it was before the claim.

        A breach mark counts in the KPI rollups, so that claim also moves the lead's share,
        from the pre-image of the claim, in the same transaction when there is one.
        """
        update: Doc = {"$set": dict.fromkeys(marks, now), "$unset": {pending: ""}}
        if not mongo_kpi.touches_kpi(update):
            return await self._col("leads").find_one_and_update(
                match,
                update,
                sort=[(pending, ASCENDING)],
                return_document=ReturnDocument.AFTER if after else ReturnDocument.BEFORE,
            )

        async def write(session: AsyncClientSession | None) -> Doc | None:
            return await self._update_lead_doc(match, update, session, sort=[(pending, ASCENDING)])

        before = await self._atomic(write)
        if before is None or not after:
            return before
        # What AFTER would have returned: the mark as BSON stores it, the pending field gone.
        doc = {k: v for k, v in before.items() if k != pending}
        doc.update(dict.fromkeys(marks, mongo_kpi.bson_datetime(now)))
        return doc

    @_translated
    async def claim_due_warnings(self, now: datetime, limit: int) -> list[Lead]:
        """Atomically mark leads whose warning time passed (and record sla.warning); once each."""
        return await self._claim_marks("warn_pending_at", "warned_at", EventType.SLA_WARNING, now, limit)

    @_translated
    async def claim_due_breaches(self, now: datetime, limit: int) -> list[Lead]:
        """Atomically mark leads whose due time passed (and record sla.breached); once each."""
        return await self._claim_marks("breach_pending_at", "breached_at", EventType.SLA_BREACHED, now, limit)

    @_translated
    async def claim_sla_marks(self, now: datetime, limit: int) -> list[SlaClaim]:
        """Atomically claim warning and breach marks due by `now` on every target; once each."""
        claims: list[SlaClaim] = []
        for pending, condition, marks, level, event in _MARKS:
            # Old-style marks are absent when disarmed, resolution marks null: each filter
            # repeats its partial index's condition so the planner may use it.
            armed: Doc = (
                {"$exists": True}
                if pending in ("breach_pending_at", "warn_pending_at")
                else {"$type": "date"}
            )
            while len(claims) < limit:
                # The mark is in the filter and removed by the same update: of any number of
                # racing processes exactly one matches. BEFORE returns the due time it had.
                doc = await self._claim_one(
                    {pending: {**armed, "$lte": now}, **condition}, pending, marks, now, after=False
                )
                if doc is None:
                    break
                lead = _lead(doc)
                due = _req_utc(doc[pending])
                if pending == "escalate_pending_at":
                    target = doc.get("escalate_target") or "first_response"
                elif pending.startswith("res_"):
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
                claim = SlaClaim(lead=lead, target=target, level=level, due=due)
                claims.append(claim)
                # Window: a crash between the claim and this insert loses the event, never
                # doubles the alert (the same trade-off as claim_due_breaches).
                await self._insert_event(
                    Event(
                        event.value,
                        now,
                        lead.number,
                        {
                            "target": target,
                            "level": level,
                            "due": due.isoformat(),
                            "assignee": lead.assignee,
                            "team": lead.team,
                        },
                    )
                )
        return claims

    @_translated
    async def load_by_assignee(self, manager_ids: list[str]) -> dict[str, tuple[int, int]]:
        """(active leads, priority-weighted load = sum of 1 + priority) for each manager."""
        loads = dict.fromkeys(manager_ids, (0, 0))
        if not manager_ids:
            return loads
        pipeline: list[Doc] = [
            {"$match": {"assignee": {"$in": manager_ids}, "status": {"$in": _ACTIVE}}},
            {
                "$group": {
                    "_id": "$assignee",
                    "n": {"$sum": 1},
                    "w": {"$sum": {"$add": [1, {"$max": [{"$ifNull": ["$priority", 0]}, 0]}]}},
                }
            },
        ]
        async for row in await self._col("leads").aggregate(pipeline):
            loads[row["_id"]] = (int(row["n"]), int(row["w"]))
        return loads

    @_translated
    async def routing_snapshot(
        self, manager_ids: list[str], state_keys: list[str], turn_key: str
    ) -> RoutingSnapshot:
        """`load_by_assignee`, `get_states` and `incr_state(turn_key)` together."""
        loads, states, turn = await asyncio.gather(
            self.load_by_assignee(manager_ids), self.get_states(state_keys), self.incr_state(turn_key)
        )
        return RoutingSnapshot(loads, states, turn)

    @_translated
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
        """Assign only if the manager's load still equals `expected` (compare-and-set)."""

        async def write(session: AsyncClientSession | None) -> bool:
            # Every assignment to this manager first writes one guard document, so two racing
            # transactions conflict there (one retries and re-reads) instead of both reading
            # the same load under snapshot isolation. A standalone server has no transactions:
            # there the check and the write are not atomic across processes.
            await self._col("kv").update_one(
                {"_id": f"routing.guard.{assignee}"}, {"$inc": {"value": 1}}, upsert=True, session=session
            )
            pipeline: list[Doc] = [
                {"$match": {"assignee": assignee, "status": {"$in": _ACTIVE}}},
                {
                    "$group": {
                        "_id": None,
                        "n": {"$sum": 1},
                        "w": {"$sum": {"$add": [1, {"$max": [{"$ifNull": ["$priority", 0]}, 0]}]}},
                    }
                },
            ]
            current = (0, 0)
            async for row in await self._col("leads").aggregate(pipeline, session=session):
                current = (int(row["n"]), int(row["w"]))
            if current != tuple(expected):
                return False
            update: Doc = {"assignee": assignee, "updated_at": now}
            if team is not None:
                update["team"] = team
            if priority is not None:
                update["priority"] = priority
            match = {"_id": number, "assignee": previous}
            return (
                await self._update_lead_doc(match, {"$set": update}, session, mongo_kpi.PROJECTION)
                is not None
            )

        return await self._atomic(write)

    @_translated
    async def oldest_unassigned(self, limit: int) -> list[Lead]:
        """Active leads without an assignee, oldest first."""
        found = self._col("leads").find({"assignee": None, "status": {"$in": _ACTIVE}}).sort("_id", ASCENDING)
        return [_lead(doc) async for doc in found.limit(limit)]

    @_translated
    async def last_assignee_of_contact(self, contact_id: str, exclude_number: int) -> str | None:
        """Who was assigned the contact's most recent other lead."""
        doc = await self._col("leads").find_one(
            {"contact_id": contact_id, "_id": {"$ne": exclude_number}, "assignee": {"$type": "string"}},
            sort=[("_id", DESCENDING)],
        )
        return str(doc["assignee"]) if doc else None

    @_translated
    async def active_leads_of(self, assignee: str, limit: int) -> list[Lead]:
        """A manager's active leads, oldest first."""
        found = (
            self._col("leads").find({"assignee": assignee, "status": {"$in": _ACTIVE}}).sort("_id", ASCENDING)
        )
        return [_lead(doc) async for doc in found.limit(limit)]

    # --- messages -------------------------------------------------------------------------
    @_translated
    async def add_message(self, message: Message) -> tuple[Message, bool]:
        """Append a message; an inbound with a known (channel, external_id) returns the old one."""
        if message.external_id is not None:
            known = await self._find_message(message.channel, message.external_id)
            if known is not None:
                return known, False
        doc = _message_doc(message, await self._next("message"))
        try:
            await self._col("messages").insert_one(doc)
        except DuplicateKeyError as exc:
            known = (
                await self._find_message(message.channel, message.external_id)
                if message.external_id is not None
                else None
            )
            if known is None:
                raise DuplicateError(f"message {message.id} is already stored") from exc
            return known, False
        return message, True

    async def _find_message(self, channel: str, external_id: str) -> Message | None:
        doc = await self._col("messages").find_one(
            {"channel": channel, "external_id": {"$exists": True, "$eq": external_id}}
        )
        return _message(doc) if doc else None

    @_translated
    async def find_message(self, channel: str, external_id: str) -> Message | None:
        """A message by its channel's external id."""
        return await self._find_message(channel, external_id)

    @_translated
    async def get_message(self, message_id: str) -> Message | None:
        """A message by id."""
        doc = await self._col("messages").find_one({"_id": message_id})
        return _message(doc) if doc else None

    @_translated
    async def list_messages(self, lead_number: int) -> list[Message]:
        """The whole conversation of a lead in order."""
        cursor = self._col("messages").find({"lead_number": lead_number}).sort("seq", ASCENDING)
        return [_message(doc) async for doc in cursor]

    @_translated
    async def add_refs(self, lead_number: int, refs: list[str]) -> None:
        """Remember ids (email Message-IDs, ...) that later replies may point at."""
        if not refs:
            return
        # $max with upsert: a new ref takes this lead, a known one keeps the most recent lead.
        await self._col("refs").bulk_write(
            [
                UpdateOne({"_id": ref}, {"$max": {"lead_number": lead_number}}, upsert=True)
                for ref in set(refs)
            ],
            ordered=False,
        )

    @_translated
    async def find_lead_by_refs(self, refs: list[str]) -> int | None:
        """The lead any of these ids belongs to (most recent lead wins)."""
        if not refs:
            return None
        doc = await self._col("refs").find_one(
            {"_id": {"$in": list(refs)}}, sort=[("lead_number", DESCENDING)]
        )
        return int(doc["lead_number"]) if doc else None

    # --- outbox ---------------------------------------------------------------------------
    @_translated
    async def add_outbound(self, message: Message, item: OutboxItem | None) -> None:
        """Record an outbound message and its delivery row in one atomic write."""
        message_doc = _message_doc(message, await self._next("message"))
        row: Doc | None = None
        if item is not None:
            row = {
                "_id": item.id,
                "message_id": item.message_id,
                "lead_number": item.lead_number,
                "channel": item.channel,
                "payload": _json(item.payload),
                "state": DeliveryState.QUEUED.value,
                "attempts": 0,
                "next_attempt_at": item.next_attempt_at or item.created_at,
                "last_error": "",
                "claimed_by": None,
                "claimed_until": None,
                "sent_at": None,
                "external_ref": "",
                "created_at": item.created_at,
            }

        progress = {"row": False}

        async def write(session: AsyncClientSession | None) -> None:
            # Without a transaction: row first, then message. A crash between them leaves a
            # row that is still delivered (the customer gets the reply, the conversation
            # lacks it); the reverse order could leave a "queued" reply nobody ever sends.
            if row is not None:
                await self._col("outbox").insert_one(dict(row), session=session)
                progress["row"] = session is None
            await self._col("messages").insert_one(dict(message_doc), session=session)

        try:
            await self._atomic(write)
        except DuplicateKeyError as exc:
            if row is not None and progress["row"]:
                # The message was refused after our fresh row went in: take the row back.
                await self._col("outbox").delete_one({"_id": row["_id"], "message_id": row["message_id"]})
            raise DuplicateError(f"outbox {item.id if item else '-'} / message {message.id}: {exc}") from exc

    @_translated
    async def outbox_claim(
        self, channels: list[str], holder: str, now: datetime, lease_seconds: float, limit: int
    ) -> list[OutboxItem]:
        """Claim due queued rows of these channels; a row is held by one sender at a time."""
        if not channels:
            return []
        until = now + timedelta(seconds=lease_seconds)
        claimed: list[OutboxItem] = []
        for _ in range(max(limit, 0)):
            doc = await self._col("outbox").find_one_and_update(
                {
                    "state": DeliveryState.QUEUED.value,
                    "channel": {"$in": list(channels)},
                    "next_attempt_at": {"$lte": now},
                    "$or": [{"claimed_until": None}, {"claimed_until": {"$lt": now}}],
                },
                {"$set": {"claimed_by": holder, "claimed_until": until}, "$inc": {"attempts": 1}},
                sort=[("next_attempt_at", ASCENDING)],
                return_document=ReturnDocument.AFTER,
            )
            if doc is None:
                break
            claimed.append(_outbox(doc))
        return claimed

    async def _finish_row(self, item_id: str, row_set: Doc, delivery: DeliveryState) -> None:
        async def write(session: AsyncClientSession | None) -> None:
            # Without a transaction the row is the truth: it is written first, and a message
            # left behind shows the older state until the row is finished again.
            row = await self._col("outbox").find_one_and_update(
                {"_id": item_id}, {"$set": row_set}, session=session
            )
            if row is not None:
                await self._col("messages").update_one(
                    {"_id": row["message_id"]}, {"$set": {"delivery": delivery.value}}, session=session
                )

        await self._atomic(write)

    @_translated
    async def outbox_sent(self, item_id: str, now: datetime, external_ref: str) -> None:
        """The row was delivered; its message is marked sent."""
        await self._finish_row(
            item_id,
            {
                "state": DeliveryState.SENT.value,
                "sent_at": now,
                "external_ref": external_ref,
                "claimed_until": None,
                "last_error": "",
            },
            DeliveryState.SENT,
        )

    @_translated
    async def outbox_retry(self, item_id: str, next_attempt_at: datetime, error: str) -> None:
        """A transient failure: try again at `next_attempt_at`."""
        await self._col("outbox").update_one(
            {"_id": item_id},
            {"$set": {"next_attempt_at": next_attempt_at, "last_error": error[:2000], "claimed_until": None}},
        )

    @_translated
    async def outbox_failed(self, item_id: str, error: str) -> None:
        """A permanent failure: give up on this row and mark its message failed."""
        await self._finish_row(
            item_id,
            {"state": DeliveryState.FAILED.value, "last_error": error[:2000], "claimed_until": None},
            DeliveryState.FAILED,
        )

    @_translated
    async def outbox_get(self, item_id: str) -> OutboxItem | None:
        """One outbox row."""
        doc = await self._col("outbox").find_one({"_id": item_id})
        return _outbox(doc) if doc else None

    @_translated
    async def outbox_counts(self) -> dict[str, int]:
        """Rows per state (queued, sent, failed), for health and metrics."""
        counts = {state.value: 0 for state in DeliveryState}
        async for row in await self._col("outbox").aggregate(
            [{"$group": {"_id": "$state", "n": {"$sum": 1}}}]
        ):
            counts[row["_id"]] = int(row["n"])
        return counts

    # --- events, leases, state ------------------------------------------------------------
    async def _insert_event(self, event: Event) -> Event:
        stored = replace(event, id=await self._next("event"))
        await self._col("events").insert_one(
            {
                "_id": stored.id,
                "lead_number": stored.lead_number,
                "type": stored.type,
                "at": stored.at,
                "data": _json(stored.data),
            }
        )
        return stored

    @_translated
    async def append_event(self, event: Event) -> Event:
        """Append to the audit log; returns the event with its id."""
        return await self._insert_event(event)

    @_translated
    async def append_events(self, events: Sequence[Event]) -> list[Event]:
        """Append several events in order as one write; returns them with their ids."""
        return [await self._insert_event(event) for event in events]

    @_translated
    async def list_events(
        self,
        lead_number: int | None = None,
        types: list[str] | None = None,
        limit: int = 1000,
        after_id: int | None = None,
    ) -> list[Event]:
        """Events oldest first, of one lead and/or some types (with `after_id`: id above it)."""
        query: Doc = {}
        if after_id is not None:
            query["_id"] = {"$gt": after_id}
        if lead_number is not None:
            query["lead_number"] = lead_number
        if types:
            query["type"] = {"$in": list(types)}
        cursor = self._col("events").find(query).sort("_id", ASCENDING).limit(limit)
        return [_event(doc) async for doc in cursor]

    @_translated
    async def acquire_lease(self, name: str, holder: str, now: datetime, ttl_seconds: float) -> bool:
        """Take or renew a named lease; True while `holder` has it."""
        try:
            # Matches only when the lease is ours or has expired; when someone else holds it,
            # the upsert tries to insert a second document with the same name and fails.
            await self._col("leases").update_one(
                {"_id": name, "$or": [{"holder": holder}, {"expires_at": {"$lt": now}}]},
                {"$set": {"holder": holder, "expires_at": now + timedelta(seconds=ttl_seconds)}},
                upsert=True,
            )
        except DuplicateKeyError:
            return False
        return True

    @_translated
    async def release_lease(self, name: str, holder: str) -> None:
        """Give a lease up, if held by `holder`."""
        await self._col("leases").delete_one({"_id": name, "holder": holder})

    @_translated
    async def get_state(self, key: str) -> Any:
        """A small JSON value by key (round-robin cursors, availability, channel offsets)."""
        doc = await self._col("kv").find_one({"_id": key})
        return doc["value"] if doc else None

    @_translated
    async def get_states(self, keys: Sequence[str]) -> dict[str, Any]:
        """Several small values in one read; a missing key maps to None."""
        values: dict[str, Any] = dict.fromkeys(keys)
        async for doc in self._col("kv").find({"_id": {"$in": list(keys)}}):
            values[doc["_id"]] = doc["value"]
        return values

    @_translated
    async def set_state(self, key: str, value: Any) -> None:
        """Store a small JSON value."""
        await self._col("kv").update_one({"_id": key}, {"$set": {"value": _json(value)}}, upsert=True)

    @_translated
    async def incr_state(self, key: str) -> int:
        """Atomically add one to an integer state value and return the new value."""
        doc = await self._col("kv").find_one_and_update(
            {"_id": key}, {"$inc": {"value": 1}}, upsert=True, return_document=ReturnDocument.AFTER
        )
        assert doc is not None
        return int(doc["value"])

    # --- dashboard: reports, erasure, small aggregates --------------------------------------
    @staticmethod
    def _kpi_match(query: KpiQuery) -> Doc:
        match: Doc = {"created_at": {"$gte": query.start, "$lt": query.end}}
        for field, value in (
            ("team", query.team),
            ("assignee", query.assignee),
            ("channel", query.channel),
            ("kind", query.kind.value if query.kind else None),
        ):
            if value is not None:
                match[field] = value
        return match

    @staticmethod
    def _kpi_key(query: KpiQuery) -> Any:
        if query.group_by is None:
            return {"$literal": None}
        if query.group_by == "day":
            # Local days in the zone's own calendar, DST included.
            return {
                "$dateToString": {"format": "%Y-%m-%d", "date": "$created_at", "timezone": query.day_zone}
            }
        if query.group_by in KPI_GROUPS:
            return f"${query.group_by}"
        raise ValueError(f"cannot group a KPI report by {query.group_by!r}: use one of {KPI_GROUPS}")

    @_translated
    async def kpi_rows(self, query: KpiQuery) -> list[KpiRow]:
        """KPI figures of leads created in the period, one row per group (an aggregation pipeline)."""

        def seconds(field: str) -> Doc:
            return {
                "$cond": [
                    mongo_kpi.present(field),
                    {"$divide": [{"$subtract": [f"${field}", "$created_at"]}, 1000]},
                    None,
                ]
            }

        def flag(condition: Doc) -> Doc:
            return {"$cond": [condition, 1, 0]}

        pipeline: list[Doc] = [
            {"$match": self._kpi_match(query)},
            {
                "$project": {
                    "g": self._kpi_key(query),
                    "f": seconds("first_response_at"),
                    "r": seconds("resolved_at"),
                    **mongo_kpi.outcome_flags(),
                }
            },
            {
                "$group": {
                    "_id": "$g",
                    "received": {"$sum": 1},
                    "responded": {"$sum": flag({"$ne": ["$f", None]})},
                    "within": {"$sum": "$ok"},
                    "breached": {"$sum": "$br"},
                    "breached_answered": {"$sum": "$bra"},
                    "resolved": {"$sum": flag({"$ne": ["$r", None]})},
                    "frt_mean": {"$avg": "$f"},
                    "rt_mean": {"$avg": "$r"},
                }
            },
            {"$sort": {"_id": 1}},
        ]
        groups = [row async for row in await self._col("leads").aggregate(pipeline, allowDiskUse=True)]
        return [await self._kpi_row(query, row) for row in groups]

    async def _kpi_row(self, query: KpiQuery, row: Doc) -> KpiRow:
        """One `$group` result as a KpiRow, with exact percentiles (none for per-day rows)."""
        key = row["_id"]
        frt: dict[float, float] = {}
        resolution: dict[float, float] = {}
        if query.group_by != "day":
            if row["responded"]:
                frt = await self._kpi_percentiles(
                    query, key, "first_response_at", row["responded"], (0.5, 0.9)
                )
            if row["resolved"]:
                resolution = await self._kpi_percentiles(query, key, "resolved_at", row["resolved"], (0.5,))
        return KpiRow(
            group=None if key is None else str(key),
            received=int(row["received"]),
            responded=int(row["responded"]),
            within_target=int(row["within"]),
            breached=int(row["breached"]),
            resolved=int(row["resolved"]),
            frt_mean=row["frt_mean"],
            frt_median=frt.get(0.5),
            frt_p90=frt.get(0.9),
            resolution_mean=row["rt_mean"],
            resolution_median=resolution.get(0.5),
            breached_answered=int(row["breached_answered"]),
        )

    @_translated
    async def kpi_breakdowns(
        self, query: KpiQuery, groupings: tuple[str | None, ...]
    ) -> dict[str | None, list[KpiRow]]:
        """`kpi_rows` for several groupings: exact up to `_KPI_SORT_LIMIT` leads, else from the rollups."""
        check_groupings(groupings)
        if self._db is None:
            raise StoreError("the MongoDB store is not open (call open() first)")
        # Only "more than the limit or not" matters: the count stops there.
        size = await self._col("leads").count_documents(
            mongo_kpi.period_match(query), limit=_KPI_SORT_LIMIT + 1
        )
        source = mongo_kpi.MongoSource(self._db)
        if size <= _KPI_SORT_LIMIT:
            return await mongo_kpi.exact_breakdowns(source, query, groupings)
        if not await mongo_kpi.rollups_ready(self._db):
            log.warning(
                "KPI rollups are not ready (being filled, or a fill died: rebuild_kpi_rollups); "
                "a report over %d+ leads reads every lead",
                size,
            )
            return await mongo_kpi.exact_breakdowns(source, query, groupings)
        return await mongo_kpi.rollup_breakdowns(source, query, groupings)

    @_translated
    async def rebuild_kpi_rollups(self) -> int:
        """Refill the KPI rollups from the leads (repair; run while no hub writes); returns leads read."""
        if self._db is None:
            raise StoreError("the MongoDB store is not open (call open() first)")
        return await mongo_kpi.rebuild(self._db)

    async def _kpi_percentiles(
        self, query: KpiQuery, key: Any, field: str, count: int, fractions: tuple[float, ...]
    ) -> dict[float, float]:
        """Exact percentiles of one group: sorted on the server, only the ranks around each come back."""
        match = self._kpi_match(query)
        if query.group_by is not None:
            match[query.group_by] = key
        match[field] = {"$type": "date"}
        ranks: set[int] = set()
        for fraction in fractions:
            low = int((count - 1) * fraction)
            ranks.update({low, min(low + 1, count - 1)})
        values: dict[int, float] = {}
        for rank in sorted(ranks):
            pipeline: list[Doc] = [
                {"$match": match},
                {"$project": {"v": {"$divide": [{"$subtract": [f"${field}", "$created_at"]}, 1000]}}},
                {"$sort": {"v": 1}},
                {"$skip": rank},
                {"$limit": 1},
            ]
            async for row in await self._col("leads").aggregate(pipeline, allowDiskUse=True):
                values[rank] = float(row["v"])
        result: dict[float, float] = {}
        for fraction in fractions:
            h = (count - 1) * fraction
            low = int(h)
            if low not in values:
                continue
            value = values[low]
            if low + 1 < count and low + 1 in values:
                value += (h - low) * (values[low + 1] - value)
            result[fraction] = value
        return result

    @_translated
    async def erase_contact(self, contact_id: str) -> list[int]:
        """Delete a contact's personal data; its leads stay as anonymous numbers."""
        numbers = sorted(
            [int(d["_id"]) async for d in self._col("leads").find({"contact_id": contact_id}, {"_id": 1})]
        )

        async def write(session: AsyncClientSession | None) -> None:
            # Idempotent steps: without a transaction, running the erasure again finishes it.
            if numbers:
                for name in ("outbox", "messages", "refs", "inbox"):
                    await self._col(name).delete_many({"lead_number": {"$in": numbers}}, session=session)
                await self._col("events").update_many(
                    {"lead_number": {"$in": numbers}},
                    {"$unset": {f"data.{key}": "" for key in EVENT_TEXT_KEYS}},
                    session=session,
                )
                await self._col("leads").update_many(
                    {"contact_id": contact_id},
                    [
                        {
                            "$set": {
                                "subject": "",
                                "subject_folded": "",
                                "tags": [],
                                "extra": {},
                                "origin_external_id": {"$concat": ["erased:", {"$toString": "$_id"}]},
                            }
                        }
                    ],
                    session=session,
                )
            await self._col("identities").delete_many({"contact_id": contact_id}, session=session)
            await self._col("contacts").delete_one({"_id": contact_id}, session=session)

        await self._atomic(write)
        return numbers

    @_translated
    async def attachment_refs_in_use(self, refs: Sequence[str]) -> set[str]:
        """Those of `refs` that some stored message's attachment still names."""
        wanted = sorted(set(refs))
        if not wanted:
            return set()
        # distinct() lists every ref of the matching messages; keep only the asked ones.
        found = await self._col("messages").distinct("attachments.ref", {"attachments.ref": {"$in": wanted}})
        return {str(ref) for ref in found} & set(wanted)

    @_translated
    async def handled_since(self, since: datetime) -> dict[str, int]:
        """Per first reply's author (or assignee), leads first answered or resolved since `since`."""
        # A lead first answered since then is the first reply's author's (along message_lead_seq),
        # whoever holds it now; one only resolved since then is its assignee's.
        first_reply: Doc = {
            "$lookup": {
                "from": "messages",
                "let": {"n": "$_id"},
                "pipeline": [
                    {"$match": {"$expr": {"$eq": ["$lead_number", "$$n"]}}},
                    {"$match": {"direction": Direction.OUT.value, "author": {"$ne": AUTO_AUTHOR}}},
                    {"$sort": {"seq": 1}},
                    {"$limit": 1},
                    {"$project": {"_id": 0, "author": 1}},
                ],
                "as": "first_reply",
            }
        }
        answered = {"$gte": [{"$ifNull": ["$first_response_at", None]}, since]}
        who = {
            "$ifNull": [
                {"$cond": [answered, {"$arrayElemAt": ["$first_reply.author", 0]}, None]},
                {"$ifNull": ["$assignee", None]},
            ]
        }
        pipeline: list[Doc] = [
            {"$match": {"$or": [{"first_response_at": {"$gte": since}}, {"resolved_at": {"$gte": since}}]}},
            first_reply,
            {"$group": {"_id": who, "n": {"$sum": 1}}},
            {"$match": {"_id": {"$type": "string"}}},
        ]
        return {row["_id"]: int(row["n"]) async for row in await self._col("leads").aggregate(pipeline)}

    @_translated
    async def active_counts(self) -> list[tuple[str | None, bool, int]]:
        """Active leads as (team, breached, count) rows."""
        pipeline: list[Doc] = [
            {"$match": {"status": {"$in": _ACTIVE}}},
            {
                "$group": {
                    "_id": {
                        "team": {"$ifNull": ["$team", None]},
                        "b": {"$ne": [{"$ifNull": ["$breached_at", None]}, None]},
                    },
                    "n": {"$sum": 1},
                }
            },
        ]
        return [
            (row["_id"]["team"], bool(row["_id"]["b"]), int(row["n"]))
            async for row in await self._col("leads").aggregate(pipeline)
        ]
