"""Store contract: lead numbers, creation, lookup, updates and the counts routing uses."""

from __future__ import annotations

import asyncio
from dataclasses import fields

import pytest

from hub.domain import Lead, LeadKind, LeadStatus
from storage.base import DuplicateError, LeadChanges, Store
from tests.contract.builders import T0, at, lead, new_lead
from tests.contract.conftest import StoreFactory


async def test_lead_numbers_are_sequential(store: Store) -> None:
    assert [await store.next_lead_number() for _ in range(5)] == [1, 2, 3, 4, 5]


async def test_lead_numbers_unique_under_concurrent_callers(store: Store) -> None:
    numbers = await asyncio.gather(*(store.next_lead_number() for _ in range(200)))
    assert sorted(numbers) == list(range(1, 201))


async def test_lead_numbers_unique_across_two_store_instances(store_factory: StoreFactory) -> None:
    one, two = await store_factory(), await store_factory()
    numbers = await asyncio.gather(
        *(s.next_lead_number() for _ in range(100) for s in (one, two)),
    )
    assert sorted(numbers) == list(range(1, 201))


async def test_create_round_trips_every_field(store: Store) -> None:
    full = lead(
        7,
        "contact-7",
        kind=LeadKind.SERVICE_REQUEST,
        channel="email",
        status=LeadStatus.OPEN,
        subject="Не працює бойлер",
        form_id="service",
        assignee="olena",
        team="service",
        priority=2,
        tags=["vip", "бойлер"],
        origin_external_id="imap:INBOX:1:42:abcd",
        created_at=at(0),
        updated_at=at(5),
        first_response_at=at(60),
        resolved_at=at(120),
        first_response_due=at(hours=12),
        warn_due=at(hours=9),
        warned_at=at(hours=9, seconds=1),
        breached_at=at(hours=12, seconds=1),
    )
    stored, created = await store.create_lead(full)
    assert created and stored == full
    got = await store.get_lead(7)
    assert got == full
    assert got is not None and got.created_at.tzinfo is not None
    assert got.created_at.utcoffset().total_seconds() == 0  # type: ignore[union-attr]
    assert await store.find_lead_by_origin("email", "imap:INBOX:1:42:abcd") == full
    assert await store.find_lead_by_origin("webform", "imap:INBOX:1:42:abcd") is None
    assert await store.get_lead(8) is None


async def test_create_is_idempotent_on_channel_and_origin(store: Store) -> None:
    first, created = await store.create_lead(lead(1, origin_external_id="form-abc", subject="first"))
    assert created
    again, created_again = await store.create_lead(lead(2, origin_external_id="form-abc", subject="second"))
    assert not created_again
    assert again == first
    assert await store.get_lead(2) is None
    _, other_channel = await store.create_lead(lead(3, channel="api", origin_external_id="form-abc"))
    assert other_channel


async def test_create_with_a_taken_number_raises(store: Store) -> None:
    await store.create_lead(lead(1, origin_external_id="a"))
    with pytest.raises(DuplicateError):
        await store.create_lead(lead(1, origin_external_id="b"))


async def test_create_with_number_zero_takes_the_next_number(store: Store) -> None:
    assert await store.next_lead_number() == 1
    created = await asyncio.gather(
        *(store.create_lead(lead(0, origin_external_id=f"o{k}")) for k in range(20))
    )
    assert all(flag for _, flag in created)
    assert sorted(stored.number for stored, _ in created) == list(range(2, 22))
    for stored, _ in created:
        got = await store.get_lead(stored.number)
        assert got is not None and got.origin_external_id == stored.origin_external_id
    again, fresh = await store.create_lead(lead(0, origin_external_id="o3"))
    assert fresh is False and again.number == next(
        s.number for s, _ in created if s.origin_external_id == "o3"
    )
    assert await store.next_lead_number() > 21


async def test_concurrent_creates_of_one_origin_make_one_lead(store_factory: StoreFactory) -> None:
    one, two = await store_factory(), await store_factory()

    async def create(store: Store) -> tuple[Lead, bool]:
        number = await store.next_lead_number()
        return await store.create_lead(lead(number, origin_external_id="same-submission"))

    results = await asyncio.gather(*(create(s) for _ in range(5) for s in (one, two)))
    assert sum(created for _, created in results) == 1
    assert len({r.number for r, _ in results}) == 1


async def test_find_active_lead(store: Store) -> None:
    await new_lead(store, "c1", channel="email")
    newest_email = await new_lead(store, "c1", channel="email", status=LeadStatus.WAITING_CUSTOMER)
    telegram = await new_lead(store, "c1", channel="telegram", status=LeadStatus.OPEN)
    await new_lead(store, "c1", channel="email", status=LeadStatus.RESOLVED)
    await new_lead(store, "c2", channel="email")
    found = await store.find_active_lead("c1", "email")
    assert found is not None and found.number == newest_email.number
    found_any = await store.find_active_lead("c1", None)
    assert found_any is not None and found_any.number == telegram.number
    assert await store.find_active_lead("c1", "webform") is None
    await new_lead(store, "c3", status=LeadStatus.CLOSED)
    assert await store.find_active_lead("c3", None) is None
    assert await store.find_active_lead("nobody", None) is None


async def test_update_each_field(store: Store) -> None:
    original = await new_lead(store, first_response_due=at(hours=4), warn_due=at(hours=3))
    n = original.number

    async def update(**kw: object) -> Lead:
        updated = await store.update_lead(n, LeadChanges(**kw))  # type: ignore[arg-type]
        assert updated is not None
        assert updated == await store.get_lead(n)
        return updated

    assert (await update(status=LeadStatus.OPEN, updated_at=at(1))).status == LeadStatus.OPEN
    assert (await update(kind=LeadKind.SERVICE_REQUEST)).kind == LeadKind.SERVICE_REQUEST
    assert (await update(assignee="olena")).assignee == "olena"
    assert (await update(team="support")).team == "support"
    assert (await update(priority=3)).priority == 3
    assert (await update(tags=["vip", "терміново"])).tags == ["vip", "терміново"]
    assert (await update(tags=[])).tags == []
    assert (await update(first_response_at=at(60))).first_response_at == at(60)
    assert (await update(resolved_at=at(90))).resolved_at == at(90)
    assert (await update(clear_resolved_at=True)).resolved_at is None
    assert (await update(first_response_due=at(hours=12))).first_response_due == at(hours=12)
    assert (await update(warn_due=at(hours=10))).warn_due == at(hours=10)
    assert (await update(updated_at=at(hours=1))).updated_at == at(hours=1)
    assert (await update(extra={"note": "ключ"})).number == n
    assert (await update(clear_due=True)).first_response_due == at(hours=12)  # the due time stays
    cleared = await update(clear_assignee=True, assignee="taras")  # clear wins
    assert cleared.assignee is None
    assert cleared.team == "support"  # fields not named stay as they were

    final = await store.get_lead(n)
    assert final is not None
    assert (final.kind, final.priority, final.first_response_at) == (LeadKind.SERVICE_REQUEST, 3, at(60))
    assert final.created_at == T0 and final.channel == original.channel


async def test_update_with_no_changes_sets_only_updated_at(store: Store) -> None:
    original = await new_lead(store, assignee="olena", tags=["a"])
    updated = await store.update_lead(original.number, LeadChanges(updated_at=at(30)))
    assert updated is not None
    differing = [f.name for f in fields(Lead) if getattr(updated, f.name) != getattr(original, f.name)]
    assert differing == ["updated_at"]


async def test_update_of_a_missing_lead_returns_none(store: Store) -> None:
    assert await store.update_lead(404, LeadChanges(status=LeadStatus.OPEN)) is None


async def test_count_active_by_assignee(store: Store) -> None:
    for assignee, status in [
        ("olena", LeadStatus.NEW),
        ("olena", LeadStatus.OPEN),
        ("olena", LeadStatus.WAITING_CUSTOMER),
        ("olena", LeadStatus.RESOLVED),
        ("olena", LeadStatus.CLOSED),
        ("taras", LeadStatus.OPEN),
        ("ivan", LeadStatus.NEW),
        (None, LeadStatus.NEW),
    ]:
        await new_lead(store, assignee=assignee, status=status)
    assert await store.count_active_by_assignee(["olena", "taras", "maria"]) == {
        "olena": 3,
        "taras": 1,
        "maria": 0,
    }
    assert await store.count_active_by_assignee([]) == {}
    taras_lead = await store.find_active_lead("c-1", None)
    assert taras_lead is not None and taras_lead.assignee is None  # the newest one: unassigned
    await store.update_lead(taras_lead.number, LeadChanges(assignee="taras"))
    assert await store.count_active_by_assignee(["taras"]) == {"taras": 2}


async def test_an_unassigned_lead_leaves_its_managers_load_and_joins_the_unassigned_queue(
    store: Store,
) -> None:
    held = await new_lead(store, assignee="olena", priority=2)
    other = await new_lead(store, assignee="olena")
    assert await store.load_by_assignee(["olena"]) == {"olena": (2, 4)}
    await store.update_lead(held.number, LeadChanges(clear_assignee=True, updated_at=at(60)))
    assert await store.load_by_assignee(["olena"]) == {"olena": (1, 1)}
    assert await store.count_active_by_assignee(["olena"]) == {"olena": 1}
    assert [x.number for x in await store.oldest_unassigned(10)] == [held.number]
    # Given to someone again, the load follows it.
    await store.update_lead(held.number, LeadChanges(assignee="taras", updated_at=at(90)))
    assert await store.load_by_assignee(["olena", "taras"]) == {"olena": (1, 1), "taras": (1, 3)}
    assert other.assignee == "olena"


async def test_the_earliest_of_two_first_responses_is_kept_in_either_order(store: Store) -> None:
    # Two replies that both read the lead unanswered each send their own time; whichever write
    # lands last, the first response is the earlier reply (the later write won).
    for first, second in ((at(60), at(30)), (at(30), at(60))):
        n = (await new_lead(store, first_response_due=at(hours=4))).number
        await store.update_lead(n, LeadChanges(first_response_at=first, updated_at=first))
        updated = await store.update_lead(n, LeadChanges(first_response_at=second, updated_at=second))
        assert updated is not None and updated.first_response_at == at(30)
        stored = await store.get_lead(n)
        assert stored is not None and stored.first_response_at == at(30)
