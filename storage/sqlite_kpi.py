"""SQLite: a whole KPI report (summary, breakdowns, per-day series) in one call, fast at 1M leads.

Two ways, chosen by the number of leads in the period:

- Up to `KPI_SORT_LIMIT` leads (the dashboard's default 30 days, comparisons): exact. The
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

The pure parts (bucket function, report tables, percentile interpolation, how a period splits
into whole hours/weeks and edges) live in storage/kpi_rollup.py, shared with the MongoDB adapter.
"""

from __future__ import annotations

import itertools
from collections.abc import Awaitable, Callable, Iterable
from typing import Any
from zoneinfo import ZoneInfo

import aiosqlite

from storage.base import KpiQuery, KpiRow
from storage.kpi_rollup import (
    DIMENSIONS,
    HOUR,
    MEASURES,
    RATIO,
    SUMS,
    WATCHED,
    WEEK,
    HistCounts,
    Tables,
    between,
    bucket,
    check_groupings,
    offset_pieces,
    plan,
    undo_blank,
    whole_hour_zone,
)

Read = Callable[[str, Iterable[Any]], Awaitable[list[Any]]]
Filters = Callable[[KpiQuery], tuple[list[str], list[Any]]]


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
    return ", ".join(f"IFNULL({p}.{d}, '')" for d in DIMENSIONS)


def _bucket_sql(value: str) -> str:
    return f"(CASE WHEN {value} < 1 THEN 0 ELSE 1 + CAST(ln({value}) / ln({RATIO}) AS INTEGER) END)"


def _apply(p: str, sign: str) -> str:
    """Trigger statements adding (`sign` 1) or removing (-1) lead `p`'s share of the rollups."""
    values = ", ".join(f"{sign} * ({c})" for c in _contribution(p))
    updates = ", ".join(f"{c} = {c} + excluded.{c}" for c in SUMS)
    dims = ", ".join(DIMENSIONS)
    statements = [
        f"INSERT INTO kpi_hourly ({dims}, hour, {', '.join(SUMS)}) VALUES ({_keys(p)}, "
        f"CAST({p}.created_at / {HOUR} AS INTEGER), {values}) "
        f"ON CONFLICT ({dims}, hour) DO UPDATE SET {updates};"
    ]
    for measure, column in MEASURES:
        statements.append(
            f"INSERT INTO kpi_hist ({dims}, measure, bucket, week, n) SELECT {_keys(p)}, '{measure}', "
            f"{_bucket_sql(f'{p}.{column} - {p}.created_at')}, CAST({p}.created_at / {WEEK} AS INTEGER), "
            f"{sign} WHERE {p}.{column} IS NOT NULL "
            f"ON CONFLICT ({dims}, measure, bucket, week) DO UPDATE SET n = n + excluded.n;"
        )
    return "\n".join(statements)


_ROLLUP_TABLES = f"""
CREATE TABLE kpi_hourly (team TEXT NOT NULL, assignee TEXT NOT NULL, channel TEXT NOT NULL,
    kind TEXT NOT NULL, hour INTEGER NOT NULL, {", ".join(f"{c} NUMERIC NOT NULL" for c in SUMS)},
    PRIMARY KEY (team, assignee, channel, kind, hour)) WITHOUT ROWID;
CREATE TABLE kpi_hist (team TEXT NOT NULL, assignee TEXT NOT NULL, channel TEXT NOT NULL,
    kind TEXT NOT NULL, measure TEXT NOT NULL, bucket INTEGER NOT NULL, week INTEGER NOT NULL,
    n INTEGER NOT NULL, PRIMARY KEY (team, assignee, channel, kind, measure, bucket, week)) WITHOUT ROWID;
"""

_ROLLUP_TRIGGERS = f"""
CREATE TRIGGER IF NOT EXISTS kpi_leads_insert AFTER INSERT ON leads BEGIN
{_apply("NEW", "1")}
END;
CREATE TRIGGER IF NOT EXISTS kpi_leads_update AFTER UPDATE OF {", ".join(WATCHED)} ON leads
WHEN {" OR ".join(f"OLD.{c} IS NOT NEW.{c}" for c in WATCHED)} BEGIN
{_apply("OLD", "-1")}
{_apply("NEW", "1")}
END;
CREATE TRIGGER IF NOT EXISTS kpi_leads_delete AFTER DELETE ON leads BEGIN
{_apply("OLD", "-1")}
END;
"""


def _backfill() -> list[str]:
    dims = ", ".join(DIMENSIONS)
    keys = ", ".join(f"IFNULL({d}, '')" for d in DIMENSIONS)
    sums = ", ".join(f"TOTAL({c})" for c in _contribution("leads"))
    statements = [
        f"INSERT INTO kpi_hourly ({dims}, hour, {', '.join(SUMS)}) SELECT {keys}, "
        f"CAST(created_at / {HOUR} AS INTEGER) AS h, {sums} FROM leads GROUP BY {keys}, h"
    ]
    for measure, column in MEASURES:
        statements.append(
            f"INSERT INTO kpi_hist ({dims}, measure, bucket, week, n) SELECT {keys}, '{measure}', "
            f"{_bucket_sql(f'{column} - created_at')} AS b, CAST(created_at / {WEEK} AS INTEGER) AS w, "
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


def _day_expression(query: KpiQuery, moment: str = "created_at") -> tuple[str, list[Any]]:
    """SQL for the local day number (days since 1970-01-01 in `query.day_zone`) of `moment`."""
    pieces = offset_pieces(query.start, query.end, ZoneInfo(query.day_zone))
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


_SUM_SQL = (
    "COUNT(*) AS received, COUNT(first_response_at) AS responded, "
    "TOTAL(first_response_at <= first_response_due) AS within, TOTAL(breached_at IS NOT NULL) AS breached, "
    "TOTAL(breached_at IS NOT NULL AND first_response_at IS NOT NULL) AS breached_answered, "
    "COUNT(resolved_at) AS resolved, TOTAL(first_response_at - created_at) AS frt_sum, "
    "TOTAL(resolved_at - created_at) AS rt_sum"
)


async def _scan(
    read: Read, filters: Filters, query: KpiQuery, tables: Tables, only: tuple[str | None, ...] | None = None
) -> None:
    """Add the counts and sums of `leads` created in the query's period (one grouped scan)."""
    groupings = tables.groupings if only is None else only
    where, params = filters(query)
    day_sql, day_params = ("NULL", []) if "day" not in groupings else _day_expression(query)
    # Only the dimensions asked for: a summary alone stays a plain aggregate without a sort.
    dims = ", ".join(d if d in groupings else f"NULL AS {d}" for d in DIMENSIONS)
    grouped = [*(d for d in DIMENSIONS if d in groupings), *(["day"] if "day" in groupings else [])]
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


async def _exact(read: Read, filters: Filters, query: KpiQuery, tables: Tables) -> None:
    await _scan(read, filters, query, tables)
    if tables.ranked:
        times = [((t, a, c, k, None), f, r) for t, a, c, k, f, r in await _times(read, filters, query)]
        tables.exact_percentiles(times)


def _rollup_filters(query: KpiQuery) -> tuple[str, list[Any]]:
    where: list[str] = []
    params: list[Any] = []
    for column, value in zip(
        DIMENSIONS,
        (query.team, query.assignee, query.channel, query.kind.value if query.kind else None),
        strict=True,
    ):
        if value is not None:
            where.append(f" AND {column} = ?")
            params.append(value)
    return "".join(where), params


async def _from_rollups(
    read: Read, filters: Filters, query: KpiQuery, tables: Tables, days_from_hours: bool
) -> None:
    parts = plan(query.start.timestamp(), query.end.timestamp())
    extra, extra_params = _rollup_filters(query)
    dims = ", ".join(DIMENSIONS)
    # Counts and sums: whole UTC hours from kpi_hourly, the partial hour at each end from leads.
    sums = ", ".join(f"TOTAL({c}) AS {c}" for c in SUMS)
    hours = [parts.first_hour, parts.last_hour, *extra_params]
    # Grouped in primary-key order, so SQLite streams the groups instead of sorting.
    rows = await read(
        f"SELECT {dims}, {sums} FROM kpi_hourly WHERE hour >= ? AND hour < ?{extra} GROUP BY {dims}", hours
    )
    not_day = tables.ranked
    for row in rows:
        tables.add((*(undo_blank(row[d]) for d in DIMENSIONS), None), row, not_day)
    if "day" in tables.groupings and days_from_hours:
        day_sql, day_params = _day_expression(query, f"hour * {HOUR}")
        rows = await read(
            f"SELECT {day_sql} AS day, {sums} FROM kpi_hourly WHERE hour >= ? AND hour < ?{extra} GROUP BY day",
            [*day_params, *hours],
        )
        for row in rows:
            tables.add((None, None, None, None, row["day"]), row, ("day",))
    for lo, hi in parts.hour_edges:
        await _scan(read, filters, between(query, lo, hi), tables, None if days_from_hours else not_day)

    # Percentiles: whole UTC weeks from kpi_hist, the partial week at each end from leads.
    if not tables.ranked:
        return
    counts = HistCounts(tables.ranked)
    if parts.first_week < parts.last_week:
        rows = await read(
            f"SELECT {dims}, measure, bucket, SUM(n) AS n FROM kpi_hist WHERE week >= ? AND week < ?{extra} "
            f"GROUP BY {dims}, measure, bucket",
            [parts.first_week, parts.last_week, *extra_params],
        )
        for row in rows:
            counts.add(
                row["measure"], (*(undo_blank(row[d]) for d in DIMENSIONS), None), row["bucket"], row["n"]
            )
    for lo, hi in parts.week_edges:
        for team, assignee, channel, kind, f, r in await _times(read, filters, between(query, lo, hi)):
            fine = (team, assignee, channel, kind, None)
            if f is not None:
                counts.add("f", fine, bucket(f), 1)
            if r is not None:
                counts.add("r", fine, bucket(r), 1)
    tables.histogram_percentiles(counts)


async def kpi_breakdowns(
    read: Read,
    filters: Filters,
    query: KpiQuery,
    groupings: tuple[str | None, ...],
    sort_limit: int,
) -> dict[str | None, list[KpiRow]]:
    """KPI rows for each grouping of one period (see the module docstring for how)."""
    check_groupings(groupings)
    tables = Tables(groupings)
    (size,) = await read(
        "SELECT COUNT(*) AS n FROM leads WHERE created_at >= ? AND created_at < ?",
        [query.start.timestamp(), query.end.timestamp()],
    )
    if size["n"] <= sort_limit:
        await _exact(read, filters, query, tables)
        return tables.rows()
    days_from_hours = "day" not in groupings or whole_hour_zone(query)
    await _from_rollups(read, filters, query, tables, days_from_hours)
    if not days_from_hours:
        # Hours straddle this zone's midnights: its days come from one scan of the leads.
        await _scan(read, filters, query, tables, ("day",))
    return tables.rows(approximate=True)
