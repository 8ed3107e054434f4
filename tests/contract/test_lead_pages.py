"""Store contract: keyset pages of lead listings, forward and back, in both orders."""

from __future__ import annotations

from datetime import timedelta

import pytest

from hub.domain import ACTIVE_STATUSES, LeadStatus
from storage.base import LeadChanges, LeadQuery, Store
from tests.contract.builders import at, new_lead

ACTIVE = tuple(sorted(ACTIVE_STATUSES))


async def forward(store: Store, query: LeadQuery, limit: int) -> tuple[list[list[int]], list[str]]:
    """Every page from the first by next_cursor, and the cursors that led to pages 2..n."""
    pages: list[list[int]] = []
    cursors: list[str] = []
    cursor: str | None = None
    for _ in range(100):
        page = await store.list_leads(query, limit, cursor)
        assert len(page.items) <= limit
        assert (page.prev_cursor is None) == (cursor is None)
        pages.append([lead.number for lead in page.items])
        if page.next_cursor is None:
            return pages, cursors
        cursor = page.next_cursor
        cursors.append(cursor)
    raise AssertionError("paging did not end")


async def backward(store: Store, query: LeadQuery, limit: int, cursor: str) -> list[list[int]]:
    """Pages by prev_cursor from the page `cursor` leads to, back to the first one."""
    page = await store.list_leads(query, limit, cursor)
    pages = [[lead.number for lead in page.items]]
    for _ in range(100):
        if page.prev_cursor is None:
            return list(reversed(pages))
        page = await store.list_leads(query, limit, page.prev_cursor)
        pages.append([lead.number for lead in page.items])
    raise AssertionError("paging back did not end")


async def mixed_leads(store: Store) -> list[int]:
    """Leads of every part of the due order, with ties on the due and update times; returns
    their numbers in due order for an every-status query."""
    owed = [
        await new_lead(store, first_response_due=at(hours=h), updated_at=at(minutes=i))
        for i, h in enumerate((5, -2, 5, 1, -2, 3))
    ]
    answered = [
        await new_lead(
            store,
            status=LeadStatus.OPEN,
            first_response_due=at(hours=-9),
            first_response_at=at(hours=-10),
            updated_at=at(minutes=m),
        )
        for m in (7, 3, 7)
    ]
    no_due = await new_lead(store, updated_at=at(minutes=4))
    resolved = await new_lead(
        store, status=LeadStatus.RESOLVED, first_response_due=at(hours=-30), updated_at=at(minutes=5)
    )
    closed = await new_lead(store, status=LeadStatus.CLOSED, updated_at=at(minutes=7))
    by_due = sorted(owed, key=lambda lead: (lead.first_response_due, lead.number))
    rest = sorted(
        [*answered, no_due, resolved, closed], key=lambda lead: (lead.updated_at, lead.number), reverse=True
    )
    return [lead.number for lead in [*by_due, *rest]]


@pytest.mark.parametrize("limit", [1, 2, 3, 5, 12, 13, 20])
async def test_due_order_pages_cover_every_lead_once_forward_and_back(store: Store, limit: int) -> None:
    expected = await mixed_leads(store)
    query = LeadQuery(order="due")
    assert [lead.number for lead in (await store.list_leads(query, 100)).items] == expected
    pages, cursors = await forward(store, query, limit)
    assert [n for page in pages for n in page] == expected
    assert all(len(page) == limit for page in pages[:-1])
    if cursors:
        assert await backward(store, query, limit, cursors[-1]) == pages


async def test_due_order_pages_keep_the_filters(store: Store) -> None:
    await mixed_leads(store)
    for query in (
        LeadQuery(statuses=ACTIVE, order="due"),
        LeadQuery(statuses=(LeadStatus.RESOLVED, LeadStatus.CLOSED), order="due"),
        LeadQuery(statuses=(LeadStatus.OPEN,), order="due"),
        LeadQuery(statuses=ACTIVE, breached=False, order="due"),
    ):
        whole = [lead.number for lead in (await store.list_leads(query, 100)).items]
        pages, cursors = await forward(store, query, 2)
        assert [n for page in pages for n in page] == whole, query
        assert len(whole) == await store.count_leads(query)
        if cursors:
            assert await backward(store, query, 2, cursors[-1]) == pages


async def test_a_lead_that_changes_between_page_loads_shows_on_no_two_adjacent_pages(store: Store) -> None:
    owed = [await new_lead(store, first_response_due=at(hours=h)) for h in range(1, 7)]
    query = LeadQuery(statuses=ACTIVE, order="due")
    first = await store.list_leads(query, 3)
    assert [lead.number for lead in first.items] == [lead.number for lead in owed[:3]]
    # Meanwhile the first page's first lead is answered (it moves behind every owed one) and a
    # more urgent lead arrives: an offset would show page 1's last lead again on page 2.
    await store.update_lead(
        owed[0].number, LeadChanges(first_response_at=at(minutes=1), clear_sla=True, updated_at=at(hours=1))
    )
    urgent = await new_lead(store, first_response_due=at(hours=-1))
    assert first.next_cursor is not None
    second = await store.list_leads(query, 3, first.next_cursor)
    assert [lead.number for lead in second.items] == [lead.number for lead in owed[3:]]
    # Back from page 2: the page before it as it is now (the new lead first).
    assert second.prev_cursor is not None
    back = await store.list_leads(query, 3, second.prev_cursor)
    assert [lead.number for lead in back.items] == [urgent.number, owed[1].number, owed[2].number]
    assert back.prev_cursor is None  # nothing is before it: that is the first page


async def test_a_previous_page_with_leads_gone_before_it_is_the_first_page(store: Store) -> None:
    leads = [await new_lead(store, first_response_due=at(hours=h)) for h in range(1, 6)]
    query = LeadQuery(statuses=ACTIVE, order="due")
    first = await store.list_leads(query, 2)
    assert first.next_cursor is not None
    second = await store.list_leads(query, 2, first.next_cursor)
    await store.update_lead(leads[0].number, LeadChanges(status=LeadStatus.RESOLVED, updated_at=at(hours=2)))
    assert second.prev_cursor is not None
    back = await store.list_leads(query, 2, second.prev_cursor)
    # One lead is left before page 2: "previous" shows a full first page, not a page of one.
    assert [lead.number for lead in back.items] == [leads[1].number, leads[2].number]
    assert back.prev_cursor is None
    assert back.next_cursor is not None


async def test_newest_order_pages_back_too(store: Store) -> None:
    numbers = [(await new_lead(store)).number for _ in range(7)]
    query = LeadQuery()
    pages, cursors = await forward(store, query, 3)
    assert pages == [numbers[6:3:-1], numbers[3:0:-1], numbers[:1]]
    assert cursors[0] == str(numbers[4])  # the API's cursors are still lead numbers
    assert await backward(store, query, 3, cursors[-1]) == pages


@pytest.mark.parametrize("order", ["newest", "due"])
@pytest.mark.parametrize(
    "cursor",
    ["", "x", "b", "-1", "1.5", "ao_1", "ao1_", "aonan_1", "aoinf_1", "axx_1", "zo1_1", "ao1_x", "9" * 40],
)
async def test_a_cursor_the_store_did_not_make_is_a_value_error(
    store: Store, order: str, cursor: str
) -> None:
    await new_lead(store, first_response_due=at(hours=1))
    query = LeadQuery(order="due" if order == "due" else "newest")
    with pytest.raises(ValueError, match="cursor"):
        await store.list_leads(query, 5, cursor)


async def test_or_unassigned_lists_a_managers_own_and_the_unassigned_leads(store: Store) -> None:
    own = await new_lead(store, assignee="olena", first_response_due=at(hours=2))
    free = await new_lead(store, first_response_due=at(hours=1))
    await new_lead(store, assignee="taras", first_response_due=at(hours=0))
    query = LeadQuery(assignee="olena", or_unassigned=True, order="due")
    assert [lead.number for lead in (await store.list_leads(query, 10)).items] == [free.number, own.number]
    assert await store.count_leads(query) == 2


async def test_due_order_pages_through_next_responses_owed_forward_and_back(store: Store) -> None:
    """Leads owed a next response sit in the owed part by its due time, and the keyset pages
    (built on that due time) meet every lead once in both directions."""
    leads = [
        await new_lead(store, first_response_due=at(hours=h), updated_at=at(minutes=h)) for h in range(8)
    ]
    # Odd ones were answered and written to again: owed a next response due within 0-2 h, among
    # the first responses' due times (0-6 h), ties with them and with each other included.
    for lead in leads[1::2]:
        await store.update_lead(lead.number, LeadChanges(first_response_at=at(hours=-20), clear_sla=True))
        due = at(hours=lead.number % 3)
        await store.update_lead(
            lead.number,
            LeadChanges(
                status=LeadStatus.OPEN,
                sla_target="next_response",
                sla_started_at=due - timedelta(hours=1),
                sla_due=due,
                sla_warn_due=None,
                updated_at=at(minutes=30),
            ),
        )
    done = await new_lead(store, first_response_due=at(hours=-30), updated_at=at(minutes=50))
    await store.update_lead(done.number, LeadChanges(first_response_at=at(hours=-31), clear_sla=True))
    current = [await store.get_lead(lead.number) for lead in leads]
    by_due = sorted(current, key=lambda lead: (lead.sla_due, lead.number))  # type: ignore[union-attr]
    expected = [lead.number for lead in by_due if lead is not None] + [done.number]
    query = LeadQuery(statuses=ACTIVE, order="due")
    pages, cursors = await forward(store, query, 3)
    assert [n for page in pages for n in page] == expected
    assert await backward(store, query, 3, cursors[-1]) == pages
