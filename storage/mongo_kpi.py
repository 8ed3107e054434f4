"""MongoDB: the KPI rollups (`kpi_hourly`, `kpi_hist`) and the one-call report read from them.

MongoDB has no triggers, so the adapter keeps the rollups itself, in every write of a lead's
KPI fields (storage/mongo.py: create, update, SLA breach claims, assignment): the write returns
the lead as it was just before it (`ReturnDocument.BEFORE`, atomic on the one document), the
new state is that plus the write's `$set` (`facts_after`), and the difference
(`kpi_rollup.rollup_delta`: the old share taken away, the new one added) goes out as `$inc`
upserts (`rollup_writes`). Because each delta comes from the pre-image of its own atomic write,
concurrent writers to one lead add up exactly; on a replica set the delta is written in the
same transaction as the lead, on a standalone server just after it (a crash in between leaves
the rollups off by that write until `rebuild`).

Documents:

- `kpi_hourly`: {team, assignee, channel, kind, hour, <each of SUMS>}, unique on the key;
- `kpi_hist`: {team, assignee, channel, kind, week, f: {bucket: n}, r: {bucket: n}}, unique
  on the key. One document per week holds the whole histogram of both measures (about 300
  buckets at most), so a year is ~50 documents per group key, not one per bucket.
- `kpi_meta` {_id: "rollups", version, state: building|ready}: reports use the rollups only
  when ready; the first process that opens a database without them fills them from `leads`.

Reports of up to `KPI_SORT_LIMIT` leads are exact (one grouped pipeline that also returns the
times, sorted here); larger ones read whole hours/weeks from the rollups and the partial
edges from `leads`, like SQLite (storage/sqlite_kpi.py), through the same pure code
(storage/kpi_rollup.py). Everything that does not talk to the server is a pure function here,
tested in tests/unit/test_mongo_kpi.py without a server.
"""

from __future__ import annotations

import asyncio
import calendar
import logging
from collections.abc import Iterable, Mapping
from datetime import UTC, date, datetime, timedelta
from typing import Any, Protocol
from zoneinfo import ZoneInfo

from pymongo import ReturnDocument, UpdateOne
from pymongo.asynchronous.database import AsyncDatabase
from pymongo.errors import DuplicateKeyError

from storage.base import KpiQuery, KpiRow
from storage.kpi_rollup import (
    DIMENSIONS,
    EPOCH,
    HOUR,
    MEASURES,
    SUMS,
    WATCHED,
    Fine,
    HistCounts,
    LeadFacts,
    Plan,
    RollupDelta,
    Tables,
    day_number,
    plan,
    undo_blank,
    whole_hour_zone,
)

log = logging.getLogger(__name__)

Doc = dict[str, Any]

HOURLY = "kpi_hourly"
HIST = "kpi_hist"
META = "kpi_meta"
#: Bump when what the rollups hold changes: the next open fills them again from `leads`.
#: 2: breaches count first-response breaches only (they counted a breach of any target).
ROLLUP_VERSION = 2
#: A rebuild that has not finished after this long is taken to have died; another may start.
REBUILD_STALE = timedelta(hours=1)
#: Lead fields the rollups read (the projection of every read that feeds them).
PROJECTION: Doc = {"_id": 0, **dict.fromkeys(WATCHED, 1)}
_BATCH = 1000


# --- write side: old lead -> new lead -> $inc documents --------------------------------------
def _millis(value: datetime) -> int:
    # PyMongo's own encoding (bson._datetime_to_millis): naive is UTC, microseconds floored to ms.
    offset = value.utcoffset()
    if offset is not None:
        value = (value - offset).replace(tzinfo=None)
    return calendar.timegm(value.timetuple()) * 1000 + value.microsecond // 1000


def bson_seconds(value: datetime) -> float:
    """POSIX seconds of a datetime as BSON stores it: UTC, truncated to whole milliseconds."""
    return _millis(value) / 1000


def bson_datetime(value: datetime) -> datetime:
    """The datetime a BSON round trip gives back (aware UTC, whole milliseconds)."""
    return datetime(1970, 1, 1, tzinfo=UTC) + timedelta(milliseconds=_millis(value))


def facts_of(doc: Mapping[str, Any]) -> LeadFacts:
    """The rollup fields of a lead document (as stored, or as about to be stored)."""

    def seconds(name: str) -> float | None:
        value = doc.get(name)
        return None if value is None else bson_seconds(value)

    created = seconds("created_at")
    if created is None:
        raise ValueError(f"lead document without created_at: {dict(doc)!r}")
    return LeadFacts(
        team=doc.get("team"),
        assignee=doc.get("assignee"),
        channel=doc.get("channel"),
        kind=doc.get("kind"),
        created_at=created,
        first_response_at=seconds("first_response_at"),
        first_response_due=seconds("first_response_due"),
        resolved_at=seconds("resolved_at"),
        breached_at=seconds("breached_at"),
    )


def _watched(path: str) -> bool:
    return path.split(".", 1)[0] in WATCHED


def touches_kpi(update: Mapping[str, Any] | list[Any]) -> bool:
    """Whether a lead update may change what the lead adds to the rollups."""
    if isinstance(update, list):
        return True  # a pipeline update can compute anything
    return any(_watched(path) for fields in update.values() for path in fields)


def facts_after(before: Mapping[str, Any], update: Mapping[str, Any]) -> LeadFacts:
    """The rollup fields after `update` is applied to the lead `before` (its pre-image)."""
    for operator, fields in update.items():
        touched = [path for path in fields if _watched(path)]
        # Only a plain `$set` of whole fields is replayed here; anything else would need the
        # server's semantics, so it is refused rather than guessed.
        if touched and (operator != "$set" or any("." in path for path in touched)):
            raise ValueError(f"cannot follow {operator} of {touched} in the KPI rollups")
    after = dict(before)
    for path, value in update.get("$set", {}).items():
        if path in WATCHED:
            after[path] = value
    return facts_of(after)


def rollup_writes(delta: RollupDelta) -> list[tuple[str, Doc, Doc]]:
    """(collection, filter, update) `$inc` upserts that apply a delta to the rollups."""
    writes: list[tuple[str, Doc, Doc]] = []
    for (team, assignee, channel, kind, hour), sums in delta.hourly.items():
        key: Doc = {"team": team, "assignee": assignee, "channel": channel, "kind": kind, "hour": hour}
        writes.append((HOURLY, key, {"$inc": dict(zip(SUMS, sums, strict=True))}))
    for (team, assignee, channel, kind, week), measures in delta.hist.items():
        key = {"team": team, "assignee": assignee, "channel": channel, "kind": kind, "week": week}
        inc = {f"{m}.{b}": n for m, counts in sorted(measures.items()) for b, n in sorted(counts.items())}
        writes.append((HIST, key, {"$inc": inc}))
    return writes


async def apply_delta(db: AsyncDatabase[Doc], delta: RollupDelta, session: Any = None) -> None:
    """Write a delta to the rollups (in `session`'s transaction when there is one)."""
    for name, key, update in rollup_writes(delta):
        try:
            await db[name].update_one(key, update, upsert=True, session=session)
        except DuplicateKeyError:
            # Two first upserts of one key raced (servers before 4.2 do not retry that
            # themselves): the document exists now, so the same update matches it.
            if session is not None:
                raise
            await db[name].update_one(key, update, upsert=True)


# --- rebuild ----------------------------------------------------------------------------------
async def ensure_rollups(db: AsyncDatabase[Doc]) -> None:
    """Fill the rollups from `leads` unless they are ready (or another process is filling them)."""
    meta = await db[META].find_one({"_id": "rollups"})
    if meta is not None and meta.get("state") == "ready" and meta.get("version") == ROLLUP_VERSION:
        return
    now = datetime.now(UTC)
    try:
        # The claim matches an outdated or stale marker; with none matching, the upsert inserts
        # `_id: rollups` and collides with the marker another process holds.
        await db[META].find_one_and_update(
            {
                "_id": "rollups",
                "$or": [
                    {"version": {"$ne": ROLLUP_VERSION}},
                    {"state": {"$nin": ["building", "ready"]}},
                    {"state": "building", "since": {"$lt": now - REBUILD_STALE}},
                ],
            },
            {"$set": {"state": "building", "version": ROLLUP_VERSION, "since": now}},
            upsert=True,
            return_document=ReturnDocument.AFTER,
        )
    except DuplicateKeyError:
        log.info("KPI rollups: another process is filling them; reports read leads until it is done")
        return
    if await db["leads"].find_one({}, {"_id": 1}) is None:
        # A new database: nothing to fill, and no scan that could race the first writers'
        # deltas (hubs starting together on an empty database would otherwise count a lead twice).
        await _mark_ready(db)
        return
    await rebuild(db)


async def _mark_ready(db: AsyncDatabase[Doc]) -> None:
    await db[META].update_one(
        {"_id": "rollups"},
        {"$set": {"state": "ready", "version": ROLLUP_VERSION, "built_at": datetime.now(UTC)}},
    )


async def rebuild(db: AsyncDatabase[Doc]) -> int:
    """Empty the rollups and fill them from every lead; returns how many leads were read.

    Lead writes by other processes while this runs can be counted twice or not at all (their
    delta races the scan): run it when no hub writes, e.g. after an upgrade or to repair.
    """
    await db[META].update_one(
        {"_id": "rollups"},
        {"$set": {"state": "building", "version": ROLLUP_VERSION, "since": datetime.now(UTC)}},
        upsert=True,
    )
    await db[HOURLY].delete_many({})
    await db[HIST].delete_many({})
    total = RollupDelta()
    count = 0
    async for doc in db["leads"].find({}, PROJECTION, batch_size=10_000):
        total.add(facts_of(doc), 1)
        count += 1
    by_collection: dict[str, list[UpdateOne]] = {HOURLY: [], HIST: []}
    for name, key, update in rollup_writes(total.pruned()):
        by_collection[name].append(UpdateOne(key, update, upsert=True))
    for name, requests in by_collection.items():
        for i in range(0, len(requests), _BATCH):
            await db[name].bulk_write(requests[i : i + _BATCH], ordered=False)
    await _mark_ready(db)
    log.info("KPI rollups filled from %d leads", count)
    return count


async def rollups_ready(db: AsyncDatabase[Doc]) -> bool:
    """True when the rollups are complete for this version (else reports read `leads`)."""
    meta = await db[META].find_one({"_id": "rollups"})
    return meta is not None and meta.get("state") == "ready" and meta.get("version") == ROLLUP_VERSION


# --- read side: pipelines and how their rows fold into report tables -------------------------
def dims_match(query: KpiQuery) -> Doc:
    """Equality filters of the query's dimensions (the same field names in leads and rollups)."""
    values = (query.team, query.assignee, query.channel, query.kind.value if query.kind else None)
    return {d: v for d, v in zip(DIMENSIONS, values, strict=True) if v is not None}


def _when(seconds: float) -> datetime:
    return datetime.fromtimestamp(seconds, UTC)


def period_match(query: KpiQuery) -> Doc:
    """Leads created in the query's period (no dimension filters)."""
    return {"created_at": {"$gte": query.start, "$lt": query.end}}


def present(field: str) -> Doc:
    """True in a pipeline when the lead has `field` set (neither missing nor null)."""
    return {"$ne": [{"$ifNull": [f"${field}", None]}, None]}


def _flag(condition: Doc) -> Doc:
    return {"$cond": [condition, 1, 0]}


def outcome_flags() -> Doc:
    """`$project` fields 1/0: answered within target (ok), breached (br), breached then answered (bra)."""
    return {
        "ok": _flag(
            {
                "$and": [
                    present("first_response_at"),
                    present("first_response_due"),
                    {"$lte": ["$first_response_at", "$first_response_due"]},
                ]
            }
        ),
        "br": _flag(present("breached_at")),
        "bra": _flag({"$and": [present("breached_at"), present("first_response_at")]}),
    }


def _seconds_or_absent(field: str) -> Doc:
    # Absent (not null) when the lead has no such time: `$sum` and `$push` skip it.
    return {
        "$cond": [
            present(field),
            {"$divide": [{"$subtract": [f"${field}", "$created_at"]}, 1000]},
            "$$REMOVE",
        ]
    }


def lead_sums_pipeline(query: KpiQuery, by_dims: bool, with_times: bool) -> list[Doc]:
    """Leads of the period grouped by local day (and team/assignee/channel/kind): `SUMS`, times.

    Grouping always includes the day so that no group's time list nears the 16 MB document
    limit, whatever the period.
    """
    key: Doc = {"day": "$day"}
    if by_dims:
        key.update({d: f"${d}" for d in DIMENSIONS})
    project: Doc = {
        **dict.fromkeys(DIMENSIONS, 1),
        "day": {"$dateToString": {"format": "%Y-%m-%d", "date": "$created_at", "timezone": query.day_zone}},
        "f": _seconds_or_absent("first_response_at"),
        "r": _seconds_or_absent("resolved_at"),
        "fr": _flag(present("first_response_at")),
        "rs": _flag(present("resolved_at")),
        **outcome_flags(),
    }
    group: Doc = {
        "_id": key,
        "received": {"$sum": 1},
        "responded": {"$sum": "$fr"},
        "within": {"$sum": "$ok"},
        "breached": {"$sum": "$br"},
        "breached_answered": {"$sum": "$bra"},
        "resolved": {"$sum": "$rs"},
        "frt_sum": {"$sum": "$f"},
        "rt_sum": {"$sum": "$r"},
    }
    if with_times:
        group["f_all"] = {"$push": "$f"}
        group["r_all"] = {"$push": "$r"}
    return [
        {"$match": {**period_match(query), **dims_match(query)}},
        {"$project": project},
        {"$group": group},
    ]


def _day_of(iso: str | None) -> int | None:
    return None if iso is None else (date.fromisoformat(iso) - EPOCH).days


def fold_lead_sums(
    tables: Tables, rows: Iterable[Mapping[str, Any]], only: tuple[str | None, ...] | None = None
) -> list[tuple[Fine, list[float], list[float]]]:
    """Add `lead_sums_pipeline` rows to the tables; returns each row's times for percentiles."""
    times: list[tuple[Fine, list[float], list[float]]] = []
    for row in rows:
        key = row["_id"]
        fine = (*(key.get(d) for d in DIMENSIONS), _day_of(key.get("day")))
        tables.add(fine, row, only)
        fs = [v for v in row.get("f_all", []) if v is not None]
        rs = [v for v in row.get("r_all", []) if v is not None]
        if fs or rs:
            times.append(((*fine[:4], None), fs, rs))
    return times


class Source(Protocol):
    """What the report reads from the server; `MongoSource` runs the pipelines, tests fake them."""

    async def lead_sums(self, query: KpiQuery, by_dims: bool, with_times: bool) -> list[Doc]:
        """The rows of `lead_sums_pipeline`."""

    async def hourly(self, parts: Plan, query: KpiQuery, by_hour: bool) -> list[Doc]:
        """The rows of `hourly_pipeline`."""

    async def hist(self, parts: Plan, query: KpiQuery) -> list[Doc]:
        """The `kpi_hist` documents matching `hist_filter`."""

    async def edges(self, parts: Plan, query: KpiQuery, with_weeks: bool) -> list[Doc]:
        """The lead documents (`PROJECTION`) matching `edge_filter`."""


class MongoSource:
    """`Source` on a MongoDB database."""

    def __init__(self, db: AsyncDatabase[Doc]) -> None:
        self._db = db

    async def _aggregate(self, collection: str, pipeline: list[Doc]) -> list[Doc]:
        return [row async for row in await self._db[collection].aggregate(pipeline, allowDiskUse=True)]

    async def _find(self, collection: str, match: Doc, projection: Doc) -> list[Doc]:
        return [doc async for doc in self._db[collection].find(match, projection, batch_size=10_000)]

    async def lead_sums(self, query: KpiQuery, by_dims: bool, with_times: bool) -> list[Doc]:
        return await self._aggregate("leads", lead_sums_pipeline(query, by_dims, with_times))

    async def hourly(self, parts: Plan, query: KpiQuery, by_hour: bool) -> list[Doc]:
        return await self._aggregate(HOURLY, hourly_pipeline(parts, query, by_hour))

    async def hist(self, parts: Plan, query: KpiQuery) -> list[Doc]:
        return await self._find(HIST, hist_filter(parts, query), {"_id": 0})

    async def edges(self, parts: Plan, query: KpiQuery, with_weeks: bool) -> list[Doc]:
        return await self._find("leads", edge_filter(parts, query, with_weeks), PROJECTION)


async def exact_breakdowns(
    source: Source, query: KpiQuery, groupings: tuple[str | None, ...]
) -> dict[str | None, list[KpiRow]]:
    """Exact report: one grouped pass over the period's leads, percentiles sorted here."""
    tables = Tables(groupings)
    times = fold_lead_sums(tables, await source.lead_sums(query, True, bool(tables.ranked)))
    if tables.ranked:
        tables.exact_percentiles_grouped(times)
    return tables.rows()


def hourly_pipeline(parts: Plan, query: KpiQuery, by_hour: bool) -> list[Doc]:
    """Whole hours of the hourly rollup, summed per group key (or per hour, for local days)."""
    key: Any = "$hour" if by_hour else {d: f"${d}" for d in DIMENSIONS}
    return [
        {"$match": {"hour": {"$gte": parts.first_hour, "$lt": parts.last_hour}, **dims_match(query)}},
        {"$group": {"_id": key, **{s: {"$sum": f"${s}"} for s in SUMS}}},
    ]


def fold_hourly(tables: Tables, rows: Iterable[Mapping[str, Any]]) -> None:
    """Add per-group-key hourly sums to every grouping but the days."""
    for row in rows:
        key = row["_id"]
        tables.add((*(undo_blank(key.get(d)) for d in DIMENSIONS), None), row, tables.ranked)


def fold_hours_into_days(tables: Tables, rows: Iterable[Mapping[str, Any]], zone: ZoneInfo) -> None:
    """Add per-hour sums to the local days they fall in (zones with whole-hour offsets)."""
    for row in rows:
        tables.add((None, None, None, None, day_number(int(row["_id"]) * HOUR, zone)), row, ("day",))


def hist_filter(parts: Plan, query: KpiQuery) -> Doc:
    """Whole weeks of the histogram rollup."""
    return {"week": {"$gte": parts.first_week, "$lt": parts.last_week}, **dims_match(query)}


def fold_hist(counts: HistCounts, docs: Iterable[Mapping[str, Any]]) -> None:
    """Add `kpi_hist` documents to the histogram counts (summed per group key first)."""
    merged: dict[tuple[Any, ...], dict[str, dict[int, int]]] = {}
    for doc in docs:
        per_key = merged.setdefault(tuple(undo_blank(doc.get(d)) for d in DIMENSIONS), {})
        for measure, _ in MEASURES:
            target = per_key.setdefault(measure, {})
            for b, n in (doc.get(measure) or {}).items():
                if n:
                    k = int(b)
                    target[k] = target.get(k, 0) + int(n)
    for dims, measures in merged.items():
        for measure, buckets in measures.items():
            for b, n in buckets.items():
                if n:
                    counts.add(measure, (*dims, None), b, n)


def edge_filter(parts: Plan, query: KpiQuery, with_weeks: bool) -> Doc:
    """Leads of the partial hours (and weeks) at the period's ends."""
    ranges = [*parts.hour_edges, *(parts.week_edges if with_weeks else [])]
    return {
        "$or": [{"created_at": {"$gte": _when(lo), "$lt": _when(hi)}} for lo, hi in ranges],
        **dims_match(query),
    }


def fold_edges(
    tables: Tables,
    counts: HistCounts | None,
    leads: Iterable[LeadFacts],
    parts: Plan,
    zone: ZoneInfo,
    sum_groupings: tuple[str | None, ...],
) -> None:
    """Add the edge leads: sums of those in the partial hours, buckets of those in the partial weeks."""
    with_day = "day" in sum_groupings
    sums: dict[Fine, list[float]] = {}
    for lead in leads:
        at = lead.created_at
        if any(lo <= at < hi for lo, hi in parts.hour_edges):
            fine = (
                lead.team,
                lead.assignee,
                lead.channel,
                lead.kind,
                day_number(at, zone) if with_day else None,
            )
            total = sums.setdefault(fine, [0] * len(SUMS))
            for i, value in enumerate(lead.sums()):
                total[i] += value
        if counts is not None and any(lo <= at < hi for lo, hi in parts.week_edges):
            for measure, b in lead.buckets():
                counts.add(measure, (lead.team, lead.assignee, lead.channel, lead.kind, None), b, 1)
    for fine, total in sums.items():
        tables.add(fine, dict(zip(SUMS, total, strict=True)), sum_groupings)


async def rollup_breakdowns(
    source: Source, query: KpiQuery, groupings: tuple[str | None, ...]
) -> dict[str | None, list[KpiRow]]:
    """Report of a large period: whole hours/weeks from the rollups, the edges from `leads`."""
    tables = Tables(groupings)
    zone = ZoneInfo(query.day_zone)
    parts = plan(bson_seconds(query.start), bson_seconds(query.end))
    days = "day" in groupings
    days_from_hours = not days or whole_hour_zone(query)
    counts = HistCounts(tables.ranked) if tables.ranked else None
    with_weeks = counts is not None
    # Independent reads, in flight together: the server works on them side by side.
    fine_rows, hour_rows, hist_docs, edge_docs, day_rows = await asyncio.gather(
        source.hourly(parts, query, by_hour=False) if tables.ranked else _nothing(),
        source.hourly(parts, query, by_hour=True) if days and days_from_hours else _nothing(),
        source.hist(parts, query) if with_weeks and parts.first_week < parts.last_week else _nothing(),
        source.edges(parts, query, with_weeks)
        if parts.hour_edges or (with_weeks and parts.week_edges)
        else _nothing(),
        # Hours straddle this zone's midnights: its days come from one pass over the leads.
        source.lead_sums(query, False, False) if days and not days_from_hours else _nothing(),
    )
    fold_hourly(tables, fine_rows)
    fold_hours_into_days(tables, hour_rows, zone)
    fold_lead_sums(tables, day_rows, ("day",))
    sum_groupings = groupings if days_from_hours else tables.ranked
    fold_edges(tables, counts, [facts_of(d) for d in edge_docs], parts, zone, sum_groupings)
    if counts is not None:
        fold_hist(counts, hist_docs)
        tables.histogram_percentiles(counts)
    return tables.rows(approximate=True)


async def _nothing() -> list[Doc]:
    return []
