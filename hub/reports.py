"""KPI reports: what the store aggregates, turned into the figures managers and owners judge by.

Definitions (the dashboard, the CSV export and `GET /api/v1/reports/kpi` all use these):

- received: leads created in the period (matching the filters);
- first-response time: first staff reply minus lead creation, in seconds (mean, median, p90;
  percentiles interpolate linearly between ranks, like `statistics.quantiles(method="inclusive")`);
- resolution time: resolution minus creation, for leads resolved so far;
- breaches: leads of the period whose first-response due time passed unanswered;
- SLA compliance %: of the leads whose clock has run out (answered, or breached), the share answered
  by the due time;
- answered within target %: of all leads received, the share answered by their due time.

Everything is exact, except medians and p90s of periods with more than 100k leads: those come
from histograms the store keeps as leads are written and are within 2.5% of the exact figure
(0.5 s for times under a second); `Report.percentiles()` / the API's `percentiles` say so.
"""

from __future__ import annotations

import csv
import io
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, time, timedelta
from typing import Any
from zoneinfo import ZoneInfo

from hub.domain import LeadKind
from storage.base import PERCENTILE_ERROR, KpiQuery, KpiRow, Store

#: Breakdown tables every report has, in display order.
BREAKDOWNS = ("team", "assignee", "channel", "kind")


@dataclass(frozen=True, slots=True)
class Filters:
    team: str | None = None
    assignee: str | None = None
    channel: str | None = None
    kind: LeadKind | None = None

    def as_dict(self) -> dict[str, str]:
        """The filters that are set, as query parameters."""
        raw = {"team": self.team, "assignee": self.assignee, "channel": self.channel}
        raw["kind"] = self.kind.value if self.kind else None
        return {k: v for k, v in raw.items() if v}


@dataclass(frozen=True, slots=True)
class Period:
    start: datetime
    end: datetime  # exclusive

    def label(self, zone: ZoneInfo) -> str:
        """`2026-11-01 – 2026-11-30` in local dates (the end shown inclusive)."""
        first = self.start.astimezone(zone).date()
        last = (self.end - timedelta(microseconds=1)).astimezone(zone).date()
        return f"{first.isoformat()} – {last.isoformat()}"


@dataclass(frozen=True, slots=True)
class Kpi:
    """One group's figures with the derived percentages."""

    row: KpiRow

    @property
    def sla_compliance(self) -> float | None:
        decided = self.row.responded + self.row.breached - self.row.breached_answered
        if decided <= 0:
            return None
        return 100.0 * self.row.within_target / decided

    @property
    def within_target_share(self) -> float | None:
        if self.row.received == 0:
            return None
        return 100.0 * self.row.within_target / self.row.received

    def as_dict(self) -> dict[str, Any]:
        """JSON-ready figures (seconds and percentages, None where there is nothing to measure)."""
        r = self.row
        return {
            "received": r.received,
            "responded": r.responded,
            "within_target": r.within_target,
            "breached": r.breached,
            "resolved": r.resolved,
            "first_response_mean_s": _round(r.frt_mean),
            "first_response_median_s": _round(r.frt_median),
            "first_response_p90_s": _round(r.frt_p90),
            "resolution_mean_s": _round(r.resolution_mean),
            "resolution_median_s": _round(r.resolution_median),
            "sla_compliance_pct": _round(self.sla_compliance),
            "within_target_pct": _round(self.within_target_share),
        }


def _round(value: float | None, digits: int = 3) -> float | None:
    return None if value is None else round(value, digits)


#: Column order of every KPI table (and CSV export).
FIGURES = (
    "received",
    "responded",
    "within_target",
    "breached",
    "resolved",
    "first_response_mean_s",
    "first_response_median_s",
    "first_response_p90_s",
    "resolution_mean_s",
    "resolution_median_s",
    "sla_compliance_pct",
    "within_target_pct",
)

_EMPTY = KpiRow(None, 0, 0, 0, 0, 0, None, None, None, None, None)


@dataclass(slots=True)
class Report:
    period: Period
    filters: Filters
    summary: Kpi
    breakdowns: dict[str, list[tuple[str | None, Kpi]]] = field(default_factory=dict)
    daily: list[tuple[str, Kpi]] = field(default_factory=list)

    def as_dict(self) -> dict[str, Any]:
        """The whole report as JSON-ready data."""
        return {
            "from": self.period.start.isoformat(),
            "to": self.period.end.isoformat(),
            "filters": self.filters.as_dict(),
            "summary": self.summary.as_dict(),
            "by": {
                name: [{"key": key, **kpi.as_dict()} for key, kpi in rows]
                for name, rows in self.breakdowns.items()
            },
            "daily": [{"day": day, **kpi.as_dict()} for day, kpi in self.daily],
            "percentiles": self.percentiles(),
        }

    def percentiles(self) -> dict[str, Any]:
        """How exact the medians and p90s are: large periods read them off histograms."""
        approximate = self.summary.row.percentiles_approximate
        return {
            "approximate": approximate,
            "max_relative_error": PERCENTILE_ERROR if approximate else 0.0,
            "max_absolute_error_s": 0.5 if approximate else 0.0,
        }


def _query(period: Period, filters: Filters, group_by: str | None, zone: str = "UTC") -> KpiQuery:
    return KpiQuery(
        start=period.start,
        end=period.end,
        team=filters.team,
        assignee=filters.assignee,
        channel=filters.channel,
        kind=filters.kind,
        group_by=group_by,
        day_zone=zone,
    )


async def build_report(
    store: Store, period: Period, filters: Filters, zone: ZoneInfo, breakdowns: bool = True
) -> Report:
    """Summary, breakdowns by team/manager/channel/kind and a per-day series for the period."""
    # One store call: the store scans the period once for every grouping (see kpi_breakdowns).
    groupings: tuple[str | None, ...] = (None, *BREAKDOWNS, "day") if breakdowns else (None,)
    tables = await store.kpi_breakdowns(_query(period, filters, None, zone.key), groupings)
    rows = tables[None]
    report = Report(period, filters, Kpi(rows[0] if rows else _EMPTY))
    if not breakdowns:
        return report
    for name in BREAKDOWNS:
        report.breakdowns[name] = [(r.group, Kpi(r)) for r in tables[name]]
    report.daily = [(r.group or "", Kpi(r)) for r in tables["day"]]
    return report


def change_pct(before: float | None, after: float | None) -> float | None:
    """Relative change from `before` to `after` in percent (None when it cannot be computed)."""
    if before is None or after is None or before == 0:
        return None
    return round(100.0 * (after - before) / abs(before), 1)


def comparison(before: Kpi, after: Kpi) -> list[dict[str, Any]]:
    """Side-by-side figures of two periods with the change in percent."""
    a, b = before.as_dict(), after.as_dict()
    return [
        {"figure": name, "before": a[name], "after": b[name], "change_pct": change_pct(a[name], b[name])}
        for name in FIGURES
    ]


#: The moments a report period may start or end at: two days inside datetime's years 1-9999, so
#: that a bound shown in any time zone, or the local days around it, stay representable.
EARLIEST = datetime(1, 1, 3, tzinfo=UTC)
LATEST = datetime(9999, 12, 29, tzinfo=UTC)


def _within_range(moment: datetime) -> datetime:
    if not EARLIEST <= moment <= LATEST:
        raise ValueError(
            f"{moment.isoformat()} is outside the dates reports cover "
            f"({EARLIEST.date().isoformat()} to {LATEST.date().isoformat()})"
        )
    return moment


def parse_bound(raw: str, zone: ZoneInfo, end: bool) -> datetime:
    """`2026-11-01` (a local day; an end date is inclusive) or a full ISO timestamp -> aware datetime.

    ValueError when it is not a date or lies outside EARLIEST..LATEST.
    """
    raw = raw.strip()
    try:
        day = date.fromisoformat(raw)
    except ValueError:
        moment = datetime.fromisoformat(raw.replace("Z", "+00:00"))
        return _within_range(moment if moment.tzinfo else moment.replace(tzinfo=zone))
    # The limits are local days, as the error states them: a day's local midnight may lie before
    # EARLIEST in UTC (Kyiv was +02:02 in year 1), which the arithmetic still has room for.
    if not EARLIEST.date() <= day <= LATEST.date():
        raise ValueError(
            f"{raw} is outside the dates a report can cover "
            f"({EARLIEST.date().isoformat()} to {LATEST.date().isoformat()})"
        )
    # An end date is inclusive: the period ends when the next local day begins.
    return datetime.combine(day + timedelta(days=1) if end else day, time(0), tzinfo=zone)


def default_period(now: datetime, zone: ZoneInfo, days: int = 30) -> Period:
    """The last `days` local days including today."""
    today = now.astimezone(zone).date()
    start = datetime.combine(today - timedelta(days=days - 1), time(0), tzinfo=zone)
    return Period(start, datetime.combine(today + timedelta(days=1), time(0), tzinfo=zone))


def previous_period(period: Period) -> Period:
    """The period of the same length just before `period`; ValueError if it would start before EARLIEST."""
    length = period.end - period.start
    if period.start - EARLIEST < length:
        raise ValueError(f"the period before {period.start.isoformat()} would start before {EARLIEST.date()}")
    return Period(period.start - length, period.start)


@dataclass(frozen=True, slots=True)
class CsvStyle:
    """How a spreadsheet program expects fields and decimals to be separated."""

    delimiter: str
    decimal: str


#: `,` and `3.5`: English-locale spreadsheets and CSV tools.
COMMA = CsvStyle(",", ".")
#: `;` and `3,5`: what Excel in a Ukrainian (and most European) locale opens as columns; with
#: commas it shows one column, and reads `1.5` as the date 1 May.
SEMICOLON = CsvStyle(";", ",")
CSV_STYLES = {"comma": COMMA, "semicolon": SEMICOLON}


def to_csv(header: list[str], rows: list[list[Any]], style: CsvStyle = COMMA) -> str:
    """A CSV document (RFC 4180 quoting, CRLF line ends as spreadsheets expect)."""
    out = io.StringIO()
    writer = csv.writer(out, delimiter=style.delimiter)
    writer.writerow(header)
    for row in rows:
        writer.writerow([_cell(v, style) for v in row])
    return out.getvalue()


def _cell(value: Any, style: CsvStyle) -> Any:
    if value is None:
        return ""
    if isinstance(value, float):
        return repr(value).replace(".", style.decimal)
    return value


def table_csv(report: Report, table: str, style: CsvStyle = COMMA) -> str:
    """One table of the report as CSV: `summary`, `daily` or a breakdown name."""
    if table == "summary":
        return to_csv(
            ["period", *FIGURES], [[report.period.start.isoformat(), *_values(report.summary)]], style
        )
    if table == "daily":
        return to_csv(["day", *FIGURES], [[day, *_values(k)] for day, k in report.daily], style)
    if table in report.breakdowns:
        rows = [[key or "", *_values(k)] for key, k in report.breakdowns[table]]
        return to_csv([table, *FIGURES], rows, style)
    raise KeyError(table)


def _values(kpi: Kpi) -> list[Any]:
    data = kpi.as_dict()
    return [data[name] for name in FIGURES]
