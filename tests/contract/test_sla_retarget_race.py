"""Store contract: a due time recomputed from a stale read never undoes a claim (every adapter).

A staff action reads the lead, computes new due times and writes them. A sweep in another
process can claim a mark in between; the write must then not arm that mark again (a second
alert). `update_lead(..., expected=lead)` is the compare-and-set that closes this, and the
actions use it: the tests below put a claim, or a reply, between the read and the write.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest

from hub.actions import LeadActions
from hub.calendar import AlwaysOpen
from hub.config import Settings
from hub.domain import Lead, LeadKind, LeadStatus
from hub.events import EventBus
from hub.sla import SlaClock
from storage.base import LeadChanges, Store
from tests.contract.conftest import StoreFactory
from tests.support.settings import make_settings

T0 = datetime(2026, 11, 23, 8, 0, tzinfo=UTC)

POLICIES = {
    "message": {
        "first_response": "1h",
        "next_response": "30m",
        "resolution": "4h",
        "teams": {"service": {"first_response": "2h", "next_response": "1h", "resolution": "6h"}},
    },
    "service_request": {"first_response": "12h"},
}


class ClaimAfterRead:
    """The store as one process sees it; after each `get_lead` another process runs `between`."""

    def __init__(self, store: Store, between: Callable[[], Awaitable[object]]) -> None:
        self._store = store
        self._between = between
        self.reads = 0

    def __getattr__(self, name: str) -> Any:
        return getattr(self._store, name)

    async def get_lead(self, number: int) -> Lead | None:
        lead = await self._store.get_lead(number)
        self.reads += 1
        if self.reads == 1:
            await self._between()
        return lead


@pytest.fixture
def settings(tmp_path: Path) -> Settings:
    return make_settings(tmp_path, sla={"policies": POLICIES})


async def started(store: Store, clock: SlaClock) -> Lead:
    lead = Lead(
        number=1,
        kind=LeadKind.MESSAGE,
        channel="webform",
        contact_id="c1",
        status=LeadStatus.NEW,
        created_at=T0,
        updated_at=T0,
        origin_external_id="e1",
        assignee="olena",
        team="support",
    )
    created, _ = await store.create_lead(clock.start(lead))
    return created


def actions(store: Any, settings: Settings, clock: SlaClock) -> LeadActions:
    return LeadActions(store, EventBus(), settings, clock)


async def test_update_lead_with_expected_writes_only_while_the_sla_state_is_as_read(
    store_factory: StoreFactory, settings: Settings
) -> None:
    a, b = await store_factory(), await store_factory()
    clock = SlaClock(settings.sla, AlwaysOpen())
    await started(a, clock)
    read = await a.get_lead(1)
    assert read is not None
    claims = await b.claim_sla_marks(T0 + timedelta(hours=1, minutes=1), 100)
    assert sorted((c.target, c.level) for c in claims) == [
        ("first_response", "breach"),
        ("first_response", "warning"),
    ]
    later = T0 + timedelta(hours=2)
    stale = LeadChanges(sla_due=later, sla_warn_due=None, first_response_due=later, updated_at=later)
    assert await a.update_lead(1, stale, expected=read) is None
    kept = await a.get_lead(1)
    assert kept is not None and kept.sla_due == T0 + timedelta(hours=1) and kept.breached_at is not None
    assert await b.claim_sla_marks(T0 + timedelta(hours=3), 100) == []
    # Read again, the same write applies.
    applied = await a.update_lead(1, LeadChanges(tags=["x"], updated_at=later), expected=kept)
    assert applied is not None and applied.tags == ["x"]


async def test_a_team_change_racing_a_breach_claim_does_not_arm_the_breach_again(
    store_factory: StoreFactory, settings: Settings
) -> None:
    a, b = await store_factory(), await store_factory()
    clock = SlaClock(settings.sla, AlwaysOpen())
    await started(a, clock)
    swept = T0 + timedelta(hours=1, minutes=1)
    claimed: list[object] = []

    async def sweep_elsewhere() -> None:
        claimed.extend(await b.claim_sla_marks(swept, 100))

    racing = ClaimAfterRead(a, sweep_elsewhere)
    # Iryna is in team service, whose policy gives 2h for the first response and 6h to resolve.
    moved = await actions(racing, settings, clock).assign(
        1, "iryna", "olena", now=swept + timedelta(seconds=1)
    )
    assert len(claimed) == 2  # the first response's warning and breach, between read and write
    assert moved.team == "service" and moved.assignee == "iryna"
    # The breach keeps the due time it was reported against; resolution moves to the new policy.
    assert moved.sla_due == T0 + timedelta(hours=1) and moved.breached_at == swept
    assert moved.resolution_due == T0 + timedelta(hours=6)
    later = await b.claim_sla_marks(T0 + timedelta(hours=7), 100)
    assert sorted((c.target, c.level) for c in later) == [("resolution", "breach"), ("resolution", "warning")]


async def test_a_kind_change_racing_a_reply_does_not_arm_a_response_nobody_owes(
    store_factory: StoreFactory, settings: Settings
) -> None:
    a, b = await store_factory(), await store_factory()
    clock = SlaClock(settings.sla, AlwaysOpen())
    await started(a, clock)
    replied = T0 + timedelta(minutes=10)

    async def reply_elsewhere() -> None:
        changes = LeadChanges(
            first_response_at=replied,
            status=LeadStatus.WAITING_CUSTOMER,
            clear_sla=True,
            pause_sla=True,
            updated_at=replied,
        )
        await b.update_lead(1, changes)

    racing = ClaimAfterRead(a, reply_elsewhere)
    changed = await actions(racing, settings, clock).set_kind(
        1, LeadKind.SERVICE_REQUEST, "olena", now=replied + timedelta(seconds=1)
    )
    assert changed.kind == LeadKind.SERVICE_REQUEST and changed.first_response_at == replied
    assert changed.sla_target is None
    # Answered before the kind changed: no first-response alert, ever.
    assert await b.claim_sla_marks(T0 + timedelta(days=2), 100) == []
