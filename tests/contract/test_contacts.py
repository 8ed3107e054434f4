"""Store contract: contacts and their identities."""

from __future__ import annotations

import logging

import pytest

from hub.domain import Contact, Identity, IdentityKind, LeadStatus
from storage.base import PHONE_RENORMALIZED_KEY, DuplicateError, Store
from tests.contract.builders import contact, email, new_lead
from tests.contract.conftest import StoreFactory


async def test_create_find_and_get(store: Store) -> None:
    tg = Identity(IdentityKind.TELEGRAM, "777001", "Олена")
    person = contact(
        email("olena@example.com", "Олена К."), tg, name="Олена Коваль", language="uk", tags=["vip"]
    )
    assert await store.create_contact(person) == person

    got = await store.get_contact(person.id)
    assert got is not None
    assert (got.id, got.name, got.language, got.tags, got.created_at) == (
        person.id,
        "Олена Коваль",
        "uk",
        ["vip"],
        person.created_at,
    )
    assert got.identities == person.identities  # order and display names kept

    found = await store.find_contact(Identity(IdentityKind.TELEGRAM, "777001"))
    assert found is not None and found.id == person.id
    # The key is (kind, value): the same value under another kind is someone else.
    assert await store.find_contact(Identity(IdentityKind.PHONE, "777001")) is None
    assert await store.find_contact(email("nobody@example.com")) is None
    assert await store.get_contact("no-such-contact") is None


async def test_duplicate_identity_raises_and_stores_nothing(store: Store) -> None:
    first = contact(email("a@example.com"))
    await store.create_contact(first)
    second = contact(email("b@example.com"), email("a@example.com"))
    with pytest.raises(DuplicateError):
        await store.create_contact(second)
    # All or nothing: neither the contact nor its free identity was kept.
    assert await store.get_contact(second.id) is None
    assert await store.find_contact(email("b@example.com")) is None
    found = await store.find_contact(email("a@example.com"))
    assert found is not None and found.id == first.id


async def test_add_identity(store: Store) -> None:
    a = await store.create_contact(contact(email("a@example.com")))
    b = await store.create_contact(contact(email("b@example.com")))
    phone = Identity(IdentityKind.PHONE, "+380501234567", "mobile")
    assert await store.add_identity(a.id, phone) is True
    assert await store.add_identity(a.id, phone) is True  # already a's: still true
    assert await store.add_identity(b.id, phone) is False  # a's, not b's
    found = await store.find_contact(Identity(IdentityKind.PHONE, "+380501234567"))
    assert found is not None and found.id == a.id
    got_a = await store.get_contact(a.id)
    assert got_a is not None and got_a.identities == [email("a@example.com"), phone]
    got_b = await store.get_contact(b.id)
    assert got_b is not None and got_b.identities == [email("b@example.com")]


async def test_merge_moves_identities_and_leads(store: Store) -> None:
    keep = await store.create_contact(contact(email("keep@example.com"), name="Keep"))
    gone = await store.create_contact(
        contact(email("gone@example.com"), Identity(IdentityKind.TELEGRAM, "42"), name="Gone")
    )
    kept_lead = await new_lead(store, keep.id)
    moved_lead = await new_lead(store, gone.id, channel="telegram")
    await store.merge_contacts(keep.id, gone.id)

    assert await store.get_contact(gone.id) is None
    merged = await store.get_contact(keep.id)
    assert merged is not None
    assert {(i.kind, i.value) for i in merged.identities} == {
        (IdentityKind.EMAIL, "keep@example.com"),
        (IdentityKind.EMAIL, "gone@example.com"),
        (IdentityKind.TELEGRAM, "42"),
    }
    found = await store.find_contact(Identity(IdentityKind.TELEGRAM, "42"))
    assert found is not None and found.id == keep.id
    moved = await store.get_lead(moved_lead.number)
    assert moved is not None and moved.contact_id == keep.id
    active = await store.find_active_lead(keep.id, "telegram")
    assert active is not None and active.number == moved_lead.number
    assert (await store.get_lead(kept_lead.number)).contact_id == keep.id  # type: ignore[union-attr]
    assert moved.status == LeadStatus.NEW

    await store.merge_contacts(keep.id, keep.id)  # merging into itself changes nothing
    assert await store.get_contact(keep.id) is not None


async def test_find_contact_of_takes_the_first_identity_that_has_one(store: Store) -> None:
    a = await store.create_contact(contact(email("a@example.com")))
    b = await store.create_contact(contact(Identity(IdentityKind.PHONE, "+380501112233")))
    phone = Identity(IdentityKind.PHONE, "+380501112233")
    found = await store.find_contact_of([email("nobody@example.com"), phone, email("a@example.com")])
    assert found is not None and found.id == b.id
    found = await store.find_contact_of([email("a@example.com"), phone])
    assert found is not None and found.id == a.id and found.identities == a.identities
    assert await store.find_contact_of([email("nobody@example.com")]) is None
    assert await store.find_contact_of([]) is None


async def test_phones_stored_in_the_old_form_take_todays_at_open_without_merging_anyone(
    store_factory: StoreFactory, caplog: pytest.LogCaptureFixture
) -> None:
    def phone(value: str) -> Identity:
        return Identity(IdentityKind.PHONE, value)

    first = await store_factory()
    # What the code before 2026-12-02 stored for `067 123 45 67`, `8 050 111 22 33`, `093…`.
    old = contact(phone("+0671234567"), name="Old only")
    both = contact(phone("+80501112233"), phone("+380501112233"), name="Old and new")
    clash = contact(phone("+0931234567"), name="Old, new taken")
    taken = contact(phone("+380931234567"), name="Wrote since")
    foreign = contact(phone("+442079460958"), phone("+0123"), name="Valid or unreadable")
    for person in (old, both, clash, taken, foreign):
        await first.create_contact(person)
    await first.set_state(PHONE_RENORMALIZED_KEY, False)  # a store the old code wrote
    await first.close()

    with caplog.at_level(logging.WARNING, logger="storage"):
        store = await store_factory()

    async def phones(person: Contact) -> list[str]:
        got = await store.get_contact(person.id)
        assert got is not None
        return [i.value for i in got.identities]

    assert await phones(old) == ["+380671234567"]
    found = await store.find_contact(phone("+380671234567"))
    assert found is not None and found.id == old.id
    assert await phones(both) == ["+380501112233"]
    assert await phones(clash) == ["+0931234567"]  # not merged into `taken`
    assert await phones(taken) == ["+380931234567"]
    assert await phones(foreign) == ["+442079460958", "+0123"]
    (line,) = [r.getMessage() for r in caplog.records if "same phone number" in r.getMessage()]
    assert clash.id in line and taken.id in line
    assert "+380931234567" not in line and "+0931234567" not in line  # no identity values in logs
    assert await store.get_state(PHONE_RENORMALIZED_KEY) is True
