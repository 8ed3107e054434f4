"""Store contract: the raw-input inbox (durable first, claimed, done, quarantined, requeued)."""

from __future__ import annotations

from storage.base import Store
from tests.contract.builders import at


async def test_put_is_idempotent_on_channel_and_external_id(store: Store) -> None:
    payload = b"raw \x00\xff bytes"
    item, created = await store.inbox_put("email", "uid-1", payload, at(0), {"mailbox": "INBOX", "n": "ї"})
    assert created
    assert item.id is not None
    assert (item.channel, item.external_id, item.payload) == ("email", "uid-1", payload)
    assert item.status == "pending"
    assert item.received_at == at(0)
    assert item.meta == {"mailbox": "INBOX", "n": "ї"}

    again, created_again = await store.inbox_put("email", "uid-1", b"different", at(5))
    assert not created_again
    assert again.id == item.id
    assert again.payload == payload  # the first write wins
    assert again.received_at == at(0)

    other, created_other = await store.inbox_put("telegram", "uid-1", b"x", at(0))
    assert created_other and other.id != item.id  # the key is (channel, external_id)

    got = await store.inbox_get(item.id)
    assert got is not None and got.payload == payload and got.meta == item.meta
    assert await store.inbox_get(987654321) is None


async def test_find_looks_an_item_up_by_channel_and_external_id(store: Store) -> None:
    item, _ = await store.inbox_put("webform", "contact:k-1", b"{}", at(0))
    found = await store.inbox_find("webform", "contact:k-1")
    assert found is not None and found.id == item.id and found.payload == b"{}"
    assert await store.inbox_find("api", "contact:k-1") is None
    assert await store.inbox_find("webform", "key:k-1") is None


async def test_put_with_holder_claims_until_the_lease_lapses(store: Store) -> None:
    item, _ = await store.inbox_put("webform", "f-1", b"{}", at(0), holder="proc-a", lease_seconds=60)
    assert await store.inbox_claim("proc-b", at(30), 60, 10) == []
    reclaimed = await store.inbox_claim("proc-b", at(61), 60, 10)
    assert [i.id for i in reclaimed] == [item.id]


async def test_claim_oldest_first_with_limit_and_lease(store: Store) -> None:
    ids = [(await store.inbox_put("webform", f"f-{n}", b"p", at(n)))[0].id for n in range(5)]
    first = await store.inbox_claim("proc-a", at(100), 30, 3)
    assert [i.id for i in first] == ids[:3]
    assert all(i.attempts == 1 for i in first)
    # Claimed items are not handed to anyone else while the claim holds.
    second = await store.inbox_claim("proc-b", at(110), 30, 10)
    assert [i.id for i in second] == ids[3:]
    assert await store.inbox_claim("proc-c", at(120), 30, 10) == []
    # A lapsed claim (the holder crashed) is taken again, counting the attempt.
    lapsed = await store.inbox_claim("proc-c", at(131), 30, 10)
    assert [i.id for i in lapsed] == ids[:3]
    assert all(i.attempts == 2 for i in lapsed)


async def test_done_items_are_never_claimed_again(store: Store) -> None:
    item, _ = await store.inbox_put("webform", "f-1", b"p", at(0))
    [claimed] = await store.inbox_claim("proc-a", at(1), 30, 10)
    await store.inbox_done(claimed.id, 42)
    done = await store.inbox_get(item.id)
    assert done is not None and done.status == "done" and done.lead_number == 42
    assert await store.inbox_claim("proc-b", at(1000), 30, 10) == []
    # A redelivery of the same input returns the finished item, not a new one.
    again, created = await store.inbox_put("webform", "f-1", b"p", at(2000))
    assert not created and again.status == "done" and again.lead_number == 42
    await store.inbox_done(item.id, None)
    assert (await store.inbox_get(item.id)).lead_number is None  # type: ignore[union-attr]


async def test_quarantine_and_requeue(store: Store) -> None:
    item, _ = await store.inbox_put("email", "bad", b"not mime", at(0), holder="proc-a", lease_seconds=60)
    await store.inbox_quarantine(item.id, "cannot parse: no headers")
    kept = await store.inbox_get(item.id)
    assert kept is not None and kept.status == "quarantined" and kept.reason == "cannot parse: no headers"
    assert kept.payload == b"not mime"
    assert await store.inbox_claim("proc-b", at(1000), 30, 10) == []

    assert await store.inbox_requeue(item.id) is True
    back = await store.inbox_get(item.id)
    assert back is not None and back.status == "pending" and back.reason == ""
    # Requeued input is claimable at once, even though the original claim had not lapsed.
    assert [i.id for i in await store.inbox_claim("proc-b", at(1), 30, 10)] == [item.id]
    assert await store.inbox_requeue(item.id) is False  # not quarantined any more
    assert await store.inbox_requeue(987654321) is False


async def test_list_by_status_newest_first(store: Store) -> None:
    ids = [(await store.inbox_put("webform", f"f-{n}", b"p", at(n)))[0].id for n in range(4)]
    await store.inbox_quarantine(ids[0], "r0")
    await store.inbox_quarantine(ids[2], "r2")
    await store.inbox_done(ids[1], 7)
    assert [i.id for i in await store.inbox_list("quarantined")] == [ids[2], ids[0]]
    assert [i.id for i in await store.inbox_list("pending")] == [ids[3]]
    assert [i.id for i in await store.inbox_list("done")] == [ids[1]]
    assert [i.id for i in await store.inbox_list("quarantined", limit=1)] == [ids[2]]
    assert await store.inbox_list("nonsense") == []


async def test_list_pages_on_below_an_id(store: Store) -> None:
    ids = [(await store.inbox_put("webform", f"q-{n}", b"p", at(n)))[0].id for n in range(5)]
    for item_id in ids:
        await store.inbox_quarantine(item_id, "unreadable")
    first = [i.id for i in await store.inbox_list("quarantined", limit=2)]
    assert first == [ids[4], ids[3]]
    second = [i.id for i in await store.inbox_list("quarantined", limit=2, before_id=first[-1])]
    assert second == [ids[2], ids[1]]
    assert [i.id for i in await store.inbox_list("quarantined", limit=2, before_id=second[-1])] == [ids[0]]
