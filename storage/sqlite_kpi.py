"""SQLite: a whole KPI report (summary, breakdowns, per-day series) from one grouped scan.

`SqliteStore.kpi_rows` answers one grouping per call, so a dashboard report used to scan the
period six times. Here the period is scanned once, grouped by the finest key the report needs
(team, assignee, channel, kind and the local day), and every coarser grouping is summed from
those few rows in Python: counts and sums add up exactly, means are sum / count. Percentiles do
not add up, so they are taken separately: for small periods from one read of the period's times
(sorted here, for every grouping at once), for large ones by walking the expression indexes.
"""

from __future__ import annotations

import itertools
from collections.abc import Awaitable, Callable, Iterable
from dataclasses import dataclass, replace
from datetime import date, datetime, timedelta
from typing import Any
from zoneinfo import ZoneInfo

from storage.base import KPI_GROUPS, KpiQuery, KpiRow, interpolated_percentiles

#: Columns of the finest grouping, in the order the scan returns them.
_DIMENSIONS = ("team", "assignee", "channel", "kind")
_EPOCH = date(1970, 1, 1)

Read = Callable[[str, Iterable[Any]], Awaitable[list[Any]]]
RankValues = Callable[
    [KpiQuery, "tuple[str, Any] | None", str, int, tuple[float, ...]], Awaitable[dict[float, float]]
]


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
        self.received += row["received"]
        self.responded += row["responded"]
        self.within += row["within"]
        self.breached += row["breached"]
        self.breached_answered += row["breached_answered"]
        self.resolved += row["resolved"]
        self.frt_sum += row["frt_sum"]
        self.rt_sum += row["rt_sum"]


def _offset_pieces(start: datetime, end: datetime, zone: ZoneInfo) -> list[tuple[float, int]]:
    """(from timestamp, UTC offset in seconds) pieces covering [start, end) in `zone`."""

    def offset(ts: float) -> int:
        moment = datetime.fromtimestamp(ts, zone)
        delta = moment.utcoffset()
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


def _day_expression(query: KpiQuery) -> tuple[str, list[Any]]:
    """SQL for the local day number (days since 1970-01-01 in `query.day_zone`) of `created_at`."""
    pieces = _offset_pieces(query.start, query.end, ZoneInfo(query.day_zone))
    params: list[Any] = []
    offset_sql = "?"
    if len(pieces) == 1:
        params.append(pieces[0][1])
    else:
        whens = []
        for (_, off), (changes_at, _) in itertools.pairwise(pieces):
            whens.append("WHEN created_at < ? THEN ?")
            params.extend([changes_at, off])
        offset_sql = f"CASE {' '.join(whens)} ELSE ? END"
        params.append(pieces[-1][1])
    # Truncation is the floor here: lead timestamps are after 1970.
    return f"CAST((created_at + {offset_sql}) / 86400 AS INTEGER)", params


def _key(grouping: str | None, fine: tuple[Any, ...]) -> Any:
    if grouping is None:
        return None
    if grouping == "day":
        return None if fine[4] is None else (_EPOCH + timedelta(days=fine[4])).isoformat()
    return fine[_DIMENSIONS.index(grouping)]


def _order(key: Any) -> tuple[bool, Any]:
    # Same order as SQL `ORDER BY g`: NULL first.
    return (key is not None, key)


async def kpi_breakdowns(
    read: Read,
    rank_values: RankValues,
    filters: tuple[list[str], list[Any]],
    query: KpiQuery,
    groupings: tuple[str | None, ...],
    sort_limit: int,
) -> dict[str | None, list[KpiRow]]:
    """KPI rows for each grouping of one period (see the module docstring)."""
    for grouping in groupings:
        if grouping is not None and grouping not in KPI_GROUPS:
            raise ValueError(f"cannot group a KPI report by {grouping!r}: use one of {KPI_GROUPS}")
    where, params = filters
    day_sql, day_params = ("NULL", []) if "day" not in groupings else _day_expression(query)
    # Only the dimensions asked for: a summary alone stays a plain aggregate without a sort.
    dims = ", ".join(d if d in groupings else f"NULL AS {d}" for d in _DIMENSIONS)
    grouped_by = ", ".join(
        [*(d for d in _DIMENSIONS if d in groupings), *(["day"] if "day" in groupings else [])]
    )
    group_sql = f" GROUP BY {grouped_by}" if grouped_by else ""
    rows = await read(
        f"SELECT {dims}, {day_sql} AS day, COUNT(*) AS received, "
        "COUNT(first_response_at) AS responded, TOTAL(first_response_at <= first_response_due) AS within, "
        "TOTAL(breached_at IS NOT NULL) AS breached, "
        "TOTAL(breached_at IS NOT NULL AND first_response_at IS NOT NULL) AS breached_answered, "
        "COUNT(resolved_at) AS resolved, TOTAL(first_response_at - created_at) AS frt_sum, "
        f"TOTAL(resolved_at - created_at) AS rt_sum FROM leads WHERE {' AND '.join(where)}{group_sql}",
        [*day_params, *params],
    )
    sums: dict[str | None, dict[Any, _Sums]] = {g: {} for g in groupings}
    total = 0
    for row in rows:
        if not row["received"]:
            continue  # an aggregate without GROUP BY answers one all-zero row for an empty period
        fine = (row["team"], row["assignee"], row["channel"], row["kind"], row["day"])
        total += row["received"]
        for grouping in groupings:
            sums[grouping].setdefault(_key(grouping, fine), _Sums()).add(row)

    # Percentiles (not for the per-day series: one walk per day would cost a pass per day).
    ranked = tuple(g for g in groupings if g != "day")
    frt: dict[str | None, dict[Any, dict[float, float]]] = {g: {} for g in ranked}
    rt: dict[str | None, dict[Any, dict[float, float]]] = {g: {} for g in ranked}
    if ranked and total <= sort_limit:
        times = await read(
            "SELECT team, assignee, channel, kind, first_response_at - created_at AS f, "
            "resolved_at - created_at AS r FROM leads WHERE (first_response_at IS NOT NULL OR "
            f"resolved_at IS NOT NULL) AND {' AND '.join(where)}",
            params,
        )
        frt_values: dict[str | None, dict[Any, list[float]]] = {g: {} for g in ranked}
        rt_values: dict[str | None, dict[Any, list[float]]] = {g: {} for g in ranked}
        for team, assignee, channel, kind, f, r in times:
            fine = (team, assignee, channel, kind, None)
            for grouping in ranked:
                key = _key(grouping, fine)
                if f is not None:
                    frt_values[grouping].setdefault(key, []).append(f)
                if r is not None:
                    rt_values[grouping].setdefault(key, []).append(r)
        for grouping in ranked:
            frt[grouping] = {
                k: interpolated_percentiles(v, (0.5, 0.9)) for k, v in frt_values[grouping].items()
            }
            rt[grouping] = {k: interpolated_percentiles(v, (0.5,)) for k, v in rt_values[grouping].items()}
    elif ranked:
        for grouping in ranked:
            for key, group in sums[grouping].items():
                selector = None if grouping is None else (grouping, key)
                grouped = replace(query, group_by=grouping)
                if group.responded:
                    frt[grouping][key] = await rank_values(
                        grouped, selector, "frt", group.responded, (0.5, 0.9)
                    )
                if group.resolved:
                    rt[grouping][key] = await rank_values(grouped, selector, "rt", group.resolved, (0.5,))

    result: dict[str | None, list[KpiRow]] = {}
    for grouping in groupings:
        out = []
        for key in sorted(sums[grouping], key=_order):
            s = sums[grouping][key]
            f_p = frt.get(grouping, {}).get(key, {})
            r_p = rt.get(grouping, {}).get(key, {})
            out.append(
                KpiRow(
                    group=None if key is None else str(key),
                    received=s.received,
                    responded=s.responded,
                    within_target=int(s.within),
                    breached=int(s.breached),
                    resolved=s.resolved,
                    frt_mean=s.frt_sum / s.responded if s.responded else None,
                    frt_median=f_p.get(0.5),
                    frt_p90=f_p.get(0.9),
                    resolution_mean=s.rt_sum / s.resolved if s.resolved else None,
                    resolution_median=r_p.get(0.5),
                    breached_answered=int(s.breached_answered),
                )
            )
        result[grouping] = out
    return result
