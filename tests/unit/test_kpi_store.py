"""KPI aggregation in the SQLite store: both percentile strategies agree with `statistics`."""

from __future__ import annotations

import random
import statistics
from dataclasses import replace
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

import storage.sqlite as sqlite_module
from hub.domain import Lead, LeadKind, LeadStatus
from storage.base import KpiQuery, LeadChanges
from storage.sqlite import SqliteStore

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


@pytest.mark.parametrize("sort_limit", [100_000, 0], ids=["sorted-in-python", "index-walk"])
async def test_one_scan_report_matches_per_grouping_queries(
    tmp_path: Path, monkeypatch, sort_limit: int
) -> None:
    monkeypatch.setattr(sqlite_module, "_KPI_SORT_LIMIT", sort_limit)
    store, _ = await _store_with_leads(tmp_path / "kpi.db", 300)
    try:
        query = KpiQuery(T0 + timedelta(days=1), T0 + timedelta(days=8), day_zone="Europe/Kyiv")
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
                for name in ("frt_mean", "frt_median", "frt_p90", "resolution_mean", "resolution_median"):
                    assert getattr(mine, name) == pytest.approx(getattr(theirs, name)), (grouping, name)
        with pytest.raises(ValueError):
            await store.kpi_breakdowns(query, ("status",))
    finally:
        await store.close()


async def test_one_scan_days_follow_local_midnights_across_dst(tmp_path: Path) -> None:
    from zoneinfo import ZoneInfo

    kyiv = ZoneInfo("Europe/Kyiv")
    store = SqliteStore(tmp_path / "days.db")
    await store.open()
    try:
        # Both DST changes of 2026 inside one period, leads just either side of local midnights.
        moments = [
            datetime(2026, 3, 28, 23, 59, tzinfo=kyiv),
            datetime(2026, 3, 29, 0, 1, tzinfo=kyiv),
            datetime(2026, 3, 29, 23, 59, tzinfo=kyiv),
            datetime(2026, 10, 25, 0, 1, tzinfo=kyiv),
            datetime(2026, 10, 25, 23, 59, tzinfo=kyiv),
            datetime(2026, 10, 26, 0, 1, tzinfo=kyiv),
        ]
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
