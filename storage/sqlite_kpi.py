"""SQLite: a whole KPI report (summary, breakdowns, per-day series) in one call, fast at 1M leads.

Two ways, chosen by the number of leads in the period:

- Up to `_KPI_SORT_LIMIT` leads (the dashboard's default 30 days, comparisons): exact. The
  period is scanned once, grouped by the finest key the report needs (team, assignee, channel,
  kind, local day); every coarser grouping is summed from those rows here (counts and sums add
  up; means are sum / count). The period's response/resolution times are read once and sorted
  here for every grouping at once, so percentiles are exact.
- Larger periods: from the rollup tables that triggers on `leads` keep in step with every lead
  write (`kpi_hourly`: counts and sums per UTC hour and team/assignee/channel/kind; `kpi_hist`:
  log-bucketed histograms of first-response and resolution times per UTC week and the same
  keys). Whole hours and weeks come from the rollups, the partial hour/week at each end of the
  period from `leads` itself, so counts, sums and means stay exact; medians and p90 are read off
  the histograms, within `PERCENTILE_ERROR` (relative, or half a second below one second).
  Local days are cut from whole UTC hours; in zones whose offset is not whole hours the per-day
  series comes from one scan of the leads instead.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Awaitable, Callable, Iterable
from dataclasses import dataclass, field
from datetime import date, datetime, timedelta
from typing import Any
from zoneinfo import ZoneInfo

import aiosqlite

from storage.base import KPI_GROUPS, PERCENTILE_ERROR, KpiQuery, KpiRow, interpolated_percentiles

#: Columns of the finest grouping, in the order the scan returns them.
_DIMENSIONS = ("team", "assignee", "channel", "kind")
_EPOCH = date(1970, 1, 1)
_HOUR = 3600
_WEEK = 7 * 86400
#: Histogram buckets grow by this ratio: bucket b >= 1 holds [RATIO**(b-1), RATIO**b) seconds.
_RATIO = 1.05
# A value taken as its bucket's middle is off by at most sqrt(ratio) - 1 of itself.
assert math.sqrt(_RATIO) - 1 <= PERCENTILE_ERROR

Read = Callable[[str, Iterable[Any]], Awaitable[list[Any]]]
Filters = Callable[[KpiQuery], tuple[list[str], list[Any]]]

_MEASURES = (("f", "first_response_at"), ("r", "resolved_at"))
_SUMS = ("received", "responded", "within", "breached", "breached_answered", "resolved", "frt_sum", "rt_sum")


def _contribution(p: str) -> list[str]:
    """SQL for one lead's (row `p`: NEW or OLD) contribution to each `kpi_hourly` sum."""
    return [
        "1",
        f"{p}.first_response_at IS NOT NULL",
        f"IFNULL({p}.first_response_at <= {p}.first_response_due, 0)",
        f"{p}.breached_at IS NOT NULL",
        f"{p}.breached_at IS NOT NULL AND {p}.first_response_at IS NOT NULL",
        f"{p}.resolved_at IS NOT NULL",
        f"IFNULL({p}.first_response_at - {p}.created_at, 0)",
        f"IFNULL({p}.resolved_at - {p}.created_at, 0)",
    ]


def _keys(p: str) -> str:
    return ", ".join(f"IFNULL({p}.{d}, '')" for d in _DIMENSIONS)


def _bucket_sql(value: str) -> str:
    return f"(CASE WHEN {value} < 1 THEN 0 ELSE 1 + CAST(ln({value}) / ln({_RATIO}) AS INTEGER) END)"


def _bucket(value: float) -> int:
    return 0 if value < 1 else 1 + int(math.log(value) / math.log(_RATIO))


def _middle(bucket: int) -> float:
    return 0.5 if bucket == 0 else _RATIO ** (bucket - 0.5)


def _apply(p: str, sign: str) -> str:
    """Trigger statements adding (`sign` 1) or removing (-1) lead `p`'s share of the rollups."""
    values = ", ".join(f"{sign} * ({c})" for c in _contribution(p))
    updates = ", ".join(f"{c} = {c} + excluded.{c}" for c in _SUMS)
    dims = ", ".join(_DIMENSIONS)
    statements = [
        f"INSERT INTO kpi_hourly ({dims}, hour, {', '.join(_SUMS)}) VALUES ({_keys(p)}, "
        f"CAST({p}.created_at / {_HOUR} AS INTEGER), {values}) "
        f"ON CONFLICT ({dims}, hour) DO UPDATE SET {updates};"
    ]
    for measure, column in _MEASURES:
        statements.append(
            f"INSERT INTO kpi_hist ({dims}, measure, bucket, week, n) SELECT {_keys(p)}, '{measure}', "
            f"{_bucket_sql(f'{p}.{column} - {p}.created_at')}, CAST({p}.created_at / {_WEEK} AS INTEGER), "
            f"{sign} WHERE {p}.{column} IS NOT NULL "
            f"ON CONFLICT ({dims}, measure, bucket, week) DO UPDATE SET n = n + excluded.n;"
        )
    return "\n".join(statements)


_WATCHED = (
    "created_at",
    *_DIMENSIONS,
    "first_response_at",
    "first_response_due",
    "resolved_at",
    "breached_at",
)

_ROLLUP_TABLES = f"""
CREATE TABLE kpi_hourly (team TEXT NOT NULL, assignee TEXT NOT NULL, channel TEXT NOT NULL,
    kind TEXT NOT NULL, hour INTEGER NOT NULL, {", ".join(f"{c} NUMERIC NOT NULL" for c in _SUMS)},
    PRIMARY KEY (team, assignee, channel, kind, hour)) WITHOUT ROWID;
CREATE TABLE kpi_hist (team TEXT NOT NULL, assignee TEXT NOT NULL, channel TEXT NOT NULL,
    kind TEXT NOT NULL, measure TEXT NOT NULL, bucket INTEGER NOT NULL, week INTEGER NOT NULL,
    n INTEGER NOT NULL, PRIMARY KEY (team, assignee, channel, kind, measure, bucket, week)) WITHOUT ROWID;
"""

_ROLLUP_TRIGGERS = f"""
CREATE TRIGGER IF NOT EXISTS kpi_leads_insert AFTER INSERT ON leads BEGIN
{_apply("NEW", "1")}
END;
CREATE TRIGGER IF NOT EXISTS kpi_leads_update AFTER UPDATE OF {", ".join(_WATCHED)} ON leads
WHEN {" OR ".join(f"OLD.{c} IS NOT NEW.{c}" for c in _WATCHED)} BEGIN
{_apply("OLD", "-1")}
{_apply("NEW", "1")}
END;
CREATE TRIGGER IF NOT EXISTS kpi_leads_delete AFTER DELETE ON leads BEGIN
{_apply("OLD", "-1")}
END;
"""


def _backfill() -> list[str]:
    dims = ", ".join(_DIMENSIONS)
    keys = ", ".join(f"IFNULL({d}, '')" for d in _DIMENSIONS)
    sums = ", ".join(f"TOTAL({c})" for c in _contribution("leads"))
    statements = [
        f"INSERT INTO kpi_hourly ({dims}, hour, {', '.join(_SUMS)}) SELECT {keys}, "
        f"CAST(created_at / {_HOUR} AS INTEGER) AS h, {sums} FROM leads GROUP BY {keys}, h"
    ]
    for measure, column in _MEASURES:
        statements.append(
            f"INSERT INTO kpi_hist ({dims}, measure, bucket, week, n) SELECT {keys}, '{measure}', "
            f"{_bucket_sql(f'{column} - created_at')} AS b, CAST(created_at / {_WEEK} AS INTEGER) AS w, "
            f"COUNT(*) FROM leads WHERE {column} IS NOT NULL GROUP BY {keys}, b, w"
        )
    return statements


async def create_rollups(db: aiosqlite.Connection) -> None:
    """Create the KPI rollup tables and their triggers; fill them from `leads` the first time."""
    async with db.execute(
        "SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = 'kpi_hourly'"
    ) as cursor:
        present = await cursor.fetchone() is not None
    if not present:
        for statement in _ROLLUP_TABLES.split(";"):
            if statement.strip():
                await db.execute(statement)
        for statement in _backfill():
            await db.execute(statement)
    # Trigger bodies hold semicolons: split on the `END;` that closes each one.
    for trigger in _ROLLUP_TRIGGERS.split("END;"):
        if trigger.strip():
            await db.execute(trigger + "END;")


@dataclass(slots=True)
class _Sums:
    received: int = 0
    responded: int = 0
    within: float = 0.0
    breached: float = 0.0
    breached_answered: float = 0.0
    resolved: int = 0
    frt_sum: float = 0.0
    rt_sum: float = 0.0

    def add(self, row: Any) -> None:
        self.received += int(row["received"])
        self.responded += int(row["responded"])
        self.within += row["within"]
        self.breached += row["breached"]
        self.breached_answered += row["breached_answered"]
        self.resolved += int(row["resolved"])
        self.frt_sum += row["frt_sum"]
        self.rt_sum += row["rt_sum"]


@dataclass(slots=True)
class _Tables:
    """Sums and percentiles per grouping and group key, as they are gathered."""

    groupings: tuple[str | None, ...]
    sums: dict[str | None, dict[Any, _Sums]] = field(default_factory=dict)
    frt: dict[str | None, dict[Any, dict[float, float]]] = field(default_factory=dict)
    rt: dict[str | None, dict[Any, dict[float, float]]] = field(default_factory=dict)

    def __post_init__(self) -> None:
        for g in self.groupings:
            self.sums[g] = {}
            self.frt[g] = {}
            self.rt[g] = {}

    def add(self, fine: tuple[Any, ...], row: Any, only: tuple[str | None, ...] | None = None) -> None:
        if not row["received"]:
            return  # an aggregate without GROUP BY answers one all-zero row for an empty period
        for grouping in self.groupings if only is None else only:
            self.sums[grouping].setdefault(_key(grouping, fine), _Sums()).add(row)

    def rows(self, approximate: bool = False) -> dict[str | None, list[KpiRow]]:
        result: dict[str | None, list[KpiRow]] = {}
        for grouping in self.groupings:
            out = []
            for key in sorted(self.sums[grouping], key=_order):
                s = self.sums[grouping][key]
                if not s.received:
                    continue
                f_p = self.frt[grouping].get(key, {})
                r_p = self.rt[grouping].get(key, {})
                out.append(
                    KpiRow(
                        group=None if key is None else str(key),
                        received=s.received,
                        responded=s.responded,
                        within_target=round(s.within),
                        breached=round(s.breached),
                        resolved=s.resolved,
                        frt_mean=s.frt_sum / s.responded if s.responded else None,
                        frt_median=f_p.get(0.5),
                        frt_p90=f_p.get(0.9),
                        resolution_mean=s.rt_sum / s.resolved if s.resolved else None,
                        resolution_median=r_p.get(0.5),
                        breached_answered=round(s.breached_answered),
                        percentiles_approximate=approximate and grouping != "day",
                    )
                )
            result[grouping] = out
        return result


def _offset_pieces(start: datetime, end: datetime, zone: ZoneInfo) -> list[tuple[float, int]]:
    """(from timestamp, UTC offset in seconds) pieces covering [start, end) in `zone`."""

    def offset(ts: float) -> int:
        delta = datetime.fromtimestamp(ts, zone).utcoffset()
        return int(delta.total_seconds()) if delta else 0

    lo, hi = start.timestamp(), end.timestamp()
    pieces = [(lo, offset(lo))]
    # Zones change offset at most a few times a year; probe daily, then bisect to the second.
    probe = lo
    while probe < hi:
        following = min(probe + 86400, hi)
        if offset(following) != pieces[-1][1]:
            a, b = probe, following
            while b - a > 1:
                mid = (a + b) / 2
                if offset(mid) == pieces[-1][1]:
                    a = mid
                else:
                    b = mid
            pieces.append((b, offset(b)))
        probe = following
    return pieces


def _day_expression(query: KpiQuery, moment: str = "created_at") -> tuple[str, list[Any]]:
    """SQL for the local day number (days since 1970-01-01 in `query.day_zone`) of `moment`."""
    pieces = _offset_pieces(query.start, query.end, ZoneInfo(query.day_zone))
    params: list[Any] = []
    offset_sql = "?"
    if len(pieces) == 1:
        params.append(pieces[0][1])
    else:
        whens = []
        for (_, off), (changes_at, _) in itertools.pairwise(pieces):
            whens.append(f"WHEN {moment} < ? THEN ?")
            params.extend([changes_at, off])
        offset_sql = f"CASE {' '.join(whens)} ELSE ? END"
        params.append(pieces[-1][1])
    # Truncation is the floor here: lead timestamps are after 1970.
    return f"CAST(({moment} + {offset_sql}) / 86400 AS INTEGER)", params


def _key(grouping: str | None, fine: tuple[Any, ...]) -> Any:
    if grouping is None:
        return None
    if grouping == "day":
        return None if fine[4] is None else (_EPOCH + timedelta(days=fine[4])).isoformat()
    return fine[_DIMENSIONS.index(grouping)]


def _order(key: Any) -> tuple[bool, Any]:
    # Same order as SQL `ORDER BY g`: NULL first.
    return (key is not None, key)


_SUM_SQL = (
    "COUNT(*) AS received, COUNT(first_response_at) AS responded, "
    "TOTAL(first_response_at <= first_response_due) AS within, TOTAL(breached_at IS NOT NULL) AS breached, "
    "TOTAL(breached_at IS NOT NULL AND first_response_at IS NOT NULL) AS breached_answered, "
    "COUNT(resolved_at) AS resolved, TOTAL(first_response_at - created_at) AS frt_sum, "
    "TOTAL(resolved_at - created_at) AS rt_sum"
)


async def _scan(
    read: Read, filters: Filters, query: KpiQuery, tables: _Tables, only: tuple[str | None, ...] | None = None
) -> None:
    """Add the counts and sums of `leads` created in the query's period (one grouped scan)."""
    groupings = tables.groupings if only is None else only
    where, params = filters(query)
    day_sql, day_params = ("NULL", []) if "day" not in groupings else _day_expression(query)
    # Only the dimensions asked for: a summary alone stays a plain aggregate without a sort.
    dims = ", ".join(d if d in groupings else f"NULL AS {d}" for d in _DIMENSIONS)
    grouped = [*(d for d in _DIMENSIONS if d in groupings), *(["day"] if "day" in groupings else [])]
    group_sql = f" GROUP BY {', '.join(grouped)}" if grouped else ""
    rows = await read(
        f"SELECT {dims}, {day_sql} AS day, {_SUM_SQL} FROM leads WHERE {' AND '.join(where)}{group_sql}",
        [*day_params, *params],
    )
    for row in rows:
        tables.add((row["team"], row["assignee"], row["channel"], row["kind"], row["day"]), row, groupings)


async def _times(read: Read, filters: Filters, query: KpiQuery) -> list[Any]:
    where, params = filters(query)
    return await read(
        "SELECT team, assignee, channel, kind, first_response_at - created_at AS f, "
        "resolved_at - created_at AS r FROM leads WHERE (first_response_at IS NOT NULL OR "
        f"resolved_at IS NOT NULL) AND {' AND '.join(where)}",
        params,
    )


async def _exact(read: Read, filters: Filters, query: KpiQuery, tables: _Tables) -> None:
    await _scan(read, filters, query, tables)
    ranked = tuple(g for g in tables.groupings if g != "day")
    if not ranked:
        return
    frt_values: dict[str | None, dict[Any, list[float]]] = {g: {} for g in ranked}
    rt_values: dict[str | None, dict[Any, list[float]]] = {g: {} for g in ranked}
    for team, assignee, channel, kind, f, r in await _times(read, filters, query):
        fine = (team, assignee, channel, kind, None)
        for grouping in ranked:
            key = _key(grouping, fine)
            if f is not None:
                frt_values[grouping].setdefault(key, []).append(f)
            if r is not None:
                rt_values[grouping].setdefault(key, []).append(r)
    for grouping in ranked:
        tables.frt[grouping] = {
            k: interpolated_percentiles(v, (0.5, 0.9)) for k, v in frt_values[grouping].items()
        }
        tables.rt[grouping] = {k: interpolated_percentiles(v, (0.5,)) for k, v in rt_values[grouping].items()}


def _rollup_filters(query: KpiQuery) -> tuple[str, list[Any]]:
    where: list[str] = []
    params: list[Any] = []
    for column, value in zip(
        _DIMENSIONS,
        (query.team, query.assignee, query.channel, query.kind.value if query.kind else None),
        strict=True,
    ):
        if value is not None:
            where.append(f" AND {column} = ?")
            params.append(value)
    return "".join(where), params


def _undo_blank(value: Any) -> Any:
    return None if value == "" else value


def _histogram_percentiles(counts: dict[int, int], fractions: tuple[float, ...]) -> dict[float, float]:
    """Linearly interpolated percentiles with each value taken as its bucket's middle."""
    n = sum(counts.values())
    if n == 0:
        return {}
    ordered = sorted((b, c) for b, c in counts.items() if c > 0)

    def at(rank: int) -> float:
        seen = 0
        for bucket, count in ordered:
            seen += count
            if rank < seen:
                return _middle(bucket)
        return _middle(ordered[-1][0])

    result: dict[float, float] = {}
    for fraction in fractions:
        h = (n - 1) * fraction
        low = int(h)
        value = at(low)
        if low + 1 < n:
            value += (h - low) * (at(low + 1) - value)
        result[fraction] = value
    return result


async def _from_rollups(
    read: Read, filters: Filters, query: KpiQuery, tables: _Tables, days_from_hours: bool
) -> None:
    start, end = query.start.timestamp(), query.end.timestamp()
    extra, extra_params = _rollup_filters(query)
    dims = ", ".join(_DIMENSIONS)
    # Counts and sums: whole UTC hours from kpi_hourly, the partial hour at each end from leads.
    first_hour, last_hour = math.ceil(start / _HOUR), math.floor(end / _HOUR)
    sums = ", ".join(f"TOTAL({c}) AS {c}" for c in _SUMS)
    if first_hour >= last_hour:  # no whole hour inside: all of it from leads
        first_hour = last_hour = math.ceil(end / _HOUR)
    hours = [first_hour, last_hour, *extra_params]
    # Grouped in primary-key order, so SQLite streams the groups instead of sorting.
    rows = await read(
        f"SELECT {dims}, {sums} FROM kpi_hourly WHERE hour >= ? AND hour < ?{extra} GROUP BY {dims}", hours
    )
    not_day = tuple(g for g in tables.groupings if g != "day")
    for row in rows:
        tables.add((*(_undo_blank(row[d]) for d in _DIMENSIONS), None), row, not_day)
    if "day" in tables.groupings and days_from_hours:
        day_sql, day_params = _day_expression(query, f"hour * {_HOUR}")
        rows = await read(
            f"SELECT {day_sql} AS day, {sums} FROM kpi_hourly WHERE hour >= ? AND hour < ?{extra} GROUP BY day",
            [*day_params, *hours],
        )
        for row in rows:
            tables.add((None, None, None, None, row["day"]), row, ("day",))
    edges = [(start, min(first_hour * _HOUR, end)), (last_hour * _HOUR, end)]
    for lo, hi in edges:
        if lo < hi:
            await _scan(read, filters, _between(query, lo, hi), tables, None if days_from_hours else not_day)

    # Percentiles: whole UTC weeks from kpi_hist, the partial week at each end from leads.
    ranked = tuple(g for g in tables.groupings if g != "day")
    if not ranked:
        return
    first_week, last_week = math.ceil(start / _WEEK), math.floor(end / _WEEK)
    counts: dict[str, dict[str | None, dict[Any, dict[int, int]]]] = {
        m: {g: {} for g in ranked} for m, _ in _MEASURES
    }

    def count(measure: str, fine: tuple[Any, ...], bucket: int, n: int) -> None:
        for grouping in ranked:
            per_key = counts[measure][grouping].setdefault(_key(grouping, fine), {})
            per_key[bucket] = per_key.get(bucket, 0) + n

    if first_week < last_week:
        rows = await read(
            f"SELECT {dims}, measure, bucket, SUM(n) AS n FROM kpi_hist WHERE week >= ? AND week < ?{extra} "
            f"GROUP BY {dims}, measure, bucket",
            [first_week, last_week, *extra_params],
        )
        for row in rows:
            count(
                row["measure"], (*(_undo_blank(row[d]) for d in _DIMENSIONS), None), row["bucket"], row["n"]
            )
        edges = [(start, first_week * _WEEK), (last_week * _WEEK, end)]
    else:
        edges = [(start, end)]
    for lo, hi in edges:
        if lo >= hi:
            continue
        for team, assignee, channel, kind, f, r in await _times(read, filters, _between(query, lo, hi)):
            fine = (team, assignee, channel, kind, None)
            if f is not None:
                count("f", fine, _bucket(f), 1)
            if r is not None:
                count("r", fine, _bucket(r), 1)
    for grouping in ranked:
        tables.frt[grouping] = {
            k: _histogram_percentiles(c, (0.5, 0.9)) for k, c in counts["f"][grouping].items()
        }
        tables.rt[grouping] = {k: _histogram_percentiles(c, (0.5,)) for k, c in counts["r"][grouping].items()}


def _between(query: KpiQuery, lo: float, hi: float) -> KpiQuery:
    zone = query.start.tzinfo
    return KpiQuery(
        start=datetime.fromtimestamp(lo, zone),
        end=datetime.fromtimestamp(hi, zone),
        team=query.team,
        assignee=query.assignee,
        channel=query.channel,
        kind=query.kind,
        day_zone=query.day_zone,
    )


def _whole_hour_zone(query: KpiQuery) -> bool:
    return all(
        off % _HOUR == 0 for _, off in _offset_pieces(query.start, query.end, ZoneInfo(query.day_zone))
    )


async def kpi_breakdowns(
    read: Read,
    filters: Filters,
    query: KpiQuery,
    groupings: tuple[str | None, ...],
    sort_limit: int,
) -> dict[str | None, list[KpiRow]]:
    """KPI rows for each grouping of one period (see the module docstring for how)."""
    for grouping in groupings:
        if grouping is not None and grouping not in KPI_GROUPS:
            raise ValueError(f"cannot group a KPI report by {grouping!r}: use one of {KPI_GROUPS}")
    tables = _Tables(groupings)
    (size,) = await read(
        "SELECT COUNT(*) AS n FROM leads WHERE created_at >= ? AND created_at < ?",
        [query.start.timestamp(), query.end.timestamp()],
    )
    if size["n"] <= sort_limit:
        await _exact(read, filters, query, tables)
        return tables.rows()
    days_from_hours = "day" not in groupings or _whole_hour_zone(query)
    await _from_rollups(read, filters, query, tables, days_from_hours)
    if not days_from_hours:
        # Hours straddle this zone's midnights: its days come from one scan of the leads.
        await _scan(read, filters, query, tables, ("day",))
    return tables.rows(approximate=True)
