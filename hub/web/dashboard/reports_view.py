"""Reports: the KPI page with charts, CSV export of every table, and `GET /api/v1/reports/kpi`."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any
from zoneinfo import ZoneInfo

from aiohttp import web

from hub import i18n
from hub.domain import LeadKind, utcnow
from hub.errors import ValidationFailed
from hub.reports import (
    BREAKDOWNS,
    CSV_STYLES,
    EARLIEST,
    FIGURES,
    LATEST,
    Filters,
    Period,
    Report,
    build_report,
    comparison,
    default_period,
    parse_bound,
    previous_period,
    table_csv,
    to_csv,
)
from hub.web.dashboard.common import (
    PREFIX,
    error_page,
    hub_of,
    language_of,
    render_page,
    sees_all,
    viewer_of,
    zone_of,
)

API_PATH = "/api/v1/reports/kpi"
MAX_DAYS = 3660


class BadReportRequest(ValidationFailed):
    """A report parameter is wrong; `code` and `values` name it for the dashboard's own texts."""

    def __init__(self, message: str, fields: dict[str, str], code: str, **values: Any) -> None:
        super().__init__(message, fields)
        self.code = code
        self.values = values


@dataclass(frozen=True, slots=True)
class ReportRequest:
    period: Period
    filters: Filters
    compare: Period | None


def parse_report_request(query: Any, zone: ZoneInfo) -> ReportRequest:
    """Period, filters and the optional comparison period from query parameters."""

    def bound(name: str, end: bool) -> Any:
        raw = str(query.get(name, "")).strip()
        if not raw:
            return None
        try:
            return parse_bound(raw, zone, end)
        except ValueError as exc:
            raise BadReportRequest(f"bad {name}", {name: _BOUND_HINT}, "bad_date", field=name) from exc

    start, end = bound("from", False), bound("to", True)
    fallback = default_period(utcnow(), zone)
    period = Period(start or fallback.start, end or fallback.end)
    _check(period, "to")
    kind_raw = str(query.get("kind", "")).strip()
    if kind_raw and kind_raw not in {k.value for k in LeadKind}:
        raise BadReportRequest(
            "bad kind", {"kind": f"one of: {', '.join(k.value for k in LeadKind)}"}, "bad_kind"
        )
    filters = Filters(
        team=str(query.get("team", "")).strip() or None,
        assignee=str(query.get("assignee", "")).strip() or None,
        channel=str(query.get("channel", "")).strip() or None,
        kind=LeadKind(kind_raw) if kind_raw else None,
    )
    compare: Period | None = None
    cmp_start, cmp_end = bound("compare_from", False), bound("compare_to", True)
    if (cmp_start is None) != (cmp_end is None):
        # Half a period is no period: comparing with nothing would look like "no change".
        missing = "compare_to" if cmp_end is None else "compare_from"
        raise BadReportRequest(
            f"{missing} is missing", {missing: "give both compare_from and compare_to"}, "half_compare",
            field=missing,
        )  # fmt: skip
    compare_raw = str(query.get("compare", "")).strip()
    if compare_raw not in ("", *_COMPARE_PREVIOUS):
        raise BadReportRequest(
            "bad compare", {"compare": f"one of: {', '.join(_COMPARE_PREVIOUS)}"}, "bad_compare"
        )
    if cmp_start and cmp_end:
        compare = Period(cmp_start, cmp_end)
        _check(compare, "compare_to")
    elif compare_raw:
        compare = _previous(period, "compare")
    return ReportRequest(period, filters, compare)


#: `compare=` values that ask for the period just before this one.
_COMPARE_PREVIOUS = ("previous", "1", "on")


_BOUND_HINT = (
    f"a date (2026-11-01) or an ISO timestamp, from {EARLIEST.date().isoformat()} "
    f"to {LATEST.date().isoformat()}"
)


def _previous(period: Period, field: str) -> Period:
    try:
        return previous_period(period)
    except ValueError as exc:
        raise BadReportRequest(
            f"no period to compare with: {exc}",
            {field: "the period before this one is out of range"},
            "no_previous",
        ) from exc


def _check(period: Period, field: str) -> None:
    if period.end <= period.start:
        raise BadReportRequest(
            "the period ends before it starts", {field: "must be after the start"}, "ends_before_start"
        )
    if (period.end - period.start).days > MAX_DAYS:
        raise BadReportRequest(
            "the period is too long", {field: f"at most {MAX_DAYS} days"}, "too_long", days=MAX_DAYS
        )


async def _reports(request: web.Request) -> tuple[ReportRequest, Report, Report | None]:
    hub = hub_of(request)
    zone = zone_of(hub)
    wanted = parse_report_request(request.query, zone)
    report = await build_report(hub.store, wanted.period, wanted.filters, zone)
    before = None
    if wanted.compare is not None:
        before = await build_report(hub.store, wanted.compare, wanted.filters, zone, breakdowns=False)
    return wanted, report, before


async def reports_page(request: web.Request) -> web.Response:
    """GET /dashboard/reports: KPIs for a period, breakdowns, charts, comparison with another period."""
    if not sees_all(viewer_of(request)):
        return error_page(request, 403, "dash.error.forbidden")
    hub = hub_of(request)
    zone = zone_of(hub)
    try:
        _, report, before = await _reports(request)
    except BadReportRequest as exc:
        # The same form again, filled in as sent, with what is wrong: not an error page that
        # makes the manager find the report and type the filters again.
        return render_page(
            request,
            "dashboard/reports.html",
            status=422,
            report=None,
            bad_detail=_bad_detail(request, exc),
            period_label="",
            form={
                k: request.query.get(k, "")
                for k in ("from", "to", "team", "assignee", "channel", "kind", "compare")
            },
            **_choices(hub),
        )
    params = {k: v for k, v in request.query.items() if k in _PARAMS and v}
    chart = {
        "days": [day for day, _ in report.daily],
        "received": [k.row.received for _, k in report.daily],
        "mean_minutes": [
            None if k.row.frt_mean is None else round(k.row.frt_mean / 60, 1) for _, k in report.daily
        ],
        "managers": [hub_name(hub, key) for key, _ in report.breakdowns.get("assignee", [])],
        "per_manager": [k.row.received for _, k in report.breakdowns.get("assignee", [])],
    }
    return render_page(
        request,
        "dashboard/reports.html",
        report=report,
        summary=report.summary.as_dict(),
        compare=comparison(before.summary, report.summary) if before else None,
        before_label=before.period.label(zone) if before else "",
        period_label=report.period.label(zone),
        breakdowns=[(name, report.breakdowns[name]) for name in BREAKDOWNS],
        figures=FIGURES,
        params=params,
        form={
            "from": request.query.get("from") or report.period.start.astimezone(zone).date().isoformat(),
            "to": request.query.get("to") or _last_day(report.period, zone),
            **{k: request.query.get(k, "") for k in ("team", "assignee", "channel", "kind", "compare")},
        },
        chart=chart,
        **_choices(hub),
        csv_url=lambda table: _csv_url(params, table),
        name_of=lambda key: hub_name(hub, key),
    )


def _choices(hub: Any) -> dict[str, Any]:
    """What the report form's selects offer."""
    return {
        "teams": sorted(hub.settings.teams),
        "managers": hub.settings.managers,
        "kinds": [k.value for k in LeadKind],
        # The queue's list: a custom channel can be picked here too.
        "channels": sorted({"webform", "email", "telegram", "api", *(c.name for c in hub.channels)}),
    }


def _bad_detail(request: web.Request, exc: BadReportRequest) -> str:
    """What is wrong with the report's parameters, in the viewer's language."""
    language = language_of(request)
    values = dict(exc.values)
    if "field" in values:
        values["field"] = i18n.text(f"dash.reports.param.{values['field']}", language)
    return i18n.text(f"dash.reports.error.{exc.code}", language, **values)


def _bad_report(request: web.Request, exc: BadReportRequest) -> web.Response:
    """The report's error page (for a CSV link): what is wrong, in the viewer's language."""
    return render_page(
        request, "dashboard/error.html", status=422, status_code=422, key="dash.error.bad_report",
        detail=_bad_detail(request, exc),
    )  # fmt: skip


_PARAMS = ("from", "to", "team", "assignee", "channel", "kind", "compare", "compare_from", "compare_to")


def _last_day(period: Period, zone: ZoneInfo) -> str:
    from datetime import timedelta

    return (period.end - timedelta(microseconds=1)).astimezone(zone).date().isoformat()


def _csv_url(params: dict[str, str], table: str) -> str:
    from urllib.parse import urlencode

    return f"{PREFIX}/reports/csv?{urlencode({**params, 'table': table})}"


def hub_name(hub: Any, key: str | None) -> str:
    if key is None:
        return "—"
    manager = hub.settings.manager(key)
    return manager.name if manager else key


async def reports_csv(request: web.Request) -> web.Response:
    """GET /dashboard/reports/csv?table=summary|daily|team|assignee|channel|kind|compare[&sep=].

    `sep=semicolon` (`;` and decimal commas) is the default for the Ukrainian UI: Excel in a
    Ukrainian locale opens that by a double click; `sep=comma` for the rest.
    """
    if not sees_all(viewer_of(request)):
        return error_page(request, 403, "dash.error.forbidden")
    table = request.query.get("table", "summary")
    sep = request.query.get("sep") or ("semicolon" if language_of(request) == "uk" else "comma")
    style = CSV_STYLES.get(sep)
    if style is None:
        error = BadReportRequest("bad sep", {"sep": "comma or semicolon"}, "bad_sep")
        return _bad_report(request, error)
    try:
        wanted, report, before = await _reports(request)
    except BadReportRequest as exc:
        return _bad_report(request, exc)
    if table == "compare":
        if before is None:
            try:
                before_period = _previous(report.period, "table")
            except BadReportRequest as exc:
                return _bad_report(request, exc)
            zone = zone_of(hub_of(request))
            before = await build_report(hub_of(request).store, before_period, wanted.filters, zone, False)
        rows = comparison(before.summary, report.summary)
        text = to_csv(
            ["figure", "before", "after", "change_pct"],
            [[r["figure"], r["before"], r["after"], r["change_pct"]] for r in rows],
            style,
        )
    else:
        try:
            text = table_csv(report, table, style)
        except KeyError:
            return error_page(request, 404, "dash.error.no_table")
    start = report.period.start.date().isoformat()
    return web.Response(
        body=text.encode("utf-8-sig"),  # the BOM makes spreadsheet programs read UTF-8 names right
        headers={
            "Content-Type": "text/csv; charset=utf-8",
            "Content-Disposition": f'attachment; filename="kpi-{table}-{start}.csv"',
        },
    )


async def kpi_api(request: web.Request) -> web.Response:
    """GET /api/v1/reports/kpi?from=&to=&team=&assignee=&channel=&kind=[&compare_from=&compare_to=]."""
    _, report, before = await _reports(request)
    body = report.as_dict()
    if before is not None:
        body["compare"] = {
            "from": before.period.start.isoformat(),
            "to": before.period.end.isoformat(),
            "summary": before.summary.as_dict(),
            "change": comparison(before.summary, report.summary),
        }
    return web.json_response(body)


def setup_routes(app: web.Application) -> None:
    """Register the report page, its CSV export and the KPI API."""
    app.router.add_get(f"{PREFIX}/reports", reports_page)
    app.router.add_get(f"{PREFIX}/reports/csv", reports_csv)
    app.router.add_get(API_PATH, kpi_api)
