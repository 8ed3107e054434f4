"""What every dashboard view shares: the signed-in viewer, rendering, language, permissions."""

from __future__ import annotations

import json
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import TYPE_CHECKING, Any
from urllib.parse import urlencode
from zoneinfo import ZoneInfo

from aiohttp import web
from markupsafe import Markup

from hub import i18n
from hub.config import ManagerSettings
from hub.domain import Lead, Role, format_lead_number
from hub.web.dashboard.auth import Session, csrf_token
from hub.web.dashboard.live import LiveBroker
from hub.web.keys import HUB_KEY
from hub.web.ratelimit import SlidingWindowLimiter
from hub.web.templates import environment

if TYPE_CHECKING:
    from hub.app import Hub

PREFIX = "/dashboard"
LANG_COOKIE = "hub_lang"


@dataclass
class DashboardState:
    key: bytes
    broker: LiveBroker
    login_limiter: SlidingWindowLimiter
    user_limiter: SlidingWindowLimiter


STATE_KEY: web.AppKey[DashboardState] = web.AppKey("dashboard")
SESSION_KEY: web.RequestKey[Session] = web.RequestKey("dashboard.session", Session)
VIEWER_KEY: web.RequestKey[ManagerSettings] = web.RequestKey("dashboard.viewer", ManagerSettings)
#: The signed-in manager's own away flag, read for full pages (the header shows a toggle).
VIEWER_AWAY_KEY: web.RequestKey[bool] = web.RequestKey("dashboard.viewer_away", bool)


def hub_of(request: web.Request) -> Hub:
    return request.app[HUB_KEY]


def state_of(request: web.Request) -> DashboardState:
    return request.app[STATE_KEY]


def session_of(request: web.Request) -> Session | None:
    session: Session | None = request.get(SESSION_KEY)
    return session


def viewer_of(request: web.Request) -> ManagerSettings:
    """The signed-in manager (the guard middleware guarantees one on protected pages)."""
    viewer: ManagerSettings = request[VIEWER_KEY]
    return viewer


def safe_next(raw: str | None) -> str:
    """`raw` if it is one of our own dashboard paths, else the queue."""
    # Only our own pages: an open redirect would make the login page a phishing tool.
    if raw and raw.startswith(PREFIX) and not raw.startswith("//") and "\\" not in raw:
        return raw
    return PREFIX


def sees_all(manager: ManagerSettings) -> bool:
    """Leads and admins see every lead, the breaches, the team and the reports."""
    return manager.role in (Role.LEAD, Role.ADMIN)


def may_open(manager: ManagerSettings, lead: Lead) -> bool:
    """An agent opens their own leads and unassigned ones; leads and admins open all."""
    return sees_all(manager) or lead.assignee in (None, manager.id)


def language_of(request: web.Request) -> str:
    """The UI language: ?lang=, then the cookie, then Accept-Language."""
    chosen = request.query.get("lang") or request.cookies.get(LANG_COOKIE)
    if chosen in i18n.SUPPORTED:
        return chosen
    return i18n.from_accept_language(request.headers.get("Accept-Language"))


def page_lang(request: web.Request) -> str:
    """The page's own ?lang= ("" when it has none or an unknown one)."""
    chosen = request.query.get("lang", "")
    return chosen if chosen in i18n.SUPPORTED else ""


def keep_lang(request: web.Request, target: str) -> str:
    """`target` (a dashboard URL) with this page's ?lang=, so following it does not switch the
    language back to the cookie's."""
    chosen = page_lang(request)
    if not chosen:
        return target
    return f"{target}{'&' if '?' in target else '?'}{urlencode({'lang': chosen})}"


def zone_of(hub: Hub) -> ZoneInfo:
    return ZoneInfo(hub.settings.sla.calendar.timezone)


def fmt_duration(seconds: float | None, language: str) -> str:
    """`2d 4h`, `1h 05m`, `3m 20s` (negative: the same with a minus sign)."""
    if seconds is None:
        return "—"
    sign = "−" if seconds < 0 else ""
    total = int(abs(seconds))
    days, rest = divmod(total, 86400)
    hours, rest = divmod(rest, 3600)
    minutes, secs = divmod(rest, 60)
    units = ("д", "год", "хв", "с") if language == "uk" else ("d", "h", "m", "s")
    if days:
        return f"{sign}{days}{units[0]} {hours}{units[1]}"
    if hours:
        return f"{sign}{hours}{units[1]} {minutes:02d}{units[2]}"
    if minutes:
        return f"{sign}{minutes}{units[2]} {secs:02d}{units[3]}"
    return f"{sign}{secs}{units[3]}"


def render_page(request: web.Request, template: str, status: int = 200, **context: Any) -> web.Response:
    """Render a dashboard template with the shared context (language, CSRF token, viewer, helpers)."""
    hub = hub_of(request)
    language = language_of(request)
    zone = zone_of(hub)
    session = session_of(request)
    state = state_of(request)
    viewer: ManagerSettings | None = request.get(VIEWER_KEY)

    def t(key: str, **values: Any) -> str:
        return i18n.text(key, language, **values)

    def when(value: datetime | None) -> str:
        if value is None:
            return "—"
        return value.astimezone(zone).strftime("%d.%m.%Y %H:%M" if language == "uk" else "%Y-%m-%d %H:%M")

    def label(group: str, value: str) -> str:
        # Ids from data (channels, event types, identity kinds) read as words; one the
        # catalogue does not know (a custom channel) shows as it is.
        key = f"dash.{group}.{value}"
        found = i18n.text(key, language)
        return value if found == key else found

    def url(path: str, **params: Any) -> str:
        clean = {k: v for k, v in params.items() if v not in (None, "")}
        return f"{path}?{urlencode(clean)}" if clean else path

    html = (
        environment()
        .get_template(template)
        .render(
            lang=language,
            t=t,
            label=label,
            when=when,
            duration=lambda seconds: fmt_duration(seconds, language),
            url=url,
            ref=format_lead_number,
            csrf=csrf_token(state.key, session) if session else "",
            viewer=viewer,
            viewer_away=request.get(VIEWER_AWAY_KEY),
            sees_all=sees_all(viewer) if viewer else False,
            prefix=PREFIX,
            path=request.path_qs,
            # A page opened with ?lang= keeps it in its GET forms (filters), its links and the
            # actions it posts (see keep_lang).
            page_lang=page_lang(request),
            keep_lang=lambda target: keep_lang(request, target),
            manager_name=lambda mid: _manager_name(hub, mid),
            tojson=lambda data: Markup(json.dumps(data, ensure_ascii=False).replace("<", "\\u003c")),
            **context,
        )
    )
    return web.Response(text=html, status=status, content_type="text/html", charset="utf-8")


def _manager_name(hub: Hub, manager_id: str | None) -> str:
    if manager_id is None:
        return "—"
    manager = hub.settings.manager(manager_id)
    return manager.name if manager else manager_id


def redirect(location: str) -> web.Response:
    """A 303 See Other (after a form POST the browser GETs the target)."""
    return web.Response(status=303, headers={"Location": location})


def error_page(request: web.Request, status: int, message_key: str) -> web.Response:
    """An HTML error page in the viewer's language."""
    return render_page(request, "dashboard/error.html", status=status, status_code=status, key=message_key)


def local_midnight(now: datetime, zone: ZoneInfo) -> datetime:
    """Start of today in the SLA calendar's time zone."""
    local = now.astimezone(zone)
    return local.replace(hour=0, minute=0, second=0, microsecond=0)


def seconds_between(start: datetime | None, end: datetime | None) -> float | None:
    if start is None or end is None:
        return None
    return (end - start) / timedelta(seconds=1)
