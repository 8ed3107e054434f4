"""The manager dashboard: sign-in, queue, lead page, breaches, team, reports, live updates.

Every page under /dashboard passes `guard`: it reads the signed session cookie, refuses any
POST without the session's CSRF token (403), sends visitors who are not signed in to the
login page, and adds security headers (a strict CSP: scripts only from our own static files).
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any
from urllib.parse import urlencode

from aiohttp import web
from aiohttp.http_exceptions import HttpProcessingError
from yarl import URL

from hub.domain import utcnow
from hub.web.dashboard import auth, reports_view, views
from hub.web.dashboard.common import (
    LANG_COOKIE,
    PREFIX,
    SESSION_KEY,
    STATE_KEY,
    VIEWER_AWAY_KEY,
    VIEWER_KEY,
    DashboardState,
    error_page,
    hub_of,
    redirect,
    render_page,
    safe_next,
    session_of,
    state_of,
)
from hub.web.dashboard.live import LiveBroker
from hub.web.keys import HUB_KEY
from hub.web.ratelimit import SlidingWindowLimiter, client_ip

log = logging.getLogger(__name__)

STATIC_DIR = Path(__file__).resolve().parent.parent.parent / "static"
_PUBLIC = (f"{PREFIX}/login", f"{PREFIX}/link/", f"{PREFIX}/lang")
_SAFE_METHODS = ("GET", "HEAD", "OPTIONS")
_FORM_TYPES = ("application/x-www-form-urlencoded", "multipart/form-data")
# Live-update endpoints fetched often and rendered without the header.
_FRAGMENTS = ("/events", "/queue/rows")

SECURITY_HEADERS = {
    "Content-Security-Policy": (
        "default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' data:; "
        "connect-src 'self'; frame-ancestors 'none'; form-action 'self'; base-uri 'none'"
    ),
    "X-Frame-Options": "DENY",
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "same-origin",
    "Cache-Control": "no-store",
}


def _set_session_cookie(request: web.Request, response: web.StreamResponse, value: str) -> None:
    response.set_cookie(
        auth.SESSION_COOKIE,
        value,
        max_age=int(auth.SESSION_TTL.total_seconds()),
        path="/",
        httponly=True,
        samesite="Lax",
        secure=request.secure,
    )


@web.middleware
async def guard(request: web.Request, handler: Any) -> web.StreamResponse:
    """Session, CSRF and sign-in checks for /dashboard; security headers on its responses."""
    if not (request.path == PREFIX or request.path.startswith(PREFIX + "/")):
        passed: web.StreamResponse = await handler(request)
        return passed
    state = state_of(request)
    hub = hub_of(request)
    now = utcnow()
    session = auth.read_session(state.key, request.cookies.get(auth.SESSION_COOKIE), now)
    fresh = session is None
    if session is None:
        session = auth.new_session(None, now)
    request[SESSION_KEY] = session
    manager = hub.settings.manager(session.manager_id) if session.manager_id else None
    if manager is not None and manager.active:
        request[VIEWER_KEY] = manager
        if request.method == "GET" and not request.path.endswith(_FRAGMENTS):
            # One state read per full page, for the away/back toggle in the header.
            request[VIEWER_AWAY_KEY] = await hub.availability.is_away(manager.id)
    response: web.StreamResponse
    if request.method not in _SAFE_METHODS and not await _form_readable(request):
        response = error_page(request, 400, "dash.error.bad_form")
    elif request.method not in _SAFE_METHODS and not await _csrf_passes(request, state.key):
        log.warning("dashboard: %s %s refused: missing or wrong CSRF token", request.method, request.path)
        response = error_page(request, 403, "dash.error.csrf")
    elif VIEWER_KEY not in request and not request.path.startswith(_PUBLIC):
        # A page's own fetches (rows, events) get a 401: redirected, they would sign in to a
        # fragment, or put the sign-in page into the queue's table.
        if request.method in _SAFE_METHODS and not request.path.endswith(_FRAGMENTS):
            response = redirect(f"{PREFIX}/login?{urlencode({'next': request.path_qs})}")
        else:
            response = error_page(request, 401, "dash.error.signin")
    else:
        response = await handler(request)
    if fresh and not response.prepared and auth.SESSION_COOKIE not in response.cookies:
        _set_session_cookie(request, response, session.cookie(state.key))
    if not response.prepared:
        for name, value in SECURITY_HEADERS.items():
            response.headers.setdefault(name, value)
    return response


async def _form_readable(request: web.Request) -> bool:
    """Reads a posted form once (aiohttp keeps it for the handler); False if it cannot be read.

    Only a hand-made request sends one (a raw non-UTF-8 byte, a multipart body without a
    boundary or with an unknown charset): it gets a 400 page, not a 500 from the CSRF check or
    the action's own read of the form.
    """
    if request.content_type not in _FORM_TYPES:
        return True
    try:
        await request.post()
    except (UnicodeDecodeError, ValueError, LookupError, RuntimeError, HttpProcessingError) as exc:
        # aiohttp has no one error type for a malformed body (see channels.webform).
        log.warning("dashboard: %s %s: unreadable form body: %s", request.method, request.path, exc)
        return False
    return True


async def _csrf_passes(request: web.Request, key: bytes) -> bool:
    given = request.headers.get("X-CSRF-Token")
    if given is None and request.content_type in _FORM_TYPES:
        form = await request.post()
        value = form.get("csrf")
        given = value if isinstance(value, str) else None
    return auth.csrf_ok(key, session_of(request), given)


async def login_form(request: web.Request) -> web.StreamResponse:
    """GET /dashboard/login."""
    if VIEWER_KEY in request:
        return redirect(safe_next(request.query.get("next")))
    return render_page(request, "dashboard/login.html", next=safe_next(request.query.get("next")), error=None)


async def login_submit(request: web.Request) -> web.StreamResponse:
    """POST /dashboard/login: manager id + password, rate-limited per address and per id."""
    hub = hub_of(request)
    state = state_of(request)
    form = await request.post()
    username = str(form.get("username", "")).strip()[:64]
    password = str(form.get("password", ""))[:1024]
    next_url = safe_next(str(form.get("next", "")))
    ip = client_ip(request, hub.settings.web.trusted_proxies)
    wait = state.login_limiter.hit(ip) or state.user_limiter.hit(username.lower())
    if wait is not None:
        log.warning("dashboard: sign-in rate limit hit (manager id %r)", username)
        response = render_page(
            request, "dashboard/login.html", status=429, next=next_url, error="dash.login.limited"
        )
        response.headers["Retry-After"] = str(int(wait) + 1)
        return response
    manager = hub.settings.manager(username)
    if manager is None:
        # Phones capitalize the first letter typed ("Olena"): ids differ by more than case.
        folded = [m for m in hub.settings.managers if m.id.casefold() == username.casefold()]
        manager = folded[0] if len(folded) == 1 else None
    if not await auth.verify_password(manager, password) or manager is None:
        log.info("dashboard: failed sign-in for manager id %r", username)
        return render_page(
            request, "dashboard/login.html", status=401, next=next_url, error="dash.login.failed"
        )
    return _signed_in(request, manager.id, next_url)


def _signed_in(request: web.Request, manager_id: str, next_url: str) -> web.StreamResponse:
    state = state_of(request)
    session = auth.new_session(manager_id, utcnow())
    response = redirect(next_url)
    _set_session_cookie(request, response, session.cookie(state.key))
    log.info("dashboard: %s signed in", manager_id)
    return response


async def login_link(request: web.Request) -> web.StreamResponse:
    """GET /dashboard/link/{token}: a one-time sign-in link (sent by the bot's /dashboard)."""
    hub = hub_of(request)
    found = auth.read_login_token(hub.settings, request.match_info["token"], utcnow())
    manager = hub.settings.manager(found[0]) if found else None
    if found is None or manager is None or not manager.active:
        return render_page(
            request, "dashboard/login.html", status=401, next=PREFIX, error="dash.login.link_bad"
        )
    # incr_state is atomic in the store, so a link works once even across hub processes.
    if await hub.store.incr_state(f"dashboard.link.{found[1]}") != 1:
        return render_page(
            request, "dashboard/login.html", status=401, next=PREFIX, error="dash.login.link_used"
        )
    return _signed_in(request, manager.id, PREFIX)


async def logout(request: web.Request) -> web.StreamResponse:
    """POST /dashboard/logout."""
    response = redirect(f"{PREFIX}/login")
    response.del_cookie(auth.SESSION_COOKIE, path="/")
    return response


async def set_language(request: web.Request) -> web.StreamResponse:
    """GET /dashboard/lang?to=uk&next=...: remember the UI language in a cookie."""
    language = request.query.get("to", "")
    target = URL(safe_next(request.query.get("next")))
    # A page's ?lang= outranks the cookie: kept, it would show the page in the old language.
    response = redirect(str(target.with_query([(k, v) for k, v in target.query.items() if k != "lang"])))
    if language in ("uk", "en"):
        response.set_cookie(LANG_COOKIE, language, max_age=365 * 86400, path="/", samesite="Lax")
    return response


def setup_dashboard(app: web.Application) -> None:
    """Register the dashboard's routes, middleware, static files and live-update subscriber."""
    hub = app[HUB_KEY]
    state = DashboardState(
        key=auth.secret_key(hub.settings),
        broker=LiveBroker(),
        login_limiter=SlidingWindowLimiter(hub.settings.web.login_rate_limit),
        user_limiter=SlidingWindowLimiter(hub.settings.web.login_manager_rate_limit),
    )
    app[STATE_KEY] = state
    app.middlewares.append(guard)
    hub.bus.subscribe(f"dashboard-live:{id(app)}", state.broker.on_event)

    async def close_streams(_: web.Application) -> None:
        await state.broker.close()

    app.on_shutdown.append(close_streams)
    router = app.router
    router.add_static("/static/", STATIC_DIR, append_version=False)
    router.add_get(f"{PREFIX}/login", login_form)
    router.add_post(f"{PREFIX}/login", login_submit)
    router.add_get(f"{PREFIX}/link/{{token}}", login_link)
    router.add_post(f"{PREFIX}/logout", logout)
    router.add_get(f"{PREFIX}/lang", set_language)
    views.setup_routes(app)
    reports_view.setup_routes(app)
