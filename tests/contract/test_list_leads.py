"""Store contract: the queue listing (every filter, cursor pages, text search)."""

from __future__ import annotations

from hub.domain import Identity, IdentityKind, LeadKind, LeadStatus
from storage.base import LeadChanges, LeadQuery, Store
from tests.contract.builders import at, contact, email, new_lead


async def numbers(store: Store, query: LeadQuery, limit: int = 100) -> list[int]:
    page = await store.list_leads(query, limit)
    return [lead.number for lead in page.items]


async def all_pages(store: Store, query: LeadQuery, limit: int) -> list[int]:
    seen: list[int] = []
    cursor: str | None = None
    for _ in range(1000):
        page = await store.list_leads(query, limit, cursor)
        assert len(page.items) <= limit
        seen.extend(lead.number for lead in page.items)
        cursor = page.next_cursor
        if cursor is None:
            return seen
    raise AssertionError("pagination did not end")


async def test_every_filter(store: Store) -> None:
    a = await new_lead(store, "c-a", status=LeadStatus.NEW, assignee="olena", team="support")
    b = await new_lead(store, "c-a", status=LeadStatus.OPEN, kind=LeadKind.SERVICE_REQUEST, team="service")
    c = await new_lead(store, "c-b", status=LeadStatus.RESOLVED, channel="email", assignee="taras")
    d = await new_lead(store, "c-b", status=LeadStatus.WAITING_CUSTOMER, channel="telegram", assignee="olena")
    e = await new_lead(store, "c-c", status=LeadStatus.CLOSED, breached_at=at(hours=5), team="support")

    everything = [e.number, d.number, c.number, b.number, a.number]
    assert await numbers(store, LeadQuery()) == everything
    assert await numbers(store, LeadQuery(statuses=(LeadStatus.NEW, LeadStatus.OPEN))) == [b.number, a.number]
    assert await numbers(store, LeadQuery(statuses=(LeadStatus.CLOSED,))) == [e.number]
    assert await numbers(store, LeadQuery(kind=LeadKind.SERVICE_REQUEST)) == [b.number]
    assert await numbers(store, LeadQuery(kind=LeadKind.MESSAGE)) == [e.number, d.number, c.number, a.number]
    assert await numbers(store, LeadQuery(assignee="olena")) == [d.number, a.number]
    assert await numbers(store, LeadQuery(unassigned=True)) == [e.number, b.number]
    assert await numbers(store, LeadQuery(team="support")) == [e.number, a.number]
    assert await numbers(store, LeadQuery(channel="email")) == [c.number]
    assert await numbers(store, LeadQuery(breached=True)) == [e.number]
    assert await numbers(store, LeadQuery(breached=False)) == [d.number, c.number, b.number, a.number]
    assert await numbers(store, LeadQuery(contact_id="c-b")) == [d.number, c.number]
    # Filters combine with AND.
    assert await numbers(store, LeadQuery(assignee="olena", statuses=(LeadStatus.NEW,))) == [a.number]
    assert await numbers(store, LeadQuery(contact_id="c-a", kind=LeadKind.MESSAGE)) == [a.number]
    assert await numbers(store, LeadQuery(channel="email", assignee="olena")) == []
    assert await numbers(store, LeadQuery(), limit=2) == [e.number, d.number]


async def test_cursor_pages_have_no_gaps_or_repeats(store: Store) -> None:
    made = [await new_lead(store, assignee="olena" if n % 3 else None) for n in range(23)]
    expected = sorted((lead.number for lead in made), reverse=True)
    for limit in (1, 5, 7, 23, 50):
        assert await all_pages(store, LeadQuery(), limit) == expected
    olena = [lead.number for lead in sorted(made, key=lambda x: -x.number) if lead.assignee == "olena"]
    assert await all_pages(store, LeadQuery(assignee="olena"), 4) == olena

    # Leads added while paging appear only before the cursor's start; nothing is skipped or repeated.
    first = await store.list_leads(LeadQuery(), 10)
    assert first.next_cursor is not None
    await new_lead(store)
    rest = await store.list_leads(LeadQuery(), 100, first.next_cursor)
    assert [x.number for x in first.items + rest.items] == expected
    assert rest.next_cursor is None


async def test_last_full_page_has_no_cursor_or_an_empty_next_page(store: Store) -> None:
    for _ in range(6):
        await new_lead(store)
    page = await store.list_leads(LeadQuery(), 3)
    assert page.next_cursor is not None
    last = await store.list_leads(LeadQuery(), 3, page.next_cursor)
    assert len(last.items) == 3
    if last.next_cursor is not None:
        empty = await store.list_leads(LeadQuery(), 3, last.next_cursor)
        assert empty.items == [] and empty.next_cursor is None


async def test_text_search_subject_name_and_identities(store: Store) -> None:
    olena = await store.create_contact(
        contact(
            email("olena.koval@example.com"),
            Identity(IdentityKind.PHONE, "+380501112233"),
            name="Олена Коваль",
        )
    )
    ivan = await store.create_contact(contact(email("ivan@example.org"), name="Іван Франко"))
    by_subject = await new_lead(store, ivan.id, subject="Не працює БОЙЛЕР у квартирі")
    by_name = await new_lead(store, olena.id, subject="Питання щодо рахунку")
    other = await new_lead(store, ivan.id, subject="Delivery question, 50% off?")

    assert await numbers(store, LeadQuery(text="бойлер")) == [by_subject.number]  # Cyrillic, any case
    assert await numbers(store, LeadQuery(text="Бойлер")) == [by_subject.number]
    assert await numbers(store, LeadQuery(text="коваль")) == [by_name.number]
    assert await numbers(store, LeadQuery(text="ОЛЕНА")) == [by_name.number]
    assert await numbers(store, LeadQuery(text="olena.koval@")) == [by_name.number]
    assert await numbers(store, LeadQuery(text="50111")) == [by_name.number]
    assert await numbers(store, LeadQuery(text="DELIVERY")) == [other.number]
    assert await numbers(store, LeadQuery(text="Іван")) == [other.number, by_subject.number]
    # Search text is literal: pattern characters match themselves only.
    assert await numbers(store, LeadQuery(text="50%")) == [other.number]
    assert await numbers(store, LeadQuery(text="%")) == [other.number]
    assert await numbers(store, LeadQuery(text="_")) == []
    assert await numbers(store, LeadQuery(text=".*")) == []
    assert await numbers(store, LeadQuery(text="немає такого")) == []
    # Text combines with the other filters.
    assert (
        await numbers(store, LeadQuery(text="Іван", contact_id=ivan.id, kind=LeadKind.SERVICE_REQUEST)) == []
    )


async def test_filters_follow_updates(store: Store) -> None:
    lead = await new_lead(store)
    await store.update_lead(lead.number, LeadChanges(assignee="olena", status=LeadStatus.OPEN))
    assert await numbers(store, LeadQuery(assignee="olena", statuses=(LeadStatus.OPEN,))) == [lead.number]
    assert await numbers(store, LeadQuery(unassigned=True)) == []


async def test_due_order_puts_the_soonest_due_first_before_the_limit(store: Store) -> None:
    active = (LeadStatus.NEW, LeadStatus.OPEN, LeadStatus.WAITING_CUSTOMER)
    # Created oldest-due last, so "newest first" and "soonest due first" disagree.
    late = [
        await new_lead(store, first_response_due=at(hours=10 - i), updated_at=at(minutes=i)) for i in range(6)
    ]
    answered_old = await new_lead(
        store, first_response_due=at(hours=-5), first_response_at=at(hours=-6), updated_at=at(minutes=1)
    )
    answered_new = await new_lead(
        store, first_response_due=at(hours=-5), first_response_at=at(hours=-6), updated_at=at(minutes=9)
    )
    no_due = await new_lead(store, updated_at=at(minutes=5))
    await new_lead(store, status=LeadStatus.RESOLVED, first_response_due=at(hours=-20))
    query = LeadQuery(statuses=active, order="due")

    assert await numbers(store, query, 3) == [late[5].number, late[4].number, late[3].number]
    assert await numbers(store, query, 20) == [
        *(lead.number for lead in reversed(late)),
        answered_new.number,
        no_due.number,
        answered_old.number,
    ]
    assert await numbers(store, LeadQuery(statuses=active, order="due", assignee="nobody"), 5) == []
    assert await store.count_leads(query) == 9
    assert await store.count_leads(LeadQuery()) == 10
    assert await store.count_leads(LeadQuery(statuses=(LeadStatus.RESOLVED,))) == 1
    page = await store.list_leads(query, 3)
    assert (
        page.next_cursor is not None and page.prev_cursor is None
    )  # pages: tests/contract/test_lead_pages.py


async def owes_next_response(store: Store, number: int, due_hours: float) -> None:
    """The lead was answered, then the customer wrote again: a next response is owed by then."""
    await store.update_lead(
        number,
        LeadChanges(first_response_at=at(hours=-8), status=LeadStatus.WAITING_CUSTOMER, clear_sla=True),
    )
    await store.update_lead(
        number,
        LeadChanges(
            status=LeadStatus.OPEN,
            sla_target="next_response",
            sla_started_at=at(hours=due_hours - 1),
            sla_due=at(hours=due_hours),
            sla_warn_due=at(hours=due_hours - 0.2),
            updated_at=at(minutes=1),
        ),
    )


async def test_due_order_sorts_a_lead_owed_a_next_response_by_its_due_time(store: Store) -> None:
    first = [await new_lead(store, first_response_due=at(hours=h), updated_at=at(minutes=3)) for h in (1, 3)]
    again = await new_lead(store, first_response_due=at(hours=-9), updated_at=at(minutes=2))
    await owes_next_response(store, again.number, 2)
    answered = await new_lead(store, first_response_due=at(hours=-9), updated_at=at(minutes=9))
    await store.update_lead(
        answered.number,
        LeadChanges(first_response_at=at(hours=-10), clear_sla=True, updated_at=at(minutes=9)),
    )
    query = LeadQuery(statuses=(LeadStatus.NEW, LeadStatus.OPEN, LeadStatus.WAITING_CUSTOMER), order="due")
    # Owed leads by their running target's due time (the next response's 2 h between the first
    # responses' 1 h and 3 h), then the one owed nothing, by update time.
    expected = [first[0].number, again.number, first[1].number, answered.number]
    assert await numbers(store, query) == expected
    assert await all_pages(store, query, 1) == expected
