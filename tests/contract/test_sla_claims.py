"""Store contract: SLA warning and breach marks are claimed exactly once each."""

from __future__ import annotations

import asyncio

from hub.domain import EventType, Lead, LeadStatus
from storage.base import LeadChanges, LeadQuery, Store
from tests.contract.builders import at, new_lead
from tests.contract.conftest import StoreFactory


async def due_lead(store: Store, due_minutes: float, warn_minutes: float | None = None, **kw: object) -> Lead:
    warn = at(minutes=warn_minutes) if warn_minutes is not None else at(minutes=due_minutes * 0.75)
    return await new_lead(store, first_response_due=at(minutes=due_minutes), warn_due=warn, **kw)  # type: ignore[arg-type]


async def test_breach_claimed_once_with_its_event(store: Store) -> None:
    due = await due_lead(store, 10, assignee="olena", team="support")
    later = await due_lead(store, 60)
    assert await store.claim_due_breaches(at(minutes=9), 100) == []
    [claimed] = await store.claim_due_breaches(at(minutes=10), 100)  # due time itself counts
    assert claimed.number == due.number
    assert claimed.breached_at == at(minutes=10)
    assert claimed.assignee == "olena"
    assert await store.claim_due_breaches(at(minutes=11), 100) == []
    stored = await store.get_lead(due.number)
    assert stored is not None and stored.breached_at == at(minutes=10)
    untouched = await store.get_lead(later.number)
    assert untouched is not None and untouched.breached_at is None

    events = await store.list_events(due.number, [EventType.SLA_BREACHED.value])
    assert len(events) == 1
    assert events[0].at == at(minutes=10)
    assert events[0].data["assignee"] == "olena" and events[0].data["team"] == "support"
    assert await store.list_events(later.number, [EventType.SLA_BREACHED.value]) == []
    assert await store.list_leads(LeadQuery(breached=True), 10) is not None
    assert [x.number for x in (await store.list_leads(LeadQuery(breached=True), 10)).items] == [due.number]


async def test_warning_claimed_once_and_independently_of_breach(store: Store) -> None:
    lead = await due_lead(store, 40, warn_minutes=30)
    assert await store.claim_due_warnings(at(minutes=29), 10) == []
    [warned] = await store.claim_due_warnings(at(minutes=31), 10)
    assert warned.number == lead.number and warned.warned_at == at(minutes=31)
    assert warned.breached_at is None
    assert await store.claim_due_warnings(at(minutes=32), 10) == []
    assert await store.claim_due_breaches(at(minutes=35), 10) == []
    [breached] = await store.claim_due_breaches(at(minutes=41), 10)
    assert breached.warned_at == at(minutes=31) and breached.breached_at == at(minutes=41)
    assert await store.claim_due_warnings(at(minutes=50), 10) == []
    types = [e.type for e in await store.list_events(lead.number)]
    assert types == [EventType.SLA_WARNING.value, EventType.SLA_BREACHED.value]


async def test_limit_is_honoured_earliest_due_first(store: Store) -> None:
    leads = [await due_lead(store, 60 - n) for n in range(10)]  # the last one is due first
    expected_order = [lead.number for lead in reversed(leads)]
    batches = []
    for _ in range(5):
        batch = await store.claim_due_breaches(at(hours=2), 3)
        assert len(batch) <= 3
        batches.append(sorted(x.number for x in batch))
    assert [len(b) for b in batches] == [3, 3, 3, 1, 0]
    assert batches[0] == sorted(expected_order[:3])
    assert sorted(n for b in batches for n in b) == sorted(expected_order)
    assert len(await store.list_events(types=[EventType.SLA_BREACHED.value])) == 10


async def test_answered_resolved_and_stopped_leads_are_skipped(store: Store) -> None:
    answered = await due_lead(store, 10)
    resolved = await due_lead(store, 10)
    closed = await due_lead(store, 10)
    stopped = await due_lead(store, 10)
    born_answered = await due_lead(store, 10, first_response_at=at(1))
    born_breached = await due_lead(store, 10, breached_at=at(minutes=10), warned_at=at(minutes=7))
    no_due = await new_lead(store)
    waiting = await due_lead(store, 10)
    await store.update_lead(answered.number, LeadChanges(first_response_at=at(minutes=5)))
    await store.update_lead(resolved.number, LeadChanges(status=LeadStatus.RESOLVED, resolved_at=at(5)))
    await store.update_lead(closed.number, LeadChanges(status=LeadStatus.CLOSED))
    await store.update_lead(stopped.number, LeadChanges(clear_due=True))
    # Waiting for the customer is still an active status: an unanswered lead there is still due.
    await store.update_lead(waiting.number, LeadChanges(status=LeadStatus.WAITING_CUSTOMER))

    warned = await store.claim_due_warnings(at(hours=1), 100)
    breached = await store.claim_due_breaches(at(hours=1), 100)
    assert [x.number for x in warned] == [waiting.number]
    assert [x.number for x in breached] == [waiting.number]
    for lead in (answered, resolved, closed, stopped, born_answered, born_breached, no_due):
        stored = await store.get_lead(lead.number)
        assert stored is not None
        assert stored.breached_at == lead.breached_at
        assert (
            await store.list_events(lead.number, [EventType.SLA_BREACHED.value, EventType.SLA_WARNING.value])
            == []
        )


async def test_new_due_time_rearms_the_clock(store: Store) -> None:
    lead = await due_lead(store, 10, warn_minutes=5)
    assert len(await store.claim_due_breaches(at(minutes=20), 10)) == 1
    # A policy change (e.g. the lead turned out to be a service request) sets new due times.
    rearmed = await store.update_lead(
        lead.number, LeadChanges(first_response_due=at(hours=12), warn_due=at(hours=9))
    )
    assert rearmed is not None and rearmed.breached_at is None and rearmed.warned_at is None
    assert await store.claim_due_breaches(at(hours=1), 10) == []
    assert [x.number for x in await store.claim_due_warnings(at(hours=9), 10)] == [lead.number]
    assert [x.number for x in await store.claim_due_breaches(at(hours=12), 10)] == [lead.number]


async def test_two_instances_racing_claim_each_lead_once(store_factory: StoreFactory) -> None:
    one, two = await store_factory(), await store_factory()
    leads = [await due_lead(one, 10 + n % 7) for n in range(60)]

    async def sweep(store: Store, warning: bool) -> list[int]:
        claimed: list[int] = []
        for minute in range(12, 30, 2):
            claim = store.claim_due_warnings if warning else store.claim_due_breaches
            claimed.extend(x.number for x in await claim(at(minutes=minute), 7))
        return claimed

    results = await asyncio.gather(*(sweep(s, w) for s in (one, two, one, two) for w in (False, True)))
    breaches = [n for i, r in enumerate(results) if i % 2 == 0 for n in r]
    warnings = [n for i, r in enumerate(results) if i % 2 == 1 for n in r]
    expected = sorted(lead.number for lead in leads)
    assert sorted(breaches) == expected
    assert sorted(warnings) == expected
    events = await two.list_events(types=[EventType.SLA_BREACHED.value], limit=10_000)
    assert sorted(e.lead_number for e in events if e.lead_number is not None) == expected
    warn_events = await one.list_events(types=[EventType.SLA_WARNING.value], limit=10_000)
    assert len(warn_events) == len(expected)
