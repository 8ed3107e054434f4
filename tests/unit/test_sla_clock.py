"""SLA targets, pause/resume and the sweep, driven with time as a parameter on a real SQLite file."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import replace
from datetime import UTC, datetime, timedelta
from itertools import count
from typing import Any

import pytest

from hub.app import Hub
from hub.config import ConfigError, Settings
from hub.domain import Event, Identity, IdentityKind, Inbound, Lead, LeadKind, LeadStatus, ThreadHints
from hub.intake import IntakeResult
from hub.sla import retarget_after_config_change

T0 = datetime(2026, 11, 23, 8, 0, tzinfo=UTC)  # a Monday, 10:00 in Kyiv
_ids = count(1)


def inbound(email: str, at: datetime, kind: LeadKind = LeadKind.MESSAGE, text: str = "Привіт") -> Inbound:
    return Inbound(
        channel="webform",
        external_id=f"ext-{next(_ids)}",
        sender=Identity(IdentityKind.EMAIL, email),
        text=text,
        received_at=at,
        kind_hint=kind,
    )


async def _events(hub: Hub, number: int, *types: str) -> list[Event]:
    return await hub.store.list_events(lead_number=number, types=list(types))


async def _lead(hub: Hub, number: int) -> Lead:
    lead = await hub.store.get_lead(number)
    assert lead is not None
    return lead


POLICIES = {
    "message": {
        "first_response": "4h",
        "next_response": {"after": "2h", "warn_at": 0.5},
        "resolution": "8h",
        "teams": {"service": {"first_response": "1h"}},
        "priorities": {2: {"first_response": "30m"}},
    },
    "service_request": {"first_response": "12h"},
}


async def test_existing_config_keys_still_work(make_hub: Callable[..., Any]) -> None:
    policies = {"message": {"first_response": "4h"}, "service_request": {"first_response": "12h"}}
    hub: Hub = await make_hub(sla={"check_every": "5s", "policies": policies})
    result: IntakeResult = await hub.intake.accept(inbound("a@example.com", T0), now=T0)
    assert result.lead.first_response_due == T0 + timedelta(hours=4)
    assert result.lead.sla_target == "first_response"
    assert result.lead.resolution_due is None
    await hub.store.close()


async def test_business_hours_calendar_from_config(make_hub: Callable[..., Any]) -> None:
    hub: Hub = await make_hub(
        sla={"calendar": {"timezone": "Europe/Kyiv", "hours": {"mon-fri": ["09:00-18:00"]}}}
    )
    friday_1730 = datetime(2026, 11, 20, 15, 30, tzinfo=UTC)
    result = await hub.intake.accept(inbound("b@example.com", friday_1730), now=friday_1730)
    assert result.lead.first_response_due == datetime(2026, 11, 23, 10, 30, tzinfo=UTC)  # Mon 12:30 Kyiv
    await hub.store.close()


def test_bad_calendar_stops_the_hub_naming_the_key(settings_factory: Callable[..., Settings]) -> None:
    with pytest.raises(ConfigError, match=r"^sla\.calendar\.hours\.mon-fri"):
        Hub(settings_factory(sla={"calendar": {"hours": {"mon-fri": ["25:00-26:00"]}}}))


async def test_team_and_priority_overrides_move_the_due_time(make_hub: Callable[..., Any]) -> None:
    hub: Hub = await make_hub(
        sla={"policies": POLICIES},
        routing={
            "default_team": "support",
            "rules": [
                {"match": {"keywords": ["котел"]}, "team": "service"},
                {"match": {"keywords": ["терміново"]}, "team": "support", "priority": 2},
            ],
        },
    )
    service = await hub.intake.accept(inbound("c@example.com", T0, text="Зламався КОТЕЛ"), now=T0)
    assert service.lead.team == "service"
    assert service.lead.first_response_due == T0 + timedelta(hours=1)
    urgent = await hub.intake.accept(inbound("d@example.com", T0, text="Терміново!"), now=T0)
    assert urgent.lead.priority == 2
    assert urgent.lead.sla_due == T0 + timedelta(minutes=30)
    await hub.store.close()


async def test_pause_while_waiting_for_customer_and_resume(make_hub: Callable[..., Any]) -> None:
    hub: Hub = await make_hub(sla={"policies": POLICIES})
    lead = (await hub.intake.accept(inbound("e@example.com", T0), now=T0)).lead
    assert lead.resolution_due == T0 + timedelta(hours=8)
    # Reply after 1h: first response met, lead waits for the customer, resolution paused.
    await hub.replies.record_reply(lead.number, "Уточніть, будь ласка", "olena", now=T0 + timedelta(hours=1))
    lead = await _lead(hub, lead.number)
    assert lead.status == LeadStatus.WAITING_CUSTOMER
    assert lead.sla_paused_at == T0 + timedelta(hours=1)
    assert lead.sla_target is None
    # Nothing fires while paused, however long the customer takes.
    assert await hub.sweeper.sweep(T0 + timedelta(days=3)) == (0, 0)
    # The customer answers 3 days later: 7h of resolution time remain, next response owed in 2h.
    back = T0 + timedelta(days=3)
    await hub.intake.accept(inbound("e@example.com", back, text="Ось деталі"), now=back)
    lead = await _lead(hub, lead.number)
    assert lead.status == LeadStatus.OPEN
    assert lead.sla_paused_at is None
    assert lead.resolution_due == back + timedelta(hours=7)
    assert lead.sla_target == "next_response"
    assert lead.sla_due == back + timedelta(hours=2)
    assert lead.sla_warn_due == back + timedelta(hours=1)
    # Warning then breach of the next response, each once.
    assert await hub.sweeper.sweep(back + timedelta(hours=1, seconds=1)) == (1, 0)
    assert await hub.sweeper.sweep(back + timedelta(hours=2, seconds=1)) == (0, 1)
    assert await hub.sweeper.sweep(back + timedelta(hours=2, seconds=2)) == (0, 0)
    breaches = await _events(hub, lead.number, "sla.breached")
    assert [e.data["target"] for e in breaches] == ["next_response"]
    # Resolution: warned at 80% of 8h (6.4h in; 5.4h after the resume), breached at 8h.
    assert await hub.sweeper.sweep(back + timedelta(hours=7, seconds=1)) == (1, 1)
    targets = [
        (e.type, e.data["target"]) for e in await _events(hub, lead.number, "sla.warning", "sla.breached")
    ]
    assert targets.count(("sla.breached", "resolution")) == 1
    assert targets.count(("sla.warning", "resolution")) == 1
    await hub.store.close()


async def test_an_answered_lead_raises_no_late_alert(make_hub: Callable[..., Any]) -> None:
    hub: Hub = await make_hub()
    lead = (await hub.intake.accept(inbound("f@example.com", T0), now=T0)).lead
    assert await hub.sweeper.sweep(T0 + timedelta(hours=3, minutes=30)) == (1, 0)
    # Answered after the due time but before the next sweep: nobody is paged for a done job.
    late = T0 + timedelta(hours=4, seconds=10)
    await hub.replies.record_reply(lead.number, "Вибачте за затримку", "taras", now=late)
    assert await hub.sweeper.sweep(late + timedelta(seconds=1)) == (0, 0)
    assert await hub.sweeper.sweep(late + timedelta(days=1)) == (0, 0)
    await hub.store.close()


async def test_a_resolution_mark_passed_before_a_reply_is_still_reported(
    make_hub: Callable[..., Any],
) -> None:
    hub: Hub = await make_hub(sla={"policies": POLICIES})
    lead = (await hub.intake.accept(inbound("lost@example.com", T0), now=T0)).lead
    assert await hub.sweeper.sweep(T0 + timedelta(hours=7)) == (2, 1)  # first response; resolution warned
    # Resolution was due at 8h; the reply lands 10 s later and the customer writes back, both
    # before the next sweep: the pause must not cancel a breach that already happened.
    await hub.replies.record_reply(lead.number, "Вибачте", "olena", now=T0 + timedelta(hours=8, seconds=10))
    back = T0 + timedelta(hours=9)
    await hub.intake.accept(inbound("lost@example.com", back, text="і?"), now=back)
    assert (await _lead(hub, lead.number)).sla_paused_at is None
    await hub.sweeper.sweep(back + timedelta(seconds=1))
    (breach,) = [
        e for e in await _events(hub, lead.number, "sla.breached") if e.data["target"] == "resolution"
    ]
    assert breach.data["due"] == (T0 + timedelta(hours=8)).isoformat()
    # Reported once, however many sweeps and replies follow.
    await hub.replies.record_reply(lead.number, "Ось", "olena", now=back + timedelta(minutes=5))
    await hub.sweeper.sweep(back + timedelta(days=10))
    breaches = await _events(hub, lead.number, "sla.breached")
    assert [e.data["target"] for e in breaches].count("resolution") == 1
    # A passed resolution warning is kept the same way; the breach still ahead is cancelled.
    other = (await hub.intake.accept(inbound("warned@example.com", T0), now=T0)).lead
    replied = T0 + timedelta(hours=7)
    await hub.replies.record_reply(other.number, "Вибачте", "olena", now=replied)
    assert await hub.sweeper.sweep(replied + timedelta(seconds=1)) == (1, 0)
    (warning,) = await _events(hub, other.number, "sla.warning")
    assert warning.data["target"] == "resolution"
    assert await hub.sweeper.sweep(replied + timedelta(days=10)) == (0, 0)
    await hub.store.close()


async def test_a_resolution_warning_passed_before_a_pause_survives_the_customer_writing_back(
    make_hub: Callable[..., Any],
) -> None:
    hub: Hub = await make_hub(sla={"policies": POLICIES})
    lead = (await hub.intake.accept(inbound("back@example.com", T0), now=T0)).lead
    assert lead.resolution_warn_due == T0 + timedelta(hours=6, minutes=24)
    # Reply after the resolution warning time, customer back before any sweep ran.
    await hub.replies.record_reply(lead.number, "Вибачте", "olena", now=T0 + timedelta(hours=7))
    back = T0 + timedelta(hours=7, minutes=30)
    await hub.intake.accept(inbound("back@example.com", back, text="Дякую, але ще питання"), now=back)
    resumed = await _lead(hub, lead.number)
    assert resumed.sla_paused_at is None and resumed.resolution_due == back + timedelta(hours=1)
    await hub.sweeper.sweep(back + timedelta(seconds=1))
    warnings = [e for e in await _events(hub, lead.number, "sla.warning") if e.data["target"] == "resolution"]
    assert [e.data["due"] for e in warnings] == [(T0 + timedelta(hours=6, minutes=24)).isoformat()]
    # Once: a later pause and resume does not arm it again.
    await hub.replies.record_reply(lead.number, "Ось", "olena", now=back + timedelta(minutes=10))
    again = back + timedelta(minutes=20)
    await hub.intake.accept(inbound("back@example.com", again, text="ще"), now=again)
    await hub.sweeper.sweep(again + timedelta(days=1))
    warnings = [e for e in await _events(hub, lead.number, "sla.warning") if e.data["target"] == "resolution"]
    assert len(warnings) == 1
    await hub.store.close()


async def test_a_paused_resolution_left_no_working_time_by_a_new_holiday_is_due_on_resume(
    make_hub: Callable[..., Any],
) -> None:
    office = {"timezone": "Europe/Kyiv", "hours": {"mon-fri": ["09:00-18:00"]}}
    policies = {
        "message": {"first_response": "4h", "resolution": "10h"},
        "service_request": {"first_response": "12h"},
    }
    before: Hub = await make_hub(sla={"calendar": office, "policies": policies})
    lead = (await before.intake.accept(inbound("holiday@example.com", T0), now=T0)).lead  # Mon 10:00 Kyiv
    assert lead.resolution_due == datetime(2026, 11, 24, 9, 0, tzinfo=UTC)  # Tue 11:00 Kyiv
    # Answered after hours on Monday: 2 working hours of resolution are left, all on Tuesday.
    await before.replies.record_reply(
        lead.number, "Дивимось", "olena", now=datetime(2026, 11, 23, 16, 30, tzinfo=UTC)
    )
    await before.store.close()
    # Tuesday is declared a day off; the customer writes back on Wednesday.
    after: Hub = await make_hub(
        sla={"calendar": {**office, "holidays": {"dates": ["2026-11-24"]}}, "policies": policies}
    )
    wednesday = datetime(2026, 11, 25, 8, 0, tzinfo=UTC)
    await retarget_after_config_change(after.store, after.sla, "b", wednesday)
    await after.intake.accept(inbound("holiday@example.com", wednesday, text="Є новини?"), now=wednesday)
    resumed = await _lead(after, lead.number)
    # No working time was left before the old due time: the resolution is due as it resumes.
    assert resumed.sla_paused_at is None and resumed.resolution_due == wednesday
    await after.sweeper.sweep(wednesday + timedelta(seconds=1))
    breaches = [
        e for e in await _events(after, lead.number, "sla.breached") if e.data["target"] == "resolution"
    ]
    assert [e.data["due"] for e in breaches] == [wednesday.isoformat()]
    await after.store.close()


async def test_kind_change_recomputes_the_running_target(make_hub: Callable[..., Any]) -> None:
    hub: Hub = await make_hub()
    lead = (await hub.intake.accept(inbound("g@example.com", T0), now=T0)).lead
    changed = await hub.actions.set_kind(
        lead.number, LeadKind.SERVICE_REQUEST, "olena", now=T0 + timedelta(hours=1)
    )
    assert changed.first_response_due == T0 + timedelta(hours=12)
    assert changed.sla_due == T0 + timedelta(hours=12)
    assert await hub.sweeper.sweep(T0 + timedelta(hours=5)) == (0, 0)
    assert await hub.sweeper.sweep(T0 + timedelta(hours=12, seconds=1)) == (1, 1)
    await hub.store.close()


async def test_breach_escalates_to_team_lead_and_reassigns(make_hub: Callable[..., Any]) -> None:
    hub: Hub = await make_hub(
        sla={
            "policies": {
                "message": {"first_response": "1h", "escalation": {"reassign": True}},
                "service_request": {"first_response": "12h"},
            }
        }
    )
    published: list[Event] = []

    async def listen(event: Event, lead: Lead | None) -> None:
        published.append(event)

    hub.bus.subscribe("test", listen)
    lead = (await hub.intake.accept(inbound("h@example.com", T0), now=T0)).lead
    first_owner = lead.assignee
    assert first_owner in {"olena", "taras"}
    await hub.sweeper.sweep(T0 + timedelta(hours=2))
    warning = next(e for e in published if e.type == "sla.warning")
    breach = next(e for e in published if e.type == "sla.breached")
    assert warning.data["notify"] == [first_owner]
    assert breach.data["notify"][0] == first_owner and "olena" in breach.data["notify"]
    lead = await _lead(hub, lead.number)
    assert lead.assignee not in (None, first_owner)
    reassigned = [e for e in published if e.type == "lead.assigned" and e.data.get("previous") == first_owner]
    assert reassigned and reassigned[0].data["reason"]["rule"] == "sla breach: first_response"
    await hub.store.close()


async def test_policy_change_recomputes_due_times_once(make_hub: Callable[..., Any]) -> None:
    before: Hub = await make_hub()
    assert await retarget_after_config_change(before.store, before.sla, "a", T0) == 0  # fresh file
    lead = (await before.intake.accept(inbound("i@example.com", T0), now=T0)).lead
    answered = (await before.intake.accept(inbound("j@example.com", T0), now=T0)).lead
    await before.replies.record_reply(answered.number, "Готово", "olena", now=T0)
    await before.store.close()
    policies = {
        "message": {"first_response": "2h", "resolution": "1d"},
        "service_request": {"first_response": "12h"},
    }
    after: Hub = await make_hub(sla={"policies": policies})
    assert await retarget_after_config_change(after.store, after.sla, "b", T0 + timedelta(minutes=5)) == 1
    changed = await _lead(after, lead.number)
    assert changed.sla_due == changed.first_response_due == T0 + timedelta(hours=2)
    assert changed.resolution_due == T0 + timedelta(days=1)
    untouched = await _lead(after, answered.number)
    assert (
        untouched.sla_target is None and untouched.resolution_due is None
    )  # answered: paused, no resolution on record
    assert await retarget_after_config_change(after.store, after.sla, "b", T0 + timedelta(minutes=6)) == 0
    assert await after.sweeper.sweep(T0 + timedelta(hours=2, seconds=1)) == (1, 1)
    await after.store.close()


async def test_resolve_stops_every_clock_and_reopen_restarts_resolution(make_hub: Callable[..., Any]) -> None:
    hub: Hub = await make_hub(sla={"policies": POLICIES})
    lead = (await hub.intake.accept(inbound("k@example.com", T0), now=T0)).lead
    await hub.actions.resolve(lead.number, "olena", now=T0 + timedelta(minutes=30))
    assert await hub.sweeper.sweep(T0 + timedelta(days=2)) == (0, 0)
    reopened_at = T0 + timedelta(days=2)
    reopened = await hub.actions.reopen(lead.number, "olena", now=reopened_at)
    assert reopened.resolution_due == reopened_at + timedelta(hours=8)
    # Never answered: the first response is owed again too (warning and breach of each).
    assert await hub.sweeper.sweep(reopened_at + timedelta(hours=8, seconds=1)) == (2, 2)
    await hub.store.close()


async def test_a_customer_reopening_an_unanswered_lead_is_owed_a_first_response(
    make_hub: Callable[..., Any],
) -> None:
    hub: Hub = await make_hub(sla={"policies": POLICIES})
    lead = (await hub.intake.accept(inbound("silent@example.com", T0), now=T0)).lead
    await hub.actions.resolve(lead.number, "olena", now=T0 + timedelta(minutes=10))
    back = T0 + timedelta(days=1)
    message = replace(
        inbound("silent@example.com", back, text=f"Re: [#L-{lead.number}] Ви мене чуєте?"),
        thread=ThreadHints(lead_number=lead.number),
    )
    result = await hub.intake.accept(message, now=back)
    assert result.lead.number == lead.number and not result.created_lead
    lead = await _lead(hub, lead.number)
    assert lead.status == LeadStatus.OPEN and lead.first_response_at is None
    # Resolved without a word to the customer: a first response is owed, timed from this message.
    assert lead.sla_target == "first_response"
    assert (lead.sla_started_at, lead.sla_due) == (back, back + timedelta(hours=4))
    assert lead.sla_warn_due == back + timedelta(hours=3, minutes=12)
    assert await hub.sweeper.sweep(back + timedelta(hours=4, seconds=1)) == (1, 1)
    breaches = await _events(hub, lead.number, "sla.breached")
    assert [(e.data["target"], e.data["due"]) for e in breaches] == [
        ("first_response", (back + timedelta(hours=4)).isoformat())
    ]
    await hub.store.close()


async def test_a_staff_reopen_owes_the_response_a_customer_reopen_would(make_hub: Callable[..., Any]) -> None:
    hub: Hub = await make_hub(sla={"policies": POLICIES})
    reopened_at = T0 + timedelta(days=1)
    # Never answered: a first response is owed again, timed from the reopen.
    silent = (await hub.intake.accept(inbound("never@example.com", T0), now=T0)).lead
    await hub.actions.resolve(silent.number, "olena", now=T0 + timedelta(minutes=10))
    lead = await hub.actions.reopen(silent.number, "olena", now=reopened_at)
    assert (lead.sla_target, lead.sla_started_at) == ("first_response", reopened_at)
    assert lead.sla_due == reopened_at + timedelta(hours=4)
    # Answered, then the customer wrote again and the lead was resolved unanswered: a next response.
    asked = (await hub.intake.accept(inbound("again@example.com", T0), now=T0)).lead
    await hub.replies.record_reply(asked.number, "Так", "olena", now=T0 + timedelta(minutes=5))
    later = T0 + timedelta(minutes=30)
    await hub.intake.accept(inbound("again@example.com", later, text="А ще?"), now=later)
    await hub.actions.resolve(asked.number, "olena", now=later + timedelta(minutes=1))
    lead = await hub.actions.reopen(asked.number, "olena", now=reopened_at)
    assert (lead.sla_target, lead.sla_due) == ("next_response", reopened_at + timedelta(hours=2))
    # Answered and our word was the last: nothing is owed but the resolution.
    done = (await hub.intake.accept(inbound("done@example.com", T0), now=T0)).lead
    await hub.replies.record_reply(done.number, "Готово", "olena", now=T0 + timedelta(minutes=5))
    await hub.actions.resolve(done.number, "olena", now=T0 + timedelta(minutes=6))
    lead = await hub.actions.reopen(done.number, "olena", now=reopened_at)
    assert lead.sla_target is None and lead.sla_paused_at is None
    assert lead.resolution_due == reopened_at + timedelta(hours=8)

    await hub.sweeper.sweep(reopened_at + timedelta(hours=4, seconds=1))
    breached = {
        (e.lead_number, e.data["target"]) for e in await hub.store.list_events(types=["sla.breached"])
    }
    assert breached == {(silent.number, "first_response"), (asked.number, "next_response")}
    await hub.store.close()


async def test_a_team_change_retargets_a_reopened_first_response_despite_an_earlier_breach(
    make_hub: Callable[..., Any],
) -> None:
    hub: Hub = await make_hub(sla={"policies": POLICIES})
    lead = (await hub.intake.accept(inbound("twice@example.com", T0), now=T0)).lead
    assert await hub.sweeper.sweep(T0 + timedelta(hours=4, seconds=1)) == (1, 1)  # first response breached
    await hub.actions.resolve(lead.number, "olena", now=T0 + timedelta(hours=5))
    reopened_at = T0 + timedelta(days=1)
    reopened = await hub.actions.reopen(lead.number, "olena", now=reopened_at)
    assert (reopened.sla_target, reopened.sla_due) == ("first_response", reopened_at + timedelta(hours=4))
    # The earlier episode's breach is history: the new episode moves to the service team's 1h.
    moved = await hub.actions.assign(lead.number, "iryna", "olena", now=reopened_at + timedelta(minutes=5))
    assert moved.team == "service" and moved.sla_due == reopened_at + timedelta(hours=1)
    assert moved.breached_at == T0 + timedelta(hours=4, seconds=1)  # the KPI's breach stays on record
    # Resolution restarted at the reopen too: it is not timed from creation (overdue at once).
    assert moved.resolution_due == reopened_at + timedelta(hours=8)
    await hub.sweeper.sweep(reopened_at + timedelta(hours=1, seconds=1))
    breaches = await _events(hub, lead.number, "sla.breached")
    assert [(e.data["target"], e.data["due"]) for e in breaches if e.at > reopened_at] == [
        ("first_response", (reopened_at + timedelta(hours=1)).isoformat())
    ]
    await hub.store.close()


async def test_manual_assignment_to_another_team_applies_its_policy(make_hub: Callable[..., Any]) -> None:
    hub: Hub = await make_hub(sla={"policies": POLICIES})
    lead = (await hub.intake.accept(inbound("l@example.com", T0), now=T0)).lead
    assert lead.team == "support" and lead.sla_due == T0 + timedelta(hours=4)
    moved = await hub.actions.assign(lead.number, "iryna", "olena", now=T0 + timedelta(minutes=5))
    assert moved.team == "service"
    assert moved.sla_due == moved.first_response_due == T0 + timedelta(hours=1)
    await hub.store.close()


async def test_team_lead_hears_only_after_the_escalation_delay(make_hub: Callable[..., Any]) -> None:
    escalation = {"team_lead_after": "30m", "reassign": True}
    policies = {
        "message": {"first_response": "1h", "escalation": escalation},
        "service_request": {"first_response": "12h"},
    }
    hub: Hub = await make_hub(sla={"policies": policies})
    published: list[Event] = []

    async def listen(event: Event, lead: Lead | None) -> None:
        published.append(event)

    hub.bus.subscribe("test", listen)
    answered = (await hub.intake.accept(inbound("m@example.com", T0), now=T0)).lead
    ignored = (await hub.intake.accept(inbound("n@example.com", T0), now=T0)).lead
    assert await hub.sweeper.sweep(T0 + timedelta(hours=1, seconds=1)) == (2, 2)
    breaches = [e for e in published if e.type == "sla.breached"]
    assert all(e.data["notify"] == [e.data["assignee"]] for e in breaches)  # not the team lead yet
    # One lead is answered before the escalation step: only the other escalates, once.
    await hub.replies.record_reply(answered.number, "Вже працюємо", "olena", now=T0 + timedelta(minutes=70))
    await hub.sweeper.sweep(T0 + timedelta(minutes=89))
    assert [e for e in published if e.type == "sla.escalated"] == []
    await hub.sweeper.sweep(T0 + timedelta(minutes=91))
    await hub.sweeper.sweep(T0 + timedelta(minutes=92))
    (escalated,) = [e for e in published if e.type == "sla.escalated"]
    assert escalated.lead_number == ignored.number
    assert "olena" in escalated.data["notify"] and escalated.data["target"] == "first_response"
    assert (await _lead(hub, ignored.number)).assignee != ignored.assignee  # reassigned at this step
    await hub.store.close()


async def test_a_reply_while_the_sweep_reports_a_breach_cancels_its_escalation_step(
    make_hub: Callable[..., Any],
) -> None:
    policies = {
        "message": {"first_response": "1h", "resolution": "2h", "escalation": {"team_lead_after": "30m"}},
        "service_request": {"first_response": "12h"},
    }
    hub: Hub = await make_hub(sla={"policies": policies})
    published: list[Event] = []
    lead = (await hub.intake.accept(inbound("race@example.com", T0), now=T0)).lead
    breached = T0 + timedelta(hours=2, seconds=1)

    async def answer_meanwhile(event: Event, _: Lead | None) -> None:
        # The claim is written; the sweep is still publishing it when the answer lands.
        published.append(event)
        if event.type == "sla.breached" and event.data["target"] == "first_response":
            await hub.replies.record_reply(lead.number, "Вибачте, ось відповідь", "olena", now=breached)

    hub.bus.subscribe("test", answer_meanwhile)
    assert await hub.sweeper.sweep(breached) == (2, 2)
    # Answered before its step was written: the first response does not escalate. The
    # resolution breach stands until the lead is resolved, so its step follows as ever.
    await hub.sweeper.sweep(T0 + timedelta(hours=3))
    assert [e.data["target"] for e in published if e.type == "sla.escalated"] == ["resolution"]
    await hub.store.close()


async def test_a_breach_answered_while_the_sweep_reports_it_is_not_reassigned(
    make_hub: Callable[..., Any],
) -> None:
    policies = {
        "message": {"first_response": "1h", "escalation": {"reassign": True}},
        "service_request": {"first_response": "12h"},
    }
    hub: Hub = await make_hub(sla={"policies": policies})
    lead = (await hub.intake.accept(inbound("kept@example.com", T0), now=T0)).lead
    owner = lead.assignee
    assert owner is not None
    breached = T0 + timedelta(hours=1, seconds=1)

    async def answer_meanwhile(event: Event, _: Lead | None) -> None:
        if event.type == "sla.breached":
            await hub.replies.record_reply(lead.number, "Ось відповідь", owner, now=breached)

    hub.bus.subscribe("test", answer_meanwhile)
    assert await hub.sweeper.sweep(breached) == (1, 1)
    # The owner answered before the reassignment step ran: the lead stays theirs.
    assert (await _lead(hub, lead.number)).assignee == owner
    await hub.store.close()


REARM_POLICIES = {
    "message": {
        "first_response": "4h",
        "next_response": {"after": "2h", "warn_at": 0.5},
        "resolution": "8h",
        "teams": {"service": {"next_response": "1h"}},
    },
    "service_request": {"first_response": "12h", "next_response": "3h"},
}


async def _next_response_breached(hub: Hub, email: str) -> tuple[int, datetime]:
    """A lead answered at once, then written to again at `back` and left past its next response."""
    lead = (await hub.intake.accept(inbound(email, T0), now=T0)).lead
    await hub.replies.record_reply(lead.number, "Відповідь", "olena", now=T0 + timedelta(minutes=10))
    back = T0 + timedelta(hours=1)
    await hub.intake.accept(inbound(email, back, text="ще питання"), now=back)
    assert (await _lead(hub, lead.number)).sla_due == back + timedelta(hours=2)
    assert await hub.sweeper.sweep(back + timedelta(hours=3)) == (1, 1)
    return lead.number, back


async def test_a_claimed_next_response_breach_is_not_armed_again_by_a_team_or_kind_change(
    make_hub: Callable[..., Any],
) -> None:
    hub: Hub = await make_hub(sla={"policies": REARM_POLICIES})
    number, back = await _next_response_breached(hub, "nr@example.com")
    # The service team's 1h (and service_request's 3h) next response is already past too.
    await hub.actions.assign(number, "iryna", "olena", now=back + timedelta(hours=3, minutes=1))
    assert await hub.sweeper.sweep(back + timedelta(hours=3, minutes=2)) == (0, 0)
    await hub.actions.set_kind(
        number, LeadKind.SERVICE_REQUEST, "olena", now=back + timedelta(hours=3, minutes=3)
    )
    assert await hub.sweeper.sweep(back + timedelta(hours=3, minutes=4)) == (0, 0)
    assert len(await _events(hub, number, "sla.breached")) == 1
    # A new customer message after a reply is a new episode: it may breach again.
    await hub.replies.record_reply(number, "Ось", "iryna", now=back + timedelta(hours=4))
    again = back + timedelta(hours=5)
    await hub.intake.accept(inbound("nr@example.com", again, text="і ще"), now=again)
    assert await hub.sweeper.sweep(again + timedelta(hours=4)) == (1, 1)


async def test_a_sent_next_response_warning_is_not_sent_again_after_a_team_change(
    make_hub: Callable[..., Any],
) -> None:
    hub: Hub = await make_hub(sla={"policies": REARM_POLICIES})
    lead = (await hub.intake.accept(inbound("nw@example.com", T0), now=T0)).lead
    await hub.replies.record_reply(lead.number, "Відповідь", "olena", now=T0 + timedelta(minutes=10))
    back = T0 + timedelta(hours=1)
    await hub.intake.accept(inbound("nw@example.com", back, text="ще"), now=back)
    assert await hub.sweeper.sweep(back + timedelta(hours=1, minutes=10)) == (1, 0)
    await hub.actions.assign(lead.number, "iryna", "olena", now=back + timedelta(hours=1, minutes=11))
    moved = await _lead(hub, lead.number)
    assert moved.sla_due == back + timedelta(hours=1) and moved.sla_warn_due is None
    assert await hub.sweeper.sweep(back + timedelta(hours=1, minutes=12)) == (0, 1)
    assert len(await _events(hub, lead.number, "sla.warning")) == 1


async def test_a_changed_policy_does_not_repeat_claimed_next_response_or_resolution_marks(
    make_hub: Callable[..., Any],
) -> None:
    before: Hub = await make_hub(sla={"policies": REARM_POLICIES})
    await retarget_after_config_change(before.store, before.sla, "a", T0)
    number, _back = await _next_response_breached(before, "pc@example.com")
    unanswered = (await before.intake.accept(inbound("res@example.com", T0), now=T0)).lead
    # Unanswered: first response warns and breaches at 4h, resolution at 8h (the first lead's
    # resolution, running since T0, warns and breaches too).
    assert await before.sweeper.sweep(T0 + timedelta(hours=9)) == (3, 3)
    await before.store.close()
    message = {**REARM_POLICIES["message"], "next_response": "90m", "resolution": "6h"}
    after: Hub = await make_hub(sla={"policies": {**REARM_POLICIES, "message": message}})
    now = T0 + timedelta(hours=10)
    assert await retarget_after_config_change(after.store, after.sla, "b", now) >= 0
    assert await after.sweeper.sweep(now + timedelta(seconds=1)) == (0, 0)
    breaches = await _events(after, number, "sla.breached")
    assert sorted(e.data["target"] for e in breaches) == ["next_response", "resolution"]
    marks = await _events(after, unanswered.number, "sla.breached", "sla.warning")
    assert sorted((e.type, e.data["target"]) for e in marks) == [
        ("sla.breached", "first_response"),
        ("sla.breached", "resolution"),
        ("sla.warning", "first_response"),
        ("sla.warning", "resolution"),
    ]


async def test_each_breached_target_gets_its_own_escalation_step(make_hub: Callable[..., Any]) -> None:
    policies = {
        "message": {"first_response": "4h", "resolution": "255m", "escalation": {"team_lead_after": "30m"}},
        "service_request": {"first_response": "12h"},
    }
    hub: Hub = await make_hub(sla={"policies": policies})
    lead = (await hub.intake.accept(inbound("esc2@example.com", T0), now=T0)).lead
    # Swept every minute: the resolution breach (4h15) comes before the first response's step.
    for minute in range(6 * 60):
        await hub.sweeper.sweep(T0 + timedelta(minutes=minute, seconds=30))
    steps = await _events(hub, lead.number, "sla.escalated")
    assert sorted(e.data["target"] for e in steps) == ["first_response", "resolution"]
    # After downtime both breaches and both steps are reported, once each.
    other = (await hub.intake.accept(inbound("esc3@example.com", T0), now=T0)).lead
    later = T0 + timedelta(days=2)
    for second in range(3):
        await hub.sweeper.sweep(later + timedelta(seconds=second))
    steps = await _events(hub, other.number, "sla.escalated")
    assert sorted(e.data["target"] for e in steps) == ["first_response", "resolution"]
