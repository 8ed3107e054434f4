"""Store contract for the generalised SLA marks and the routing claims (every adapter)."""

from __future__ import annotations

import asyncio
from dataclasses import replace
from datetime import UTC, datetime, timedelta

import pytest

from hub.domain import Event, Lead, LeadKind, LeadStatus
from storage.base import LeadChanges, Store
from tests.contract.conftest import StoreFactory

T0 = datetime(2026, 11, 23, 8, 0, tzinfo=UTC)


@pytest.fixture
async def stores(store_factory: StoreFactory) -> tuple[Store, Store]:
    """Two stores on one database, as two hub processes would have."""
    return await store_factory(), await store_factory()


def lead(number: int, due_in: timedelta, **fields: object) -> Lead:
    due = T0 + due_in
    return Lead(
        number=number,
        kind=LeadKind.MESSAGE,
        channel="webform",
        contact_id=f"c{number}",
        status=LeadStatus.NEW,
        created_at=T0,
        updated_at=T0,
        origin_external_id=f"e{number}",
        first_response_due=due,
        warn_due=due - timedelta(minutes=10),
        sla_target="first_response",
        sla_started_at=T0,
        sla_due=due,
        sla_warn_due=due - timedelta(minutes=10),
        **fields,  # type: ignore[arg-type]
    )


async def test_concurrent_claims_from_two_connections_report_each_mark_once(
    stores: tuple[Store, Store],
) -> None:
    a, b = stores
    for n in range(1, 301):
        await a.create_lead(lead(n, timedelta(minutes=n % 50), resolution_due=T0 + timedelta(hours=1)))
    now = T0 + timedelta(hours=2)
    rounds = await asyncio.gather(*(store.claim_sla_marks(now, 37) for store in (a, b) for _ in range(30)))
    claimed = [(c.lead.number, c.target, c.level) for batch in rounds for c in batch]
    assert len(claimed) == len(set(claimed)) == 300 * 3  # response warning + breach, resolution breach
    events = await a.list_events(types=["sla.warning", "sla.breached"], limit=10_000)
    assert len(events) == 900
    assert await b.claim_sla_marks(now + timedelta(days=1), 1000) == []


async def test_a_reply_stops_the_response_target_and_pauses_resolution(stores: tuple[Store, Store]) -> None:
    a, _ = stores
    await a.create_lead(lead(1, timedelta(hours=1), resolution_due=T0 + timedelta(hours=3)))
    await a.create_lead(lead(2, timedelta(hours=1), resolution_due=T0 + timedelta(hours=3)))
    warned = await a.claim_sla_marks(T0 + timedelta(minutes=55), 100)
    assert sorted((c.lead.number, c.target, c.level) for c in warned) == [
        (1, "first_response", "warning"),
        (2, "first_response", "warning"),
    ]
    reply_at = T0 + timedelta(minutes=56)
    changes = LeadChanges(
        status=LeadStatus.WAITING_CUSTOMER,
        first_response_at=reply_at,
        clear_sla=True,
        pause_sla=True,
        updated_at=reply_at,
    )
    paused = await a.update_lead(1, changes)
    assert paused is not None and paused.sla_paused_at == reply_at and paused.sla_target is None
    # Lead 2 owes a next response, then is resolved: every mark of it is gone.
    owed = LeadChanges(sla_target="next_response", sla_due=T0 + timedelta(hours=2), updated_at=reply_at)
    assert (await a.update_lead(2, owed)).sla_target == "next_response"  # type: ignore[union-attr]
    await a.update_lead(2, LeadChanges(status=LeadStatus.RESOLVED, resolved_at=reply_at, updated_at=reply_at))
    assert await a.claim_sla_marks(T0 + timedelta(days=1), 100) == []
    resumed = LeadChanges(
        clear_sla_paused=True, resolution_due=T0 + timedelta(days=2), updated_at=T0 + timedelta(days=1)
    )
    assert (await a.update_lead(1, resumed)).sla_paused_at is None  # type: ignore[union-attr]
    (claim,) = await a.claim_sla_marks(T0 + timedelta(days=3), 100)
    assert (claim.lead.number, claim.target, claim.level) == (1, "resolution", "breach")
    assert claim.due == T0 + timedelta(days=2)


async def test_a_pause_cancels_only_the_resolution_marks_still_ahead(stores: tuple[Store, Store]) -> None:
    a, b = stores
    res = {"resolution_due": T0 + timedelta(hours=1), "resolution_warn_due": T0 + timedelta(minutes=50)}
    await a.create_lead(lead(1, timedelta(hours=5), **res))
    await a.create_lead(lead(2, timedelta(hours=5), **res))

    def reply(at: datetime) -> LeadChanges:
        return LeadChanges(
            status=LeadStatus.WAITING_CUSTOMER,
            clear_sla=True,
            pause_sla=True,
            first_response_at=at,
            updated_at=at,
        )

    # Lead 1 pauses between its resolution warning and breach, lead 2 after both, unswept.
    await a.update_lead(1, reply(T0 + timedelta(minutes=55)))
    await a.update_lead(2, reply(T0 + timedelta(hours=2)))
    claims = await b.claim_sla_marks(T0 + timedelta(days=1), 100)
    assert sorted((c.lead.number, c.target, c.level, c.due) for c in claims) == [
        (1, "resolution", "warning", T0 + timedelta(minutes=50)),
        (2, "resolution", "breach", T0 + timedelta(hours=1)),
        (2, "resolution", "warning", T0 + timedelta(minutes=50)),
    ]
    # Another reply while paused arms nothing again.
    await a.update_lead(2, reply(T0 + timedelta(days=1, hours=1)))
    assert await b.claim_sla_marks(T0 + timedelta(days=2), 100) == []


async def test_create_lead_with_an_expected_load_is_a_compare_and_set(stores: tuple[Store, Store]) -> None:
    a, b = stores
    first, created = await a.create_lead(lead(0, timedelta(hours=1), assignee="m1", team="s"), (0, 0))
    assert created and first.assignee == "m1"
    assert await b.load_by_assignee(["m1"]) == {"m1": (1, 1)}
    # Stale: m1's load is (1, 1) now. The lead is stored all the same, unassigned.
    fresh = replace(lead(0, timedelta(hours=1), assignee="m1", team="s"), origin_external_id="e-2")
    second, created = await b.create_lead(fresh, (0, 0))
    assert created and second.assignee is None and second.number == first.number + 1
    stored = await a.get_lead(second.number)
    # Unassigned (an adapter may leave the team unset too); the returned lead says which.
    assert stored is not None and (stored.assignee, stored.team) == (None, second.team)
    assert await a.load_by_assignee(["m1"]) == {"m1": (1, 1)}
    # A redelivery returns the stored lead, whatever load it expects.
    again, created = await a.create_lead(fresh, (1, 1))
    assert not created and again.number == second.number and again.assignee is None


async def test_assign_if_load_is_a_compare_and_set(stores: tuple[Store, Store]) -> None:
    a, b = stores
    for n in (1, 2, 3):
        await a.create_lead(lead(n, timedelta(hours=1), priority=1 if n == 1 else 0))
    assert await a.assign_if_load(1, "m1", "support", (0, 0), T0)
    assert await b.load_by_assignee(["m1", "m2"]) == {"m1": (1, 2), "m2": (0, 0)}
    assert not await b.assign_if_load(2, "m1", "support", (0, 0), T0)  # stale: m1 already has one
    assert await b.assign_if_load(2, "m1", "support", (1, 2), T0)
    # The lead moved on since the caller read it: no second assignment over it.
    assert not await b.assign_if_load(2, "m2", "support", (0, 0), T0, previous=None)
    assert await b.assign_if_load(2, "m2", "support", (0, 0), T0, previous="m1")
    assert await b.assign_if_load(2, "m1", "support", (1, 2), T0, previous="m2")
    assert [x.number for x in await a.oldest_unassigned(10)] == [3]
    assert [x.number for x in await a.active_leads_of("m1", 10)] == [1, 2]
    await a.update_lead(1, LeadChanges(status=LeadStatus.RESOLVED, updated_at=T0))
    assert await a.load_by_assignee(["m1"]) == {"m1": (1, 1)}
    assert await a.last_assignee_of_contact("c1", exclude_number=99) == "m1"
    assert await a.last_assignee_of_contact("c3", exclude_number=99) is None


async def test_routing_snapshot_reads_loads_and_flags_and_takes_a_turn(stores: tuple[Store, Store]) -> None:
    a, b = stores
    await a.create_lead(lead(1, timedelta(hours=1), assignee="m1", priority=1))
    await a.set_state("manager.m2.away", True)
    first = await a.routing_snapshot(["m1", "m2"], ["manager.m1.away", "manager.m2.away"], "routing.rr.t")
    assert first.loads == {"m1": (1, 2), "m2": (0, 0)}
    assert first.states == {"manager.m1.away": None, "manager.m2.away": True}
    second = await b.routing_snapshot([], [], "routing.rr.t")
    assert (second.loads, second.states, second.turn) == ({}, {}, first.turn + 1)
    turns = await asyncio.gather(*(s.routing_snapshot(["m1"], [], "routing.rr.t") for s in (a, b) * 10))
    assert sorted(t.turn for t in turns) == list(range(second.turn + 1, second.turn + 21))


async def test_escalation_steps_are_claimed_once_and_disarmed_by_a_reply(stores: tuple[Store, Store]) -> None:
    a, b = stores
    for n in (1, 2):
        await a.create_lead(lead(n, timedelta(hours=1)))
        at = T0 + timedelta(hours=2)
        await a.update_lead(n, LeadChanges(escalate_at=at, escalate_target="next_response", updated_at=T0))
    await a.update_lead(2, LeadChanges(clear_sla=True, updated_at=T0 + timedelta(minutes=90)))
    claims = await asyncio.gather(
        a.claim_sla_marks(T0 + timedelta(hours=3), 100), b.claim_sla_marks(T0 + timedelta(hours=3), 100)
    )
    escalations = [c for batch in claims for c in batch if c.level == "escalation"]
    assert [(c.lead.number, c.target, c.due) for c in escalations] == [
        (1, "next_response", T0 + timedelta(hours=2))
    ]
    events = await a.list_events(types=["sla.escalated"])
    assert [(e.lead_number, e.data["target"]) for e in events] == [(1, "next_response")]


async def test_load_follows_every_change_of_assignee_status_and_priority(stores: tuple[Store, Store]) -> None:
    a, b = stores
    await a.create_lead(lead(1, timedelta(hours=1), assignee="m1", priority=2))  # born assigned
    await a.create_lead(lead(2, timedelta(hours=1)))
    assert await b.load_by_assignee(["m1", "m2"]) == {"m1": (1, 3), "m2": (0, 0)}
    await a.update_lead(1, LeadChanges(priority=0, updated_at=T0))
    assert await b.load_by_assignee(["m1"]) == {"m1": (1, 1)}
    await a.update_lead(2, LeadChanges(assignee="m1", priority=1, updated_at=T0))
    assert await b.load_by_assignee(["m1"]) == {"m1": (2, 3)}
    await a.update_lead(1, LeadChanges(assignee="m2", updated_at=T0))  # reassigned
    assert await b.load_by_assignee(["m1", "m2"]) == {"m1": (1, 2), "m2": (1, 1)}
    await a.update_lead(2, LeadChanges(status=LeadStatus.WAITING_CUSTOMER, updated_at=T0))  # still active
    await a.update_lead(1, LeadChanges(status=LeadStatus.CLOSED, updated_at=T0))
    assert await b.load_by_assignee(["m1", "m2"]) == {"m1": (1, 2), "m2": (0, 0)}
    await a.update_lead(1, LeadChanges(status=LeadStatus.OPEN, updated_at=T0))  # the customer wrote again
    await a.update_lead(2, LeadChanges(clear_assignee=True, updated_at=T0))
    assert await b.load_by_assignee(["m1", "m2"]) == {"m1": (0, 0), "m2": (1, 1)}
    assert not await b.assign_if_load(2, "m2", "support", (0, 0), T0)  # stale
    assert await b.assign_if_load(2, "m2", "support", (1, 1), T0)
    assert await a.load_by_assignee(["m2"]) == {"m2": (2, 3)}
    assert await a.count_active_by_assignee(["m1", "m2"]) == {"m1": 0, "m2": 2}


async def test_deferred_commit_returns_writes_at_once_and_ends_durable(stores: tuple[Store, Store]) -> None:
    a, b = stores
    async with a.deferred_commit():
        await a.create_lead(lead(1, timedelta(hours=1)))
        assert await a.assign_if_load(1, "m1", "support", (0, 0), T0)
        # This process reads its own writes at once, before they are committed.
        assert await a.load_by_assignee(["m1"]) == {"m1": (1, 1)}
        assert not await a.assign_if_load(1, "m2", "support", (0, 0), T0)  # the CAS sees them too
        async with a.deferred_commit():  # nested: its end waits for its own writes
            await a.append_event(Event("lead.assigned", T0, 1, {"assignee": "m1"}))
        assert [e.type for e in await b.list_events(lead_number=1)] == ["lead.assigned"]
    # The block's end waited for the commit: another process on the database sees everything.
    assert (await b.get_lead(1)).assignee == "m1"  # type: ignore[union-attr]
    assert await b.load_by_assignee(["m1"]) == {"m1": (1, 1)}
    with pytest.raises(RuntimeError):
        async with a.deferred_commit():
            await a.create_lead(lead(2, timedelta(hours=1)))
            raise RuntimeError("the caller failed after writing")
    assert await a.get_lead(2) is not None  # applied writes stay; the store is still usable
    await a.set_state("after", 1)
    assert await b.get_state("after") == 1


async def test_sync_makes_unwaited_writes_durable(stores: tuple[Store, Store]) -> None:
    a, b = stores
    await a.set_state("before", 1)  # a commit just happened: the next one is paced, not at once
    item, _ = await a.inbox_put("email", "uid-sync", b"raw", T0)
    async with a.deferred_commit(wait=False):
        await a.inbox_done(item.id, None)
        await a.set_state("unwaited", 2)
    await a.sync()
    # Another process on the database sees every write issued before the barrier.
    assert await b.get_state("unwaited") == 2
    done = await b.inbox_get(item.id)
    assert done is not None and done.status == "done"
    await a.sync()  # nothing pending: returns at once


async def test_claims_record_each_targets_episode_marks_and_a_new_episode_forgets_them(
    stores: tuple[Store, Store],
) -> None:
    a, b = stores
    await a.create_lead(
        lead(
            1,
            timedelta(hours=1),
            resolution_due=T0 + timedelta(hours=2),
            resolution_warn_due=T0 + timedelta(minutes=90),
        )
    )
    fresh = await b.get_lead(1)
    assert fresh is not None
    assert (fresh.sla_warned_at, fresh.sla_breached_at, fresh.res_warned_at, fresh.res_breached_at) == (
        None,
        None,
        None,
        None,
    )
    now = T0 + timedelta(hours=3)
    claims = await a.claim_sla_marks(now, 100)
    assert sorted((c.target, c.level) for c in claims) == [
        ("first_response", "breach"),
        ("first_response", "warning"),
        ("resolution", "breach"),
        ("resolution", "warning"),
    ]
    marked = await b.get_lead(1)
    assert marked is not None
    assert (marked.sla_warned_at, marked.sla_breached_at, marked.res_warned_at, marked.res_breached_at) == (
        now,
        now,
        now,
        now,
    )
    # A recomputed due time (no new episode) keeps the episode's marks on record.
    again = T0 + timedelta(hours=4)
    same = await a.update_lead(1, LeadChanges(sla_due=again, sla_warn_due=None, updated_at=now))
    assert same is not None and same.sla_breached_at == now and same.sla_warned_at == now
    # A new episode of each target starts with no marks.
    started = await b.update_lead(
        1,
        LeadChanges(
            sla_target="next_response",
            sla_started_at=now,
            sla_due=again,
            sla_warn_due=None,
            resolution_due=again,
            restart_resolution=True,
            updated_at=now,
        ),
    )
    assert started is not None
    assert (
        started.sla_warned_at,
        started.sla_breached_at,
        started.res_warned_at,
        started.res_breached_at,
    ) == (
        None,
        None,
        None,
        None,
    )


async def test_only_first_response_claims_set_warned_at_and_breached_at(stores: tuple[Store, Store]) -> None:
    a, b = stores
    await a.create_lead(lead(1, timedelta(hours=1)))
    await a.create_lead(
        lead(
            2,
            timedelta(hours=1),
            first_response_at=T0 + timedelta(minutes=5),
            resolution_due=T0 + timedelta(hours=2),
            resolution_warn_due=T0 + timedelta(minutes=90),
        )
    )
    # The customer wrote again: a next response is owed.
    nr_start = T0 + timedelta(minutes=10)
    await a.update_lead(
        2,
        LeadChanges(
            sla_target="next_response",
            sla_started_at=nr_start,
            sla_due=nr_start + timedelta(hours=1),
            sla_warn_due=nr_start + timedelta(minutes=50),
            updated_at=nr_start,
        ),
    )
    now = T0 + timedelta(hours=3)
    claims = await b.claim_sla_marks(now, 100)
    assert sorted((c.lead.number, c.target, c.level) for c in claims) == [
        (1, "first_response", "breach"),
        (1, "first_response", "warning"),
        (2, "next_response", "breach"),
        (2, "next_response", "warning"),
        (2, "resolution", "breach"),
        (2, "resolution", "warning"),
    ]
    first, other = await a.get_lead(1), await a.get_lead(2)
    assert first is not None and (first.warned_at, first.breached_at) == (now, now)
    assert other is not None and (other.warned_at, other.breached_at) == (None, None)
    assert (other.sla_breached_at, other.res_breached_at) == (now, now)
    assert sorted((team, breached, n) for team, breached, n in await a.active_counts()) == [
        (None, False, 1),
        (None, True, 1),
    ]


async def test_a_resolution_escalation_does_not_replace_a_response_one(stores: tuple[Store, Store]) -> None:
    a, b = stores
    await a.create_lead(lead(1, timedelta(hours=1)))
    at = T0 + timedelta(hours=2)
    await a.update_lead(1, LeadChanges(escalate_at=at, escalate_target="first_response", updated_at=T0))
    await b.update_lead(1, LeadChanges(escalate_at=at, escalate_target="resolution", updated_at=T0))
    claims = await b.claim_sla_marks(T0 + timedelta(hours=3), 100)
    assert sorted(c.target for c in claims if c.level == "escalation") == ["first_response", "resolution"]
    assert await a.claim_sla_marks(T0 + timedelta(hours=4), 100) == []
    # A reply stops the response target's step only; resolving stops both.
    for n in (2, 3):
        await a.create_lead(lead(n, timedelta(hours=1)))
        for target in ("first_response", "resolution"):
            await a.update_lead(n, LeadChanges(escalate_at=at, escalate_target=target, updated_at=T0))
    await a.update_lead(2, LeadChanges(clear_sla=True, updated_at=T0))
    await a.update_lead(3, LeadChanges(status=LeadStatus.RESOLVED, updated_at=T0))
    claims = await b.claim_sla_marks(T0 + timedelta(hours=3), 100)
    assert [(c.lead.number, c.target) for c in claims if c.level == "escalation"] == [(2, "resolution")]
