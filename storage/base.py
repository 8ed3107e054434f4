"""The Store protocol: every query the core needs, named for what it means.

Adapters (`storage.sqlite`, `storage.mongo`) pass one contract suite (`tests/contract`).
All datetimes in and out are aware UTC. Methods are safe to call from several hub
processes on one database: anything that must happen once is claimed atomically here.
"""

from __future__ import annotations

from collections.abc import Sequence
from contextlib import AbstractAsyncContextManager
from dataclasses import dataclass, field, replace
from datetime import datetime
from typing import Any, Literal, Protocol, runtime_checkable

from hub.domain import (
    Contact,
    Event,
    Identity,
    InboxItem,
    Lead,
    LeadKind,
    LeadStatus,
    Message,
    OutboxItem,
    Page,
)
from hub.errors import NotFoundError


class StoreError(Exception):
    """The store could not do what was asked (transient: retry later)."""


class DuplicateError(StoreError):
    """A unique key is already taken (the caller decides whether that is idempotency)."""


class ContactMissing(NotFoundError):
    """A contact a write names does not exist (erased, merged away or never created)."""

    def __init__(self, contact_id: str) -> None:
        super().__init__(f"contact {contact_id} does not exist")
        self.contact_id = contact_id


LeadOrder = Literal["newest", "due"]
#: The orders `LeadQuery.order` accepts.
LEAD_ORDERS: tuple[LeadOrder, ...] = ("newest", "due")


@dataclass(frozen=True, slots=True)
class LeadCursor:
    """Where a page of `list_leads` starts: after (or, `backward`, before) one lead.

    `owed` says which part of the due order the lead is in, `key` holds its sort value in the
    adapter's own exact encoding (due time for an owed lead, else the update time; unused for
    "newest"). The text form goes into URLs, so `parse` refuses anything it did not make.
    """

    backward: bool
    number: int
    owed: bool = False
    key: str = ""

    def text(self, order: LeadOrder) -> str:
        if order == "newest" and not self.backward:
            return str(self.number)  # the API's cursors stay what they were
        if order == "newest":
            return f"b{self.number}"
        return f"{'b' if self.backward else 'a'}{'o' if self.owed else 'r'}{self.key}_{self.number}"

    @classmethod
    def parse(cls, raw: str, order: LeadOrder) -> LeadCursor:
        bad = ValueError(f"invalid cursor {raw[:40]!r} for leads in {order} order")
        if order == "newest":
            digits = raw[1:] if raw.startswith("b") else raw
            if not (digits.isascii() and digits.isdigit()) or len(digits) > 18:
                raise bad
            return cls(backward=raw.startswith("b"), number=int(digits))
        key, _, number = raw[2:].rpartition("_")
        if (
            len(raw) > 80
            or raw[:1] not in ("a", "b")
            or raw[1:2] not in ("o", "r")
            or not key
            or not (number.isascii() and number.isdigit())
            or len(number) > 18
        ):
            raise bad
        return cls(backward=raw[0] == "b", number=int(number), owed=raw[1] == "o", key=key)


def lead_page(
    order: LeadOrder, found: Sequence[tuple[Lead, LeadCursor]], limit: int, at: LeadCursor | None
) -> Page[Lead] | None:
    """A page from up to `limit + 1` leads read from `at` in reading order (backward: nearest
    first), each with its own position (`backward=False`). None when a backward read reached
    the start: the caller reads the first page instead, so "previous" never shows a short page."""
    if at is not None and at.backward:
        if len(found) <= limit:
            return None
        found = list(reversed(found[:limit]))
        return Page(
            items=[lead for lead, _ in found],
            next_cursor=found[-1][1].text(order),
            prev_cursor=replace(found[0][1], backward=True).text(order),
        )
    kept = found[:limit]
    return Page(
        items=[lead for lead, _ in kept],
        next_cursor=kept[-1][1].text(order) if len(found) > limit and kept else None,
        prev_cursor=replace(kept[0][1], backward=True).text(order) if at is not None and kept else None,
    )


@dataclass(frozen=True, slots=True)
class LeadQuery:
    """Filters for queue and API listings; None means 'any'."""

    statuses: tuple[LeadStatus, ...] | None = None
    kind: LeadKind | None = None
    assignee: str | None = None
    unassigned: bool = False
    #: With `assignee`: that manager's leads and the unassigned ones (an agent's queue).
    or_unassigned: bool = False
    team: str | None = None
    channel: str | None = None
    breached: bool | None = None
    contact_id: str | None = None
    text: str | None = None  # matches subject, contact name, identity values
    #: "newest": number descending. "due": the queue's order: active unanswered leads with a
    #: first-response due time, soonest (most overdue) first, then the others, most recently
    #: updated first. Both are keyset-paginated (`Page.next_cursor`, `Page.prev_cursor`), so a
    #: lead that changes between two page loads does not push another one onto both pages.
    order: LeadOrder = "newest"


@dataclass(frozen=True, slots=True)
class LeadChanges:
    """Fields to set on a lead; only the ones not None are written."""

    status: LeadStatus | None = None
    kind: LeadKind | None = None
    assignee: str | None = None
    clear_assignee: bool = False
    team: str | None = None
    priority: int | None = None
    tags: list[str] | None = None
    first_response_at: datetime | None = None
    resolved_at: datetime | None = None
    clear_resolved_at: bool = False
    first_response_due: datetime | None = None
    warn_due: datetime | None = None
    clear_due: bool = False  # the clock stopped: no warning or breach is pending
    updated_at: datetime | None = None
    extra: dict[str, Any] = field(default_factory=dict)
    # The generalised SLA clock (see hub.sla). Setting a due time arms its mark for the sweep;
    # stopping a clock (resolved / closed status, first_response_at, clear_sla, pause_sla)
    # disarms its marks, so a lead that is answered or resolved raises no alert after that.
    # A pause disarms only the resolution marks still ahead of it: one already passed fell due
    # while the clock ran and is reported by the next sweep.
    sla_target: str | None = None
    # Setting sla_started_at starts a new episode of the response target: its claimed marks
    # (sla_warned_at, sla_breached_at) are forgotten, so its warning and breach may fire again.
    sla_started_at: datetime | None = None
    sla_due: datetime | None = None
    sla_warn_due: datetime | None = None  # with sla_due; None = no warning for this target
    clear_sla: bool = False  # no response is owed now (a public reply)
    pause_sla: bool = False  # waiting for the customer: resolution pauses (sla_paused_at = updated_at)
    resolution_due: datetime | None = None
    resolution_warn_due: datetime | None = None  # with resolution_due; None = no warning
    clear_sla_paused: bool = False  # the clock runs again (set with the new resolution due)
    clear_resolution: bool = False  # the policy no longer has a resolution target
    restart_resolution: bool = False  # a new resolution episode (reopen): forget its claimed marks
    escalate_at: datetime | None = None  # arm the next escalation step of a breached target
    escalate_target: str | None = None


#: The lead fields an SLA decision reads: its status, its clock (target, episode, due times,
#: pause) and the marks sweeps claim. `update_lead(..., expected=lead)` writes only while all
#: of them are still as `lead` holds them, so a claim, reply or pause in between is never undone.
SLA_STATE_FIELDS = (
    "status",
    "first_response_at",
    "first_response_due",
    "warn_due",
    "warned_at",
    "breached_at",
    "sla_target",
    "sla_started_at",
    "sla_due",
    "sla_warn_due",
    "resolution_due",
    "resolution_warn_due",
    "sla_paused_at",
    "sla_warned_at",
    "sla_breached_at",
    "res_warned_at",
    "res_breached_at",
)


@dataclass(frozen=True, slots=True)
class RoutingSnapshot:
    """What one routing decision reads, fetched together: loads, state values, its turn."""

    loads: dict[str, tuple[int, int]]
    states: dict[str, Any]
    turn: int


@dataclass(frozen=True, slots=True)
class SlaClaim:
    """One warning or breach mark the sweep claimed: which lead, target and level, due when."""

    lead: Lead
    target: str  # first_response | next_response | resolution
    level: str  # warning | breach | escalation
    due: datetime


#: Dimensions a KPI report can be broken down by (`KpiQuery.group_by`).
KPI_GROUPS = ("team", "assignee", "channel", "kind", "day")

#: Event data keys that may quote what a customer wrote (an edit's `before` and `after`): erasing
#: a contact removes them from the events of its leads, which otherwise stay as the audit trail.
EVENT_TEXT_KEYS = ("text", "before", "after")

#: State key set once a store's phone identities were rewritten to today's E.164 form
#: (`hub.identities.renormalized_phone`), which both adapters do once at open.
PHONE_RENORMALIZED_KEY = "storage.phone_e164"


def phone_conflict_line(contact_id: str, owner_id: str) -> str:
    """The one log line naming two contacts that a phone rewrite found to share a number (the
    number itself stays out of the log, as every identity value does)."""
    return (
        f"contacts {contact_id} and {owner_id} have the same phone number (contact {contact_id} "
        f"in its old form, left as it was): merge them in the dashboard if they are one person"
    )


@dataclass(frozen=True, slots=True)
class KpiQuery:
    """Leads created in [start, end) with optional filters, optionally broken down by one dimension."""

    start: datetime
    end: datetime
    team: str | None = None
    assignee: str | None = None
    channel: str | None = None
    kind: LeadKind | None = None
    group_by: str | None = None  # None: one row for everything; else one of KPI_GROUPS
    day_zone: str = "UTC"  # IANA time zone whose midnights cut days for group_by="day"


@dataclass(frozen=True, slots=True)
class KpiRow:
    """Figures of one group of leads (times in seconds; percentiles interpolated linearly)."""

    group: str | None
    received: int
    responded: int
    within_target: int  # answered no later than the first-response due time
    breached: int
    resolved: int
    frt_mean: float | None
    frt_median: float | None
    frt_p90: float | None
    resolution_mean: float | None
    resolution_median: float | None
    breached_answered: int = 0  # breached, then answered late
    # Medians/p90 read off a histogram (large periods), within PERCENTILE_ERROR of the exact ones.
    percentiles_approximate: bool = False


#: Worst relative error of an approximate percentile (`KpiRow.percentiles_approximate`); below
#: one second, the error is at most half a second.
PERCENTILE_ERROR = 0.025


def interpolated_percentiles(values: list[float], fractions: tuple[float, ...]) -> dict[float, float]:
    """Percentiles interpolated linearly between ranks (`statistics.quantiles(method="inclusive")`)."""
    ordered = sorted(values)
    n = len(ordered)
    result: dict[float, float] = {}
    for fraction in fractions:
        if n == 0:
            continue
        h = (n - 1) * fraction
        low = int(h)
        value = ordered[low]
        if low + 1 < n:
            value += (h - low) * (ordered[low + 1] - value)
        result[fraction] = value
    return result


@runtime_checkable
class Store(Protocol):
    backend: str

    async def open(self) -> None:
        """Connect, create or migrate the schema, ensure indexes."""

    async def close(self) -> None:
        """Flush and disconnect; safe to call twice."""

    async def ping(self) -> bool:
        """True when the database answers a trivial query now."""

    def deferred_commit(self, wait: bool = True) -> AbstractAsyncContextManager[None]:
        """A block whose writes return as soon as they are applied (this process's later reads
        see them) and whose end waits until all of them are durable (a nested block's end, for
        its own writes). Lets a caller hold an in-process lock across writes without holding it
        across commit waits. An adapter whose writes are durable on return makes it a no-op.
        `wait=False`: the end does not wait (only for writes that a replay after a crash redoes)."""

    async def sync(self) -> None:
        """Return once every write this process issued before the call is durable, unwaited
        ones included (a barrier before telling the outside world the work is done)."""

    # --- inbox: raw input, durable before anything is acknowledged upstream -------------
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
        """Store raw input durably; returns (item, created). A known key returns the old item.

        With `holder`, the new item is claimed by it for `lease_seconds`, so the caller can
        process it at once while other processes' replay loops leave it alone.
        """

    async def inbox_claim(
        self, holder: str, now: datetime, lease_seconds: float, limit: int
    ) -> list[InboxItem]:
        """Claim pending items (oldest first) for processing; a lapsed claim can be taken again."""

    async def inbox_get(self, item_id: int) -> InboxItem | None:
        """One inbox item by id."""

    async def inbox_find(self, channel: str, external_id: str) -> InboxItem | None:
        """The inbox item stored under (channel, external_id), if any."""

    async def inbox_done(self, item_id: int, lead_number: int | None) -> None:
        """Mark an item processed (it produced, or joined, that lead)."""

    async def inbox_quarantine(self, item_id: int, reason: str) -> None:
        """Keep an item that cannot be processed, with the reason, for staff to see."""

    async def inbox_requeue(self, item_id: int) -> bool:
        """Put a quarantined item back to pending; False if it was not quarantined."""

    async def inbox_list(
        self, status: str, limit: int = 100, before_id: int | None = None
    ) -> list[InboxItem]:
        """Items in one status, newest first; with `before_id`, those with a smaller id (the
        next page after an item of that id)."""

    # --- contacts ----------------------------------------------------------------------------
    async def find_contact(self, identity: Identity) -> Contact | None:
        """The contact that owns this identity (kind + normalized value), if any."""

    async def find_contact_of(self, identities: Sequence[Identity]) -> Contact | None:
        """The contact of the first of these identities (in order) that has one."""

    async def get_contact(self, contact_id: str) -> Contact | None:
        """One contact with all identities."""

    async def create_contact(self, contact: Contact) -> Contact:
        """Insert a contact with its identities; DuplicateError if an identity is taken."""

    async def add_identity(self, contact_id: str, identity: Identity) -> bool:
        """Attach an identity; False if it already belongs to another contact."""

    async def merge_contacts(self, keep_id: str, merge_id: str) -> None:
        """Move identities and leads of `merge_id` onto `keep_id` and delete `merge_id`.

        ContactMissing (nothing changed) when either contact does not exist."""

    # --- leads ------------------------------------------------------------------------------
    async def next_lead_number(self) -> int:
        """A new lead number, unique and increasing even under concurrent callers."""

    async def create_lead(
        self, lead: Lead, expected_load: tuple[int, int] | None = None
    ) -> tuple[Lead, bool]:
        """Insert a lead; a lead with the same (channel, origin_external_id) is returned instead.

        A lead with number 0 gets the next lead number in the same write. With `expected_load`,
        the lead keeps `lead.assignee` only if that manager's load still equals it (the
        compare-and-set of `assign_if_load`; SQLite checks it in the insert itself); otherwise
        it is stored unassigned (an adapter may leave its team unset too), as the returned
        lead shows."""

    async def get_lead(self, number: int) -> Lead | None:
        """One lead by number."""

    async def find_lead_by_origin(self, channel: str, external_id: str) -> Lead | None:
        """The lead an inbound (channel, external_id) opened, if any."""

    async def find_active_lead(self, contact_id: str, channel: str | None) -> Lead | None:
        """The contact's most recent active lead (on that channel when given)."""

    async def update_lead(
        self, number: int, changes: LeadChanges, expected: Lead | None = None
    ) -> Lead | None:
        """Apply changes and return the updated lead (None if there is no such lead).

        With `expected` (the lead as the changes were computed from), a compare-and-set: the
        changes apply only while the lead's SLA_STATE_FIELDS still hold `expected`'s values,
        in one atomic write; otherwise nothing is written and None is returned."""

    async def list_leads(self, query: LeadQuery, limit: int, cursor: str | None = None) -> Page[Lead]:
        """Leads matching the query in `query.order` (newest first by default), keyset-paginated:
        `cursor` is a `next_cursor` or `prev_cursor` of an earlier page of the same query
        (ValueError for anything else). A page before which fewer than `limit` leads are left
        is the first page. Each page is read along an index in both directions."""

    async def count_leads(self, query: LeadQuery) -> int:
        """How many leads match the query (its order aside)."""

    async def count_active_by_assignee(self, manager_ids: list[str]) -> dict[str, int]:
        """How many active leads each of these managers holds (0 included)."""

    async def claim_due_warnings(self, now: datetime, limit: int) -> list[Lead]:
        """Atomically mark leads whose warning time passed (and record sla.warning); once each."""

    async def claim_due_breaches(self, now: datetime, limit: int) -> list[Lead]:
        """Atomically mark leads whose due time passed (and record sla.breached); once each."""

    async def claim_sla_marks(self, now: datetime, limit: int) -> list[SlaClaim]:
        """Atomically claim up to `limit` warning and breach marks due by `now` on any target.

        Each claimed mark is disarmed and its sla.warning / sla.breached event recorded in the
        same write, so concurrent sweeps (several processes) report every mark exactly once.
        Cost is O(marks due), via indexes on the armed marks.
        """

    async def load_by_assignee(self, manager_ids: list[str]) -> dict[str, tuple[int, int]]:
        """(active leads, priority-weighted load = sum of 1 + priority) for each manager."""

    async def routing_snapshot(
        self, manager_ids: list[str], state_keys: list[str], turn_key: str
    ) -> RoutingSnapshot:
        """`load_by_assignee`, `get_states` and `incr_state(turn_key)` as one round trip."""

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
        """Give the lead to `assignee` only if their load still equals `expected` and the lead
        is still held by `previous` (None: unassigned), as one compare-and-set write; False
        means someone else changed either first. `priority` (when given) is set in the same
        write, so everything a load counts is in place once this returns."""

    async def oldest_unassigned(self, limit: int) -> list[Lead]:
        """Active leads without an assignee, oldest first (the queue the router drains)."""

    async def last_assignee_of_contact(self, contact_id: str, exclude_number: int) -> str | None:
        """Who was assigned the contact's most recent other lead (for sticky routing)."""

    async def active_leads_of(self, assignee: str, limit: int) -> list[Lead]:
        """A manager's active leads, oldest first."""

    # --- messages and threading -------------------------------------------------------------
    async def add_message(self, message: Message) -> tuple[Message, bool]:
        """Append a message; an inbound with a known (channel, external_id) returns the old one."""

    async def find_message(self, channel: str, external_id: str) -> Message | None:
        """A message by its channel's external id."""

    async def get_message(self, message_id: str) -> Message | None:
        """A message by id."""

    async def list_messages(self, lead_number: int) -> list[Message]:
        """The whole conversation of a lead in order."""

    async def add_refs(self, lead_number: int, refs: list[str]) -> None:
        """Remember ids (email Message-IDs, ...) that later replies may point at."""

    async def find_lead_by_refs(self, refs: list[str]) -> int | None:
        """The lead any of these ids belongs to (most recent lead wins)."""

    # --- outbox -----------------------------------------------------------------------------
    async def add_outbound(self, message: Message, item: OutboxItem | None) -> None:
        """Record an outbound message and its delivery row in one atomic write."""

    async def outbox_claim(
        self, channels: list[str], holder: str, now: datetime, lease_seconds: float, limit: int
    ) -> list[OutboxItem]:
        """Claim due queued rows of these channels; a row is held by one sender at a time."""

    async def outbox_sent(self, item_id: str, now: datetime, external_ref: str) -> None:
        """The row was delivered; its message is marked sent."""

    async def outbox_retry(self, item_id: str, next_attempt_at: datetime, error: str) -> None:
        """A transient failure: try again at `next_attempt_at`."""

    async def outbox_failed(self, item_id: str, error: str) -> None:
        """A permanent failure: give up on this row and mark its message failed."""

    async def outbox_get(self, item_id: str) -> OutboxItem | None:
        """One outbox row."""

    async def outbox_counts(self) -> dict[str, int]:
        """Rows per state (queued, sent, failed), for health and metrics."""

    # --- events, leases, small state ---------------------------------------------------------
    async def append_event(self, event: Event) -> Event:
        """Append to the audit log; returns the event with its id."""

    async def append_events(self, events: Sequence[Event]) -> list[Event]:
        """Append several events in order as one write; returns them with their ids."""

    async def list_events(
        self,
        lead_number: int | None = None,
        types: list[str] | None = None,
        limit: int = 1000,
        after_id: int | None = None,
    ) -> list[Event]:
        """Events oldest first, of one lead and/or some types (with `after_id`: id above it)."""

    async def acquire_lease(self, name: str, holder: str, now: datetime, ttl_seconds: float) -> bool:
        """Take or renew a named lease; True while `holder` has it."""

    async def release_lease(self, name: str, holder: str) -> None:
        """Give a lease up, if held by `holder`."""

    async def get_state(self, key: str) -> Any:
        """A small JSON value by key (round-robin cursors, availability, channel offsets)."""

    async def get_states(self, keys: Sequence[str]) -> dict[str, Any]:
        """Several small values in one read; a missing key maps to None."""

    async def set_state(self, key: str, value: Any) -> None:
        """Store a small JSON value."""

    async def incr_state(self, key: str) -> int:
        """Atomically add one to an integer state value and return the new value."""

    # --- dashboard: reports, erasure, small aggregates ---------------------------------------
    async def kpi_rows(self, query: KpiQuery) -> list[KpiRow]:
        """KPI figures of leads created in the period, one row per group (computed in the database)."""

    async def kpi_breakdowns(
        self, query: KpiQuery, groupings: tuple[str | None, ...]
    ) -> dict[str | None, list[KpiRow]]:
        """`kpi_rows` for several groupings of one period at once (`query.group_by` is ignored);
        the result for each grouping equals what `kpi_rows` returns for it."""

    async def erase_contact(self, contact_id: str) -> list[int]:
        """Delete a contact's personal data: identities, messages (with attachments), their outbox
        and raw inbox rows, lead subjects; leads stay as anonymous numbers. Returns their numbers."""

    async def attachment_refs_in_use(self, refs: Sequence[str]) -> set[str]:
        """Those of `refs` that some stored message's attachment still names. Erasure asks this
        before deleting a content-addressed file another customer's message may share; it may scan
        every message (erasure is rare), so nothing hot calls it."""

    async def handled_since(self, since: datetime) -> dict[str, int]:
        """How many leads got their first response or were resolved since `since`, per who
        handled them: a lead first answered since then counts for its first reply's author (a
        message author: a manager's id or name), whoever holds it now; one only resolved since
        then counts for its assignee. Each lead counts once."""

    async def active_counts(self) -> list[tuple[str | None, bool, int]]:
        """Active leads as (team, breached, count) rows, for gauges."""
