"""Contract: reports over large periods come from the KPI rollups and still equal `kpi_rows`.

The rollup path is forced by a sort limit of 0 (both adapters read it at call time). Every
write path that moves a lead's KPI fields runs before the reports: create, reply, resolve,
reopen, reassign, a new due time, an SLA breach claim and routing's compare-and-set. The
MongoDB-only tests also check that the `$inc` deltas equal a rebuild from the leads, and that
a database without rollups gets them on open.
"""

from __future__ import annotations

import random
from dataclasses import replace
from datetime import timedelta
from typing import Any

import pytest

import storage.mongo as mongo_module
import storage.sqlite as sqlite_module
from hub.domain import LeadKind, LeadStatus
from storage.base import PERCENTILE_ERROR, KpiQuery, LeadChanges, Store
from tests.contract.builders import T0, at, new_lead
from tests.contract.conftest import StoreFactory

GROUPINGS = (None, "team", "assignee", "channel", "kind", "day")
QUERIES = [
    KpiQuery(at(hours=1, minutes=17, seconds=3), at(hours=24 * 9, minutes=5), day_zone="Europe/Kyiv"),
    KpiQuery(T0, at(hours=24 * 14), day_zone="America/New_York"),
    KpiQuery(at(minutes=7), at(hours=24 * 10), day_zone="Asia/Kolkata"),  # +05:30: days from leads
    KpiQuery(at(hours=5), at(hours=48), team="t", day_zone="Europe/Kyiv"),
    KpiQuery(T0, at(hours=24 * 20), assignee="e", kind=LeadKind.MESSAGE),
    KpiQuery(at(minutes=3), at(minutes=50)),  # no whole hour
]


@pytest.fixture
def rollups_always(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(sqlite_module, "_KPI_SORT_LIMIT", 0)
    monkeypatch.setattr(mongo_module, "_KPI_SORT_LIMIT", 0)


async def _scripted(store: Store, count: int) -> None:
    rng = random.Random(17)
    numbers = []
    for i in range(count):
        created = at(seconds=rng.randrange(0, 12 * 86400)) if i >= 4 else at(hours=(0, 2, 5, 48)[i])
        lead = await new_lead(
            store,
            created_at=created,
            updated_at=created,
            kind=rng.choice(list(LeadKind)),
            channel=rng.choice(["email", "webform", "telegram"]),
            assignee=rng.choice(["a", "b", None]),
            team=rng.choice(["t", "u", None]),
            status=LeadStatus.OPEN,
            first_response_due=created + timedelta(hours=4),
            warn_due=created + timedelta(hours=3),
        )
        numbers.append(lead.number)
        if rng.random() < 0.8:
            delay = timedelta(seconds=rng.randrange(1, 8 * 3600))
            await store.update_lead(lead.number, LeadChanges(first_response_at=created + delay))
    now = at(hours=24 * 13)
    await store.claim_sla_marks(now, count)
    for number in rng.sample(numbers, count // 2):
        lead = await store.get_lead(number)
        assert lead is not None
        action = rng.randrange(5)
        if action == 0:
            await store.update_lead(number, LeadChanges(assignee=rng.choice(["a", "d"]), team="v"))
        elif action == 1:
            delay = timedelta(seconds=rng.randrange(1, 5 * 86400))
            await store.update_lead(
                number, LeadChanges(status=LeadStatus.RESOLVED, resolved_at=lead.created_at + delay)
            )
        elif action == 2:
            await store.update_lead(number, LeadChanges(status=LeadStatus.OPEN, clear_resolved_at=True))
        elif action == 3:
            await store.update_lead(
                number, LeadChanges(first_response_due=lead.created_at + timedelta(hours=9))
            )
        else:
            load = (await store.load_by_assignee(["e"]))["e"]
            assert await store.assign_if_load(number, "e", "w", load, now, previous=lead.assignee)


async def _assert_reports_match(store: Store) -> None:
    for query in QUERIES:
        tables = await store.kpi_breakdowns(query, GROUPINGS)
        for grouping in GROUPINGS:
            expected = await store.kpi_rows(replace(query, group_by=grouping))
            got = tables[grouping]
            assert [r.group for r in got] == [r.group for r in expected], (query, grouping)
            for mine, theirs in zip(got, expected, strict=True):
                where = (query, grouping, mine.group)
                for name in (
                    "received",
                    "responded",
                    "within_target",
                    "breached",
                    "resolved",
                    "breached_answered",
                ):
                    assert getattr(mine, name) == getattr(theirs, name), (*where, name)
                for name in ("frt_mean", "resolution_mean"):
                    assert getattr(mine, name) == pytest.approx(getattr(theirs, name)), (*where, name)
                assert mine.percentiles_approximate == (grouping != "day"), where
                for name in ("frt_median", "frt_p90", "resolution_median"):
                    exact = getattr(theirs, name)
                    if exact is None:
                        assert getattr(mine, name) is None, (*where, name)
                    else:
                        # The bound the API and bench/README state.
                        assert abs(getattr(mine, name) - exact) <= PERCENTILE_ERROR * exact + 0.5, (
                            *where,
                            name,
                        )


async def test_reports_from_rollups_equal_kpi_rows_after_every_write_path(
    store: Store, rollups_always: None
) -> None:
    await _scripted(store, 150)
    await _assert_reports_match(store)


def _raw(store: Store, name: str) -> Any:
    if store.backend != "mongo":
        pytest.skip("MongoDB's rollup collections")
    return store._col(name)  # type: ignore[attr-defined]


async def _rollups(store: Store) -> tuple[dict[Any, Any], dict[Any, Any]]:
    """The rollup collections, entries that cancelled out to zero left out."""
    hourly: dict[Any, Any] = {}
    async for doc in _raw(store, "kpi_hourly").find({}, {"_id": 0}):
        sums = {k: v for k, v in doc.items() if k not in ("team", "assignee", "channel", "kind", "hour")}
        if any(sums.values()):
            hourly[(doc["team"], doc["assignee"], doc["channel"], doc["kind"], doc["hour"])] = sums
    hist: dict[Any, int] = {}
    async for doc in _raw(store, "kpi_hist").find({}, {"_id": 0}):
        for measure in ("f", "r"):
            for b, n in (doc.get(measure) or {}).items():
                if n:
                    hist[
                        (doc["team"], doc["assignee"], doc["channel"], doc["kind"], doc["week"], measure, b)
                    ] = n
    return hourly, hist


async def test_mongo_deltas_equal_a_rebuild_from_the_leads(store: Store) -> None:
    _raw(store, "kpi_hourly")
    await _scripted(store, 120)
    hourly, hist = await _rollups(store)
    assert hourly and hist
    assert await store.rebuild_kpi_rollups() == 120  # type: ignore[attr-defined]
    rebuilt_hourly, rebuilt_hist = await _rollups(store)
    assert rebuilt_hist == hist
    assert rebuilt_hourly.keys() == hourly.keys()
    for key, sums in hourly.items():
        assert rebuilt_hourly[key] == pytest.approx(sums), key


async def test_mongo_fills_missing_rollups_on_open(store_factory: StoreFactory, rollups_always: None) -> None:
    first = await store_factory()
    _raw(first, "kpi_hourly")
    await _scripted(first, 120)
    # A database from before the rollups: no collections, no marker.
    for name in ("kpi_hourly", "kpi_hist", "kpi_meta"):
        await _raw(first, name).drop()
    second = await store_factory()
    await _assert_reports_match(second)
