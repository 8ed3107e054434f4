"""Routing: rules, strategies and eligibility as pure functions, then the router on real SQLite."""

from __future__ import annotations

import asyncio
from collections import Counter
from collections.abc import Callable
from dataclasses import replace
from datetime import UTC, datetime, timedelta
from itertools import count
from typing import Any

import pytest

from hub.app import Hub
from hub.config import ConfigError, ManagerSettings, RoutingRule, Settings, WorkingHours
from hub.domain import Event, Identity, IdentityKind, Inbound, Lead, LeadKind
from hub.ports import RoutingRequest
from routing.availability import shift_calendar, why_not_eligible
from routing.router import choose
from routing.rules import first_match

T0 = datetime(2026, 11, 23, 8, 0, tzinfo=UTC)  # Monday 10:00 in Kyiv
_ids = count(1)


def request(**fields: Any) -> RoutingRequest:
    base: dict[str, Any] = {"lead_number": 1, "channel": "email", "kind": LeadKind.MESSAGE}
    return RoutingRequest(**{**base, **fields})


RULES = [
    RoutingRule.model_validate(
        {"name": "boilers", "match": {"keywords": ["котел", "boiler"]}, "team": "service"}
    ),
    RoutingRule.model_validate(
        {
            "name": "sales-inbox",
            "match": {"channel": "email", "recipient": "Sales@Example.com"},
            "team": "sales",
        }
    ),
    RoutingRule.model_validate(
        {"name": "english", "match": {"language": ["en"]}, "team": "intl", "tags": ["en"]}
    ),
    RoutingRule.model_validate(
        {"name": "vip", "match": {"contact_tags": ["vip"], "kind": "message"}, "team": "vip", "priority": 2}
    ),
    RoutingRule.model_validate({"name": "form", "match": {"form": ["service"]}, "team": "service"}),
]


@pytest.mark.parametrize(
    ("fields", "expected"),
    [
        ({"subject": "Зламався КОТЕЛ", "language": "en"}, "boilers"),  # first match wins, Cyrillic casefold
        ({"text": "my Boiler is broken"}, "boilers"),
        ({"recipient": "sales@example.com"}, "sales-inbox"),
        ({"recipient": "sales@example.com", "channel": "telegram"}, None),
        ({"language": "en-GB"}, "english"),
        ({"language": "uk"}, None),
        ({"contact_tags": ("VIP", "old")}, "vip"),
        ({"contact_tags": ("vip",), "kind": LeadKind.SERVICE_REQUEST}, None),
        ({"form_id": "service", "channel": "webform"}, "form"),
    ],
)
def test_rules_first_match_wins(fields: dict[str, Any], expected: str | None) -> None:
    match = first_match(RULES, request(**fields))
    assert (match.label if match else None) == expected


def manager(mid: str, **fields: Any) -> ManagerSettings:
    return ManagerSettings.model_validate({"id": mid, "name": mid, "teams": ["t"], **fields})


ROSTER = [manager("a"), manager("b"), manager("c")]


def test_round_robin_walks_the_eligible_members_in_turn() -> None:
    loads = dict.fromkeys("abc", (0, 0))
    picks = [choose("round_robin", ROSTER, {"a", "c"}, loads, turn)[0] for turn in range(1, 7)]
    # b's turns are shared, not handed to c (a, c, c, a, c, c before)
    assert [m.id for m in picks if m] == ["a", "c", "a", "c", "a", "c"]


def test_least_loaded_weights_priority_and_breaks_ties_by_turn() -> None:
    loads = {"a": (2, 2), "b": (1, 3), "c": (2, 2)}  # b holds one priority-2 lead: weight 3
    assert choose("least_loaded", ROSTER, {"a", "b", "c"}, loads, 1)[0] == ROSTER[0]
    assert choose("least_loaded", ROSTER, {"a", "b", "c"}, loads, 2)[0] == ROSTER[2]
    assert choose("least_loaded", ROSTER, {"a", "b"}, loads, 2)[0] == ROSTER[0]


def test_sticky_prefers_the_last_manager_if_eligible() -> None:
    loads = {"a": (0, 0), "b": (5, 5), "c": (0, 0)}
    chosen, why = choose("sticky", ROSTER, {"a", "b", "c"}, loads, 1, sticky_id="b")
    assert chosen == ROSTER[1] and why.startswith("sticky")
    chosen, why = choose("sticky", ROSTER, {"a", "c"}, loads, 1, sticky_id="b")
    assert chosen == ROSTER[0] and "least loaded" in why


def test_eligibility_uses_the_managers_own_hours_and_zone() -> None:
    ny = manager(
        "ny",
        capacity=3,
        working_hours=WorkingHours(timezone="America/New_York", hours={"mon-fri": ["09:00-17:00"]}),
    )
    shift = shift_calendar(ny)
    monday_10_kyiv = T0  # 03:00 in New York
    assert why_not_eligible(ny, 0, monday_10_kyiv, False, shift) == "off shift"
    monday_9_ny = datetime(2026, 11, 23, 14, 0, tzinfo=UTC)
    assert why_not_eligible(ny, 0, monday_9_ny, False, shift) is None
    assert why_not_eligible(ny, 0, monday_9_ny + timedelta(hours=8), False, shift) == "off shift"
    assert why_not_eligible(ny, 3, monday_9_ny, False, shift) == "at capacity (3/3)"
    assert why_not_eligible(ny, 0, monday_9_ny, True, shift) == "away"
    inactive = manager("x", active=False)
    assert why_not_eligible(inactive, 0, monday_9_ny, False, None) == "inactive"


def test_bad_working_hours_name_the_manager(settings_factory: Callable[..., Settings]) -> None:
    managers = [
        {"id": "olena", "name": "O", "teams": ["support"], "working_hours": {"hours": {"mon": ["9-5"]}}}
    ]
    with pytest.raises(ConfigError, match=r"^managers\[olena\]\.working_hours\.hours\.mon"):
        Hub(settings_factory(managers=managers))


# --- the router on a real store ------------------------------------------------------------------


def inbound(email: str, at: datetime = T0, text: str = "Питання", **fields: Any) -> Inbound:
    return Inbound(
        channel="webform",
        external_id=f"r-{next(_ids)}",
        sender=Identity(IdentityKind.EMAIL, email),
        text=text,
        received_at=at,
        **fields,
    )


def team(strategy: str, *members: str, capacity: int = 100, **extra: Any) -> dict[str, Any]:
    return {
        "managers": [{"id": m, "name": m, "teams": ["support"], "capacity": capacity} for m in members],
        "teams": {"support": {"strategy": strategy}},
        "routing": {"default_team": "support", "rules": []},
        **extra,
    }


async def test_hundred_leads_at_once_spread_evenly_least_loaded(make_hub: Callable[..., Any]) -> None:
    hub: Hub = await make_hub(**team("least_loaded", "m1", "m2", "m3", "m4"))
    results = await asyncio.gather(
        *(hub.intake.accept(inbound(f"x{i}@example.com"), now=T0) for i in range(100))
    )
    assert Counter(r.lead.assignee for r in results) == {"m1": 25, "m2": 25, "m3": 25, "m4": 25}
    await hub.store.close()


async def test_two_hubs_on_one_file_share_the_load_without_stale_reads(make_hub: Callable[..., Any]) -> None:
    config = team("least_loaded", "m1", "m2", "m3", "m4")
    first: Hub = await make_hub(**config)
    second: Hub = await make_hub(**config)  # a second connection (and router) on the same file
    results = await asyncio.gather(
        *(
            (first if i % 2 else second).intake.accept(inbound(f"y{i}@example.com"), now=T0)
            for i in range(100)
        )
    )
    loads = await first.store.load_by_assignee(["m1", "m2", "m3", "m4"])
    assert {m: n for m, (n, _) in loads.items()} == {"m1": 25, "m2": 25, "m3": 25, "m4": 25}
    assert len({r.lead.number for r in results}) == 100
    await first.store.close()
    await second.store.close()


async def test_a_new_lead_is_stored_routed_in_one_write(make_hub: Callable[..., Any]) -> None:
    hub: Hub = await make_hub(**team("least_loaded", "m1", "m2"))
    updates: list[int] = []
    update_lead = hub.store.update_lead

    async def counted(number: int, changes: Any) -> Any:
        updates.append(number)
        return await update_lead(number, changes)

    hub.store.update_lead = counted  # type: ignore[method-assign]
    result = await hub.intake.accept(inbound("one-write@example.com"), now=T0)
    assert updates == []  # the insert carried the assignee: no routing update after it
    stored = await hub.store.get_lead(result.lead.number)
    assert stored is not None and (stored.assignee, stored.team) == ("m1", "support")
    assert await hub.store.load_by_assignee(["m1", "m2"]) == {"m1": (1, 1), "m2": (0, 0)}
    (event,) = await hub.store.list_events(result.lead.number, ["lead.assigned"])
    assert event.data["assignee"] == "m1"
    await hub.store.close()


async def test_a_new_leads_claim_lost_to_another_process_is_routed_again(
    make_hub: Callable[..., Any],
) -> None:
    config = team("least_loaded", "m1", "m2")
    first: Hub = await make_hub(**config)
    second: Hub = await make_hub(**config)  # another process on the same file
    create_lead = first.store.create_lead
    raced: list[Lead] = []

    async def racing(lead: Lead, expected_load: tuple[int, int] | None = None) -> tuple[Lead, bool]:
        # Between the first hub's decision and its insert, the second hub gives m1 a lead.
        other = replace(lead, assignee="m1", contact_id="someone", origin_external_id="other")
        raced.append((await second.store.create_lead(other, (0, 0)))[0])
        return await create_lead(lead, expected_load)

    first.store.create_lead = racing  # type: ignore[method-assign]
    result = await first.intake.accept(inbound("slow@example.com"), now=T0)
    assert raced[0].assignee == "m1"
    assert result.lead.assignee == "m2"  # decided again on the stored lead, not doubled up on m1
    stored = await first.store.get_lead(result.lead.number)
    assert stored is not None and stored.assignee == "m2"
    loads = await first.store.load_by_assignee(["m1", "m2"])
    assert loads == {"m1": (1, 1), "m2": (1, 1)}
    (event,) = await first.store.list_events(result.lead.number, ["lead.assigned"])
    assert event.data["assignee"] == "m2" and event.data["reason"]["claim_lost"] == "m1"
    await first.store.close()
    await second.store.close()


async def test_round_robin_is_fair_across_restarts(make_hub: Callable[..., Any]) -> None:
    config = team("round_robin", "m1", "m2", "m3")
    hub: Hub = await make_hub(**config)
    picks = [(await hub.intake.accept(inbound(f"rr{i}@example.com"), now=T0)).lead.assignee for i in range(4)]
    await hub.store.close()
    restarted: Hub = await make_hub(**config)
    picks += [
        (await restarted.intake.accept(inbound(f"rr{i}@example.com"), now=T0)).lead.assignee
        for i in range(4, 6)
    ]
    assert picks == ["m1", "m2", "m3", "m1", "m2", "m3"]
    await restarted.store.close()


@pytest.mark.parametrize("unavailable", ["away", "inactive"])
async def test_round_robin_shares_an_unavailable_members_turns_evenly(
    make_hub: Callable[..., Any], unavailable: str
) -> None:
    config = team("round_robin", "a", "b", "c", "d", capacity=1000)
    if unavailable == "inactive":
        config["managers"][1]["active"] = False
    hub: Hub = await make_hub(**config)
    if unavailable == "away":
        await hub.store.set_state(hub.availability.away_key("b"), True)
    got: Counter[str | None] = Counter()
    for i in range(300):
        at = T0 + timedelta(seconds=i)
        got[
            (await hub.intake.accept(inbound(f"rr-{unavailable}{i}@example.com", at), now=at)).lead.assignee
        ] += 1
    # b's turns went to c before: c 150, a 75, d 75
    assert got == {"a": 100, "c": 100, "d": 100}
    await hub.store.close()


async def test_sticky_returns_a_customer_to_the_last_manager(make_hub: Callable[..., Any]) -> None:
    hub: Hub = await make_hub(**team("sticky", "m1", "m2", "m3"))
    first = await hub.intake.accept(inbound("loyal@example.com"), now=T0)
    await hub.actions.resolve(first.lead.number, "m1", now=T0)
    for i in range(5):
        await hub.intake.accept(inbound(f"other{i}@example.com"), now=T0)
    again = await hub.intake.accept(inbound("loyal@example.com", text="Знову я"), now=T0 + timedelta(hours=1))
    assert again.created_lead
    assert again.lead.assignee == first.lead.assignee
    (event,) = await hub.store.list_events(again.lead.number, ["lead.assigned"])
    assert event.data["reason"]["teams"][0]["why"].startswith("sticky")
    await hub.store.close()


async def test_nobody_eligible_uses_fallback_then_queue_with_alert_and_drains(
    make_hub: Callable[..., Any],
) -> None:
    hub: Hub = await make_hub(
        managers=[
            {"id": "s1", "name": "s1", "teams": ["support"], "capacity": 1},
            {"id": "f1", "name": "f1", "teams": ["backup"], "capacity": 1},
        ],
        teams={
            "support": {"strategy": "least_loaded", "fallback": "backup"},
            "backup": {"strategy": "round_robin"},
        },
        routing={"default_team": "support", "rules": []},
    )
    alerts: list[Event] = []

    async def listen(event: Event, lead: Lead | None) -> None:
        if event.type == "routing.nobody_eligible":
            alerts.append(event)

    hub.bus.subscribe("test", listen)
    one = await hub.intake.accept(inbound("q1@example.com"), now=T0)
    two = await hub.intake.accept(inbound("q2@example.com"), now=T0)
    three = await hub.intake.accept(inbound("q3@example.com"), now=T0 + timedelta(seconds=1))
    four = await hub.intake.accept(inbound("q4@example.com"), now=T0 + timedelta(seconds=2))
    assert (one.lead.assignee, two.lead.assignee) == ("s1", "f1")
    assert two.lead.team == "backup"
    assert three.lead.assignee is None and four.lead.assignee is None
    assert [a.lead_number for a in alerts] == [three.lead.number, four.lead.number]
    (event,) = await hub.store.list_events(three.lead.number, ["lead.unassigned"])
    skipped = {t["team"]: t["skipped"] for t in event.data["reason"]["teams"]}
    assert skipped == {"support": {"s1": "at capacity (1/1)"}, "backup": {"f1": "at capacity (1/1)"}}
    # Resolving frees s1: the oldest queued lead goes first, the younger one keeps waiting.
    await hub.actions.resolve(one.lead.number, "s1", now=T0 + timedelta(minutes=1))
    assert (await hub.store.get_lead(three.lead.number)).assignee == "s1"  # type: ignore[union-attr]
    assert (await hub.store.get_lead(four.lead.number)).assignee is None  # type: ignore[union-attr]
    await hub.store.close()


async def test_away_and_back_drain_the_queue_and_optionally_reassign(make_hub: Callable[..., Any]) -> None:
    hub: Hub = await make_hub(
        **team("least_loaded", "m1", "m2", routing={"default_team": "support", "reassign_when_away": True})
    )
    hub.now = lambda: T0
    leads = [(await hub.intake.accept(inbound(f"w{i}@example.com"), now=T0)).lead for i in range(4)]
    assert Counter(lead.assignee for lead in leads) == {"m1": 2, "m2": 2}
    await hub.availability.set_away("m1", True)
    mine = await hub.store.active_leads_of("m2", 10)
    assert len(mine) == 4  # m1's leads moved to m2
    await hub.availability.set_away("m2", True)
    assert await hub.store.active_leads_of("m2", 10) == []  # nobody left: all wait in the queue
    assert len(await hub.store.oldest_unassigned(10)) == 4
    queued = await hub.intake.accept(inbound("late@example.com"), now=T0)
    assert queued.lead.assignee is None
    await hub.availability.set_away("m1", False)  # /back drains the queue, oldest first
    assert len(await hub.store.active_leads_of("m1", 10)) == 5
    await hub.store.close()


async def test_shift_start_drains_the_queue(make_hub: Callable[..., Any]) -> None:
    hub: Hub = await make_hub(
        managers=[
            {
                "id": "day",
                "name": "day",
                "teams": ["support"],
                "working_hours": {"timezone": "Europe/Kyiv", "hours": {"mon-fri": ["09:00-18:00"]}},
            }
        ],
        teams={"support": {"strategy": "least_loaded"}},
        routing={"default_team": "support", "rules": []},
    )
    night = datetime(2026, 11, 23, 4, 0, tzinfo=UTC)  # 06:00 in Kyiv
    lead = (await hub.intake.accept(inbound("early@example.com", at=night), now=night)).lead
    assert lead.assignee is None
    assert await hub.queue.drain(night + timedelta(hours=2)) == 0  # 08:00: still off shift
    assert await hub.queue.drain(night + timedelta(hours=3)) == 1  # 09:00: shift starts
    assert (await hub.store.get_lead(lead.number)).assignee == "day"  # type: ignore[union-attr]
    await hub.store.close()


async def test_two_hubs_draining_the_queue_at_once_assign_each_lead_once(
    make_hub: Callable[..., Any],
) -> None:
    config = team("least_loaded", "m1", "m2", "m3")
    first: Hub = await make_hub(**config)
    second: Hub = await make_hub(**config)
    for manager in ("m1", "m2", "m3"):
        await first.store.set_state(f"manager.{manager}.away", True)
    queued = [(await first.intake.accept(inbound(f"d{i}@example.com"), now=T0)).lead for i in range(12)]
    assert all(lead.assignee is None for lead in queued)
    for manager in ("m1", "m2", "m3"):
        await first.store.set_state(f"manager.{manager}.away", False)
    later = T0 + timedelta(minutes=1)
    drained = await asyncio.gather(first.queue.drain(later), second.queue.drain(later))
    assert sum(drained) == 12
    events = await first.store.list_events(types=["lead.assigned"], limit=1000)
    assert sorted(Counter(e.lead_number for e in events).values()) == [1] * 12
    loads = await first.store.load_by_assignee(["m1", "m2", "m3"])
    assert {n for n, _ in loads.values()} == {4}
    await first.store.close()
    await second.store.close()


_FALLBACK_POLICIES = {
    "message": {"first_response": "4h", "teams": {"service": {"first_response": "1h"}}},
    "service_request": {"first_response": "12h"},
}
_FALLBACK_TEAMS = {
    "support": {"strategy": "least_loaded", "fallback": "service"},
    "service": {"strategy": "least_loaded"},
}


async def test_a_queue_drain_into_the_fallback_team_applies_its_sla_policy(
    make_hub: Callable[..., Any],
) -> None:
    hub: Hub = await make_hub(sla={"policies": _FALLBACK_POLICIES}, teams=_FALLBACK_TEAMS)
    for manager in ("olena", "taras", "iryna", "andrii"):
        await hub.store.set_state(hub.availability.away_key(manager), True)
    lead = (await hub.intake.accept(inbound("f1@example.com"), now=T0)).lead
    assert lead.assignee is None and lead.first_response_due == T0 + timedelta(hours=4)
    hub.now = lambda: T0 + timedelta(minutes=5)
    await hub.availability.set_away("iryna", False)
    drained = await hub.store.get_lead(lead.number)
    assert drained is not None and (drained.team, drained.assignee) == ("service", "iryna")
    assert drained.first_response_due == drained.sla_due == T0 + timedelta(hours=1)


async def test_an_away_reassignment_into_the_fallback_team_applies_its_policy_without_repeating_marks(
    make_hub: Callable[..., Any],
) -> None:
    hub: Hub = await make_hub(
        sla={"policies": _FALLBACK_POLICIES}, teams=_FALLBACK_TEAMS, routing={"reassign_when_away": True}
    )
    await hub.store.set_state(hub.availability.away_key("taras"), True)
    first = (await hub.intake.accept(inbound("f2@example.com"), now=T0)).lead
    late = (await hub.intake.accept(inbound("f3@example.com"), now=T0)).lead
    assert (first.assignee, late.assignee) == ("olena", "olena")
    # The second lead's first response already warned and breached in support's 4h.
    assert await hub.sweeper.sweep(T0 + timedelta(hours=5)) == (2, 2)
    await hub.replies.record_reply(first.number, "Так", "olena", now=T0 + timedelta(hours=5))
    at = T0 + timedelta(hours=5)
    fresh = (await hub.intake.accept(inbound("f4@example.com", at), now=at)).lead
    hub.now = lambda: T0 + timedelta(hours=5, minutes=5)
    await hub.availability.set_away("olena", True)  # nobody left in support: the fallback team
    moved, breached = await hub.store.get_lead(fresh.number), await hub.store.get_lead(late.number)
    assert moved is not None and moved.team == "service"
    assert moved.first_response_due == at + timedelta(hours=1)
    assert breached is not None and breached.team == "service"
    assert await hub.sweeper.sweep(T0 + timedelta(hours=5, minutes=10)) == (0, 0)
