"""Core types of the hub: what every channel produces and what the store keeps.

Nothing here knows about MIME, HTTP or Telegram: adapters translate into these types at the edge.
"""

from __future__ import annotations

import os
import re
import threading
import time
from dataclasses import dataclass, field
from datetime import UTC, datetime
from enum import StrEnum
from typing import Any, Generic, TypeVar

T = TypeVar("T")


class LeadKind(StrEnum):
    MESSAGE = "message"
    SERVICE_REQUEST = "service_request"


class LeadStatus(StrEnum):
    NEW = "new"
    OPEN = "open"
    WAITING_CUSTOMER = "waiting_customer"
    RESOLVED = "resolved"
    CLOSED = "closed"


#: Statuses in which a lead still needs work (the queue, routing load, SLA clocks).
ACTIVE_STATUSES: frozenset[LeadStatus] = frozenset(
    {LeadStatus.NEW, LeadStatus.OPEN, LeadStatus.WAITING_CUSTOMER}
)


class IdentityKind(StrEnum):
    EMAIL = "email"
    TELEGRAM = "telegram"
    TELEGRAM_USERNAME = "telegram_username"
    PHONE = "phone"


#: The author of automatic outbound messages (an email acknowledgement): they answer nothing.
AUTO_AUTHOR = "auto"


class Direction(StrEnum):
    IN = "in"
    OUT = "out"
    NOTE = "note"


class DeliveryState(StrEnum):
    QUEUED = "queued"
    SENT = "sent"
    FAILED = "failed"


class Role(StrEnum):
    AGENT = "agent"
    LEAD = "lead"
    ADMIN = "admin"


def utcnow() -> datetime:
    """The current time as an aware UTC datetime (the only clock services read by default)."""
    return datetime.now(UTC)


class _RandomPool:
    """OS randomness read in 4 KiB chunks: one getrandom() per 256 ids instead of one each.

    Every os.urandom call releases the GIL, and under load the database thread takes it each
    time, so a syscall per id cost a thread switch per id. A child made by fork() starts with
    an empty pool, so it never hands out its parent's ids.
    """

    CHUNK = 4096

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._buffer = b""
        self._offset = 0
        os.register_at_fork(after_in_child=self._forget)

    def _forget(self) -> None:
        self._lock = threading.Lock()
        self._buffer, self._offset = b"", 0

    def take(self, size: int) -> bytes:
        with self._lock:
            if self._offset + size > len(self._buffer):
                self._buffer, self._offset = os.urandom(max(self.CHUNK, size)), 0
            start = self._offset
            self._offset += size
            return self._buffer[start : self._offset]


_RANDOM = _RandomPool()


def new_id() -> str:
    """A 128-bit identifier (32 hex digits, UUIDv7 layout: milliseconds, then 74 random bits)
    for rows with no natural key."""
    # Time first: ids made close together sort close together, so each commit's new keys land
    # on a few B-tree pages (contacts, messages, inbox and lead keys) instead of one random
    # page per row. The ids are keys, never secrets.
    raw = bytearray((time.time_ns() // 1_000_000).to_bytes(6, "big"))
    raw += _RANDOM.take(10)
    raw[6] = 0x70 | (raw[6] & 0x0F)  # version 7
    raw[8] = 0x80 | (raw[8] & 0x3F)  # RFC 4122 variant
    return raw.hex()


_LEAD_REF = re.compile(r"^\s*(?:#)?L-?([0-9]{1,12})\s*$", re.IGNORECASE)


def format_lead_number(number: int) -> str:
    """`1042` -> `L-1042`, the form customers and staff see."""
    return f"L-{number}"


def parse_lead_number(text: str) -> int | None:
    """`L-1042`, `l1042`, `#L-1042` or `1042` -> 1042; anything else -> None."""
    text = text.strip()
    # ASCII only: str.isdigit() is also true for "¹²", which int() refuses, and an unbounded
    # number would overflow the database's integer.
    if text.isascii() and text.isdigit() and len(text) <= 12:
        return int(text)
    match = _LEAD_REF.match(text)
    return int(match.group(1)) if match else None


@dataclass(frozen=True, slots=True)
class Identity:
    """One way to reach a person: an email address, a Telegram user id, a phone number."""

    kind: IdentityKind
    value: str
    display_name: str = ""


@dataclass(frozen=True, slots=True)
class Attachment:
    name: str
    content_type: str
    size: int
    ref: str = ""  # content address in the attachment store; empty when dropped
    dropped_reason: str = ""


@dataclass(frozen=True, slots=True)
class ThreadHints:
    """What an inbound message says about the conversation it belongs to."""

    message_ids: tuple[str, ...] = ()  # In-Reply-To / References, reply-to-message ids
    lead_number: int | None = None  # a token such as [#L-1042] found in a subject


@dataclass(frozen=True, slots=True)
class Inbound:
    """A customer message as every channel hands it to `hub.intake.accept`."""

    channel: str
    external_id: str
    sender: Identity
    text: str
    received_at: datetime
    subject: str = ""
    html: str = ""
    other_identities: tuple[Identity, ...] = ()
    attachments: tuple[Attachment, ...] = ()
    thread: ThreadHints = field(default_factory=ThreadHints)
    kind_hint: LeadKind | None = None
    form_id: str = ""
    language: str = ""
    own_refs: tuple[str, ...] = ()  # ids this message can later be referenced by (Message-ID)
    meta: dict[str, Any] = field(default_factory=dict)


@dataclass(slots=True)
class Contact:
    id: str
    name: str
    identities: list[Identity]
    created_at: datetime
    language: str = ""
    tags: list[str] = field(default_factory=list)

    def identity(self, kind: IdentityKind) -> Identity | None:
        """The first identity of that kind, if the contact has one."""
        return next((i for i in self.identities if i.kind == kind), None)


@dataclass(slots=True)
class Lead:
    number: int
    kind: LeadKind
    channel: str
    contact_id: str
    status: LeadStatus
    created_at: datetime
    updated_at: datetime
    subject: str = ""
    form_id: str = ""
    assignee: str | None = None
    team: str | None = None
    priority: int = 0
    tags: list[str] = field(default_factory=list)
    origin_external_id: str = ""
    first_response_at: datetime | None = None
    resolved_at: datetime | None = None
    first_response_due: datetime | None = None
    warn_due: datetime | None = None
    warned_at: datetime | None = None
    breached_at: datetime | None = None
    # The response target on the clock (first_response, next_response; None: no reply owed),
    # when it started and its due/warning times; the resolution target; the pause start.
    sla_target: str | None = None
    sla_started_at: datetime | None = None
    sla_due: datetime | None = None
    sla_warn_due: datetime | None = None
    resolution_due: datetime | None = None
    resolution_warn_due: datetime | None = None
    sla_paused_at: datetime | None = None
    # Marks already claimed in the current episode of the response target (a new customer
    # message starts a new one) and of the resolution target (a reopen starts a new one): a
    # recomputed due time must not arm them again.
    sla_warned_at: datetime | None = None
    sla_breached_at: datetime | None = None
    res_warned_at: datetime | None = None
    res_breached_at: datetime | None = None

    @property
    def ref(self) -> str:
        return format_lead_number(self.number)

    @property
    def is_active(self) -> bool:
        return self.status in ACTIVE_STATUSES


@dataclass(slots=True)
class Message:
    id: str
    lead_number: int
    direction: Direction
    channel: str
    author: str
    text: str
    created_at: datetime
    html: str = ""
    attachments: list[Attachment] = field(default_factory=list)
    external_id: str | None = None
    refs: list[str] = field(default_factory=list)
    delivery: DeliveryState | None = None
    # A follow-up's own subject when it differs from its lead's (the lead shows the first one).
    subject: str = ""


@dataclass(slots=True)
class OutboxItem:
    """One delivery to do: the row is the truth about whether a reply went out."""

    id: str
    message_id: str
    lead_number: int
    channel: str
    payload: dict[str, Any]
    created_at: datetime
    state: DeliveryState = DeliveryState.QUEUED
    attempts: int = 0
    next_attempt_at: datetime | None = None
    last_error: str = ""
    sent_at: datetime | None = None
    external_ref: str = ""


@dataclass(slots=True)
class Event:
    type: str
    at: datetime
    lead_number: int | None = None
    data: dict[str, Any] = field(default_factory=dict)
    id: int | None = None


@dataclass(slots=True)
class InboxItem:
    """Raw input exactly as a channel received it, kept until it has been processed."""

    id: int
    channel: str
    external_id: str
    payload: bytes
    received_at: datetime
    status: str = "pending"  # pending | done | quarantined
    reason: str = ""
    lead_number: int | None = None
    attempts: int = 0
    meta: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class Page(Generic[T]):
    items: list[T]
    next_cursor: str | None
    #: Where the page before this one ends (None on the first page); only lead listings set it.
    prev_cursor: str | None = None


class EventType(StrEnum):
    LEAD_CREATED = "lead.created"
    LEAD_ASSIGNED = "lead.assigned"
    LEAD_UNASSIGNED = "lead.unassigned"
    LEAD_STATUS = "lead.status_changed"
    LEAD_RESOLVED = "lead.resolved"
    LEAD_REOPENED = "lead.reopened"
    #: A customer wrote on a lead resolved longer ago than the reopen window: this new lead
    #: took the message instead (data: `follows`, the old lead's number).
    LEAD_FOLLOWS_UP = "lead.follows_up"
    MESSAGE_ADDED = "message.added"
    REPLY_RECORDED = "reply.recorded"
    DELIVERY_SENT = "delivery.sent"
    DELIVERY_FAILED = "delivery.failed"
    #: A reply went out without some of its files (the channel could not carry or fetch them).
    DELIVERY_FILES_LEFT_OUT = "delivery.files_left_out"
    SLA_WARNING = "sla.warning"
    SLA_BREACHED = "sla.breached"
    INPUT_QUARANTINED = "input.quarantined"
    ROUTING_NOBODY_ELIGIBLE = "routing.nobody_eligible"
    SLA_ESCALATED = "sla.escalated"
