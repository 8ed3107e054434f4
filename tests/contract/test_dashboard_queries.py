"""Contract: the dashboard's store queries (KPI aggregation, erasure, team and gauge counts)."""

from __future__ import annotations

import statistics
from dataclasses import replace
from datetime import timedelta

import pytest

from hub.domain import Attachment, Direction, Event, LeadKind, LeadStatus, Message
from storage.base import ContactMissing, KpiQuery, KpiRow, LeadChanges, LeadQuery, Store
from tests.contract.builders import T0, at, contact, email, message, new_lead, outbound


async def _lead_answered_after(store: Store, seconds: float | None, **kw) -> int:
    created = kw.pop("created_at", T0)
    lead = await new_lead(
        store,
        created_at=created,
        first_response_due=created + timedelta(hours=4),
        warn_due=created + timedelta(hours=3),
        **kw,
    )
    if seconds is not None:
        await store.update_lead(
            lead.number, LeadChanges(first_response_at=created + timedelta(seconds=seconds))
        )
    return lead.number


async def test_kpi_rows_count_time_and_percentiles(store: Store) -> None:
    delays = [60, 600, 1800, 3600, 7200, 18000]  # the last one is past the 4 h target
    for i, delay in enumerate(delays):
        await _lead_answered_after(
            store, delay, created_at=at(minutes=i), assignee="olena" if i % 2 else "taras"
        )
    never = await _lead_answered_after(store, None, created_at=at(minutes=30), kind=LeadKind.SERVICE_REQUEST)
    await store.claim_due_breaches(at(hours=5), 10)  # `never` breaches
    await store.update_lead(never, LeadChanges(status=LeadStatus.RESOLVED, resolved_at=at(hours=6)))
    await _lead_answered_after(store, 60, created_at=at(hours=-48))  # outside the period

    period = KpiQuery(at(), at(hours=24))
    (row,) = await store.kpi_rows(period)
    assert (row.received, row.responded, row.within_target, row.breached, row.resolved) == (7, 6, 5, 1, 1)
    assert row.frt_mean == pytest.approx(statistics.mean(delays))
    assert row.frt_median == pytest.approx(statistics.median(delays))
    assert row.frt_p90 == pytest.approx(statistics.quantiles(delays, n=10, method="inclusive")[8])
    assert row.resolution_mean == pytest.approx(6 * 3600 - 30 * 60)
    assert row.resolution_median == pytest.approx(6 * 3600 - 30 * 60)

    by_assignee = {
        r.group: r for r in await store.kpi_rows(KpiQuery(at(), at(hours=24), group_by="assignee"))
    }
    assert set(by_assignee) == {None, "olena", "taras"}
    assert by_assignee["olena"].frt_median == pytest.approx(statistics.median(delays[1::2]))
    assert by_assignee["taras"].received == 3
    by_kind = {
        r.group: r.received for r in await store.kpi_rows(KpiQuery(at(), at(hours=24), group_by="kind"))
    }
    assert by_kind == {"message": 6, "service_request": 1}
    days = await store.kpi_rows(KpiQuery(at(), at(hours=24), group_by="day", day_zone="Europe/Kyiv"))
    assert [(d.group, d.received) for d in days] == [("2026-03-02", 7)]
    only = await store.kpi_rows(KpiQuery(at(), at(hours=24), kind=LeadKind.SERVICE_REQUEST))
    assert [(r.received, r.breached, r.responded) for r in only] == [(1, 1, 0)]
    assert await store.kpi_rows(KpiQuery(at(hours=-10), at(hours=-9))) == []


async def test_erase_contact_removes_personal_data_and_keeps_anonymous_leads(store: Store) -> None:
    person = await store.create_contact(contact(email("erase.me@example.com"), name="Erase Me"))
    other = await store.create_contact(contact(email("keep@example.com"), name="Keep"))
    lead = await new_lead(store, person.id, subject="about Erase Me")
    kept = await new_lead(store, other.id)
    await store.add_message(message(lead.number, text="my address is erase.me@example.com"))
    await store.add_message(message(kept.number, external_id="keep-1"))
    reply, item = outbound(lead.number)
    await store.add_outbound(reply, item)
    await store.add_refs(lead.number, ["<mail-1@example.com>"])

    assert await store.erase_contact(person.id) == [lead.number]

    assert await store.get_contact(person.id) is None
    assert await store.find_contact(email("erase.me@example.com")) is None
    assert await store.list_messages(lead.number) == []
    assert await store.outbox_get(item.id) is None
    assert await store.find_lead_by_refs(["<mail-1@example.com>"]) is None
    anonymous = await store.get_lead(lead.number)
    assert anonymous is not None and anonymous.subject == "" and "@" not in anonymous.origin_external_id
    assert len(await store.list_messages(kept.number)) == 1
    assert await store.get_contact(other.id) is not None
    assert await store.erase_contact(person.id) == [lead.number]  # a second run changes nothing


async def test_attachment_refs_in_use_names_only_refs_a_remaining_message_still_holds(store: Store) -> None:
    shared, unique, gone = ("sha256:" + c * 64 for c in "abc")
    person = await store.create_contact(contact(email("files@example.com"), name="Files"))
    other = await store.create_contact(contact(email("other@example.com"), name="Other"))
    lead = await new_lead(store, person.id)
    kept = await new_lead(store, other.id)
    photo = Attachment("photo.jpg", "image/jpeg", 10, ref=shared)
    await store.add_message(
        message(lead.number, attachments=[photo, Attachment("invoice.pdf", "application/pdf", 5, ref=unique)])
    )
    await store.add_message(message(kept.number, external_id="other-1", attachments=[photo]))
    await store.add_message(message(kept.number, external_id="other-2"))

    assert await store.attachment_refs_in_use([shared, unique, gone]) == {shared, unique}
    await store.erase_contact(person.id)
    assert await store.attachment_refs_in_use([shared, unique, gone]) == {shared}
    assert await store.attachment_refs_in_use([]) == set()
    many = [f"sha256:{n:064x}" for n in range(1200)]  # more than one query's worth of parameters
    assert await store.attachment_refs_in_use([*many, shared]) == {shared}


async def test_erase_contact_removes_quoted_texts_from_its_leads_events(store: Store) -> None:
    person = await store.create_contact(contact(email("edits@example.com"), name="Edits"))
    other = await store.create_contact(contact(email("other@example.com"), name="Other"))
    lead = await new_lead(store, person.id)
    kept = await new_lead(store, other.id)
    edit = {"message_id": "m-1", "before": "рахунок 4441", "after": "рахунок 5552"}
    await store.append_events(
        [Event("message.edited", T0, lead.number, edit), Event("message.edited", T0, kept.number, edit)]
    )
    await store.erase_contact(person.id)
    (scrubbed,) = await store.list_events(lead.number, ["message.edited"])
    assert scrubbed.data == {"message_id": "m-1"}  # the ids stay: the audit trail still says what happened
    (untouched,) = await store.list_events(kept.number, ["message.edited"])
    assert untouched.data == edit


async def test_merge_with_an_erased_contact_is_refused_and_changes_nothing(store: Store) -> None:
    erased = await store.create_contact(contact(email("erased@example.com"), name="Erased"))
    other = await store.create_contact(contact(email("other@example.com"), name="Other"))
    erased_lead = await new_lead(store, erased.id)
    other_lead = await new_lead(store, other.id)
    await store.erase_contact(erased.id)

    # Either way round: the erased contact can neither keep nor be merged away.
    for keep_id, merge_id in ((erased.id, other.id), (other.id, erased.id)):
        with pytest.raises(ContactMissing) as refused:
            await store.merge_contacts(keep_id, merge_id)
        assert refused.value.contact_id == erased.id

    intact = await store.get_contact(other.id)
    assert intact is not None and intact.identities == other.identities
    found = await store.find_contact(email("other@example.com"))
    assert found is not None and found.id == other.id
    assert (await store.get_lead(other_lead.number)).contact_id == other.id  # type: ignore[union-attr]
    assert (await store.get_lead(erased_lead.number)).contact_id == erased.id  # type: ignore[union-attr]
    with pytest.raises(ContactMissing):
        await store.merge_contacts(other.id, "never-created")


async def test_handled_since_and_active_counts(store: Store) -> None:
    a = await new_lead(store, assignee="olena", team="support", status=LeadStatus.OPEN)
    b = await new_lead(
        store, assignee="olena", team="support", status=LeadStatus.OPEN, breached_at=at(hours=4)
    )
    c = await new_lead(store, assignee="taras", team="service", status=LeadStatus.OPEN)
    await new_lead(store, assignee="taras", team="service", status=LeadStatus.RESOLVED)
    await store.update_lead(a.number, LeadChanges(first_response_at=at(hours=2)))
    await store.update_lead(b.number, LeadChanges(status=LeadStatus.RESOLVED, resolved_at=at(hours=5)))
    await store.update_lead(c.number, LeadChanges(first_response_at=at(hours=-30)))
    assert await store.handled_since(at(hours=1)) == {"olena": 2}
    counts = sorted(await store.active_counts(), key=lambda r: (r[0] or "", r[1]))
    assert counts == [("service", False, 1), ("support", False, 1)]


async def test_handled_since_credits_the_first_replys_author_not_whoever_holds_the_lead_now(
    store: Store,
) -> None:
    def reply(number: int, author: str, minutes: int) -> Message:
        return message(
            number, direction=Direction.OUT, channel="email", author=author, created_at=at(minutes)
        )

    # Olena answered, then the lead went to Taras.
    moved = await new_lead(store, assignee="olena", status=LeadStatus.OPEN)
    await store.add_outbound(reply(moved.number, "auto", 61), None)  # an acknowledgement answers nothing
    await store.add_outbound(reply(moved.number, "olena", 62), None)
    await store.add_outbound(reply(moved.number, "taras", 70), None)
    await store.update_lead(moved.number, LeadChanges(first_response_at=at(minutes=62), assignee="taras"))
    # Answered from the dashboard (the author is the manager's name), still Taras's.
    named = await new_lead(store, assignee="taras", status=LeadStatus.OPEN)
    await store.add_outbound(reply(named.number, "Тарас Бондар", 63), None)
    await store.update_lead(named.number, LeadChanges(first_response_at=at(minutes=63)))
    # Answered yesterday by Olena, resolved today while Taras holds it: Taras's.
    old = await new_lead(store, assignee="taras", status=LeadStatus.OPEN)
    await store.add_outbound(reply(old.number, "olena", -600), None)
    await store.update_lead(
        old.number,
        LeadChanges(
            first_response_at=at(minutes=-600), status=LeadStatus.RESOLVED, resolved_at=at(minutes=90)
        ),
    )
    # Answered today, now unassigned: still its author's.
    handed_back = await new_lead(store, assignee="olena", status=LeadStatus.OPEN)
    await store.add_outbound(reply(handed_back.number, "olena", 64), None)
    await store.update_lead(
        handed_back.number, LeadChanges(first_response_at=at(minutes=64), clear_assignee=True)
    )
    assert await store.handled_since(at(hours=1)) == {"olena": 2, "Тарас Бондар": 1, "taras": 1}


async def test_kpi_breakdowns_equal_kpi_rows_per_grouping(store: Store) -> None:
    delays = [60, 600, 1800, 3600, 7200, 18000, None]
    for i, delay in enumerate(delays):
        await _lead_answered_after(
            store,
            delay,
            created_at=at(hours=3 * i),
            assignee=None if i == 6 else ("olena" if i % 2 else "taras"),
            kind=LeadKind.SERVICE_REQUEST if i % 3 == 0 else LeadKind.MESSAGE,
        )
    period = KpiQuery(at(), at(hours=48), day_zone="Europe/Kyiv")
    groupings = (None, "team", "assignee", "channel", "kind", "day")
    tables = await store.kpi_breakdowns(period, groupings)
    assert set(tables) == set(groupings)
    for grouping in groupings:
        expected = await store.kpi_rows(replace(period, group_by=grouping))
        got = tables[grouping]
        assert [r.group for r in got] == [r.group for r in expected], grouping
        for mine, theirs in zip(got, expected, strict=True):
            assert _same(mine, theirs), (grouping, mine, theirs)
    assert await store.kpi_breakdowns(KpiQuery(at(hours=-10), at(hours=-9)), (None,)) == {None: []}
    assert await store.kpi_breakdowns(KpiQuery(at(hours=-10), at(hours=-9)), (None, "team")) == {
        None: [],
        "team": [],
    }


def _same(a: KpiRow, b: KpiRow) -> bool:
    """Equal counts, and times equal up to float rounding (sums are added in another order)."""
    for name in KpiRow.__dataclass_fields__:
        x, y = getattr(a, name), getattr(b, name)
        if isinstance(x, float) and isinstance(y, float):
            if x != pytest.approx(y):
                return False
        elif x != y:
            return False
    return True


async def test_due_order_puts_only_active_unanswered_leads_first(store: Store) -> None:
    # A queue of every status: a lead resolved or closed without a reply owes nothing any more.
    owed = [await new_lead(store, first_response_due=at(hours=h), updated_at=at(minutes=1)) for h in (3, 1)]
    resolved = await new_lead(
        store, status=LeadStatus.RESOLVED, first_response_due=at(hours=-30), updated_at=at(minutes=9)
    )
    closed = await new_lead(
        store, status=LeadStatus.CLOSED, first_response_due=at(hours=-40), updated_at=at(minutes=2)
    )
    answered = await new_lead(
        store, first_response_due=at(hours=-5), first_response_at=at(hours=-6), updated_at=at(minutes=5)
    )
    everything = LeadQuery(order="due")
    page = await store.list_leads(everything, 10)
    assert [lead.number for lead in page.items] == [
        owed[1].number,
        owed[0].number,
        resolved.number,
        answered.number,
        closed.number,
    ]
    # The inactive ones never take an owed lead's place under the limit.
    assert [lead.number for lead in (await store.list_leads(everything, 2)).items] == [
        owed[1].number,
        owed[0].number,
    ]
    only_resolved = LeadQuery(statuses=(LeadStatus.RESOLVED, LeadStatus.CLOSED), order="due")
    assert [lead.number for lead in (await store.list_leads(only_resolved, 10)).items] == [
        resolved.number,
        closed.number,
    ]


async def test_a_next_response_breach_is_a_breach_for_the_listings(store: Store) -> None:
    """The breaches page lists `breached=True`: a claimed next-response breach is one, open
    while owed and after its answer, in both orders and in the count."""
    lead = await new_lead(store, status=LeadStatus.OPEN, first_response_due=at(hours=4), warn_due=at(hours=3))
    calm = await new_lead(store, status=LeadStatus.OPEN, first_response_due=at(hours=4))
    for number in (lead.number, calm.number):
        await store.update_lead(
            number,
            LeadChanges(first_response_at=at(hours=1), status=LeadStatus.WAITING_CUSTOMER, clear_sla=True),
        )
    # The customer wrote again: a next response is owed within 1 h and nobody gives it.
    await store.update_lead(
        lead.number,
        LeadChanges(
            status=LeadStatus.OPEN,
            sla_target="next_response",
            sla_started_at=at(hours=2),
            sla_due=at(hours=3),
            sla_warn_due=None,
            updated_at=at(hours=2),
        ),
    )
    claims = await store.claim_sla_marks(at(hours=3, minutes=1), 10)
    assert [(c.lead.number, c.target, c.level) for c in claims] == [(lead.number, "next_response", "breach")]
    active = (LeadStatus.NEW, LeadStatus.OPEN, LeadStatus.WAITING_CUSTOMER)
    for order in ("due", "newest"):
        breached = await store.list_leads(LeadQuery(statuses=active, breached=True, order=order), 10)
        assert [found.number for found in breached.items] == [lead.number]
        others = await store.list_leads(LeadQuery(statuses=active, breached=False, order=order), 10)
        assert [found.number for found in others.items] == [calm.number]
    assert await store.count_leads(LeadQuery(statuses=active, breached=True)) == 1
    # Answered late and resolved: a past breach still.
    await store.update_lead(
        lead.number,
        LeadChanges(
            status=LeadStatus.RESOLVED, resolved_at=at(hours=5), clear_sla=True, updated_at=at(hours=5)
        ),
    )
    past = (LeadStatus.RESOLVED, LeadStatus.CLOSED)
    page = await store.list_leads(LeadQuery(statuses=past, breached=True), 10)
    assert [found.number for found in page.items] == [lead.number]
    assert await store.count_leads(LeadQuery(statuses=active, breached=True)) == 0
