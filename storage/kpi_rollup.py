"""KPI rollups, the parts both adapters share: what one lead adds to them, and how a report is read.

A KPI report over a large period is read from two rollups kept in step with every lead write
(SQLite: triggers, storage/sqlite_kpi.py; MongoDB: `$inc` upserts, storage/mongo_kpi.py):

- hourly: per (team, assignee, channel, kind, UTC hour) the counts and sums in `SUMS`;
- hist: per (team, assignee, channel, kind, UTC week) and measure (`f` first response, `r`
  resolution) a histogram of the times, log buckets 5 % wide (`bucket`).

Everything here is pure Python: the bucket function, one lead's contribution and the delta of
a write (`rollup_delta`), and the tables that turn sums and histograms into `KpiRow`s with the
same percentile interpolation for both adapters.
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from dataclasses import dataclass, field
from datetime import date, datetime, timedelta
from typing import Any
from zoneinfo import ZoneInfo

from storage.base import KPI_GROUPS, PERCENTILE_ERROR, KpiQuery, KpiRow, interpolated_percentiles

#: Periods with up to this many leads are reported exactly (sorted percentiles); larger ones
#: from the rollups.
KPI_SORT_LIMIT = 100_000
#: Columns of the finest grouping, in the order the scans return them.
DIMENSIONS = ("team", "assignee", "channel", "kind")
EPOCH = date(1970, 1, 1)
HOUR = 3600
WEEK = 7 * 86400
#: Histogram buckets grow by this ratio: bucket b >= 1 holds [RATIO**(b-1), RATIO**b) seconds.
RATIO = 1.05
# A value taken as its bucket's middle is off by at most sqrt(ratio) - 1 of itself.
assert math.sqrt(RATIO) - 1 <= PERCENTILE_ERROR

#: Histogram measures: (name, the lead's timestamp whose distance from created_at is measured).
MEASURES = (("f", "first_response_at"), ("r", "resolved_at"))
#: What the hourly rollup sums per group.
SUMS = ("received", "responded", "within", "breached", "breached_answered", "resolved", "frt_sum", "rt_sum")
#: Lead fields whose change changes the rollups.
WATCHED = (
    "created_at",
    *DIMENSIONS,
    "first_response_at",
    "first_response_due",
    "resolved_at",
    "breached_at",
)

#: (team, assignee, channel, kind) with '' for a missing value, as the rollups key them.
Dims = tuple[str, str, str, str]
#: A fine key as the report tables take it: (team, assignee, channel, kind, local day number).
Fine = tuple[Any, ...]


def bucket(value: float) -> int:
    """The histogram bucket of a time in seconds (0 below one second)."""
    return 0 if value < 1 else 1 + int(math.log(value) / math.log(RATIO))


def middle(bucket: int) -> float:
    """The value a bucket stands for in a percentile."""
    return 0.5 if bucket == 0 else RATIO ** (bucket - 0.5)


def check_groupings(groupings: tuple[str | None, ...]) -> None:
    """ValueError for a grouping a KPI report does not have."""
    for grouping in groupings:
        if grouping is not None and grouping not in KPI_GROUPS:
            raise ValueError(f"cannot group a KPI report by {grouping!r}: use one of {KPI_GROUPS}")


# --- one lead's share of the rollups ---------------------------------------------------------
@dataclass(frozen=True, slots=True)
class LeadFacts:
    """The fields of a lead the rollups read, times as POSIX seconds."""

    team: str | None
    assignee: str | None
    channel: str | None
    kind: str | None
    created_at: float
    first_response_at: float | None = None
    first_response_due: float | None = None
    resolved_at: float | None = None
    breached_at: float | None = None

    @property
    def dims(self) -> Dims:
        # The rollups key a missing value as '' (SQLite's IFNULL(x, '')): one key, not NULL != NULL.
        return (self.team or "", self.assignee or "", self.channel or "", self.kind or "")

    @property
    def hour(self) -> int:
        # Truncation of the float quotient, like SQLite's CAST(created_at / 3600 AS INTEGER).
        return int(self.created_at / HOUR)

    @property
    def week(self) -> int:
        return int(self.created_at / WEEK)

    def sums(self) -> tuple[float, ...]:
        """The lead's contribution to each of `SUMS` (same rules as the SQL in sqlite_kpi)."""
        first, due, resolved = self.first_response_at, self.first_response_due, self.resolved_at
        answered = first is not None
        breached = self.breached_at is not None
        return (
            1,
            int(answered),
            int(first is not None and due is not None and first <= due),
            int(breached),
            int(breached and answered),
            int(resolved is not None),
            first - self.created_at if first is not None else 0.0,
            resolved - self.created_at if resolved is not None else 0.0,
        )

    def times(self) -> tuple[float | None, float | None]:
        """(first-response time, resolution time) in seconds, None where the lead has none."""
        first, resolved = self.first_response_at, self.resolved_at
        return (
            None if first is None else first - self.created_at,
            None if resolved is None else resolved - self.created_at,
        )

    def buckets(self) -> list[tuple[str, int]]:
        """(measure, bucket) of each time the lead has."""
        return [(m, bucket(t)) for (m, _), t in zip(MEASURES, self.times(), strict=True) if t is not None]


@dataclass(slots=True)
class RollupDelta:
    """What one write adds to the rollups (negative where it takes a lead's old share away)."""

    #: (dims..., hour) -> one value per `SUMS`.
    hourly: dict[tuple[str, str, str, str, int], list[float]] = field(default_factory=dict)
    #: (dims..., week) -> measure -> bucket -> count.
    hist: dict[tuple[str, str, str, str, int], dict[str, dict[int, int]]] = field(default_factory=dict)

    def add(self, facts: LeadFacts, sign: int) -> None:
        """Add (`sign` 1) or take away (-1) one lead's share."""
        sums = self.hourly.setdefault((*facts.dims, facts.hour), [0] * len(SUMS))
        for i, value in enumerate(facts.sums()):
            sums[i] += sign * value
        for measure, b in facts.buckets():
            per_bucket = self.hist.setdefault((*facts.dims, facts.week), {}).setdefault(measure, {})
            per_bucket[b] = per_bucket.get(b, 0) + sign

    def pruned(self) -> RollupDelta:
        """The same delta without entries that cancelled out (an unchanged lead writes nothing)."""
        hourly = {k: v for k, v in self.hourly.items() if any(x != 0 for x in v)}
        hist: dict[tuple[str, str, str, str, int], dict[str, dict[int, int]]] = {}
        for key, measures in self.hist.items():
            kept = {m: {b: n for b, n in c.items() if n} for m, c in measures.items()}
            kept = {m: c for m, c in kept.items() if c}
            if kept:
                hist[key] = kept
        return RollupDelta(hourly, hist)


def rollup_delta(old: LeadFacts | None, new: LeadFacts | None) -> RollupDelta:
    """The change to the rollups when a lead goes from `old` to `new` (None: absent)."""
    delta = RollupDelta()
    if old is not None:
        delta.add(old, -1)
    if new is not None:
        delta.add(new, 1)
    return delta.pruned()


# --- reading a report ------------------------------------------------------------------------
@dataclass(slots=True)
class Sums:
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
class Tables:
    """Sums and percentiles per grouping and group key, as they are gathered."""

    groupings: tuple[str | None, ...]
    sums: dict[str | None, dict[Any, Sums]] = field(default_factory=dict)
    frt: dict[str | None, dict[Any, dict[float, float]]] = field(default_factory=dict)
    rt: dict[str | None, dict[Any, dict[float, float]]] = field(default_factory=dict)

    def __post_init__(self) -> None:
        for g in self.groupings:
            self.sums[g] = {}
            self.frt[g] = {}
            self.rt[g] = {}

    @property
    def ranked(self) -> tuple[str | None, ...]:
        """The groupings that have percentiles (per-day rows have none)."""
        return tuple(g for g in self.groupings if g != "day")

    def add(self, fine: Fine, row: Any, only: tuple[str | None, ...] | None = None) -> None:
        """Add a row of `SUMS` for the fine key to every grouping (or those in `only`)."""
        if not row["received"]:
            return  # an aggregate without GROUP BY answers one all-zero row for an empty period
        for grouping in self.groupings if only is None else only:
            self.sums[grouping].setdefault(fine_key(grouping, fine), Sums()).add(row)

    def exact_percentiles(self, times: Iterable[tuple[Fine, float | None, float | None]]) -> None:
        """Exact percentiles from every (fine key, first-response time, resolution time) of the period."""
        per_fine: dict[Fine, tuple[list[float], list[float]]] = {}
        for fine, f, r in times:
            frt, rt = per_fine.setdefault(fine, ([], []))
            if f is not None:
                frt.append(f)
            if r is not None:
                rt.append(r)
        self.exact_percentiles_grouped((fine, frt, rt) for fine, (frt, rt) in per_fine.items())

    def exact_percentiles_grouped(self, times: Iterable[tuple[Fine, list[float], list[float]]]) -> None:
        """Exact percentiles from (fine key, its first-response times, its resolution times) rows."""
        frt_values: dict[str | None, dict[Any, list[float]]] = {g: {} for g in self.ranked}
        rt_values: dict[str | None, dict[Any, list[float]]] = {g: {} for g in self.ranked}
        for fine, frt, rt in times:
            for grouping in self.ranked:
                key = fine_key(grouping, fine)
                if frt:
                    frt_values[grouping].setdefault(key, []).extend(frt)
                if rt:
                    rt_values[grouping].setdefault(key, []).extend(rt)
        for grouping in self.ranked:
            self.frt[grouping] = {
                k: interpolated_percentiles(v, (0.5, 0.9)) for k, v in frt_values[grouping].items()
            }
            self.rt[grouping] = {
                k: interpolated_percentiles(v, (0.5,)) for k, v in rt_values[grouping].items()
            }

    def histogram_percentiles(self, counts: HistCounts) -> None:
        """Percentiles read off the histograms gathered in `counts`."""
        for grouping in self.ranked:
            self.frt[grouping] = {
                k: histogram_percentiles(c, (0.5, 0.9)) for k, c in counts.of("f", grouping).items()
            }
            self.rt[grouping] = {
                k: histogram_percentiles(c, (0.5,)) for k, c in counts.of("r", grouping).items()
            }

    def rows(self, approximate: bool = False) -> dict[str | None, list[KpiRow]]:
        result: dict[str | None, list[KpiRow]] = {}
        for grouping in self.groupings:
            out = []
            for key in sorted(self.sums[grouping], key=order):
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


@dataclass(slots=True)
class HistCounts:
    """Histogram counts per measure, grouping and group key, as they are gathered."""

    ranked: tuple[str | None, ...]
    counts: dict[str, dict[str | None, dict[Any, dict[int, int]]]] = field(default_factory=dict)

    def __post_init__(self) -> None:
        for measure, _ in MEASURES:
            self.counts[measure] = {g: {} for g in self.ranked}

    def add(self, measure: str, fine: Fine, bucket: int, n: int) -> None:
        for grouping in self.ranked:
            per_key = self.counts[measure][grouping].setdefault(fine_key(grouping, fine), {})
            per_key[bucket] = per_key.get(bucket, 0) + n

    def of(self, measure: str, grouping: str | None) -> dict[Any, dict[int, int]]:
        return self.counts[measure][grouping]


def histogram_percentiles(counts: dict[int, int], fractions: tuple[float, ...]) -> dict[float, float]:
    """Linearly interpolated percentiles with each value taken as its bucket's middle."""
    n = sum(c for c in counts.values() if c > 0)
    if n == 0:
        return {}
    ordered = sorted((b, c) for b, c in counts.items() if c > 0)

    def at(rank: int) -> float:
        seen = 0
        for b, count in ordered:
            seen += count
            if rank < seen:
                return middle(b)
        return middle(ordered[-1][0])

    result: dict[float, float] = {}
    for fraction in fractions:
        h = (n - 1) * fraction
        low = int(h)
        value = at(low)
        if low + 1 < n:
            value += (h - low) * (at(low + 1) - value)
        result[fraction] = value
    return result


def offset_pieces(start: datetime, end: datetime, zone: ZoneInfo) -> list[tuple[float, int]]:
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


def whole_hour_zone(query: KpiQuery) -> bool:
    """True when every UTC offset of the zone in the period is whole hours (days cut from hours)."""
    return all(off % HOUR == 0 for _, off in offset_pieces(query.start, query.end, ZoneInfo(query.day_zone)))


def day_number(ts: float, zone: ZoneInfo) -> int:
    """The local day (days since 1970-01-01 in `zone`) of a POSIX timestamp."""
    return (datetime.fromtimestamp(ts, zone).date() - EPOCH).days


def fine_key(grouping: str | None, fine: Fine) -> Any:
    """The group key of one fine key in a grouping."""
    if grouping is None:
        return None
    if grouping == "day":
        return None if fine[4] is None else (EPOCH + timedelta(days=fine[4])).isoformat()
    return fine[DIMENSIONS.index(grouping)]


def order(key: Any) -> tuple[bool, Any]:
    # Same order as SQL `ORDER BY g` and MongoDB's `$sort`: NULL first.
    return (key is not None, key)


def undo_blank(value: Any) -> Any:
    """The rollups' '' back to the lead's missing value."""
    return None if value == "" else value


def between(query: KpiQuery, lo: float, hi: float) -> KpiQuery:
    """The query narrowed to [lo, hi) (POSIX seconds)."""
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


@dataclass(frozen=True, slots=True)
class Plan:
    """Which parts of a large period come from the rollups and which from `leads`."""

    first_hour: int
    last_hour: int  # whole hours [first_hour, last_hour) from the hourly rollup
    hour_edges: list[tuple[float, float]]  # [lo, hi) ranges whose sums come from leads
    first_week: int
    last_week: int  # whole weeks [first_week, last_week) from the hist rollup (none if equal)
    week_edges: list[tuple[float, float]]  # [lo, hi) ranges whose times come from leads


def plan(start: float, end: float) -> Plan:
    """Split [start, end) into whole UTC hours/weeks (rollups) and the partial edges (leads)."""
    first_hour, last_hour = math.ceil(start / HOUR), math.floor(end / HOUR)
    if first_hour >= last_hour:  # no whole hour inside: all of it from leads
        first_hour = last_hour = math.ceil(end / HOUR)
    hour_edges = [(start, min(first_hour * HOUR, end)), (last_hour * HOUR, end)]
    first_week, last_week = math.ceil(start / WEEK), math.floor(end / WEEK)
    if first_week < last_week:
        week_edges = [(start, first_week * WEEK), (last_week * WEEK, end)]
    else:
        first_week = last_week = 0
        week_edges = [(start, end)]
    return Plan(
        first_hour,
        last_hour,
        [(lo, hi) for lo, hi in hour_edges if lo < hi],
        first_week,
        last_week,
        [(lo, hi) for lo, hi in week_edges if lo < hi],
    )
