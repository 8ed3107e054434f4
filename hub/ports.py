"""Small protocols through which the core uses parts it does not own (routing, senders)."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, Protocol

from hub.domain import Contact, Lead, LeadKind, OutboxItem


@dataclass(frozen=True, slots=True)
class RoutingRequest:
    """What the router may look at to pick a team and a manager for a lead."""

    lead_number: int
    channel: str
    kind: LeadKind
    form_id: str = ""
    subject: str = ""
    text: str = ""
    language: str = ""
    contact_id: str = ""
    contact_tags: tuple[str, ...] = ()
    recipient: str = ""
    preferred_team: str | None = None


@dataclass(frozen=True, slots=True)
class RoutingDecision:
    team: str | None
    assignee: str | None
    priority: int = 0
    tags: tuple[str, ...] = ()
    reason: dict[str, Any] = field(default_factory=dict)


ApplyDecision = Callable[[RoutingDecision], Awaitable[None]]
#: Stores a new lead as the decision says; gets the assignee's load the decision was based on
#: (None: nobody was chosen) and returns (the stored lead, created).
CreateRouted = Callable[[RoutingDecision, tuple[int, int] | None], Awaitable[tuple[Lead, bool]]]


class Router(Protocol):
    async def route(self, request: RoutingRequest, now: datetime, apply: ApplyDecision) -> RoutingDecision:
        """Pick a team and, when someone is eligible, a manager; explain why in `reason`.

        The router's compare-and-set writes all that a load counts (assignee, team, priority)
        before the next decision reads the loads, so concurrent leads never see the same stale
        counts; `apply` records the rest of the decision (tags, SLA targets, the event).
        """

    async def open_routed(
        self, request: RoutingRequest, now: datetime, create: CreateRouted
    ) -> tuple[Lead, RoutingDecision, bool]:
        """Decide for a lead that is not stored yet, then have `create` store it routed.

        A lead's insert and its routing are then one write, checked against the load the
        decision read. Returns the lead as `create` stored it, the final decision (another
        process may have won the load, and the lead was then routed again) and whether it
        was created.
        """


@dataclass(frozen=True, slots=True)
class LeftOut:
    """A file of a reply that went out without it; `reason` is a `hub.delivery_failures.FILE_*` code."""

    name: str
    reason: str


@dataclass(frozen=True, slots=True)
class Delivered:
    """What a sender delivered: the channel's id of it, and the reply's files it had to leave out."""

    ref: str
    left_out: tuple[LeftOut, ...] = ()


class Sender(Protocol):
    """Delivers outbox rows of one channel; raises TransientError or PermanentError."""

    channel: str

    async def send(self, item: OutboxItem, lead: Lead, contact: Contact | None) -> str | Delivered:
        """Deliver one row; returns the channel's id of what was sent (Message-ID, message_id),
        as a `Delivered` when files of the reply did not go with it (staff must be told)."""
