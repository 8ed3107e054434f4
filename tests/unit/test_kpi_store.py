"""KPI aggregation in the SQLite store: both percentile strategies agree with `statistics`."""

from __future__ import annotations

import random
import sqlite3
import statistics
from collections.abc import Awaitable, Callable
from dataclasses import replace
from datetime import UTC, datetime, timedelta
from pathlib import Path
from zoneinfo import ZoneInfo

import pytest

import storage.sqlite as sqlite_module
from hub.app import Hub
from hub.domain import Identity, IdentityKind, Inbound, Lead, LeadKind, LeadStatus
from hub.reports import Filters, Period, build_report
from hub.web.metrics import HubMetrics
from storage.base import PERCENTILE_ERROR, KpiQuery, LeadChanges
from storage.sqlite import SqliteStore
from tests.support.kpi import KYIV_DST_2026_MOMENTS

T0 = datetime(2026, 5, 1, tzinfo=UTC)


async def _store_with_leads(path: Path, count: int) -> tuple[SqliteStore, dict[str, list[float]]]:
    store = SqliteStore(path)
    await store.open()
    rng = random.Random(42)
    by_assignee: dict[str, list[float]] = {}
    for number in range(1, count + 1):
        created = T0 + timedelta(seconds=rng.randrange(0, 10 * 86400))
        assignee = rng.choice(["a", "b", "c"])
        lead = Lead(
            number=number,
            kind=rng.choice(list(LeadKind)),
            channel=rng.choice(["email", "webform"]),
            contact_id=f"c{number}",
            status=LeadStatus.OPEN,
            created_at=created,
            updated_at=created,
            assignee=assignee,
            team="t",
            origin_external_id=f"x{number}",
            first_response_due=created + timedelta(hours=4),
            warn_due=created + timedelta(hours=3),
        )
        await store.create_lead(lead)
        if rng.random() < 0.8:
            delay = rng.uniform(1, 8 * 3600)
            await store.update_lead(number, LeadChanges(first_response_at=created + timedelta(seconds=delay)))
            by_assignee.setdefault(assignee, []).append(delay)
    return store, by_assignee


@pytest.mark.parametrize("sort_limit", [100_000, 0], ids=["sorted-in-python", "index-walk"])
async def test_percentiles_match_statistics(tmp_path: Path, monkeypatch, sort_limit: int) -> None:
    monkeypatch.setattr(sqlite_module, "_KPI_SORT_LIMIT", sort_limit)
    store, by_assignee = await _store_with_leads(tmp_path / "kpi.db", 300)
    try:
        period = KpiQuery(T0, T0 + timedelta(days=11))
        (summary,) = await store.kpi_rows(period)
        everything = [v for values in by_assignee.values() for v in values]
        assert summary.received == 300
        assert summary.responded == len(everything)
        assert summary.frt_median == pytest.approx(statistics.median(everything))
        assert summary.frt_p90 == pytest.approx(statistics.quantiles(everything, n=10, method="inclusive")[8])
        assert summary.frt_mean == pytest.approx(statistics.mean(everything))
        rows = await store.kpi_rows(KpiQuery(T0, T0 + timedelta(days=11), group_by="assignee"))
        for row in rows:
            values = by_assignee[row.group or ""]
            assert row.frt_median == pytest.approx(statistics.median(values))
            assert row.frt_p90 == pytest.approx(statistics.quantiles(values, n=10, method="inclusive")[8])
        filtered = await store.kpi_rows(KpiQuery(T0, T0 + timedelta(days=11), assignee="b"))
        assert filtered[0].frt_median == pytest.approx(statistics.median(by_assignee["b"]))
        assert await store.kpi_rows(KpiQuery(T0 - timedelta(days=5), T0)) == []
    finally:
        await store.close()


async def test_days_follow_local_midnights_across_dst(tmp_path: Path) -> None:
    from zoneinfo import ZoneInfo

    kyiv = ZoneInfo("Europe/Kyiv")
    store = SqliteStore(tmp_path / "days.db")
    await store.open()
    try:
        # Kyiv moves to summer time on 2026-03-29; a UTC offset taken once would misplace one of these.
        moments = [datetime(2026, 3, 28, 23, 30, tzinfo=kyiv), datetime(2026, 3, 29, 23, 30, tzinfo=kyiv)]
        for number, created in enumerate(moments, start=1):
            lead = Lead(
                number=number,
                kind=LeadKind.MESSAGE,
                channel="email",
                contact_id="c",
                status=LeadStatus.OPEN,
                created_at=created,
                updated_at=created,
                origin_external_id=f"d{number}",
            )
            await store.create_lead(lead)
        start = datetime(2026, 3, 27, tzinfo=kyiv)
        rows = await store.kpi_rows(
            KpiQuery(start, datetime(2026, 4, 1, tzinfo=kyiv), group_by="day", day_zone="Europe/Kyiv")
        )
        assert [(r.group, r.received) for r in rows] == [("2026-03-28", 1), ("2026-03-29", 1)]
    finally:
        await store.close()


async def _reshuffle(store: SqliteStore, count: int) -> None:
    """Later writes the rollup triggers must follow: reassignments, resolutions, reopenings."""
    rng = random.Random(5)
    for number in rng.sample(range(1, count + 1), count // 3):
        lead = await store.get_lead(number)
        assert lead is not None
        action = rng.randrange(3)
        if action == 0:
            await store.update_lead(number, LeadChanges(assignee=rng.choice(["a", "d"]), team="u"))
        elif action == 1:
            delay = timedelta(seconds=rng.uniform(0.2, 5 * 86400))
            await store.update_lead(
                number, LeadChanges(status=LeadStatus.RESOLVED, resolved_at=lead.created_at + delay)
            )
        else:
            await store.update_lead(number, LeadChanges(status=LeadStatus.OPEN, clear_resolved_at=True))


async def _assert_report_matches(store: SqliteStore, query: KpiQuery, approximate: bool) -> None:
    groupings = (None, "team", "assignee", "channel", "kind", "day")
    tables = await store.kpi_breakdowns(query, groupings)
    for grouping in groupings:
        expected = await store.kpi_rows(replace(query, group_by=grouping))
        got = tables[grouping]
        assert [r.group for r in got] == [r.group for r in expected]
        for mine, theirs in zip(got, expected, strict=True):
            for name in (
                "received",
                "responded",
                "within_target",
                "breached",
                "resolved",
                "breached_answered",
            ):
                assert getattr(mine, name) == getattr(theirs, name), (grouping, name)
            for name in ("frt_mean", "resolution_mean"):
                assert getattr(mine, name) == pytest.approx(getattr(theirs, name)), (grouping, name)
            assert mine.percentiles_approximate == (approximate and grouping != "day")
            for name in ("frt_median", "frt_p90", "resolution_median"):
                exact = getattr(theirs, name)
                if exact is None or not approximate:
                    assert getattr(mine, name) == pytest.approx(exact), (grouping, name)
                else:
                    # The bound the API and README state.
                    assert abs(getattr(mine, name) - exact) <= PERCENTILE_ERROR * exact + 0.5, (
                        grouping,
                        name,
                    )


@pytest.mark.parametrize("sort_limit", [100_000, 0], ids=["exact-scan", "rollups"])
async def test_one_call_report_matches_per_grouping_queries(
    tmp_path: Path, monkeypatch, sort_limit: int
) -> None:
    monkeypatch.setattr(sqlite_module, "_KPI_SORT_LIMIT", sort_limit)
    store, _ = await _store_with_leads(tmp_path / "kpi.db", 400)
    try:
        await _reshuffle(store, 400)
        # Bounds off the hour and week grid: the partial hours and weeks come from `leads`.
        odd = timedelta(hours=1, minutes=17, seconds=3)
        first = await store.get_lead(1)
        assert first is not None
        for query in (
            KpiQuery(first.created_at - timedelta(seconds=10), first.created_at + timedelta(seconds=10)),
            KpiQuery(T0 + odd, T0 + timedelta(days=9) + odd, day_zone="Europe/Kyiv"),
            KpiQuery(T0, T0 + timedelta(days=11), day_zone="America/New_York"),
            KpiQuery(T0 + odd, T0 + timedelta(days=10), day_zone="Asia/Kolkata"),  # +05:30
            KpiQuery(T0 + odd, T0 + timedelta(days=2), team="t", day_zone="Europe/Kyiv"),
            KpiQuery(T0, T0 + timedelta(days=20), assignee="d", kind=LeadKind.MESSAGE),
        ):
            await _assert_report_matches(store, query, approximate=sort_limit == 0)
        with pytest.raises(ValueError):
            await store.kpi_breakdowns(KpiQuery(T0, T0 + timedelta(days=1)), ("status",))
    finally:
        await store.close()


async def test_rollups_are_filled_from_existing_leads_on_open(tmp_path: Path, monkeypatch) -> None:
    monkeypatch.setattr(sqlite_module, "_KPI_SORT_LIMIT", 0)
    store, _ = await _store_with_leads(tmp_path / "old.db", 200)
    await store.close()
    # A database from before the rollups: no tables, no triggers.
    with sqlite3.connect(tmp_path / "old.db") as db:
        for name in ("kpi_leads_insert", "kpi_leads_update", "kpi_leads_delete"):
            db.execute(f"DROP TRIGGER {name}")
        db.execute("DROP TABLE kpi_hourly")
        db.execute("DROP TABLE kpi_hist")
    store = SqliteStore(tmp_path / "old.db")
    await store.open()
    try:
        await _assert_report_matches(store, KpiQuery(T0, T0 + timedelta(days=11)), approximate=True)
    finally:
        await store.close()


async def test_one_scan_days_follow_local_midnights_across_dst(tmp_path: Path) -> None:
    from zoneinfo import ZoneInfo

    kyiv = ZoneInfo("Europe/Kyiv")
    store = SqliteStore(tmp_path / "days.db")
    await store.open()
    try:
        # Both DST changes of 2026 inside one period, leads just either side of local midnights.
        moments = KYIV_DST_2026_MOMENTS
        for number, created in enumerate(moments, start=1):
            lead = Lead(
                number=number,
                kind=LeadKind.MESSAGE,
                channel="email",
                contact_id="c",
                status=LeadStatus.OPEN,
                created_at=created,
                updated_at=created,
                origin_external_id=f"d{number}",
            )
            await store.create_lead(lead)
        query = KpiQuery(
            datetime(2026, 3, 1, tzinfo=kyiv), datetime(2026, 11, 1, tzinfo=kyiv), day_zone="Europe/Kyiv"
        )
        tables = await store.kpi_breakdowns(query, ("day",))
        assert [(r.group, r.received) for r in tables["day"]] == [
            ("2026-03-28", 1),
            ("2026-03-29", 2),
            ("2026-10-25", 2),
            ("2026-10-26", 1),
        ]
        assert tables["day"] == await store.kpi_rows(replace(query, group_by="day"))
    finally:
        await store.close()


_SLA_POLICIES = {
    "message": {"first_response": "4h", "next_response": "2h", "resolution": "8h"},
    "service_request": {"first_response": "12h"},
}


async def test_only_a_first_response_breach_counts_as_a_breach(
    make_hub: Callable[..., Awaitable[Hub]], monkeypatch: pytest.MonkeyPatch
) -> None:
    hub = await make_hub(sla={"policies": _SLA_POLICIES})
    sender = Identity(IdentityKind.EMAIL, "k1@example.com")
    at = datetime(2026, 11, 23, 8, 0, tzinfo=UTC)
    lead = (await hub.intake.accept(Inbound("webform", "k-1", sender, "Привіт", received_at=at), now=at)).lead
    await hub.replies.record_reply(lead.number, "Так", "olena", now=at + timedelta(minutes=30))
    back = at + timedelta(hours=1)
    await hub.intake.accept(Inbound("webform", "k-2", sender, "ще", received_at=back), now=back)
    # Answered in 30 min; then its next response and its resolution breach.
    assert await hub.sweeper.sweep(back + timedelta(hours=9)) == (2, 2)
    marked = await hub.store.get_lead(lead.number)
    assert marked is not None and marked.breached_at is None and marked.warned_at is None
    assert marked.sla_breached_at is not None and marked.res_breached_at is not None
    metrics = HubMetrics()
    await metrics.refresh(hub)
    gauge = next(m for m in metrics._snapshot.metrics if m.name == "hub_leads_breached_open")
    assert sum(s.value for s in gauge.samples) == 0
    period = Period(at - timedelta(hours=1), at + timedelta(days=1))
    for sort_limit in (sqlite_module._KPI_SORT_LIMIT, 0):  # exact, then from the rollups
        monkeypatch.setattr(sqlite_module, "_KPI_SORT_LIMIT", sort_limit)
        summary = (await build_report(hub.store, period, Filters(), ZoneInfo("Europe/Kyiv"))).summary
        figures = summary.as_dict()
        assert (figures["within_target"], figures["breached"]) == (1, 0)


async def test_an_older_file_keeps_only_first_response_breaches(tmp_path: Path, monkeypatch) -> None:
    monkeypatch.setattr(sqlite_module, "_KPI_SORT_LIMIT", 0)
    path = tmp_path / "old.db"
    store = SqliteStore(path)
    await store.open()
    due = T0 + timedelta(hours=4)
    for number in (1, 2, 3, 4):
        await store.create_lead(
            Lead(
                number=number,
                kind=LeadKind.MESSAGE,
                channel="webform",
                contact_id=f"c{number}",
                status=LeadStatus.OPEN,
                created_at=T0,
                updated_at=T0,
                origin_external_id=f"o{number}",
                first_response_due=due,
                warn_due=due,
                first_response_at=T0 + timedelta(minutes=5) if number in (1, 4) else None,
            )
        )
    await store.close()
    late = (T0 + timedelta(hours=9)).timestamp()
    with sqlite3.connect(path) as db:  # what the adapter wrote before: any target's last mark
        db.execute("UPDATE leads SET breached_at = ?, warned_at = ?", (late, late))
        db.execute("DELETE FROM kv WHERE key = 'storage.first_response_marks'")
        for number, target in ((1, "resolution"), (2, "first_response"), (2, "resolution")):
            for kind in ("sla.warning", "sla.breached"):
                db.execute(
                    "INSERT INTO events (lead_number, type, at, data) VALUES (?, ?, ?, ?)",
                    (number, kind, late, f'{{"target": "{target}"}}'),
                )
        # Leads 3 (unanswered) and 4 (answered in time) have no events: their due time decides.
    store = SqliteStore(path)
    await store.open()
    try:
        marks = {
            n: (lead.breached_at, lead.warned_at) for n in (1, 2, 3, 4) if (lead := await store.get_lead(n))
        }
        at = datetime.fromtimestamp(late, UTC)
        assert marks == {1: (None, None), 2: (at, at), 3: (at, at), 4: (None, None)}
        rows = (await store.kpi_breakdowns(KpiQuery(T0, T0 + timedelta(days=1)), (None,)))[None]
        assert rows[0].breached == 2
        active = await store.active_counts()
        assert sorted((b, n) for _, b, n in active) == [(False, 2), (True, 2)]
    finally:
        await store.close()
