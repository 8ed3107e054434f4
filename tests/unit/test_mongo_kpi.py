"""The MongoDB KPI rollups without a server: deltas, rollup contents and reports against SQLite.

One script of lead writes (create, reply, resolve, reopen, reassign, SLA breach, routing) runs
on a real SQLite store, whose triggers keep its rollups, and is mirrored here document by
document the way storage/mongo.py writes: the pre-image of each write plus its update gives
the delta (`facts_after`, `rollup_delta`), applied as the `$inc` upserts `rollup_writes` makes
to in-memory collections. Both rollups must hold the same figures, and the report read from
the in-memory collections (`rollup_breakdowns` / `exact_breakdowns` over a fake `Source`)
must equal SQLite's report. What is left to the contract suite (HUB_TEST_MONGODB_URL): the
pipelines themselves and the server's `$inc`/upsert semantics.
"""

from __future__ import annotations

import random
import sqlite3
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

import bson
import pytest
from bson.codec_options import CodecOptions

import storage.sqlite as sqlite_module
from hub.domain import Lead, LeadKind, LeadStatus
from storage import mongo_kpi
from storage.base import KpiQuery, KpiRow, LeadChanges
from storage.kpi_rollup import (
    DIMENSIONS,
    MEASURES,
    SUMS,
    WEEK,
    LeadFacts,
    Plan,
    day_number,
    rollup_delta,
)
from storage.mongo import _lead_doc, lead_update
from storage.mongo_kpi import Doc, facts_after, facts_of, rollup_writes, touches_kpi
from storage.sqlite import SqliteStore
from tests.support.kpi import KYIV_DST_2026_MOMENTS

T0 = datetime(2026, 5, 1, tzinfo=UTC)
CODEC: CodecOptions[dict[str, Any]] = CodecOptions(tz_aware=True, tzinfo=UTC)


def through_bson(doc: dict[str, Any]) -> dict[str, Any]:
    return bson.decode(bson.encode(doc), codec_options=CODEC)


# --- pure pieces -----------------------------------------------------------------------------
def test_bson_seconds_is_what_bson_stores() -> None:
    rng = random.Random(3)
    kyiv = ZoneInfo("Europe/Kyiv")
    for _ in range(500):
        moment = T0 + timedelta(seconds=rng.uniform(-4e8, 4e8), microseconds=rng.randrange(10**6))
        for value in (moment, moment.astimezone(kyiv)):
            stored = through_bson({"t": value})["t"]
            assert mongo_kpi.bson_seconds(value) == stored.timestamp()
            assert mongo_kpi.bson_datetime(value) == stored
            assert mongo_kpi.bson_seconds(stored) == stored.timestamp()


def test_touches_kpi_and_facts_after_refuse_what_they_cannot_replay() -> None:
    assert not touches_kpi({"$set": {"status": "open", "updated_at": T0, "extra.x": 1}})
    assert touches_kpi({"$set": {"team": "a"}})
    assert touches_kpi({"$unset": {"breached_at": ""}})
    assert touches_kpi([{"$set": {"subject": ""}}])
    before = _lead_doc(_lead(1, T0))
    for update in (
        {"$unset": {"breached_at": ""}},
        {"$min": {"resolved_at": T0}},
        {"$set": {"team.name": "x"}},
    ):
        with pytest.raises(ValueError):
            facts_after(before, update)
    after = facts_after(before, {"$set": {"team": "u", "status": "open"}, "$unset": {"warn_pending_at": ""}})
    assert after == replace(facts_of(before), team="u")


def test_an_unchanged_lead_writes_nothing_and_a_move_writes_both_sides() -> None:
    facts = LeadFacts("t", "a", "email", "message", 1_000_000.0, first_response_at=1_000_600.0)
    assert rollup_writes(rollup_delta(facts, facts)) == []
    moved = replace(facts, team="u")
    writes = rollup_writes(rollup_delta(facts, moved))
    hourly = [
        (key["team"], update["$inc"]["received"]) for name, key, update in writes if name == "kpi_hourly"
    ]
    hist = [(key["team"], update["$inc"]) for name, key, update in writes if name == "kpi_hist"]
    assert sorted(hourly) == [("t", -1), ("u", 1)]
    bucket = mongo_kpi.LeadFacts.buckets(facts)[0][1]
    assert sorted(hist, key=lambda h: h[0]) == [("t", {f"f.{bucket}": -1}), ("u", {f"f.{bucket}": 1})]
    # A missing team is the rollups' '': one key for every lead without one.
    (name, key, _), *_ = rollup_writes(rollup_delta(None, replace(facts, team=None)))
    assert name == "kpi_hourly" and key["team"] == ""


# --- a mirrored write script ------------------------------------------------------------------
def _lead(number: int, created: datetime, **kw: Any) -> Lead:
    fields: dict[str, Any] = {
        "kind": LeadKind.MESSAGE,
        "channel": "email",
        "contact_id": f"c{number}",
        "status": LeadStatus.OPEN,
        "created_at": created,
        "updated_at": created,
        "team": "t",
        "assignee": "a",
        "origin_external_id": f"x{number}",
        "first_response_due": created + timedelta(hours=4),
        "warn_due": created + timedelta(hours=3),
    }
    fields.update(kw)
    return Lead(number=number, **fields)


@dataclass
class Mirror:
    """Lead documents and the rollup collections, as the MongoDB adapter would leave them."""

    leads: dict[int, Doc] = field(default_factory=dict)
    hourly: dict[tuple[Any, ...], Doc] = field(default_factory=dict)
    hist: dict[tuple[Any, ...], Doc] = field(default_factory=dict)

    def apply(self, old: LeadFacts | None, new: LeadFacts | None) -> None:
        for name, key, update in rollup_writes(rollup_delta(old, new)):
            collection = self.hourly if name == "kpi_hourly" else self.hist
            # An `$inc` upsert: the key's document, created from the filter when absent.
            doc = collection.setdefault(tuple(sorted(key.items())), dict(key))
            for path, amount in update["$inc"].items():
                target = doc
                *parents, leaf = path.split(".")
                for part in parents:
                    target = target.setdefault(part, {})
                target[leaf] = target.get(leaf, 0) + amount

    def create(self, lead: Lead) -> None:
        doc = through_bson(_lead_doc(lead))
        self.leads[lead.number] = doc
        self.apply(None, facts_of(_lead_doc(lead)))

    def write(self, number: int, update: Doc, stored: Lead) -> None:
        """Mirror one write: delta from the pre-image + update; the document as SQLite left the lead."""
        before = self.leads[number]
        after = facts_after(before, update)
        # The replayed $set must agree with the adapter semantics SQLite implements too.
        assert after == facts_of(_lead_doc(stored)), (number, update)
        self.apply(facts_of(before), after)
        self.leads[number] = through_bson(_lead_doc(stored))


async def _scripted(tmp_path: Path, count: int) -> tuple[SqliteStore, Mirror]:
    store = SqliteStore(tmp_path / "kpi.db")
    await store.open()
    mirror = Mirror()
    rng = random.Random(11)
    # Some leads exactly on the hour and week marks the test queries cut at.
    week = int(T0.timestamp() // WEEK + 1) * WEEK
    marks = [T0 + timedelta(hours=h) for h in (0, 2, 5, 48, 9 * 24)] + [datetime.fromtimestamp(week, UTC)]
    for number in range(1, count + 1):
        created = T0 + timedelta(seconds=rng.randrange(0, 12 * 86400), milliseconds=rng.randrange(1000))
        if number <= 2 * len(marks):
            created = marks[number % len(marks)]
        kind = rng.choice(list(LeadKind))
        lead = _lead(
            number,
            created,
            kind=kind,
            channel=rng.choice(["email", "webform", "telegram"]),
            assignee=rng.choice(["a", "b", "c", None]),
            team=rng.choice(["t", "u", None]),
        )
        await store.create_lead(lead)
        mirror.create(lead)

    async def update(number: int, changes: LeadChanges) -> None:
        stored = await store.update_lead(number, changes)
        assert stored is not None
        mirror.write(number, lead_update(changes), stored)

    for number in range(1, count + 1):
        lead = await store.get_lead(number)
        assert lead is not None
        if rng.random() < 0.8:
            delay = timedelta(seconds=rng.uniform(0.3, 8 * 3600))
            await update(number, LeadChanges(first_response_at=lead.created_at + _ms(delay)))
    # SLA breaches of the leads still unanswered at T0 + 13 days, claimed like the sweep does.
    now = T0 + timedelta(days=13)
    before = {n: dict(d) for n, d in mirror.leads.items()}
    for claimed in await store.claim_due_breaches(now, count):
        stored = await store.get_lead(claimed.number)
        assert stored is not None and before[claimed.number].get("breached_at") is None
        mirror.write(
            claimed.number, {"$set": {"breached_at": now}, "$unset": {"breach_pending_at": ""}}, stored
        )
    for number in rng.sample(range(1, count + 1), count // 2):
        lead = await store.get_lead(number)
        assert lead is not None
        action = rng.randrange(5)
        if action == 0:
            await update(number, LeadChanges(assignee=rng.choice(["a", "d"]), team="v"))
        elif action == 1:
            delay = _ms(timedelta(seconds=rng.uniform(0.2, 5 * 86400)))
            await update(number, LeadChanges(status=LeadStatus.RESOLVED, resolved_at=lead.created_at + delay))
        elif action == 2:
            await update(number, LeadChanges(status=LeadStatus.OPEN, clear_resolved_at=True))
        elif action == 3:
            # A new due time clears the breach (and the within-target figure moves with it).
            await update(number, LeadChanges(first_response_due=lead.created_at + timedelta(hours=9)))
        else:
            # Routing's compare-and-set: assignee and team in one write.
            load = (await store.load_by_assignee(["e"]))["e"]
            assert await store.assign_if_load(number, "e", "w", load, now, previous=lead.assignee)
            stored = await store.get_lead(number)
            assert stored is not None
            mirror.write(number, {"$set": {"assignee": "e", "team": "w", "updated_at": now}}, stored)
    return store, mirror


def _ms(delta: timedelta) -> timedelta:
    # Whole milliseconds: what MongoDB keeps, so SQLite's floats and BSON dates agree exactly.
    return timedelta(milliseconds=round(delta.total_seconds() * 1000))


def _sqlite_rollups(
    path: Path,
) -> tuple[dict[tuple[Any, ...], tuple[float, ...]], dict[tuple[Any, ...], int]]:
    with sqlite3.connect(path) as db:
        hourly = {
            tuple(row[:5]): tuple(row[5:])
            for row in db.execute(f"SELECT {', '.join(DIMENSIONS)}, hour, {', '.join(SUMS)} FROM kpi_hourly")
            if any(row[5:])
        }
        hist = {
            tuple(row[:7]): row[7]
            for row in db.execute(f"SELECT {', '.join(DIMENSIONS)}, week, measure, bucket, n FROM kpi_hist")
            if row[7]
        }
    return hourly, hist


def _mirror_rollups(
    mirror: Mirror,
) -> tuple[dict[tuple[Any, ...], tuple[float, ...]], dict[tuple[Any, ...], int]]:
    hourly = {
        (*(d[k] for k in DIMENSIONS), d["hour"]): tuple(d[s] for s in SUMS)
        for d in mirror.hourly.values()
        if any(d[s] for s in SUMS)
    }
    hist = {
        (*(d[k] for k in DIMENSIONS), d["week"], measure, int(b), n): n
        for d in mirror.hist.values()
        for measure, _ in MEASURES
        for b, n in d.get(measure, {}).items()
        if n
    }
    return hourly, {key[:-1]: n for key, n in hist.items()}


async def test_mirrored_writes_leave_the_same_rollups_as_the_sqlite_triggers(tmp_path: Path) -> None:
    store, mirror = await _scripted(tmp_path, 300)
    await store.close()
    sqlite_hourly, sqlite_hist = _sqlite_rollups(tmp_path / "kpi.db")
    mongo_hourly, mongo_hist = _mirror_rollups(mirror)
    assert mongo_hist == sqlite_hist
    assert set(mongo_hourly) == set(sqlite_hourly)
    for key, sums in sqlite_hourly.items():
        assert mongo_hourly[key] == pytest.approx(sums, abs=1e-6), key
    # A rebuild (every lead's share, summed) holds the same as the deltas did.
    rebuilt = Mirror()
    for doc in mirror.leads.values():
        rebuilt.apply(None, facts_of(doc))
    assert _mirror_rollups(rebuilt)[1] == mongo_hist
    assert _mirror_rollups(rebuilt)[0].keys() == mongo_hourly.keys()


# --- reports from the mirrored collections ---------------------------------------------------
class FakeSource:
    """`mongo_kpi.Source` over the mirror: what each pipeline returns, computed in Python."""

    def __init__(self, mirror: Mirror) -> None:
        self.mirror = mirror
        self.calls: list[str] = []

    @staticmethod
    def _matches(doc: Doc, query: KpiQuery) -> bool:
        return all(doc.get(d) == v for d, v in mongo_kpi.dims_match(query).items())

    async def lead_sums(self, query: KpiQuery, by_dims: bool, with_times: bool) -> list[Doc]:
        self.calls.append("lead_sums")
        zone = ZoneInfo(query.day_zone)
        start, end = mongo_kpi.bson_seconds(query.start), mongo_kpi.bson_seconds(query.end)
        groups: dict[tuple[Any, ...], Doc] = {}
        for doc in self.mirror.leads.values():
            facts = facts_of(doc)
            if not (start <= facts.created_at < end and self._matches(doc, query)):
                continue
            day = datetime.fromtimestamp(facts.created_at, zone).date().isoformat()
            key = {"day": day, **({d: doc.get(d) for d in DIMENSIONS} if by_dims else {})}
            row = groups.setdefault(
                tuple(key.items()), {"_id": key, **dict.fromkeys(SUMS, 0), "f_all": [], "r_all": []}
            )
            for name, value in zip(SUMS, facts.sums(), strict=True):
                row[name] += value
            f, r = facts.times()
            if with_times:
                row["f_all"] += [] if f is None else [f]
                row["r_all"] += [] if r is None else [r]
        return list(groups.values())

    async def hourly(self, parts: Plan, query: KpiQuery, by_hour: bool) -> list[Doc]:
        self.calls.append("hourly")
        groups: dict[Any, Doc] = {}
        for doc in self.mirror.hourly.values():
            if not (parts.first_hour <= doc["hour"] < parts.last_hour and self._matches(doc, query)):
                continue
            key: Any = doc["hour"] if by_hour else {d: doc[d] for d in DIMENSIONS}
            row = groups.setdefault(repr(key), {"_id": key, **dict.fromkeys(SUMS, 0)})
            for name in SUMS:
                row[name] += doc[name]
        return list(groups.values())

    async def hist(self, parts: Plan, query: KpiQuery) -> list[Doc]:
        self.calls.append("hist")
        return [
            {k: v for k, v in doc.items()}
            for doc in self.mirror.hist.values()
            if parts.first_week <= doc["week"] < parts.last_week and self._matches(doc, query)
        ]

    async def edges(self, parts: Plan, query: KpiQuery, with_weeks: bool) -> list[Doc]:
        self.calls.append("edges")
        ranges = [*parts.hour_edges, *(parts.week_edges if with_weeks else [])]
        return [
            {k: doc.get(k) for k in mongo_kpi.PROJECTION if k != "_id"}
            for doc in self.mirror.leads.values()
            if self._matches(doc, query) and any(lo <= facts_of(doc).created_at < hi for lo, hi in ranges)
        ]


def _assert_same_report(mine: dict[str | None, list[KpiRow]], theirs: dict[str | None, list[KpiRow]]) -> None:
    assert mine.keys() == theirs.keys()
    for grouping, rows in theirs.items():
        assert [r.group for r in mine[grouping]] == [r.group for r in rows], grouping
        for a, b in zip(mine[grouping], rows, strict=True):
            for name in KpiRow.__dataclass_fields__:
                x, y = getattr(a, name), getattr(b, name)
                if isinstance(x, float) and isinstance(y, float):
                    assert x == pytest.approx(y, rel=1e-9, abs=1e-6), (grouping, a.group, name)
                else:
                    assert x == y, (grouping, a.group, name)


QUERIES = [
    # Bounds off the hour and week grid: partial hours and weeks come from the leads.
    KpiQuery(
        T0 + timedelta(hours=1, minutes=17, seconds=3),
        T0 + timedelta(days=9, minutes=5),
        day_zone="Europe/Kyiv",
    ),
    KpiQuery(T0, T0 + timedelta(days=14), day_zone="America/New_York"),
    KpiQuery(
        T0 + timedelta(minutes=7), T0 + timedelta(days=10), day_zone="Asia/Kolkata"
    ),  # +05:30: days from leads
    KpiQuery(T0 + timedelta(hours=5), T0 + timedelta(days=2), team="t", day_zone="Europe/Kyiv"),
    KpiQuery(T0, T0 + timedelta(days=20), assignee="e", kind=LeadKind.MESSAGE),
    KpiQuery(T0 + timedelta(minutes=3), T0 + timedelta(minutes=50)),  # no whole hour
    KpiQuery(T0 - timedelta(days=30), T0 - timedelta(days=20)),  # empty
]
GROUPINGS = (None, "team", "assignee", "channel", "kind", "day")


@pytest.mark.parametrize("sort_limit", [100_000, 0], ids=["exact", "rollups"])
async def test_reports_from_the_mirror_equal_sqlite_reports(
    tmp_path: Path, monkeypatch, sort_limit: int
) -> None:
    monkeypatch.setattr(sqlite_module, "_KPI_SORT_LIMIT", sort_limit)
    store, mirror = await _scripted(tmp_path, 300)
    source = FakeSource(mirror)
    read = mongo_kpi.exact_breakdowns if sort_limit else mongo_kpi.rollup_breakdowns
    try:
        for query in QUERIES:
            for groupings in (GROUPINGS, (None,), ("day",), ("team", "day")):
                expected = await store.kpi_breakdowns(query, groupings)
                _assert_same_report(await read(source, query, groupings), expected)
    finally:
        await store.close()
    if not sort_limit:
        assert {"hourly", "hist", "edges", "lead_sums"} <= set(source.calls)


async def test_days_from_hours_follow_dst(tmp_path: Path) -> None:
    kyiv = ZoneInfo("Europe/Kyiv")
    moments = KYIV_DST_2026_MOMENTS
    mirror = Mirror()
    for number, created in enumerate(moments, start=1):
        mirror.create(_lead(number, created.astimezone(UTC)))
    query = KpiQuery(
        datetime(2026, 3, 1, tzinfo=kyiv), datetime(2026, 11, 1, tzinfo=kyiv), day_zone="Europe/Kyiv"
    )
    tables = await mongo_kpi.rollup_breakdowns(FakeSource(mirror), query, ("day",))
    assert [(r.group, r.received) for r in tables["day"]] == [
        ("2026-03-28", 1),
        ("2026-03-29", 2),
        ("2026-10-25", 2),
        ("2026-10-26", 1),
    ]
    assert day_number(moments[0].timestamp(), kyiv) + 1 == day_number(moments[1].timestamp(), kyiv)


async def test_facts_after_follows_every_kind_of_lead_change(tmp_path: Path) -> None:
    """Any mix of LeadChanges: the replayed $set gives the KPI fields the adapters give the lead."""
    moment = T0 + timedelta(hours=30)
    samples: dict[str, Any] = {
        "status": LeadStatus.RESOLVED,
        "kind": LeadKind.SERVICE_REQUEST,
        "assignee": "z",
        "clear_assignee": True,
        "team": "q",
        "priority": 3,
        "tags": ["x"],
        "first_response_at": moment,
        "resolved_at": moment + timedelta(hours=1),
        "clear_resolved_at": True,
        "first_response_due": moment + timedelta(hours=2),
        "warn_due": moment + timedelta(hours=1),
        "clear_due": True,
        "updated_at": moment,
        "extra": {"k": 1},
        "sla_target": "resolution",
        "sla_started_at": moment,
        "sla_due": moment + timedelta(hours=3),
        "sla_warn_due": moment + timedelta(hours=2),
        "clear_sla": True,
        "pause_sla": True,
        "resolution_due": moment + timedelta(days=1),
        "resolution_warn_due": moment + timedelta(hours=20),
        "clear_sla_paused": True,
        "clear_resolution": True,
        "escalate_at": moment + timedelta(hours=5),
        "escalate_target": "first_response",
    }
    rng = random.Random(23)
    store = SqliteStore(tmp_path / "changes.db")
    await store.open()
    try:
        for number in range(1, 201):
            lead = _lead(number, T0 + timedelta(minutes=number), breached_at=T0 + timedelta(hours=5))
            await store.create_lead(lead)
            before = through_bson(_lead_doc(lead))
            changes = LeadChanges(**{k: v for k, v in samples.items() if rng.random() < 0.25})
            stored = await store.update_lead(number, changes)
            assert stored is not None
            assert facts_after(before, lead_update(changes)) == facts_of(_lead_doc(stored)), changes
    finally:
        await store.close()
