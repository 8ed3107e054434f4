"""Store contract: the event log, leases for single-consumer work, and small state values."""

from __future__ import annotations

import asyncio

from hub.domain import Event
from storage.base import Store
from tests.contract.builders import at
from tests.contract.conftest import StoreFactory


async def test_events_append_and_list(store: Store) -> None:
    appended = []
    for n, (lead, kind) in enumerate(
        [
            (1, "lead.created"),
            (1, "lead.assigned"),
            (2, "lead.created"),
            (None, "input.quarantined"),
            (1, "sla.breached"),
        ]
    ):
        data = {"n": n, "текст": "ї", "nested": {"ok": True, "list": [1, 2]}}
        event = await store.append_event(Event(kind, at(n), lead, data))
        assert event.id is not None
        appended.append(event)
    assert len({e.id for e in appended}) == 5

    everything = await store.list_events()
    assert everything == appended  # oldest first, every field kept
    assert [e.type for e in await store.list_events(1)] == ["lead.created", "lead.assigned", "sla.breached"]
    assert [e.lead_number for e in await store.list_events(types=["lead.created"])] == [1, 2]
    assert [e.type for e in await store.list_events(1, ["lead.created", "sla.breached"])] == [
        "lead.created",
        "sla.breached",
    ]
    assert [e.type for e in await store.list_events(types=["input.quarantined"])] == ["input.quarantined"]
    assert [e.id for e in await store.list_events(limit=2)] == [appended[0].id, appended[1].id]
    assert await store.list_events(99) == []
    assert await store.list_events(types=["nothing"]) == []
    # A cursor over the log (the alert relay's): only ids above `after_id`, still oldest first.
    assert appended[1].id is not None
    after = await store.list_events(types=["lead.created", "sla.breached"], after_id=appended[1].id)
    assert [e.id for e in after] == [appended[2].id, appended[4].id]
    assert await store.list_events(after_id=appended[4].id) == []


async def test_events_appended_together_keep_their_order(store: Store) -> None:
    first = await store.append_event(Event("lead.created", at(0), 1, {}))
    batch = await store.append_events(
        [
            Event("lead.assigned", at(1), 1, {"assignee": "олена"}),
            Event("message.added", at(2), 1, {"n": 2}),
            Event("input.quarantined", at(3), None, {"reason": "x"}),
        ]
    )
    assert await store.append_events([]) == []
    assert all(e.id is not None for e in batch)
    assert first.id is not None and batch[0].id is not None and batch[0].id > first.id
    assert await store.list_events() == [first, *batch]


async def test_lease_acquire_renew_expire_steal_release(store: Store) -> None:
    assert await store.acquire_lease("imap:support", "a", at(0), 30) is True
    assert await store.acquire_lease("imap:support", "b", at(10), 30) is False
    assert await store.acquire_lease("imap:support", "a", at(20), 30) is True  # renewed until 50
    assert await store.acquire_lease("imap:support", "b", at(45), 30) is False
    assert await store.acquire_lease("other", "b", at(45), 30) is True  # names are independent
    # a stopped renewing: after expiry b takes it over, and a no longer has it.
    assert await store.acquire_lease("imap:support", "b", at(51), 30) is True
    assert await store.acquire_lease("imap:support", "a", at(52), 30) is False
    await store.release_lease("imap:support", "a")  # not a's: nothing happens
    assert await store.acquire_lease("imap:support", "a", at(53), 30) is False
    await store.release_lease("imap:support", "b")
    assert await store.acquire_lease("imap:support", "a", at(54), 30) is True
    await store.release_lease("never-taken", "a")


async def test_lease_has_one_holder_when_contended(store_factory: StoreFactory) -> None:
    one, two = await store_factory(), await store_factory()
    results = await asyncio.gather(
        *(s.acquire_lease("poller", f"h{k}", at(0), 30) for k, s in enumerate([one, two] * 5))
    )
    assert sum(results) == 1


async def test_state_get_set(store: Store) -> None:
    assert await store.get_state("missing") is None
    await store.set_state("rr:support", {"last": "olena", "order": ["olena", "taras"], "ім'я": "Олена"})
    assert await store.get_state("rr:support") == {
        "last": "olena",
        "order": ["olena", "taras"],
        "ім'я": "Олена",
    }
    await store.set_state("rr:support", [1, 2, 3])
    assert await store.get_state("rr:support") == [1, 2, 3]
    for value in (0, 17, "text", True, None, 1.5):
        await store.set_state("scalar", value)
        assert await store.get_state("scalar") == value


async def test_get_states_reads_several_keys(store: Store) -> None:
    await store.set_state("manager.olena.away", True)
    await store.set_state("manager.taras.away", False)
    await store.set_state("other", {"x": [1]})
    assert await store.get_states(["manager.olena.away", "manager.taras.away", "missing", "other"]) == {
        "manager.olena.away": True,
        "manager.taras.away": False,
        "missing": None,
        "other": {"x": [1]},
    }
    assert await store.get_states([]) == {}


async def test_incr_state_is_atomic(store_factory: StoreFactory) -> None:
    one, two = await store_factory(), await store_factory()
    assert await one.incr_state("offset") == 1
    values = await asyncio.gather(*(s.incr_state("offset") for _ in range(100) for s in (one, two)))
    assert sorted(values) == list(range(2, 202))
    assert await two.get_state("offset") == 201
    await one.set_state("offset", 1000)
    assert await two.incr_state("offset") == 1001
